"""Issue 11 against real servers: read-your-writes by WAL position, volatile functions, 25006 rerun,
reads without a primary, nonexistent databases, pool.max_pools, target_session_attrs and read-only aliases."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, ServerError

Conn = psycopg.Connection[tuple[Any, ...]]

pytestmark = pytest.mark.timeout(120)

DELAY = "5s"  # recovery_min_apply_delay of the delayed standby: staleness is certain


def connect(proxy: ProxyProcess, dbname: str = "app", **kw: Any) -> Conn:
    return psycopg.connect(proxy.dsn(dbname=dbname), autocommit=True, connect_timeout=10, **kw)


def on_standby(conn: Conn) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def login_error(proxy: ProxyProcess, dbname: str) -> dict[str, str]:
    """The ErrorResponse fields a login to `dbname` ends with (it must fail)."""
    with RawPg(proxy.host, proxy.port) as raw:
        with pytest.raises(ServerError) as exc:
            raw.login("app", "apppass", dbname)
        return exc.value.fields


def metrics(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(proxy: ProxyProcess, name: str) -> float:
    """Sum of all samples of `name` (with any labels)."""
    total = 0.0
    for line in metrics(proxy).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def delayed() -> Iterator[PgCluster]:
    """A primary and one standby that applies commits DELAY late."""
    with PgCluster(standbys=1, settings={"recovery_min_apply_delay": DELAY}) as c:
        with psycopg.connect(c.dsn(c.primary), autocommit=True) as conn:
            conn.execute("CREATE TABLE ryw (id serial PRIMARY KEY, v int)")
        c.wait_replay(timeout=30)
        yield c


def _pairs(proxy: ProxyProcess, n: int) -> int:
    """n autocommit INSERT ... RETURNING id + SELECT of that id; the number of misses."""
    misses = 0
    with connect(proxy) as conn:
        for i in range(n):
            row = conn.execute("INSERT INTO ryw (v) VALUES (%s) RETURNING id", (i,)).fetchone()
            assert row is not None
            got = conn.execute("SELECT v FROM ryw WHERE id = %s", (row[0],)).fetchone()
            if got != (i,):
                misses += 1
    return misses


# ---------------------------------------------------------------------------------- 1. consistency


def test_session_consistency_reads_its_own_writes(delayed: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(cluster=delayed)  # routing.consistency defaults to session
    with connect(p) as other:
        assert on_standby(other)
        assert _pairs(p, 1000) == 0
        # a client that wrote nothing still reads from the (stale) standby
        assert on_standby(other)
        assert other.execute("SELECT count(*) FROM ryw WHERE v >= 0").fetchone() is not None
    assert metric(p, "heliosproxy_reads_on_primary_total") >= 1000
    text = metrics(p)
    assert 'reads_on_primary_total{reason="position_unknown"}' in text or "standby_behind" in text


def test_eventual_consistency_misses_its_own_writes(delayed: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"routing": {"consistency": "eventual"}}, cluster=delayed)
    assert _pairs(p, 50) > 0  # the standby is DELAY behind: the test above can fail
    assert metric(p, "heliosproxy_reads_on_primary_total") == 0


def test_session_create_table_then_select(delayed: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(cluster=delayed)
    with connect(p) as conn:
        conn.execute("CREATE TABLE ryw_new (v int)")
        conn.execute("INSERT INTO ryw_new VALUES (1), (2)")
        assert conn.execute("SELECT sum(v) FROM ryw_new").fetchone() == (3,)
        # a transaction that wrote, then a read after its COMMIT
        conn.execute("BEGIN")
        conn.execute("INSERT INTO ryw_new VALUES (4)")
        conn.execute("COMMIT")
        assert conn.execute("SELECT sum(v) FROM ryw_new").fetchone() == (7,)
    # a client that wrote nothing reads the standby, which does not have the table yet
    with connect(p) as reader, pytest.raises(psycopg.errors.UndefinedTable):
        reader.execute("SELECT sum(v) FROM ryw_new")


def test_session_reads_return_to_the_standby_once_it_replayed(
    delayed: PgCluster, proxy_factory: ProxyFactory
) -> None:
    p = proxy_factory(cluster=delayed)
    with connect(p) as conn:
        conn.execute("INSERT INTO ryw (v) VALUES (-1)")
        assert not on_standby(conn)
        started = time.monotonic()
        deadline = started + 20
        while not on_standby(conn):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        waited = time.monotonic() - started
        assert waited >= 2.0  # not before the delayed standby applied the write
        assert conn.execute("SELECT count(*) FROM ryw WHERE v = -1").fetchone() != (0,)


def test_strong_consistency_covers_other_clients(delayed: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"routing": {"consistency": "strong"}}, cluster=delayed)
    with connect(p) as writer, connect(p) as reader:
        assert on_standby(reader)
        for i in range(20):
            row = writer.execute("INSERT INTO ryw (v) VALUES (%s) RETURNING id", (1000 + i,)).fetchone()
            assert row is not None
            assert reader.execute("SELECT v FROM ryw WHERE id = %s", (row[0],)).fetchone() == (1000 + i,)


def test_session_mode_is_not_global(delayed: PgCluster, proxy_factory: ProxyFactory) -> None:
    """The same two clients in session mode: the reader that wrote nothing sees the stale standby."""
    p = proxy_factory(cluster=delayed)
    with connect(p) as writer, connect(p) as reader:
        row = writer.execute("INSERT INTO ryw (v) VALUES (2000) RETURNING id").fetchone()
        assert row is not None
        assert reader.execute("SELECT v FROM ryw WHERE id = %s", (row[0],)).fetchone() is None


# ---------------------------------------------------------------------------------- 2. functions, 25006


@pytest.fixture(scope="module")
def funcs(cluster: PgCluster) -> PgCluster:
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fn_orders (id serial PRIMARY KEY, n int)")
        conn.execute(
            "CREATE OR REPLACE FUNCTION add_order(n int) RETURNS int LANGUAGE plpgsql AS "
            "$$DECLARE r int; BEGIN INSERT INTO fn_orders (n) VALUES (n) RETURNING id INTO r; RETURN r; END$$"
        )
        conn.execute(
            "CREATE OR REPLACE FUNCTION where_stable() RETURNS bool LANGUAGE sql STABLE AS "
            "$$SELECT pg_is_in_recovery()$$"
        )
        conn.execute(
            "CREATE OR REPLACE FUNCTION where_volatile() RETURNS bool LANGUAGE sql AS $$SELECT pg_is_in_recovery()$$"
        )
    cluster.wait_replay()
    return cluster


def fresh(proxy: ProxyProcess, sql: str) -> tuple[Any, ...]:
    """`sql`'s first row on a new connection (no earlier write keeps its reads on the primary)."""
    with connect(proxy) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row


def test_volatile_user_function_goes_to_the_primary(funcs: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory()
    assert fresh(p, "SELECT add_order(7) > 0") == (True,)
    assert fresh(p, "SELECT where_volatile()") == (False,)
    assert fresh(p, "SELECT public.where_volatile()") == (False,)
    assert fresh(p, "SELECT where_stable()") == (True,)
    assert fresh(p, "SELECT where_stable() FROM pg_class LIMIT 1") == (True,)
    # built-ins marked VOLATILE stay on standbys
    assert fresh(p, "SELECT pg_is_in_recovery(), random() >= 0") == (True, True)
    assert metric(p, "heliosproxy_read_only_retries_total") == 0


def test_read_only_functions_stay_on_standbys(funcs: PgCluster, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"routing": {"read_only_functions": ["where_volatile"]}})
    assert fresh(p, "SELECT where_volatile()") == (True,)
    assert fresh(p, "SELECT public.add_order(1) > 0, pg_is_in_recovery()") == (True, False)


def test_function_created_through_the_proxy_is_known_at_once(
    funcs: PgCluster, proxy_factory: ProxyFactory
) -> None:
    p = proxy_factory()
    with connect(p) as conn:
        assert conn.execute("SELECT where_stable()").fetchone() == (True,)  # function list loaded
        conn.execute("DROP FUNCTION IF EXISTS made_here()")
        conn.execute("CREATE FUNCTION made_here() RETURNS bool LANGUAGE sql AS $$SELECT pg_is_in_recovery()$$")
        assert conn.execute("SELECT made_here()").fetchone() == (False,)
        conn.execute("DROP FUNCTION made_here()")
    assert metric(p, "heliosproxy_read_only_retries_total") == 0


def test_standby_refusal_25006_reruns_on_the_primary(funcs: PgCluster, proxy_factory: ProxyFactory) -> None:
    cluster = funcs
    p = proxy_factory({"routing": {"function_cache_ttl": "1h"}})
    with connect(p) as conn:
        assert conn.execute("SELECT where_stable()").fetchone() == (True,)  # function list loaded
        # created behind the proxy's back: its cached list says nothing about it
        with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as direct:
            direct.execute(
                "CREATE OR REPLACE FUNCTION add_order_late(n int) RETURNS int LANGUAGE plpgsql AS "
                "$$DECLARE r int; BEGIN INSERT INTO fn_orders (n) VALUES (n) RETURNING id INTO r; RETURN r; END$$"
            )
        cluster.wait_replay()
        row = conn.execute("SELECT add_order_late(8), inet_server_port()").fetchone()
        assert row is not None and row[1] == cluster.primary.port
        assert metric(p, "heliosproxy_read_only_retries_total") == 1
    with connect(p) as conn:  # a new session: its reads start on a standby again
        # extended protocol with a named prepared statement too
        cur = conn.execute("SELECT add_order_late(%s), inet_server_port()", (9,), prepare=True)
        row = cur.fetchone()
        assert row is not None and row[1] == cluster.primary.port
        assert metric(p, "heliosproxy_read_only_retries_total") == 2
        # inside a transaction the error goes to the client, as on a standby
        conn.execute("BEGIN READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("SELECT add_order_late(10)")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as direct:
        direct.execute("DROP FUNCTION add_order_late(int)")


# ---------------------------------------------------------------------------------- 3. no primary


def _node_state(proxy: ProxyProcess, name: str) -> str:
    with urllib.request.urlopen(proxy.admin_url + "/api/nodes", timeout=5) as r:
        data = json.loads(r.read())
    nodes = data["nodes"] if isinstance(data, dict) else data
    for n in nodes:
        if n["name"] == name:
            return str(n["state"])
    raise AssertionError(f"no node {name} in {data}")


def test_reads_and_logins_without_a_primary(cluster_factory: Any, proxy_factory: ProxyFactory) -> None:
    c = cluster_factory(standbys=1)
    p = proxy_factory(
        {"health": {"interval": "200ms", "failures_before_down": 2}, "failover": {"write_timeout": "1s"}},
        cluster=c,
    )
    c.stop_node(c.primary)
    deadline = time.monotonic() + 15
    while _node_state(p, "primary") != "down":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    conns = [connect(p) for _ in range(20)]
    try:
        errors = 0
        for conn in conns:
            try:
                assert on_standby(conn)
                conn.execute("SELECT count(*) FROM pg_class").fetchone()
            except psycopg.Error:
                errors += 1
        assert errors == 0
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as exc:
            conns[0].execute("CREATE TABLE nope (v int)")
        assert exc.value.sqlstate == "08006"
        assert time.monotonic() - started >= 0.9
        c.promote(c.standbys[0])
        deadline = time.monotonic() + 20
        while True:
            try:
                with connect(p) as conn:
                    conn.execute("CREATE TABLE after_promote (v int)")
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        conns[1].execute("INSERT INTO after_promote VALUES (1)")
        assert conns[1].execute("SELECT count(*) FROM after_promote").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


# ---------------------------------------------------------------------------------- 4. databases


def test_nonexistent_database_gets_3d000_and_no_pool(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory()
    with connect(p) as conn:
        conn.execute("SELECT 1")
    for _ in range(2):  # the second answer comes from the cache
        err = login_error(p, "no_such_db")
        assert (err["S"], err["C"], err["M"]) == ("FATAL", "3D000", 'database "no_such_db" does not exist')
    with urllib.request.urlopen(p.admin_url + "/api/pools", timeout=5) as r:
        pools = r.read().decode()
    assert "no_such_db" not in pools and '"app"' in pools
    assert "no_such_db" not in metrics(p)


def test_max_pools(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"pool": {"max_pools": 1}})
    with connect(p) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS mp (v int)")  # the one pool: primary/app/app
        err = login_error(p, "app_branch")
        assert (err["S"], err["C"]) == ("FATAL", "53300")
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------- 5. target_session_attrs

ALIASES = {"databases": {"app_ro": {"database": "app", "route": "standby"}}}


def psql(proxy: ProxyProcess, dbname: str, attrs: str, sql: str) -> subprocess.CompletedProcess[str]:
    dsn = (
        f"host={proxy.host} port={proxy.port} user=app password=apppass dbname={dbname} "
        f"target_session_attrs={attrs} connect_timeout=10"
    )
    return subprocess.run(
        ["/usr/lib/postgresql/15/bin/psql", dsn, "-AtX", "-c", sql], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("attrs", ["read-write", "primary", "any"])
def test_target_session_attrs_primary_side(proxy_factory: ProxyFactory, attrs: str) -> None:
    p = proxy_factory(ALIASES)
    r = psql(p, "app", attrs, "SHOW in_hot_standby")
    assert r.returncode == 0, r.stderr
    # the alias is not a primary: libpq refuses it
    r = psql(p, "app_ro", attrs, "SELECT 1")
    if attrs == "any":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0, "a read-only alias must not pass for a primary"


@pytest.mark.parametrize("attrs", ["read-only", "prefer-standby", "standby"])
def test_target_session_attrs_on_a_read_only_alias(proxy_factory: ProxyFactory, attrs: str) -> None:
    p = proxy_factory(ALIASES)
    r = psql(p, "app_ro", attrs, "SELECT pg_is_in_recovery()")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "t"
    if attrs != "prefer-standby":
        r = psql(p, "app", attrs, "SELECT 1")
        assert r.returncode != 0, "the normal database must not pass for a standby"


def test_read_only_alias_sends_everything_to_standbys(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(ALIASES)
    with connect(p, dbname="app_ro") as conn:
        assert conn.info.parameter_status("in_hot_standby") == "on"
        assert conn.info.parameter_status("default_transaction_read_only") == "on"
        for _ in range(3):
            assert on_standby(conn)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE alias_nope (v int)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DROP TABLE IF EXISTS alias_nope")
        assert on_standby(conn)
    assert metric(p, "heliosproxy_read_only_retries_total") == 0
    with connect(p) as conn:  # the real database next to it: a primary to libpq
        assert conn.info.parameter_status("in_hot_standby") == "off"
        assert conn.info.parameter_status("default_transaction_read_only") == "off"
