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
