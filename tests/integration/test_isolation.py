"""Issue 9 regressions: pooled clients never cross (lost servers, leaked state, shared statements, bad frames, login).

Every test runs through the proxy in transaction pooling with ONE server connection per pool, so two
clients of the same user share a server, and checks what a user sees. Where the expectation is
PostgreSQL's own behaviour, the same steps run on a direct connection first. Run one scenario alone
with `-k item1`, `-k item2`, ... (the test names carry the item number of issue 9).
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from tests.helpers import extmsg
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import TEST_USERS, ProxyFactory, ProxyProcess, base_config, deep_merge
from tests.helpers.rawpg import (
    ConnectionClosed,
    RawPg,
    ServerError,
    _scram_client_proof,
    cstr,
    data_rows,
    error_fields,
    msg,
    query_msg,
    startup_packet,
)

Conn = psycopg.Connection[tuple[Any, ...]]
pytestmark = pytest.mark.timeout(90)

SUPER = {"name": "iso_super", "password": "isosuperpass"}  # a superuser, for session_authorization
ROLE = "iso_r1"  # a role granted to app, for SET ROLE
SETUP = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN CREATE ROLE {ROLE}; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SUPER["name"]}') THEN
    CREATE ROLE {SUPER["name"]} LOGIN SUPERUSER PASSWORD '{SUPER["password"]}';
  END IF;
END $$;
GRANT {ROLE} TO app;
"""


@pytest.fixture(scope="module")
def pg(cluster: PgCluster) -> PgCluster:
    cluster.sql(cluster.primary, SETUP)
    cluster.sql(cluster.primary, "CREATE TABLE IF NOT EXISTS iso_rows (tag text, n int); "
                "GRANT ALL ON iso_rows TO app", db="app")
    return cluster


def make_proxy(proxy_factory: ProxyFactory, **overrides: Any) -> ProxyProcess:
    """Transaction pooling, one server per pool, everything on the primary; a waiting client gives up after 1s."""
    config: dict[str, Any] = {
        "pool": {"mode": "transaction", "size": 1, "acquire_timeout": "1s"},
        "routing": {"read_write_split": False},
        "users": [*TEST_USERS, SUPER],
    }
    config.update(overrides)
    return proxy_factory(config)


def direct(pg: PgCluster, user: str = "app", password: str = "apppass") -> Conn:
    return psycopg.connect(pg.dsn(pg.primary, user=user, password=password), autocommit=True, connect_timeout=10)


def via(proxy: ProxyProcess, user: str = "app", password: str = "apppass") -> Conn:
    return psycopg.connect(proxy.dsn(user=user, password=password), autocommit=True, connect_timeout=10)


def admin(pg: PgCluster) -> Conn:
    """A superuser connection straight to the primary (over its unix socket)."""
    return psycopg.connect(host=str(pg.base_dir), port=pg.primary.port, user="postgres", dbname="app",
                           autocommit=True)


def one(conn: Conn, sql: str, params: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return tuple(row)


def terminate(pg: PgCluster, pid: int) -> None:
    """pg_terminate_backend(pid) from outside, then wait until that backend is gone."""
    with admin(pg) as adm:
        assert one(adm, "SELECT pg_terminate_backend(%s)", (pid,)) == (True,)
        deadline = time.monotonic() + 10
        while one(adm, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) != (0,):
            assert time.monotonic() < deadline, f"backend {pid} still alive"
            time.sleep(0.02)


def committed(pg: PgCluster, tag: str) -> list[int]:
    with admin(pg) as adm:
        return [r[0] for r in adm.execute("SELECT n FROM iso_rows WHERE tag = %s ORDER BY n", (tag,))]


def read_all(raw: RawPg, timeout: float) -> list[tuple[str, Any]]:
    """Every message until the peer closes (then "EOF") or `timeout` passes with nothing new (then "silence")."""
    got: list[tuple[str, Any]] = []
    while True:
        try:
            kind, body = raw.read_message(timeout=timeout)
        except ConnectionClosed:
            got.append(("EOF", None))
            return got
        except TimeoutError:
            got.append(("silence", None))
            return got
        got.append((kind, error_fields(body) if kind in "EN" else body))


def no_traceback(proxy: ProxyProcess) -> None:
    assert "Traceback (most recent call last)" not in proxy.output(), proxy.output()[-3000:]


# ======================================================================================= item 1
# A server connection lost while the client is inside a transaction (or owed a reply) ends the
# client's session exactly once, with the server's own FATAL; nothing is synthesized after it.


def _item1_psycopg(conn: Conn, pg: PgCluster, tag: str) -> tuple[str, str | None, str | None, bool]:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO iso_rows VALUES (%s, 1)", (tag,))
    pid = one(conn, "SELECT pg_backend_pid()")[0]
    terminate(pg, pid)
    try:
        conn.execute("INSERT INTO iso_rows VALUES (%s, 2)", (tag,))
        outcome: tuple[str, str | None, str | None] = ("no error", None, None)
    except psycopg.Error as exc:
        outcome = (type(exc).__name__, exc.sqlstate, exc.diag.severity_nonlocalized)
    if not conn.closed:
        try:  # on a direct connection this cannot run: the session is over
            conn.execute("INSERT INTO iso_rows VALUES (%s, 3)", (tag,))
            conn.execute("COMMIT")
        except psycopg.Error:
            pass
    return (*outcome, conn.closed)


def test_item1_server_lost_in_transaction_ends_the_session(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    tag_direct, tag_proxy = f"d-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    with direct(pg) as conn:
        expected = _item1_psycopg(conn, pg, tag_direct)
    assert expected == ("AdminShutdown", "57P01", "FATAL", True)
    assert committed(pg, tag_direct) == []

    proxy = make_proxy(proxy_factory)
    with via(proxy) as a, via(proxy) as b:
        b_pid = one(b, "SELECT pg_backend_pid()")[0]  # b outside any transaction, same (only) server
        seen = _item1_psycopg(a, pg, tag_proxy)
        assert seen == expected, "the client must get the server's FATAL 57P01 and lose its session"
        assert committed(pg, tag_proxy) == [], "a statement of the dead transaction was committed elsewhere"
        # A client outside any transaction continues on another server.
        assert one(b, "SELECT 40 + 2") == (42,)
        assert one(b, "SELECT pg_backend_pid()")[0] != b_pid
    no_traceback(proxy)


def _item1_raw(port: int, pg: PgCluster, tag: str) -> list[tuple[str, Any]]:
    with RawPg("127.0.0.1", port) as raw:
        raw.login("app", "apppass", "app")
        raw.query("BEGIN")
        raw.query(f"INSERT INTO iso_rows VALUES ('{tag}', 1)")
        pid = int(str(data_rows(raw.query("SELECT pg_backend_pid()"))[0][0]))
        terminate(pg, pid)
        got = read_all(raw, timeout=2.0)  # what arrives without asking
        if got[-1][0] != "EOF":
            try:  # the next statement: on a direct connection there is none
                raw.send(query_msg(f"INSERT INTO iso_rows VALUES ('{tag}', 2)"))
                got += [("--sent INSERT 2--", None), *read_all(raw, timeout=2.0)]
            except ConnectionClosed:
                got.append(("EOF", None))
    return got


def _shape(got: list[tuple[str, Any]]) -> list[tuple[str, ...]]:
    return [(k, v["S"], v["C"]) if k == "E" else (k,) for k, v in got]


def test_item1_raw_protocol_no_unasked_ready_for_query(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    tag_direct, tag_proxy = f"d-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    expected = _shape(_item1_raw(pg.primary.port, pg, tag_direct))
    assert expected == [("E", "FATAL", "57P01"), ("EOF",)]
    proxy = make_proxy(proxy_factory)
    got = _item1_raw(proxy.port, pg, tag_proxy)
    assert _shape(got) == expected, f"the proxy sent {got}"
    assert committed(pg, tag_proxy) == []
    no_traceback(proxy)


def _item1_owed(conn: Conn, pg: PgCluster) -> tuple[str, str | None, bool]:
    """Autocommit, no transaction, but a reply is owed: the server dies during pg_sleep."""
    pid = one(conn, "SELECT pg_backend_pid()")[0]
    result: list[tuple[str, str | None]] = []

    def run() -> None:
        try:
            conn.execute("SELECT pg_sleep(30)")
            result.append(("no error", None))
        except psycopg.Error as exc:
            result.append((type(exc).__name__, exc.sqlstate))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    with admin(pg) as adm:
        deadline = time.monotonic() + 10
        while one(adm, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query LIKE 'SELECT pg_sleep%%' "
                  "AND state = 'active'", (pid,)) != (1,):
            assert time.monotonic() < deadline, "the sleep never started"
            time.sleep(0.02)
    terminate(pg, pid)
    t.join(10)
    assert result, "the client hangs after its server died"
    return (*result[0], conn.closed)


def test_item1_server_lost_with_reply_owed_ends_the_session(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    with direct(pg) as conn:
        expected = _item1_owed(conn, pg)
    assert expected == ("AdminShutdown", "57P01", True)
    proxy = make_proxy(proxy_factory)
    with via(proxy) as a:
        assert _item1_owed(a, pg) == expected
    with via(proxy) as b:  # the proxy itself goes on
        assert one(b, "SELECT 1") == (1,)
    no_traceback(proxy)


def test_item1_idle_client_continues_after_its_server_died(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    """Outside any transaction with nothing owed, a lost server is invisible: the next statement just runs."""
    proxy = make_proxy(proxy_factory)
    with via(proxy) as a:
        pid = one(a, "SELECT pg_backend_pid()")[0]
        terminate(pg, pid)
        assert one(a, "SELECT 40 + 2") == (42,)
        assert one(a, "SELECT pg_backend_pid()")[0] != pid
    no_traceback(proxy)


# ======================================================================================= item 2
# Session state the proxy cannot model never reaches another client on the same server
# connection; the client that made it keeps it where the state belongs to it.


@dataclass(frozen=True)
class Leak:
    id: str
    statements: tuple[str, ...]
    observe: str  # one row; B must see what a fresh direct connection sees
    keeps: bool  # the client must keep this state (pinned): it sees it after B's turn too
    user: str = "app"
    password: str = "apppass"


TEMP_TABLE = "SELECT to_regclass('pg_temp.iso_tt') IS NOT NULL"
LEAKS = [
    Leak("set_config-search_path-select", ("SELECT set_config('search_path', 'iso_nowhere', false)",),
         "SHOW search_path", False),
    Leak("set_config-search_path-from", ("SELECT * FROM set_config('search_path', 'iso_nowhere', false)",),
         "SHOW search_path", False),
    Leak("set_config-tenant", ("SELECT set_config('app.tenant_id', '42', false)",),
         "SELECT coalesce(current_setting('app.tenant_id', true), '')", False),
    Leak("set_config-statement_timeout", ("SELECT set_config('statement_timeout', '1ms', false)",),
         "SHOW statement_timeout", False),
    Leak("set_config-datestyle", ("SELECT set_config('DateStyle', 'SQL, DMY', false)",), "SHOW DateStyle", False),
    Leak("set_config-application_name", ("SELECT set_config('application_name', 'iso_leak', false)",),
         "SHOW application_name", False),
    Leak("set_config-standard_conforming_strings", ("SELECT set_config('standard_conforming_strings', 'off', false)",),
         "SHOW standard_conforming_strings", False),
    Leak("set_config-role", (f"SELECT set_config('role', '{ROLE}', false)",), "SELECT current_user", True),
    Leak("set_config-role-from", (f"SELECT * FROM set_config('role', '{ROLE}', false)",),
         "SELECT current_user", True),
    Leak("set_config-session_authorization", ("SELECT set_config('session_authorization', 'app', false)",),
         "SELECT session_user, current_user", True, user=SUPER["name"], password=SUPER["password"]),
    Leak("do-set-role", (f"DO $$ BEGIN EXECUTE 'SET ROLE {ROLE}'; END $$",), "SELECT current_user", True),
    Leak("do-listen", ("DO $$ BEGIN EXECUTE 'LISTEN iso_do_ch'; END $$",),
         "SELECT coalesce(string_agg(c, ','), '') FROM pg_listening_channels() c", True),
    Leak("do-temp-table", ("DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE iso_tt (x int)'; END $$",), TEMP_TABLE, True),
    Leak("do-advisory-lock", ("DO $$ BEGIN PERFORM pg_advisory_lock(914001); END $$",),
         "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
         "AND objid = 914001", True),
    Leak("create-table-pg_temp", ("CREATE TABLE pg_temp.iso_tt (x int)",), TEMP_TABLE, True),
    Leak("create-function-pg_temp", ("CREATE FUNCTION pg_temp.iso_f() RETURNS int LANGUAGE sql AS 'SELECT 7'",),
         "SELECT count(*) FROM pg_proc WHERE proname = 'iso_f' AND pronamespace = pg_my_temp_schema()", True),
    Leak("select-into-temp", ("SELECT 1 AS x INTO TEMP iso_tt",), TEMP_TABLE, True),
    Leak("session-characteristics-read-only", ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",),
         "SHOW default_transaction_read_only", False),
]


def _observe(conn: Conn, sql: str) -> tuple[Any, ...] | str:
    """The observation's row, or "SQLSTATE <code>" when it fails."""
    try:
        return one(conn, sql)
    except psycopg.Error as exc:
        return f"SQLSTATE {exc.sqlstate}"


@pytest.mark.parametrize("leak", LEAKS, ids=[x.id for x in LEAKS])
def test_item2_session_state_does_not_leak(pg: PgCluster, proxy_factory: ProxyFactory, leak: Leak) -> None:
    # What PostgreSQL shows: a fresh session (B's view) and the session that ran the statements (A's).
    with direct(pg, leak.user, leak.password) as fresh:
        clean = _observe(fresh, leak.observe)
    with direct(pg, leak.user, leak.password) as own:
        for sql in leak.statements:
            own.execute(sql)
        changed = _observe(own, leak.observe)
    assert clean != changed, "the case must change something observable"

    proxy = make_proxy(proxy_factory)
    with via(proxy, leak.user, leak.password) as a, via(proxy, leak.user, leak.password) as b:
        assert _observe(b, "SELECT 1") == (1,)
        for sql in leak.statements:
            a.execute(sql)
        assert _observe(a, leak.observe) == changed, "the client does not see its own statement's effect"
        seen_by_b = _observe(b, leak.observe)
        # With one server per pool, B may wait in vain while A is pinned (53300); if B runs, it
        # runs on a server that shows nothing of A's session.
        allowed = [clean, "SQLSTATE 53300"] if leak.keeps else [clean]
        assert seen_by_b in allowed, f"client B sees A's session state: {seen_by_b!r} (a fresh session: {clean!r})"
        if leak.keeps:
            assert _observe(a, leak.observe) == changed, "the client lost state it must keep (not pinned)"
        a.close()
        deadline = time.monotonic() + 10
        while (seen_by_b := _observe(b, leak.observe)) == "SQLSTATE 53300" and time.monotonic() < deadline:
            pass  # A's server is being reset for B
        assert seen_by_b == clean, f"after A left, B sees A's session state: {seen_by_b!r} (fresh: {clean!r})"
    no_traceback(proxy)


def test_item2_standard_conforming_strings_never_leak(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    """A's set_config('standard_conforming_strings', 'off', false) must not change how B's literals parse."""
    with direct(pg) as fresh:
        expected = one(fresh, "select 'abcd\\' as x")
    assert expected == ("abcd\\",)
    proxy = make_proxy(proxy_factory)
    with via(proxy) as a, via(proxy) as b:
        assert b.info.parameter_status("standard_conforming_strings") == "on"
        a.execute("SELECT set_config('standard_conforming_strings', 'off', false)")
        try:
            got: tuple[Any, ...] | str = one(b, "select 'abcd\\' as x")
        except psycopg.Error as exc:
            got = f"SQLSTATE {exc.sqlstate}: {exc}"
        assert got == expected, "B was told standard_conforming_strings=on but its literal was parsed with off"
        assert b.info.parameter_status("standard_conforming_strings") == "on"
    no_traceback(proxy)


def test_item2_notifications_of_listen_inside_do_reach_the_listener_only(
    pg: PgCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = make_proxy(proxy_factory)
    got_a: list[tuple[str, str]] = []
    got_b: list[tuple[str, str]] = []
    with via(proxy) as a, via(proxy) as b, admin(pg) as adm:
        a.add_notify_handler(lambda n: got_a.append((n.channel, n.payload)))
        b.add_notify_handler(lambda n: got_b.append((n.channel, n.payload)))
        assert one(b, "SELECT 1") == (1,)
        a.execute("DO $$ BEGIN EXECUTE 'LISTEN iso_do_notify'; END $$")
        adm.execute("NOTIFY iso_do_notify, 'p1'")
        _observe(b, "SELECT 1")  # may wait in vain (53300) while A keeps its server
        deadline = time.monotonic() + 5
        while ("iso_do_notify", "p1") not in got_a and time.monotonic() < deadline:
            a.execute("SELECT 1")
            time.sleep(0.05)
        assert got_a == [("iso_do_notify", "p1")], "the listener never got its notification"
        a.close()
        adm.execute("NOTIFY iso_do_notify, 'p2'")
        deadline = time.monotonic() + 3
        while _observe(b, "SELECT 1") != (1,) and time.monotonic() < deadline:
            pass
        time.sleep(0.2)
        assert _observe(b, "SELECT 1") == (1,)
        assert got_b == [], "a client that never listened got another client's notifications"
    no_traceback(proxy)


# ======================================================================================= item 3
# DISCARD ALL / DEALLOCATE ALL / DISCARD PLANS / DEALLOCATE name act on the client's own session.

RESETS = ["DISCARD ALL", "DEALLOCATE ALL", "DISCARD PLANS"]


@pytest.mark.parametrize("command", RESETS)
def test_item3_psycopg_prepared_statements_survive_another_clients_reset(
    pg: PgCluster, proxy_factory: ProxyFactory, command: str
) -> None:
    proxy = make_proxy(proxy_factory)
    with via(proxy) as a, via(proxy) as b:
        for _ in range(2):  # prepare=True: a protocol-level named statement (_pg3_0)
            assert b.execute("SELECT %s::int + 100", (1,), prepare=True).fetchone() == (101,)
        a.execute(command)
        for i in range(3):
            try:
                got: Any = b.execute("SELECT %s::int + 100", (i,), prepare=True).fetchone()
            except psycopg.Error as exc:
                got = f"SQLSTATE {exc.sqlstate}: {exc}"
            assert got == (100 + i,), f"another client's {command} broke B's prepared statement"
        # A itself keeps working with its own prepared statements.
        assert a.execute("SELECT %s::int * 3", (5,), prepare=True).fetchone() == (15,)
    no_traceback(proxy)


@pytest.mark.parametrize("command", RESETS)
async def test_item3_asyncpg_prepared_statements_survive_another_clients_reset(
    pg: PgCluster, proxy_factory: ProxyFactory, command: str
) -> None:
    proxy = make_proxy(proxy_factory)
    b = await asyncpg.connect(proxy.dsn(), timeout=10)
    try:
        stmt = await b.prepare("SELECT $1::int + 100")
        assert await stmt.fetchval(1) == 101
        assert await b.fetchval("SELECT $1::int * 2", 21) == 42  # asyncpg's statement cache
        with via(proxy) as a:
            a.execute(command)
        for i in range(3):
            try:
                got: Any = (await stmt.fetchval(i), await b.fetchval("SELECT $1::int * 2", i))
            except asyncpg.PostgresError as exc:
                got = f"SQLSTATE {exc.sqlstate}: {exc}"
            assert got == (100 + i, 2 * i), f"another client's {command} broke B's prepared statements"
    finally:
        await b.close()
    no_traceback(proxy)


OWN = [*RESETS, "DEALLOCATE iso_s"]


def _item3_raw(port_a: int, port_b: int, command: str) -> tuple[str, str]:
    """A and B prepare statements with the same name and different text; A runs `command`.

    Returns (A's result of its statement afterwards, B's result of its statement afterwards).
    """
    with RawPg("127.0.0.1", port_a) as a, RawPg("127.0.0.1", port_b) as b:
        a.login("app", "apppass", "app")
        b.login("app", "apppass", "app")
        assert extmsg.prepare_named(a, "iso_s", "SELECT 'a'::text") == "ok"
        assert extmsg.prepare_named(b, "iso_s", "SELECT 'b'::text") == "ok"
        assert extmsg.run_named(a, "iso_s") == ("ok", [["a"]])
        assert extmsg.run_named(b, "iso_s") == ("ok", [["b"]])
        assert [k for k, _ in a.query(command)] == ["C", "Z"]
        res_a, rows_a = extmsg.run_named(a, "iso_s")
        res_b, rows_b = extmsg.run_named(b, "iso_s")
        return (f"{res_a} {rows_a}", f"{res_b} {rows_b}")


@pytest.mark.parametrize("command", OWN)
def test_item3_reset_acts_on_the_clients_own_statements(
    pg: PgCluster, proxy_factory: ProxyFactory, command: str
) -> None:
    """Same statement name in two clients; A's reset removes A's names (as PostgreSQL does) and never B's."""
    expected = _item3_raw(pg.primary.port, pg.primary.port, command)  # two direct sessions
    assert expected[1] == "ok [['b']]"
    assert expected[0] == ("ok [['a']]" if command == "DISCARD PLANS" else "26000 []")
    proxy = make_proxy(proxy_factory)
    assert _item3_raw(proxy.port, proxy.port, command) == expected
    no_traceback(proxy)


# ======================================================================================= item 4
# A malformed extended-protocol message ends that client with FATAL 08P01 (no traceback, no hang).

MALFORMED = {
    "bind-empty": msg(b"B", b""),
    "bind-portal-no-nul": msg(b"B", b"portal"),
    "bind-statement-no-nul": msg(b"B", b"\x00stmt"),
    "bind-truncated-format-count": msg(b"B", b"\x00\x00\x00"),
    "bind-truncated-params": msg(b"B", b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x05ab"),
    "bind-bad-utf8-statement": msg(b"B", b"\x00\xff\xfe\x00\x00\x00\x00\x00\x00\x00"),
    "bind-bad-utf8-portal": msg(b"B", b"\xc3\x28\x00\x00\x00\x00\x00\x00\x00\x00"),
    "describe-empty": msg(b"D", b""),
    "describe-no-name": msg(b"D", b"S"),
    "describe-no-nul": msg(b"D", b"Sstmt"),
    "describe-bad-utf8": msg(b"D", b"S\xff\xfe\x00"),
    "close-empty": msg(b"C", b""),
    "close-no-nul": msg(b"C", b"Pportal"),
    "close-bad-utf8": msg(b"C", b"S\x80\x00"),
    "execute-empty": msg(b"E", b""),
    "execute-no-nul": msg(b"E", b"portal"),
    "execute-no-max-rows": msg(b"E", b"\x00"),
    "execute-truncated-max-rows": msg(b"E", b"\x00\x00\x00"),
    "execute-bad-utf8": msg(b"E", b"\xff\x00\x00\x00\x00\x00"),
}
PREFIXES = {
    "alone": b"",
    # valid messages ahead of it in the same packet, one of them still running on the server
    "behind-a-running-query": query_msg("SELECT pg_sleep(0.3)") + extmsg.parse("", "SELECT 1"),
}


@pytest.fixture(scope="module")
def shared_proxy(pg: PgCluster) -> Iterator[ProxyProcess]:
    """One proxy for all malformed-message cases (each case checks only the log lines it caused)."""
    config = deep_merge(base_config(pg.node_config()), {
        "pool": {"mode": "transaction", "size": 2, "acquire_timeout": "1s"},
        "routing": {"read_write_split": False},
    })
    proxy = ProxyProcess(config)
    yield proxy
    # A traceback has already failed the case whose log lines showed it, not the module's last test.
    with contextlib.suppress(AssertionError):
        proxy.close()


@pytest.mark.parametrize("prefix", list(PREFIXES))
@pytest.mark.parametrize("case", list(MALFORMED))
def test_item4_malformed_extended_message_is_fatal_08p01(shared_proxy: ProxyProcess, case: str, prefix: str) -> None:
    proxy = shared_proxy
    log_start = len(proxy.output())
    with via(proxy) as bystander, RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        raw.send(PREFIXES[prefix] + MALFORMED[case] + extmsg.sync())
        got = read_all(raw, timeout=2.0)
        errors = [v for k, v in got if k == "E"]
        assert errors, f"no error for a malformed message: {got}\n--- proxy log ---\n{proxy.output()[log_start:]}"
        assert (errors[-1]["S"], errors[-1]["C"]) == ("FATAL", "08P01"), got
        assert got[-1][0] == "EOF", f"the connection stays open after FATAL: {got}"
        assert one(bystander, "SELECT 40 + 2") == (42,)
    log = proxy.output()[log_start:]
    assert "Traceback (most recent call last)" not in log, log[-3000:]


# ======================================================================================= item 5
# A message in the same packet as the startup packet / the last authentication message is answered.


class Piggyback(RawPg):
    """A RawPg that appends `extra` to its `nth` send (1 = the startup packet)."""

    def __init__(self, host: str, port: int, nth: int, extra: bytes) -> None:
        super().__init__(host, port)
        self.nth = nth
        self.extra = extra
        self.sends = 0

    def __enter__(self) -> Piggyback:
        return self

    def send(self, data: bytes) -> None:
        self.sends += 1
        super().send(data + self.extra if self.sends == self.nth else data)


# auth method -> the send that completes authentication (startup; md5 password; SCRAM final message)
LAST_AUTH_SEND = {"trust": 1, "md5": 2, "scram-sha-256": 3}


@pytest.mark.parametrize("method", list(LAST_AUTH_SEND))
def test_item5_query_in_the_login_packet_is_answered(
    pg: PgCluster, proxy_factory: ProxyFactory, method: str
) -> None:
    proxy = make_proxy(proxy_factory, auth={"method": method})
    with Piggyback(proxy.host, proxy.port, LAST_AUTH_SEND[method], query_msg("SELECT 'early' AS x")) as raw:
        raw.login("app", "apppass", "app")
        assert raw.sends == LAST_AUTH_SEND[method], "the login took a different number of messages"
        try:
            replies = raw.read_until_ready()
        except TimeoutError as exc:
            raise AssertionError("the Query sent with the login was not answered without more data") from exc
        assert data_rows(replies) == [["early"]]
    no_traceback(proxy)


def test_item5_direct_server_answers_query_in_the_login_packet(pg: PgCluster) -> None:
    """The reference behaviour: PostgreSQL itself (SCRAM for app) answers the piggybacked Query."""
    with Piggyback("127.0.0.1", pg.primary.port, 3, query_msg("SELECT 'early' AS x")) as raw:
        raw.login("app", "apppass", "app")
        assert data_rows(raw.read_until_ready()) == [["early"]]


def _scram_pipelined(port: int) -> list[str]:
    """Startup packet + SASLInitialResponse in ONE packet, then the final SCRAM message + a Query in one.

    Returns what happened, step by step; every answer must come without the client sending more.
    """
    steps: list[str] = []
    with RawPg("127.0.0.1", port, timeout=3.0) as raw:
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n=,r={nonce}".encode()
        first = b"n,," + bare
        initial = msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first)
        raw.send(startup_packet({"user": "app", "database": "app"}) + initial)
        kind, body = raw.read_message()
        steps.append(f"{kind}{struct.unpack_from('!I', body)[0] if kind == 'R' else ''}")
        try:
            kind, body = raw.read_message()
        except TimeoutError:
            steps.append("silence after the SASLInitialResponse sent with the startup packet")
            return steps
        code = struct.unpack_from("!I", body)[0] if kind == "R" else -1
        steps.append(f"{kind}{code}")
        if code != 11:
            return steps
        server_first = body[4:]
        attrs = dict(p.split("=", 1) for p in server_first.decode().split(","))
        without_proof = f"c=biws,r={attrs['r']}".encode()
        auth_message = bare + b"," + server_first + b"," + without_proof
        proof, _ = _scram_client_proof("apppass", base64.b64decode(attrs["s"]), int(attrs["i"]), auth_message)
        raw.send(msg(b"p", without_proof + b",p=" + base64.b64encode(proof)) + query_msg("SELECT 'early' AS x"))
        try:
            replies = raw.read_until_ready()  # the login's messages up to its ReadyForQuery
            steps.append("logged in" if replies[-1][0] == "Z" and all(k != "E" for k, _ in replies) else str(replies))
            steps.append(str(data_rows(raw.read_until_ready())))
        except TimeoutError:
            steps.append("silence after the final SCRAM message + Query")
    return steps


def test_item5_sasl_initial_response_in_the_startup_packet(pg: PgCluster, proxy_factory: ProxyFactory) -> None:
    expected = _scram_pipelined(pg.primary.port)
    assert expected == ["R10", "R11", "logged in", "[['early']]"]
    proxy = make_proxy(proxy_factory)
    assert _scram_pipelined(proxy.port) == expected
    no_traceback(proxy)


# ======================================================================================= item 6
# A startup parameter the server rejects fails the login with the server's own error.


def _login_error(port: int, **params: str) -> dict[str, str] | None:
    with RawPg("127.0.0.1", port) as raw:
        try:
            raw.login("app", "apppass", "app", **params)
        except ServerError as exc:
            assert raw.closed_within(2.0), "the connection stays open after a failed login"
            return exc.fields
        return None


@pytest.mark.parametrize("options", ["-c role=nonexistent", "-c search_path=x -c role=nonexistent"])
def test_item6_rejected_startup_option_fails_the_login(
    pg: PgCluster, proxy_factory: ProxyFactory, options: str
) -> None:
    expected = _login_error(pg.primary.port, options=options)
    assert expected is not None
    assert (expected["S"], expected["C"], expected["M"]) == ("FATAL", "22023", 'role "nonexistent" does not exist')
    proxy = make_proxy(proxy_factory)
    got = _login_error(proxy.port, options=options)
    assert got is not None, "the proxy accepted a startup option the server rejects"
    assert (got["S"], got["C"], got["M"]) == (expected["S"], expected["C"], expected["M"])
    # libpq sees the same
    with pytest.raises(psycopg.OperationalError, match='role "nonexistent" does not exist'):
        psycopg.connect(proxy.dsn(options=options), connect_timeout=10).close()
    with via(proxy) as other:
        assert one(other, "SELECT 1") == (1,)
    no_traceback(proxy)

