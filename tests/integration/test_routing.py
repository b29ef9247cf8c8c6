"""Routing through a real proxy: classification, hints, SET helios.*, transactions, branches, standby choice."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers import free_port
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess, base_config, deep_merge

Conn = psycopg.Connection[tuple[Any, ...]]

pytestmark = pytest.mark.timeout(30)

WHERE = "SELECT pg_is_in_recovery(), inet_server_port(), pg_backend_pid()"
BRANCHES = {"b1": {"node": "primary", "database": "app_branch"}}


def connect(proxy: ProxyProcess, dbname: str = "app", autocommit: bool = True) -> Conn:
    return psycopg.connect(proxy.dsn(dbname=dbname), autocommit=autocommit, connect_timeout=10)


def node_of(cluster: PgCluster, port: object) -> str:
    """The cluster node name listening on `port` (an int or a string of digits)."""
    for node in cluster.nodes:
        if node.port == int(str(port)):
            return node.name
    raise AssertionError(f"port {port!r} is no node of the cluster")


def where(conn: Conn, cluster: PgCluster, sql: str = WHERE) -> str:
    """Run WHERE (or any query whose 2nd column is inet_server_port()) and name the node; checks recovery."""
    row = conn.execute(sql).fetchone()
    assert row is not None
    name = node_of(cluster, row[1])
    assert row[0] is (name != "primary"), f"pg_is_in_recovery()={row[0]} on {name}"
    return name


def one(conn: Conn, sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql
    return row


def all_rows(cur: psycopg.Cursor[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """Every result set of a multi-statement simple query, in order."""
    sets = [cur.fetchall() if cur.description else []]
    while cur.nextset():
        sets.append(cur.fetchall() if cur.description else [])
    return sets


@pytest.fixture(scope="module")
def setup_db(cluster: PgCluster) -> PgCluster:
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rt_items (id serial PRIMARY KEY, v text)")
        conn.execute("CREATE SEQUENCE IF NOT EXISTS rt_seq")
        conn.execute("CREATE UNLOGGED TABLE IF NOT EXISTS rt_unlogged (v int)")
        # IMMUTABLE on purpose: the planner folds the call, so even plain EXPLAIN runs it and
        # the NOTICE tells on which server the statement was planned.
        conn.execute(
            "CREATE OR REPLACE FUNCTION rt_where() RETURNS int LANGUAGE plpgsql IMMUTABLE AS "
            "$$BEGIN RAISE NOTICE 'helios-test port=%', inet_server_port(); RETURN 1; END$$"
        )
        conn.execute("INSERT INTO rt_items(v) SELECT 'seed' WHERE NOT EXISTS (SELECT FROM rt_items WHERE v = 'seed')")
    with psycopg.connect(cluster.dsn(cluster.primary, dbname="app_branch"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rt_branch_rows (v text)")
    cluster.wait_replay()
    return cluster


@pytest.fixture(scope="module")
def proxy(setup_db: PgCluster) -> Iterator[ProxyProcess]:
    """One proxy for the read-only tests of this module: split on, round robin, branch b1, pool 4."""
    config = deep_merge(base_config(setup_db.node_config()), {"branches": BRANCHES, "pool": {"size": 4}})
    with ProxyProcess(config) as p:
        yield p


def _eventually_standby(conn: Conn, cluster: PgCluster, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not where(conn, cluster).startswith("standby"):
        assert time.monotonic() < deadline, "reads never returned to a standby after a write"


# ---------------------------------------------------------------------------------- basic split


def test_reads_on_a_standby_writes_on_the_primary(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    cluster = setup_db
    with connect(proxy) as conn:
        for _ in range(4):
            assert where(conn, cluster).startswith("standby")
        row = conn.execute(
            "INSERT INTO rt_items(v) VALUES ('w') RETURNING pg_is_in_recovery(), inet_server_port()"
        ).fetchone()
        assert row == (False, cluster.primary.port)
        # routing.consistency=session: the reads return to a standby once one replayed the write.
        _eventually_standby(conn, cluster)


# One (sql, result set index, column index, expected role) per classification rule, simple protocol.
CLASSIFY_CASES: list[tuple[str, str, int, int, str]] = [
    ("select", "SELECT inet_server_port()", 0, 0, "standby"),
    ("select_table", "SELECT inet_server_port() FROM rt_items LIMIT 1", 0, 0, "standby"),
    ("values", "VALUES (inet_server_port())", 0, 0, "standby"),
    ("show", "SHOW port", 0, 0, "standby"),
    ("readonly_cte", "WITH w AS (SELECT 1 AS one) SELECT inet_server_port() FROM w", 0, 0, "standby"),
    ("multi_read", "SELECT 1; SELECT inet_server_port()", 1, 0, "standby"),
    ("for_update", "SELECT inet_server_port() FROM rt_items WHERE v = 'seed' FOR UPDATE", 0, 0, "primary"),
    ("for_share", "SELECT inet_server_port() FROM rt_items WHERE v = 'seed' FOR SHARE", 0, 0, "primary"),
    ("for_no_key_update", "SELECT inet_server_port() FROM rt_items WHERE v = 'seed' FOR NO KEY UPDATE",
     0, 0, "primary"),
    ("nextval", "SELECT inet_server_port(), nextval('rt_seq')", 0, 0, "primary"),
    ("nextval_in_from", "SELECT inet_server_port() FROM nextval('rt_seq')", 0, 0, "primary"),
    ("nextval_in_subquery", "SELECT inet_server_port() WHERE (SELECT nextval('rt_seq')) > 0", 0, 0, "primary"),
    ("advisory_xact_lock", "SELECT inet_server_port(), pg_advisory_xact_lock(4242)", 0, 0, "primary"),
    ("set_config", "SELECT inet_server_port(), set_config('helios_test.x', '1', true)", 0, 0, "primary"),
    ("txid_current", "SELECT inet_server_port(), txid_current()", 0, 0, "primary"),
    ("insert_cte", "WITH w AS (INSERT INTO rt_items(v) VALUES ('cte') RETURNING id) "
     "SELECT inet_server_port() FROM w", 0, 0, "primary"),
    ("update_cte", "WITH w AS (UPDATE rt_items SET v = v WHERE false RETURNING id) "
     "SELECT inet_server_port()", 0, 0, "primary"),
    ("insert_returning", "INSERT INTO rt_items(v) VALUES ('ins') RETURNING inet_server_port()", 0, 0, "primary"),
    ("multi_write_first", "INSERT INTO rt_items(v) VALUES ('m1'); SELECT inet_server_port()", 1, 0, "primary"),
    ("multi_write_last", "SELECT inet_server_port(); INSERT INTO rt_items(v) VALUES ('m2')", 0, 0, "primary"),
    # Valid on PostgreSQL 15, but system_user is a reserved word for pglast's newer parser.
    ("unparseable", "SELECT inet_server_port() FROM (VALUES (1)) AS system_user(x)", 0, 0, "primary"),
]


@pytest.mark.parametrize(("sql", "rset", "col", "expected"),
                         [pytest.param(*c[1:], id=c[0]) for c in CLASSIFY_CASES])
def test_classification_routes(
    setup_db: PgCluster, proxy: ProxyProcess, sql: str, rset: int, col: int, expected: str
) -> None:
    with connect(proxy) as conn:
        for _ in range(2):  # both standbys under round robin
            sets = all_rows(conn.cursor().execute(sql))
            name = node_of(setup_db, sets[rset][0][col])
            assert name.startswith(expected), f"{sql!r} ran on {name}, expected {expected}"


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT inet_server_port() WHERE %s = 1", "standby"),
    ("SELECT inet_server_port() FROM rt_items WHERE %s = 1 LIMIT 1 FOR UPDATE", "primary"),
    ("SELECT inet_server_port(), nextval('rt_seq') WHERE %s = 1", "primary"),
    ("INSERT INTO rt_items(v) VALUES (%s::text) RETURNING inet_server_port()", "primary"),
])
@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "named"])
def test_classification_routes_extended_protocol(
    setup_db: PgCluster, proxy: ProxyProcess, sql: str, expected: str, prepare: bool
) -> None:
    with connect(proxy) as conn:
        for _ in range(3):
            row = conn.execute(sql, (1,), prepare=prepare).fetchone()
            assert row is not None
            assert node_of(setup_db, row[0]).startswith(expected)


def test_select_into_goes_to_the_primary(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    table = f"rt_into_{uuid.uuid4().hex[:10]}"
    with connect(proxy) as conn:
        conn.execute(f"SELECT inet_server_port() AS port INTO {table}")
        try:
            with psycopg.connect(setup_db.dsn(setup_db.primary)) as direct:
                assert direct.execute(f"SELECT port FROM {table}").fetchall() == [(setup_db.primary.port,)]
        finally:
            conn.execute(f"DROP TABLE {table}")


def _notice_ports(conn: Conn) -> list[int]:
    ports: list[int] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        msg = diag.message_primary or ""
        if msg.startswith("helios-test port="):
            ports.append(int(msg.split("=", 1)[1]))

    conn.add_notice_handler(on_notice)
    return ports


@pytest.mark.parametrize(("sql", "expected"), [
    ("EXPLAIN SELECT rt_where()", "standby"),
    ("EXPLAIN (ANALYZE, COSTS OFF) SELECT rt_where()", "standby"),
    ("EXPLAIN ANALYZE INSERT INTO rt_items(v) SELECT 'explain' || rt_where()", "primary"),
])
def test_explain_routes(setup_db: PgCluster, proxy: ProxyProcess, sql: str, expected: str) -> None:
    with connect(proxy) as conn:
        ports = _notice_ports(conn)
        conn.execute(sql).fetchall()
        assert ports, f"no NOTICE from rt_where() for {sql!r}"
        assert all(node_of(setup_db, p).startswith(expected) for p in ports), ports


# ---------------------------------------------------------------------------------- hints


@pytest.mark.parametrize(("sql", "expected"), [
    ("/*helios:route=primary*/ SELECT inet_server_port()", "primary"),
    ("SELECT inet_server_port() /*helios:route=primary*/", "primary"),
    ("/* helios:route=primary */\nSELECT inet_server_port()", "primary"),
    # classified as a write (set_config), sent to a standby anyway
    ("/*helios:route=standby*/ SELECT inet_server_port(), set_config('helios_test.x', '1', true)", "standby"),
    ("/*helios:route=standby,lag=500*/ SELECT inet_server_port()", "standby"),
    ("/*helios:node=standby2*/ SELECT inet_server_port()", "standby2"),
    ("/*helios:node=standby1*/ SELECT inet_server_port()", "standby1"),
    ("/*helios:node=primary*/ SELECT inet_server_port()", "primary"),
])
def test_hint_routes(setup_db: PgCluster, proxy: ProxyProcess, sql: str, expected: str) -> None:
    with connect(proxy) as conn:
        for _ in range(3):
            row = conn.execute(sql).fetchone()
            assert row is not None
            assert node_of(setup_db, row[0]).startswith(expected)


def test_hint_in_extended_protocol(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        for i, prepare in enumerate((False, False, True, True, True)):
            # the 4th and 5th executions reuse the named statement: Bind/Execute only, no Parse
            row = conn.execute("/*helios:node=standby2*/ SELECT inet_server_port() WHERE %s = 1", (1,),
                               prepare=prepare).fetchone()
            assert row is not None
            assert node_of(setup_db, row[0]) == "standby2", f"execution {i + 1} (prepare={prepare})"


def test_branch_hint(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        row = conn.execute("/*helios:branch=b1*/ SELECT current_database(), inet_server_port()").fetchone()
        assert row == ("app_branch", setup_db.primary.port)
        row = conn.execute("SELECT current_database()").fetchone()
        assert row == ("app",)


@pytest.mark.parametrize(("hint", "name"), [("node=nosuchnode", "nosuchnode"), ("branch=nosuchbranch", "nosuchbranch")])
@pytest.mark.parametrize("prepare", [None, True], ids=["simple", "extended"])
def test_unknown_hint_target_is_42704_and_session_continues(
    setup_db: PgCluster, proxy: ProxyProcess, hint: str, name: str, prepare: bool | None
) -> None:
    with connect(proxy) as conn:
        params = (1,) if prepare else None
        sql = f"/*helios:{hint}*/ SELECT 1" + (" WHERE %s = 1" if prepare else "")
        with pytest.raises(psycopg.errors.UndefinedObject, match=name):
            conn.execute(sql, params, prepare=prepare)
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert where(conn, setup_db).startswith("standby")


def test_unknown_hint_target_inside_a_transaction_fails_it(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO rt_items(v) VALUES ('tx-unknown-hint')")
        with pytest.raises(psycopg.errors.UndefinedObject, match="nosuchnode"):
            conn.execute("/*helios:node=nosuchnode*/ SELECT 1")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*) FROM rt_items WHERE v = 'tx-unknown-hint'").fetchone() == (0,)


# ---------------------------------------------------------------------------------- SET helios.*


def test_set_helios_route(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    cluster = setup_db
    with connect(proxy) as conn:
        cur = conn.execute("SET helios.route = 'primary'")
        assert cur.statusmessage == "SET"
        assert [where(conn, cluster) for _ in range(3)] == ["primary"] * 3
        # answered by the proxy: no backend ever saw the setting
        assert conn.execute("SELECT current_setting('helios.route', true)").fetchone() == (None,)
        conn.execute("SET helios.route = 'standby'")
        row = conn.execute("SELECT inet_server_port(), set_config('helios_test.x', '1', true)").fetchone()
        assert row is not None and node_of(cluster, row[0]).startswith("standby")
        conn.execute("SET helios.route TO auto")
        assert where(conn, cluster).startswith("standby")
        row = conn.execute("SELECT inet_server_port(), nextval('rt_seq')").fetchone()
        assert row is not None and node_of(cluster, row[0]) == "primary"
        conn.execute("SET helios.route = 'primary'")
        cur = conn.execute("RESET helios.route")
        assert cur.statusmessage == "RESET"
        # nextval() above wrote: routing.consistency=session keeps reads on the primary until a
        # standby replayed it.
        _eventually_standby(conn, cluster)


def test_show_helios_settings_answered_by_the_proxy(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        cur = conn.execute("SHOW helios.route")
        assert cur.description is not None and cur.description[0].name == "helios.route"
        assert cur.fetchall() == [("auto",)]
        assert cur.statusmessage == "SHOW"
        conn.execute("SET helios.route = 'primary'")
        assert conn.execute("SHOW helios.route").fetchone() == ("primary",)
        conn.execute("SET helios.node = 'standby1'")
        assert conn.execute("SHOW helios.node").fetchone() == ("standby1",)
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SET helios.node = 'nosuchnode'")
        assert conn.execute("SHOW helios.node").fetchone() == ("standby1",)
        conn.execute("RESET helios.route")
        assert conn.execute("SHOW helios.route").fetchone() == ("auto",)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SET helios.route = 'sideways'")
        assert conn.execute("SHOW helios.route").fetchone() == ("auto",)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with connect(proxy, dbname="app@b1") as conn:
        assert conn.execute("SHOW helios.branch").fetchone() == ("b1",)


def test_set_helios_route_rejects_a_bad_value(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SET helios.route = 'sideways'")
        assert where(conn, setup_db).startswith("standby")


def test_set_helios_node(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    cluster = setup_db
    with connect(proxy) as conn:
        assert conn.execute("SET helios.node = 'standby1'").statusmessage == "SET"
        assert [where(conn, cluster) for _ in range(4)] == ["standby1"] * 4
        # a named node takes writes too: the standby answers them with its own error
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO rt_items(v) VALUES ('to-standby')")
        with pytest.raises(psycopg.errors.UndefinedObject, match="nosuchnode"):
            conn.execute("SET helios.node = 'nosuchnode'")
        assert where(conn, cluster) == "standby1"
        conn.execute("RESET helios.node")
        seen = {where(conn, cluster) for _ in range(4)}
        assert seen == {"standby1", "standby2"}
        row = conn.execute("INSERT INTO rt_items(v) VALUES ('after-node') RETURNING inet_server_port()").fetchone()
        assert row == (cluster.primary.port,)


def test_set_helios_branch(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    marker = uuid.uuid4().hex
    with connect(proxy) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject, match="nosuchbranch"):
            conn.execute("SET helios.branch = 'nosuchbranch'")
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)
        assert conn.execute("SET helios.branch = 'b1'").statusmessage == "SET"
        assert conn.execute("SELECT current_database(), inet_server_port()").fetchone() == (
            "app_branch", setup_db.primary.port)
        conn.execute("INSERT INTO rt_branch_rows VALUES (%s)", (marker,))
        assert conn.execute("SELECT count(*) FROM rt_branch_rows WHERE v = %s", (marker,)).fetchone() == (1,)
        conn.execute("RESET helios.branch")
        assert conn.execute("SELECT current_database()").fetchone() == ("app",)


# ---------------------------------------------------------------------------------- transactions


def test_transaction_sticks_to_the_primary(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    cluster = setup_db
    with connect(proxy, autocommit=False) as conn:  # psycopg sends BEGIN first
        seen = {
            one(conn, WHERE),
            one(conn, "INSERT INTO rt_items(v) VALUES ('tx') "
                      "RETURNING pg_is_in_recovery(), inet_server_port(), pg_backend_pid()"),
            one(conn, WHERE),
            one(conn, "SELECT pg_is_in_recovery(), inet_server_port(), pg_backend_pid() FROM rt_items LIMIT 1"),
        }
        conn.commit()
        assert len(seen) == 1, seen
        (in_recovery, port, _pid), = seen
        assert (in_recovery, port) == (False, cluster.primary.port)
        # psycopg opens the next transaction with a plain BEGIN: the primary again
        assert where(conn, cluster) == "primary"
        conn.rollback()


@pytest.mark.parametrize(("begin", "expected"), [
    ("BEGIN", "primary"),
    ("START TRANSACTION", "primary"),
    ("BEGIN READ WRITE", "primary"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "primary"),
    ("BEGIN READ ONLY", "standby"),
    ("START TRANSACTION READ ONLY", "standby"),
    ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", "standby"),
])
def test_begin_forms(setup_db: PgCluster, proxy: ProxyProcess, begin: str, expected: str) -> None:
    with connect(proxy) as conn:
        conn.execute(begin)
        rows = {one(conn, WHERE) for _ in range(3)}
        conn.execute("COMMIT")
        assert len(rows) == 1, f"{begin}: statements ran on {rows}"
        (_, port, _), = rows
        assert node_of(setup_db, port).startswith(expected)


def test_psycopg_read_only_transaction_on_a_standby(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy, autocommit=False) as conn:
        conn.read_only = True
        for _ in range(2):
            rows = {one(conn, WHERE) for _ in range(3)}
            conn.commit()
            assert len(rows) == 1
            (in_recovery, port, _), = rows
            assert in_recovery is True and node_of(setup_db, port).startswith("standby")


def test_write_in_a_read_only_transaction_gets_25006(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    with connect(proxy) as conn:
        conn.execute("BEGIN READ ONLY")
        assert where(conn, setup_db).startswith("standby")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO rt_items(v) VALUES ('ro-tx')")
        conn.execute("ROLLBACK")
        row = conn.execute("INSERT INTO rt_items(v) VALUES ('after-ro') RETURNING inet_server_port()").fetchone()
        assert row == (setup_db.primary.port,)


# ---------------------------------------------------------------------------------- branches


def test_connect_to_a_branch_database(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    marker = uuid.uuid4().hex
    with connect(proxy, dbname="app@b1") as conn:
        for _ in range(3):
            assert conn.execute("SELECT current_database(), inet_server_port()").fetchone() == (
                "app_branch", setup_db.primary.port)
        conn.execute("INSERT INTO rt_branch_rows VALUES (%s)", (marker,))
        assert conn.execute("SELECT count(*) FROM rt_branch_rows WHERE v = %s", (marker,)).fetchone() == (1,)
    with psycopg.connect(setup_db.dsn(setup_db.primary, dbname="app_branch")) as direct:
        assert direct.execute("SELECT count(*) FROM rt_branch_rows WHERE v = %s", (marker,)).fetchone() == (1,)


def test_connect_to_an_unknown_branch_fails(proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="nosuchbranch"):
        connect(proxy, dbname="app@nosuchbranch")
    with connect(proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------- standby choice


def _read_counts(proxy: ProxyProcess, cluster: PgCluster, n: int) -> Counter[str]:
    with connect(proxy) as conn:
        return Counter(where(conn, cluster) for _ in range(n))


def test_round_robin_uses_both_standbys(setup_db: PgCluster, proxy: ProxyProcess) -> None:
    counts = _read_counts(proxy, setup_db, 20)
    assert counts["primary"] == 0
    assert counts["standby1"] >= 8 and counts["standby2"] >= 8, counts


def test_weights_are_honoured(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    nodes = setup_db.node_config()
    for n in nodes:
        if n["name"] == "standby1":
            n["weight"] = 3
    p = proxy_factory({"nodes": nodes})
    counts = _read_counts(p, setup_db, 40)
    assert counts["primary"] == 0
    assert 27 <= counts["standby1"] <= 33 and 7 <= counts["standby2"] <= 13, counts


def test_random_policy_uses_both_standbys(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"routing": {"policy": "random"}})
    counts = _read_counts(p, setup_db, 40)
    assert counts["primary"] == 0
    assert counts["standby1"] > 0 and counts["standby2"] > 0, counts


def test_read_write_split_off_sends_reads_to_the_primary(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"routing": {"read_write_split": False}})
    assert _read_counts(p, setup_db, 5) == Counter({"primary": 5})
    with connect(p) as conn:  # hints still work
        row = conn.execute("/*helios:route=standby*/ SELECT inet_server_port()").fetchone()
        assert row is not None and node_of(setup_db, row[0]).startswith("standby")


# ---------------------------------------------------------------------------------- standby fallback


def _primary_only(cluster: PgCluster) -> list[dict[str, object]]:
    return [n for n in cluster.node_config() if n["role"] == "primary"]


def test_no_standby_reads_fall_back_to_the_primary(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"nodes": _primary_only(setup_db), "routing": {"standby_fallback": "primary"}})
    assert _read_counts(p, setup_db, 3) == Counter({"primary": 3})


def test_no_standby_with_fallback_error_fails_reads(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"nodes": _primary_only(setup_db), "routing": {"standby_fallback": "error"}})
    with connect(p) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT 1")
        assert "standby" in str(err.value)
        # the session goes on: writes still work
        row = conn.execute("INSERT INTO rt_items(v) VALUES ('fallback-error') RETURNING inet_server_port()").fetchone()
        assert row == (setup_db.primary.port,)
        assert conn.execute("/*helios:route=primary*/ SELECT 1").fetchone() == (1,)


def _dead_standby_nodes(cluster: PgCluster) -> list[dict[str, object]]:
    return [*_primary_only(cluster), {"name": "deadstandby", "host": "127.0.0.1", "port": free_port(),
                                      "role": "standby"}]


def test_dead_standby_reads_fall_back_to_the_primary(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    """The only standby's port refuses connections: reads must still be answered, by the primary."""
    p = proxy_factory({"nodes": _dead_standby_nodes(setup_db), "routing": {"standby_fallback": "primary"},
                       "health": {"interval": 0.2, "timeout": 0.5, "failures_before_down": 1}})
    deadline = time.monotonic() + 5.0
    errors: list[str] = []
    with connect(p) as conn:
        while True:
            try:
                if where(conn, setup_db) == "primary":
                    break
            except psycopg.Error as exc:
                errors.append(f"{exc.sqlstate}: {exc}")
            if time.monotonic() > deadline:
                pytest.fail(f"reads never fell back to the primary within 5 s; errors: {errors[-3:]}")
            time.sleep(0.2)
        assert [where(conn, setup_db) for _ in range(5)] == ["primary"] * 5


def test_dead_standby_with_fallback_error_fails_reads(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"nodes": _dead_standby_nodes(setup_db), "routing": {"standby_fallback": "error"}})
    with connect(p) as conn:
        for _ in range(2):
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT 1")
        row = conn.execute("INSERT INTO rt_items(v) VALUES ('dead-error') RETURNING inet_server_port()").fetchone()
        assert row == (setup_db.primary.port,)
