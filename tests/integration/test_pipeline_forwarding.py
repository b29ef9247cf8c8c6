"""Extended-protocol messages reach the server as they arrive, not at the client's Sync (issue 10, item 1)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.helpers import extmsg
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, data_rows, error_fields
from tests.wat_e2e.kit import build_examples, install_example, plugin_config

pytestmark = pytest.mark.timeout(90)
MODES = ["transaction", "session"]
LOCK_KEY = 774411


@pytest.fixture(scope="module", autouse=True)
def tables(cluster: PgCluster) -> Iterator[None]:
    cluster.sql(cluster.primary, """
        DROP TABLE IF EXISTS pipe_u;
        CREATE TABLE pipe_u (id int PRIMARY KEY);
    """, user="app", db="app")
    cluster.wait_replay()
    yield
    cluster.sql(cluster.primary, "DROP TABLE IF EXISTS pipe_u", user="app", db="app")


def _empty(cluster: PgCluster) -> None:
    cluster.sql(cluster.primary, "TRUNCATE pipe_u", user="app", db="app")


def _rows(cluster: PgCluster) -> list[int]:
    out = cluster.sql(cluster.primary, "SELECT id FROM pipe_u ORDER BY id", user="app", db="app")
    return [int(x) for x in out.split()]


def _lock_held(cluster: PgCluster, key: int) -> bool:
    out = cluster.sql(cluster.primary, f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {key}")
    return out.strip() == "1"


def _wait_for(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(params=MODES)
def proxy(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> ProxyProcess:
    return proxy_factory({"pool": {"mode": request.param, "size": 2}})


def test_a_statement_runs_before_the_clients_sync(proxy: ProxyProcess, cluster: PgCluster) -> None:
    """A client that waits for a server-side effect before sending Sync (no Flush either) does not hang."""
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(extmsg.parse("", f"SELECT pg_advisory_lock({LOCK_KEY})") + extmsg.bind("") + extmsg.execute())
        assert _wait_for(lambda: _lock_held(cluster, LOCK_KEY)), "the server never ran the statement"
        raw.send(extmsg.sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["1", "2", "D", "C", "Z"], got
        raw.send(extmsg.parse("", f"SELECT pg_advisory_unlock({LOCK_KEY})") + extmsg.bind("")
                 + extmsg.execute() + extmsg.sync())
        assert data_rows(raw.read_until_ready()) == [["t"]]


def test_a_pipeline_split_across_writes_answers_in_order(proxy: ProxyProcess, cluster: PgCluster) -> None:
    """Named statements, each message in its own write, Sync much later: every answer in its place."""
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        parts = [
            extmsg.parse("pf1", "SELECT $1::int + 1"), extmsg.bind("pf1", ("41",)), extmsg.execute(),
            extmsg.parse("pf2", "SELECT 'two'"), extmsg.describe(b"S", "pf2"), extmsg.bind("pf2"),
            extmsg.execute(), extmsg.close(b"S", "pf1"),
        ]
        for p in parts:
            raw.send(p)
            time.sleep(0.02)  # separate reads on the proxy's side
        raw.send(extmsg.sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["1", "2", "D", "C", "1", "t", "T", "2", "D", "C", "3", "Z"], got
        assert data_rows(got) == [["42"], ["two"]]
        # pf1 was closed in the pipeline, pf2 still exists: as on a direct connection.
        raw.send(extmsg.parse("pf1", "SELECT 1") + extmsg.bind("pf2") + extmsg.execute() + extmsg.sync())
        got = raw.read_until_ready()
        assert data_rows(got) == [["two"]], got


def test_close_then_parse_of_the_same_name_in_one_batch(proxy: ProxyProcess) -> None:
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(extmsg.parse("cp", "SELECT 1") + extmsg.sync())
        raw.read_until_ready()
        raw.send(extmsg.close(b"S", "cp") + extmsg.parse("cp", "SELECT 2") + extmsg.bind("cp")
                 + extmsg.execute() + extmsg.sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["3", "1", "2", "D", "C", "Z"], got
        assert data_rows(got) == [["2"]]


def test_an_error_in_a_late_synced_pipeline_rolls_it_back(proxy: ProxyProcess, cluster: PgCluster) -> None:
    _empty(cluster)
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(extmsg.parse("", "INSERT INTO pipe_u VALUES (1)") + extmsg.bind("") + extmsg.execute())
        raw.send(extmsg.parse("", "INSERT INTO pipe_u VALUES (1)") + extmsg.bind("") + extmsg.execute())
        raw.send(extmsg.parse("", "INSERT INTO pipe_u VALUES (2)") + extmsg.bind("") + extmsg.execute())
        raw.send(extmsg.sync())
        got = raw.read_until_ready()
        kinds = [t for t, _ in got]
        assert kinds == ["1", "2", "C", "1", "2", "E", "Z"], got
        assert error_fields(got[5][1])["C"] == "23505"
    assert _rows(cluster) == [], "the pipeline's implicit transaction was rolled back"


def _psycopg_pipeline(dsn: str, cluster: PgCluster) -> tuple[str, list[int], int]:
    """A pipeline with a unique violation, then another: (error class, rows, count seen in the 2nd)."""
    _empty(cluster)
    done = threading.Event()
    result: list[Any] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                err = ""
                try:
                    with conn.pipeline():
                        conn.execute("INSERT INTO pipe_u VALUES (%s)", (10,))
                        conn.execute("INSERT INTO pipe_u VALUES (%s)", (10,))
                        conn.execute("INSERT INTO pipe_u VALUES (%s)", (11,))
                except psycopg.Error as exc:
                    err = type(exc).__name__
                assert conn.execute("SELECT 1").fetchone() == (1,), "the connection goes on"
                with conn.pipeline():
                    conn.execute("INSERT INTO pipe_u VALUES (%s)", (12,))
                    cur = conn.execute("SELECT count(*) FROM pipe_u")
                row = cur.fetchone()
                assert row is not None
                result.append((err, _rows(cluster), row[0]))
        except BaseException as exc:
            result.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "psycopg's pipeline hung"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def test_psycopg_pipeline_with_a_unique_violation(proxy: ProxyProcess, cluster: PgCluster) -> None:
    direct = f"postgresql://app:apppass@127.0.0.1:{cluster.primary.port}/app"
    expected = _psycopg_pipeline(direct, cluster)
    assert expected[0] == "UniqueViolation"
    assert _psycopg_pipeline(proxy.dsn(), cluster) == expected


def test_asyncpg_executemany_failure_during_writes(proxy: ProxyProcess, cluster: PgCluster) -> None:
    _empty(cluster)

    async def run() -> None:
        conn = await asyncpg.connect(proxy.dsn(), timeout=10)
        try:
            with pytest.raises(asyncpg.UniqueViolationError):
                await asyncio.wait_for(
                    conn.executemany("INSERT INTO pipe_u VALUES ($1)", [(i,) for i in (20, 21, 20, 22)]), 30)
            assert await conn.fetchval("SELECT 1") == 1
            await asyncio.wait_for(conn.executemany("INSERT INTO pipe_u VALUES ($1)", [(i,) for i in range(30, 330)]),
                                   30)
        finally:
            await conn.close()

    asyncio.run(run())
    rows = _rows(cluster)
    assert 20 not in rows, "executemany is atomic: the failed batch left nothing"
    assert rows == list(range(30, 330))


@pytest.fixture
def block_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    build_examples()
    install_example(tmp_path / "plugins", "block_ddl")
    return proxy_factory(plugin_config(tmp_path / "plugins"))


def test_a_statement_the_proxy_refuses_mid_pipeline(block_proxy: ProxyProcess, cluster: PgCluster) -> None:
    """The server already ran the start of the pipeline when a later message is blocked: it fails there
    too (rolled back, as on a direct connection) and the client sees the proxy's error in its place."""
    _empty(cluster)
    with RawPg(block_proxy.host, block_proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(extmsg.parse("", "INSERT INTO pipe_u VALUES (5)") + extmsg.bind("") + extmsg.execute()
                 + extmsg.parse("", f"SELECT pg_advisory_xact_lock({LOCK_KEY + 1})") + extmsg.bind("")
                 + extmsg.execute())
        assert _wait_for(lambda: _lock_held(cluster, LOCK_KEY + 1)), "the start of the pipeline did not run"
        raw.send(extmsg.parse("", "DROP TABLE pipe_u") + extmsg.bind("") + extmsg.execute()
                 + extmsg.parse("", "SELECT 1") + extmsg.bind("") + extmsg.execute())
        raw.send(extmsg.sync())
        got = raw.read_until_ready()
        assert [t for t, _ in got] == ["1", "2", "C", "1", "2", "D", "C", "E", "Z"], got
        err = error_fields(got[7][1])
        assert (err["C"], err["M"]) == ("42000", "block_ddl: DROP statements are not allowed")
        raw.send(extmsg.parse("", "SELECT count(*) FROM pipe_u") + extmsg.bind("") + extmsg.execute()
                 + extmsg.sync())
        assert data_rows(raw.read_until_ready()) == [["0"]]
    assert _rows(cluster) == [], "the blocked pipeline was rolled back"
    assert not _lock_held(cluster, LOCK_KEY + 1)


def test_parse_of_a_shared_statement_in_a_failed_transaction(proxy_factory: ProxyFactory, cluster: PgCluster) -> None:
    """A Parse the proxy would answer itself (the server already has that text) is refused in an aborted
    transaction as the server refuses it, also when the transaction failed in an earlier pipelined Sync."""
    proxy = proxy_factory({"pool": {"size": 1}})
    text = "SELECT 'shared-in-failed-tx'::text"
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(extmsg.parse("a1", text) + extmsg.sync())  # the server now has the text prepared
        raw.read_until_ready()
        for pipelined in (False, True):
            fail = extmsg.parse("", "BEGIN") + extmsg.bind("") + extmsg.execute() + extmsg.sync()
            fail += extmsg.parse("", "SELECT 1/0") + extmsg.bind("") + extmsg.execute() + extmsg.sync()
            again = extmsg.parse("b1", text) + extmsg.bind("b1") + extmsg.execute() + extmsg.sync()
            if pipelined:
                raw.send(fail + again)
                raw.read_until_ready()
                raw.read_until_ready()
            else:
                raw.send(fail)
                raw.read_until_ready()
                raw.read_until_ready()
                raw.send(again)
            got = raw.read_until_ready()
            assert [t for t, _ in got] == ["E", "Z"], got
            assert error_fields(got[0][1])["C"] == "25P02"
            assert got[-1][1] == b"E"
            raw.send(extmsg.parse("", "ROLLBACK") + extmsg.bind("") + extmsg.execute() + extmsg.sync())
            raw.read_until_ready()
            # b1 was never made: preparing it now works, as on a direct connection.
            raw.send(extmsg.parse("b1", text) + extmsg.bind("b1") + extmsg.execute() + extmsg.close(b"S", "b1")
                     + extmsg.sync())
            got = raw.read_until_ready()
            assert [t for t, _ in got] == ["1", "2", "D", "C", "3", "Z"], got


def test_repeated_psycopg_pipelines_never_hang(proxy: ProxyProcess, cluster: PgCluster) -> None:
    """psycopg sends a lone Flush right after its Sync: it must not switch the relay mid-stream (this hung
    about one run in five before)."""
    for _ in range(15):
        assert _psycopg_pipeline(proxy.dsn(), cluster)[0] == "UniqueViolation"
