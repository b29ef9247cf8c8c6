"""pg_cancel_backend/pg_terminate_backend of PIDs the proxy handed out (issue 10) with psycopg and asyncpg."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, data_rows

Conn = psycopg.Connection[tuple[Any, ...]]
pytestmark = pytest.mark.timeout(120)
SPLIT_OFF = {"read_write_split": False}
PASSWORDS = {"app": "apppass", "md5user": "md5pass"}


def connect(proxy: ProxyProcess, user: str = "app") -> Conn:
    return psycopg.connect(proxy.dsn(user=user, password=PASSWORDS[user]), autocommit=True, connect_timeout=10)


def direct(cluster: PgCluster, user: str = "app") -> Conn:
    return psycopg.connect(cluster.dsn(cluster.primary, user=user, password=PASSWORDS[user], dbname="app"),
                           autocommit=True, connect_timeout=10)


def _simple(proxy: ProxyProcess, sql: str) -> list[tuple[str, bytes]]:
    """One simple-protocol Query as app through the proxy; the raw reply messages."""
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        return raw.query(sql)


def _column_names(replies: list[tuple[str, bytes]]) -> list[str]:
    body = next(b for t, b in replies if t == "T")
    (n,) = struct.unpack_from("!H", body, 0)
    names, pos = [], 2
    for _ in range(n):
        end = body.index(b"\x00", pos)
        names.append(body[pos:end].decode())
        pos = end + 1 + 18
    return names


def _worker(pid: int) -> int:
    return (pid >> 24) & 0x3F


def _wait_active(cluster: PgCluster, text: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        n = cluster.sql(cluster.primary, f"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        f"AND query LIKE '%{text}%' AND pid <> pg_backend_pid()")
        if int(n) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"no active query like {text!r}")


def _victims(proxy: ProxyProcess, killer: Conn, workers: int, user: str = "app") -> Conn:
    """A client connection; with several workers, one served by another worker than `killer`."""
    mine = _worker(killer.info.backend_pid)
    extra: list[Conn] = []
    try:
        for _ in range(40):
            c = connect(proxy, user)
            if workers == 1 or _worker(c.info.backend_pid) != mine:
                return c
            extra.append(c)
        raise AssertionError("every connection landed on the killer's worker")
    finally:
        for c in extra:
            c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_terminate_a_transaction_mode_client_by_its_pid(
    cluster: PgCluster, proxy_factory: ProxyFactory, workers: int
) -> None:
    proxy = proxy_factory({"pool": {"size": 3, "mode": "transaction"}, "routing": SPLIT_OFF}, workers=workers)
    with connect(proxy) as killer:
        victim = _victims(proxy, killer, workers)
        pid = victim.info.backend_pid
        assert pid >= 0x40000000, "transaction pooling hands out proxy PIDs"
        # psycopg with a parameter: extended protocol, the PID arrives in a Bind.
        assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.errors.AdminShutdown) as err:
            victim.execute("SELECT 1")
        assert err.value.diag.sqlstate == "57P01"
        assert err.value.diag.message_primary == "terminating connection due to administrator command"
        victim.close()
        # Gone: now the PID is nobody's, and the answer is the server's for an unknown PID.
        notices: list[str] = []
        killer.add_notice_handler(lambda d: notices.append(f"{d.severity} {d.message_primary}"))
        assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (False,)
        assert notices == [f"WARNING PID {pid} is not a PostgreSQL backend process"]
        assert killer.execute("SELECT 1").fetchone() == (1,), "the caller's session goes on"


@pytest.mark.parametrize("workers", [1, 2])
def test_cancel_a_running_statement_by_pid_simple_protocol(
    cluster: PgCluster, proxy_factory: ProxyFactory, workers: int
) -> None:
    proxy = proxy_factory({"pool": {"size": 3, "mode": "transaction"}, "routing": SPLIT_OFF}, workers=workers)
    with connect(proxy) as killer:
        victim = _victims(proxy, killer, workers)
        pid = victim.info.backend_pid
        # Idle: nothing to cancel, but the session exists: t, as a server answers.
        assert data_rows(_simple(proxy, f"SELECT pg_cancel_backend({pid})")) == [["t"]]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                victim.execute("SELECT pg_sleep(60) AS pidmap_sleep")
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        _wait_active(cluster, "pidmap_sleep")
        t0 = time.monotonic()
        replies = _simple(proxy, f"SELECT pg_cancel_backend({pid}) AS done")
        assert data_rows(replies) == [["t"]]
        assert _column_names(replies) == ["done"]
        t.join(20)
        assert not t.is_alive() and time.monotonic() - t0 < 20
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
        assert victim.execute("SELECT 2").fetchone() == (2,), "a cancel leaves the session usable"
        victim.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_signalling_another_roles_session_needs_the_servers_permissions(
    cluster: PgCluster, proxy_factory: ProxyFactory, workers: int
) -> None:
    """app may not signal md5user's session: the same 42501 and message as on a direct connection."""
    proxy = proxy_factory({"pool": {"size": 3, "mode": "transaction"}, "routing": SPLIT_OFF}, workers=workers)
    with connect(proxy) as killer, _victims(proxy, killer, workers, "md5user") as victim, \
            direct(cluster) as d_killer, direct(cluster, "md5user") as d_victim:
        for fn in ("pg_cancel_backend", "pg_terminate_backend"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as want:
                d_killer.execute(f"SELECT {fn}(%s)", (d_victim.info.backend_pid,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as got:
                killer.execute(f"SELECT {fn}(%s)", (victim.info.backend_pid,))
            assert got.value.diag.message_primary == want.value.diag.message_primary
        assert victim.execute("SELECT current_user").fetchone() == ("md5user",), "the victim was left alone"
        # With the privileges of md5user's role (as PostgreSQL's rule says), app may.
        cluster.sql(cluster.primary, "GRANT md5user TO app")
        try:
            assert killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,)).fetchone() == (True,)
            with pytest.raises(psycopg.errors.AdminShutdown):
                victim.execute("SELECT 1")
        finally:
            cluster.sql(cluster.primary, "REVOKE md5user FROM app")


def test_own_pid_and_other_shapes(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2, "mode": "transaction"}, "routing": SPLIT_OFF})
    with connect(proxy) as c:
        pid = c.info.backend_pid
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute(f"SELECT pg_cancel_backend({pid})")
        assert c.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SELECT pg_terminate_backend(%s, -1)", (pid,))
        # Not the whole statement: the server answers (it knows no such PID).
        assert c.execute(f"SELECT pg_cancel_backend({pid}), 1").fetchone() == (False, 1)
        with pytest.raises(psycopg.errors.AdminShutdown):
            c.execute("SELECT pg_terminate_backend(%s::int)", (pid,))


def test_asyncpg_terminates_and_cancels_by_pid(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    import asyncpg

    proxy = proxy_factory({"pool": {"size": 3, "mode": "transaction"}, "routing": SPLIT_OFF})

    async def run() -> None:
        killer = await asyncpg.connect(proxy.dsn())
        victim = await asyncpg.connect(proxy.dsn())
        try:
            pid = victim.get_server_pid()
            sleeper = asyncio.ensure_future(victim.fetchval("SELECT pg_sleep(60) AS pidmap_asyncpg"))
            await asyncio.to_thread(_wait_active, cluster, "pidmap_asyncpg")
            assert await killer.fetchval("SELECT pg_cancel_backend($1)", pid) is True
            with pytest.raises(asyncpg.exceptions.QueryCanceledError):
                await asyncio.wait_for(sleeper, 20)
            assert await victim.fetchval("SELECT 3") == 3
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid) is True
            deadline = time.monotonic() + 10
            while not victim.is_closed() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # asyncpg reads the FATAL and closes, as on a direct connection
            with pytest.raises(asyncpg.exceptions.InterfaceError, match="connection is closed"):
                await victim.fetchval("SELECT 1")
        finally:
            await killer.close()
            victim.terminate()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_terminate_in_either_mode_gives_one_fatal(cluster: PgCluster, proxy_factory: ProxyFactory, mode: str) -> None:
    """Session mode hands out the server's PID: the server terminates it and its FATAL is relayed."""
    proxy = proxy_factory({"pool": {"size": 3, "mode": mode}, "routing": SPLIT_OFF})
    with connect(proxy) as killer, RawPg(proxy.host, proxy.port) as victim:
        victim.login("app", "apppass", "app")
        pid = victim.backend_pid
        assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        fields = victim.read_error(timeout=10)
        assert (fields["S"], fields["C"]) == ("FATAL", "57P01")
        assert victim.closed_within(5)


def test_inside_a_transaction_block(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Answered by the proxy, yet the transaction behaves as on a server: an error fails it."""
    proxy = proxy_factory({"pool": {"size": 3, "mode": "transaction"}, "routing": SPLIT_OFF})
    with connect(proxy) as killer, connect(proxy) as victim, connect(proxy, "md5user") as other:
        killer.execute("BEGIN")
        killer.execute("SELECT 1")
        assert killer.execute("SELECT pg_cancel_backend(%s)", (victim.info.backend_pid,)).fetchone() == (True,)
        killer.execute("COMMIT")
        killer.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            killer.execute("SELECT pg_terminate_backend(%s)", (other.info.backend_pid,))
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            killer.execute("SELECT 1")
        killer.execute("ROLLBACK")
        assert other.execute("SELECT 5").fetchone() == (5,)
        assert victim.execute("SELECT 6").fetchone() == (6,)
