"""The session core of one client, sans-IO: its bytes in, the bytes for its server and for itself out, and what
the IO glue (session/client.py) must do: get or give back a server connection, pause reading, run a step later."""

from __future__ import annotations

import collections
import logging
import os
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.config.schema import DatabaseRoute, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.logsetup import client_fields
from heliosproxy.plugins import hooks
from heliosproxy.pool.pool import Pool, PoolWait
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.encodings import python_codec
from heliosproxy.protocol.frontend import FAIL_BIND, Msg, header_error, names_in
from heliosproxy.protocol.scan import ERROR_SEEN, ReplyScanner
from heliosproxy.routing.consistency import SessionReads, error_sqlstate
from heliosproxy.routing.decide import decide
from heliosproxy.routing.router import Target
from heliosproxy.session import (
    accounting,
    extended,
    flow,
    local,
    login,
    pgcompat,
    pidmap,
    replay,
    resultcache,
    tracking,
    traffic,
)
from heliosproxy.session import settings as settings_mod
from heliosproxy.session.admin import AdminSession
from heliosproxy.session.context import ProxyContext
from heliosproxy.session.prepared import Statement
from heliosproxy.session.relay import (
    ABORTED,
    FATAL_SEVERITY,
    HIDE,
    HOLD,
    Expect,
    ReplyRelay,
)
from heliosproxy.session.rename import Renamer
from heliosproxy.session.state import AUTH, CLOSED, LOGIN, READY, STARTUP, Inflight, Plan
from heliosproxy.sql.classify import (
    DATABASE_DDL,
    Effect,
    StatementInfo,
    TxControl,
    classify_uncached,
    ddl_databases,
)
from heliosproxy.sql.hints import Hints, parse_hints
from heliosproxy.traffic.meter import ReplyMeter

log = logging.getLogger("heliosproxy.session")

_I: Final = struct.Struct("!I")
_i: Final = struct.Struct("!i")
_H: Final = struct.Struct("!H")

_monotonic: Final = time.monotonic
_perf_counter: Final = time.perf_counter

_HELIOS: Final = Effect.HELIOS_SET | Effect.HELIOS_SHOW
_OWN_SESSION: Final = Effect.DISCARD | Effect.DEALLOCATE
_FORGETS: Final = Effect.DISCARD | Effect.DEALLOCATE
_STATE_EFFECTS: Final = Effect.SET | Effect.RESET | Effect.DISCARD
# Statements after which a ParameterStatus from the server is expected (the proxy models them).
_REPORTING: Final = _STATE_EFFECTS | Effect.SET_LOCAL
_SEND_CAREFULLY: Final = _FORGETS | Effect.READBACK
_TEMP_SCHEMA: Final = Effect.TEMP_TABLE | Effect.DIRTY
_UNREADABLE: Final = classify_uncached("\x00")  # text not valid in the client's encoding: a write, to the primary


_PREPARES_ONLY: Final = frozenset((codes.F_PARSE, codes.F_DESCRIBE, codes.F_CLOSE, codes.F_FLUSH))


_EXITS: Final = frozenset((TxControl.COMMIT, TxControl.ROLLBACK, TxControl.ROLLBACK_TO, TxControl.PREPARE_TRANSACTION))


def _exits_transaction(sql: str) -> bool:
    """Would a server run this in an aborted transaction (COMMIT, ROLLBACK [TO], PREPARE TRANSACTION)?"""
    info = classify_uncached(sql)
    return info.statements == 1 and info.tx in _EXITS


def _stale_plan(m: bytes) -> bool:
    """Is this ErrorResponse a server saying a prepared statement went stale (schema changed)?"""
    f = messages.parse_error_fields(m[5:])
    text = f.get("M", "")
    return (f.get("C") == "0A000" and "cached plan must not change result type" in text) or (
        "cache lookup failed" in text
    )


def _busy_database(replies: list[bytes]) -> bool:
    """Do these replies end in 55006 (object in use: other sessions are using the database)?"""
    return any(m[0] == codes.B_ERROR and messages.parse_error_fields(m[5:]).get("C") == "55006" for m in replies)


class Io(Protocol):
    """What the session core asks of the world. session/client.py implements it over asyncio (the client's
    transport, the pools, the event loop); tests/unit/test_flows.py records it. Bytes for the client go through
    `ClientSession.emit` (a plain callable: the transport's write), the one call made per reply."""

    transport: Any  # the client's transport (or None): for SHOW SOCKETS-style listings only

    def close(self) -> None:
        """Close the client's connection (after what was written)."""

    def closing(self) -> bool:
        """Is the client's connection closing or closed?"""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def write_buffer_size(self) -> int:
        """Bytes written to the client and not yet sent."""

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) from the event loop, after the current callback."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background step of this session (a failure ends it with XX000)."""

    def acquire(self, plan: Plan) -> None:
        """Get a server connection for `plan` (session.stalled): answer with session.server_ready(conn, pool, plan),
        now or later, or session.server_unavailable(plan, exc)."""

    def release(self, conn: BackendConnection, pool: Pool | None, reusable: bool) -> None:
        """Give a server connection back to its pool (not reusable: it is closed)."""

    def reset_release(self, conn: BackendConnection, pool: Pool) -> None:
        """Session pooling or a pinned client ended: reset the server (pool.reset_query), then pool it."""

    def cancel(self, conn: BackendConnection) -> None:
        """Send a CancelRequest for what the server runs."""

    def cancel_close(self, conn: BackendConnection, pool: Pool | None) -> None:
        """Cancel what the server runs, then close it and give it back (not reusable)."""

    def retry_after_closing(self, conn: BackendConnection, plan: Plan) -> None:
        """A database-level statement failed with 55006: close the proxy's idle connections to that database
        (every worker), then session.send_again(conn, plan)."""


class ClientSession:
    """The state and the data path of one client session, sans-IO: fed with `received()` (client bytes),
    `on_backend_data()` (server bytes) and the glue's answers; writes through `emit` and `io`."""

    def __init__(self, ctx: ProxyContext, io: Io, emit: Callable[[bytes], None], peer: str):
        self.ctx = ctx
        self.io = io
        self.emit = emit  # bytes to the client (the transport's write; TLS replaces it)
        self.peer = peer
        self.buf = bytearray()
        self.phase = STARTUP
        self.user = ""
        self.database = ""
        self.app_name = ""
        self.startup: dict[str, str] = {}
        self.settings: dict[str, str] = {}  # session GUCs the client set (startup params, SET)
        self.startup_settings: dict[str, str] = {}  # what RESET goes back to
        self.login_params: dict[str, str] = {}  # ParameterStatus values the client got at login
        self.attrs: dict[str, str] = {}  # helios.* attributes (SET helios.tenant = ...), seen by plugins
        # Settings before the open transaction changed them (restored on rollback), and the
        # server connection's record of the same moment; None outside such a transaction.
        self._committed: dict[str, str] | None = None
        self._applied_base: dict[str, str] | None = None
        self.route_pref: str | None = None  # SET helios.route
        self.node_pref: str | None = None  # SET helios.node
        self.branch_pref: str | None = None  # SET helios.branch / database DB@BRANCH
        self.identity: str | None = None
        self.admin = False
        self.console: AdminSession | None = None  # logged in to the admin console: it serves the session
        self.pid = 0
        self.key = 0
        self.client_id = ""
        self.mode = PoolMode.TRANSACTION
        self.txn = True  # mode is PoolMode.TRANSACTION: the server is shared between transactions
        self.backend: BackendConnection | None = None
        self.backend_pool: Pool | None = None
        self.pinned = False
        self.pending = 0  # ReadyForQuery messages still owed by the backend
        self.tx_status = codes.TX_IDLE
        self.stalled: Plan | None = None  # waiting for a backend or for the current one to go idle
        self.scanner = ReplyScanner()
        self.expect: collections.deque[Expect] = collections.deque()
        self.slow = False
        self.relay = ReplyRelay(self, self.expect)  # the message-by-message relay while `slow`
        self.batch: list[Msg] = []
        self.skip_to_sync = False  # an extended-protocol error was answered: ignore messages until Sync
        self.unsynced = False  # the bound server has extended messages of this client with no Sync after them
        self.statements: dict[str, Statement] = {}
        self.unnamed: Statement | None = None
        self.inflight: collections.deque[Inflight] = collections.deque()
        self.request_seq = 0
        self.hook_ctx: hooks.HookContext | None = None
        self.last_write_at = 0.0
        self.connected_at = time.time()
        self._reading_paused = False
        self.write_paused = False  # the client reads slower than its server sends: the server is not read
        self._pool_wait: PoolWait | None = None  # queued in a pool for a server (set by the glue)
        self._processing = False
        self.query_count = 0
        self._codec = "utf-8"  # Python codec of the client's client_encoding (to read its SQL text)
        self._listen_pid = False  # LISTEN seen: relay notifications with this client's PID
        self._temp_schema = False  # may have made its server create a temp schema: never reuse that server
        self._just_bound = False  # a server was just taken from the pool: the next plan sent is...
        self._fresh: Plan | None = None  # ...this one, until the server's first bytes arrive
        self._listening = False  # ... and that relay is on (from a message boundary)
        self._held_plan: Plan | None = None
        self.compat = pgcompat.ClientCompat()  # PgBouncer counters and timeouts
        self.tls = False  # TLS negotiated (heliosproxy/session/tls.py)
        self.held_paused = False  # reading paused: max_client_buffer reached (heliosproxy/session/flow.py)
        self.reads = SessionReads()  # routing.consistency state (issue 11)
        self.db_route = DatabaseRoute.AUTO  # databases: ALIAS route
        self.hold: bytearray | None = None  # an auto-routed standby read's reply, held until its ReadyForQuery
        self.hold_plan: Plan | None = None
        # Reads what the client is sent while analytics or mirroring is on (heliosproxy/traffic, issue 15).
        self.tap: ReplyMeter | None = ctx.analytics.new_meter(self) if ctx.analytics is not None else None
        self.replay = replay.new(self)  # issue 16: failover.replay recorder (session/replay.py); None when off
        self.traffic: traffic.TrafficState | None = None  # rate limits / breakers (session/traffic.py)
        self.cache_rec: resultcache.Capture | None = None  # result cache: the reply being captured
        self.cache_dirty: set[int] = set()  # result cache: table slots written, dropped at ReadyForQuery
        self.cache_base: tuple[dict[str, str], str, str, str, Any] | None = None  # result cache: the key prefix

    # ================================================================== input from the glue
    def received(self, data: bytes) -> None:
        """Bytes from the client once logged in (READY): run what is complete, or hold it (bounded)."""
        self.buf += data
        if self.stalled is None:
            self._process()
        elif len(self.buf) > self.ctx.max_client_buffer:
            self._pause_reading()  # waiting for a server: bound what we hold for this client
        flow.check_cheaply(self)

    def closed(self, exc: Exception | None) -> None:
        """The client's connection is gone: leave no running query behind, give the server back."""
        prev = self.phase
        self.phase = CLOSED
        ctx = self.ctx
        ctx.cancel_keys.pop((self.pid, self.key), None)
        if self.traffic is not None:
            traffic.closed(self)
        conn = self.backend
        if conn is not None:
            self.backend = None
            conn.owner = None
            if self.write_paused and conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()
            pool = self.backend_pool
            busy = self.pending > 0 or self.tx_status != codes.TX_IDLE or bool(self.expect) or self.unsynced
            if busy:
                # Leave no running query behind: cancel it, then drop the connection.
                if not conn.closed:
                    self.io.cancel_close(conn, pool)
            elif pool is not None:
                if self._temp_schema and self.txn:
                    # DISCARD ALL drops temp objects but not the backend's temp schema: a fresh
                    # session must not find one (pg_temp would resolve differently). Close it.
                    conn.close()
                    self.io.release(conn, pool, False)
                elif not self.txn or self.pinned:
                    self.io.reset_release(conn, pool)
                else:
                    self.io.release(conn, pool, True)
        if prev >= READY and self.hook_ctx is not None and ctx.plugins.has_connect:
            ctx.plugins.on_disconnect(self.hook_ctx)
        if prev >= LOGIN:
            log.info(
                "client %s user=%s db=%s closed%s",
                self.peer,
                self.user,
                self.database,
                f" ({exc})" if exc else "",
                extra=client_fields(self, "client_closed", duration_ms=round((time.time() - self.connected_at) * 1000),
                                  error=str(exc) if exc else None),
            )

    def on_backend_drained(self, conn: BackendConnection) -> None:
        if conn is self.backend:
            flow.drained(self)

    def server_ready(self, conn: BackendConnection, pool: Pool | None, plan: Plan) -> None:
        """The glue got a server connection for the stalled `plan`: bind it and send."""
        self.stalled = None
        self._bind(conn, pool)
        self._send(conn, plan)

    def server_unavailable(self, plan: Plan, exc: HeliosError) -> None:
        """No server connection for the stalled `plan`: the client gets the error."""
        self.stalled = None
        self._answer_plan_error(plan, exc)

    def _adopter(
        self, names: tuple[str, ...], conn: BackendConnection
    ) -> Callable[[list[list[str | None]] | None], None]:
        """The capture of a settings read-back (its own method: a closure in _send would be allocated per call)."""
        return lambda rows: tracking.adopt(self, names, rows, conn)

    def send_again(self, conn: BackendConnection, plan: Plan) -> None:
        """After io.retry_after_closing: the database-level statement once more, on the same server."""
        if self.phase != READY or conn is not self.backend or conn.closed:
            return
        plan.dbs = ()  # once
        self.expect.append(Expect(codes.F_QUERY))
        self.slow = True
        assert plan.raw is not None
        conn.write(plan.raw)

    # ================================================================== helpers
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background step of this session (io.spawn: a failure ends the session)."""
        self.io.spawn(coro)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        self.io.call_soon(self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: BaseException) -> None:
        """A bug: log it with its traceback and end this session with XX000 rather than hang."""
        log.error("client %s user=%s: internal error: %r", self.peer, self.user or "-", exc, exc_info=exc)
        if self.phase != CLOSED:
            self._fatal("XX000", "internal error in the proxy")
        conn = self.backend
        if conn is not None:
            self.backend = None
            conn.owner = None
            conn.close()
            self.io.release(conn, self.backend_pool, False)
            self.backend_pool = None

    def _write(self, data: bytes) -> None:
        if self.hold is not None:
            self.hold += data
            if len(self.hold) > 65536:
                self._release_hold()
            return
        if self.phase != CLOSED:
            n = len(data)
            self.ctx.counters.bytes_out += n
            db = self.compat.db
            if db is not None:
                db.sent += n
            self.emit(data)
            if self.tap is not None:
                self.tap.feed(data)
            if self.cache_rec is not None:
                self.cache_rec.add(data)

    def _fatal(self, sqlstate: str, message: str, detail: str | None = None, event: str = "client_fatal") -> None:
        log.log(logging.WARNING if event == "auth_failed" else logging.INFO,
                "client %s user=%s: FATAL %s %s", self.peer, self.user or "-", sqlstate, message,
                extra=client_fields(self, event, sqlstate=sqlstate, error=message))
        if event == "auth_failed" and self.ctx.plugins.has_post_auth:  # post_auth observers see failed logins
            self.ctx.plugins.post_auth(self._make_hook_ctx(), self.user, self.database, self.peer, False, sqlstate,
                                       message)
        if self.phase != CLOSED:
            self.emit(messages.error_response("FATAL", sqlstate, message, detail))
            self.io.close()
        self.phase = CLOSED
        self.buf.clear()

    def _violation(self, message: str) -> None:
        self.ctx.counters.protocol_errors += 1
        self._fatal("08P01", message)

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.io.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.phase != CLOSED:
            self._reading_paused = False
            self.io.resume_reading()

    def close(
        self, sqlstate: str = "57P01", message: str = "terminating connection due to administrator command"
    ) -> None:
        self._fatal(sqlstate, message)

    def describe(self) -> dict[str, Any]:
        b = self.backend
        return {
            "client_id": self.client_id,
            "user": self.user,
            "database": self.database,
            "addr": self.peer,
            "application_name": self.app_name,
            "state": (
                "active" if self.pending else ("idle in transaction" if self.tx_status != codes.TX_IDLE else "idle")
            )
            if self.phase == READY
            else "login",
            "connected_at": self.connected_at,
            "backend_node": b.node if b else None,
            "backend_pid": b.pid if b else None,
            "pinned": self.pinned,
            "mode": self.mode.value,
            "queries": self.query_count,
        }

    # ================================================================== login: what the session keeps of it
    def startup_message(self, st: login.Startup) -> None:
        self.user = st.user
        self.database = st.database
        self.app_name = st.app_name
        self.startup = st.params
        self.settings.update(st.settings)
        self.startup_settings.update(st.settings)
        self.attrs.update(st.attrs)
        self._set_codec()
        self.phase = AUTH

    def _startup_setting(self, name: str, value: str) -> None:
        low = name.lower()
        if low.startswith("helios."):
            self.attrs[low[7:]] = value
        else:
            self.settings[low] = value
            self.startup_settings[low] = value

    def _make_hook_ctx(self) -> hooks.HookContext:
        attrs = self.attrs
        return hooks.HookContext(
            request_id="",
            client_id=self.client_id or None,
            identity=self.identity or self.user,
            database=self.database,
            branch=self.branch_pref,
            attributes=attrs,
        )

    # ================================================================== cancel
    def cancel_running(self) -> None:
        """Cancel the statement this client is running, on the backend running it (if any)."""
        conn = self.backend
        if conn is None or (self.pending == 0 and not self.expect):
            return
        self.io.cancel(conn)

    # ================================================================== the statement loop
    def _process(self) -> None:
        """Consume complete frontend messages from the buffer until one has to wait."""
        if self._processing:
            return
        self._processing = True
        try:
            if self.console is not None:
                self.console.process()  # the admin console session (session/admin.py)
            else:
                self._process_inner()
        finally:
            self._processing = False

    def _process_inner(self) -> None:
        buf = self.buf
        # One copy of the input as bytes: each message is then a compiled bytes slice (one allocation), not a
        # bytearray slice copied again into bytes (a slice object and two allocations per message).
        data = bytes(buf)
        pos = 0
        n = len(data)
        max_size = self.ctx.max_message_size
        cap = self.ctx.max_client_buffer // flow.PER_STATEMENT  # statements in flight (bounded memory)
        cap = min(cap, self.pending + flow.BURST)  # and per callback: other clients get their turn
        try:
            while n - pos >= 5 and self.stalled is None and self.phase == READY and self.pending < cap:
                t = data[pos]
                length = (data[pos + 1] << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]
                err = header_error(t, length, max_size)
                if err:
                    self._violation(err)
                    return
                end = pos + 1 + length
                if end > n:
                    break
                if t == codes.F_COPY_DATA or t == codes.F_COPY_DONE or t == codes.F_COPY_FAIL:
                    # COPY FROM STDIN: forward runs of copy messages in one write.
                    start = pos
                    pos = end
                    while n - pos >= 5 and data[pos] in (codes.F_COPY_DATA, codes.F_COPY_DONE, codes.F_COPY_FAIL):
                        ln = _I.unpack_from(data, pos + 1)[0]
                        if ln < 4 or ln > max_size or pos + 1 + ln > n:
                            break
                        pos += 1 + ln
                    if self.backend is not None:
                        self.backend.write(data[start:pos])
                    continue
                msg = data[pos:end]
                pos = end
                if t == codes.F_QUERY:
                    self._on_query(msg)
                elif t == codes.F_TERMINATE:
                    self.phase = CLOSED
                    self.io.close()
                    return
                elif self.skip_to_sync:
                    if t == codes.F_SYNC:
                        self.skip_to_sync = False
                        self.batch.clear()
                        if self.backend is not None and self.unsynced:
                            # The server has part of this pipeline (and failed where the proxy did): its
                            # ReadyForQuery ends the pipeline for the client.
                            self._dispatch(Plan(None, None, [Msg(t, msg)], None, None, True, False))
                        else:
                            self._answer(b"")
                elif t == codes.F_SYNC or t == codes.F_FLUSH:
                    self.batch.append(Msg(t, msg))
                    extended.batch_end(self, t == codes.F_SYNC)
                elif t == codes.F_FUNCTION_CALL:
                    self._dispatch(Plan(None, msg, None, None, None, True, True))
                else:
                    extended.on_extended(self, t, msg)
                    if len(self.batch) > 10_000:
                        self._violation("too many extended-protocol messages without Sync")
                        return
        finally:
            if pos:
                del buf[:pos]
        batch = self.batch
        if (
            batch
            and batch[-1].t == codes.F_EXECUTE
            and self.stalled is None
            and self.phase == READY
            and not self.skip_to_sync
        ):
            # A server runs extended-protocol messages as they arrive: forward what the client has
            # sent so far up to an Execute (the first message with an effect a client can wait
            # for) instead of holding it until a Sync or Flush that may come late.
            extended.batch_end(self, False, partial=True)
        if self.stalled is not None and len(buf) > max_size:
            self._pause_reading()
        if self.pending >= cap:
            flow.check(self)
            if not self.held_paused and self.phase == READY:
                self._call_soon(self._continue)

    # ------------------------------------------------------------------ simple query
    def _on_query(self, msg: bytes) -> None:
        self.query_count += 1
        if msg.find(b"\x00", 5) != len(msg) - 1:
            self._violation("invalid string in message")
            return
        ctx = self.ctx
        try:
            sql = msg[5:-1].decode(self._codec)
            info = ctx.classifier.classify(sql)
        except UnicodeDecodeError:
            # Not text in the client's encoding: the server decides; classify it as a write.
            sql = msg[5:-1].decode(self._codec, "replace")
            info = _UNREADABLE
        if self.compat.statement_mode and pgcompat.refuse_block(self, info):
            return
        effects = info.effects
        if effects:
            if effects & _HELIOS:
                if info.statements != 1:
                    self._answer_error("0A000", "SET/SHOW helios.* must be sent as a statement of its own")
                    return
                local.helios_statement(self, info, sql)
                return
            if effects & _OWN_SESSION and local.own_session_statement(self, info):
                return
        qctx: hooks.QueryContext | None = None
        plugins = ctx.plugins
        hints = parse_hints(sql) if "helios:" in sql else None
        if plugins.has_query_hooks:
            qctx = self._query_ctx(sql, info)
            if plugins.has_pre_query:
                res = plugins.pre_query(qctx)
                if res is not hooks.CONTINUE and not isinstance(res, hooks.Continue):
                    if isinstance(res, hooks.Block):
                        self._answer_error("42000", res.reason)
                        return
                    if isinstance(res, hooks.Cached):
                        self._answer(messages.result_set(res.columns, res.rows))
                        return
                    if isinstance(res, hooks.Rewrite):
                        sql = res.query
                        try:
                            msg = messages.msg(codes.F_QUERY, sql.encode(self._codec) + b"\x00")
                        except UnicodeEncodeError:
                            self._answer_error("22P05", "the rewritten query cannot be sent in the client's encoding")
                            return
                        info = ctx.classifier.classify(sql)
                        qctx = self._query_ctx(sql, info)
        if info.signal is not None and pidmap.on_query(self, info.signal):
            return  # pg_cancel_backend/pg_terminate_backend of a PID the proxy issued
        if ctx.cache is not None and resultcache.on_query(self, msg, info, hints):
            return  # answered from the result cache; a miss to be cached runs on the primary:
        try:
            target = self._route(info, hints, qctx, info.read_only and self.cache_rec is None)
        except HeliosError as exc:
            self._answer_error(exc.sqlstate, exc.message)
            return
        tracking.track_effects(self, info)
        plan = Plan(target, msg, None, info, qctx, True, not info.read_only)
        if info.statements == 1 and info.kinds[0] in DATABASE_DDL:
            plan.dbs = ddl_databases(sql)
        if ctx.mirror is not None:
            ctx.mirror.offer_query(self, info, msg)
        self._dispatch(plan)

    def _set_codec(self) -> None:
        self._codec = python_codec(self.settings.get("client_encoding"))

    def _query_ctx(self, sql: str, info: StatementInfo) -> hooks.QueryContext:
        """A statement's plugin context: the session's one HookContext (its JSON encoded once, see
        local.helios_statement) with this statement's request id."""
        self.request_seq += 1
        hc = self.hook_ctx
        if hc is None:
            hc = self.hook_ctx = self._make_hook_ctx()
        return hooks.QueryContext(sql, info.normalized, info.tables, info.read_only, hc,
                                  f"{self.client_id}-{self.request_seq}")

    def _route(
        self, info: StatementInfo, hints: Hints | None, qctx: hooks.QueryContext | None, read_only: bool
    ) -> Target | None:
        """routing.decide.decide (the one decision), with the plugin route hook's answer. None = primary."""
        ctx = self.ctx
        r = ctx.plugins.route(qctx) if qctx is not None and ctx.plugins.has_route else None
        return decide(ctx.reads, self, info, hints, r, read_only)

    # ------------------------------------------------------------------ SET/SHOW helios.*
    # ------------------------------------------------------------------ answers from the proxy itself
    def _answer(self, body: bytes) -> None:
        """Respond to a Query without a backend: body, then ReadyForQuery (after anything pending)."""
        if self.pending or self.expect:
            self.stalled = Plan.deferred(body + messages.ready_for_query(self.tx_status))
            return
        self._write(body + messages.ready_for_query(self.tx_status))

    def _answer_error(self, sqlstate: str, message: str) -> None:
        conn = self.backend
        if conn is not None and self.tx_status == codes.TX_IN_BLOCK:
            # Inside a transaction the server must fail it too, or a later COMMIT would commit.
            tag = "hp" + os.urandom(4).hex()
            sql = (
                f"DO ${tag}$BEGIN RAISE EXCEPTION USING ERRCODE = {settings_mod.quote(sqlstate)}, "
                f"MESSAGE = {settings_mod.quote(message)}; END${tag}$"
            )
            self._dispatch(Plan(None, messages.query(sql), None, None, None, True, False))
            return
        status = codes.TX_FAILED if self.tx_status != codes.TX_IDLE else codes.TX_IDLE
        body = messages.error_response("ERROR", sqlstate, message)
        if self.pending or self.expect:
            self.stalled = Plan.deferred(body + messages.ready_for_query(status))
            return
        if status == codes.TX_FAILED:
            self.tx_status = status
        self._write(body + messages.ready_for_query(status))

    # ------------------------------------------------------------------ extended protocol
    def _unrecord(self, batch: list[Msg]) -> None:
        """The client was answered with an error for this batch: the Parses it recorded made no statements."""
        for m in batch:
            if m.t == codes.F_PARSE:
                if m.name:
                    self.statements.pop(m.name, None)
                else:
                    self.unnamed = None

    def _batch_error(
        self, batch: list[Msg], sqlstate: str, message: str, sync: bool, at: int
    ) -> None:
        """Answer a batch that must not run (its message `at` failed): the error, then (at Sync) ReadyForQuery."""
        self._unrecord(batch[:at])
        body = messages.error_response("ERROR", sqlstate, message)
        if self.backend is not None and self.unsynced:
            # The server runs the start of this pipeline: make it fail here too, so that it skips to
            # the Sync and rolls back as it would have; the client sees the proxy's error in its place.
            items: list[Msg] = [Msg(codes.F_BIND, FAIL_BIND)]
            if sync:
                items.append(Msg(codes.F_SYNC, messages.SYNC))
            else:
                self.skip_to_sync = True
            plan = Plan(None, None, items, None, None, sync, False)
            plan.inject = body
            self._dispatch(plan)
            return
        if sync:
            self._answer_error(sqlstate, message)
            return
        # Flush, not Sync: like a server, send the error now and ignore messages until the Sync.
        if self.pending or self.expect:
            self.stalled = Plan.deferred(body)
        else:
            self._write(body)
        self.skip_to_sync = True

    # ================================================================== dispatch to a backend
    def _dispatch(self, plan: Plan) -> None:
        """Send a plan on the bound backend, or get one (synchronously when the pool has an idle one)."""
        if self.ctx.gates and traffic.gate(self, plan):
            return  # refused (53400, 08006) or held back by a rate limit
        if self.hold is not None:
            self._release_hold()  # another request follows: no rerun may reorder them
        conn = self.backend
        if conn is not None:
            if (
                self.pending
                and not self.slow
                and plan.batch is not None
                and (
                    (self.txn and names_in(plan.batch))
                    or plan.inject is not None
                    or (not plan.sync and any(m.t != codes.F_FLUSH for m in plan.batch))
                )
            ):
                # Pipelined after replies we relay unparsed: statement renaming may need to filter
                # replies, which is only safe from a message boundary. Send it once those are in.
                self.stalled = plan
                return
            if self.unsynced or self.pinned or not self.txn or self.tx_status != codes.TX_IDLE:
                self._send(conn, plan)
                return
            want = plan.target
            same = (want is None and conn.node == (self.ctx.registry.primary or "")) or (
                want is not None and want.node == conn.node and (want.database or self.database) == conn.database
            )
            if same:
                self._send(conn, plan)
                return
            if self.pending or self.expect:
                self.stalled = plan  # wait for the current backend to go idle, then route anew
                return
            # Idle and unpinned but still bound (flush-only batch): give it back and route anew.
            self._unbind(reusable=True)
        self.stalled = plan  # holds further messages in the buffer; reading pauses only if it grows large
        self.io.acquire(plan)  # the glue binds a server now (server_ready) or later, or answers an error

    def _answer_plan_error(self, plan: Plan, exc: HeliosError) -> None:
        if self.replay is not None and self.replay.retry_unsent(plan, exc):
            return  # issue 16: wait for a reachable server instead (session/replay.py)
        body = messages.error_response("ERROR", exc.sqlstate, exc.message)
        if plan.sync:
            body += messages.ready_for_query(self.tx_status)
        elif plan.batch is not None:
            self.skip_to_sync = True  # like a server after an error: nothing more until the Sync
        if plan.batch is not None:
            self._unrecord(plan.batch)
        if self.traffic is not None and not self.pending:
            traffic.settle(self)
        self._write(body)
        if plan.info is not None:
            accounting.record(self.ctx, plan.info, 0.0, True)

    def _continue(self) -> None:
        self._resume_reading()
        if self.buf and self.stalled is None and self.phase == READY:
            self._process()

    def _bind(self, conn: BackendConnection, pool: Pool | None) -> None:
        if self.write_paused and conn.transport is not None:
            conn.transport.pause_reading()
        self.backend = conn
        self.backend_pool = pool
        if self.compat.db is not None:
            self.compat.db.server_assignment_count += 1
        self.scanner.reset()
        self.slow = self._listening
        if self.relay.buf or self.relay.mute or self.relay.gating:
            self.relay.reset()
        self._just_bound = True
        self._fresh = None
        conn.attach(self)

    def _unbind(self, reusable: bool) -> None:
        conn = self.backend
        pool = self.backend_pool
        self.backend = None
        self.backend_pool = None
        self.unsynced = False
        if conn is not None:
            if self.write_paused and conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()  # never hand a paused connection to someone else
            self.io.release(conn, pool, reusable and not conn.poisoned)

    def _send(self, conn: BackendConnection, plan: Plan) -> None:
        if self.replay is not None and self.replay.on_send(conn, plan):
            return  # issue 16: recorded for a replay, or sent by it as a wrapped write (session/replay.py)
        continues = self.unsynced  # the server already has the start of this pipeline
        flush_only = not plan.sync and plan.batch is not None and all(m.t == codes.F_FLUSH for m in plan.batch)
        if not flush_only:  # a lone Flush (psycopg sends one after its Sync) changes nothing on the server
            self.unsynced = plan.batch is not None and not plan.sync
        if self._just_bound:
            self._just_bound = False
            self._fresh = plan
        elif self._fresh is not None:
            self._fresh = None  # more than one request on it: no longer resent as a whole
        tg = plan.target
        if (
            tg is not None
            and tg.auto
            and plan.sync
            and not continues
            and not self.pending
            and self.tx_status == codes.TX_IDLE
        ):
            self.hold, self.hold_plan = bytearray(), plan
        raw = plan.raw
        same = self.settings == conn.applied  # compared once (a dict compare), read below
        post = self.ctx.plugins.has_post_query  # an uncompiled object's attribute: read once
        if (
            raw is not None
            and plan.batch is None
            and not self.slow
            and same
            and not post
            and not (plan.info is not None and plan.info.effects & _SEND_CAREFULLY)
            and not plan.dbs
        ):
            # The common simple-protocol statement: one write, no bookkeeping beyond its Inflight.
            if plan.sync:
                self.pending += 1
                self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
            if plan.write:
                self.last_write_at = _monotonic()
            conn.write(raw)
            return
        if (
            plan.batch is not None
            and same
            and not self.slow
            and not post
            and (not self.txn or not names_in(plan.batch))
            and not (plan.info is not None and plan.info.effects & _SEND_CAREFULLY)
            and (plan.sync or flush_only)  # unsynced: later replies may need filtering (Plan.inject)
        ):
            # Nothing to rename or filter: forward the batch as the client sent it, in one write.
            if plan.sync:
                self.pending += 1
                self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
            if plan.write:
                self.last_write_at = _monotonic()
            conn.write(b"".join([m.data for m in plan.batch]))
            return
        out: list[bytes] = []
        fix: list[Expect] = []
        need_fix = False
        if not same:
            q = tracking.sync_settings_sql(self, conn)
            if q:
                out.append(messages.query(q))
                fix.append(Expect(codes.F_QUERY, HIDE))
                need_fix = True
        if plan.batch is not None:
            renamer = Renamer(conn.prepared, self.ctx.config.pool.prepared_statements_per_server, out, fix)
            renamer.batch(plan.batch, self.txn, plan.inject)
            need_fix = need_fix or renamer.hidden
        elif plan.raw is not None:
            out.append(plan.raw)
            if plan.dbs:
                fix.append(Expect(codes.F_QUERY, HOLD))
                self._held_plan = plan
                need_fix = True
            else:
                fix.append(Expect(codes.F_QUERY))
        if (
            not plan.sync
            and plan.batch is not None
            and self.txn
            and not self.pinned
            and self.tx_status == codes.TX_IDLE
            and not continues
            and not self.pending  # nothing else owed: the relay switches to filtering at a message boundary
            and not self.expect
            and all(m.t in _PREPARES_ONLY for m in plan.batch)
            and any(m.t != codes.F_FLUSH for m in plan.batch)  # not a lone Flush (psycopg after Sync)
        ):
            # Parse/Describe/Close then Flush (asyncpg prepares so): nothing runs, but the server's implicit
            # transaction stays open until a Sync. A hidden Sync ends it, so that the execution that follows
            # is routed on its own (another node, another database) like any request.
            out.append(messages.SYNC)
            gate = Expect(codes.F_SYNC, HIDE)
            gate.gate = True  # the client's next request waits for it: routed on its own, not stalled
            fix.append(gate)
            need_fix = True
            self.unsynced = False
        rb = plan.info.readback if plan.info is not None else ()
        if rb:
            if plan.sync:
                # Read the settings back right after the statement, hidden, to record what it set.
                out.append(
                    messages.query(settings_mod.readback_sql(rb))
                )
                fix.append(Expect(codes.F_QUERY, HIDE, capture=self._adopter(rb, conn)))
                need_fix = True
            else:
                tracking.pin_for(self, "set_config() before a Flush")
        if need_fix or self.slow or post or not (plan.sync or flush_only):
            if not self.slow:
                self.slow = True
                self.relay.reset()
            self.expect.extend(fix)
        if plan.sync:
            self.pending += 1
            self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
        if plan.write:
            self.last_write_at = _monotonic()
        info = plan.info
        if (
            info is not None
            and info.effects & _FORGETS
            and (info.effects & Effect.DISCARD or None in info.deallocate)
            and not self.pinned
            and self.txn
        ):
            # The server may drop every prepared statement here, shared ones included: keep it from
            # anyone else, as this session does not own it alone (what it dropped is settled at its answer).
            conn.poisoned = True
        data = b"".join(out)
        conn.write(data)
        if not out and self.slow:
            # Everything was synthesized: flush the synthetic answers now.
            self._slow_feed(conn, b"")

    # ================================================================== backend → client
    def on_backend_data(self, conn: BackendConnection, data: bytes) -> None:
        if conn is not self.backend:
            return
        fresh = self._fresh
        if fresh is not None:
            self._fresh = None
            if data[:1] == b"E" and bytes(data[5:11]) in FATAL_SEVERITY and self._can_resend(fresh):
                # The server taken from the pool was already ending (terminated while idle): its
                # FATAL is the first thing it says, so nothing ran. Send the request to another.
                self._resend_elsewhere(conn, fresh)
                return
        if self.replay is not None and data[-2:] == b"\x00\x00" and self.replay.mv.hold_fatal(conn, data):
            return  # issue 16 §2: the server is ending the session (57P01/57P02); it may move (session/move.py)
        try:
            if self.slow:
                self._slow_feed(conn, data)
                return
            statuses = self.scanner.feed(data)
            if statuses and self.cache_dirty:
                resultcache.before_ready(self, len(statuses), statuses[-1])
            self._write(data if self.replay is None else self.replay.relayed(data))  # issue 16: checksum
            for status in statuses:
                if status & ERROR_SEEN:
                    if self.inflight:
                        self.inflight[0].error = "error"
                    status &= 0xFF
                self._on_ready(conn, status)
        except Exception as exc:
            self._internal_error(exc)

    def _slow_feed(self, conn: BackendConnection, data: bytes) -> None:
        """Message-by-message relay (session/relay.py) while the server's answers must be filtered or completed."""
        relay = self.relay
        relay.status = conn.tx_status
        relay.codec = self._codec
        relay.listen_from, relay.listen_as = (conn.pid, self.pid) if self._listening else (0, 0)
        out, readies = relay.feed(data)
        conn.tx_status = relay.status
        if relay.params:
            relay.params = False
            self.scanner.params = True
        if relay.fatal:
            relay.fatal = False
            self.scanner.fatal = True
        if readies and self.cache_dirty:
            resultcache.before_ready(self, len(readies), readies[-1])
        if out:
            data_out = b"".join(out)
            self.scanner.bytes_seen += len(data_out)
            self._write(data_out if self.replay is None else self.replay.relayed(data_out))  # issue 16: checksum
        if relay.idle and not self.ctx.plugins.has_post_query and not self._listening:
            self.slow = False
            self.scanner.reset()
        for status in readies:
            self._on_ready(conn, status)
        stalled = self.stalled
        if (
            not readies
            and stalled is not None
            and (stalled.batch is not None or stalled.raw is not None)
            and not self.pending
            and not self.expect
        ):
            # A hidden request's ReadyForQuery was the last thing owed: what waited for it goes now.
            plan = self.stalled
            self.stalled = None
            self._call_soon(self._resume_stalled, plan)

    # ------------------------------------------------------------------ relay.Host
    def refuses_parse(self, st: Statement, index: int) -> bool:
        if _exits_transaction(st.sql):
            return False
        if self.statements.get(st.name) is st:
            del self.statements[st.name]
        if index < len(self.inflight):
            self.inflight[index].error = f"25P02: {ABORTED}"
        return True

    def reply_error(self, m: bytes, head: Expect | None, index: int) -> None:
        conn = self.backend
        if head is not None and head.kind == codes.F_PARSE and head.data and conn is not None:
            tracking.forget_failed(self, conn, head.data.decode(), head.client)
        if head is not None and head.action == HIDE:
            f = messages.parse_error_fields(m[5:])
            log.warning("client %s: hidden statement failed on %s: %s", self.peer, conn and conn.node, f.get("M"))
            if head.kind == codes.F_QUERY:
                return  # not the client's statement
        if index < len(self.inflight):
            f = messages.parse_error_fields(m[5:])
            self.inflight[index].error = f"{f.get('C', '')}: {f.get('M', '')}"
        if _stale_plan(m):
            self.ctx.schema_epoch += 1  # re-prepare shared statements from now on

    def statement_dropped(self, server: str) -> None:
        if self.backend is not None:
            self.backend.prepared.pop(server, None)

    def statement_prepared(self, server: str) -> None:
        self.ctx.remember_statement(server)

    def hold_done(self, held: list[bytes]) -> bool:
        plan = self._held_plan
        self._held_plan = None
        conn = self.backend
        if plan is not None and conn is not None and _busy_database(held):
            self.io.retry_after_closing(conn, plan)
            return True
        return False

    def _on_ready(self, conn: BackendConnection, status: int) -> None:
        prev = self.tx_status
        if self.compat.statement_mode and pgcompat.refuse_transaction(self, status):
            return
        if self.hold is not None and self._retry_held(conn, status):
            return
        self.tx_status = status
        conn.tx_status = status
        if self.pending:
            self.pending -= 1
        if self.traffic is not None and not self.pending:
            traffic.settle(self)
        fl = self.inflight.popleft() if self.inflight else None
        if self.cache_rec is not None:
            resultcache.finish(self, fl, conn, status)
        if fl is not None and fl.info is not None and fl.info.effects:
            if fl.info.effects & _FORGETS and (fl.error is None or fl.info.statements > 1):
                tracking.forget(self, fl.info, conn)
            if fl.info.effects & _STATE_EFFECTS and fl.error is None:
                tracking.settle(self, fl.info, conn)
        if status == codes.TX_IDLE and self._committed is not None:
            tracking.end_transaction(self, fl, conn, prev)
        if (
            self._listen_pid
            and not self._listening
            and self.pending == 0
            and not self.expect
            and (self.slow or self.scanner.at_boundary)
            and self.pid != conn.pid
        ):
            # From a message boundary on, relay message by message to give notifications our PID.
            self._listening = True
            if not self.slow:
                self.slow = True
                self.relay.reset()
        if self.scanner.params:
            self.scanner.params = False
            info = fl.info if fl is not None else None
            if info is None or not (info.effects & _REPORTING or info.tx is not None):
                tracking.pin_for(self, "the server reported a parameter change the proxy did not make")
        if (
            fl is not None
            and fl.target is None
            and self.txn
            and (fl.info is not None or self.last_write_at > self.reads.ack_at)
        ):
            self.ctx.reads.acknowledged(self.reads, fl.info, status == codes.TX_IDLE, self.database)
        if (
            status == codes.TX_IDLE
            and self.pending == 0
            and not self.expect
            and not self.unsynced
            and self.txn
            and not self.pinned
        ):
            self._unbind(reusable=True)
        if fl is not None:
            accounting.finish(self, fl, conn)
        if self.stalled is not None and self.pending == 0 and not self.expect:
            plan = self.stalled
            self.stalled = None
            self._call_soon(self._resume_stalled, plan)
        if self.held_paused:
            flow.drained(self)  # fewer statements in flight: maybe read the client again

    def _release_hold(self) -> None:
        hold = self.hold
        self.hold = self.hold_plan = None
        if hold:
            self._write(bytes(hold))

    def _retry_held(self, conn: BackendConnection, status: int) -> bool:
        """The held read is complete: rerun it on the primary if the standby refused it as a write
        (25006, nothing ran), else let its reply through. True when it was rerun."""
        hold, plan = self.hold, self.hold_plan
        if (
            hold is None
            or plan is None
            or status != codes.TX_IDLE
            or self.pending != 1
            or self.stalled is not None
            or self.pinned
            or self.expect
            or error_sqlstate(hold) != "25006"
        ):
            self._release_hold()
            return False
        self.hold = self.hold_plan = None
        self.pending = 0
        if self.inflight:
            self.inflight.popleft()
        self.tx_status = conn.tx_status = status
        self.ctx.reads.retried_read_only += 1
        log.debug("client %s: standby %s refused a read as a write (25006); rerun on the primary", self.peer, conn.node)
        self._unbind(reusable=True)
        plan.target = None
        plan.write = True
        self.stalled = plan  # holds the client's next messages until the rerun is sent
        self._call_soon(self._rerun, plan)
        return True

    def _rerun(self, plan: Plan) -> None:
        if self.stalled is plan:
            self.stalled = None
            self._resume_stalled(plan)

    def _resume_stalled(self, plan: Plan) -> None:
        if self.phase != READY:
            return
        if plan.answer is not None:
            self._write(plan.answer)
        else:
            self._dispatch(plan)
        if self.stalled is None:
            self._continue()

    def on_backend_lost(self, conn: BackendConnection, exc: Exception | None) -> None:
        """The bound server connection is gone.

        A client inside a transaction, or still owed replies, cannot go on: its transaction died
        with that server and anything sent after would run elsewhere, out of step. Its session
        ends exactly once: with the server's own FATAL when that was relayed (e.g. 57P01), else
        with FATAL 08006. Nothing is synthesized. A client with nothing in flight goes on.
        """
        if conn is not self.backend:
            return
        if self.replay is not None and self.replay.on_lost(conn):
            return  # issue 16: failover.replay goes on with a new server (session/replay.py)
        if self.hold is not None:
            self._release_hold()
        relayed_fatal = self.scanner.fatal
        owed = bool(
            self.pending
            or self.expect
            or self.inflight
            or self.tx_status != codes.TX_IDLE
            or self.unsynced
            or (self.stalled is not None and self.stalled.answer is None)
        )
        self.drop_server(conn)
        if self.phase != READY:
            return
        log.warning(
            "client %s: server connection to node %s was lost%s",
            self.peer,
            conn.node,
            f" ({exc})" if exc else "",
            extra=client_fields(self, "server_lost", node=conn.node, error=str(exc) if exc else None),
        )
        if owed or not self.txn or self.pinned:
            if relayed_fatal:
                log.info("client %s user=%s: session ended by its server", self.peer, self.user or "-")
                self._close_quietly()
            else:
                self._fatal("08006", "server connection lost")
            return
        # Nothing in flight and no transaction: the next statement gets another server.
        if self.stalled is not None:
            plan = self.stalled
            self.stalled = None
            self._call_soon(self._resume_stalled, plan)

    def drop_server(self, conn: BackendConnection) -> None:
        """The bound server connection is lost: it goes back to its pool as unusable, and nothing owed by it
        (expectations, a partial reply, an unsynced pipeline) is waited for any more."""
        self.unsynced = False
        self.backend = None
        pool = self.backend_pool
        self.backend_pool = None
        self.io.release(conn, pool, False)
        self.expect.clear()
        self.slow = False
        self.relay.reset()
        self.scanner.reset()

    def _can_resend(self, plan: Plan) -> bool:
        return (
            plan.retries < 3
            and self.txn
            and not self.pinned
            and self.tx_status == codes.TX_IDLE
            and len(self.inflight) <= 1
            and self.pending == (1 if plan.sync else 0)
        )

    def _resend_elsewhere(self, conn: BackendConnection, plan: Plan) -> None:
        log.info("client %s: server connection to %s was already gone; sending to another", self.peer, conn.node)
        self.backend = None
        pool = self.backend_pool
        self.backend_pool = None
        conn.owner = None
        conn.close()
        self.io.release(conn, pool, False)
        self.expect.clear()
        self.relay.reset()
        self.scanner.reset()
        self.slow = self._listening
        if plan.sync:
            self.pending -= 1
            if self.inflight:
                self.inflight.pop()
        plan.retries += 1
        self._dispatch(plan)

    def _close_quietly(self) -> None:
        """Close without a word (the server's own FATAL went to the client, or PostgreSQL would)."""
        if self.phase != CLOSED:
            self.io.close()
        self.phase = CLOSED
        self.buf.clear()
