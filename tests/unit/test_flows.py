"""Protocol flows without sockets: client bytes in, the exact bytes a server gets, its replies in, the exact bytes
the client gets, composed from the sans-IO pieces as session/client.py composes them (playbooks, table style)."""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import FAIL_BIND, STATEMENT, Msg, decode, names_in
from heliosproxy.protocol.scan import ERROR_SEEN, ReplyScanner
from heliosproxy.session import login, settings
from heliosproxy.session.prepared import Statement, server_name
from heliosproxy.session.relay import ABORTED, HIDE, PASS, REPLACE, SYNTH, Expect, ReplyRelay
from heliosproxy.session.rename import Renamer
from heliosproxy.sql.classify import Effect, StatementInfo, classify_uncached
from tests.helpers import extmsg
from tests.helpers.extmsg import close, describe

M = messages.msg
C = messages.cstr
_I = struct.Struct("!I")
CHUNKS = [None, 1, 3, 7]

# ----------------------------------------------------------------- what client.py decides, in one place
# (the constants of session/client.py that choose a path; kept equal to them by test_the_harness_follows_client)
FORGETS = Effect.DISCARD | Effect.DEALLOCATE
SEND_CAREFULLY = FORGETS | Effect.READBACK
STATE_EFFECTS = Effect.SET | Effect.RESET | Effect.DISCARD
REPORTING = STATE_EFFECTS | Effect.SET_LOCAL
PREPARES_ONLY = frozenset((codes.F_PARSE, codes.F_DESCRIBE, codes.F_CLOSE, codes.F_FLUSH))
COPY_IN = (codes.F_COPY_DATA, codes.F_COPY_DONE, codes.F_COPY_FAIL)
SERVER_PID = 4242  # the server connection's PID
CLIENT_PID = 0x40000001  # the PID the proxy gave the client (its BackendKeyData)


class Conn:
    """A server connection as the session sees it: what it has prepared, its settings, its transaction status."""

    def __init__(self, prepared: tuple[str, ...] = (), applied: dict[str, str] | None = None) -> None:
        self.pid = SERVER_PID
        self.prepared: collections.OrderedDict[str, None] = collections.OrderedDict((p, None) for p in prepared)
        self.applied: dict[str, str] = dict(applied or {})
        self.tx_status = codes.TX_IDLE


@dataclass
class Plan:
    raw: bytes | None
    batch: list[Msg] | None
    info: StatementInfo | None
    sync: bool
    inject: bytes | None = None
    answer: bytes | None = None


class Core:
    """One client session played without sockets: ClientSession's composition of framing, decode, Renamer,
    ReplyRelay, ReplyScanner and the settings functions (_process_inner, _on_batch_end, _send, _dispatch,
    on_backend_data, _slow_feed, _on_ready), with one server connection that is always at hand. Records
    what is written to the server and to the client, and what the relay tells its host.

    ClientSession is not sans-IO yet, so this adapter replays its composition line for line (plugins, hold,
    routing, replay and metrics left out); lines marked "KNOWN_BUGS" reproduce what client.py does today.
    Once the session core is sans-IO, this class gives way to it and the FLOWS table stays."""

    def __init__(self, txn: bool = True, conn: Conn | None = None, limit: int = 10,
                 session_settings: dict[str, str] | None = None, known: tuple[str, ...] = ()) -> None:
        self.txn = txn
        self.known = set(known)  # ProxyContext.known_statements: shared names some server accepted
        self.conn = conn or Conn()
        self.limit = limit
        self.buf = bytearray()
        self.batch: list[Msg] = []
        self.statements: dict[str, Statement] = {}
        self.unnamed: Statement | None = None
        self.settings: dict[str, str] = dict(session_settings or {})
        self.startup: dict[str, str] = {}
        self.expect: collections.deque[Expect] = collections.deque()
        self.relay = ReplyRelay(self, self.expect)
        self.scanner = ReplyScanner()
        self.slow = False
        self.unsynced = False
        self.skip_to_sync = False
        self.bound = False
        self.pinned = False
        self.listen_pid = False  # LISTEN seen
        self.listening = False  # notifications relayed message by message with the client's PID
        self.pending = 0
        self.tx_status = codes.TX_IDLE
        self.inflight: collections.deque[list[object]] = collections.deque()  # [info, error]
        self.stalled: Plan | None = None
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.ready: list[tuple[int, bool]] = []  # (status, the statement failed) per ReadyForQuery handled
        self.calls: list[tuple[str, object]] = []

    # ------------------------------------------------------------- client -> proxy (_process_inner)
    def client(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 5 and self.stalled is None:
            t = buf[pos]
            end = pos + 1 + _I.unpack_from(buf, pos + 1)[0]
            if end > n:
                break
            if t in COPY_IN:
                start = pos
                pos = end
                while n - pos >= 5 and buf[pos] in COPY_IN and pos + 1 + _I.unpack_from(buf, pos + 1)[0] <= n:
                    pos += 1 + _I.unpack_from(buf, pos + 1)[0]
                self.to_server.append(bytes(buf[start:pos]))
                continue
            msg = bytes(buf[pos:end])
            pos = end
            if t == codes.F_QUERY:
                info = classify_uncached(msg[5:-1].decode())
                self.track(info)
                self.dispatch(Plan(msg, None, info, True))
            elif self.skip_to_sync:
                if t == codes.F_SYNC:
                    self.skip_to_sync = False
                    self.batch.clear()
                    if self.bound and self.unsynced:
                        self.dispatch(Plan(None, [Msg(t, msg)], None, True))
                    else:
                        self.answer(b"")
            elif t == codes.F_SYNC or t == codes.F_FLUSH:
                self.batch.append(Msg(t, msg))
                self.batch_end(t == codes.F_SYNC)
            else:
                self.batch.append(decode(t, msg, "utf-8"))
        del buf[:pos]
        if self.batch and self.batch[-1].t == codes.F_EXECUTE and self.stalled is None and not self.skip_to_sync:
            self.batch_end(False, partial=True)

    def answer(self, body: bytes) -> None:
        data = body + messages.ready_for_query(self.tx_status)
        if self.pending or self.expect:
            self.stalled = Plan(None, None, None, False, answer=data)
        else:
            self.to_client.append(data)

    def batch_end(self, sync: bool, partial: bool = False) -> None:
        batch = self.batch
        self.batch = []
        if len(batch) == 1 and not partial and not self.bound and not self.pending:
            if sync:
                self.to_client.append(messages.ready_for_query(self.tx_status))
            return
        info: StatementInfo | None = None
        any_stmt = False
        for i, m in enumerate(batch):
            if m.t == codes.F_PARSE:
                if m.name and self.txn and m.name in self.statements:
                    self.batch_error(batch, "42P05", f'prepared statement "{m.name}" already exists', sync, i)
                    return
                st = Statement(m.name, m.sql, m.tail, classify_uncached(m.sql), server_name(m.sql, m.tail),
                               raw=m.raw)
                if m.name:
                    self.statements[m.name] = st
                else:
                    self.unnamed = st
                m.st = st
                self.track(st.info)
            elif m.t == codes.F_BIND:
                st2 = self.statements.get(m.stmt) if m.stmt else self.unnamed
                m.st = st2
                if st2 is not None:
                    info = st2.info
                    any_stmt = True
            elif m.t == codes.F_DESCRIBE and m.sub == STATEMENT:
                m.st = self.statements.get(m.name) if m.name else self.unnamed
            elif m.t == codes.F_CLOSE and self.txn and m.sub == STATEMENT and m.name:
                self.statements.pop(m.name, None)  # in order; what earlier messages named is in Msg.st
        if not any_stmt and not self.bound and not self.pending and self.txn and not partial \
                and self.local_batch(batch, sync):
            return
        self.dispatch(Plan(None, batch, info, sync))

    def local_batch(self, batch: list[Msg], sync: bool) -> bool:
        """_local_batch: Parse/Close of named statements answered without a server when the text is known."""
        out: list[bytes] = []
        for m in batch:
            if m.t == codes.F_PARSE and m.name:
                st = m.st
                if st is None or st.server not in self.known:
                    return False
                out.append(messages.PARSE_COMPLETE)
            elif m.t == codes.F_CLOSE and m.sub == STATEMENT and m.name:
                self.statements.pop(m.name, None)
                out.append(messages.CLOSE_COMPLETE)
            elif m.t != codes.F_SYNC and m.t != codes.F_FLUSH:
                return False
        if sync:
            out.append(messages.ready_for_query(self.tx_status))
        self.to_client.append(b"".join(out))
        return True

    def batch_error(self, batch: list[Msg], sqlstate: str, message: str, sync: bool, at: int) -> None:
        for m in batch[:at]:
            if m.t == codes.F_PARSE and m.name:
                self.statements.pop(m.name, None)
        body = messages.error_response("ERROR", sqlstate, message)
        if self.bound and self.unsynced:
            # The server runs the start of this pipeline: it is made to fail here too (FAIL_BIND), and the
            # client sees the proxy's error in place of the server's.
            items = [Msg(codes.F_BIND, FAIL_BIND)]
            if sync:
                items.append(Msg(codes.F_SYNC, messages.SYNC))
            else:
                self.skip_to_sync = True
            self.dispatch(Plan(None, items, None, sync, inject=body))
            return
        assert sync, "the Flush form without a server is not played here"
        self.answer(body)

    def track(self, info: StatementInfo) -> None:
        """_track_effects: what pins a session (the decision is ClientSession's; StatementInfo.pins is the input)."""
        if info.effects & Effect.LISTEN:
            self.listen_pid = True
        if (info.pins or info.effects & Effect.PREPARE) and self.txn:
            self.pinned = True

    # ------------------------------------------------------------- dispatch and send (_dispatch, _send)
    def dispatch(self, plan: Plan) -> None:
        if (
            self.bound
            and self.pending
            and not self.slow
            and plan.batch is not None
            and ((self.txn and names_in(plan.batch)) or plan.inject is not None
                 or (not plan.sync and any(m.t != codes.F_FLUSH for m in plan.batch)))
        ):
            self.stalled = plan  # after replies relayed unparsed: from a message boundary only
            return
        self.bound = True
        self.send(plan)

    def send(self, plan: Plan) -> None:
        conn = self.conn
        continues = self.unsynced
        flush_only = not plan.sync and plan.batch is not None and all(m.t == codes.F_FLUSH for m in plan.batch)
        if not flush_only:
            self.unsynced = plan.batch is not None and not plan.sync
        info = plan.info
        careful = info is not None and bool(info.effects & SEND_CAREFULLY)
        if plan.raw is not None and not self.slow and self.settings == conn.applied and not careful:
            self.pending += 1
            self.inflight.append([info, False])
            self.to_server.append(plan.raw)
            return
        if (
            plan.batch is not None
            and self.settings == conn.applied
            and not self.slow
            and (not self.txn or not names_in(plan.batch))
            and not careful
            and (plan.sync or flush_only)
        ):
            if plan.sync:
                self.pending += 1
                self.inflight.append([info, False])
            self.to_server.append(b"".join([m.data for m in plan.batch]))
            return
        out: list[bytes] = []
        fix: list[Expect] = []
        need_fix = False
        if self.settings != conn.applied:
            q = settings.sync_sql(conn.applied, self.settings)
            conn.applied = dict(self.settings)
            if q:
                out.append(messages.query(q))
                fix.append(Expect(codes.F_QUERY, HIDE))
                need_fix = True
        if plan.batch is not None:
            renamer = Renamer(conn.prepared, self.limit, out, fix)
            renamer.batch(plan.batch, self.txn, plan.inject)
            need_fix = need_fix or renamer.hidden
        elif plan.raw is not None:
            out.append(plan.raw)
            fix.append(Expect(codes.F_QUERY))
        if (
            not plan.sync
            and plan.batch is not None
            and self.txn
            and not self.pinned
            and self.tx_status == codes.TX_IDLE
            and not continues
            and not self.pending
            and not self.expect
            and all(m.t in PREPARES_ONLY for m in plan.batch)
            and any(m.t != codes.F_FLUSH for m in plan.batch)
        ):
            out.append(messages.SYNC)  # the hidden gate Sync (asyncpg's Parse/Describe/Flush)
            gate = Expect(codes.F_SYNC, HIDE)
            gate.gate = True
            fix.append(gate)
            need_fix = True
            self.unsynced = False
        rb = info.readback if info is not None else ()
        if rb and plan.sync:
            out.append(messages.query(settings.readback_sql(rb)))
            fix.append(Expect(codes.F_QUERY, HIDE, capture=lambda rows: self.adopt(rb, rows)))
            need_fix = True
        if need_fix or self.slow or not (plan.sync or flush_only):
            if not self.slow:
                self.slow = True
                self.relay.reset()
            self.expect.extend(fix)
        if plan.sync:
            self.pending += 1
            self.inflight.append([info, False])
        self.to_server.append(b"".join(out))
        if not out and self.slow:
            self.slow_feed(b"")

    # ------------------------------------------------------------- server -> proxy (on_backend_data)
    def server(self, data: bytes) -> None:
        if self.slow:
            self.slow_feed(data)
            return
        statuses = self.scanner.feed(data)
        self.to_client.append(data)
        for status in statuses:
            if status & ERROR_SEEN and self.inflight:
                self.inflight[0][1] = True
            self.on_ready(status & 0xFF)

    def slow_feed(self, data: bytes) -> None:
        relay = self.relay
        relay.status = self.conn.tx_status
        relay.listen_from, relay.listen_as = (self.conn.pid, CLIENT_PID) if self.listening else (0, 0)
        out, readies = relay.feed(data)
        self.conn.tx_status = relay.status
        if relay.params:
            relay.params = False
            self.scanner.params = True
        self.to_client.extend(out)
        if relay.idle and not self.listening:
            self.slow = False
            self.scanner.reset()
        for status in readies:
            self.on_ready(status)
        if not readies and self.stalled is not None and not self.pending and not self.expect:
            self.resume()

    def on_ready(self, status: int) -> None:
        self.tx_status = self.conn.tx_status = status
        if self.pending:
            self.pending -= 1
        fl = self.inflight.popleft() if self.inflight else [None, False]
        info, failed = fl
        assert info is None or isinstance(info, StatementInfo)
        self.ready.append((status, bool(failed)))
        if info is not None and info.effects & FORGETS and (not failed or info.statements > 1):
            if info.effects & Effect.DISCARD or None in info.deallocate:  # _forget
                self.conn.prepared.clear()
                self.statements.clear()
                if info.effects & Effect.DISCARD:
                    self.conn.applied = {}
            else:
                for target in info.deallocate:
                    self.statements.pop(target or "", None)
        if info is not None and info.effects & STATE_EFFECTS and not failed:
            if info.effects & Effect.DISCARD:
                settings.discard_all(self.settings, self.conn.applied, self.startup)
                self.statements.clear()
            settings.apply(self.settings, self.conn.applied, self.startup, info.settings)
        if (self.listen_pid and not self.listening and not self.pending and not self.expect
                and (self.slow or self.scanner.at_boundary) and self.conn.pid != CLIENT_PID):
            self.listening = True
            if not self.slow:
                self.slow = True
                self.relay.reset()
        if self.scanner.params:
            self.scanner.params = False
            if info is None or not (info.effects & REPORTING or info.tx is not None):
                self.pinned = self.pinned or self.txn
        if status == codes.TX_IDLE and not self.pending and not self.expect and not self.unsynced and self.txn \
                and not self.pinned:
            self.bound = False  # back to the pool
            self.unsynced = False
        if self.stalled is not None and not self.pending and not self.expect:
            self.resume()

    def resume(self) -> None:
        plan = self.stalled
        assert plan is not None
        self.stalled = None
        if plan.answer is not None:
            self.to_client.append(plan.answer)
        else:
            self.dispatch(plan)
        if self.stalled is None:
            self.process()

    def adopt(self, names: tuple[str, ...], rows: list[list[str | None]] | None) -> None:
        if rows:
            changes = [(n, v, False) for n, v in zip(names, rows[0], strict=False) if self.settings.get(n) != v]
            settings.apply(self.settings, self.conn.applied, self.startup, changes)

    # ------------------------------------------------------------- relay.Host
    def refuses_parse(self, st: Statement, index: int) -> bool:
        self.calls.append(("refuses_parse", st.name))
        if self.statements.get(st.name) is st:
            del self.statements[st.name]
        if index < len(self.inflight):
            self.inflight[index][1] = True
        return True

    def reply_error(self, m: bytes, head: Expect | None, index: int) -> None:
        self.calls.append(("reply_error", head.kind if head is not None else None))
        if head is not None and head.kind == codes.F_PARSE and head.data:
            self.conn.prepared.pop(head.data.decode(), None)
            if head.client and self.statements.get(head.client, None) is not None:
                del self.statements[head.client]
        if head is not None and head.action == HIDE and head.kind == codes.F_QUERY:
            return
        if index < len(self.inflight):
            self.inflight[index][1] = True

    def statement_dropped(self, server: str) -> None:
        self.calls.append(("dropped", server))
        self.conn.prepared.pop(server, None)

    def statement_prepared(self, server: str) -> None:
        self.calls.append(("prepared", server))
        self.known.add(server)

    def hold_done(self, held: list[bytes]) -> bool:
        return False


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
    "DISCARD ALL: statements and settings forgotten at its answer": Flow([
        Client(q("SET TimeZone = 'Asia/Tokyo'"), q("SET TimeZone = 'Asia/Tokyo'")),
        Server(messages.command_complete("SET") + PS_TZ + Z_I, messages.command_complete("SET") + PS_TZ + Z_I,
               [(IDLE, False)]),
        Client(parse("s1", S1) + SYNC, parse(hp(S1), S1) + SYNC),
        Server(P1 + Z_I, P1 + Z_I, [(IDLE, False)]),
        Client(q("DISCARD ALL"), q("DISCARD ALL"), []),
        Server(messages.command_complete("DISCARD ALL") + PS_TZ + Z_I,
               messages.command_complete("DISCARD ALL") + PS_TZ + Z_I, [(IDLE, False)]),
    ], check=_state(statements={}, settings={}, applied={}, pinned=False)),
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
            core.conn = Conn(step.prepared, step.applied)
            core.scanner.reset()  # _bind
            continue
        core.to_server.clear()
        core.to_client.clear()
        core.ready.clear()
        if isinstance(step, Client):
            for part in _chunks(step.data, chunk):
                core.client(part)
            assert b"".join(core.to_server) == step.server, f"step {i}: the server got other bytes"
            if chunk is None and step.expect is not None:
                assert [(e.kind, e.action) for e in core.expect] == step.expect, f"step {i}: expectations"
            assert b"".join(core.to_client) == step.answer, f"step {i}: the proxy's own answer"
        else:
            for part in _chunks(step.data, chunk):
                core.server(part)
            assert b"".join(core.to_client) == step.client, f"step {i}: the client got other bytes"
            assert b"".join(core.to_server) == step.then, f"step {i}: the server got other bytes"
            assert [s for s, _ in core.ready] == [s for s, _ in step.ready], f"step {i}: ReadyForQuery statuses"
            if core.ready != step.ready:
                raise StatementAccounting(f"step {i}: {core.ready} != {step.ready}")
    assert not core.expect and core.relay.idle and core.stalled is None and not core.buf and not core.batch
    assert core.scanner.at_boundary
    if flow.check is not None:
        flow.check(core)
    return core


# Flows where session/client.py's composition is wrong today (strict: they fail the day it is fixed).
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


def test_relay_calls_of_a_skipped_parse() -> None:
    """What the relay told its host, fed whole: the skipped Parse is reported dropped."""
    core = play(FLOWS["error before Sync: a skipped renamed Parse is dropped from the server's record"], None)
    assert core.calls == [("reply_error", codes.F_EXECUTE), ("dropped", hp(S2))]


def test_relay_calls_of_a_renamed_parse() -> None:
    core = play(FLOWS["extended named, transaction mode: Parse renamed on a server without it"], 3)
    assert core.calls == [("prepared", hp(S1))]


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
    it. The decision is ClientSession._track_effects' (not sans-IO yet): the harness plays it from
    StatementInfo.pins and Effect.PREPARE, which is what this table checks."""
    flow = Flow([
        Client(q(sql), q(sql)),
        Server(messages.command_complete("OK") + Z_I, messages.command_complete("OK") + Z_I, [(IDLE, False)]),
    ], check=_state(pinned=pins, bound=pins))
    play(flow, chunk)


def test_the_harness_follows_client() -> None:
    """The constants the harness copies from session/client.py are still the ones there."""
    from heliosproxy.session import client

    assert client._SEND_CAREFULLY == SEND_CAREFULLY
    assert client._FORGETS == FORGETS
    assert client._STATE_EFFECTS == STATE_EFFECTS
    assert client._REPORTING == REPORTING
    assert client._PREPARES_ONLY == PREPARES_ONLY
