"""failover.replay (issue 16 §2): session-pooling and pinned clients move to a new server with their prepared
statements, LISTEN channels and settings; state that cannot move ends the session with an exact error."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.pgcluster import PgCluster, PgNode
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg

HEALTH = {"interval": "300ms", "timeout": "300ms", "failures_before_down": 2, "successes_before_up": 1}
REPLAY = {"replay": True, "write_timeout": "15s"}
QUERY = "SELECT v FROM kv WHERE k = %s"


def _nodes(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(proxy.admin_url + "/api/nodes", timeout=5) as r:
        return {n["name"]: n for n in json.load(r)}


def _moved(proxy: ProxyProcess) -> float:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "heliosproxy_failover_replays_total" and s.labels.get("kind") == "session_moved":
                return float(s.value)
    return 0.0


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _setup(pg: PgCluster) -> None:
    pg.sql(pg.primary, "CREATE TABLE kv (k int PRIMARY KEY, v int); INSERT INTO kv VALUES (1, 10), (2, 20), (3, 30)",
           db="app", user="app")
    pg.sql(pg.primary, "CREATE ROLE mover; GRANT mover TO app; GRANT SELECT ON kv TO mover", db="app")


def _terminate(pg: PgCluster, node: PgNode, pid: int) -> None:
    """pg_terminate_backend on the server itself (not through the proxy), waiting until the backend is gone."""
    assert pg.sql(node, f"SELECT pg_terminate_backend({pid}, 5000)") == "t"


def _raw(proxy: ProxyProcess, sql: str) -> RawPg:
    raw = RawPg(proxy.host, proxy.port)
    raw.login("app", "apppass", "app")
    kinds = [k for k, _b in raw.query(sql)]
    assert "E" not in kinds, kinds
    return raw


def _ends_with(raw: RawPg, sqlstate: str) -> None:
    """The client got exactly this error (FATAL) and its connection was closed."""
    fields = raw.read_error(timeout=30)
    assert (fields.get("S"), fields.get("C")) == ("FATAL", sqlstate), fields
    assert raw.closed_within(5)
    raw.close()


class AsyncClient:
    """An asyncpg connection driven from the test thread on a loop of its own."""

    def __init__(self, dsn: str):
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(dsn))
        self.notes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def listen(self, channel: str) -> None:
        def got(_conn: Any, _pid: int, chan: str, payload: str) -> None:
            self.notes.put_nowait((chan, payload))

        self.run(self.conn.add_listener(channel, got))

    def next_note(self, timeout: float) -> tuple[str, str]:
        return self.run(asyncio.wait_for(self.notes.get(), timeout))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


def test_session_pooling_sessions_move_to_the_promoted_primary_with_prepared_statements_and_listen(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """Primary killed, standby promoted: idle session-pooling clients keep their protocol-level prepared
    statements (psycopg, asyncpg's cache), SQL PREPAREs, SET ROLE and LISTEN channels, and so does a
    transaction-pooling client pinned by PREPARE and LISTEN; temp tables, session advisory locks and
    WITH HOLD cursors end the session with FATAL 08006."""
    pg = cluster_factory(standbys=1)
    _setup(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY, "pool": {"mode": "session"}}, cluster=pg)
    dsn = proxy.dsn()
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]

    ps = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)  # server-side prepared statements
    assert ps.execute(QUERY, (1,), prepare=True).fetchone() == (10,)
    sq = psycopg.connect(dsn, autocommit=True)
    sq.execute("PREPARE getv(int) AS SELECT v FROM kv WHERE k = $1")
    sq.execute("PREPARE gone AS SELECT 1")
    sq.execute("DEALLOCATE gone")
    sq.execute("SET ROLE mover")
    sq.execute("SET work_mem = '3MB'")
    ln = psycopg.connect(dsn, autocommit=True)
    ln.execute("LISTEN moved")
    ln.execute("LISTEN other")
    ln.execute("UNLISTEN other")
    ac = AsyncClient(dsn)
    assert ac.run(ac.conn.fetchval("SELECT v FROM kv WHERE k = $1", 2)) == 20  # into asyncpg's statement cache
    stmt = ac.run(ac.conn.prepare("SELECT v * 2 FROM kv WHERE k = $1"))
    assert ac.run(stmt.fetchval(3)) == 60
    # Transaction pooling, pinned by SQL PREPARE and LISTEN (a second proxy on the same cluster).
    tproxy = proxy_factory({"health": HEALTH, "failover": REPLAY, "pool": {"mode": "transaction"}}, cluster=pg)
    _wait(lambda: _nodes(tproxy)["standby1"]["state"] == "up", 10, "standby1 up (transaction pooling)")
    tp = psycopg.connect(tproxy.dsn(), autocommit=True)
    tp.execute("PREPARE getv(int) AS SELECT v FROM kv WHERE k = $1")
    tp.execute("LISTEN moved")
    assert tp.execute("EXECUTE getv(1)").fetchone() == (10,)
    unmovable = [
        _raw(tproxy, "CREATE TEMP TABLE scratch (x int)"),
        _raw(proxy, "CREATE TEMP TABLE scratch (x int)"),
        _raw(proxy, "SELECT pg_advisory_lock(42)"),
        _raw(proxy, "DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
    ]

    t_kill = time.monotonic()
    pg.stop_node(old, "immediate")
    pg.promote(new)
    t_promoted = time.monotonic()
    _wait(lambda: _moved(proxy) >= 4, 30, "4 sessions moved")
    _wait(lambda: _moved(tproxy) >= 1, 30, "the pinned session moved")
    print(f"\nSESSION MOVE (primary killed, standby promoted): 5 sessions moved {time.monotonic() - t_kill:.2f}s "
          f"after the kill, {time.monotonic() - t_promoted:.2f}s after pg_promote returned")

    # LISTEN: a NOTIFY on the new primary, from another connection, reaches the moved listener.
    pg.sql(new, "NOTIFY other, 'not listened'; NOTIFY moved, 'after the move'", db="app")
    notes = [(n.channel, n.payload) for n in ln.notifies(timeout=10, stop_after=1)]
    assert notes == [("moved", "after the move")]
    assert ln.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    assert [(n.channel, n.payload) for n in tp.notifies(timeout=10, stop_after=1)] == [("moved", "after the move")]
    assert tp.execute("EXECUTE getv(2)").fetchone() == (20,)
    assert tp.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    # psycopg binds its server-side statement by name: it exists on the new server.
    assert ps.execute(QUERY, (1,), prepare=True).fetchone() == (10,)
    assert ps.execute("SELECT name FROM pg_prepared_statements WHERE NOT from_sql").fetchall() != []
    assert ps.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    # SQL PREPARE / DEALLOCATE, SET ROLE and settings.
    assert sq.execute("EXECUTE getv(2)").fetchone() == (20,)
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        sq.execute("EXECUTE gone")
    assert sq.execute("SELECT current_user, current_setting('work_mem'), inet_server_port()").fetchone() == (
        "mover", "3MB", new.port)
    # asyncpg: its statement cache and an explicit prepared statement.
    assert ac.run(ac.conn.fetchval("SELECT v FROM kv WHERE k = $1", 1)) == 10
    assert ac.run(stmt.fetchval(2)) == 40
    assert ac.run(ac.conn.fetchval("SELECT inet_server_port()")) == new.port
    for raw in unmovable:
        _ends_with(raw, "08006")
    for c in (ps, sq, ln, tp):
        c.close()
    ac.close()
    assert _moved(proxy) == 4 and _moved(tproxy) == 1


def test_terminated_backend_session_pooling_moves_on_the_same_primary(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """pg_terminate_backend without a failover: an idle session moves with its state; a read in flight
    is answered normally; a transaction is replayed; an advisory lock holder gets the server's 57P01."""
    pg = cluster_factory(standbys=0)
    _setup(pg)
    proxy = proxy_factory({"failover": REPLAY, "pool": {"mode": "session"}}, cluster=pg)
    dsn = proxy.dsn()
    primary = pg.primary

    c = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    c.execute("SET application_name = 'mover'")
    assert c.execute(QUERY, (1,), prepare=True).fetchone() == (10,)
    c.execute("PREPARE getv(int) AS SELECT v FROM kv WHERE k = $1")
    c.execute("LISTEN moved")
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    # Settings are applied before the statements are prepared again: this one only parses under them.
    pg.sql(primary, "CREATE SCHEMA s2; CREATE TABLE s2.only_here (v int); INSERT INTO s2.only_here VALUES (111)",
           db="app", user="app")
    sp = psycopg.connect(dsn, autocommit=True)
    sp.execute("SET search_path = s2, public")
    sp.execute("PREPARE inpath AS SELECT v FROM only_here")
    sp.execute("LISTEN kept")
    sp.execute("BEGIN")
    sp.execute("UNLISTEN kept")  # rolled back: still listening (and a move must not drop it)
    sp.execute("ROLLBACK")
    sppid = sp.execute("SELECT pg_backend_pid()").fetchone()[0]
    locker = _raw(proxy, "SELECT pg_advisory_lock(7)")
    locker_pid = int(pg.sql(primary, "SELECT pid FROM pg_locks WHERE locktype = 'advisory'"))

    _terminate(pg, primary, pid)
    _terminate(pg, primary, sppid)
    _wait(lambda: _moved(proxy) >= 2, 15, "the sessions moved")
    assert sp.execute("EXECUTE inpath").fetchone() == (111,)
    pg.sql(primary, "NOTIFY kept, 'still'", db="app")
    assert [(n.channel, n.payload) for n in sp.notifies(timeout=10, stop_after=1)] == [("kept", "still")]
    pg.sql(primary, "NOTIFY moved, 'same primary'", db="app")
    assert [(n.channel, n.payload) for n in c.notifies(timeout=10, stop_after=1)] == [("moved", "same primary")]
    assert c.execute(QUERY, (2,), prepare=True).fetchone() == (20,)
    assert c.execute("EXECUTE getv(3)").fetchone() == (30,)
    row = c.execute("SELECT current_setting('application_name'), pg_backend_pid()").fetchone()
    assert row is not None and row[0] == "mover" and row[1] != pid

    # A read in flight when its backend is terminated: answered normally (retried on a new server).
    reader = psycopg.connect(dsn, autocommit=True)
    rpid = reader.execute("SELECT pg_backend_pid()").fetchone()[0]
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(reader.execute("SELECT v FROM kv, pg_sleep(1.5) AS s WHERE k = 1").fetchone())
        except psycopg.Error as exc:
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    _wait(lambda: pg.sql(primary, f"SELECT state FROM pg_stat_activity WHERE pid = {rpid}") == "active", 10,
          "the read running")
    _terminate(pg, primary, rpid)
    t.join(30)
    assert result == [(10,)], f"{result}\n{proxy.output()[-3000:]}"

    # Inside a transaction: replayed on a new server, prepared statement included.
    tx = psycopg.connect(dsn, autocommit=True)
    tx.execute("PREPARE bump(int) AS UPDATE kv SET v = v + 1 WHERE k = $1")
    tpid = tx.execute("SELECT pg_backend_pid()").fetchone()[0]
    tx.execute("BEGIN")
    tx.execute("EXECUTE bump(1)")
    _terminate(pg, primary, tpid)
    tx.execute("EXECUTE bump(1)")
    assert tx.execute("SELECT v FROM kv WHERE k = 1").fetchone() == (12,)
    tx.execute("COMMIT")
    assert pg.sql(primary, "SELECT v FROM kv WHERE k = 1", db="app") == "12"

    _terminate(pg, primary, locker_pid)
    _ends_with(locker, "57P01")  # the server's own FATAL: its lock cannot move
    # A session that terminates its own backend ends, as on a server.
    own = psycopg.connect(dsn, autocommit=True)
    opid = own.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(psycopg.errors.AdminShutdown):
        own.execute(f"SELECT pg_terminate_backend({opid})")
    assert own.closed
    for conn in (c, sp, reader, tx):
        conn.close()


def test_pinned_transaction_pooling_clients_move_with_sql_prepare_and_listen(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """Transaction pooling: a client pinned by SQL PREPARE, and an asyncpg client pinned by LISTEN (its
    statement cache uses the proxy's shared names, prepared again lazily) move; a temp table does not."""
    pg = cluster_factory(standbys=0)
    _setup(pg)
    proxy = proxy_factory({"failover": REPLAY, "pool": {"mode": "transaction"}}, cluster=pg)
    dsn = proxy.dsn()
    primary = pg.primary

    sq = psycopg.connect(dsn, autocommit=True)
    sq.execute("PREPARE getv(int) AS SELECT v FROM kv WHERE k = $1")  # pins
    sq.execute("SET work_mem = '5MB'")
    spid = sq.execute("SELECT pg_backend_pid()").fetchone()[0]
    ac = AsyncClient(dsn)
    ac.listen("moved")  # pins
    assert ac.run(ac.conn.fetchval("SELECT v FROM kv WHERE k = $1", 2)) == 20
    apid = ac.run(ac.conn.fetchval("SELECT pg_backend_pid()"))
    temp = _raw(proxy, "CREATE TEMP TABLE scratch (x int)")
    tpid = int(pg.sql(primary, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE TEMP TABLE scratch%'"))

    _terminate(pg, primary, spid)
    _terminate(pg, primary, apid)
    _terminate(pg, primary, tpid)
    _wait(lambda: _moved(proxy) >= 2, 15, "2 sessions moved")

    row = sq.execute("EXECUTE getv(3)").fetchone()
    assert row == (30,)
    assert sq.execute("SELECT current_setting('work_mem'), pg_backend_pid() <> %s", (spid,)).fetchone() == (
        "5MB", True)
    pg.sql(primary, "NOTIFY moved, 'pinned'", db="app")
    assert ac.next_note(10) == ("moved", "pinned")
    assert ac.run(ac.conn.fetchval("SELECT v FROM kv WHERE k = $1", 1)) == 10
    _ends_with(temp, "57P01")
    sq.close()
    ac.close()


def test_commit_in_flight_when_the_backend_is_terminated_is_answered_and_the_session_moves(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """A session-pooling client's COMMIT waits for a synchronous standby that is not there; its backend is
    terminated: the COMMIT's outcome is looked up (committed locally), answered, and the session goes on on
    a new server with its prepared statement and LISTEN channel."""
    pg = cluster_factory(standbys=0)
    _setup(pg)
    primary = pg.primary
    proxy = proxy_factory({"failover": REPLAY, "pool": {"mode": "session"}}, cluster=pg)
    c = psycopg.connect(proxy.dsn(), autocommit=True)
    c.execute("PREPARE getv(int) AS SELECT v FROM kv WHERE k = $1")
    c.execute("LISTEN moved")
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    pg.sql(primary, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    pg.sql(primary, "ALTER SYSTEM SET synchronous_commit = 'on'")
    pg.sql(primary, "SELECT pg_reload_conf()")
    _wait(lambda: c.execute("SELECT current_setting('synchronous_standby_names'), current_setting("
                            "'synchronous_commit')").fetchone() == ("nobody", "on"), 10, "the reload seen")
    c.execute("BEGIN")
    c.execute("UPDATE kv SET v = 99 WHERE k = 2")
    outcome: list[Any] = []

    def commit() -> None:
        try:
            c.execute("COMMIT")
            outcome.append("COMMIT")
        except psycopg.Error as exc:
            outcome.append(exc)

    t = threading.Thread(target=commit)
    t.start()
    _wait(lambda: pg.sql(primary, f"SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}") == "SyncRep", 10,
          "the COMMIT waiting for a synchronous standby")
    _terminate(pg, primary, pid)
    t.join(30)
    pg.sql(primary, "ALTER SYSTEM RESET synchronous_standby_names")
    pg.sql(primary, "ALTER SYSTEM RESET synchronous_commit")
    pg.sql(primary, "SELECT pg_reload_conf()")
    assert outcome == ["COMMIT"], f"{outcome}\n{proxy.output()[-3000:]}"
    assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    _wait(lambda: _moved(proxy) >= 1, 15, "the session moved")
    assert c.execute("EXECUTE getv(2)").fetchone() == (99,)
    pg.sql(primary, "NOTIFY moved, 'after commit'", db="app")
    assert [(n.channel, n.payload) for n in c.notifies(timeout=10, stop_after=1)] == [("moved", "after commit")]
    c.close()
