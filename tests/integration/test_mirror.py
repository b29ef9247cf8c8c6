"""Mirroring (issue 15 §4): sampled statements copied to a real shadow cluster off the client's path, and compared."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess, base_config, dump_config

FAST = {"health": {"interval": "200ms"}, "admin": {"users": ["app"]}}


def _api(proxy: ProxyProcess, path: str) -> Any:
    with urllib.request.urlopen(proxy.admin_url + path, timeout=5) as r:
        return json.loads(r.read())


def _until(proxy: ProxyProcess, cond: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    """Poll /api/mirror until `cond` holds (or fail with the last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = _api(proxy, "/api/mirror")
        if cond(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; /api/mirror: {view}")
        time.sleep(0.05)


def _nodes(cluster: PgCluster, shadow: PgCluster) -> list[dict[str, object]]:
    return [*cluster.node_config(),
            {"name": "shadow", "host": "127.0.0.1", "port": shadow.primary.port, "role": "shadow"}]


def _both(cluster: PgCluster, shadow: PgCluster, sql: str) -> None:
    cluster.sql(cluster.primary, sql, user="app", db="app")
    shadow.sql(shadow.primary, sql, user="app", db="app")


@pytest.fixture
def shadow(cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    """A cluster of its own (a standalone primary with the same users and databases) as the shadow."""
    return cluster_factory(standbys=0)


def test_reads_are_mirrored_and_compared(cluster: PgCluster, shadow: PgCluster, proxy_factory: ProxyFactory) -> None:
    _both(cluster, shadow, "DROP TABLE IF EXISTS mir_t; CREATE TABLE mir_t (id int PRIMARY KEY, v text)")
    cluster.sql(cluster.primary, "INSERT INTO mir_t SELECT g, 'v' || g FROM generate_series(1, 50) g", user="app",
                db="app")
    # The same rows in another physical order on the shadow: an unordered SELECT returns them in
    # another order there, which is no mismatch.
    shadow.sql(shadow.primary, "INSERT INTO mir_t SELECT g, 'v' || g FROM generate_series(50, 1, -1) g", user="app",
               db="app")
    cluster.wait_replay()
    proxy = proxy_factory(FAST, nodes=_nodes(cluster, shadow),
                          mirror={"node": "shadow", "sample": 1.0, "statements": "reads"})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(5):
            assert len(conn.execute("SELECT id, v FROM mir_t").fetchall()) == 50  # simple protocol
        for i in range(1, 6):  # extended protocol, text and binary results
            assert conn.execute("SELECT v FROM mir_t WHERE id = %s", (i,)).fetchone() == (f"v{i}",)
            cur = conn.cursor(binary=True)
            assert cur.execute("SELECT id, v FROM mir_t WHERE id <= %s", (i,)).fetchall()[-1] == (i, f"v{i}")
        view = _until(proxy, lambda v: v["mirrored"] >= 15)
        assert view["mismatches"] == 0 and view["errors"] == 0, view
        assert set(view) >= {"mirrored", "mismatches", "slower", "errors", "dropped", "recent"}

        # The shadow's data drifts: the copy of a read finds it; the client still sees the primary's rows.
        shadow.sql(shadow.primary, "UPDATE mir_t SET v = 'drift' WHERE id = 7", user="app", db="app")
        assert conn.execute("SELECT v FROM mir_t WHERE id = 7").fetchone() == ("v7",)
        view = _until(proxy, lambda v: v["mismatches"] >= 1)
        ev = view["recent"][0]
        assert ev["kind"] == "mismatch" and "mir_t" in ev["query"] and "7" not in ev["query"], ev
        assert ev["primary"]["rows"] == ev["shadow"]["rows"] == 1 and ev["primary"]["hash"] != ev["shadow"]["hash"]
        shadow.sql(shadow.primary, "DELETE FROM mir_t WHERE id > 40", user="app", db="app")
        assert len(conn.execute("SELECT * FROM mir_t").fetchall()) == 50
        view = _until(proxy, lambda v: v["mismatches"] >= 2)
        assert (view["recent"][0]["primary"]["rows"], view["recent"][0]["shadow"]["rows"]) == (50, 40)

        # A statement that fails on the shadow only: the client never sees that error.
        cluster.sql(cluster.primary, "DROP TABLE IF EXISTS mir_only; CREATE TABLE mir_only AS SELECT 1 AS x",
                    user="app", db="app")
        cluster.wait_replay()
        assert conn.execute("SELECT x FROM mir_only").fetchone() == (1,)
        view = _until(proxy, lambda v: v["errors"] >= 1)
        assert view["recent"][0]["kind"] == "error" and "42P01" in view["recent"][0]["detail"]

        # Writes are not mirrored with statements: reads.
        before = _api(proxy, "/api/mirror")["mirrored"]
        conn.execute("INSERT INTO mir_t VALUES (1000, 'w')")
        assert shadow.sql(shadow.primary, "SELECT count(*) FROM mir_t WHERE id = 1000", user="app", db="app") == "0"
        conn.execute("SELECT 1")
        _until(proxy, lambda v: v["mirrored"] == before + 1)

    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert re.search(r'^heliosproxy_mirror_statements_total\{node="shadow",result="mismatches"\} [2-9]', metrics,
                     re.MULTILINE), metrics
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        cur = admin.execute("SHOW MIRROR")
        assert cur.description is not None
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        assert rows[0]["kind"] == "total" and int(rows[0]["mismatches"]) >= 2 and int(rows[0]["errors"]) >= 1
        assert {r["kind"] for r in rows[1:]} == {"mismatch", "error"}


def test_shadow_gets_no_client_traffic(cluster: PgCluster, shadow: PgCluster, proxy_factory: ProxyFactory) -> None:
    """A shadow (here a standalone primary) is never a read target, write target or failover candidate."""
    _both(cluster, shadow, "DROP TABLE IF EXISTS mir_who; CREATE TABLE mir_who (who text)")
    cluster.sql(cluster.primary, "INSERT INTO mir_who VALUES ('cluster')", user="app", db="app")
    shadow.sql(shadow.primary, "INSERT INTO mir_who VALUES ('shadow')", user="app", db="app")
    cluster.wait_replay()
    proxy = proxy_factory({**FAST, "routing": {"policy": "round_robin"}}, nodes=_nodes(cluster, shadow),
                          mirror={"node": "shadow", "sample": 1.0})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(20):
            assert conn.execute("SELECT who FROM mir_who").fetchone() == ("cluster",)
        conn.execute("INSERT INTO mir_who VALUES ('write')")
        assert cluster.sql(cluster.primary, "SELECT count(*) FROM mir_who WHERE who = 'write'", user="app",
                           db="app") == "1"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shadow"):
            conn.execute("/*helios:node=shadow*/ SELECT who FROM mir_who")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shadow"):
            conn.execute("SET helios.node = 'shadow'")
        assert conn.execute("SELECT who FROM mir_who").fetchone() == ("cluster",)
    nodes = {n["name"]: n for n in _api(proxy, "/api/nodes")}
    assert nodes["shadow"]["role"] == "shadow" and nodes["shadow"]["state"] == "up", nodes["shadow"]
    assert not nodes["shadow"]["write_target"] and nodes["primary"]["write_target"]
    _until(proxy, lambda v: v["mirrored"] >= 20 and v["mismatches"] >= 20)


def test_all_statements_and_a_slow_shadow(cluster: PgCluster, shadow: PgCluster,
                                          proxy_factory: ProxyFactory) -> None:
    """statements: all copies writes; a shadow slower than the queue drops copies, the client never waits."""
    _both(cluster, shadow, "DROP TABLE IF EXISTS mir_w; CREATE TABLE mir_w (id int)")
    cluster.sql(cluster.primary, "CREATE OR REPLACE FUNCTION mir_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                user="app", db="app")
    shadow.sql(shadow.primary, "CREATE OR REPLACE FUNCTION mir_f() RETURNS int LANGUAGE sql"
               " AS 'SELECT 1 FROM pg_sleep(0.4)'", user="app", db="app")
    cluster.wait_replay()
    proxy = proxy_factory(FAST, nodes=_nodes(cluster, shadow),
                          mirror={"node": "shadow", "sample": 1.0, "statements": "all", "queue": 1,
                                  "concurrency": 1})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO mir_w SELECT generate_series(1, 3)")
        _until(proxy, lambda v: v["mirrored"] >= 1)
        assert shadow.sql(shadow.primary, "SELECT count(*) FROM mir_w", user="app", db="app") == "3"
        assert _api(proxy, "/api/mirror")["mismatches"] == 0
        started = time.monotonic()
        for _ in range(10):
            assert conn.execute("SELECT mir_f()").fetchone() == (1,)
        assert time.monotonic() - started < 1.0  # 10 copies take 4 s on the shadow: nobody waited for them
        view = _until(proxy, lambda v: v["dropped"] >= 7 and v["mirrored"] >= 2 and v["queued"] == 0)
        assert view["slower"] >= 1 and view["mismatches"] == 0, view


def test_shadow_down_or_refusing_is_only_counted(cluster: PgCluster, shadow: PgCluster,
                                                 proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(FAST, nodes=_nodes(cluster, shadow),
                          mirror={"node": "shadow", "sample": 1.0, "timeout": "2s"})
    shadow.stop_node(shadow.primary)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for i in range(3):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
    view = _until(proxy, lambda v: v["errors"] >= 3)
    assert view["mirrored"] == 0 and view["recent"][0]["kind"] == "error"


def test_mirror_config_needs_a_shadow_node(cluster: PgCluster, shadow: PgCluster, tmp_path: Path) -> None:
    config = base_config(_nodes(cluster, shadow))
    config["mirror"] = {"node": "standby1"}
    path = tmp_path / "proxy.yaml"
    path.write_text(dump_config(config))
    r = subprocess.run([sys.executable, "-m", "heliosproxy", "check-config", str(path)], capture_output=True,
                       text=True, timeout=60, cwd=REPO_ROOT)
    assert r.returncode != 0 and "mirror.node" in r.stdout + r.stderr and "role: shadow" in r.stdout + r.stderr
    config["mirror"] = {"node": "shadow", "sample": 0.1}
    path.write_text(dump_config(config))
    r = subprocess.run([sys.executable, "-m", "heliosproxy", "check-config", "--connect", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node shadow" in r.stdout and "ok (shadow" in r.stdout


def test_pgbench_through_a_mirroring_proxy(cluster: PgCluster, shadow: PgCluster, proxy_factory: ProxyFactory) -> None:
    """A real client in all three protocol modes, 2 workers: every sampled copy matches, the views add up."""
    proxy = proxy_factory({**FAST, "pool": {"mode": "transaction"}}, nodes=_nodes(cluster, shadow), workers=2,
                          mirror={"node": "shadow", "sample": 0.5, "statements": "reads"})
    for target in (proxy.dsn(), shadow.dsn(shadow.primary)):  # the same pgbench tables on both sides
        res = subprocess.run(["pgbench", "-i", "-s", "1", "-q", target], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    cluster.wait_replay()
    for mode in ("simple", "extended", "prepared"):
        res = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", "4", "-t", "50", proxy.dsn()],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    # Settled: nothing queued and no copy running (a copy taken off the queue is still in flight).
    view = _until(proxy, lambda v: v["mirrored"] + v["dropped"] >= 200 and v["queued"] == 0 and v["running"] == 0)
    assert view["mirrored"] >= 200 and view["mismatches"] == 0 and view["errors"] == 0, view
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        total = admin.execute("SHOW MIRROR").fetchone()
    assert total is not None and total[0] == "total" and int(total[3]) == view["mirrored"]


def test_turned_on_and_off_by_reload(cluster: PgCluster, shadow: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(FAST, nodes=_nodes(cluster, shadow))
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, \
            psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        conn.execute("SELECT 1")
        assert _api(proxy, "/api/mirror")["mirrored"] == 0
        proxy.rewrite_config({**proxy.config, "mirror": {"node": "shadow", "sample": 1.0}})
        admin.execute("RELOAD")
        for i in range(3):
            conn.execute("SELECT %s::int", (i,))
        _until(proxy, lambda v: v["mirrored"] == 3)
        proxy.rewrite_config({k: v for k, v in proxy.config.items() if k != "mirror"})
        admin.execute("RELOAD")
        conn.execute("SELECT 4")
        view = _api(proxy, "/api/mirror")
        assert view["enabled"] is False and view["mirrored"] == 0
