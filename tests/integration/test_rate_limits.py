"""Rate limits and quotas (issue 15 §2) through a running proxy: reject, queue, delay, keys, workers, reload."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.helpers.proxy import ProxyFactory, ProxyProcess

ADMIN = {"admin": {"users": ["app"]}, "routing": {"read_write_split": False}}


def _console(proxy: ProxyProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(dbname="heliosproxy"), autocommit=True)


def _limits(proxy: ProxyProcess) -> list[dict[str, Any]]:
    with _console(proxy) as c, c.cursor() as cur:
        cur.execute("SHOW LIMITS")
        assert cur.description is not None
        cols = [d.name for d in cur.description]
        assert cols == ["name", "key", "value", "allowed", "rejected", "queued"]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _row(proxy: ProxyProcess, name: str, value: str) -> dict[str, Any]:
    rows = [r for r in _limits(proxy) if r["name"] == name and r["value"] == value]
    assert len(rows) == 1, _limits(proxy)
    return rows[0]


def _run(conn: psycopg.Connection[Any], sql: str = "SELECT 1", **kw: Any) -> str | None:
    """None when the statement ran, else its SQLSTATE (the message is kept in conn.info... via the raise)."""
    try:
        conn.execute(sql, **kw)
        return None
    except psycopg.Error as exc:
        return exc.sqlstate


def test_reject_names_the_limit_and_the_session_goes_on(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, limits=[{"name": "per_user", "key": "user", "rate": 1, "burst": 3,
                                          "action": "reject"}])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        start = time.monotonic()
        results = [_run(conn) for _ in range(10)]
        elapsed = time.monotonic() - start
        ok = results.count(None)
        assert set(results) <= {None, "53400"}, results
        assert results[:3] == [None, None, None]  # the burst
        assert 3 <= ok <= 3 + int(elapsed * 1) + 1, (results, elapsed)
        with pytest.raises(psycopg.Error) as err:
            for _ in range(5):
                conn.execute("SELECT 1")
        assert err.value.sqlstate == "53400"
        assert 'limit "per_user" exceeded for user "app"' in str(err.value)
        # The session goes on: once a token is back, statements run again.
        time.sleep(1.1)
        assert conn.execute("SELECT 42").fetchone() == (42,)
        # Extended protocol (prepared statements) is limited the same way.
        errors = [_run(conn, "SELECT %s::int", params=(1,), prepare=True) for _ in range(4)]
        assert "53400" in errors
    row = _row(proxy, "per_user", "app")
    assert row["key"] == "user"
    assert row["rejected"] >= 8 and row["allowed"] >= 4
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'heliosproxy_limit_statements_total{key="user",limit="per_user",result="rejected",value="app"}' in text


def test_reject_inside_a_transaction_fails_it_and_rollback_is_never_limited(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, limits=[{"name": "tiny", "key": "database", "rate": 0.01, "burst": 2}])
    with psycopg.connect(proxy.dsn()) as conn:  # not autocommit: BEGIN is sent implicitly
        conn.execute("SELECT 1")  # BEGIN + SELECT: two tokens (the burst)
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 2")
        assert err.value.sqlstate == "53400" and '"tiny"' in str(err.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()  # never limited
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_tenant_and_fingerprint_keys(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, limits=[
        {"name": "per_tenant", "key": "tenant", "rate": 0.01, "burst": 2},
        {"name": "per_query", "key": "fingerprint", "rate": 0.01, "burst": 5},
    ])
    with psycopg.connect(proxy.dsn(), autocommit=True) as a, psycopg.connect(proxy.dsn(), autocommit=True) as b:
        a.execute("SET helios.tenant = 'acme'")
        b.execute("SET helios.tenant = 'globex'")
        assert [_run(a, "SELECT 1 AS a"), _run(a, "SELECT 1 AS a"), _run(a, "SELECT 1 AS a")] == [None, None, "53400"]
        assert _run(b, "SELECT 1 AS b") is None  # another tenant has its own bucket
        b.execute("RESET helios.tenant")
        # No tenant: per_tenant does not apply; per_query does (same statement shape, any constant).
        assert [_run(b, f"SELECT {i} + 1") for i in range(6)] == [None] * 5 + ["53400"]
        assert _run(b, "SELECT current_database()") is None  # another fingerprint
    rows = _limits(proxy)
    assert {(r["name"], r["value"]) for r in rows if r["name"] == "per_tenant"} == {("per_tenant", "acme"),
                                                                                    ("per_tenant", "globex")}
    assert any(r["name"] == "per_query" and r["key"] == "fingerprint" and r["rejected"] == 1 for r in rows)


def _sleep_in_thread(proxy: ProxyProcess, seconds: float, started: threading.Event) -> threading.Thread:
    def run() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as c:
            started.set()
            c.execute(f"SELECT pg_sleep({seconds})")

    t = threading.Thread(target=run)
    t.start()
    return t


def _wait_active(proxy: ProxyProcess, name: str, value: str, timeout: float = 5.0) -> None:
    """Until the limit counts a statement of `value` as allowed (the sleeper holds its slot)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["name"] == name and r["value"] == value and r["allowed"] >= 1 for r in _limits(proxy)):
            return
        time.sleep(0.02)
    raise AssertionError(_limits(proxy))


def test_concurrency_queue_waits_then_runs_or_gives_up(proxy_factory: ProxyFactory) -> None:
    limit = {"name": "one_at_a_time", "key": "database", "concurrency": 1, "action": "queue", "max_wait": "5s"}
    proxy = proxy_factory(ADMIN, limits=[limit])
    started = threading.Event()
    sleeper = _sleep_in_thread(proxy, 1.0, started)
    _wait_active(proxy, "one_at_a_time", "app")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        t0 = time.monotonic()
        assert conn.execute("SELECT 7").fetchone() == (7,)  # queued behind the sleeper, then ran
        waited = time.monotonic() - t0
    sleeper.join()
    assert waited >= 0.5, waited
    row = _row(proxy, "one_at_a_time", "app")
    assert row["queued"] >= 1 and row["rejected"] == 0

    # max_wait shorter than the statement ahead: 53400 after about max_wait.
    proxy.rewrite_config({**proxy.config, "limits": [{**limit, "max_wait": "300ms"}]})
    with _console(proxy) as c:
        c.execute("RELOAD")
    started.clear()
    sleeper = _sleep_in_thread(proxy, 2.0, started)
    deadline = time.monotonic() + 5
    while _row(proxy, "one_at_a_time", "app")["allowed"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 8")
        waited = time.monotonic() - t0
        assert err.value.sqlstate == "53400" and "concurrency 1" in str(err.value)
        assert 0.25 <= waited < 1.8, waited
        sleeper.join()
        assert conn.execute("SELECT 9").fetchone() == (9,)  # the session goes on


def test_concurrency_reject_is_immediate(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, limits=[{"name": "solo", "key": "user", "concurrency": 1}])
    started = threading.Event()
    sleeper = _sleep_in_thread(proxy, 1.5, started)
    _wait_active(proxy, "solo", "app")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        t0 = time.monotonic()
        assert _run(conn) == "53400"
        assert time.monotonic() - t0 < 0.5
        sleeper.join()
        assert _run(conn) is None


def test_delay_paces_statements_without_rejecting(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN, limits=[{"name": "paced", "key": "client_addr", "rate": 10, "burst": 1,
                                          "action": "delay", "max_wait": "5s"}])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        t0 = time.monotonic()
        results = [_run(conn) for _ in range(11)]
        elapsed = time.monotonic() - t0
    assert results == [None] * 11
    assert elapsed >= 0.9, elapsed  # 10 statements past the burst at 10/s
    row = _row(proxy, "paced", "127.0.0.1")
    assert row["key"] == "client_addr" and row["allowed"] == 11 and row["queued"] >= 9 and row["rejected"] == 0


def test_limits_apply_on_reload(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(ADMIN)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert [_run(conn) for _ in range(5)] == [None] * 5  # no limits: nothing refused
        proxy.rewrite_config({**proxy.config, "limits": [{"name": "r", "key": "user", "rate": 0.01, "burst": 1}]})
        with _console(proxy) as c:
            c.execute("RELOAD")
        assert [_run(conn), _run(conn)] == [None, "53400"]  # the same session, the new limit
        proxy.rewrite_config({**proxy.config, "limits": [{"name": "r", "key": "user", "rate": 1000, "burst": 5}]})
        with _console(proxy) as c:
            c.execute("RELOAD")
        time.sleep(0.01)
        assert [_run(conn) for _ in range(5)] == [None] * 5  # the bucket refills at the new rate
        rows = _limits(proxy)
        assert rows and rows[0]["rejected"] == 1


def test_limits_are_shared_by_all_workers(proxy_factory: ProxyFactory) -> None:
    rate, burst, seconds = 2.0, 4, 2.0
    proxy = proxy_factory(ADMIN, workers=2, limits=[{"name": "shared", "key": "user", "rate": rate,
                                                     "burst": burst}])
    conns = [psycopg.connect(proxy.dsn(), autocommit=True) for _ in range(12)]
    try:
        workers = {c.info.backend_pid >> 24 & 0x3F for c in conns}  # the proxy's pid carries its worker id
        assert workers == {0, 1}, workers
        ok_by_worker = {0: 0, 1: 0}
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            for c in conns:
                if _run(c) is None:
                    ok_by_worker[c.info.backend_pid >> 24 & 0x3F] += 1
        elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    total = sum(ok_by_worker.values())
    # One bucket for both workers: burst + rate * elapsed at most (a bucket per worker would allow twice that).
    assert total <= burst + rate * elapsed + 1, (ok_by_worker, elapsed)
    assert total >= burst
    deadline = time.monotonic() + 5  # each worker adds its allowed counts to the shared table every 200 ms
    while (row := _row(proxy, "shared", "app"))["allowed"] != total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row["allowed"] == total and row["rejected"] > 0
