"""Failover through the proxy on clusters of their own: follow a promotion, fence the old primary,
promote by itself, and take a stopped or lagging standby out of reads and back."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

INTERVAL = 0.5
FAILURES = 3
HEALTH = {"interval": f"{int(INTERVAL * 1000)}ms", "timeout": "500ms", "failures_before_down": FAILURES,
          "successes_before_up": 2}


def _nodes(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(proxy.admin_url + "/api/nodes", timeout=5) as r:
        return {n["name"]: n for n in json.load(r)}


def _metric(proxy: ProxyProcess, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


class Reader(threading.Thread):
    """Reads through the proxy in a loop on one connection; records every failure."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.ports: set[int] = set()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    row = conn.execute("SELECT count(*), inet_server_port() FROM events").fetchone()
                    assert row is not None
                    self.ports.add(int(row[1]))
                    self.ok += 1
                except psycopg.Error as exc:
                    self.errors.append(f"{time.monotonic():.2f} {exc.sqlstate} {exc}")
                time.sleep(0.02)


def _write_once(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute("INSERT INTO events(note) VALUES ('w') RETURNING inet_server_port()").fetchone()
        assert row is not None
        return int(row[0])


def test_writes_follow_a_promotion_and_the_old_primary_is_fenced(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "admin": {"users": ["app"]}}, cluster=pg)
    dsn = proxy.dsn()
    old, new = pg.primary, pg.standbys[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text)")
        assert conn.execute("INSERT INTO events(note) VALUES ('before') RETURNING inet_server_port()"
                            ).fetchone() == (old.port,)
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 5, "standby1 up")

    # An idle client in transaction mode, connected before the failover, keeps its session.
    idle = psycopg.connect(dsn, autocommit=True)
    reader = Reader(dsn)
    reader.start()
    _wait(lambda: reader.ok > 5, 5, "reads flowing")

    t_stop = time.monotonic()
    pg.stop_node(old, "immediate")
    pg.promote(new)
    t_promoted = time.monotonic()

    first_ok: float | None = None
    port = None
    deadline = t_promoted + INTERVAL * FAILURES + 2
    while time.monotonic() < deadline + 3:  # keep trying past the bound to report the real time
        try:
            port = _write_once(dsn)
            first_ok = time.monotonic()
            break
        except psycopg.Error:
            time.sleep(0.05)
    assert first_ok is not None, "writes never came back:\n" + proxy.output()[-3000:]
    after_promote = first_ok - t_promoted
    print(f"\nFAILOVER (manual promote): writes back {after_promote:.2f}s after the promotion finished, "
          f"{first_ok - t_stop:.2f}s after the primary stopped (promotion took {t_promoted - t_stop:.2f}s); "
          f"bound {INTERVAL * FAILURES + 2:.1f}s")
    assert after_promote <= INTERVAL * FAILURES + 2
    assert port == new.port

    # The idle client notices nothing: its next write works on the new primary.
    row = idle.execute("INSERT INTO events(note) VALUES ('idle') RETURNING inet_server_port()").fetchone()
    assert row == (new.port,)
    idle.close()

    reader.stop.set()
    reader.join(5)
    assert reader.errors == [], reader.errors
    assert reader.ok > 10

    nodes = _nodes(proxy)
    assert nodes["standby1"]["write_target"] is True
    assert nodes["standby1"]["role"] == "primary"
    _wait(lambda: _nodes(proxy)["primary"]["state"] == "down", 2 * INTERVAL + 1, "old primary marked down")
    assert _metric(proxy, "heliosproxy_failovers_total") == 1.0
    assert _metric(proxy, "heliosproxy_node_write_target", node="standby1") == 1.0

    # The old primary comes back still claiming primary, on the old timeline: fenced, never written to.
    pg.start_node(old)
    _wait(lambda: _nodes(proxy)["primary"]["state"] == "conflict", 10, "old primary marked conflict")
    nodes = _nodes(proxy)
    assert nodes["primary"]["role"] == "primary"
    assert nodes["primary"]["timeline"] < nodes["standby1"]["timeline"]
    assert nodes["standby1"]["write_target"] is True
    assert "conflict" in proxy.output() and "claims primary" in proxy.output()
    # The fenced old primary is counted (a loaded machine may sample it in two health rounds)
    assert _metric(proxy, "heliosproxy_primary_conflicts_total") >= 1.0
    assert _metric(proxy, "heliosproxy_node_state", node="primary", state="conflict") == 1.0
    for _ in range(5):
        assert _write_once(dsn) == new.port
    # Reads avoid the fenced node too.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(5):
            assert conn.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    # /health: a primary is reachable (the probe says only that; /api/nodes names it).
    with urllib.request.urlopen(proxy.admin_url + "/health", timeout=5) as r:
        assert r.status == 200
        assert json.load(r) == {"status": "ok"}
    assert _nodes(proxy)["standby1"]["write_target"] is True


def test_proxy_promotes_the_best_standby_itself(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    down_for = 1.0
    proxy = proxy_factory(
        {"health": HEALTH, "failover": {"promote": True, "primary_down_for": "1s", "write_timeout": "2s"}},
        cluster=pg,
    )
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 5, "standby1 up")
    assert pg.sql(pg.standbys[0], "SELECT pg_is_in_recovery()") == "t"

    t_stop = time.monotonic()
    pg.stop_node(pg.primary, "immediate")
    first_ok = None
    while time.monotonic() - t_stop < 30:
        try:
            port = _write_once(dsn)
            first_ok = time.monotonic()
            break
        except psycopg.Error:
            time.sleep(0.1)
    assert first_ok is not None, "the proxy did not promote:\n" + proxy.output()[-3000:]
    print(f"\nFAILOVER (failover.promote): writes back {first_ok - t_stop:.2f}s after the primary stopped "
          f"(detection {INTERVAL * FAILURES:.1f}s + primary_down_for {down_for:.0f}s + promotion)")
    assert port == pg.standbys[0].port
    assert pg.sql(pg.standbys[0], "SELECT pg_is_in_recovery()") == "f"
    assert first_ok - t_stop <= INTERVAL * FAILURES + down_for + INTERVAL * 2 + 5
    assert "promoting standby1" in proxy.output()
    assert _metric(proxy, "heliosproxy_promotions_total", result="ok") == 1.0
    assert _nodes(proxy)["standby1"]["write_target"] is True


def test_stopped_or_lagging_standby_leaves_reads_and_comes_back(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "routing": {"max_lag_bytes": 100_000}}, cluster=pg)
    primary, standby = pg.primary, pg.standbys[0]
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 5, "standby1 up")

    def read_port(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT inet_server_port() FROM (SELECT 1) s").fetchone()
        assert row is not None
        return int(row[0])

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert read_port(conn) == standby.port

        # Stopped: out of reads within two health intervals (reads fall back to the primary).
        pg.stop_node(standby, "immediate")
        t = time.monotonic()
        gone = None
        while time.monotonic() - t < 10:
            try:
                if read_port(conn) == primary.port:
                    gone = time.monotonic() - t
                    break
            except psycopg.Error:
                pass
            time.sleep(0.02)
        assert gone is not None
        print(f"\nSTANDBY DOWN: reads moved to the primary {gone:.2f}s after the standby stopped")
        assert gone <= 2 * INTERVAL + 0.5 + 0.5  # two intervals plus the check timeout and slack
        assert _nodes(proxy)["standby1"]["state"] == "down"
        for _ in range(10):
            assert read_port(conn) == primary.port

        # Back: reads return after successes_before_up checks.
        pg.start_node(standby)
        back = _wait(lambda: read_port(conn) == standby.port, 15, "reads back on the standby")
        print(f"STANDBY UP: reads back on the standby {back:.2f}s after it started")
        assert _nodes(proxy)["standby1"]["state"] == "up"

        # Lagging: replay paused while the primary writes past routing.max_lag_bytes.
        pg.sql(standby, "SELECT pg_wal_replay_pause()")
        pg.sql(primary, "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g",
               db="app")
        lagging = _wait(lambda: _nodes(proxy)["standby1"]["state"] == "lagging", 10, "standby lagging")
        print(f"STANDBY LAGGING: detected {lagging:.2f}s after the write")
        assert _nodes(proxy)["standby1"]["lag_bytes"] > 100_000
        assert _metric(proxy, "heliosproxy_node_replication_lag_bytes", node="standby1") > 100_000  # type: ignore[operator]
        for _ in range(5):
            assert read_port(conn) == primary.port
        pg.sql(standby, "SELECT pg_wal_replay_resume()")
        _wait(lambda: read_port(conn) == standby.port, 10, "reads back after the lag cleared")
        assert _nodes(proxy)["standby1"]["state"] == "up"


def test_proxy_promotes_the_synchronous_standby_first(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """failover.promote prefers a synchronous standby over a higher-priority asynchronous one."""
    pg = cluster_factory(standbys=2, settings={"synchronous_standby_names": "standby2"})
    nodes = pg.node_config()
    for n in nodes:
        n["priority"] = 10 if n["name"] == "standby1" else 0
    proxy = proxy_factory(
        {"nodes": nodes, "health": HEALTH,
         "failover": {"promote": True, "primary_down_for": "1s", "write_timeout": "2s"}},
        cluster=pg,
    )
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text)")
    pg.wait_replay()
    _wait(lambda: all(_nodes(proxy)[s]["state"] == "up" for s in ("standby1", "standby2")), 5, "standbys up")
    time.sleep(INTERVAL * 2)  # one more primary check reports the synchronous standby
    pg.stop_node(pg.primary, "immediate")
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        try:
            port = _write_once(dsn)
        except psycopg.Error:
            time.sleep(0.1)
    assert port is not None, "the proxy did not promote:\n" + proxy.output()[-3000:]
    standby2 = next(s for s in pg.standbys if s.name == "standby2")
    assert port == standby2.port, "the synchronous standby2 should win over standby1's higher priority"
    assert "promoting standby2" in proxy.output()
