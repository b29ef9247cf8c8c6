"""Circuit breakers per node (issue 15 §3) through a running proxy: hung servers trip them, fail fast, recover."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers.pgcluster import PgCluster, PgNode
from tests.helpers.proxy import ProxyFactory, ProxyProcess

BREAKER = {"failures": 3, "window": "10s", "open_for": "1s"}
# Checks time out after 1s: a healthy server on a loaded test machine answers well within it.
FAST_HEALTH = {"interval": "200ms", "timeout": "1s", "failures_before_down": 3}


def _node_pids(node: PgNode) -> list[int]:
    """The postmaster of a node this test's cluster runs, and its children."""
    master = int((node.datadir / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def _hung(node: PgNode) -> Iterator[Callable[[], None]]:
    """SIGSTOP every process of the node (it accepts TCP in the kernel and answers nothing); SIGCONT at exit
    or when the yielded function is called."""
    pids = _node_pids(node)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    resumed = False

    def resume() -> None:
        nonlocal resumed
        if not resumed:
            resumed = True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    try:
        yield resume
    finally:
        resume()


def _nodes(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(proxy.admin_url + "/api/nodes", timeout=5) as resp:
        return {n["name"]: n for n in json.loads(resp.read())}


def _wait_breaker(proxy: ProxyProcess, node: str, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _nodes(proxy)[node]["breaker"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"breaker of {node} not {state}: {_nodes(proxy)[node]}\n{proxy.output()[-3000:]}")


def _show_nodes(proxy: ProxyProcess) -> dict[str, str]:
    with psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True) as c, c.cursor() as cur:
        cur.execute("SHOW NODES")
        assert cur.description is not None
        cols = [d.name for d in cur.description]
        return {row[0]: row[cols.index("breaker")] for row in cur.fetchall()}


def _metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_hung_primary_trips_the_breaker_statements_fail_fast_then_it_recovers(
    proxy_factory: ProxyFactory, cluster_factory: Callable[..., PgCluster]
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"admin": {"users": ["app"]}, "health": FAST_HEALTH, "circuit_breaker": BREAKER,
                           "pool": {"connect_timeout": "3s"}}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as other:
        assert other.execute("SELECT txid_current() > 0").fetchone() == (True,)  # a write: the primary
    # (`conn` writes nothing that succeeds before its reads: they may go to the standby at once)
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        assert _show_nodes(proxy) == {"primary": "closed", "standby1": "closed"}
        with _hung(pg.primary) as resume:
            _wait_breaker(proxy, "primary", "open")  # its health checks time out: a hung server trips it
            assert _show_nodes(proxy)["primary"] == "open"
            assert _metric(proxy, "heliosproxy_node_breaker_state", node="primary", state="open") == 1
            # A statement that needs the primary fails at once with 08006 instead of waiting for it.
            t0 = time.monotonic()
            try:
                conn.execute("SELECT txid_current()")
                raise AssertionError("a write ran against a hung primary")
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "08006", exc
                assert 'circuit breaker for node "primary"' in str(exc)
            assert time.monotonic() - t0 < 1.5  # not connect_timeout (3s), failover.write_timeout (5s) or forever
            # Reads avoid nothing they need: the standby serves them; the session goes on.
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            # After open_for the half-open probe (a health check) fails against the hung server: open again.
            deadline = time.monotonic() + 10
            while _metric(proxy, "heliosproxy_node_breaker_opened_total", node="primary") < 2:
                assert time.monotonic() < deadline, proxy.output()[-3000:]
                time.sleep(0.1)
            assert _nodes(proxy)["primary"]["breaker"] in ("open", "half_open")
            assert _metric(proxy, "heliosproxy_node_breaker_rejected_total", node="primary") >= 1
            resume()
            _wait_breaker(proxy, "primary", "closed")  # the next probe succeeds
        deadline = time.monotonic() + 15
        while True:  # the health checks bring the node back up (successes_before_up), then writes run
            try:
                assert conn.execute("SELECT txid_current() > 0").fetchone() == (True,)
                break
            except psycopg.Error:
                assert time.monotonic() < deadline, proxy.output()[-3000:]
                time.sleep(0.1)
        out = proxy.output()
        assert re.search(r"node primary: circuit breaker open after 3 failures", out), out[-3000:]
        assert "node primary: circuit breaker closed (probe succeeded)" in out
    finally:
        conn.close()


def test_hung_standby_leaves_the_read_rotation(
    proxy_factory: ProxyFactory, cluster_factory: Callable[..., PgCluster]
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": FAST_HEALTH, "circuit_breaker": BREAKER}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with _hung(pg.standbys[0]):
            _wait_breaker(proxy, "standby1", "open")
            t0 = time.monotonic()
            for _ in range(5):  # reads avoid the node: they go to the primary (standby_fallback), at once
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert time.monotonic() - t0 < 1.0
            conn.execute("SET helios.node = 'standby1'")
            try:
                conn.execute("SELECT 1")
                raise AssertionError("a statement ran on a hung node")
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "08006"
            conn.execute("RESET helios.node")
        _wait_breaker(proxy, "standby1", "closed")


def test_a_socket_that_never_answers_trips_the_breaker_of_its_node(
    proxy_factory: ProxyFactory, cluster: PgCluster
) -> None:
    # A "server" that accepts TCP connections and never says a word.
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        black_hole.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(black_hole.accept()[0])

    t = threading.Thread(target=accept)
    t.start()
    try:
        nodes = [{"name": "primary", "host": "127.0.0.1", "port": cluster.primary.port, "role": "primary"},
                 {"name": "silent", "host": "127.0.0.1", "port": black_hole.getsockname()[1], "role": "standby"}]
        proxy = proxy_factory({"nodes": nodes, "health": FAST_HEALTH,
                               "circuit_breaker": {"failures": 2, "window": "10s", "open_for": "30s"},
                               "pool": {"connect_timeout": "3s"}})
        _wait_breaker(proxy, "silent", "open")
        assert accepted  # it was reached: TCP accepted, no answer
        assert _nodes(proxy)["primary"]["breaker"] == "closed"
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SET helios.node = 'silent'")
            t0 = time.monotonic()
            try:
                conn.execute("SELECT 1")
                raise AssertionError("no error from a silent node")
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "08006"
            assert time.monotonic() - t0 < 1.5  # not connect_timeout (3s)
            conn.execute("RESET helios.node")
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop.set()
        t.join()
        for s in accepted:
            s.close()
        black_hole.close()


def test_breakers_off_by_default(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"users": ["app"]}})
    assert set(_show_nodes(proxy).values()) == {"closed"}
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "heliosproxy_node_breaker_state" not in text and "heliosproxy_limit_statements" not in text


def test_statement_timeouts_against_a_hung_server_trip_the_breaker(
    proxy_factory: ProxyFactory, cluster_factory: Callable[..., PgCluster]
) -> None:
    pg = cluster_factory(standbys=0)
    # Health checks far apart (they play no part here); two idle server connections ready in the pool.
    proxy = proxy_factory({"health": {"interval": "60s", "timeout": "1s"},
                           "circuit_breaker": {"failures": 2, "window": "20s", "open_for": "60s"},
                           "pool": {"query_timeout": "700ms", "min_size": 2, "connect_timeout": "5s"}},
                          cluster=pg)
    a, b, c = (psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(3))
    try:
        for conn in (a, b, c):
            conn.execute("SELECT 1")  # (the pool exists from the first statement on; min_size fills it)
        deadline = time.monotonic() + 10
        while _metric(proxy, "heliosproxy_server_connections", node="primary", state="idle") < 2:
            assert time.monotonic() < deadline, proxy.output()[-3000:]
            time.sleep(0.1)
        with _hung(pg.primary):
            for victim in (a, b):  # sent on a pooled connection; the server never answers
                try:
                    victim.execute("SELECT 1")
                    raise AssertionError("a hung server answered")
                except psycopg.OperationalError as exc:
                    assert "query timeout" in str(exc)
            _wait_breaker(proxy, "primary", "open", timeout=5)
            t0 = time.monotonic()
            try:
                c.execute("SELECT 1")
                raise AssertionError("a statement ran against an open breaker")
            except psycopg.OperationalError as exc:
                assert exc.sqlstate == "08006"
            assert time.monotonic() - t0 < 0.5  # not query_timeout
        assert "circuit breaker open after 2 failures within 20s (last: query timeout without a reply" in (
            proxy.output())
    finally:
        for conn in (a, b, c):
            conn.close()
