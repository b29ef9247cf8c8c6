"""PgBouncer's pool controls against a real server, as a client sees them: statement pooling, per-database and
per-user limits, reserve pool, server checks and resets, the three client timeouts, and a Unix-socket listener."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.helpers import free_port
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import TEST_USERS, ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, ServerError

# Every statement on the primary: server connections of one pool, easy to count.
PRIMARY_ONLY = {"routing": {"read_write_split": False}, "admin": {"users": ["app"]}}


def _users(**app: Any) -> list[dict[str, Any]]:
    """The test users, with these settings for user app."""
    return [{**u, **app} if u["name"] == "app" else dict(u) for u in TEST_USERS]


def _direct(cluster: PgCluster) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(cluster.dsn(cluster.primary), autocommit=True)


def _fatal(exc: pytest.ExceptionInfo[psycopg.OperationalError], message: str) -> None:
    err = exc.value
    assert err.sqlstate == "08P01" or message in str(err), str(err)
    assert message in str(err), str(err)


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _backends(cluster: PgCluster) -> int:
    with _direct(cluster) as d:
        row = d.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = 'app'"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_statement_pooling_refuses_transaction_blocks(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, databases={"app": {"pool_mode": "statement"}})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        # one Query with a whole transaction ends idle: allowed, as in PgBouncer
        c.execute("BEGIN; SELECT 1; COMMIT")
    c2 = psycopg.connect(proxy.dsn())  # not autocommit: psycopg opens a transaction block
    with pytest.raises(psycopg.OperationalError) as ei:
        c2.execute("SELECT 2")
        c2.execute("SELECT 3")
    _fatal(ei, "transaction blocks not allowed in statement pooling mode")
    c2.close()
    with psycopg.connect(proxy.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as adm:
        cur = adm.execute("SHOW POOLS")
        names = [d.name for d in cur.description or []]
        modes = {(r[0], r[1]): r[names.index("pool_mode")] for r in cur.fetchall()}
        assert modes[("app", "app")] == "statement"


def test_user_pool_mode_wins_over_database(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, databases={"app": {"pool_mode": "statement"}},
                          users=_users(pool_mode="session"))
    with psycopg.connect(proxy.dsn()) as c:  # session mode: transaction blocks are fine
        c.execute("SELECT 1")
        c.execute("SELECT 2")
        c.commit()


def test_query_timeout(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"query_timeout": "500ms"})
    with psycopg.connect(proxy.dsn(application_name="slow"), autocommit=True) as c:
        assert c.execute("SELECT pg_sleep(0.1)").fetchone() is not None
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as ei:
            c.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - t0 < 3
        _fatal(ei, "query timeout")

    def sleeping() -> int:
        with _direct(cluster) as d:
            row = d.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'"
                            " AND state = 'active'").fetchone()
            assert row is not None
            return int(row[0])

    _wait(lambda: sleeping() == 0, timeout=5)  # the server statement was cancelled too


def test_idle_transaction_timeout(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"idle_transaction_timeout": "500ms"})
    c = psycopg.connect(proxy.dsn())
    c.execute("SELECT 1")  # BEGIN; SELECT 1: idle in transaction from now on
    time.sleep(1.5)
    with pytest.raises(psycopg.OperationalError) as ei:
        c.execute("SELECT 2")
    _fatal(ei, "idle transaction timeout")
    c.close()
    # a busy transaction is not idle: a statement longer than the timeout is fine
    with psycopg.connect(proxy.dsn()) as c2:
        c2.execute("SELECT pg_sleep(1)")
        c2.commit()


def test_client_idle_timeout(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"client_idle_timeout": "500ms"})
    c = psycopg.connect(proxy.dsn(), autocommit=True)
    c.execute("SELECT 1")
    time.sleep(1.5)
    with pytest.raises(psycopg.OperationalError) as ei:
        c.execute("SELECT 2")
    _fatal(ei, "client_idle_timeout")
    c.close()
    with psycopg.connect(proxy.dsn(), autocommit=True) as c2:  # an active client stays
        for _ in range(4):
            c2.execute("SELECT pg_sleep(0.2)")


def _hold(proxy: ProxyProcess, user: str = "app", password: str = "apppass") -> psycopg.Connection[Any]:
    c = psycopg.connect(proxy.dsn(user=user, password=password))
    c.execute("SELECT 1")  # an open transaction holds its server connection
    return c


def test_database_pool_size_and_max_db_connections(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"acquire_timeout": "700ms", "size": 10},
                          databases={"app": {"pool_size": 1}})
    held = _hold(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as c, pytest.raises(psycopg.Error) as ei:
        c.execute("SELECT 1")
    assert ei.value.sqlstate == "53300"
    held.commit()
    held.close()

    # max_db_connections caps the database over all users (app and plainuser share it here)
    proxy2 = proxy_factory(PRIMARY_ONLY, pool={"acquire_timeout": "700ms", "size": 10},
                           databases={"app": {"max_db_connections": 1}})
    # (a pool's first login needs a server connection for the server's parameters: log in before the cap is full)
    with psycopg.connect(proxy2.dsn(user="plainuser", password="plainpass"), autocommit=True) as c:
        held = _hold(proxy2)
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
        assert ei.value.sqlstate == "53300"
        held.commit()  # the slot frees: the other user's pool may open its connection
        assert c.execute("SELECT 2").fetchone() == (2,)
    held.close()


def test_max_user_connections(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"acquire_timeout": "700ms"}, users=_users(max_user_connections=1))
    with psycopg.connect(proxy.dsn(dbname="app_branch"), autocommit=True) as c:  # another database, same user
        held = _hold(proxy)  # database app
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
        assert ei.value.sqlstate == "53300"
        held.commit()
        assert c.execute("SELECT 2").fetchone() == (2,)
    held.close()
    with psycopg.connect(proxy.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as adm:
        cur = adm.execute("SHOW USERS")
        names = [d.name for d in cur.description or []]
        users = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
        assert users["app"]["max_user_connections"] == 1


def test_reserve_pool(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"acquire_timeout": "4s", "reserve_pool_timeout": "300ms"},
                          databases={"app": {"pool_size": 1, "reserve_pool_size": 1}})
    held = _hold(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        t0 = time.monotonic()
        assert c.execute("SELECT 1").fetchone() == (1,)  # served by the reserve connection
        waited = time.monotonic() - t0
    assert 0.25 <= waited < 2.5, waited
    # beyond the reserve: a third client waits for acquire_timeout
    held2 = _hold(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as c3:
        done = threading.Event()

        def go() -> None:
            c3.execute("SELECT 3")
            done.set()

        threading.Thread(target=go, daemon=True).start()
        assert not done.wait(1.0)
        held.commit()
        assert done.wait(5)
    held.close()
    held2.commit()
    held2.close()


def test_min_pool_size(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, databases={"app": {"min_pool_size": 3}})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        c.execute("SELECT 1")
        _wait(lambda: _backends(cluster) >= 3, timeout=10)


def test_server_lifetime_and_idle_timeout_pgbouncer_names(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"server_lifetime": "600ms", "size": 1})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        pid1 = c.execute("SELECT pg_backend_pid()").fetchone()
        time.sleep(0.9)
        c.execute("SELECT 1")  # released past its lifetime: closed
        pid2 = c.execute("SELECT pg_backend_pid()").fetchone()
        assert pid1 != pid2
    proxy2 = proxy_factory(PRIMARY_ONLY, pool={"server_idle_timeout": "300ms"})
    with psycopg.connect(proxy2.dsn(), autocommit=True) as c:
        c.execute("SELECT 1")
        with psycopg.connect(proxy2.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as adm:
            def idle() -> int:
                return sum(1 for r in adm.execute("SHOW SERVERS").fetchall() if r[2] == "app")

            _wait(lambda: idle() == 0, timeout=5)


def test_server_check_query(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    with psycopg.connect(cluster.dsn(cluster.primary, dbname="app"), autocommit=True) as d:
        d.execute("DROP TABLE IF EXISTS helios_checks")
        d.execute("CREATE TABLE helios_checks (at timestamptz)")
    proxy = proxy_factory(PRIMARY_ONLY, pool={"server_check_query": "INSERT INTO helios_checks VALUES (now())",
                                              "server_check_delay": "300ms", "size": 1})

    def checks() -> int:
        with psycopg.connect(cluster.dsn(cluster.primary, dbname="app"), autocommit=True) as d:
            row = d.execute("SELECT count(*) FROM helios_checks").fetchone()
            assert row is not None
            return int(row[0])

    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        c.execute("SELECT 1")
        c.execute("SELECT 1")
        assert checks() == 0  # used again at once: no check
        time.sleep(0.6)
        assert c.execute("SELECT 2").fetchone() == (2,)
        assert checks() == 1  # idle past server_check_delay: checked before reuse
    with psycopg.connect(cluster.dsn(cluster.primary, dbname="app"), autocommit=True) as d:
        d.execute("DROP TABLE helios_checks")


def test_server_reset_query_always(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"server_reset_query_always": True, "size": 1})
    with psycopg.connect(proxy.dsn(application_name="resetme"), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]

        def last_query() -> str:
            with _direct(cluster) as d:
                row = d.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                return str(row[0]) if row else ""

        _wait(lambda: last_query() == "DISCARD ALL", timeout=5)
        assert c.execute("SELECT 3").fetchone() == (3,)


def test_track_extra_parameters(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(PRIMARY_ONLY, pool={"track_extra_parameters": ["search_path"]})

    async def go() -> tuple[str | None, str]:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user="app", password="apppass",
                                     database="app", ssl=False, server_settings={"search_path": "helios_x, public"})
        try:
            reported = conn.get_settings().search_path
            value = await conn.fetchval("SHOW search_path")
            return reported, str(value)
        finally:
            await conn.close()

    reported, value = asyncio.run(go())
    assert reported == "helios_x, public" and value == "helios_x, public"


def test_listen_unix(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="helios-sock-"))
    try:
        port = free_port()
        proxy = proxy_factory(PRIMARY_ONLY, listen_unix=str(sockdir / f".s.PGSQL.{port}"))
        _wait(lambda: (sockdir / f".s.PGSQL.{port}").exists(), timeout=5)
        env = {"PGPASSWORD": "apppass", "PATH": "/usr/bin:/bin"}
        out = subprocess.run(["psql", "-X", "-h", str(sockdir), "-p", str(port), "-U", "app", "-d", "app",
                              "-Atc", "SELECT 40 + 2"], capture_output=True, text=True, timeout=20, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr
        out = subprocess.run(["psql", "-X", "-h", str(sockdir), "-p", str(port), "-U", "app", "-d", "pgbouncer",
                              "-Atc", "SHOW CLIENTS"], capture_output=True, text=True, timeout=20, env=env)
        assert out.returncode == 0 and "|unix|" in out.stdout, out.stdout + out.stderr
        proxy.stop()
        assert not (sockdir / f".s.PGSQL.{port}").exists()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_query_wait_timeout_is_acquire_timeout(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """PgBouncer's name `query_wait_timeout`: a statement waiting that long for a server gets 53300; the
    session goes on (the proxy's acquire_timeout)."""
    proxy = proxy_factory(PRIMARY_ONLY, pool={"query_wait_timeout": "400ms", "size": 1})
    held = _hold(proxy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT 1")
        assert ei.value.sqlstate == "53300"
        assert 0.35 <= time.monotonic() - t0 < 3
        held.commit()
        assert c.execute("SELECT 2").fetchone() == (2,)
    held.close()


def test_server_connect_timeout(cluster_factory: Any, proxy_factory: ProxyFactory) -> None:
    """A server that accepts TCP but never answers (its postmaster stopped with SIGSTOP): a login gives up after
    server_connect_timeout with an error, not a hang."""
    import os
    import signal

    own = cluster_factory(standbys=0)
    proxy = proxy_factory(PRIMARY_ONLY, cluster=own, pool={"server_connect_timeout": "500ms",
                                                           "acquire_timeout": "10s"},
                          health={"interval": "30s"})
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        c.execute("SELECT 1")
    pid = int((own.primary.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with RawPg(proxy.host, proxy.port, timeout=20) as raw, pytest.raises(ServerError) as ei:
            raw.login("plainuser", "plainpass", "app")
        took = time.monotonic() - t0
        assert took < 5, took  # bounded by server_connect_timeout (and its retries), not acquire_timeout
        fields = ei.value.fields
        assert fields["C"] == "08006" and "connect timeout (server_connect_timeout 0.5s)" in fields["M"], fields
    finally:
        os.kill(pid, signal.SIGCONT)
