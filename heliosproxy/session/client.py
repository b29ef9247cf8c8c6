"""One client connection: startup, auth, then the statement loop (classify, plugins, route, pool, relay)."""

from __future__ import annotations

import asyncio
import collections
import hmac
import inspect
import logging
import os
import struct
import time
from typing import Any, cast

from heliosproxy.backends.connection import BackendConnection, send_cancel
from heliosproxy.config.schema import AuthMethod, DatabaseRoute, PoolMode
from heliosproxy.errors import (
    BackendUnavailable,
    HeliosError,
)
from heliosproxy.plugins import hooks
from heliosproxy.pool.pool import Pool, PoolWait
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import SCRAM_MECHANISM, ScramError, ScramServer, md5_password
from heliosproxy.protocol.scan import ERROR_SEEN, ReplyScanner
from heliosproxy.routing.consistency import SessionReads, error_sqlstate
from heliosproxy.routing.router import Target
from heliosproxy.session.context import ProxyContext, QueryStat
from heliosproxy.session.prepared import Statement, server_name
from heliosproxy.sql.classify import Effect, StatementInfo, TxControl
from heliosproxy.sql.hints import Hints, parse_hints

log = logging.getLogger("heliosproxy.session")

_I = struct.Struct("!I")
_i = struct.Struct("!i")

STARTUP, AUTH, LOGIN, READY, CLOSED = range(5)
ADMIN_DATABASE = "heliosproxy"
# Startup parameters that are not session settings.
_NOT_SETTINGS = frozenset({"user", "database", "replication", "options"})
# Settings whose ParameterStatus the client expects to reflect its own startup values.
_REPORTED = frozenset({"application_name", "client_encoding", "DateStyle", "TimeZone", "IntervalStyle"})
_COMPLETES = {
    codes.F_PARSE: frozenset((codes.B_PARSE_COMPLETE,)),
    codes.F_BIND: frozenset((codes.B_BIND_COMPLETE,)),
    codes.F_CLOSE: frozenset((codes.B_CLOSE_COMPLETE,)),
    codes.F_DESCRIBE: frozenset((codes.B_ROW_DESCRIPTION, codes.B_NO_DATA)),
    codes.F_EXECUTE: frozenset((codes.B_COMMAND_COMPLETE, codes.B_EMPTY_QUERY, codes.B_PORTAL_SUSPENDED)),
    codes.F_SYNC: frozenset((codes.B_READY_FOR_QUERY,)),
    codes.F_QUERY: frozenset((codes.B_READY_FOR_QUERY,)),
    codes.F_FUNCTION_CALL: frozenset((codes.B_READY_FOR_QUERY,)),
}
_ASYNC = frozenset((codes.B_NOTICE, codes.B_NOTIFICATION, codes.B_PARAMETER_STATUS))
PASS, HIDE, SYNTH = 0, 1, 2
_HELIOS = Effect.HELIOS_SET | Effect.HELIOS_SHOW


_NAMED = frozenset((codes.F_PARSE, codes.F_BIND, codes.F_DESCRIBE, codes.F_CLOSE))


def _names_in(batch: list[tuple[int, bytes, Any]]) -> bool:
    """Does the batch refer to a named prepared statement (which transaction pooling renames)?"""
    for t, _m, dec in batch:
        if t in _NAMED:
            if t == codes.F_PARSE:
                if dec[0]:
                    return True
            elif t == codes.F_BIND:
                if dec[1]:
                    return True
            elif dec[0] == 83 and dec[1]:  # 'S': a statement, not a portal
                return True
    return False


def _apply_setting(d: dict[str, str], name: str, value: str | None, startup: dict[str, str]) -> None:
    if name == "all" and value is None:
        d.clear()
        d.update(startup)
    elif value is None:
        d.pop(name, None)
    else:
        d[name] = value


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Expect:
    """One request the backend will answer, and what to do with its answer (slow relay path)."""

    __slots__ = ("action", "data", "kind")

    def __init__(self, kind: int, action: int = PASS, data: bytes = b""):
        self.kind = kind
        self.action = action
        self.data = data


class Inflight:
    """A statement (simple Query or extended batch up to Sync) waiting for its ReadyForQuery."""

    __slots__ = ("error", "info", "qctx", "start", "start_bytes", "target")

    def __init__(
        self, info: StatementInfo | None, target: Target | None, qctx: hooks.QueryContext | None, start_bytes: int
    ):
        self.start = time.perf_counter()
        self.info = info
        self.target = target
        self.qctx = qctx
        self.start_bytes = start_bytes
        self.error: str | None = None


class Plan:
    """What to send for one client request once a backend is at hand."""

    __slots__ = ("answer", "batch", "info", "qctx", "raw", "sync", "target", "write")

    def __init__(
        self,
        target: Target | None,
        raw: bytes | None,
        batch: list[tuple[int, bytes, Any]] | None,
        info: StatementInfo | None,
        qctx: hooks.QueryContext | None,
        sync: bool,
        write: bool,
    ):
        self.target = target  # None = primary, resolved at dispatch (may wait for one)
        self.raw = raw  # simple path: bytes to forward as they are
        self.batch = batch  # extended path: (type, raw, decoded) items to rewrite per backend
        self.info = info
        self.qctx = qctx
        self.sync = sync  # expects a ReadyForQuery
        self.write = write
        self.answer: bytes | None = None  # set: a proxy answer to write once earlier replies are in

    @classmethod
    def deferred(cls, answer: bytes | None) -> Plan:
        plan = cls(None, None, None, None, None, False, False)
        plan.answer = answer
        return plan


class ClientSession(asyncio.Protocol):
    """A client connection, driven by asyncio callbacks: no task per message, one write per batch."""

    def __init__(self, ctx: ProxyContext):
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.phase = STARTUP
        self.user = ""
        self.database = ""
        self.app_name = ""
        self.startup: dict[str, str] = {}
        self.settings: dict[str, str] = {}  # session GUCs the client set (startup params, SET)
        self.startup_settings: dict[str, str] = {}  # what RESET goes back to
        self.attrs: dict[str, str] = {}  # helios.* attributes (SET helios.tenant = ...), seen by plugins
        self.tx_settings: dict[str, str | None] = {}  # SETs inside the open transaction
        self.route_pref: str | None = None  # SET helios.route
        self.node_pref: str | None = None  # SET helios.node
        self.branch_pref: str | None = None  # SET helios.branch / database DB@BRANCH
        self.identity: str | None = None
        self.admin = False
        self.pid = 0
        self.key = 0
        self.client_id = ""
        self.mode = PoolMode.TRANSACTION
        self.backend: BackendConnection | None = None
        self.backend_pool: Pool | None = None
        self.pinned = False
        self.pending = 0  # ReadyForQuery messages still owed by the backend
        self.tx_status = codes.TX_IDLE
        self.stalled: Plan | None = None  # waiting for a backend or for the current one to go idle
        self.scanner = ReplyScanner()
        self.expect: collections.deque[Expect] = collections.deque()
        self.slow = False
        self.rbuf = bytearray()
        self.batch: list[tuple[int, bytes, Any]] = []
        self.skip_to_sync = False  # an extended-protocol error was answered: ignore messages until Sync
        self.statements: dict[str, Statement] = {}
        self.unnamed: Statement | None = None
        self.inflight: collections.deque[Inflight] = collections.deque()
        self.request_seq = 0
        self.hook_ctx: hooks.HookContext | None = None
        self.last_write_at = 0.0
        self.connected_at = time.time()
        self._auth_kind = ""
        self._md5_salt = b""
        self._scram: ScramServer | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._write_paused = False
        self._pool_wait: PoolWait | None = None
        self._pools: dict[tuple[str, str | None], Pool] = {}
        self._processing = False
        self._closing = False
        self.query_count = 0
        self.reads = SessionReads()  # routing.consistency state (issue 11)
        self.db_route = DatabaseRoute.AUTO  # databases: ALIAS route
        self.hold: bytearray | None = None  # an auto-routed standby read's reply, held until its ReadyForQuery
        self.hold_plan: Plan | None = None

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        transport.set_write_buffer_limits(high=512 * 1024)
        ctx = self.ctx
        ctx.counters.clients_total += 1
        if len(ctx.clients) >= ctx.config.max_client_connections or ctx.shutting_down:
            ctx.counters.clients_refused += 1
            reason = "the proxy is shutting down" if ctx.shutting_down else "too many client connections"
            sqlstate = "57P03" if ctx.shutting_down else "53300"
            log.warning("refused connection from %s: %s", self.peer, reason)
            transport.write(messages.error_response("FATAL", sqlstate, f"sorry, {reason}"))
            transport.close()
            self.phase = CLOSED
            return
        ctx.clients.add(self)
        self._login_timer = asyncio.get_running_loop().call_later(ctx.config.client_login_timeout, self._login_timeout)

    def data_received(self, data: bytes) -> None:
        self.ctx.counters.bytes_in += len(data)
        self.buf += data
        phase = self.phase
        if phase == READY:
            if self.stalled is None:
                self._process()
            elif len(self.buf) > 1 << 20:
                self._pause_reading()  # waiting for a server: bound what we hold for this client
        elif phase == STARTUP:
            self._on_startup()
        elif phase == AUTH:
            self._on_auth()
        elif len(self.buf) > 65536:
            self._pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        prev = self.phase
        self.phase = CLOSED
        ctx = self.ctx
        ctx.clients.discard(self)
        ctx.cancel_keys.pop((self.pid, self.key), None)
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self._pool_wait is not None:
            self._pool_wait.cancel()
            self._pool_wait = None
        conn = self.backend
        if conn is not None:
            self.backend = None
            conn.owner = None
            if self._write_paused and conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()
            pool = self.backend_pool
            busy = self.pending > 0 or self.tx_status != codes.TX_IDLE or bool(self.expect)
            if busy:
                # Leave no running query behind: cancel it, then drop the connection.
                if not conn.closed:
                    asyncio.get_running_loop().create_task(self._cancel_and_close(conn, pool))
            elif pool is not None:
                if self.mode is PoolMode.SESSION or self.pinned:
                    asyncio.get_running_loop().create_task(pool.reset_and_release(conn, ctx.config.pool.reset_query))
                else:
                    pool.release(conn)
        if prev >= READY and self.hook_ctx is not None and ctx.plugins.has_connect:
            ctx.plugins.on_disconnect(self.hook_ctx)
        if prev >= LOGIN:
            log.info(
                "client %s user=%s db=%s closed%s",
                self.peer,
                self.user,
                self.database,
                f" ({exc})" if exc else "",
            )

    def pause_writing(self) -> None:
        # The client reads slower than the backend sends: stop reading the backend (bounded memory).
        self._write_paused = True
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.resume_reading()

    # ================================================================== helpers
    def _write(self, data: bytes) -> None:
        if self.hold is not None:
            self.hold += data
            if len(self.hold) > 65536:
                self._release_hold()
            return
        if self.transport is not None and self.phase != CLOSED:
            self.ctx.counters.bytes_out += len(data)
            self.transport.write(data)

    def _fatal(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        log.info("client %s user=%s: FATAL %s %s", self.peer, self.user or "-", sqlstate, message)
        if self.transport is not None and self.phase != CLOSED:
            self.transport.write(messages.error_response("FATAL", sqlstate, message, detail))
            self.transport.close()
        self.phase = CLOSED
        self.buf.clear()

    def _violation(self, message: str) -> None:
        self.ctx.counters.protocol_errors += 1
        self._fatal("08P01", message)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and self.phase != CLOSED:
            self._reading_paused = False
            self.transport.resume_reading()

    def _login_timeout(self) -> None:
        if self.phase < READY:
            self._fatal("08006", "client login timed out")

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

    # ================================================================== startup
    def _on_startup(self) -> None:
        buf = self.buf
        while self.phase == STARTUP and len(buf) >= 4:
            length = _I.unpack_from(buf, 0)[0]
            if length < 8 or length > codes.MAX_STARTUP_PACKET:
                self._violation("invalid length of startup packet")
                return
            if len(buf) < length:
                return
            body = bytes(buf[4:length])
            del buf[:length]
            code = _I.unpack_from(body, 0)[0]
            if code in (codes.SSL_REQUEST, codes.GSSENC_REQUEST):
                self._write(b"N")
                continue
            if code == codes.CANCEL_REQUEST:
                self._on_cancel_request(body)
                return
            if code >> 16 != 3:
                self._fatal(
                    "0A000",
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0",
                )
                return
            try:
                _, params = messages.decode_startup(_I.pack(codes.PROTOCOL_3_0) + body[4:])
            except (ValueError, UnicodeDecodeError):
                self._violation("invalid startup packet layout: expected terminator as last byte")
                return
            unsupported = [k for k in params if k.startswith("_pq_.")]
            if code & 0xFFFF or unsupported:
                payload = _I.pack(codes.PROTOCOL_3_0) + _I.pack(len(unsupported))
                payload += b"".join(messages.cstr(k) for k in unsupported)
                self._write(messages.msg(codes.B_NEGOTIATE_VERSION, payload))
                for k in unsupported:
                    params.pop(k)
            self._on_startup_message(params)
            return

    def _on_startup_message(self, params: dict[str, str]) -> None:
        user = params.get("user", "")
        if not user:
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        if params.get("replication") not in (None, "false", "0", "off", "no"):
            self._fatal("08P01", "replication connections are not supported by the proxy")
            return
        self.user = user
        self.database = params.get("database") or user
        self.app_name = params.get("application_name", "")
        self.startup = params
        for k, v in params.items():
            if k not in _NOT_SETTINGS:
                self._startup_setting(k, v)
        opts = params.get("options", "")
        if opts:
            self._parse_options(opts)
        self.phase = AUTH
        ctx = self.ctx
        ucfg = ctx.config.user(user)
        if ctx.plugins.has_auth:
            self._auth_kind = "plugin"
            self._write(messages.auth_request(codes.AUTH_CLEARTEXT))
            return
        method = ctx.config.auth.method
        if method is AuthMethod.TRUST:
            if ucfg is None:
                self._auth_failed()
                return
            self._authenticated()
        elif method is AuthMethod.MD5:
            self._auth_kind = "md5"
            self._md5_salt = os.urandom(4)
            self._write(messages.auth_request(codes.AUTH_MD5, self._md5_salt))
        else:
            self._auth_kind = "scram1"
            self._scram = ScramServer(ctx.scram_secret(user))
            self._write(messages.auth_request(codes.AUTH_SASL, messages.cstr(SCRAM_MECHANISM) + b"\x00"))

    def _parse_options(self, opts: str) -> None:
        parts = opts.replace("\\ ", "\x00").split()
        i = 0
        while i < len(parts):
            p = parts[i].replace("\x00", " ")
            item: str | None = None
            if p == "-c" and i + 1 < len(parts):
                item = parts[i + 1].replace("\x00", " ")
                i += 1
            elif p.startswith("-c") or p.startswith("--"):
                item = p[2:]
            if item and "=" in item:
                k, v = item.split("=", 1)
                self._startup_setting(k.strip().replace("-", "_"), v)
            i += 1

    def _startup_setting(self, name: str, value: str) -> None:
        low = name.lower()
        if low.startswith("helios."):
            self.attrs[low[7:]] = value
        else:
            self.settings[low] = value
            self.startup_settings[low] = value

    # ================================================================== authentication
    def _auth_failed(self) -> None:
        self.ctx.counters.login_failures += 1
        self._fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _on_auth(self) -> None:
        buf = self.buf
        while self.phase == AUTH and len(buf) >= 5:
            t = buf[0]
            length = _I.unpack_from(buf, 1)[0]
            if t != codes.F_PASSWORD:
                self._violation(f"expected password response, got message type {chr(t)!r}")
                return
            if length < 4 or length > codes.MAX_STARTUP_PACKET:
                self._violation("invalid password packet size")
                return
            if len(buf) < length + 1:
                return
            body = bytes(buf[5 : length + 1])
            del buf[: length + 1]
            self._auth_step(body)

    def _auth_step(self, body: bytes) -> None:
        kind = self._auth_kind
        ctx = self.ctx
        ucfg = ctx.config.user(self.user)
        if kind == "md5":
            ok = (
                ucfg is not None
                and ucfg.password is not None
                and hmac.compare_digest(body.rstrip(b"\x00"), md5_password(self.user, ucfg.password, self._md5_salt))
            )
            if ok:
                self._authenticated()
            else:
                self._auth_failed()
        elif kind == "scram1":
            assert self._scram is not None
            try:
                end = body.index(b"\x00")
                mech = body[:end].decode()
                if mech != SCRAM_MECHANISM:
                    self._fatal("28000", f"client selected an invalid SASL authentication mechanism {mech!r}")
                    return
                dlen = _i.unpack_from(body, end + 1)[0]
                data = body[end + 5 : end + 5 + dlen] if dlen >= 0 else b""
                reply = self._scram.handle_first(data)
            except (ValueError, struct.error):
                self._violation("malformed SCRAM message")
                return
            except ScramError as exc:
                self._violation(str(exc))
                return
            self._auth_kind = "scram2"
            self._write(messages.auth_request(codes.AUTH_SASL_CONTINUE, reply))
        elif kind == "scram2":
            assert self._scram is not None
            try:
                final = self._scram.handle_final(body)
            except ScramError as exc:
                self._violation(str(exc))
                return
            if final is None:
                self._auth_failed()
                return
            self._write(messages.auth_request(codes.AUTH_SASL_FINAL, final))
            self._authenticated()
        elif kind == "plugin":
            password = body.rstrip(b"\x00").decode(errors="replace")
            hook_ctx = self._make_hook_ctx()
            result = ctx.plugins.authenticate(hook_ctx, self.user, self.database, self.peer, password)
            if isinstance(result, hooks.AuthSuccess):
                ident = result.identity.get("name") if isinstance(result.identity, dict) else None
                self.identity = str(ident) if ident is not None else self.user
                self._authenticated()
            elif isinstance(result, hooks.AuthDenied):
                self.ctx.counters.login_failures += 1
                self._fatal("28000", result.reason or f'authentication denied for user "{self.user}"')
            else:
                method = ctx.config.auth.method
                ok = ucfg is not None and (
                    method is AuthMethod.TRUST
                    or (ucfg.password is not None and hmac.compare_digest(password.encode(), ucfg.password.encode()))
                )
                if ok:
                    self._authenticated()
                else:
                    self._auth_failed()
        else:
            self._violation("unexpected password message")

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

    def _authenticated(self) -> None:
        self.phase = LOGIN
        self._pause_reading()
        asyncio.get_running_loop().create_task(self._finish_login())

    async def _finish_login(self) -> None:
        ctx = self.ctx
        try:
            if self.database == ADMIN_DATABASE:
                if self.user not in ctx.config.admin.users:
                    self._fatal("42501", f'user "{self.user}" is not an admin of the proxy')
                    return
                self.admin = True
                self.pid, self.key = ctx.new_key()
                params = {
                    "server_version": "15.0 (heliosproxy)",
                    "client_encoding": "UTF8",
                    "server_encoding": "UTF8",
                    "DateStyle": "ISO, MDY",
                    "integer_datetimes": "on",
                    "standard_conforming_strings": "on",
                    "application_name": self.app_name,
                }
            else:
                if "@" in self.database:
                    db, _, branch = self.database.rpartition("@")
                    if ctx.config.branch(branch) is None:
                        self._fatal("3D000", f'branch "{branch}" does not exist')
                        return
                    self.branch_pref = branch
                    self.database = db or self.database
                self.mode = ctx.pools.mode_for(self.user)
                alias = ctx.config.database(self.database)
                if alias is not None:
                    self.db_route, self.database = alias.route, alias.dbname
                    if alias.route is DatabaseRoute.STANDBY:
                        self._startup_setting("default_transaction_read_only", "on")
                if self.branch_pref:
                    target = ctx.router.branch(self.branch_pref)
                else:
                    t = ctx.reads.login_target(self.db_route, self.mode)
                    target = t if t is not None else await self._resolve(None, write=True)
                    dbs = {k.database for k in ctx.pools.pools}
                    await ctx.reads.admit_database(self.database, self.user, dbs, len(ctx.pools.pools))
                pool = ctx.pools.get(target.node, target.database or self.database, self.user)
                if self.mode is PoolMode.SESSION:
                    conn = await pool.acquire()
                    self._bind(conn, pool)
                    self.pid, self.key = conn.pid, ctx.new_key()[1]
                    params = dict(conn.params)
                else:
                    if not pool.server_params:
                        conn = await pool.acquire()
                        pool.release(conn)
                    self.pid, self.key = ctx.new_key()
                    params = dict(pool.server_params)
                for k, v in self.startup.items():
                    if k in _REPORTED or k.lower() in ("application_name",):
                        params[k] = v
                params.update(ctx.reads.reported_params(self.db_route))
        except HeliosError as exc:
            self.ctx.counters.login_failures += 1
            self._fatal(exc.sqlstate, exc.message)
            return
        except Exception as exc:  # never leave a client hanging at login
            log.error("client %s user=%s: login failed: %r", self.peer, self.user, exc)
            self._fatal("08006", f"cannot get a server connection: {exc}")
            return
        if self.phase == CLOSED:
            if self.backend is not None and self.backend_pool is not None:
                conn, self.backend = self.backend, None
                await self.backend_pool.reset_and_release(conn, ctx.config.pool.reset_query)
            return
        self.client_id = f"c{self.pid:x}"
        ctx.cancel_keys[(self.pid, self.key)] = self
        out = [messages.AUTH_OK_MSG]
        out.extend(messages.parameter_status(k, v) for k, v in params.items())
        out.append(messages.backend_key_data(self.pid, self.key))
        out.append(messages.READY_IDLE)
        self._write(b"".join(out))
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        self.phase = READY
        self.hook_ctx = self._make_hook_ctx()
        if ctx.plugins.has_connect:
            ctx.plugins.on_connect(self.hook_ctx)
        log.info(
            "client %s user=%s db=%s connected (%s mode)",
            self.peer,
            self.user,
            self.database,
            "admin" if self.admin else self.mode.value,
        )
        self._resume_reading()
        if self.buf:
            self._process()

    # ================================================================== cancel
    def _on_cancel_request(self, body: bytes) -> None:
        if len(body) < 12:
            self._violation("invalid cancel request")
            return
        pid, key = struct.unpack_from("!II", body, 4)
        self.phase = CLOSED
        if self.transport is not None:
            self.transport.close()
        target = self.ctx.cancel_keys.get((pid, key))
        if target is None:
            if self.ctx.on_cancel_miss is not None:
                self.ctx.on_cancel_miss(pid, key)
            return
        target.cancel_running()

    def cancel_running(self) -> None:
        """Cancel the statement this client is running, on the backend running it (if any)."""
        conn = self.backend
        if conn is None or (self.pending == 0 and not self.expect):
            return
        asyncio.get_running_loop().create_task(send_cancel(conn.host, conn.port, conn.pid, conn.secret_key))

    async def _cancel_and_close(self, conn: BackendConnection, pool: Pool | None) -> None:
        try:
            await send_cancel(conn.host, conn.port, conn.pid, conn.secret_key)
        finally:
            conn.close()
            if pool is not None:
                pool.release(conn, reusable=False)

    # ================================================================== the statement loop
    def _process(self) -> None:
        """Consume complete frontend messages from the buffer until one has to wait."""
        if self._processing:
            return
        self._processing = True
        try:
            self._process_inner()
        finally:
            self._processing = False

    def _process_inner(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        max_size = self.ctx.config.max_message_size
        unpack = _I.unpack_from
        try:
            while n - pos >= 5 and self.stalled is None and self.phase == READY:
                t = buf[pos]
                length = unpack(buf, pos + 1)[0]
                if t not in codes.FRONTEND_TYPES or t == codes.F_PASSWORD:
                    self._violation(f"invalid frontend message type {t}")
                    return
                if length < 4:
                    self._violation("invalid message length")
                    return
                if length > max_size:
                    self._violation(f"message of {length} bytes exceeds max_message_size ({max_size})")
                    return
                end = pos + 1 + length
                if end > n:
                    break
                if t == codes.F_COPY_DATA or t == codes.F_COPY_DONE or t == codes.F_COPY_FAIL:
                    # COPY FROM STDIN: forward runs of copy messages in one write.
                    start = pos
                    pos = end
                    while n - pos >= 5 and buf[pos] in (codes.F_COPY_DATA, codes.F_COPY_DONE, codes.F_COPY_FAIL):
                        ln = unpack(buf, pos + 1)[0]
                        if ln < 4 or ln > max_size or pos + 1 + ln > n:
                            break
                        pos += 1 + ln
                    if self.backend is not None:
                        self.backend.write(bytes(buf[start:pos]))
                    continue
                msg = bytes(buf[pos:end])
                pos = end
                if t == codes.F_QUERY:
                    self._on_query(msg)
                elif t == codes.F_TERMINATE:
                    self.phase = CLOSED
                    if self.transport is not None:
                        self.transport.close()
                    return
                elif self.skip_to_sync:
                    if t == codes.F_SYNC:
                        self.skip_to_sync = False
                        self.batch.clear()
                        self._answer(b"")
                elif t == codes.F_SYNC or t == codes.F_FLUSH:
                    self.batch.append((t, msg, None))
                    self._on_batch_end(t == codes.F_SYNC)
                elif t == codes.F_FUNCTION_CALL:
                    self._dispatch(Plan(None, msg, None, None, None, True, True))
                else:
                    self._on_extended(t, msg)
                    if len(self.batch) > 10_000:
                        self._violation("too many extended-protocol messages without Sync")
                        return
        finally:
            if pos:
                del buf[:pos]
        if self.stalled is not None and len(buf) > max_size:
            self._pause_reading()

    # ------------------------------------------------------------------ simple query
    def _on_query(self, msg: bytes) -> None:
        self.query_count += 1
        try:
            sql = msg[5:-1].decode()
        except UnicodeDecodeError:
            self._answer_error("22021", 'invalid byte sequence for encoding "UTF8"')
            return
        if self.admin:
            self._admin_query(sql)
            return
        ctx = self.ctx
        info = ctx.classifier.classify(sql)
        effects = info.effects
        if effects and effects & _HELIOS:
            if info.statements != 1:
                self._answer_error("0A000", "SET/SHOW helios.* must be sent as a statement of its own")
                return
            self._helios_statement(info, sql)
            return
        qctx: hooks.QueryContext | None = None
        plugins = ctx.plugins
        hints = parse_hints(sql) if "helios:" in sql else None
        if plugins.has_pre_query or plugins.has_route or plugins.has_post_query:
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
                        info = ctx.classifier.classify(sql)
                        msg = messages.query(sql)
                        qctx = self._query_ctx(sql, info)
        try:
            target = self._route(info, hints, qctx, info.read_only)
        except HeliosError as exc:
            self._answer_error(exc.sqlstate, exc.message)
            return
        self._track_effects(info)
        write = not info.read_only
        self._dispatch(Plan(target, msg, None, info, qctx, True, write))

    def _query_ctx(self, sql: str, info: StatementInfo) -> hooks.QueryContext:
        self.request_seq += 1
        base = self.hook_ctx or self._make_hook_ctx()
        hc = hooks.HookContext(
            request_id=f"{self.client_id}-{self.request_seq}",
            client_id=base.client_id,
            identity=base.identity,
            database=base.database,
            branch=self.branch_pref,
            attributes=base.attributes,
        )
        return hooks.QueryContext(
            query=sql,
            normalized=info.normalized,
            tables=list(info.tables),
            is_read_only=info.read_only,
            hook_context=hc,
        )

    def _route(
        self, info: StatementInfo, hints: Hints | None, qctx: hooks.QueryContext | None, read_only: bool
    ) -> Target | None:
        """Plugin route hook, hint, session SET, then classification. None = primary (resolved later)."""
        ctx = self.ctx
        router = ctx.router
        if self.db_route is not DatabaseRoute.AUTO:  # databases: ALIAS with route primary | standby
            return router.read_target() if self.db_route is DatabaseRoute.STANDBY else None
        if qctx is not None and ctx.plugins.has_route:
            r = ctx.plugins.route(qctx)
            if not isinstance(r, hooks.RouteDefault):
                if isinstance(r, hooks.RoutePrimary):
                    return None
                if isinstance(r, hooks.RouteStandby):
                    return router.read_target()
                if isinstance(r, hooks.RouteNode):
                    return router.node(r.name)
                if isinstance(r, hooks.RouteBranch):
                    return router.branch(r.name)
                if isinstance(r, hooks.RouteBlock):
                    raise HeliosError(r.reason, sqlstate="42000")
        if hints is not None and (hints.route or hints.node or hints.branch):
            if hints.branch:
                return router.branch(hints.branch)
            if hints.node:
                return router.node(hints.node)
            if hints.route == "primary":
                return None
            if hints.route == "standby":
                return router.read_target(hints.lag_ms)
        if self.branch_pref:
            return router.branch(self.branch_pref)
        if self.node_pref:
            return router.node(self.node_pref)
        if self.route_pref == "primary":
            return None
        if self.route_pref == "standby" and info.tx is None:
            return router.read_target()
        tx = info.tx
        if tx is not None:
            if tx is TxControl.BEGIN_READ_ONLY and router.routing.read_write_split:
                return ctx.reads.read_target(self.reads, self.last_write_at, info, self.database, self.user, None)
            return None
        if read_only and router.routing.read_write_split and self.mode is PoolMode.TRANSACTION:
            lag = hints.lag_ms if hints else None
            if self.tx_status != codes.TX_IDLE:
                return router.read_target(lag)  # runs where the transaction began
            return ctx.reads.read_target(self.reads, self.last_write_at, info, self.database, self.user, lag)
        return None

    def _track_effects(self, info: StatementInfo) -> None:
        effects = info.effects
        if not effects:
            return
        if info.settings and effects & (Effect.SET | Effect.RESET):
            in_tx = self.tx_status != codes.TX_IDLE or info.tx in (TxControl.BEGIN, TxControl.BEGIN_READ_ONLY)
            for name, value, is_local in info.settings:
                if is_local or name.startswith("helios."):
                    continue
                if value is None:
                    # RESET goes back to what the client asked for at startup, as on a direct connection.
                    value = self.startup_settings.get(name) if name != "all" else None
                if in_tx:
                    self.tx_settings[name] = value
                else:
                    _apply_setting(self.settings, name, value, self.startup_settings)
        if effects & Effect.DISCARD:
            self.settings = dict(self.startup_settings)
        if info.pins and not self.pinned and self.mode is PoolMode.TRANSACTION:
            self.pinned = True
            log.debug("client %s pinned to its server connection (%s)", self.peer, ",".join(info.kinds))
        if effects & Effect.PREPARE and self.mode is PoolMode.TRANSACTION and not self.pinned:
            # SQL-level PREPARE lives on one backend: keep it for the session.
            self.pinned = True
            log.debug("client %s pinned to its server connection (SQL PREPARE)", self.peer)

    # ------------------------------------------------------------------ SET/SHOW helios.*
    def _helios_statement(self, info: StatementInfo, sql: str) -> None:
        name, value, _ = info.settings[0] if info.settings else ("helios.route", None, False)
        key = name[len("helios.") :]
        if info.effects & Effect.HELIOS_SHOW:
            cur = {"route": self.route_pref or "auto", "node": self.node_pref or "", "branch": self.branch_pref or ""}
            cur.update(self.attrs)
            if key not in cur:
                self._answer_error("42704", f'unrecognized configuration parameter "{name}"')
                return
            rows = messages.row_description([name]) + messages.data_row([cur[key]])
            self._answer(rows + messages.command_complete("SHOW"))
            return
        v = (value or "").strip().strip("'\"") or None
        try:
            if key == "route":
                if v not in (None, "primary", "standby", "auto"):
                    self._answer_error(
                        "22023",
                        f'invalid value for parameter "helios.route": "{v}"',
                    )
                    return
                self.route_pref = None if v in (None, "auto") else v
            elif key == "node":
                if v is not None:
                    self.ctx.router.node(v)
                self.node_pref = v
            elif key == "branch":
                if v is not None:
                    self.ctx.router.branch(v)
                self.branch_pref = v
            elif v is None:
                self.attrs.pop(key, None)
            else:
                self.attrs[key] = v
        except HeliosError as exc:
            self._answer_error(exc.sqlstate, exc.message)
            return
        tag = "RESET" if sql.lstrip().upper().startswith("RESET") else "SET"
        self._answer(messages.command_complete(tag))

    # ------------------------------------------------------------------ answers from the proxy itself
    def _answer(self, body: bytes) -> None:
        """Respond to a Query without a backend: body, then ReadyForQuery (after anything pending)."""
        if self.pending or self.expect:
            self.stalled = Plan.deferred(body + messages.ready_for_query(self.tx_status))
            return
        self._write(body + messages.ready_for_query(self.tx_status))

    def _answer_error(self, sqlstate: str, message: str) -> None:
        conn = self.backend
        if conn is not None and self.tx_status == codes.TX_IN_BLOCK and not self.admin:
            # Inside a transaction the server must fail it too, or a later COMMIT would commit.
            tag = "hp" + os.urandom(4).hex()
            sql = (
                f"DO ${tag}$BEGIN RAISE EXCEPTION USING ERRCODE = {_quote(sqlstate)}, "
                f"MESSAGE = {_quote(message)}; END${tag}$"
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

    def _admin_query(self, sql: str) -> None:
        admin = self.ctx.admin
        if admin is None:
            self._answer_error("0A000", "the admin console is not available")
            return
        try:
            body = admin.execute(sql, self)
        except HeliosError as exc:
            self._answer_error(exc.sqlstate, exc.message)
            return
        if inspect.isawaitable(body):
            # Gathered from every worker: hold the client's next messages until it is written.
            self.stalled = Plan.deferred(None)
            self._pause_reading()
            asyncio.get_running_loop().create_task(self._admin_async(body))
            return
        if body is not None:
            self._write(body + messages.READY_IDLE)

    async def _admin_async(self, pending: Any) -> None:
        try:
            body = await pending
        except HeliosError as exc:
            body = messages.error_response("ERROR", exc.sqlstate, exc.message)
        self.stalled = None
        self._write(body + messages.READY_IDLE)
        self._continue()

    # ------------------------------------------------------------------ extended protocol
    def _on_extended(self, t: int, msg: bytes) -> None:
        decoded: Any = None
        if t == codes.F_PARSE:
            name, p = messages.read_cstr(msg, 5)
            sql, p2 = messages.read_cstr(msg, p)
            decoded = (name, sql, msg[p2:])
        elif t == codes.F_BIND:
            portal, p = messages.read_cstr(msg, 5)
            stmt, p2 = messages.read_cstr(msg, p)
            decoded = (portal, stmt, p2)
        elif t == codes.F_DESCRIBE or t == codes.F_CLOSE:
            decoded = (msg[5], messages.read_cstr(msg, 6)[0])
        self.batch.append((t, msg, decoded))

    def _on_batch_end(self, sync: bool) -> None:
        batch = self.batch
        self.batch = []
        if self.admin:
            self._admin_batch(batch)
            return
        if len(batch) == 1 and self.backend is None and not self.pending:
            if sync:
                self._write(messages.ready_for_query(self.tx_status))
            return
        ctx = self.ctx
        plugins = ctx.plugins
        want_ctx = plugins.has_pre_query or plugins.has_route or plugins.has_post_query
        read_only = True
        any_stmt = False
        info: StatementInfo | None = None
        hints: Hints | None = None
        qctx: hooks.QueryContext | None = None
        rename = self.mode is PoolMode.TRANSACTION
        for i, (t, msg, dec) in enumerate(batch):
            if t == codes.F_PARSE:
                name, sql, tail = dec
                if name and rename and name in self.statements:
                    self._batch_error(batch, "42P05", f'prepared statement "{name}" already exists', sync)
                    return
                sinfo = ctx.classifier.classify(sql)
                verdict: hooks.Cached | None = None
                if sinfo.effects and sinfo.effects & _HELIOS:
                    self._batch_error(batch, "0A000", "SET/SHOW helios.* must be sent as a simple query", sync)
                    return
                if plugins.has_pre_query:
                    pctx = self._query_ctx(sql, sinfo)
                    res = plugins.pre_query(pctx)
                    if isinstance(res, hooks.Block):
                        self._batch_error(batch, "42000", res.reason, sync)
                        return
                    if isinstance(res, hooks.Rewrite):
                        sql = res.query
                        sinfo = ctx.classifier.classify(sql)
                        msg = messages.parse(name, sql, tail)
                        batch[i] = (t, msg, (name, sql, tail))
                    elif isinstance(res, hooks.Cached):
                        verdict = res
                st = Statement(name, sql, tail, sinfo, server_name(sql, tail), parse_hints(sql), verdict)
                if name:
                    self.statements[name] = st
                else:
                    self.unnamed = st
                if verdict is not None:
                    self._batch_cached(batch, st, sync)
                    return
                self._track_effects(sinfo)
            elif t == codes.F_BIND:
                stmt_name = dec[1]
                st2 = self.statements.get(stmt_name) if stmt_name else self.unnamed
                if st2 is None:
                    read_only = False  # unknown to us: the server answers for it (26000)
                    continue
                if st2.cached is not None:
                    self._batch_cached(batch, st2, sync)
                    return
                any_stmt = True
                info = st2.info
                read_only = read_only and st2.info.read_only
                if st2.hints is not None:
                    hints = st2.hints
                if want_ctx:
                    qctx = self._query_ctx(st2.sql, st2.info)
            elif t == codes.F_DESCRIBE and dec[0] == ord("S"):
                st3 = self.statements.get(dec[1]) if dec[1] else self.unnamed
                if st3 is not None and st3.cached is not None and not any_stmt:
                    self._batch_cached(batch, st3, sync)
                    return
        if not any_stmt:
            # Parse/Describe/Close only: nothing executes, any node that knows the statement will do.
            read_only = all(t != codes.F_EXECUTE for t, _m, _d in batch)
            if self.backend is None and not self.pending and rename and self._local_batch(batch, sync):
                return
        try:
            target = self._route(info, hints, qctx, read_only) if info is not None else None
        except HeliosError as exc:
            self._batch_error(batch, exc.sqlstate, exc.message, sync)
            return
        self._dispatch(Plan(target, None, batch, info, qctx, sync, not read_only))

    def _local_batch(self, batch: list[tuple[int, bytes, Any]], sync: bool) -> bool:
        """Answer Parse/Close of named statements without a backend when the server side is known.

        A Parse whose text every backend already accepted once (same text and types) needs no
        server round trip: the statement is prepared lazily where the client's Bind lands. This
        also keeps clients that prepare synchronously (pgbench -M prepared) from waiting for a
        backend while holding none."""
        known = self.ctx.known_statements
        out: list[bytes] = []
        for t, _msg, dec in batch:
            if t == codes.F_PARSE and dec[0]:
                st = self.statements.get(dec[0])
                if st is None or st.server not in known:
                    return False
                out.append(messages.PARSE_COMPLETE)
            elif t == codes.F_CLOSE and dec[0] == ord("S") and dec[1]:
                self.statements.pop(dec[1], None)
                out.append(messages.CLOSE_COMPLETE)
            elif t != codes.F_SYNC and t != codes.F_FLUSH:
                return False
        if sync:
            out.append(messages.ready_for_query(self.tx_status))
        self._write(b"".join(out))
        return True

    def _batch_error(self, batch: list[tuple[int, bytes, Any]], sqlstate: str, message: str, sync: bool) -> None:
        """Answer a batch that must not run: the error, then (at Sync) ReadyForQuery, like a server."""
        if sync:
            self._answer_error(sqlstate, message)
            return
        # Flush, not Sync: like a server, send the error now and ignore messages until the Sync.
        body = messages.error_response("ERROR", sqlstate, message)
        if self.pending or self.expect:
            self.stalled = Plan.deferred(body)
        else:
            self._write(body)
        self.skip_to_sync = True

    def _batch_cached(self, batch: list[tuple[int, bytes, Any]], st: Statement, sync: bool) -> None:
        """Answer a batch about a statement a plugin answered from cache, as a server would."""
        res = st.cached
        assert res is not None
        nparams = st.param_count()
        out: list[bytes] = []
        for t, _msg, dec in batch:
            if t == codes.F_PARSE:
                out.append(messages.PARSE_COMPLETE)
            elif t == codes.F_BIND:
                out.append(messages.BIND_COMPLETE)
            elif t == codes.F_DESCRIBE:
                if dec[0] == ord("S"):
                    out.append(messages.parameter_description([25] * nparams))
                out.append(messages.row_description(res.columns))
            elif t == codes.F_EXECUTE:
                rs = messages.result_set(res.columns, res.rows)
                out.append(rs[len(messages.row_description(res.columns)) :])
            elif t == codes.F_CLOSE:
                if dec[0] == ord("S") and dec[1]:
                    self.statements.pop(dec[1], None)
                out.append(messages.CLOSE_COMPLETE)
        body = b"".join(out)
        if sync:
            self._answer(body)
        else:
            self._write(body)

    def _admin_batch(self, batch: list[tuple[int, bytes, Any]]) -> None:
        sql = next((d[1] for t, _m, d in batch if t == codes.F_PARSE), None)
        out: list[bytes] = []
        if sql is not None and self.ctx.admin is not None:
            try:
                body = self.ctx.admin.execute_local(sql, self) or b""
                out.append(messages.PARSE_COMPLETE + messages.BIND_COMPLETE + body)
            except HeliosError as exc:
                out.append(messages.error_response("ERROR", exc.sqlstate, exc.message))
        if batch and batch[-1][0] == codes.F_SYNC:
            out.append(messages.READY_IDLE)
        self._write(b"".join(out))

    # ================================================================== dispatch to a backend
    def _dispatch(self, plan: Plan) -> None:
        """Send a plan on the bound backend, or get one (synchronously when the pool has an idle one)."""
        if self.hold is not None:
            self._release_hold()  # another request follows: no rerun may reorder them
        conn = self.backend
        if conn is not None:
            if (
                self.pending
                and not self.slow
                and plan.batch is not None
                and self.mode is PoolMode.TRANSACTION
                and _names_in(plan.batch)
            ):
                # Pipelined after replies we relay unparsed: statement renaming may need to filter
                # replies, which is only safe from a message boundary. Send it once those are in.
                self.stalled = plan
                return
            if self.pinned or self.mode is PoolMode.SESSION or self.tx_status != codes.TX_IDLE:
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
        target = plan.target
        if target is None:
            target = self.ctx.router.primary()
        if target is not None and not (self.ctx.paused and self._is_paused()):
            key = (target.node, target.database)
            pool = self._pools.get(key)
            if pool is None or pool.retired:
                pool = self._pools[key] = self.ctx.pools.get(target.node, target.database or self.database, self.user)
            conn = pool.try_acquire()
            if conn is not None:
                self._bind(conn, pool)
                self._send(conn, plan)
                return
            # Queue in the pool: the connection is handed over by the next release, no Task needed.
            # `stalled` holds further messages in the buffer; reading pauses only if it grows large.
            self.stalled = plan
            self._pool_wait = pool.wait(lambda c, e: self._on_pool_wait(pool, plan, c, e))
            return
        self.stalled = plan
        self._pause_reading()
        asyncio.get_running_loop().create_task(self._acquire_then_send(plan))

    def _on_pool_wait(self, pool: Pool, plan: Plan, conn: BackendConnection | None, exc: Exception | None) -> None:
        self._pool_wait = None
        if self.phase != READY:
            if conn is not None:
                pool.release(conn)
            return
        self.stalled = None
        if conn is None:
            err = exc if isinstance(exc, HeliosError) else BackendUnavailable(str(exc or "no server connection"))
            self._answer_plan_error(plan, err)
        else:
            self._bind(conn, pool)
            self._send(conn, plan)
        asyncio.get_running_loop().call_soon(self._continue)

    def _is_paused(self) -> bool:
        p = self.ctx.paused
        return "*" in p or self.database in p

    async def _acquire_then_send(self, plan: Plan) -> None:
        ctx = self.ctx
        try:
            while ctx.paused and self._is_paused() and self.phase == READY:
                await asyncio.sleep(0.05)
            target = await self._resolve(plan.target, plan.write)
            pool = ctx.pools.get(target.node, target.database or self.database, self.user)
            conn = await pool.acquire()
        except Exception as exc:
            if self.phase != READY:
                return
            if not isinstance(exc, HeliosError):
                log.error("client %s: getting a server connection failed: %r", self.peer, exc)
                exc = BackendUnavailable(f"cannot get a server connection: {exc}")
            self.stalled = None
            self._answer_plan_error(plan, exc)
            self._continue()
            return
        if self.phase != READY:
            pool.release(conn)
            return
        self.stalled = None
        self._bind(conn, pool)
        self._send(conn, plan)
        self._continue()

    async def _resolve(self, target: Target | None, write: bool) -> Target:
        """A concrete target; for the primary, wait up to failover.write_timeout for one to be known."""
        if target is not None:
            return target
        router = self.ctx.router
        t = router.primary()
        if t is not None:
            return t
        deadline = time.monotonic() + self.ctx.config.failover.write_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            t = router.primary()
            if t is not None:
                return t
        raise BackendUnavailable("no primary is available (waited failover.write_timeout)")

    def _answer_plan_error(self, plan: Plan, exc: HeliosError) -> None:
        body = messages.error_response("ERROR", exc.sqlstate, exc.message)
        if plan.sync:
            body += messages.ready_for_query(self.tx_status)
        self._write(body)
        if plan.info is not None:
            self._record(plan.info, 0.0, True)

    def _continue(self) -> None:
        self._resume_reading()
        if self.buf and self.stalled is None and self.phase == READY:
            self._process()

    def _bind(self, conn: BackendConnection, pool: Pool) -> None:
        if self._write_paused and conn.transport is not None:
            conn.transport.pause_reading()
        self.backend = conn
        self.backend_pool = pool
        self.scanner.reset()
        self.slow = False
        self.rbuf.clear()
        conn.attach(self)

    def _unbind(self, reusable: bool) -> None:
        conn = self.backend
        pool = self.backend_pool
        self.backend = None
        self.backend_pool = None
        if conn is not None and self._write_paused and conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()  # never hand a paused connection to someone else
        if conn is not None and pool is not None:
            pool.release(conn, reusable)

    def _send(self, conn: BackendConnection, plan: Plan) -> None:
        tg = plan.target
        if tg is not None and tg.auto and plan.sync and not self.pending and self.tx_status == codes.TX_IDLE:
            self.hold, self.hold_plan = bytearray(), plan
        raw = plan.raw
        if (
            raw is not None
            and plan.batch is None
            and not self.slow
            and self.settings == conn.applied
            and not self.ctx.plugins.has_post_query
            and not (plan.info is not None and plan.info.effects & Effect.RESET)
        ):
            # The common simple-protocol statement: one write, no bookkeeping beyond its Inflight.
            if plan.sync:
                self.pending += 1
                self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
            if plan.write:
                self.last_write_at = time.monotonic()
            conn.write(raw)
            return
        if (
            plan.batch is not None
            and self.settings == conn.applied
            and not self.slow
            and not self.ctx.plugins.has_post_query
            and (self.mode is PoolMode.SESSION or not _names_in(plan.batch))
        ):
            # Nothing to rename or filter: forward the batch as the client sent it, in one write.
            if plan.sync:
                self.pending += 1
                self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
            if plan.write:
                self.last_write_at = time.monotonic()
            conn.write(b"".join([m for _t, m, _d in plan.batch]))
            return
        out: list[bytes] = []
        fix: list[Expect] = []
        need_fix = False
        if self.settings != conn.applied:
            q = self._sync_settings_sql(conn)
            if q:
                out.append(messages.query(q))
                fix.append(Expect(codes.F_QUERY, HIDE))
                need_fix = True
        if plan.batch is not None:
            rename = self.mode is PoolMode.TRANSACTION
            for t, msg, dec in plan.batch:
                if rename and t == codes.F_PARSE and dec[0]:
                    st = self.statements.get(dec[0])
                    if st is None:
                        out.append(msg)
                        fix.append(Expect(t))
                        continue
                    if st.server in conn.prepared:
                        conn.prepared.move_to_end(st.server)
                        fix.append(Expect(0, SYNTH, messages.PARSE_COMPLETE))
                    else:
                        out.append(messages.parse(st.server, st.sql, st.tail))
                        fix.append(Expect(t, PASS, st.server.encode()))
                        self._remember(conn, st.server, out, fix)
                    need_fix = True
                elif rename and t == codes.F_BIND and dec[1]:
                    st = self.statements.get(dec[1])
                    if st is None:
                        out.append(msg)  # the server reports the unknown statement itself
                        fix.append(Expect(t))
                        continue
                    if self._ensure_prepared(conn, st, out, fix):
                        need_fix = True  # its hidden Parse's answer must not reach the client
                    portal = dec[0]
                    out.append(
                        messages.msg(codes.F_BIND, messages.cstr(portal) + messages.cstr(st.server) + msg[dec[2] :])
                    )
                    fix.append(Expect(t))
                elif rename and t == codes.F_DESCRIBE and dec[0] == ord("S") and dec[1]:
                    st = self.statements.get(dec[1])
                    if st is None:
                        out.append(msg)
                        fix.append(Expect(t))
                        continue
                    if self._ensure_prepared(conn, st, out, fix):
                        need_fix = True
                    out.append(messages.msg(codes.F_DESCRIBE, b"S" + messages.cstr(st.server)))
                    fix.append(Expect(t))
                elif rename and t == codes.F_CLOSE and dec[0] == ord("S") and dec[1]:
                    self.statements.pop(dec[1], None)
                    fix.append(Expect(0, SYNTH, messages.CLOSE_COMPLETE))
                    need_fix = True
                else:
                    out.append(msg)
                    if t != codes.F_FLUSH:
                        fix.append(Expect(t))
        elif plan.raw is not None:
            out.append(plan.raw)
            fix.append(Expect(codes.F_QUERY))
        if need_fix or self.slow or self.ctx.plugins.has_post_query:
            if not self.slow:
                self.slow = True
                self.rbuf.clear()
            self.expect.extend(fix)
        if plan.sync:
            self.pending += 1
            self.inflight.append(Inflight(plan.info, plan.target, plan.qctx, self.scanner.bytes_seen))
        if plan.write:
            self.last_write_at = time.monotonic()
        info = plan.info
        if info is not None and info.effects and info.effects & Effect.RESET:
            # The server resets to its own default; the next statement re-applies the client's value.
            for name, value, is_local in info.settings:
                if value is None and not is_local:
                    keys = list(self.startup_settings) if name == "all" else [name]
                    for k in keys:
                        conn.applied[k] = "\x00reset"
        data = b"".join(out)
        conn.write(data)
        if not out and self.slow:
            # Everything was synthesized: flush the synthetic answers now.
            self._slow_feed(conn, b"")

    def _forget_failed(self, conn: BackendConnection, server: str) -> None:
        """A Parse failed on the server: no backend has it and no client name may point at it."""
        conn.prepared.pop(server, None)
        for name in [n for n, st in self.statements.items() if st.server == server]:
            del self.statements[name]
        if self.unnamed is not None and self.unnamed.server == server:
            self.unnamed = None

    def _remember(self, conn: BackendConnection, name: str, out: list[bytes], fix: list[Expect]) -> None:
        conn.prepared[name] = None
        limit = self.ctx.config.pool.prepared_statements_per_server
        while len(conn.prepared) > limit:
            old, _ = conn.prepared.popitem(last=False)
            out.append(messages.close_statement(old))
            fix.append(Expect(codes.F_CLOSE, HIDE))

    def _ensure_prepared(self, conn: BackendConnection, st: Statement, out: list[bytes], fix: list[Expect]) -> bool:
        """Prepare the statement on this backend if it lacks it; True when hidden messages were added."""
        if st.server in conn.prepared:
            conn.prepared.move_to_end(st.server)
            return False
        out.append(messages.parse(st.server, st.sql, st.tail))
        fix.append(Expect(codes.F_PARSE, HIDE, st.server.encode()))
        self._remember(conn, st.server, out, fix)
        return True

    def _sync_settings_sql(self, conn: BackendConnection) -> str:
        parts: list[str] = []
        for name in conn.applied:
            if name not in self.settings:
                parts.append(f'RESET "{name}"' if name.isidentifier() else f"RESET {name}")
        sets = [
            f"pg_catalog.set_config({_quote(k)}, {_quote(v)}, false)"
            for k, v in self.settings.items()
            if conn.applied.get(k) != v
        ]
        if sets:
            parts.append("SELECT " + ", ".join(sets))
        conn.applied = dict(self.settings)
        return "; ".join(parts)

    # ================================================================== backend → client
    def on_backend_data(self, conn: BackendConnection, data: bytes) -> None:
        if conn is not self.backend:
            return
        if self.slow:
            self._slow_feed(conn, data)
            return
        statuses = self.scanner.feed(data)
        self._write(data)
        for status in statuses:
            if status & ERROR_SEEN:
                if self.inflight:
                    self.inflight[0].error = "error"
                status &= 0xFF
            self._on_ready(conn, status)

    def _slow_feed(self, conn: BackendConnection, data: bytes) -> None:
        """Message-by-message relay while the backend's answers must be filtered or completed."""
        rbuf = self.rbuf
        rbuf += data
        out: list[bytes] = []
        expect = self.expect
        readies: list[int] = []
        pos = 0
        n = len(rbuf)
        while True:
            while expect and expect[0].action == SYNTH:
                out.append(expect.popleft().data)
            if n - pos < 5:
                break
            t = rbuf[pos]
            end = pos + 1 + _I.unpack_from(rbuf, pos + 1)[0]
            if end > n:
                break
            m = bytes(rbuf[pos:end])
            pos = end
            if t in _ASYNC:
                out.append(m)
                continue
            head = expect[0] if expect else None
            if t == codes.B_ERROR:
                if head is not None and head.kind == codes.F_PARSE and head.data:
                    self._forget_failed(conn, head.data.decode())
                if head is not None and head.action == HIDE:
                    f = messages.parse_error_fields(m[5:])
                    log.warning("client %s: hidden statement failed on %s: %s", self.peer, conn.node, f.get("M"))
                    if head.kind == codes.F_QUERY:
                        continue  # its ReadyForQuery is hidden too
                    # A hidden Parse failed: the client's own request fails with this error.
                    out.append(m)
                else:
                    out.append(m)
                if self.inflight:
                    f = messages.parse_error_fields(m[5:])
                    self.inflight[0].error = f"{f.get('C', '')}: {f.get('M', '')}"
                # The server skips to Sync: drop what it will not answer.
                while expect and expect[0].kind not in (codes.F_SYNC, codes.F_QUERY, codes.F_FUNCTION_CALL):
                    expect.popleft()
                continue
            if head is None:
                out.append(m)
                if t == codes.B_READY_FOR_QUERY:
                    readies.append(m[5])
                continue
            done = t in _COMPLETES.get(head.kind, ())
            if head.action != HIDE:
                out.append(m)
                if t == codes.B_READY_FOR_QUERY:
                    readies.append(m[5])
            elif t == codes.B_READY_FOR_QUERY:
                conn.tx_status = m[5]
            if done:
                expect.popleft()
                if t == codes.B_PARSE_COMPLETE and head.data:
                    self.ctx.remember_statement(head.data.decode())
        if pos:
            del rbuf[:pos]
        if out:
            data_out = b"".join(out)
            self.scanner.bytes_seen += len(data_out)
            self._write(data_out)
        if not expect and not rbuf and not self.ctx.plugins.has_post_query:
            self.slow = False
            self.scanner.reset()
        for status in readies:
            self._on_ready(conn, status)

    def _on_ready(self, conn: BackendConnection, status: int) -> None:
        if self.hold is not None and self._retry_held(conn, status):
            return
        self.tx_status = status
        conn.tx_status = status
        if self.pending:
            self.pending -= 1
        fl = self.inflight.popleft() if self.inflight else None
        if (
            fl is not None
            and fl.target is None
            and self.mode is PoolMode.TRANSACTION
            and (fl.info is not None or self.last_write_at > self.reads.ack_at)
        ):
            self.ctx.reads.acknowledged(self.reads, fl.info, status == codes.TX_IDLE, self.database)
        if status == codes.TX_IDLE and self.tx_settings:
            # A transaction ended. ROLLBACK (or a failed one) discards its SETs; COMMIT keeps them.
            committed = fl is not None and fl.info is not None and fl.info.tx is TxControl.COMMIT and fl.error is None
            if committed:
                # The backend kept them too.
                for k, v in self.tx_settings.items():
                    _apply_setting(self.settings, k, v, self.startup_settings)
                    _apply_setting(conn.applied, k, v, self.startup_settings)
            self.tx_settings.clear()
        if (
            status == codes.TX_IDLE
            and self.pending == 0
            and not self.expect
            and self.mode is PoolMode.TRANSACTION
            and not self.pinned
        ):
            self._unbind(reusable=True)
        if fl is not None:
            self._finish(fl, conn)
        if self.stalled is not None and self.pending == 0 and not self.expect:
            plan = self.stalled
            self.stalled = None
            asyncio.get_running_loop().call_soon(self._resume_stalled, plan)

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
        asyncio.get_running_loop().call_soon(self._rerun, plan)
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

    def _finish(self, fl: Inflight, conn: BackendConnection) -> None:
        elapsed = time.perf_counter() - fl.start
        ctx = self.ctx
        error = fl.error is not None
        if fl.info is not None:
            self._record(fl.info, elapsed, error)
        route = fl.target.route if fl.target is not None else "primary"
        if route == "standby" and conn.node == ctx.registry.primary:
            route = "primary"  # it ran inside a transaction that began on the primary
        key = (conn.node, route, "error" if error else "ok")
        q = ctx.counters.queries
        q[key] = q.get(key, 0) + 1
        if fl.qctx is not None and ctx.plugins.has_post_query:
            outcome = hooks.PostQueryOutcome(
                success=not error,
                target_node=conn.node,
                elapsed_us=int(elapsed * 1_000_000),
                response_bytes=self.scanner.bytes_seen - fl.start_bytes,
                error=fl.error,
            )
            ctx.plugins.post_query(fl.qctx, outcome)

    def _record(self, info: StatementInfo, elapsed: float, error: bool) -> None:
        fp = info.fingerprint
        if not fp:
            return
        stats = self.ctx.query_stats
        st = stats.get(fp)
        if st is None:
            if len(stats) >= 5000:
                return
            st = stats[fp] = QueryStat(info.normalized[:500])
        st.calls += 1
        st.total_us += int(elapsed * 1_000_000)
        if error:
            st.errors += 1
        self.ctx.counters.durations.append(elapsed)

    def on_backend_lost(self, conn: BackendConnection, exc: Exception | None) -> None:
        if conn is not self.backend:
            return
        if self.hold is not None:
            self._release_hold()
        self.backend = None
        pool = self.backend_pool
        self.backend_pool = None
        if pool is not None:
            pool.release(conn, reusable=False)
        self.expect.clear()
        self.slow = False
        self.rbuf.clear()
        self.scanner.reset()
        if self.phase != READY:
            return
        msg = f"server connection to node {conn.node} was lost"
        log.warning("client %s: %s%s", self.peer, msg, f" ({exc})" if exc else "")
        if self.mode is PoolMode.SESSION or self.pinned:
            self._fatal("08006", msg)
            return
        # Transaction pooling: this transaction fails, the session goes on (next one gets a new server).
        owed = max(self.pending, 1) if (self.pending or self.tx_status != codes.TX_IDLE) else 0
        self.pending = 0
        self.inflight.clear()
        self.tx_status = codes.TX_IDLE
        if owed:
            self._write(messages.error_response("ERROR", "08006", msg) + messages.READY_IDLE * owed)
        if self.stalled is not None:
            plan = self.stalled
            self.stalled = None
            asyncio.get_running_loop().call_soon(self._resume_stalled, plan)
