"""Cancel requests, clients that vanish mid-query and backends that die mid-query, through the proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyProcess, base_config, deep_merge

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request: pytest.FixtureRequest, cluster: PgCluster) -> Iterator[ProxyProcess]:
    config = deep_merge(
        base_config(cluster.node_config()),
        {"routing": {"read_write_split": False}, "pool": {"mode": request.param}},
    )
    with ProxyProcess(config) as p:
        yield p


def _mode(proxy: ProxyProcess) -> str:
    return str(proxy.config["pool"]["mode"])


def _connect(proxy: ProxyProcess) -> Conn:
    return psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5)


def _active_pids(cluster: PgCluster, marker: str) -> list[int]:
    out = cluster.sql(
        cluster.primary,
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
        f"AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()",
    )
    return [int(x) for x in out.split()]


def _wait_active(cluster: PgCluster, marker: str, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while not (pids := _active_pids(cluster, marker)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no active query with {marker} on the primary after {timeout}s")
        time.sleep(0.02)
    assert len(pids) == 1, pids
    return pids[0]


def test_cancel_pg_sleep(proxy: ProxyProcess, cluster: PgCluster) -> None:
    marker = f"cancel_{uuid.uuid4().hex[:12]}"
    with _connect(proxy) as conn, _connect(proxy) as other:
        # Another client's statement runs at the same time: the cancel must not reach it.
        other_result: list[object] = []
        other_thread = threading.Thread(
            target=lambda: other_result.append(other.execute("SELECT pg_sleep(1.5), 'other done'").fetchone())
        )
        other_thread.start()
        cancelled_at: list[float] = []

        def cancel() -> None:
            _wait_active(cluster, marker)
            cancelled_at.append(time.monotonic())
            conn.cancel()

        canceller = threading.Thread(target=cancel)
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT pg_sleep(30) /* {marker} */")
        raised_at = time.monotonic()
        canceller.join()
        assert cancelled_at, "the query never showed up on the primary"
        waited = raised_at - cancelled_at[0]
        assert waited < 2.0, f"QueryCanceled came {waited:.1f}s after cancel()"
        # The same connection works afterwards, and nothing is left running.
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
        assert _active_pids(cluster, marker) == []
        other_thread.join(10)
        assert other_result == [("", "other done")]


def test_cancel_inside_transaction_then_rollback(proxy: ProxyProcess, cluster: PgCluster) -> None:
    marker = f"canceltx_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(proxy.dsn(), connect_timeout=5) as conn:
        conn.execute("SELECT 1")  # opens a transaction

        def cancel() -> None:
            _wait_active(cluster, marker)
            conn.cancel()

        canceller = threading.Thread(target=cancel)
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT pg_sleep(30) /* {marker} */")
        canceller.join()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.commit()


def _psql_env(proxy: ProxyProcess) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PGPASSWORD": "apppass", "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "5"})
    return env


def test_client_killed_mid_query(proxy: ProxyProcess, cluster: PgCluster) -> None:
    marker = f"killed_{uuid.uuid4().hex[:12]}"
    psql = subprocess.Popen(
        ["psql", "-X", "-h", proxy.host, "-p", str(proxy.port), "-U", "app", "-d", "app",
         "-c", f"SELECT pg_sleep(60) /* {marker} */"],
        env=_psql_env(proxy), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        pid = _wait_active(cluster, marker)
        psql.send_signal(signal.SIGKILL)
        psql.wait(5)
        killed_at = time.monotonic()
        while _active_pids(cluster, marker):
            assert time.monotonic() - killed_at < 2.0, "the query still runs on the primary 2 s after its client died"
            time.sleep(0.05)
        # No backend is left behind in a transaction either.
        state = cluster.sql(cluster.primary, f"SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = {pid}")
        assert state in ("", "idle"), f"backend {pid} left in state {state!r}"
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    with _connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_backend_terminated_mid_query(proxy: ProxyProcess, cluster: PgCluster) -> None:
    marker = f"terminated_{uuid.uuid4().hex[:12]}"
    conn = _connect(proxy)
    try:
        outcome: list[BaseException | object] = []

        def run() -> None:
            try:
                outcome.append(conn.execute(f"SELECT pg_sleep(30) /* {marker} */").fetchone())
            except BaseException as exc:  # recorded for the assertion below
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pid = _wait_active(cluster, marker)
        if _mode(proxy) == "session":
            # In session mode the client's BackendKeyData carries the backend's real PID.
            assert conn.info.backend_pid == pid
        assert cluster.sql(cluster.primary, f"SELECT pg_terminate_backend({pid})") == "t"
        thread.join(5)
        assert not thread.is_alive(), "the client hangs after its backend died"
        assert len(outcome) == 1
        err = outcome[0]
        assert isinstance(err, psycopg.OperationalError), f"expected a connection error, got {err!r}"
        # The server's own FATAL 57P01 passed through, or the proxy's 08006: an error, not a hang.
        assert err.sqlstate in ("57P01", "08006"), f"unexpected error: {err.sqlstate} {err}"
    finally:
        conn.close()
    with _connect(proxy) as fresh:
        assert fresh.execute("SELECT 'fresh'").fetchone() == ("fresh",)
