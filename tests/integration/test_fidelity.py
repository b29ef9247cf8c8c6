"""Protocol fidelity through the proxy (issue 10): what a client sees is what a direct connection shows."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

Conn = psycopg.Connection[tuple[Any, ...]]
pytestmark = pytest.mark.timeout(90)
SPLIT_OFF = {"read_write_split": False}


def connect(proxy: ProxyProcess, dbname: str = "app", **kw: Any) -> Conn:
    return psycopg.connect(proxy.dsn(dbname=dbname), autocommit=True, connect_timeout=10, **kw)


def _make_db(cluster: PgCluster, name: str) -> None:
    cluster.sql(cluster.primary, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    cluster.sql(cluster.primary, f"CREATE DATABASE {name} OWNER app")


@pytest.mark.parametrize("workers", [1, 2])
def test_drop_database_closes_the_proxys_idle_connections(
    cluster: PgCluster, proxy_factory: ProxyFactory, workers: int
) -> None:
    name = f"fid_drop_{workers}"
    _make_db(cluster, name)
    proxy = proxy_factory({"pool": {"size": 4}, "routing": SPLIT_OFF}, workers=workers)
    # Several clients leave idle pooled connections to the database behind (on any worker).
    for _ in range(6):
        with connect(proxy, name) as c:
            assert c.execute("SELECT current_database()").fetchone() == (name,)
    idle = cluster.sql(cluster.primary, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'")
    assert int(idle) >= 1, "the proxy keeps idle connections to the database"
    with connect(proxy) as admin:
        admin.execute(f"DROP DATABASE {name}")  # no 55006: the proxy closed its own idle connections
    assert cluster.sql(cluster.primary, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "0"


def test_drop_database_never_closes_a_connection_in_use(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    name = "fid_busy"
    _make_db(cluster, name)
    proxy = proxy_factory({"pool": {"size": 2}, "routing": SPLIT_OFF})
    with connect(proxy, name) as user, connect(proxy) as admin:
        user.execute("BEGIN")
        user.execute("SELECT 1")  # holds its server connection inside the transaction
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.ObjectInUse):
            admin.execute(f"DROP DATABASE {name}")
        assert time.monotonic() - t0 < 30
        assert user.execute("SELECT current_database()").fetchone() == (name,), "the user's session goes on"
        user.execute("COMMIT")
    cluster.sql(cluster.primary, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_asyncpg_statement_cache_survives_a_schema_change(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    """asyncpg re-prepares after `cached plan must not change result type`: that must get a fresh plan."""
    import asyncio

    import asyncpg

    cluster.sql(cluster.primary, "DROP TABLE IF EXISTS fid_stale; CREATE TABLE fid_stale (a int); "
                "INSERT INTO fid_stale VALUES (1); ALTER TABLE fid_stale OWNER TO app", db="app")
    proxy = proxy_factory({"pool": {"size": 2}, "routing": SPLIT_OFF})

    async def run() -> None:
        conn = await asyncpg.connect(proxy.dsn())
        other = await asyncpg.connect(proxy.dsn())
        try:
            for _ in range(3):
                assert [tuple(r) for r in await conn.fetch("SELECT * FROM fid_stale")] == [(1,)]
                assert [tuple(r) for r in await other.fetch("SELECT * FROM fid_stale")] == [(1,)]
            await other.execute("ALTER TABLE fid_stale ADD COLUMN b int DEFAULT 7")
            for c in (conn, other, conn):
                assert [tuple(r) for r in await c.fetch("SELECT * FROM fid_stale")] == [(1, 7)]
        finally:
            await conn.close()
            await other.close()

    asyncio.run(run())


def test_a_parse_skipped_after_a_pipeline_error_is_not_recorded(
    cluster: PgCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    with connect(proxy) as c:
        with pytest.raises(psycopg.errors.DivisionByZero), c.pipeline():
            c.execute("SELECT 1/0", prepare=True)
            c.execute("SELECT %s::int + 100", (1,), prepare=True)  # skipped by the server
        for i in range(3):
            assert c.execute("SELECT %s::int + 100", (i,), prepare=True).fetchone() == (i + 100,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_own_notifications_carry_the_pid_the_client_was_given(
    cluster: PgCluster, proxy_factory: ProxyFactory, mode: str
) -> None:
    proxy = proxy_factory({"pool": {"size": 2, "mode": mode}, "routing": SPLIT_OFF})
    with connect(proxy) as c, connect(proxy) as other:
        c.execute("LISTEN fid_ch")
        c.execute("NOTIFY fid_ch, 'mine'")
        other.execute("NOTIFY fid_ch, 'theirs'")
        got = []
        for n in c.notifies(timeout=5, stop_after=2):
            got.append((n.payload, n.pid))
        assert got[0] == ("mine", c.info.backend_pid), "a client's own notification shows its own PID"
        assert got[1][0] == "theirs" and got[1][1] != c.info.backend_pid
