"""Protocol flows without sockets: client bytes into the sans-IO session core (session/core.py), the exact bytes
its server gets, the server's replies in, the exact bytes the client gets (playbooks, table style)."""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.config.load import parse_config
from heliosproxy.config.schema import PoolMode
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import FAIL_BIND
from heliosproxy.server import Server as ProxyServer
from heliosproxy.session import login
from heliosproxy.session.core import ClientSession
from heliosproxy.session.prepared import Statement, server_name
from heliosproxy.session.relay import ABORTED, HIDE, PASS, REPLACE, SYNTH
from heliosproxy.session.state import READY
from tests.helpers import extmsg
from tests.helpers.extmsg import close, describe

M = messages.msg
C = messages.cstr
_I = struct.Struct("!I")
CHUNKS = [None, 1, 3, 7]

SERVER_PID = 4242  # the server connection's PID
CLIENT_PID = 0x40000001  # the PID the proxy gave the client (its BackendKeyData)
NODES = "nodes:\n  - {name: p, host: 127.0.0.1, role: primary}\nauth: {method: trust}\nusers: [{name: app}]\n"


class Wire:
    """The transport of the flow's server connection: records what the session core writes to its server."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("the flow's server connection was closed")


def Conn(prepared: tuple[str, ...] = (), applied: dict[str, str] | None = None) -> BackendConnection:
    """A server connection as the session sees it: what it has prepared, its settings; its transport records."""
    conn = BackendConnection("p", "127.0.0.1", 5432, "app", "app")
    conn.transport = Wire()  # type: ignore[assignment]
    conn.pid = SERVER_PID
    conn.prepared = collections.OrderedDict((p, None) for p in prepared)
    conn.applied = dict(applied or {})
    return conn


class Core:
    """One client session played without sockets: the real session core (session/core.py ClientSession), logged
    in, with this object as its `Io`: the flow's server connection is always at hand (acquire binds it at once),
    steps the core asks to run later run when the fed bytes are done (as the event loop would), and every
    statement's outcome is recorded in order (the core's `finished` observer: statistics, post_query)."""

    def __init__(self, txn: bool = True, conn: BackendConnection | None = None, limit: int = 10,
                 session_settings: dict[str, str] | None = None, known: tuple[str, ...] = ()) -> None:
        # Routing has its own table tests (test_decide.py): here every statement goes to the primary.
        config = parse_config(NODES + f"pool: {{prepared_statements_per_server: {limit}}}\n"
                              "routing: {read_write_split: false}\n", "flows.yaml")
        ctx = ProxyServer(config).ctx
        ctx.analytics = self  # type: ignore[assignment]  # new_meter() and finished() below
        for name in known:
            ctx.remember_statement(name)
        self.ctx = ctx
        self.transport = None
        self.conn = conn if conn is not None else Conn()
        self.to_client: list[bytes] = []
        self.ready: list[tuple[int, bool]] = []  # (status, the statement failed) per ReadyForQuery handled
        self.later: list[tuple[Callable[..., None], tuple[object, ...]]] = []
        self.released: list[bool] = []
        s = self.s = ClientSession(ctx, self, self.to_client.append, "flow")
        s.user = s.database = "app"
        s.txn = txn
        s.mode = PoolMode.TRANSACTION if txn else PoolMode.SESSION
        s.pid, s.key = CLIENT_PID, 1
        s.settings = dict(session_settings or {})
        s.login_params = {"TimeZone": "UTC"}  # what the client was told at login
        s.phase = READY

    # ------------------------------------------------------------- feeding the core
    def client(self, data: bytes) -> None:
        self.s.received(data)
        self.run_later()

    def server(self, data: bytes) -> None:
        conn = self.s.backend
        assert conn is self.conn, "the server sent bytes while the session did not hold it"
        self.s.on_backend_data(conn, data)
        self.run_later()

    def run_later(self) -> None:
        while self.later:
            fn, args = self.later.pop(0)
            fn(*args)

    @property
    def to_server(self) -> list[bytes]:
        return self.conn.transport.out  # type: ignore[union-attr]

    # ------------------------------------------------------------- what the flows check
    @property
    def bound(self) -> bool:
        return self.s.backend is not None

    @property
    def pinned(self) -> bool:
        return self.s.pinned

    @property
    def tx_status(self) -> int:
        return self.s.tx_status

    @property
    def listening(self) -> bool:
        return self.s._listening

    @property
    def statements(self) -> dict[str, Statement]:
        return self.s.statements

    @property
    def settings(self) -> dict[str, str]:
        return self.s.settings

    @property
    def known(self) -> set[str]:
        return set(self.ctx.known_statements)

    # ------------------------------------------------------------- core.Io
    def close(self) -> None:
        raise AssertionError("the session closed the client's connection")

    def closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        return 0

    def call_soon(self, fn: Callable[..., None], *args: object) -> None:
        self.later.append((fn, args))

    def spawn(self, coro: object) -> None:
        raise AssertionError(f"no background step expected in a flow: {coro!r}")

    def acquire(self, plan: object) -> None:
        self.s.server_ready(self.conn, None, plan)  # type: ignore[arg-type]

    def release(self, conn: BackendConnection, pool: object, reusable: bool) -> None:
        assert conn is self.conn
        self.released.append(reusable)

    def reset_release(self, conn: BackendConnection, pool: object) -> None:
        raise AssertionError("reset_release")

    def cancel(self, conn: BackendConnection) -> None:
        raise AssertionError("cancel")

    def cancel_close(self, conn: BackendConnection, pool: object) -> None:
        raise AssertionError("cancel_close")

    def retry_after_closing(self, conn: BackendConnection, plan: object) -> None:
        raise AssertionError("retry_after_closing")

    # ------------------------------------------------------------- the statement observer (ctx.analytics)
    def new_meter(self, session: object) -> None:
        return None

    def finished(self, session: object, info: object, elapsed: float, error: str | None, nbytes: int) -> None:
        self.ready.append((self.s.tx_status, error is not None))


# ----------------------------------------------------------------- messages
def hp(sql: str) -> str:
    """The proxy-wide name of a statement (no parameter types, schema epoch 0)."""
    return server_name(sql, b"\x00\x00")


def parse(name: str, sql: str) -> bytes:
    return messages.parse(name, sql)


def bind(stmt: str, *params: bytes, portal: str = "") -> bytes:
    return extmsg.bind(stmt, params, portal)


def q(sql: str) -> bytes:
    return messages.query(sql)


EXECUTE = M(codes.F_EXECUTE, C("") + b"\x00\x00\x00\x00")
SYNC = messages.SYNC
FLUSH = M(codes.F_FLUSH, b"")
P1, B2, C3 = messages.PARSE_COMPLETE, messages.BIND_COMPLETE, messages.CLOSE_COMPLETE
IDLE, INTX, FAILED = codes.TX_IDLE, codes.TX_IN_BLOCK, codes.TX_FAILED
Z_I, Z_T, Z_E = (messages.ready_for_query(s) for s in (IDLE, INTX, FAILED))


def rows(*values: str, col: str = "x") -> bytes:
    """RowDescription, a DataRow per value, CommandComplete (what the server answers a SELECT)."""
    return messages.result_set([col], [[v] for v in values])


def data_rows(*values: str) -> bytes:
    """DataRows and CommandComplete without the RowDescription (an Execute's answer)."""
    return rows(*values)[len(messages.row_description(["x"])):]


def notify(pid: int, channel: str = "ch", payload: str = "hi") -> bytes:
    return M(codes.B_NOTIFICATION, _I.pack(pid) + C(channel) + C(payload))


def err(sqlstate: str, text: str) -> bytes:
    return messages.error_response("ERROR", sqlstate, text)


def copy_response(t: int) -> bytes:
    return M(t, b"\x00" + struct.pack("!HH", 1, 0))


def copy_data(line: bytes, t: int = codes.F_COPY_DATA) -> bytes:
    return M(t, line)


COPY_DONE = M(codes.F_COPY_DONE, b"")
DIV0 = err("22012", "division by zero")
ROWDESC = messages.row_description(["x"])
PARAMS = messages.parameter_description([])
PS_TZ = messages.parameter_status("TimeZone", "Asia/Tokyo")
PS_UTC = messages.parameter_status("TimeZone", "UTC")
BAD_INT = err("22P02", 'invalid input syntax for type integer: "x"')


# ----------------------------------------------------------------- the playbooks
@dataclass
class Client:
    """The client sends `data`; the server gets exactly `server` and the client `answer`; `expect`: the
    expectations queued for the replies when the step is fed whole ((kind, action) each; None: not checked)."""

    data: bytes
    server: bytes
    expect: list[tuple[int, int]] | None = None
    answer: bytes = b""  # what the proxy answers the client itself, without the server


@dataclass
class Server:
    """The server sends `data`; the client gets exactly `client`; `ready`: (status, the statement failed) per
    ReadyForQuery; `then`: what the server gets meanwhile (a request that waited for these replies)."""

    data: bytes
    client: bytes
    ready: list[tuple[int, bool]] = field(default_factory=list)
    then: bytes = b""


class StatementAccounting(AssertionError):
    """Which statement a ReadyForQuery's error is counted against (statistics, post_query) is wrong."""


@dataclass
class Swap:
    """Transaction pooling hands the session another server connection (what it prepared, its settings)."""

    prepared: tuple[str, ...] = ()
    applied: dict[str, str] = field(default_factory=dict)


Step = Client | Server | Swap


@dataclass
class Flow:
    steps: list[Step]
    txn: bool = True
    conn: Callable[[], Conn] = Conn
    limit: int = 10
    session_settings: dict[str, str] = field(default_factory=dict)
    known: tuple[str, ...] = ()
    check: Callable[[Core], None] | None = None  # the state afterwards (the same whatever the chunking)


S1 = "SELECT $1::int + 1"
S2 = "SELECT 2"
TZ_SYNC = "SELECT pg_catalog.set_config('timezone', 'Asia/Tokyo', false)"


def _prepared(*names: str) -> Callable[[Core], None]:
    def check(core: Core) -> None:
        assert list(core.conn.prepared) == list(names)

    return check


def _state(**want: object) -> Callable[[Core], None]:
    def check(core: Core) -> None:
        got = {k: getattr(core, k) if k != "applied" else core.conn.applied for k in want}
        assert got == want

    return check


FLOWS: dict[str, Flow] = {
    # --- simple protocol: relayed unparsed, statuses from the scanner
    "simple query": Flow([
        Client(q("SELECT 1"), q("SELECT 1"), []),
        Server(rows("1") + Z_I, rows("1") + Z_I, [(IDLE, False)]),
    ]),
    "simple multi-statement": Flow([
        Client(q("SELECT 1; SELECT 2"), q("SELECT 1; SELECT 2"), []),
        Server(rows("1") + rows("2") + Z_I, rows("1") + rows("2") + Z_I, [(IDLE, False)]),
    ]),
    "simple multi-statement, error in the middle": Flow([
        Client(q("SELECT 1; SELECT 1/0; SELECT 3"), q("SELECT 1; SELECT 1/0; SELECT 3"), []),
        Server(rows("1") + DIV0 + Z_I, rows("1") + DIV0 + Z_I, [(IDLE, True)]),
    ]),
    "simple transaction: the server stays bound until COMMIT": Flow([
        Client(q("BEGIN"), q("BEGIN"), []),
        Server(messages.command_complete("BEGIN") + Z_T, messages.command_complete("BEGIN") + Z_T, [(INTX, False)]),
        Client(q("COMMIT"), q("COMMIT"), []),
        Server(messages.command_complete("COMMIT") + Z_I, messages.command_complete("COMMIT") + Z_I, [(IDLE, False)]),
    ], check=_state(bound=False, tx_status=IDLE)),
    # --- extended protocol
    "extended unnamed": Flow([
        Client(parse("", S1) + bind("", b"41") + describe(b"P", "") + EXECUTE + SYNC,
               parse("", S1) + bind("", b"41") + describe(b"P", "") + EXECUTE + SYNC, []),
        Server(P1 + B2 + ROWDESC + data_rows("42") + Z_I, P1 + B2 + ROWDESC + data_rows("42") + Z_I, [(IDLE, False)]),
    ], check=_prepared()),
    "extended named, session mode: sent as the client wrote it": Flow([
        Client(parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC + bind("s1", b"2") + EXECUTE + SYNC
               + close(b"S", "s1") + SYNC,
               parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC + bind("s1", b"2") + EXECUTE + SYNC
               + close(b"S", "s1") + SYNC, []),
        Server(P1 + B2 + data_rows("2") + Z_I + B2 + data_rows("3") + Z_I + C3 + Z_I,
               P1 + B2 + data_rows("2") + Z_I + B2 + data_rows("3") + Z_I + C3 + Z_I,
               [(IDLE, False)] * 3),
    ], txn=False, check=_prepared()),
    "extended named, transaction mode: Parse renamed on a server without it": Flow([
        Client(parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC,
               parse(hp(S1), S1) + bind(hp(S1), b"1") + EXECUTE + SYNC,
               [(codes.F_PARSE, PASS), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS), (codes.F_SYNC, PASS)]),
        Server(P1 + B2 + data_rows("2") + Z_I, P1 + B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], check=_prepared(hp(S1))),
    "extended named, transaction mode: statement already on the server, ParseComplete synthesized": Flow([
        Client(parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC,
               bind(hp(S1), b"1") + EXECUTE + SYNC,
               [(0, SYNTH), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS), (codes.F_SYNC, PASS)]),
        Server(B2 + data_rows("2") + Z_I, P1 + B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], conn=lambda: Conn((hp(S1),)), check=_prepared(hp(S1))),
    "renamed statement on another server: Bind gets a hidden Parse": Flow([
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC, [(codes.F_PARSE, PASS), (codes.F_SYNC, PASS)]),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Swap(),
        Client(bind("s1", b"5") + EXECUTE + SYNC,
               parse(hp(S1), S1) + bind(hp(S1), b"5") + EXECUTE + SYNC,
               [(codes.F_PARSE, HIDE), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS), (codes.F_SYNC, PASS)]),
        Server(P1 + B2 + data_rows("6") + Z_I, B2 + data_rows("6") + Z_I, [(IDLE, False)]),
    ], check=_prepared(hp(S1))),
    "renamed statement already on the next server: only renamed, replies unparsed": Flow([
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Swap(prepared=(hp(S1),)),
        Client(bind("s1", b"5") + EXECUTE + SYNC, bind(hp(S1), b"5") + EXECUTE + SYNC, []),
        Server(B2 + data_rows("6") + Z_I, B2 + data_rows("6") + Z_I, [(IDLE, False)]),
    ]),
    "LRU of shared statements full: the oldest is closed, hidden": Flow([
        Client(parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC,
               parse(hp(S1), S1) + close(b"S", "hp_old") + bind(hp(S1), b"1") + EXECUTE + SYNC,
               [(codes.F_PARSE, PASS), (codes.F_CLOSE, HIDE), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS),
                (codes.F_SYNC, PASS)]),
        Server(P1 + C3 + B2 + data_rows("2") + Z_I, P1 + B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], conn=lambda: Conn(("hp_old",)), limit=1, check=_prepared(hp(S1))),
    "Close of a named statement is answered by the proxy (transaction mode)": Flow([
        Client(parse("s1", S1) + bind("s1", b"1") + EXECUTE + close(b"S", "s1") + SYNC,
               parse(hp(S1), S1) + bind(hp(S1), b"1") + EXECUTE + SYNC),
        Server(P1 + B2 + data_rows("2") + Z_I, P1 + B2 + data_rows("2") + C3 + Z_I, [(IDLE, False)]),
    ], check=_state(statements={})),
    "a lone Sync without a server is answered by the proxy": Flow([
        Client(SYNC, b"", answer=Z_I),
    ]),
    "Parse of a text some server accepted: answered without a server, prepared where the Bind lands": Flow([
        Client(parse("s1", S1) + SYNC, b"", answer=P1 + Z_I),
        Client(bind("s1", b"1") + EXECUTE + SYNC, parse(hp(S1), S1) + bind(hp(S1), b"1") + EXECUTE + SYNC,
               [(codes.F_PARSE, HIDE), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS), (codes.F_SYNC, PASS)]),
        Server(P1 + B2 + data_rows("2") + Z_I, B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], known=(hp(S1),), check=_prepared(hp(S1))),
    "Close of a named statement without a server is answered by the proxy": Flow([
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(close(b"S", "s1") + SYNC, b"", answer=C3 + Z_I),
    ], check=_state(statements={}, known={hp(S1)})),
    "a Parse of a name the client already has is refused by the proxy (42P05), no server involved": Flow([
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(parse("s1", S2) + SYNC, b"", answer=err("42P05", 'prepared statement "s1" already exists') + Z_I),
    ]),
    # --- pipelines
    "pipeline: several Execute before one Sync": Flow([
        Client(parse("", S1) + bind("", b"1") + EXECUTE + bind("", b"2") + EXECUTE + bind("", b"3") + EXECUTE + SYNC,
               parse("", S1) + bind("", b"1") + EXECUTE + bind("", b"2") + EXECUTE + bind("", b"3") + EXECUTE + SYNC),
        Server(P1 + B2 + data_rows("2") + B2 + data_rows("3") + B2 + data_rows("4") + Z_I,
               P1 + B2 + data_rows("2") + B2 + data_rows("3") + B2 + data_rows("4") + Z_I, [(IDLE, False)]),
    ]),
    "pipeline: psycopg's Sync then Flush": Flow([
        Client(parse("", S2) + bind("") + EXECUTE + SYNC + FLUSH + bind("") + EXECUTE + SYNC + FLUSH,
               parse("", S2) + bind("") + EXECUTE + SYNC + FLUSH + bind("") + EXECUTE + SYNC + FLUSH),
        Server(P1 + B2 + data_rows("2") + Z_I + B2 + data_rows("2") + Z_I,
               P1 + B2 + data_rows("2") + Z_I + B2 + data_rows("2") + Z_I, [(IDLE, False), (IDLE, False)]),
    ]),
    "pipeline: named statements after replies relayed unparsed wait for them": Flow([
        Client(q("SELECT 1") + parse("s1", S1) + bind("s1", b"1") + EXECUTE + SYNC,
               q("SELECT 1")),
        Server(rows("1") + Z_I, rows("1") + Z_I, [(IDLE, False)],
               then=parse(hp(S1), S1) + bind(hp(S1), b"1") + EXECUTE + SYNC),
        Server(P1 + B2 + data_rows("2") + Z_I, P1 + B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ]),
    # --- errors before Sync
    "error before Sync: the server skips to it": Flow([
        Client(parse("", "SELECT 1/0") + bind("") + EXECUTE + parse("", S2) + bind("") + EXECUTE + SYNC,
               parse("", "SELECT 1/0") + bind("") + EXECUTE + parse("", S2) + bind("") + EXECUTE + SYNC),
        Server(P1 + B2 + DIV0 + Z_I, P1 + B2 + DIV0 + Z_I, [(IDLE, True)]),
    ]),
    "error before Sync: a skipped renamed Parse is dropped from the server's record": Flow([
        Client(parse("", "SELECT 1/0") + bind("") + EXECUTE + parse("s2", S2) + SYNC,
               parse("", "SELECT 1/0") + bind("") + EXECUTE + parse(hp(S2), S2) + SYNC),
        Server(P1 + B2 + DIV0 + Z_I, P1 + B2 + DIV0 + Z_I, [(IDLE, True)]),
    ], check=_prepared()),
    "a hidden Parse that fails fails the client's Bind": Flow([
        Client(parse("s1", "SELECT nope") + SYNC, parse(hp("SELECT nope"), "SELECT nope") + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Swap(),
        Client(bind("s1") + EXECUTE + SYNC, parse(hp("SELECT nope"), "SELECT nope") + bind(hp("SELECT nope"))
               + EXECUTE + SYNC),
        Server(err("42703", 'column "nope" does not exist') + Z_I,
               err("42703", 'column "nope" does not exist') + Z_I, [(IDLE, True)]),
    ], check=_prepared()),
    "proxy refusal mid-pipeline: FAIL_BIND makes the server skip, the client sees the proxy's error": Flow([
        Client(parse("s1", S2) + SYNC, parse(hp(S2), S2) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(parse("", S2) + bind("") + EXECUTE, parse("", S2) + bind("") + EXECUTE),
        Client(parse("s1", S2) + SYNC, FAIL_BIND + SYNC,
               [(codes.F_PARSE, PASS), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS), (codes.F_BIND, REPLACE),
                (codes.F_SYNC, PASS)]),
        Server(P1 + B2 + data_rows("2") + err("26000", 'prepared statement "hp_no_such_statement" does not exist')
               + Z_I,
               P1 + B2 + data_rows("2") + err("42P05", 'prepared statement "s1" already exists') + Z_I,
               [(IDLE, True)]),
    ], check=_prepared(hp(S2))),
    "proxy refusal before Flush: the rest is skipped up to Sync, which the server still gets": Flow([
        Client(parse("s1", S2) + SYNC, parse(hp(S2), S2) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(parse("", S2) + bind("") + EXECUTE, parse("", S2) + bind("") + EXECUTE),
        Client(parse("s1", S2) + FLUSH + bind("") + EXECUTE + SYNC, FAIL_BIND + SYNC),
        Server(P1 + B2 + data_rows("2") + err("26000", "no such statement") + Z_I,
               P1 + B2 + data_rows("2") + err("42P05", 'prepared statement "s1" already exists') + Z_I,
               [(IDLE, True)]),
    ]),
    "a shared Parse in an aborted transaction is refused (25P02)": Flow([
        Client(parse("s1", S2) + SYNC, parse(hp(S2), S2) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Swap(prepared=(hp(S2),)),
        Client(q("BEGIN; SELECT 1/0"), q("BEGIN; SELECT 1/0")),
        Server(messages.command_complete("BEGIN") + DIV0 + Z_E, messages.command_complete("BEGIN") + DIV0 + Z_E,
               [(FAILED, True)]),
        Client(close(b"S", "s1") + SYNC + parse("s1", S2) + bind("s1") + EXECUTE + SYNC,
               SYNC + bind(hp(S2)) + EXECUTE + SYNC),
        # The proxy refuses at once, after the previous ReadyForQuery: the server's own 25P02 is not shown.
        Server(Z_E, C3 + Z_E + err("25P02", ABORTED), [(FAILED, False)]),
        Server(err("25P02", "current transaction is aborted") + Z_E, Z_E, [(FAILED, True)]),
    ], check=_state(statements={})),
    # --- COPY
    "COPY FROM STDIN: the client's CopyData and CopyDone are forwarded": Flow([
        Client(q("COPY t FROM STDIN"), q("COPY t FROM STDIN")),
        Server(copy_response(codes.B_COPY_IN), copy_response(codes.B_COPY_IN)),
        Client(copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE, copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE),
        Server(messages.command_complete("COPY 2") + Z_I, messages.command_complete("COPY 2") + Z_I, [(IDLE, False)]),
    ]),
    "COPY FROM STDIN failed by the client (CopyFail)": Flow([
        Client(q("COPY t FROM STDIN"), q("COPY t FROM STDIN")),
        Server(copy_response(codes.B_COPY_IN), copy_response(codes.B_COPY_IN)),
        Client(copy_data(b"1\n") + copy_data(b"stop\x00", codes.F_COPY_FAIL),
               copy_data(b"1\n") + copy_data(b"stop\x00", codes.F_COPY_FAIL)),
        Server(err("57014", "COPY from stdin failed: stop") + Z_I, err("57014", "COPY from stdin failed: stop") + Z_I,
               [(IDLE, True)]),
    ]),
    "COPY TO STDOUT through the scanner": Flow([
        Client(q("COPY t TO STDOUT"), q("COPY t TO STDOUT")),
        Server(copy_response(codes.B_COPY_OUT) + copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE
               + messages.command_complete("COPY 2") + Z_I,
               copy_response(codes.B_COPY_OUT) + copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE
               + messages.command_complete("COPY 2") + Z_I, [(IDLE, False)]),
    ]),
    "COPY FROM STDIN behind a hidden settings sync (through the relay)": Flow([
        Client(q("COPY t FROM STDIN"), q(TZ_SYNC) + q("COPY t FROM STDIN"), [(codes.F_QUERY, HIDE),
                                                                             (codes.F_QUERY, PASS)]),
        Server(rows("", col="set_config") + PS_TZ + Z_I + copy_response(codes.B_COPY_IN),
               PS_TZ + copy_response(codes.B_COPY_IN)),
        Client(copy_data(b"1\n") + COPY_DONE, copy_data(b"1\n") + COPY_DONE),
        Server(messages.command_complete("COPY 1") + Z_I, messages.command_complete("COPY 1") + Z_I, [(IDLE, False)]),
    ], session_settings={"timezone": "Asia/Tokyo"}),
    # --- asyncpg: Parse/Describe/Flush gets a hidden Sync; its answers wait for that Sync's ReadyForQuery
    "asyncpg prepare: hidden gate Sync, then the execution relayed unparsed": Flow([
        Client(parse("__asyncpg_stmt_1__", S1) + describe(b"S", "__asyncpg_stmt_1__") + FLUSH,
               parse(hp(S1), S1) + describe(b"S", hp(S1)) + FLUSH + SYNC,
               [(codes.F_PARSE, PASS), (codes.F_DESCRIBE, PASS), (codes.F_SYNC, HIDE)]),
        Server(P1 + PARAMS, b""),
        Server(ROWDESC + Z_I, P1 + PARAMS + ROWDESC),
        Client(bind("__asyncpg_stmt_1__", b"1") + EXECUTE + SYNC, bind(hp(S1), b"1") + EXECUTE + SYNC, []),
        Server(B2 + data_rows("2") + Z_I, B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], check=_prepared(hp(S1))),
    # --- settings
    "SET is recorded at its ReadyForQuery; the next server gets a hidden sync first": Flow([
        Client(q("SET TimeZone = 'Asia/Tokyo'"), q("SET TimeZone = 'Asia/Tokyo'"), []),
        Server(messages.command_complete("SET") + PS_TZ + Z_I, messages.command_complete("SET") + PS_TZ + Z_I,
               [(IDLE, False)]),
        Swap(),
        Client(q("SELECT 1"), q(TZ_SYNC) + q("SELECT 1"), [(codes.F_QUERY, HIDE), (codes.F_QUERY, PASS)]),
        Server(messages.error_response("NOTICE", "00000", "hidden", notice=True) + rows("", col="set_config") + PS_TZ
               + Z_I + rows("1") + Z_I,
               PS_TZ + rows("1") + Z_I, [(IDLE, False)]),
    ], check=_state(settings={"timezone": "Asia/Tokyo"}, applied={"timezone": "Asia/Tokyo"}, pinned=False)),
    "settings sync before an extended batch": Flow([
        Client(parse("", S2) + bind("") + EXECUTE + SYNC, q(TZ_SYNC) + parse("", S2) + bind("") + EXECUTE + SYNC,
               [(codes.F_QUERY, HIDE), (codes.F_PARSE, PASS), (codes.F_BIND, PASS), (codes.F_EXECUTE, PASS),
                (codes.F_SYNC, PASS)]),
        Server(rows("", col="set_config") + PS_TZ + Z_I + P1 + B2 + data_rows("2") + Z_I,
               PS_TZ + P1 + B2 + data_rows("2") + Z_I, [(IDLE, False)]),
    ], session_settings={"timezone": "Asia/Tokyo"}),
    "session mode: DISCARD ALL runs on the server; statements and settings forgotten at its answer": Flow([
        Client(q("SET TimeZone = 'Asia/Tokyo'"), q("SET TimeZone = 'Asia/Tokyo'")),
        Server(messages.command_complete("SET") + PS_TZ + Z_I, messages.command_complete("SET") + PS_TZ + Z_I,
               [(IDLE, False)]),
        Client(parse("s1", S1) + SYNC, parse("s1", S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(q("DISCARD ALL"), q("DISCARD ALL"), []),
        Server(messages.command_complete("DISCARD ALL") + PS_UTC + Z_I,
               messages.command_complete("DISCARD ALL") + PS_UTC + Z_I, [(IDLE, False)]),
    ], txn=False, check=_state(statements={}, settings={}, applied={}, pinned=False)),
    "transaction mode: DISCARD ALL of an unpinned client is answered for its own session, as a server would": Flow([
        Client(q("SET TimeZone = 'Asia/Tokyo'"), q("SET TimeZone = 'Asia/Tokyo'")),
        Server(messages.command_complete("SET") + PS_TZ + Z_I, messages.command_complete("SET") + PS_TZ + Z_I,
               [(IDLE, False)]),
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        # The shared server keeps its statements and settings (other clients' too): never sent there.
        Client(q("DISCARD ALL"), b"", [], answer=PS_UTC + messages.command_complete("DISCARD ALL") + Z_I),
    ], check=_state(statements={}, settings={}, pinned=False, bound=False)),
    "pipeline through the relay: each error is counted against its own request": Flow([
        Client(parse("", S1) + bind("", b"1") + EXECUTE + SYNC + bind("", b"x") + EXECUTE + SYNC,
               q(TZ_SYNC) + parse("", S1) + bind("", b"1") + EXECUTE + SYNC + bind("", b"x") + EXECUTE + SYNC),
        Server(rows("", col="set_config") + PS_TZ + Z_I + P1 + B2 + data_rows("2") + Z_I + BAD_INT + Z_I,
               PS_TZ + P1 + B2 + data_rows("2") + Z_I + BAD_INT + Z_I, [(IDLE, False), (IDLE, True)]),
    ], session_settings={"timezone": "Asia/Tokyo"}),
    "LISTEN pins; the server's notifications are shown with the client's PID, others' as they are": Flow([
        Client(q("LISTEN ch"), q("LISTEN ch"), []),
        Server(messages.command_complete("LISTEN") + Z_I, messages.command_complete("LISTEN") + Z_I,
               [(IDLE, False)]),
        Server(notify(SERVER_PID) + notify(777), notify(CLIENT_PID) + notify(777)),
        Client(q("SELECT 1"), q("SELECT 1"), [(codes.F_QUERY, PASS)]),  # through the relay from now on
        Server(rows("1") + notify(SERVER_PID) + Z_I, rows("1") + notify(CLIENT_PID) + Z_I, [(IDLE, False)]),
    ], check=_state(pinned=True, bound=True, listening=True)),
    "a failed SET changes nothing": Flow([
        Client(q("SET TimeZone = 'Nowhere'"), q("SET TimeZone = 'Nowhere'")),
        Server(err("22023", "invalid value") + Z_I, err("22023", "invalid value") + Z_I, [(IDLE, True)]),
    ], check=_state(settings={}, applied={})),
    "set_config() with a computed value is read back, hidden (capture)": Flow([
        Client(q("SELECT set_config('work_mem', '2' || 'MB', false)"),
               q("SELECT set_config('work_mem', '2' || 'MB', false)")
               + q("SELECT pg_catalog.current_setting('work_mem', true)"),
               [(codes.F_QUERY, PASS), (codes.F_QUERY, HIDE)]),
        Server(rows("2MB", col="set_config") + Z_I + rows("2MB", col="current_setting") + Z_I,
               rows("2MB", col="set_config") + Z_I, [(IDLE, False)]),
    ], check=_state(settings={"work_mem": "2MB"}, applied={"work_mem": "2MB"})),
    "a ParameterStatus the proxy did not cause pins the session": Flow([
        Client(q("SELECT my_function()"), q("SELECT my_function()")),
        Server(rows("") + PS_TZ + Z_I, rows("") + PS_TZ + Z_I, [(IDLE, False)]),
    ], check=_state(pinned=True, bound=True)),
}


def _chunks(data: bytes, chunk: int | None) -> list[bytes]:
    if not data:
        return [b""]
    step = chunk or len(data)
    return [data[i : i + step] for i in range(0, len(data), step)]


def play(flow: Flow, chunk: int | None) -> Core:
    core = Core(flow.txn, flow.conn(), flow.limit, flow.session_settings, flow.known)
    for i, step in enumerate(flow.steps):
        if isinstance(step, Swap):
            assert not core.bound, f"step {i}: the session still holds its server"
            assert core.released == [True], f"step {i}: the server went back to the pool as {core.released}"
            core.released.clear()
            core.conn = Conn(step.prepared, step.applied)  # the next acquire() binds this one
            continue
        core.to_server.clear()
        core.to_client.clear()
        core.ready.clear()
        if isinstance(step, Client):
            for part in _chunks(step.data, chunk):
                core.client(part)
            assert b"".join(core.to_server) == step.server, f"step {i}: the server got other bytes"
            if chunk is None and step.expect is not None:
                assert [(e.kind, e.action) for e in core.s.expect] == step.expect, f"step {i}: expectations"
            assert b"".join(core.to_client) == step.answer, f"step {i}: the proxy's own answer"
        else:
            for part in _chunks(step.data, chunk):
                core.server(part)
            assert b"".join(core.to_client) == step.client, f"step {i}: the client got other bytes"
            assert b"".join(core.to_server) == step.then, f"step {i}: the server got other bytes"
            assert [s for s, _ in core.ready] == [s for s, _ in step.ready], f"step {i}: ReadyForQuery statuses"
            if core.ready != step.ready:
                raise StatementAccounting(f"step {i}: {core.ready} != {step.ready}")
    s = core.s
    assert not s.expect and s.relay.idle and s.stalled is None and not s.buf and not s.batch and not core.later
    assert s.scanner.at_boundary
    if flow.check is not None:
        flow.check(core)
    return core


# Flows the session core gets wrong today (strict xfail: they fail the day it is fixed).
KNOWN_BUGS: dict[str, tuple[type[BaseException], tuple[int | None, ...], str]] = {}


def _flow_params() -> list[object]:
    out: list[object] = []
    for name in FLOWS:
        for chunk in CHUNKS:
            bug = KNOWN_BUGS.get(name)
            marks = []
            if bug is not None and chunk in bug[1]:
                marks.append(pytest.mark.xfail(raises=bug[0], strict=True, reason=bug[2]))
            out.append(pytest.param(name, chunk, marks=marks, id=f"{name}-{chunk}"))
    return out


@pytest.mark.parametrize(("name", "chunk"), _flow_params())
def test_flow(name: str, chunk: int | None) -> None:
    play(FLOWS[name], chunk)


def test_a_skipped_renamed_parse_is_dropped_from_the_servers_record() -> None:
    """The relay told the core the Parse was skipped (error before Sync): the server's record drops it, and the
    error is counted against the statement."""
    core = play(FLOWS["error before Sync: a skipped renamed Parse is dropped from the server's record"], None)
    assert hp(S2) not in core.conn.prepared
    assert core.ready == [(IDLE, True)]


def test_a_renamed_parse_is_known_to_every_session() -> None:
    """ParseComplete of a renamed Parse: the shared name is known (later Parses of it are answered locally)."""
    core = play(FLOWS["extended named, transaction mode: Parse renamed on a server without it"], 3)
    assert core.known == {hp(S1)}


# ----------------------------------------------------------------- cancel: the login machine
@pytest.mark.parametrize("chunk", CHUNKS)
def test_cancel_request_flow(chunk: int | None) -> None:
    """A session's BackendKeyData, then a CancelRequest with that key on a new connection: a Cancel action
    with its pid and key, nothing written, and the connection closes."""
    pid, key = 0x40000007, 0x1234ABCD
    assert messages.backend_key_data(pid, key) in login.welcome({"server_version": "15"}, pid, key)
    buf = bytearray()
    machine = login.Login(buf)
    actions: list[login.Action] = []
    for part in _chunks(messages.cancel_request(pid, key), chunk):
        actions.extend(machine.receive(part))
    assert actions == [login.Cancel(pid, key)]
    assert machine.state == login.CLOSED and not buf


# ----------------------------------------------------------------- pins: what classify reports, table style
PINS = [
    ("CREATE TEMP TABLE t (a int)", True),
    ("CREATE TABLE t (a int)", False),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", True),
    ("DECLARE c CURSOR FOR SELECT 1", False),
    ("SELECT pg_advisory_lock(1)", True),
    ("SELECT pg_advisory_xact_lock(1)", False),
    ("LISTEN ch", True),
    ("PREPARE p AS SELECT 1", True),  # SQL-level PREPARE (Effect.PREPARE)
    ("SELECT set_config('role', current_user, false)", True),  # a value the proxy cannot know
    ("SELECT set_config('role', 'x', false)", False),  # modelled: synced like SET ROLE
    ("SET TimeZone = 'UTC'", False),
    ("SELECT 1", False),
]


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize(("sql", "pins"), PINS)
def test_pinning_statements_keep_the_server(sql: str, pins: bool, chunk: int | None) -> None:
    """Transaction pooling: a statement that pins keeps its server after ReadyForQuery (idle); others release
    it (session/core.py _track_effects, from StatementInfo.pins and Effect.PREPARE)."""
    flow = Flow([
        Client(q(sql), q(sql)),
        Server(messages.command_complete("OK") + Z_I, messages.command_complete("OK") + Z_I, [(IDLE, False)]),
    ], check=_state(pinned=pins, bound=pins))
    play(flow, chunk)
