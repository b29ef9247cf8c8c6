"""Proves the harness: a writable primary, streaming standbys, and each backend auth method."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from heliosproxy.config.load import load_config
from tests.helpers.pgcluster import PgCluster, PgNode
from tests.helpers.proxy import ProxyFactory


def _connect(
    node: PgNode, user: str, password: str | None, dbname: str = "app", **params: str
) -> psycopg.Connection[tuple[object, ...]]:
    kwargs: dict[str, str | int] = {"host": "127.0.0.1", "port": node.port, "user": user,
                                    "dbname": dbname, "sslmode": "disable", "connect_timeout": 5,
                                    **params}
    if password is not None:
        kwargs["password"] = password
    return psycopg.connect(**kwargs)  # type: ignore[arg-type]


def test_topology(cluster: PgCluster) -> None:
    assert [n.name for n in cluster.nodes] == ["primary", "standby1", "standby2"]
    assert cluster.primary.name == "primary"
    assert cluster.sql(cluster.primary, "SELECT pg_is_in_recovery()") == "f"
    for standby in cluster.standbys:
        assert cluster.sql(standby, "SELECT pg_is_in_recovery()") == "t"
    streaming = cluster.sql(
        cluster.primary,
        "SELECT string_agg(application_name, ',' ORDER BY application_name) "
        "FROM pg_stat_replication WHERE state = 'streaming'",
    )
    assert streaming == "standby1,standby2"
    ports = {n.port for n in cluster.nodes}
    assert len(ports) == 3
    assert cluster.node_config() == [
        {"name": n.name, "host": "127.0.0.1", "port": n.port, "role": n.role} for n in cluster.nodes
    ]


def test_row_written_on_primary_reaches_both_standbys(cluster: PgCluster) -> None:
    marker = uuid.uuid4().hex
    with _connect(cluster.primary, "app", "apppass") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS harness_rows (marker text)")
        conn.execute("INSERT INTO harness_rows VALUES (%s)", (marker,))
    cluster.wait_replay()
    for standby in cluster.standbys:
        with _connect(standby, "app", "apppass") as conn:
            row = conn.execute("SELECT count(*) FROM harness_rows WHERE marker = %s",
                               (marker,)).fetchone()
            assert row == (1,), standby.name
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO harness_rows VALUES ('x')")


@pytest.mark.parametrize(
    ("user", "password", "method"),
    [
        ("app", "apppass", "scram-sha-256"),
        ("md5user", "md5pass", "md5"),
        ("plainuser", "plainpass", "password"),
        ("trustuser", None, "none"),
    ],
)
def test_backend_user_logs_in_with_its_method(
    cluster: PgCluster, user: str, password: str | None, method: str
) -> None:
    # require_auth (libpq >= 16) makes the login fail unless the server asked for `method`.
    for node in cluster.nodes:
        with _connect(node, user, password, require_auth=method) as conn:
            who = conn.execute("SELECT current_user, current_database()").fetchone()
            assert who == (user, "app")
    other = "password" if method != "password" else "md5"
    with pytest.raises(psycopg.OperationalError, match="authentication method requirement"):
        _connect(cluster.primary, user, password, require_auth=other)


def test_md5user_password_is_stored_as_md5(cluster: PgCluster) -> None:
    stored = cluster.sql(
        cluster.primary,
        "SELECT rolname, left(rolpassword, 3) FROM pg_authid "
        "WHERE rolname IN ('app', 'md5user') ORDER BY rolname",
    )
    assert stored == "app|SCR\nmd5user|md5"


@pytest.mark.parametrize("user", ["app", "md5user", "plainuser"])
async def test_wrong_password_fails_with_28p01(cluster: PgCluster, user: str) -> None:
    message = f'password authentication failed for user "{user}"'
    with pytest.raises(psycopg.OperationalError, match=message):
        _connect(cluster.primary, user, "wrong-password")
    # libpq does not expose the SQLSTATE of a failed login; asyncpg does.
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(host="127.0.0.1", port=cluster.primary.port, user=user,
                              password="wrong-password", database="app", ssl=False)
    assert info.value.sqlstate == "28P01"


def test_app_owns_databases_and_can_monitor_and_promote(cluster: PgCluster) -> None:
    owners = cluster.sql(
        cluster.primary,
        "SELECT string_agg(datname || '=' || pg_get_userbyid(datdba), ',' ORDER BY datname) "
        "FROM pg_database WHERE datname IN ('app', 'app_branch')",
    )
    assert owners == "app=app,app_branch=app"
    with _connect(cluster.primary, "app", "apppass") as conn:
        row = conn.execute(
            "SELECT pg_has_role('app', 'pg_monitor', 'MEMBER'), "
            "has_function_privilege('app', 'pg_promote(boolean, integer)', 'EXECUTE')"
        ).fetchone()
        assert row == (True, True)
        # pg_monitor lets app see other sessions' queries (health checks read pg_stat_*).
        lag = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                           ).fetchone()
        assert lag == (2,)


def test_stop_and_start_a_standby(cluster: PgCluster) -> None:
    standby = cluster.standbys[0]
    cluster.stop_node(standby)
    try:
        with pytest.raises(psycopg.OperationalError):
            _connect(standby, "app", "apppass")
    finally:
        cluster.start_node(standby)
    cluster.wait_streaming()
    cluster.wait_replay()
    with _connect(standby, "app", "apppass") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_promote_and_follow(cluster_factory: Callable[..., PgCluster]) -> None:
    c = cluster_factory(standbys=2)
    old, new, other = c.primary, c.standbys[0], c.standbys[1]
    c.sql(old, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)", user="app", db="app")
    c.wait_replay()
    c.stop_node(old)  # immediate, like a crash
    c.promote(new)
    assert c.primary is new
    assert c.sql(new, "SELECT pg_is_in_recovery()") == "f"
    with _connect(new, "app", "apppass") as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    c.follow(other)
    c.wait_streaming()
    c.wait_replay()
    assert c.sql(other, "SELECT string_agg(x::text, ',' ORDER BY x) FROM t", db="app") == "1,2"
    assert c.sql(other, "SELECT pg_is_in_recovery()") == "t"


def test_proxy_factory_config(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 3}}, start=False, log={"level": "debug"})
    cfg = load_config(proxy.config_path)
    assert [(n.name, n.port, n.role.value) for n in cfg.nodes] == [
        (n.name, n.port, n.role) for n in cluster.nodes
    ]
    assert [(u.name, u.password) for u in cfg.users] == [
        ("app", "apppass"), ("md5user", "md5pass"), ("plainuser", "plainpass"),
        ("trustuser", "trustpass"),
    ]
    assert cfg.auth.method.value == "scram-sha-256"
    assert cfg.pool.size == 3 and cfg.log.level == "debug"
    assert cfg.listen == f"127.0.0.1:{proxy.port}"
    assert cfg.admin.listen == f"127.0.0.1:{proxy.admin_port}"
    assert proxy.port != proxy.admin_port
    assert proxy.dsn() == f"postgresql://app:apppass@127.0.0.1:{proxy.port}/app?sslmode=disable"


def test_proxy_process_reports_a_failed_start(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"no_such_key": 1}, start=False)
    with pytest.raises(RuntimeError, match=r"proxy exited with 1 before listening") as info:
        proxy.start()
    assert "no_such_key" in str(info.value)
    assert "no_such_key" in proxy.output()
