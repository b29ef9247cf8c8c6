"""Prepared statements under transaction pooling: renaming, SQL PREPARE, asyncpg and pgbench -M prepared."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest
from psycopg import pq

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

Conn = psycopg.Connection[tuple[Any, ...]]

pytestmark = pytest.mark.timeout(90)

SPLIT_OFF = {"read_write_split": False}


def connect(proxy: ProxyProcess, autocommit: bool = True) -> Conn:
    return psycopg.connect(proxy.dsn(), autocommit=autocommit, connect_timeout=10)


@pytest.fixture(scope="module")
def setup_db(cluster: PgCluster) -> PgCluster:
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pp_rows (task int, n int)")
    cluster.wait_replay()
    return cluster


# ---------------------------------------------------------------------------------- protocol level


def _ok(res: pq.abc.PGresult, what: str) -> pq.abc.PGresult:
    assert res.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK), (
        f"{what}: {pq.ExecStatus(res.status).name} {res.error_message.decode(errors='replace')}")
    return res


def _value(res: pq.abc.PGresult) -> str:
    v = res.get_value(0, 0)
    assert v is not None
    return v.decode()


def test_same_statement_name_from_two_clients_over_one_backend(
    setup_db: PgCluster, proxy_factory: ProxyFactory
) -> None:
    """Both clients name their statement "s1", with different texts; they share the only backend."""
    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    with connect(proxy) as a, connect(proxy) as b:
        _ok(a.pgconn.prepare(b"s1", b"SELECT 'a:' || $1::text"), "parse a")
        _ok(b.pgconn.prepare(b"s1", b"SELECT 'b:' || $1::text || ':' || $1::text"), "parse b")
        for i in range(5):
            assert _value(_ok(a.pgconn.exec_prepared(b"s1", [str(i).encode()]), "exec a")) == f"a:{i}"
            assert _value(_ok(b.pgconn.exec_prepared(b"s1", [str(i).encode()]), "exec b")) == f"b:{i}:{i}"
        # a duplicate name is the client's own error, as on a direct connection
        res = a.pgconn.prepare(b"s1", b"SELECT 1")
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert _value(_ok(a.pgconn.exec_prepared(b"s1", [b"x"]), "exec a after 42P05")) == "a:x"


def test_statement_follows_the_client_to_another_backend(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}, "routing": SPLIT_OFF})
    with connect(proxy) as a, connect(proxy) as b:
        _ok(a.pgconn.prepare(b"pid", b"SELECT pg_backend_pid()::text || ':' || $1::text"), "parse")
        first = _value(_ok(a.pgconn.exec_prepared(b"pid", [b"1"]), "exec 1")).split(":")[0]
        b.execute("BEGIN")  # takes the backend a just gave back (the idle list is LIFO)
        b.execute("SELECT 1")
        # a lone Describe on the other backend: the proxy must Parse the statement there first
        desc = _ok(a.pgconn.describe_prepared(b"pid"), "describe")
        assert desc.nparams == 1 and desc.nfields == 1
        second = _value(_ok(a.pgconn.exec_prepared(b"pid", [b"2"]), "exec 2"))
        b.execute("COMMIT")
        assert second.endswith(":2")
        assert second.split(":")[0] != first, "the client did not change backends; the test proves nothing"


def test_close_and_reparse_with_new_text(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}, "routing": SPLIT_OFF})
    with connect(proxy) as a:
        _ok(a.pgconn.prepare(b"s", b"SELECT 'one'"), "parse 1")
        assert _value(_ok(a.pgconn.exec_prepared(b"s", []), "exec 1")) == "one"
        _ok(a.pgconn.close_prepared(b"s"), "close")
        res = a.pgconn.exec_prepared(b"s", [])
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"  # gone, as on a server
        _ok(a.pgconn.prepare(b"s", b"SELECT 'two'"), "parse 2")
        assert _value(_ok(a.pgconn.exec_prepared(b"s", []), "exec 2")) == "two"
        assert a.execute("SELECT 1").fetchone() == (1,)


def test_failed_parse_leaves_no_statement(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}, "routing": SPLIT_OFF})
    with connect(proxy) as a:
        res = a.pgconn.prepare(b"bad", b"SELEC 1")
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"42601"
        res = a.pgconn.exec_prepared(b"bad", [])
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        res = a.pgconn.prepare(b"bad2", b"SELECT * FROM pp_no_such_table")
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"42P01"
        _ok(a.pgconn.prepare(b"bad", b"SELECT 'fixed'"), "parse good")
        assert _value(_ok(a.pgconn.exec_prepared(b"bad", []), "exec good")) == "fixed"
        assert a.execute("SELECT 1").fetchone() == (1,)


def test_eviction_per_backend(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 1, "prepared_statements_per_server": 2}, "routing": SPLIT_OFF})
    with connect(proxy) as a, connect(proxy) as b:
        for i in range(5):
            _ok(a.pgconn.prepare(f"e{i}".encode(), f"SELECT {i} + $1::int".encode()), f"parse e{i}")
        for _ in range(3):
            for i in range(5):
                assert _value(_ok(a.pgconn.exec_prepared(f"e{i}".encode(), [b"100"]), f"exec e{i}")) == str(100 + i)
                assert b.execute("SELECT %s::int", (i,), prepare=True).fetchone() == (i,)
        row = b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert row is not None and row[0] <= 2 + 1  # the LRU bound (+ what b itself holds at most)


# ---------------------------------------------------------------------------------- SQL PREPARE


def test_sql_prepare_execute_deallocate(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"pool": {"size": 2}})
    tag = int(uuid.uuid4().int % 1_000_000)
    with connect(proxy) as a, connect(proxy) as other:
        a.execute("PREPARE pp_sel(int) AS SELECT $1 + 1")
        a.execute("PREPARE pp_ins(int) AS INSERT INTO pp_rows VALUES ($1, 0)")
        for i in range(5):
            other.execute("SELECT 1")
            with other.transaction():
                other.execute("INSERT INTO pp_rows VALUES (-1, %s)", (i,))
            assert a.execute(f"EXECUTE pp_sel({i})").fetchone() == (i + 1,)
            a.execute(f"EXECUTE pp_ins({tag})")
        assert a.execute("SELECT count(*) FROM pp_rows WHERE task = %s", (tag,)).fetchone() == (5,)
        a.execute("DEALLOCATE pp_sel")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE pp_sel(1)")
        a.execute(f"EXECUTE pp_ins({tag})")
        a.execute("DEALLOCATE ALL")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute(f"EXECUTE pp_ins({tag})")
        a.execute("PREPARE pp_sel(int) AS SELECT $1 * 10")
        assert a.execute("EXECUTE pp_sel(4)").fetchone() == (40,)


# ---------------------------------------------------------------------------------- real clients


async def test_asyncpg_50_tasks_over_a_pool_of_5(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    # eventual: reads right after each task's write transaction still go to a standby (with the
    # default routing.consistency=session they would read their writes on the primary).
    proxy = proxy_factory({"pool": {"size": 5, "acquire_timeout": "30s"}, "routing": {"consistency": "eventual"}})
    dsn = proxy.dsn()
    errors: list[str] = []
    tag = int(uuid.uuid4().int % 1_000_000) * 100

    async def task(i: int) -> None:
        try:
            conn = await asyncpg.connect(dsn, timeout=20)
        except Exception as exc:
            errors.append(f"task {i} connect: {type(exc).__name__}: {exc}")
            return
        try:
            named = await conn.prepare("SELECT $1::int * 2, pg_is_in_recovery()", name=f"pp_named_{i}")
            plain = await conn.prepare("SELECT $1::text || '-' || $2::int")
            for k in range(10):
                assert await conn.fetchval("SELECT $1::int + 1", k) == k + 1
                assert tuple(await named.fetchrow(k)) == (2 * k, True)
                assert await plain.fetchval("t", k) == f"t-{k}"
                async with conn.transaction():
                    await conn.execute("INSERT INTO pp_rows VALUES ($1, $2)", tag + i, k)
                    assert await conn.fetchval("SELECT count(*) FROM pp_rows WHERE task = $1", tag + i) == k + 1
                await asyncio.sleep(0)
        except Exception as exc:
            errors.append(f"task {i}: {type(exc).__name__}: {exc}")
        finally:
            await conn.close()

    await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(50))), 80)
    assert errors == [], f"{errors[:3]}\n--- proxy log (tail) ---\n{proxy.output()[-4000:]}"


def _pgbench(args: list[str], port: int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PGPASSWORD="apppass", PGSSLMODE="disable")
    return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "app", *args, "app"],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_pgbench_prepared_32_clients_over_a_pool_of_8(setup_db: PgCluster, proxy_factory: ProxyFactory) -> None:
    init = _pgbench(["-i", "-s", "1", "-q"], setup_db.primary.port)
    assert init.returncode == 0, init.stderr
    setup_db.wait_replay()
    proxy = proxy_factory({"pool": {"size": 8, "mode": "transaction", "acquire_timeout": "30s"}})
    for extra, seconds in ((["-n"], "5"), (["-S", "-n"], "3")):  # TPC-B on the primary; -S on standbys
        res = _pgbench(["-M", "prepared", "-c", "32", "-j", "2", "-T", seconds, *extra], proxy.port)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        failed = re.search(r"number of failed transactions: (\d+)", out)
        assert failed is not None and failed.group(1) == "0", out[-3000:]
        done = re.search(r"number of transactions actually processed: (\d+)", out)
        assert done is not None and int(done.group(1)) > 0, out[-3000:]


def test_parse_bind_execute_close_in_one_write_leaves_no_client_name_on_the_server(
    setup_db: PgCluster, proxy_factory: ProxyFactory
) -> None:
    """Parse s1 / Bind s1 / Execute / Close s1 / Sync arriving in one read: the server must get the statement
    under the proxy's shared name, never the client's own (found by tests/unit/test_flows.py: the Close used to
    be applied before the batch was renamed, so "s1" stayed on the pooled server and the next client to use
    that server got 42P05 for its own "s1")."""
    from tests.helpers.extmsg import bind, close, execute, parse, sync
    from tests.helpers.rawpg import RawPg, data_rows, error_fields

    proxy = proxy_factory({"pool": {"size": 1}, "routing": SPLIT_OFF})
    batch = parse("s1", "SELECT 41 + 1") + bind("s1") + execute() + close(b"S", "s1") + sync()
    for _ in range(3):  # three clients in turn over the only server connection
        with RawPg(proxy.host, proxy.port) as c:
            c.login("app", "apppass", "app")
            c.send(batch)
            reply = c.read_until_ready()
            errors = [error_fields(body) for kind, body in reply if kind == "E"]
            assert errors == [], errors
            assert [k for k, _ in reply] == ["1", "2", "D", "C", "3", "Z"]
            assert data_rows(reply) == [["42"]]
            names = data_rows(c.query("SELECT name FROM pg_prepared_statements ORDER BY 1"))
            assert ["s1"] not in names, names  # the server only has proxy names (hp_...)
