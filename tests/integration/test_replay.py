"""failover.replay (issue 16 §1): transactions survive a lost primary (replayed or 40001), COMMIT in flight."""

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

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

HEALTH = {"interval": "300ms", "timeout": "300ms", "failures_before_down": 2, "successes_before_up": 1}
REPLAY = {"replay": True, "write_timeout": "15s"}
MESSAGE = "could not serialize access: transaction could not be replayed after failover"


def _nodes(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(proxy.admin_url + "/api/nodes", timeout=5) as r:
        return {n["name"]: n for n in json.load(r)}


def _metric(proxy: ProxyProcess, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _sync_replication(pg: PgCluster) -> None:
    """Acknowledged commits are on standby1 too (only the primary gets the setting: after a promotion
    the new primary must not wait for a synchronous standby it does not have)."""
    pg.sql(pg.primary, "ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
    pg.sql(pg.primary, "ALTER SYSTEM SET synchronous_commit = 'on'")
    pg.sql(pg.primary, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(pg.primary, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == "1",
          10, "standby1 synchronous")


class Workers:
    """16 clients inside transactions: psycopg threads and asyncpg tasks. Each transaction inserts
    (worker, seq), reads its own count and bumps its own total; outcomes are recorded per transaction."""

    def __init__(self, dsn: str, psycopg_n: int, asyncpg_n: int, autocommit_n: int = 0):
        self.dsn = dsn
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: set[tuple[str, int]] = set()
        self.refused: set[tuple[str, int]] = set()  # 40001
        self.unknown: set[tuple[str, int]] = set()  # any other error
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._psycopg, args=(f"p{i}",), daemon=True)
                        for i in range(psycopg_n)]
        self.threads.append(threading.Thread(target=self._asyncpg, args=(asyncpg_n,), daemon=True))
        # Autocommit writers (no transaction block): a psycopg and an asyncpg one per autocommit_n.
        self.threads += [threading.Thread(target=self._psycopg_autocommit, args=(f"w{i}",), daemon=True)
                         for i in range(autocommit_n)]
        if autocommit_n:
            self.threads.append(threading.Thread(target=self._asyncpg, args=(autocommit_n, "x"), daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _outcome(self, key: tuple[str, int], exc: BaseException | None) -> None:
        with self.lock:
            if exc is None:
                self.acked.add(key)
            elif getattr(exc, "sqlstate", None) == "40001":
                assert MESSAGE in str(exc), exc  # the primary message; CONTEXT names the server's RAISE
                self.refused.add(key)
            else:
                self.unknown.add(key)
                self.errors.append(f"{time.monotonic():.2f} {key}: {getattr(exc, 'sqlstate', None)} {exc!r}")

    def _psycopg(self, name: str) -> None:
        conn = psycopg.connect(self.dsn, autocommit=True)
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                try:
                    with conn.transaction():
                        conn.execute("INSERT INTO ledger(worker, seq) VALUES (%s, %s)", (name, i))
                        conn.execute("SELECT count(*) FROM ledger WHERE worker = %s", (name,)).fetchone()
                        conn.execute("UPDATE totals SET n = n + 1 WHERE worker = %s", (name,))
                    self._outcome((name, i), None)
                except psycopg.Error as exc:
                    self._outcome((name, i), exc)
                    if conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True)
        finally:
            conn.close()

    def _psycopg_autocommit(self, name: str) -> None:
        conn = psycopg.connect(self.dsn, autocommit=True)
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                try:
                    conn.execute("INSERT INTO ledger(worker, seq) VALUES (%s, %s)", (name, i))
                    self._outcome((name, i), None)
                except psycopg.Error as exc:
                    self._outcome((name, i), exc)
                    if conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True)
        finally:
            conn.close()

    def _asyncpg(self, n: int, prefix: str = "a") -> None:
        async def one(name: str) -> None:
            conn = await asyncpg.connect(self.dsn)
            i = 0
            try:
                while not self.stop.is_set():
                    i += 1
                    try:
                        if prefix == "x":  # autocommit: one INSERT outside a transaction block
                            await conn.execute("INSERT INTO ledger(worker, seq) VALUES ($1, $2)", name, i)
                            self._outcome((name, i), None)
                            continue
                        async with conn.transaction():
                            await conn.execute("INSERT INTO ledger(worker, seq) VALUES ($1, $2)", name, i)
                            await conn.fetchval("SELECT count(*) FROM ledger WHERE worker = $1", name)
                            await conn.execute("UPDATE totals SET n = n + 1 WHERE worker = $1", name)
                        self._outcome((name, i), None)
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                        self._outcome((name, i), exc)
                        if conn.is_closed():
                            conn = await asyncpg.connect(self.dsn)
            finally:
                await conn.close()

        async def main() -> None:
            await asyncio.gather(*(one(f"{prefix}{i}") for i in range(n)))

        asyncio.run(main())


def _setup(dsn: str, workers: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, worker text, seq int, UNIQUE (worker, seq))")
        conn.execute("CREATE TABLE totals (worker text PRIMARY KEY, n bigint)")
        for w in workers:
            conn.execute("INSERT INTO totals VALUES (%s, 0)", (w,))


def test_primary_killed_mid_transaction_every_transaction_completes_or_gets_40001(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY, "pool": {"size": 40}}, cluster=pg)
    dsn = proxy.dsn()
    names = [f"p{i}" for i in range(12)] + [f"a{i}" for i in range(4)]
    _setup(dsn, names)
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]

    w = Workers(dsn, psycopg_n=12, asyncpg_n=4, autocommit_n=2)
    w.start()
    _wait(lambda: len(w.acked) > 200, 30, "transactions flowing")
    pg.stop_node(old, "immediate")
    t_kill = time.monotonic()
    pg.promote(new)
    acked_at_kill = len(w.acked)
    _wait(lambda: len(w.acked) > acked_at_kill + 200, 40, "transactions flowing on the new primary")
    w.finish()
    took = time.monotonic() - t_kill
    replayed = _metric(proxy, "heliosproxy_failover_replays_total", kind="transaction_replayed") or 0
    refused = _metric(proxy, "heliosproxy_failover_replays_total", kind="transaction_refused") or 0
    resolved = _metric(proxy, "heliosproxy_failover_replays_total", kind="commit_resolved") or 0
    print(f"\nREPLAY (primary killed, 16 clients in transactions, 4 autocommit writers): {len(w.acked)} committed, "
          f"{len(w.refused)} got "
          f"40001, {len(w.unknown)} other errors; proxy: {replayed:.0f} replayed, {refused:.0f} refused, "
          f"{resolved:.0f} COMMITs resolved; {took:.1f}s of load after the kill")

    if w.errors:
        out = proxy.output()
        notable = [line for line in out.splitlines() if "replay" in line or "WARNING" in line or "ERROR" in line]
        raise AssertionError("\n".join(sorted(w.errors)[:30]) + "\n" + "\n".join(notable[-60:]))
    rows = pg.sql(new, "SELECT worker || ':' || seq FROM ledger", db="app").split("\n")
    have = {r for r in rows if r}
    lost = [k for k in w.acked if f"{k[0]}:{k[1]}" not in have]
    phantom = [k for k in w.refused if f"{k[0]}:{k[1]}" in have]
    assert lost == [], f"{len(lost)} acknowledged commits lost: {sorted(lost)[:10]}"
    assert phantom == [], f"{len(phantom)} transactions refused with 40001 did commit: {sorted(phantom)[:10]}"
    # Each worker's total equals its committed transactions: every effect exactly once.
    totals = dict(line.split("|") for line in pg.sql(new, "SELECT worker, n FROM totals", db="app").split("\n"))
    for name in names:
        mine = sum(1 for k in have if k.startswith(name + ":"))
        assert int(totals[name]) == mine, (name, totals[name], mine)
    assert replayed + refused + resolved >= 1, "no transaction was in flight at the kill?\n" + proxy.output()[-3000:]


def test_replay_refuses_with_40001_when_results_differ_or_functions_are_not_replayable(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kv VALUES (1, 10), (2, 20), (3, 30)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]

    same = psycopg.connect(dsn, autocommit=True)  # replayed: it sees the same rows again
    changed = psycopg.connect(dsn, autocommit=True)  # read a row the new primary never got: 40001
    clock = psycopg.connect(dsn, autocommit=True)  # called now(): not replayable, 40001
    rolled = psycopg.connect(dsn, autocommit=True)  # ROLLBACK in a lost transaction just works
    for c in (same, changed, clock, rolled):
        c.execute("BEGIN")
    assert same.execute("SELECT v FROM kv WHERE k = 1").fetchone() == (10,)
    same.execute("UPDATE kv SET v = v + 1 WHERE k = 3")
    clock.execute("SELECT now()").fetchone()
    rolled.execute("SELECT 1").fetchone()
    # The standby stops replicating; a commit reaches only the primary (asynchronous replication
    # loses it at the failover) and `changed` reads it.
    pg.sql(new, "ALTER SYSTEM SET primary_conninfo = ''")
    pg.sql(new, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(new, "SELECT count(*) FROM pg_stat_wal_receiver") == "0", 10, "standby detached")
    pg.sql(old, "UPDATE kv SET v = 21 WHERE k = 2", db="app")
    assert changed.execute("SELECT v FROM kv WHERE k = 2").fetchone() == (21,)

    pg.stop_node(old, "immediate")
    pg.promote(new)

    # Replayed: the transaction goes on as if nothing happened, and its COMMIT commits once.
    assert same.execute("SELECT v FROM kv WHERE k = 3").fetchone() == (31,)
    same.execute("COMMIT")
    assert pg.sql(new, "SELECT v FROM kv WHERE k = 3", db="app") == "31"

    for c in (changed, clock):
        try:
            c.execute("SELECT 1")
            raise AssertionError("no 40001")
        except psycopg.errors.SerializationFailure as exc:
            assert exc.sqlstate == "40001" and exc.diag.message_primary == MESSAGE, exc
        # The transaction is aborted, as after a server's 40001: later statements get 25P02, ROLLBACK works.
        try:
            c.execute("SELECT 1")
            raise AssertionError("no 25P02")
        except psycopg.errors.InFailedSqlTransaction:
            pass
        c.execute("ROLLBACK")
        assert c.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    rolled.execute("ROLLBACK")
    assert rolled.execute("SELECT 2").fetchone() == (2,)
    for c in (same, changed, clock, rolled):
        c.close()
    assert "08006" not in proxy.output()
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="transaction_refused") or 0) >= 2


def test_autocommit_read_in_flight_is_retried_on_another_node(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    dsn = proxy.dsn()
    standby = pg.standbys[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big AS SELECT g AS x FROM generate_series(1, 200000) g")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    slow = "SELECT count(*) FROM big a, LATERAL (SELECT 1 FROM generate_series(1, 40)) b WHERE a.x > 0"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (standby.port,)
        result: list[Any] = []

        def run() -> None:
            try:
                result.append(conn.execute(slow).fetchone())
            except psycopg.Error as exc:
                result.append(exc)

        t = threading.Thread(target=run)
        t.start()
        _wait(lambda: pg.sql(standby, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                      "'SELECT count(*) FROM big a%' AND state = 'active'") == "1",
              10, "the read running on the standby")
        pg.stop_node(standby, "immediate")
        t.join(30)
        assert result == [(8000000,)], result
        # The next read goes where routing allows now: the primary.
        assert conn.execute("SELECT inet_server_port()").fetchone() == (pg.primary.port,)
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="read_retried") or 0) == 1


def test_session_pooling_clients_move_to_the_new_primary_when_their_state_can_be_rebuilt(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """Issue 16 §2: session-pooling clients survive a lost server when the proxy can rebuild their state
    (settings); one with a temp table gets an error and its connection is closed."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY, "pool": {"mode": "session"}}, cluster=pg)
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kv VALUES (1, 10)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]

    settled = psycopg.connect(dsn, autocommit=True)
    settled.execute("SET work_mem = '3MB'")
    settled.execute("SET application_name = 'moved'")
    in_tx = psycopg.connect(dsn, autocommit=True)
    in_tx.execute("BEGIN")
    in_tx.execute("UPDATE kv SET v = v + 1 WHERE k = 1")
    temp = psycopg.connect(dsn, autocommit=True)
    temp.execute("CREATE TEMP TABLE scratch (x int)")

    pg.stop_node(old, "immediate")
    pg.promote(new)

    assert settled.execute("SELECT current_setting('work_mem'), current_setting('application_name'), "
                           "inet_server_port()").fetchone() == ("3MB", "moved", new.port)
    assert in_tx.execute("SELECT v FROM kv WHERE k = 1").fetchone() == (11,)
    in_tx.execute("COMMIT")
    assert pg.sql(new, "SELECT v FROM kv WHERE k = 1", db="app") == "11"
    try:
        temp.execute("SELECT count(*) FROM scratch")
        raise AssertionError("the temp table's session went on")
    except psycopg.OperationalError as exc:
        assert exc.sqlstate in ("08006", "57P01", None), exc
    for c in (settled, in_tx, temp):
        c.close()
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="session_moved") or 0) >= 1


def test_commit_in_flight_that_did_not_commit_on_the_new_primary_gets_40001(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """The COMMIT rule: a COMMIT in flight when the primary dies is answered from pg_xact_status() on the
    new primary. Here the commit never reached the standby (it waits for a synchronous standby that is
    detached): the client gets 40001, never COMMIT, and the row is not on the new primary."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]

    client = psycopg.connect(dsn, autocommit=True)
    client.execute("BEGIN")
    client.execute("INSERT INTO kv VALUES (1, 1)")
    assert client.execute("SELECT count(*) FROM kv").fetchone() == (1,)
    pg.sql(new, "ALTER SYSTEM SET primary_conninfo = ''")
    pg.sql(new, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(new, "SELECT count(*) FROM pg_stat_wal_receiver") == "0", 10, "standby detached")

    outcome: list[Any] = []

    def commit() -> None:
        try:
            client.execute("COMMIT")
            outcome.append("COMMIT")
        except psycopg.Error as exc:
            outcome.append(exc)

    t = threading.Thread(target=commit)
    t.start()
    _wait(lambda: pg.sql(old, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1",
          10, "the COMMIT waiting for the synchronous standby")
    pg.stop_node(old, "immediate")
    pg.promote(new)
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.SerializationFailure), outcome
    assert outcome[0].diag.message_primary == MESSAGE
    assert pg.sql(new, "SELECT count(*) FROM kv", db="app") == "0"
    # The session goes on, outside a transaction, on the new primary.
    assert client.execute("SELECT inet_server_port()").fetchone() == (new.port,)
    client.close()
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="commit_resolved") or 0) == 1


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_commit_in_flight_whose_xid_the_new_primary_reused_gets_40001(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory, driver: str
) -> None:
    """The lost-acknowledged-commit window: a transaction whose WAL never reached the standby has an id
    the promoted standby hands out again. Here the new primary gives that id to another transaction that
    commits before the proxy asks: pg_xact_status() alone says "committed", yet the client's row is not
    there. The proxy must answer 40001 (its transaction's records are not in the new primary's history).
    psycopg: simple protocol; asyncpg: extended protocol with named prepared statements, COMMIT as a Query."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]
    # The standby stops replicating before the transaction's first write: none of its WAL gets there.
    pg.sql(new, "ALTER SYSTEM SET primary_conninfo = ''")
    pg.sql(new, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(new, "SELECT count(*) FROM pg_stat_wal_receiver") == "0", 10, "standby detached")

    outcome: list[Any] = []
    after: list[Any] = []

    def with_psycopg() -> None:
        client = psycopg.connect(dsn, autocommit=True)
        client.execute("BEGIN")
        client.execute("INSERT INTO kv VALUES (1, 1)")
        assert client.execute("SELECT count(*) FROM kv").fetchone() == (1,)  # the transaction id is asked here
        try:
            client.execute("COMMIT")
            outcome.append("COMMIT")
        except psycopg.Error as exc:
            outcome.append(exc)
        after.append(client.execute("SELECT inet_server_port()").fetchone()[0])
        client.close()

    def with_asyncpg() -> None:
        async def main() -> None:
            client = await asyncpg.connect(dsn)
            tx = client.transaction()
            await tx.start()
            await client.execute("INSERT INTO kv VALUES ($1, $2)", 1, 1)
            assert await client.fetchval("SELECT count(*) FROM kv WHERE k = $1", 1) == 1
            try:
                await tx.commit()
                outcome.append("COMMIT")
            except asyncpg.PostgresError as exc:
                outcome.append(exc)
            after.append(await client.fetchval("SELECT inet_server_port()"))
            await client.close()

        asyncio.run(main())

    t = threading.Thread(target=with_psycopg if driver == "psycopg" else with_asyncpg)
    t.start()
    waiting = "SELECT backend_xid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
    _wait(lambda: pg.sql(old, waiting) != "", 10, "the COMMIT waiting for the synchronous standby")
    xid = int(pg.sql(old, waiting))
    # The proxy cannot reach the new primary (TCP refused) until its id was reused there.
    hba = (new.datadir / "pg_hba.conf").read_text()
    pg._write(new.datadir / "pg_hba.conf", "local all all trust\nhost all all 127.0.0.1/32 reject\n")
    pg.sql(new, "SELECT pg_reload_conf()")
    pg.stop_node(old, "immediate")
    pg.promote(new)
    for _ in range(100):
        got = int(pg.sql(new, "INSERT INTO kv VALUES (2, 2) ON CONFLICT (k) DO UPDATE SET v = kv.v + 1 "
                              "RETURNING pg_current_xact_id()", db="app").split("\n")[0])
        if got % 2**32 >= xid:
            break
    assert got % 2**32 >= xid, (got, xid)
    assert pg.sql(new, f"SELECT pg_xact_status('{got - got % 2**32 + xid}')") == "committed"  # the trap is set
    pg._write(new.datadir / "pg_hba.conf", hba)
    pg.sql(new, "SELECT pg_reload_conf()")
    t.join(30)
    assert len(outcome) == 1, outcome
    assert getattr(outcome[0], "sqlstate", None) == "40001", outcome
    assert pg.sql(new, "SELECT count(*) FROM kv WHERE k = 1", db="app") == "0"
    assert after == [new.port]  # the session goes on, outside a transaction, on the new primary
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="commit_resolved") or 0) == 1


def test_autocommit_writes_look_as_on_a_direct_connection_with_replay_on(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """With failover.replay on, an autocommit write runs inside a hidden transaction (its outcome can be
    found out after a lost server); the client sees exactly what a direct connection shows."""
    pg = cluster_factory(standbys=0)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY, "pool": {"size": 2}}, cluster=pg)
    dsn = proxy.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
        assert conn.execute("INSERT INTO kv VALUES (1, 1), (2, 2)").rowcount == 2
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("UPDATE kv SET v = v + %s RETURNING k, v", (10,)).fetchall() == [(1, 11), (2, 12)]
        try:
            conn.execute("INSERT INTO kv VALUES (1, 0)")
            raise AssertionError("no 23505")
        except psycopg.errors.UniqueViolation:
            pass
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # Each write committed on its own: another connection sees it at once.
        with psycopg.connect(pg.dsn(pg.primary), autocommit=True) as direct:
            assert direct.execute("SELECT count(*) FROM kv").fetchone() == (2,)
        with conn.pipeline():
            conn.execute("INSERT INTO kv VALUES (3, 3)")
            conn.execute("INSERT INTO kv VALUES (4, 4)")
        # Statements that cannot run in a transaction block are not wrapped.
        conn.execute("VACUUM kv")
        conn.execute("CREATE INDEX CONCURRENTLY kv_v ON kv (v)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO kv VALUES (5, 5)")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT count(*), pg_current_xact_id_if_assigned() FROM kv").fetchone() == (4, None)

    async def with_asyncpg() -> None:
        c = await asyncpg.connect(dsn)
        try:
            assert await c.execute("INSERT INTO kv VALUES ($1, $2)", 6, 6) == "INSERT 0 1"
            assert await c.fetchval("UPDATE kv SET v = 0 WHERE k = $1 RETURNING v", 6) == 0
            try:
                await c.execute("INSERT INTO kv VALUES ($1, $2)", 6, 6)
                raise AssertionError("no 23505")
            except asyncpg.UniqueViolationError:
                pass
            await c.executemany("INSERT INTO kv VALUES ($1, $2)", [(7, 7), (8, 8)])
            assert not c.is_in_transaction()
            assert await c.fetchval("SELECT count(*) FROM kv") == 7
        finally:
            await c.close()

    asyncio.run(with_asyncpg())
    assert pg.sql(pg.primary, "SELECT count(*) FROM kv", db="app") == "7"
    # Transaction pooling: the server connections went back to the pool between statements.
    assert pg.sql(pg.primary, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
                              "AND state = 'idle in transaction'") == "0"


def _in_flight_writes(dsn: str, old_sql: Callable[[str], str], kill: Callable[[], None]) -> list[Any]:
    """A psycopg (simple protocol) and an asyncpg (extended protocol) autocommit INSERT, both waiting for
    the synchronous standby when `kill` runs; what each client was told."""
    outcome: list[Any] = [None, None]

    def with_psycopg() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            try:
                c.execute("INSERT INTO kv VALUES (1, 1)")
                outcome[0] = "INSERT"
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            except psycopg.Error as exc:
                outcome[0] = exc

    def with_asyncpg() -> None:
        async def main() -> None:
            c = await asyncpg.connect(dsn)
            try:
                outcome[1] = await c.execute("INSERT INTO kv VALUES ($1, $2)", 2, 2)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                outcome[1] = exc
            finally:
                await c.close()

        asyncio.run(main())

    threads = [threading.Thread(target=with_psycopg), threading.Thread(target=with_asyncpg)]
    for t in threads:
        t.start()
    _wait(lambda: old_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "2",
          10, "both writes waiting for the synchronous standby")
    kill()
    for t in threads:
        t.join(30)
    return outcome


def test_autocommit_write_in_flight_that_committed_on_the_new_primary_is_answered_as_committed(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """The standby has the writes' commit records (synchronous_commit = remote_apply, replay paused):
    their COMMITs were in flight when the primary died, and the new primary has them. Each client is
    answered as committed, and each row is there exactly once."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    pg.sql(pg.primary, "ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
    pg.sql(pg.primary, "SELECT pg_reload_conf()")
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]
    pg.sql(new, "SELECT pg_wal_replay_pause()")

    def kill() -> None:
        lsn = pg.sql(old, "SELECT pg_current_wal_flush_lsn()")  # the commit records are on the standby
        _wait(lambda: pg.sql(new, f"SELECT pg_last_wal_receive_lsn() >= '{lsn}'") == "t", 10, "standby flushed")
        pg.stop_node(old, "immediate")
        pg.promote(new)

    outcome = _in_flight_writes(proxy.dsn(), lambda q: pg.sql(old, q), kill)
    assert outcome == ["INSERT", "INSERT 0 1"], outcome
    assert pg.sql(new, "SELECT string_agg(k::text, ',' ORDER BY k) FROM kv", db="app") == "1,2"
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="commit_resolved") or 0) == 2
    assert "08006" not in proxy.output()


def test_autocommit_write_in_flight_that_did_not_commit_gets_40001(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """The standby is detached before the writes: their COMMITs wait for it when the primary dies, and
    the new primary never had them. Each client gets 40001 (never 08006, never success)."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]
    pg.sql(new, "ALTER SYSTEM SET primary_conninfo = ''")
    pg.sql(new, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(new, "SELECT count(*) FROM pg_stat_wal_receiver") == "0", 10, "standby detached")

    def kill() -> None:
        pg.stop_node(old, "immediate")
        pg.promote(new)

    outcome = _in_flight_writes(proxy.dsn(), lambda q: pg.sql(old, q), kill)
    assert isinstance(outcome[0], psycopg.errors.SerializationFailure), outcome
    assert outcome[0].diag.message_primary == MESSAGE
    assert isinstance(outcome[1], asyncpg.SerializationError), outcome
    assert pg.sql(new, "SELECT count(*) FROM kv", db="app") == "0"
    assert "08006" not in proxy.output()


def _pipelined_commits(dsn: str, old_sql: Callable[[str], str], kill: Callable[[], None]) -> list[Any]:
    """Transactions whose COMMIT is pipelined behind their first write, both waiting for the synchronous
    standby when `kill` runs: a psycopg pipeline (extended protocol: BEGIN, INSERT, COMMIT, each with its Sync)
    and a simple-protocol `INSERT ...; COMMIT` string inside a transaction block."""
    outcome: list[Any] = [None, None]

    def pipeline() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            try:
                with c.pipeline(), c.transaction():
                    c.execute("INSERT INTO kv VALUES (%s, %s)", (1, 1))
                outcome[0] = "COMMIT"
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            except psycopg.Error as exc:
                outcome[0] = exc

    def one_string() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("BEGIN")
            assert c.execute("SELECT count(*) FROM kv WHERE k = 2").fetchone() == (0,)
            try:
                c.execute("INSERT INTO kv VALUES (2, 2); COMMIT")
                outcome[1] = "COMMIT"
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            except psycopg.Error as exc:
                outcome[1] = exc

    threads = [threading.Thread(target=pipeline), threading.Thread(target=one_string)]
    for t in threads:
        t.start()
    _wait(lambda: old_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == str(len(threads)),
          10, "the COMMITs waiting for the synchronous standby")
    kill()
    for t in threads:
        t.join(30)
    return outcome


def test_pipelined_commit_in_flight_that_did_not_commit_gets_40001(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """The new primary never had the transactions (standby detached before them). Each client already has the
    answers before its COMMIT, so the transaction is not run again: its COMMIT gets 40001, as a lone COMMIT's
    would (never 08006, never success), and nothing of it is on the new primary."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]
    pg.sql(new, "ALTER SYSTEM SET primary_conninfo = ''")
    pg.sql(new, "SELECT pg_reload_conf()")
    _wait(lambda: pg.sql(new, "SELECT count(*) FROM pg_stat_wal_receiver") == "0", 10, "standby detached")

    def kill() -> None:
        pg.stop_node(old, "immediate")
        pg.promote(new)

    outcome = _pipelined_commits(proxy.dsn(), lambda q: pg.sql(old, q), kill)
    for exc in outcome:
        assert isinstance(exc, psycopg.errors.SerializationFailure), outcome
        assert exc.diag.message_primary == MESSAGE
    assert pg.sql(new, "SELECT count(*) FROM kv", db="app") == "0"
    assert "08006" not in proxy.output()


def test_pipelined_commit_in_flight_that_committed_is_answered_as_committed(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """The new primary has the transactions (remote_apply, standby replay paused): the pipelined COMMITs are
    answered as committed from pg_xact_status(), and each row is there once."""
    pg = cluster_factory(standbys=1)
    _sync_replication(pg)
    pg.sql(pg.primary, "ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
    pg.sql(pg.primary, "SELECT pg_reload_conf()")
    proxy = proxy_factory({"health": HEALTH, "failover": REPLAY}, cluster=pg)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
    pg.wait_replay()
    _wait(lambda: _nodes(proxy)["standby1"]["state"] == "up", 10, "standby1 up")
    old, new = pg.primary, pg.standbys[0]
    pg.sql(new, "SELECT pg_wal_replay_pause()")

    def kill() -> None:
        lsn = pg.sql(old, "SELECT pg_current_wal_flush_lsn()")
        _wait(lambda: pg.sql(new, f"SELECT pg_last_wal_receive_lsn() >= '{lsn}'") == "t", 10, "standby flushed")
        pg.stop_node(old, "immediate")
        pg.promote(new)

    outcome = _pipelined_commits(proxy.dsn(), lambda q: pg.sql(old, q), kill)
    assert outcome == ["COMMIT", "COMMIT"], outcome
    assert pg.sql(new, "SELECT string_agg(k::text, ',' ORDER BY k) FROM kv", db="app") == "1,2"
    assert (_metric(proxy, "heliosproxy_failover_replays_total", kind="commit_resolved") or 0) == 2
    assert "08006" not in proxy.output()


def test_wrapped_autocommit_writes_keep_the_result_cache_fresh(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory
) -> None:
    """With the result cache on, a wrapped autocommit write still drops cached reads of its table: a read
    after the write (the write's ReadyForQuery comes after its hidden COMMIT) is never stale. (They are
    dropped again at the hidden COMMIT, for a read cached by another client between the two.)"""
    pg = cluster_factory(standbys=0)
    with psycopg.connect(pg.dsn(pg.primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kv VALUES (1, 0)")
    proxy = proxy_factory({"failover": REPLAY, "cache": {"enabled": True, "rules": [{"tables": ["kv"]}]}},
                          cluster=pg)
    stale = 0
    with psycopg.connect(proxy.dsn(), autocommit=True) as writer, \
            psycopg.connect(proxy.dsn(), autocommit=True) as reader:
        for i in range(1, 101):
            writer.execute("UPDATE kv SET v = %s WHERE k = 1", (i,))
            if reader.execute("SELECT v FROM kv WHERE k = 1").fetchone() != (i,):
                stale += 1
            reader.execute("SELECT v FROM kv WHERE k = 1")  # a hit, if the read above was stored
    assert stale == 0
