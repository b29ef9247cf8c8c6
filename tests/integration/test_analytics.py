"""Query analytics (issue 15 §5) through a running proxy: per-fingerprint numbers, slow log, N+1, bursts, workers."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

FAST = {"health": {"interval": "300ms"}, "admin": {"users": ["app"]}}
COLUMNS = ["query", "calls", "errors", "total_ms", "mean_ms", "p50_ms", "p99_ms", "rows", "bytes"]


def _api(proxy: ProxyProcess) -> dict[str, Any]:
    with urllib.request.urlopen(proxy.admin_url + "/api/analytics", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _fp(view: dict[str, Any], needle: str) -> dict[str, Any]:
    found = [f for f in view["fingerprints"] if needle in f["query"]]
    assert len(found) == 1, (needle, view["fingerprints"])
    return found[0]


def _show(proxy: ProxyProcess) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        cur = admin.execute("SHOW ANALYTICS")
        assert cur.description is not None
        return [d.name for d in cur.description], cur.fetchall()


def _setup(cluster: PgCluster) -> None:
    cluster.sql(cluster.primary, "DROP TABLE IF EXISTS an_t; CREATE TABLE an_t (id int PRIMARY KEY, v text);"
                " INSERT INTO an_t SELECT g, repeat('x', 100) FROM generate_series(1, 100) g", user="app", db="app")
    cluster.wait_replay()


def test_off_by_default(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(FAST)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    view = _api(proxy)
    assert view["enabled"] is False and view["fingerprints"] == [] and view["n_plus_one"] == []
    assert _show(proxy) == (COLUMNS, [])


def test_per_fingerprint_numbers_and_slow_log(cluster: PgCluster, proxy_factory: ProxyFactory,
                                              tmp_path: Path) -> None:
    _setup(cluster)
    slow_log = tmp_path / "slow.jsonl"
    proxy = proxy_factory(FAST, analytics={"enabled": True, "slow_log": {"threshold": "150ms", "file": str(slow_log)},
                                           "n_plus_one": {"threshold": 1000}})
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for i in range(1, 21):  # simple protocol, literal values: one fingerprint
            assert len(conn.execute(f"SELECT id, v FROM an_t WHERE id <= {i}").fetchall()) == i
        for i in range(1, 11):  # extended protocol
            assert conn.execute("SELECT v FROM an_t WHERE id = %s", (i,)).fetchone() is not None
        for _ in range(3):
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT nope FROM an_t")
        conn.execute("UPDATE an_t SET v = v WHERE id <= 7")
        conn.execute("SELECT pg_sleep(0.2)")
    view = _api(proxy)
    assert set(view) >= {"fingerprints", "n_plus_one", "bursts"}
    ranged = _fp(view, "SELECT id, v FROM an_t WHERE id <= $1")
    assert (ranged["calls"], ranged["errors"], ranged["rows"]) == (20, 0, 210), ranged
    assert ranged["bytes"] > 210 * 100  # every row carries 100 characters
    assert 0 < ranged["p50_ms"] <= ranged["p99_ms"] and ranged["total_ms"] > 0
    assert abs(ranged["mean_ms"] - ranged["total_ms"] / 20) < 0.01
    one = _fp(view, "WHERE id = $1")
    assert (one["calls"], one["rows"]) == (10, 10), one
    bad = _fp(view, "SELECT nope")
    assert (bad["calls"], bad["errors"], bad["rows"]) == (3, 3, 0)
    assert _fp(view, "UPDATE an_t")["rows"] == 7
    sleep = _fp(view, "pg_sleep")
    assert sleep["p50_ms"] >= 150 and sleep["total_ms"] >= 200
    assert list(view["fingerprints"][0]) == COLUMNS
    assert view["fingerprints"][0]["query"] == sleep["query"]  # ordered by total time

    cols, rows = _show(proxy)
    assert cols == COLUMNS
    shown = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    assert shown[ranged["query"]]["calls"] == "20" and shown[ranged["query"]]["rows"] == "210"

    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        assert "\nheliosproxy_analytics_slow_statements_total 1.0\n" in r.read().decode()
    lines = [json.loads(x) for x in slow_log.read_text().splitlines()]
    assert len(lines) == 1, lines  # only the statement over the threshold
    assert lines[0]["query"] == "SELECT pg_sleep($1)" and lines[0]["duration_ms"] >= 200
    assert lines[0]["user"] == "app" and lines[0]["database"] == "app" and lines[0]["rows"] == 1


def test_n_plus_one_and_bursts(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    _setup(cluster)
    proxy = proxy_factory(FAST, analytics={"enabled": True, "n_plus_one": {"threshold": 10, "window": "2s"},
                                           "bursts": {"threshold": 30, "window": "5s"}})
    with psycopg.connect(proxy.dsn(application_name="loop"), autocommit=True) as loop, \
            psycopg.connect(proxy.dsn(application_name="calm"), autocommit=True) as calm:
        for i in range(1, 13):  # the N+1 shape: one query per parent row
            loop.execute("SELECT v FROM an_t WHERE id = %s", (i,))
        for i in range(1, 6):
            calm.execute(f"SELECT id FROM an_t WHERE id > {i} LIMIT 1")
            time.sleep(0.01)
    view = _api(proxy)
    events = view["n_plus_one"]
    assert len(events) == 1, events
    ev = events[0]
    assert ev["application_name"] == "loop" and "WHERE id = $1" in ev["query"] and ev["count"] == 12, ev
    assert ev["client"] and view["bursts"] == []

    # A burst: the same statement from one client address over several sessions, none of them N+1.
    for _ in range(4):
        with psycopg.connect(proxy.dsn(), autocommit=True) as c:
            for _ in range(9):
                c.execute("SELECT count(*) FROM an_t")
    view = _api(proxy)
    bursts = [b for b in view["bursts"] if "count(*)" in b["query"]]
    assert len(bursts) == 1 and bursts[0]["client"] == "127.0.0.1" and bursts[0]["count"] == 36, view["bursts"]
    assert len(view["n_plus_one"]) == 1


def test_across_workers(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    _setup(cluster)
    proxy = proxy_factory(FAST, workers=2, analytics={"enabled": True})
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(8)]
    try:
        for c in conns:
            for _ in range(5):
                c.execute("SELECT id FROM an_t WHERE id < 4")
        workers = {c.info.backend_pid >> 24 & 0x3F for c in conns}
    finally:
        for c in conns:
            c.close()
    assert len(workers) == 2, "the kernel gave every connection to one worker; the test proves nothing"
    fp = _fp(_api(proxy), "WHERE id < $1")
    assert (fp["calls"], fp["rows"]) == (40, 120), fp
    cols, rows = _show(proxy)
    shown = [dict(zip(cols, r, strict=True)) for r in rows if "WHERE id < $1" in r[0]]
    assert shown[0]["calls"] == "40" and shown[0]["rows"] == "120"


def test_turned_on_and_off_by_reload(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(FAST)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn, \
            psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as admin:
        conn.execute("SELECT 41")
        assert _api(proxy)["fingerprints"] == []
        proxy.rewrite_config({**proxy.config, "analytics": {"enabled": True}})
        admin.execute("RELOAD")
        for _ in range(3):  # the session began before: counted from now on (rows from its next statement)
            conn.execute("SELECT 42 FROM generate_series(1, 2)")
        fp = _fp(_api(proxy), "generate_series")
        assert fp["calls"] == 3 and fp["rows"] >= 4, fp
        proxy.rewrite_config({**proxy.config, "analytics": {"enabled": False}})
        admin.execute("RELOAD")
        conn.execute("SELECT 43")
        assert _api(proxy)["enabled"] is False


def _overview(proxy: ProxyProcess) -> dict[str, Any]:
    with urllib.request.urlopen(proxy.admin_url + "/api/overview", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def test_dashboard_top_statements_carry_p99_with_analytics(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """The dashboard's top statements (GET /api/overview) get each statement's p99 from analytics."""
    _setup(cluster)
    for on in (False, True):
        proxy = proxy_factory(FAST, analytics={"enabled": on})
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(20):
                conn.execute("SELECT pg_sleep(0.01), %s::int", (i,))
        rows = [q for q in _overview(proxy)["queries"] if "pg_sleep" in q["query"]]
        assert len(rows) == 1 and rows[0]["calls"] == 20
        if on:
            assert 10.0 <= rows[0]["p99_ms"] < 5000, rows[0]
        else:
            assert "p99_ms" not in rows[0]
