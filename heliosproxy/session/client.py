"""The IO glue of one client connection: asyncio callbacks, login, timers, pools and cancel around the sans-IO
session core (session/core.py), which owns the statement loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from heliosproxy.backends.connection import BackendConnection, QueryError, send_cancel
from heliosproxy.config.schema import AuthMethod, DatabaseRoute, PoolMode, TlsMode
from heliosproxy.errors import BackendUnavailable, HeliosError
from heliosproxy.logsetup import client_fields, hostport
from heliosproxy.plugins import hooks
from heliosproxy.pool.pool import Pool
from heliosproxy.protocol import messages
from heliosproxy.routing.router import Target
from heliosproxy.session import admission, flow, login, pgcompat, tls, tracking
from heliosproxy.session.admin import AdminSession
from heliosproxy.session.context import ProxyContext
from heliosproxy.session.core import ClientSession
from heliosproxy.session.state import AUTH, CLOSED, LOGIN, READY, STARTUP, Plan

log = logging.getLogger("heliosproxy.session")
# Background tasks of all sessions, referenced until done (a session may be gone before its task ends).
_TASKS: set[asyncio.Task[Any]] = set()

_monotonic: Final = time.monotonic


def _ignore(data: bytes) -> None:
    """Where a session writes before its connection is made (never, but typed)."""


class ClientProtocol(asyncio.Protocol):
    """The asyncio protocol of a client connection (no task per message): feeds its session core, and does what
    the core asks (session/core.py `Io`): write, close, pause reading, get and give back server connections."""

    def __init__(self, ctx: ProxyContext):
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.s = ClientSession(ctx, self, _ignore, "?")
        self._login: login.Login | None = None  # startup and authentication (session/login.py)
        self._login_timer: asyncio.TimerHandle | None = None
        self._pools: dict[tuple[str, str | None], Pool] = {}

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        s = self.s
        peer = t.get_extra_info("peername")
        s.peer = hostport(peer) if isinstance(peer, tuple) else str(peer or "unix")
        s.emit = t.write
        t.set_write_buffer_limits(high=512 * 1024)
        ctx = self.ctx
        ctx.counters.clients_total += 1
        if len(ctx.clients) - ctx.logins.holding >= ctx.config.max_client_connections or ctx.shutting_down:
            ctx.counters.clients_refused += 1
            reason = "the proxy is shutting down" if ctx.shutting_down else "too many client connections"
            sqlstate = "57P03" if ctx.shutting_down else "53300"
            log.warning("refused connection from %s: %s", s.peer, reason,
                        extra=client_fields(s, "client_refused", sqlstate=sqlstate, error=reason))
            t.write(messages.error_response("FATAL", sqlstate, f"sorry, {reason}"))
            t.close()
            s.phase = CLOSED
            return
        ip = str(peer[0]) if isinstance(peer, tuple) else "unix"
        if not admission.admit(s, ip):  # login slots: max_login_connections(_per_ip)
            s.phase = CLOSED
            return
        ctx.clients.add(s)
        self._login_timer = asyncio.get_running_loop().call_later(ctx.config.client_login_timeout, self._login_timeout)

    def data_received(self, data: bytes) -> None:
        s = self.s
        n = len(data)
        self.ctx.counters.bytes_in += n
        compat = s.compat
        compat.request_time = _monotonic()
        if compat.db is not None:
            compat.db.received += n
        try:
            phase = s.phase
            if phase == READY:
                s.received(data)
            elif phase < LOGIN:  # STARTUP, AUTH
                s.buf += data
                self._on_login_data()
            elif phase == LOGIN:
                s.buf += data
                if len(s.buf) > 65536:
                    s._pause_reading()
        except Exception as exc:
            s._internal_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.s
        if s.phase == STARTUP and s.buf:
            log.info("client %s: incomplete startup packet", s.peer)
        ctx = self.ctx
        ctx.clients.discard(s)
        admission.release(s)
        if self._login_timer is not None:
            self._login_timer.cancel()
        if s._pool_wait is not None:
            s._pool_wait.cancel()
            s._pool_wait = None
        s.closed(exc)

    def pause_writing(self) -> None:
        # The client reads slower than the backend sends: stop reading the backend (bounded memory).
        s = self.s
        s.write_paused = True
        if s.backend is not None and s.backend.transport is not None:
            s.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        s = self.s
        s.write_paused = False
        if s.backend is not None and s.backend.transport is not None:
            s.backend.transport.resume_reading()
        flow.drained(s)

    # ================================================================== core.Io
    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        asyncio.get_running_loop().call_soon(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _TASKS.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        _TASKS.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self.s._internal_error(exc)

    def acquire(self, plan: Plan) -> None:
        """A server for the stalled plan: an idle one of the pool now, a place in the pool's queue (the next
        release hands one over, no Task needed), or, while paused or without a primary, a task that waits."""
        s = self.s
        ctx = self.ctx
        target = plan.target
        if target is None:
            target = ctx.router.primary()
        if target is not None and not (ctx.paused and self._is_paused()):
            key = (target.node, target.database)
            pool = self._pools.get(key)
            if pool is None or pool.retired:
                pool = self._pools[key] = ctx.pools.get(target.node, target.database or s.database, s.user)
            conn = pool.try_acquire()
            if conn is not None:
                s.server_ready(conn, pool, plan)
                return
            self._queue(pool, plan)
            return
        s._pause_reading()
        self.spawn(self._acquire_then_send(plan))

    def release(self, conn: BackendConnection, pool: Pool | None, reusable: bool) -> None:
        if pool is not None:
            pool.release(conn, reusable)

    def reset_release(self, conn: BackendConnection, pool: Pool) -> None:
        self.spawn(pool.reset_and_release(conn, self.ctx.config.pool.reset_query))

    def cancel(self, conn: BackendConnection) -> None:
        self.spawn(send_cancel(conn.host, conn.port, conn.pid, conn.secret_key))

    def cancel_close(self, conn: BackendConnection, pool: Pool | None) -> None:
        self.spawn(self._cancel_and_close(conn, pool))

    def retry_after_closing(self, conn: BackendConnection, plan: Plan) -> None:
        self.spawn(self._retry_after_closing(conn, plan))

    # ================================================================== servers
    def _queue(self, pool: Pool, plan: Plan) -> None:
        """Wait in the pool's queue (its own method: a closure in acquire would be allocated per call)."""
        self.s._pool_wait = pool.wait(lambda c, e: self._on_pool_wait(pool, plan, c, e))

    def _on_pool_wait(self, pool: Pool, plan: Plan, conn: BackendConnection | None, exc: Exception | None) -> None:
        s = self.s
        if s._pool_wait is not None:
            pgcompat.waited(s, s._pool_wait.started)
        s._pool_wait = None
        if s.phase != READY:
            if conn is not None:
                pool.release(conn)
            return
        if conn is None:
            err = exc if isinstance(exc, HeliosError) else BackendUnavailable(str(exc or "no server connection"))
            s.server_unavailable(plan, err)
        else:
            s.server_ready(conn, pool, plan)
        s._call_soon(s._continue)

    def _is_paused(self) -> bool:
        p = self.ctx.paused
        return "*" in p or self.s.database in p

    async def _acquire_then_send(self, plan: Plan) -> None:
        s = self.s
        ctx = self.ctx
        s.compat.wait_start = since = _monotonic()
        try:
            while ctx.paused and self._is_paused() and s.phase == READY:
                await asyncio.sleep(0.05)
            target = await self._resolve(plan.target, plan.write)
            pool = ctx.pools.get(target.node, target.database or s.database, s.user)
            conn = await pool.acquire()
        except Exception as exc:
            if s.phase != READY:
                return
            if not isinstance(exc, HeliosError):
                log.error("client %s: getting a server connection failed: %r", s.peer, exc)
                exc = BackendUnavailable(f"cannot get a server connection: {exc}")
            s.server_unavailable(plan, exc)
            s._continue()
            return
        if s.phase != READY:
            pool.release(conn)
            return
        pgcompat.waited(s, since)
        s.server_ready(conn, pool, plan)
        s._continue()

    async def _resolve(self, target: Target | None, write: bool) -> Target:
        """A concrete target; for the primary, wait up to failover.write_timeout for one to be known."""
        if target is not None:
            return target
        router = self.ctx.router
        t = router.primary()
        if t is not None:
            return t
        deadline = _monotonic() + self.ctx.config.failover.write_timeout
        while _monotonic() < deadline:
            await asyncio.sleep(0.05)
            t = router.primary()
            if t is not None:
                return t
        raise BackendUnavailable("no primary is available (waited failover.write_timeout)")

    async def _cancel_and_close(self, conn: BackendConnection, pool: Pool | None) -> None:
        try:
            await send_cancel(conn.host, conn.port, conn.pid, conn.secret_key)
        finally:
            conn.close()
            if pool is not None:
                pool.release(conn, reusable=False)

    async def _retry_after_closing(self, conn: BackendConnection, plan: Plan) -> None:
        """The server refused a database-level statement because of sessions on that database:
        close the proxy's own idle connections to it (every worker) and send it once more."""
        ctx = self.ctx
        for db in plan.dbs:
            closed = ctx.pools.close_idle(db)
            log.info(
                "client %s: closed %d idle connection(s) to database %s for %s",
                self.s.peer,
                closed,
                db,
                plan.info.kinds[0] if plan.info else "a statement",
            )
            if ctx.close_idle_elsewhere is not None:
                await ctx.close_idle_elsewhere(db)
        self.s.send_again(conn, plan)

    # ================================================================== startup and authentication
    def _login_timeout(self) -> None:
        if self.s.phase < READY:
            self.s._fatal("08006", "client login timed out")

    def _on_login_data(self) -> None:
        """Startup packets and password messages: fed to the login machine (session/login.py)."""
        ctx = self.ctx
        m = self._login
        if m is None:
            m = self._login = login.Login(self.s.buf)
        m.tls_available = ctx.tls_context is not None and self.transport is not None
        m.tls_required = ctx.config.tls.mode is TlsMode.REQUIRE
        m.plugin_auth = ctx.plugins.has_auth
        self._login_do(m.receive())

    def _login_do(self, actions: list[login.Action]) -> None:
        """Carry out what the login machine asks for."""
        s = self.s
        for a in actions:
            if s.phase == CLOSED:
                return
            if isinstance(a, login.Send):
                s._write(a.data)
            elif isinstance(a, login.Startup):
                s.startup_message(a)
            elif isinstance(a, login.Lookup):
                self._lookup_user(a.user)
            elif isinstance(a, login.CheckPassword):
                self._check_password(a.password)
            elif isinstance(a, login.Authenticated):
                self._login = None  # done: an idle client keeps nothing of its login
                if a.auth is not None:
                    self.ctx.pools.credentials.authenticated(s.user, a.auth)
                self._authenticated()
            elif isinstance(a, login.Fail):
                if a.kind == login.VIOLATION:
                    s._violation(a.message)
                elif a.kind == login.AUTH_FAILED:
                    self.ctx.counters.login_failures += 1
                    s._fatal(a.sqlstate, a.message, event="auth_failed")
                else:
                    s._fatal(a.sqlstate, a.message)
            elif isinstance(a, login.StartTls):
                assert self.transport is not None
                self.transport = tls.start(self, s, self.transport, direct=a.direct, initial=a.initial)
            elif isinstance(a, login.Cancel):
                self._on_cancel_request(a.pid, a.key)
            elif isinstance(a, login.Drop):
                self.ctx.counters.protocol_errors += 1
                log.info("client %s: %s; closing", s.peer, a.reason)
                s._close_quietly()

    def _lookup_user(self, user: str) -> None:
        """Trust: is the user configured; md5/SCRAM: its credential (auth_query: reading paused meanwhile)."""
        ctx = self.ctx
        m = self._login
        assert m is not None
        if ctx.config.auth.method is AuthMethod.TRUST:
            self._login_do(m.accept() if ctx.config.user(user) is not None else m.reject())
            return
        known, cred = ctx.pools.credentials.cached(user)
        if known:
            self._login_do(m.begin(ctx.pools.credentials.client_auth(user, cred)))
        else:
            self.s._pause_reading()
            self.spawn(self._lookup_login())

    async def _lookup_login(self) -> None:
        s = self.s
        try:
            cred = await self.ctx.pools.credentials.lookup(s.user)
        except HeliosError as exc:
            log.error("client %s user=%s: %s", s.peer, s.user, exc.message)
            s._fatal(exc.sqlstate, exc.message)
            return
        except Exception as exc:  # never leave a client hanging at login
            log.error("client %s user=%s: auth_query failed: %r", s.peer, s.user, exc)
            s._fatal("08006", "cannot look up the user's password")
            return
        m = self._login
        if s.phase == AUTH and m is not None:
            s._resume_reading()
            self._login_do(m.begin(self.ctx.pools.credentials.client_auth(s.user, cred)))

    def _check_password(self, password: str) -> None:
        """Plugin authentication of a cleartext password; a plugin with no verdict defers to the proxy's users."""
        ctx = self.ctx
        s = self.s
        m = self._login
        assert m is not None
        result = ctx.plugins.authenticate(s._make_hook_ctx(), s.user, s.database, s.peer, password)
        if isinstance(result, hooks.AuthSuccess):
            ident = result.identity.get("name") if isinstance(result.identity, dict) else None
            s.identity = str(ident) if ident is not None else s.user
            self._login_do(m.accept())
        elif isinstance(result, hooks.AuthDenied):
            self._login_do(m.reject("28000", result.reason or f'authentication denied for user "{s.user}"'))
        else:
            cred = ctx.pools.credentials.cached(s.user)[1]
            key = cred.check_cleartext(s.user, password) if cred is not None else None
            known = ctx.config.user(s.user) is not None
            if known and (ctx.config.auth.method is AuthMethod.TRUST or key is not None):
                ctx.pools.credentials.authenticated_cleartext(s.user, cred, key)
                self._login_do(m.accept())
            else:
                self._login_do(m.reject())

    def _authenticated(self) -> None:
        s = self.s
        if self.ctx.plugins.has_post_auth:  # post_auth observers see successful logins
            self.ctx.plugins.post_auth(s._make_hook_ctx(), s.user, s.database, s.peer, True)
        s.phase = LOGIN
        s._pause_reading()
        self.spawn(self._finish_login())

    async def _finish_login(self) -> None:
        ctx = self.ctx
        s = self.s
        try:
            if s.database in pgcompat.ADMIN_DATABASES:
                if s.user not in ctx.config.admin.users:
                    s._fatal("42501", f'user "{s.user}" is not an admin of the proxy')
                    return
                s.admin = True
                s.console = AdminSession(s)
                s.pid, s.key = ctx.new_key()
                params = AdminSession.login_params(s.app_name)
            else:
                if "@" in s.database:
                    db, _, branch = s.database.rpartition("@")
                    if ctx.config.branch(branch) is None:
                        s._fatal("3D000", f'branch "{branch}" does not exist')
                        return
                    s.branch_pref = branch
                    s.database = db or s.database
                s.mode = pgcompat.login(s)
                s.txn = s.mode is PoolMode.TRANSACTION
                alias = ctx.config.database(s.database)
                if alias is not None:
                    s.db_route, s.database = alias.route, alias.dbname
                    if alias.route is DatabaseRoute.STANDBY:
                        s._startup_setting("default_transaction_read_only", "on")
                if s.branch_pref:
                    target = ctx.router.branch(s.branch_pref)
                else:
                    t = ctx.reads.login_target(s.db_route, s.mode)
                    target = t if t is not None else await self._resolve(None, write=True)
                    dbs = {k.database for k in ctx.pools.pools}
                    await ctx.reads.admit_database(s.database, s.user, dbs, len(ctx.pools.pools))
                pool = ctx.pools.get(target.node, target.database or s.database, s.user)
                pgcompat.count_login(s)
                if not s.txn:
                    conn = await pool.acquire()
                    try:
                        params = await self._apply_startup_settings(conn)
                    except BaseException:
                        pool.release(conn, reusable=False)
                        raise
                    s._bind(conn, pool)
                    s.pid, s.key = conn.pid, ctx.new_key()[1]
                else:
                    params = dict(await self._server_view(pool))
                    s.pid, s.key = ctx.new_key()
                for k, v in s.startup.items():
                    if k not in params and pgcompat.reported(ctx.config, k):
                        params[k] = v  # pool.track_extra_parameters: not reported by the server itself
                params.update(ctx.reads.reported_params(s.db_route))
        except HeliosError as exc:
            ctx.counters.login_failures += 1
            s._fatal(exc.sqlstate, exc.message)
            return
        except Exception as exc:  # never leave a client hanging at login
            log.error("client %s user=%s: login failed: %r", s.peer, s.user, exc,
                      extra=client_fields(s, "login_failed", sqlstate="08006", error=repr(exc)))
            s._fatal("08006", f"cannot get a server connection: {exc}")
            return
        if s.phase == CLOSED:
            if s.backend is not None and s.backend_pool is not None:
                conn, s.backend = s.backend, None
                await s.backend_pool.reset_and_release(conn, ctx.config.pool.reset_query)
            return
        s.client_id = f"c{s.pid:x}"
        ctx.cancel_keys[(s.pid, s.key)] = s
        s.login_params = params
        s._write(login.welcome(params, s.pid, s.key))
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        s.phase = READY
        admission.release(s)
        s.hook_ctx = s._make_hook_ctx()
        if ctx.plugins.has_connect:
            ctx.plugins.on_connect(s.hook_ctx)
        log.info(
            "client %s user=%s db=%s connected (%s mode)",
            s.peer,
            s.user,
            s.database,
            mode := "admin" if s.admin else "statement" if s.compat.statement_mode else s.mode.value,
            extra=client_fields(s, "client_connected", pool_mode=mode),
        )
        s._resume_reading()
        if s.buf:
            s._process()

    async def _apply_startup_settings(self, conn: BackendConnection) -> dict[str, str]:
        """Apply this client's startup settings on a server connection, as a server applies a
        startup packet's: a value it refuses fails the login with its SQLSTATE and message.
        Returns the ParameterStatus values the server then reports (in its own spelling)."""
        sql = tracking.sync_settings_sql(self.s, conn)
        if sql:
            try:
                await conn.query(sql)
            except QueryError as exc:
                conn.applied = {}
                raise HeliosError(exc.message, sqlstate=exc.sqlstate) from exc
        return dict(conn.params)

    async def _server_view(self, pool: Pool) -> dict[str, str]:
        """Transaction pooling: the reported parameters for these startup settings, validated on
        a server once per distinct set of settings and cached."""
        key = (pool.key, tuple(sorted(self.s.settings.items())))
        views = self.ctx.login_views
        view = views.get(key)
        if view is not None:
            return view
        conn = await pool.acquire()
        ok = False
        try:
            view = await self._apply_startup_settings(conn)
            ok = True
        finally:
            pool.release(conn, reusable=ok)
        if len(views) >= 1000:
            views.clear()
        views[key] = view
        return view

    # ================================================================== cancel
    def _on_cancel_request(self, pid: int, key: int) -> None:
        self.s.phase = CLOSED
        if self.transport is not None:
            self.transport.close()
        target = self.ctx.cancel_keys.get((pid, key))
        if target is None:
            if self.ctx.on_cancel_miss is not None:
                self.ctx.on_cancel_miss(pid, key)
            return
        target.cancel_running()

