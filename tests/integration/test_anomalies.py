"""Anomaly-detection plugins (sqli_guard, novel_query, rate_spike, auth_burst) driven by real traffic through a
running proxy in front of real PostgreSQL; events read back from /api/anomalies and /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.wat_e2e.kit import build_examples, install_example, plugin_config, wait_until

pytestmark = pytest.mark.timeout(90)

AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module", autouse=True)
def tables(cluster: PgCluster) -> Iterator[None]:
    """anom_users (5 rows) and anom_victim (what a stacked DROP would destroy)."""
    build_examples()
    cluster.sql(cluster.primary, """
        DROP TABLE IF EXISTS anom_users, anom_victim;
        CREATE TABLE anom_users (id int PRIMARY KEY, name text);
        INSERT INTO anom_users SELECT g, 'user' || g FROM generate_series(1, 5) g;
        CREATE TABLE anom_victim (id int);
        INSERT INTO anom_victim VALUES (1);
    """, user="app", db="app")
    cluster.wait_replay()
    yield
    cluster.sql(cluster.primary, "DROP TABLE IF EXISTS anom_users, anom_victim", user="app", db="app")


def events(proxy: ProxyProcess, query: str = "") -> list[dict[str, Any]]:
    with urllib.request.urlopen(proxy.admin_url + "/api/anomalies" + query, timeout=5) as r:
        doc = json.load(r)
    assert set(doc) == {"events"}
    out = doc["events"]
    assert isinstance(out, list)
    for e in out:
        assert set(e) == {"plugin", "kind", "severity", "tenant", "detail", "at"}, e
        assert AT.match(e["at"]), e["at"]
    return out


def metrics_text(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        return r.read().decode()


def event_count(proxy: ProxyProcess, plugin: str, kind: str) -> float:
    """heliosproxy_plugin_metric_total{plugin, name="events", kind} summed over severities."""
    total = 0.0
    for line in metrics_text(proxy).splitlines():
        if (line.startswith("heliosproxy_plugin_metric_total{") and f'plugin="{plugin}"' in line
                and 'name="events"' in line and f'kind="{kind}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def connect(proxy: ProxyProcess, tenant: str | None = None, **kw: Any) -> psycopg.Connection[Any]:
    conn = psycopg.connect(proxy.dsn(**kw), autocommit=True, connect_timeout=10)
    if tenant is not None:
        conn.execute(f"SET helios.tenant = '{tenant}'")
    return conn


def psql(proxy: ProxyProcess, script: str) -> subprocess.CompletedProcess[str]:
    """`script` through psql -c (one simple-protocol Query message, so `a; b` stays one text)."""
    return subprocess.run(["psql", proxy.dsn(), "-X", "-v", "VERBOSITY=verbose", "-At", "-c", script],
                          capture_output=True, text=True, timeout=30)


def victim_rows(cluster: PgCluster) -> str:
    return cluster.sql(cluster.primary, "SELECT count(*) FROM anom_victim", user="app", db="app").strip()


PROBES = {
    "tautology": "SELECT id, name FROM anom_users WHERE name = '' OR '1'='1'",
    "union": "SELECT name FROM anom_users WHERE id = 1 UNION SELECT NULL",
    "time_blind": "SELECT id FROM anom_users WHERE id = 1 AND 1 = (SELECT 1 FROM pg_sleep(0.01))",
    "catalog": "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
}
CLEAN = (
    "SELECT id, name FROM anom_users WHERE id = 1 OR id = 2",
    "SELECT id FROM anom_users WHERE 1=1 AND id = 3",
    "SELECT name FROM anom_users WHERE id = 1 UNION SELECT name FROM anom_users WHERE id = 2",
    "SELECT 'OR 1=1; DROP TABLE anom_victim; pg_sleep(1)' AS harmless_text",
)


# ================================================================== sqli_guard


def test_sqli_guard_reports_every_shape_and_lets_clean_traffic_pass(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "sqli_guard")  # its shipped config: mode report
    proxy = proxy_factory(plugin_config(d))
    with connect(proxy, tenant="acme") as conn:
        for q in CLEAN:
            conn.execute(q).fetchall()
        assert events(proxy) == []  # nothing reported for ordinary statements
        # Report mode: every probe still runs (the tautology really returns every row).
        assert len(conn.execute(PROBES["tautology"]).fetchall()) == 5
        for kind in ("union", "time_blind", "catalog"):
            conn.execute(PROBES[kind]).fetchall()
    res = psql(proxy, "SELECT 1; CREATE TEMP TABLE anom_tmp (x int)")  # stacked, harmless
    assert res.returncode == 0, res.stderr

    seen = {e["kind"]: e for e in events(proxy) if e["plugin"] == "sqli_guard"}
    assert set(seen) == {"tautology", "union", "time_blind", "catalog", "stacked"}
    for kind, q in PROBES.items():
        assert q in seen[kind]["detail"] and "(reported)" in seen[kind]["detail"]
        assert seen[kind]["tenant"] == "acme"
    assert seen["stacked"]["tenant"] == "app"  # no tenant attribute: the identity
    assert seen["stacked"]["severity"] == "critical"
    assert seen["tautology"]["severity"] == "high" and seen["catalog"]["severity"] == "low"
    for kind in seen:
        assert event_count(proxy, "sqli_guard", kind) == 1.0, kind


def test_sqli_guard_blocks_with_42000_in_block_mode(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "sqli_guard", config={"mode": "block"})
    proxy = proxy_factory(plugin_config(d))
    with connect(proxy, tenant="globex") as conn:
        for kind in ("tautology", "union", "time_blind"):
            with pytest.raises(psycopg.Error) as ei:
                conn.execute(PROBES[kind])
            assert ei.value.sqlstate == "42000", kind
            assert str(ei.value).startswith("sqli_guard: "), str(ei.value)
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        # catalog probes are reported, not blocked, by default (drivers and tools read the catalog)
        conn.execute(PROBES["catalog"]).fetchall()
        for q in CLEAN:
            conn.execute(q).fetchall()
    res = psql(proxy, "SELECT id FROM anom_users WHERE id = 1; DROP TABLE anom_victim")
    assert res.returncode != 0 and "42000" in res.stderr, res.stderr
    assert victim_rows(cluster) == "1"  # the stacked DROP never reached the server

    async def prepared() -> None:  # extended protocol, a named prepared statement (asyncpg)
        conn = await asyncpg.connect(proxy.dsn(), timeout=10)
        try:
            with pytest.raises(asyncpg.PostgresError) as ei:
                await conn.fetch("SELECT id FROM anom_users WHERE name = $1 OR 2>1", "x")
            assert ei.value.sqlstate == "42000"
            assert await conn.fetchval("SELECT count(*) FROM anom_users WHERE name = $1", "user1") == 1
        finally:
            await conn.close()

    asyncio.run(prepared())

    got = [e for e in events(proxy) if e["plugin"] == "sqli_guard"]
    assert sorted(e["kind"] for e in got) == ["catalog", "stacked", "tautology", "tautology", "time_blind", "union"]
    for e in got:
        assert ("(reported)" if e["kind"] == "catalog" else "(blocked)") in e["detail"], e
    assert 'heliosproxy_plugin_metric_total{kind="tautology",name="blocked",plugin="sqli_guard"} 2.0' in \
        metrics_text(proxy)


def test_sqli_guard_refuses_a_bad_config(proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path) -> None:
    d = tmp_path / "p"
    install_example(d, "sqli_guard", config={"mode": "shout"})
    proxy = proxy_factory(plugin_config(d))
    proxy.wait_output('plugin sqli_guard refused: init refused its config: config.mode must be "report" or "block"')


# ================================================================== novel_query


def test_novel_query_reports_each_fingerprint_once(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "novel_query")
    proxy = proxy_factory(plugin_config(d))
    with connect(proxy, tenant="acme") as conn:
        for i in range(1, 6):
            conn.execute(f"SELECT name FROM anom_users WHERE id = {i}").fetchall()
        conn.execute("SELECT count(*) FROM anom_users").fetchall()
        conn.execute("SELECT count(*) FROM anom_users").fetchall()

    def mine() -> list[dict[str, Any]]:
        return [e for e in events(proxy) if e["plugin"] == "novel_query" and "anom_users" in e["detail"]]

    wait_until(lambda: len(mine()) >= 2, 5, "two novel_query events")
    time.sleep(0.3)  # observers run off the client's path: give a wrong third event the chance to show
    got = mine()
    assert len(got) == 2, got
    assert all(e["kind"] == "novel_query" and e["severity"] == "info" and e["tenant"] == "acme" for e in got)
    details = " | ".join(e["detail"] for e in got)
    assert "WHERE id = $1" in details and "count(*)" in details
    assert "WHERE id = 1" not in details  # the normalized text, never the constants


def test_novel_query_learns_silently_during_learn_ms(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "novel_query", config={"learn_ms": 600000})
    proxy = proxy_factory(plugin_config(d))
    with connect(proxy) as conn:
        conn.execute("SELECT id FROM anom_users WHERE id = 4").fetchall()
    wait_until(lambda: "fingerprints" in metrics_text(proxy), 5, "the fingerprints gauge")
    assert events(proxy) == []


# ================================================================== rate_spike


def test_rate_spike_flags_the_bursting_tenant_only(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    cfg = {"interval_ms": 200, "alpha_pct": 30, "z": 4, "min_samples": 5, "min_rate": 50, "min_ratio": 3,
           "min_stddev": 5, "cooldown_ms": 60000}
    install_example(d, "rate_spike", config=cfg)
    proxy = proxy_factory(plugin_config(d))
    with connect(proxy, tenant="steady") as steady, connect(proxy, tenant="bursty") as bursty:
        # A baseline of ~20 statements/s each for 2.4 s (12 buckets of 200 ms).
        end = time.monotonic() + 2.4
        while time.monotonic() < end:
            steady.execute("SELECT 1").fetchall()
            bursty.execute("SELECT 1").fetchall()
            time.sleep(0.05)
        assert [e for e in events(proxy) if e["plugin"] == "rate_spike"] == []
        # bursty: as fast as it can go; steady keeps its pace.
        next_steady = time.monotonic()
        for _ in range(600):
            bursty.execute("SELECT 1").fetchall()
            if time.monotonic() >= next_steady:
                steady.execute("SELECT 1").fetchall()
                next_steady = max(next_steady + 0.05, time.monotonic())  # never a catch-up burst
        spikes = wait_until(lambda: [e for e in events(proxy) if e["plugin"] == "rate_spike"], 5, "a rate_spike event")
    assert {e["tenant"] for e in spikes} == {"bursty"}, [e["detail"] for e in spikes]
    e = spikes[0]
    assert e["kind"] == "rate_spike" and e["severity"] in ("medium", "high")
    m = re.match(r"rate ([\d.]+)/s .* baseline of ([\d.]+)/s .* z=([\d.]+)$", e["detail"])
    assert m, e["detail"]
    rate, baseline, z = map(float, m.groups())
    assert rate >= 3 * baseline and z >= 4
    assert event_count(proxy, "rate_spike", "rate_spike") == len(spikes)
    text = metrics_text(proxy)
    assert re.search(r'heliosproxy_plugin_gauge\{name="baseline",plugin="rate_spike",tenant="steady"\} [1-9]', text)


# ================================================================== auth_burst


def _bad_login(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(proxy.dsn(password="wrong-password"), connect_timeout=10)
    assert "28P01" in str(ei.value) or "password authentication failed" in str(ei.value)


def test_auth_burst_reports_failed_login_bursts(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "auth_burst", config={"threshold": 4, "window_ms": 30000})
    proxy = proxy_factory(plugin_config(d))
    # The observer changes nothing about logins: SCRAM still works, wrong passwords still get 28P01.
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for _ in range(3):
        _bad_login(proxy)
    wait_until(lambda: 'name="failed_logins",plugin="auth_burst"} 3.0' in metrics_text(proxy), 5, "3 failures seen")
    assert events(proxy) == []  # 3 < threshold
    _bad_login(proxy)
    got = wait_until(lambda: len(events(proxy)) >= 2 and events(proxy), 5, "auth_burst events")
    assert {e["kind"] for e in got} == {"auth_burst"} and {e["plugin"] for e in got} == {"auth_burst"}
    details = sorted(e["detail"] for e in got)
    assert details[0].startswith("4 failed logins for user app within "), details
    assert details[1].startswith("4 failed logins from 127.0.0.1 within "), details
    assert all(e["severity"] == "high" and e["tenant"] == "app" for e in got)
    _bad_login(proxy)  # within the same window: no second report
    time.sleep(0.3)
    assert len(events(proxy)) == 2
    assert event_count(proxy, "auth_burst", "auth_burst") == 2.0


# ================================================================== /api/anomalies


def test_anomalies_of_every_worker_are_served_newest_first(
    proxy_factory: ProxyFactory, cluster: PgCluster, tmp_path: Path
) -> None:
    d = tmp_path / "p"
    install_example(d, "sqli_guard")
    proxy = proxy_factory({**plugin_config(d), "workers": 2})
    wait_until(lambda: proxy.output().count("plugin sqli_guard 1.0.0 loaded") >= 2, 10, "both workers loaded it")
    markers = [f"m{i}" for i in range(10)]
    for m in markers:  # a new connection each: the kernel spreads them over both workers (SO_REUSEPORT)
        with connect(proxy, tenant=m) as conn:
            conn.execute(f"SELECT id FROM anom_users WHERE id = 1 OR 1=1 /* {m} */").fetchall()
    got = wait_until(lambda: len(events(proxy)) >= len(markers) and events(proxy), 5, "every event")
    assert sorted(e["tenant"] for e in got) == sorted(markers)
    assert [e["at"] for e in got] == sorted((e["at"] for e in got), reverse=True)
    assert [e["tenant"] for e in events(proxy, "?limit=3")] == [e["tenant"] for e in got[:3]]
    with pytest.raises(urllib.error.HTTPError) as ei:
        events(proxy, "?limit=x")
    assert ei.value.code == 400
