"""A pool of logged-in backend connections for one (node, database, user): acquire, release, limits, reaping."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.tls import BackendTls
from heliosproxy.config.schema import PoolConfig, PoolMode
from heliosproxy.errors import BackendAuthError, BackendUnavailable, PoolTimeout
from heliosproxy.protocol.auth import Credential

log = logging.getLogger("heliosproxy.pool")
_monotonic: Final = time.monotonic

# What a waiter is told: (connection, None) once one is its own, or (None, error).
WaitCallback = Callable[["BackendConnection | None", "Exception | None"], None]


class PoolWait:
    """A queued request for a connection (returned by `Pool.wait`); `cancel()` withdraws it."""

    __slots__ = ("callback", "deadline", "pending", "pool", "started", "timeout")

    def __init__(self, pool: Pool, callback: WaitCallback, timeout: float, started: float):
        self.pool = pool
        self.callback = callback
        self.timeout = timeout
        self.started = started
        self.deadline = started + timeout
        self.pending = True  # False once delivered or cancelled: the callback runs at most once

    def cancel(self) -> None:
        """Withdraw the request; the callback will not be called. A no-op once it has been."""
        if self.pending:
            self.pending = False
            with contextlib.suppress(ValueError):
                self.pool.waiters.remove(self)


class ConnCap:
    """A limit on server connections shared by several pools (max_db_connections, max_user_connections)."""

    __slots__ = ("limit", "name", "pools")

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit
        self.pools: set[Pool] = set()

    def used(self) -> int:
        dead = [p for p in self.pools if p.closed or (p.retired and p.total == 0)]
        for p in dead:
            self.pools.discard(p)
        return sum(p.total for p in self.pools)

    def room(self) -> bool:
        return self.limit <= 0 or self.used() < self.limit

    def evict(self, by: Pool) -> bool:
        """At the limit: close the longest-idle connection of another pool of the group (PgBouncer evicts
        idle servers for max_db_connections too); False if none is idle."""
        victims = [p for p in self.pools if p is not by and p.idle and not p.closed]
        if not victims:
            return False
        pool = min(victims, key=lambda p: p.idle[0].last_used)
        conn = pool.idle.pop(0)
        log.info("closing an idle connection of %s/%s/%s: %s reached", pool.key.node, pool.key.database,
                 pool.key.user, self.name)
        conn.close()
        return True

    def freed(self, by: Pool) -> None:
        """A connection of `by` went away: a waiting pool of the same group may open one now."""
        for p in list(self.pools):
            if p is not by and p.waiters and not p.closed:
                p._slot_freed()


@dataclass(frozen=True, slots=True)
class PoolKey:
    node: str
    database: str
    user: str


class Pool:
    """LIFO idle list, a size cap, FIFO waiters. `try_acquire` is synchronous (the hot path)."""

    def __init__(
        self,
        key: PoolKey,
        host: str,
        port: int,
        password: str | Credential | Callable[[], Credential | None] | None,
        size: int,
        mode: PoolMode,
        cfg: PoolConfig,
    ):
        self.key = key
        self.host = host
        self.port = port
        self.password = password
        self.size = size
        self.mode = mode
        self.cfg = cfg
        # Read per release (the hot path): copied from the frozen config once (a pool never changes its cfg).
        self._max_lifetime = cfg.max_lifetime
        self._reset_always = cfg.server_reset_query_always and bool(cfg.reset_query)
        self._check_query = cfg.server_check_query
        self._check_delay = cfg.server_check_delay
        self.idle: list[BackendConnection] = []
        self.active: set[BackendConnection] = set()
        self.connecting = 0
        # FIFO of pending waits; a released connection goes straight to the first one.
        self.waiters: collections.deque[PoolWait] = collections.deque()
        # One timer per pool, armed for the earliest waiter deadline (not one per waiter).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.server_params: dict[str, str] = {}
        self.tls: BackendTls | None = None  # TLS to this node (set by PoolManager)
        self.closed = False
        self.retired = False  # config changed: connections close as they come back
        # Plain-int statistics, published off the hot path.
        self.acquired_total = 0
        self.wait_total_s = 0.0
        self.waited_count = 0
        self.timeouts = 0
        self.connect_errors = 0
        # PgBouncer's per-database/per-user settings (set by PoolManager.get).
        self.min_size = cfg.min_size
        self.reserve_size = 0
        self.caps: list[ConnCap] = []
        self._reserve_timer: asyncio.TimerHandle | None = None
        self.checking = 0  # connections running server_check_query or a transaction-mode reset
        # Told of connection-class failures against this pool's node (circuit breakers): (node, sqlstate
        # or None for a socket error or timeout, reason). One list shared by every pool (PoolManager).
        self.failure_hooks: list[Callable[[str, str | None, str], None]] = []

    # ------------------------------------------------------------------ counts
    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + self.connecting

    # ------------------------------------------------------------------ acquire
    def can_open(self, reserve: bool = False) -> bool:
        """Room for one more server connection: pool size (+ reserve), max_db/max_user_connections."""
        limit = self.size + (self.reserve_size if reserve else 0)
        if self.total >= limit:
            return False
        return all(c.room() or c.evict(self) for c in self.caps)

    def try_acquire(self) -> BackendConnection | None:
        idle = self.idle
        check = self._check_query
        while idle:
            conn = idle.pop()
            if conn.closed or conn.doomed:
                if not conn.closed:
                    conn.close()
                continue
            if check and _monotonic() - conn.last_used > self._check_delay:
                self._check(conn, check)  # comes back through release() once it answered
                continue
            self.active.add(conn)
            self.acquired_total += 1
            return conn
        return None

    async def acquire(self, timeout: float | None = None) -> BackendConnection:
        """A connection of this pool; waits (FIFO) up to `timeout` (default acquire_timeout)."""
        conn = self.try_acquire()
        if conn is not None:
            return conn
        if self.closed:
            raise BackendUnavailable(f"pool for node {self.key.node} is closed")
        if self.can_open():
            conn = await self._open()
            self.active.add(conn)
            self.acquired_total += 1
            return conn
        fut: asyncio.Future[BackendConnection] = asyncio.get_running_loop().create_future()

        def done(conn: BackendConnection | None, exc: Exception | None) -> None:
            if fut.done():  # the awaiting task went away in between: give the connection back
                if conn is not None:
                    self.release(conn, reset=False)
            elif conn is not None:
                fut.set_result(conn)
            else:
                fut.set_exception(exc or BackendUnavailable(f"pool for node {self.key.node} closed"))

        handle = self.wait(done, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            handle.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result(), reset=False)
            raise

    def wait(self, callback: WaitCallback, timeout: float | None = None) -> PoolWait:
        """Queue for a connection without a Task or Future (the session's slow path).

        `callback(conn, None)` runs once a connection is the caller's (synchronously from
        `release()` of another user, FIFO); `callback(None, exc)` on PoolTimeout (53300, after
        `timeout`, default acquire_timeout), on a failed connect, or when the pool closes. The
        callback never runs before `wait` returns and at most once; it must not raise. The
        returned handle's `cancel()` withdraws the request (e.g. the client went away)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        t = self.cfg.acquire_timeout if timeout is None else timeout
        w = PoolWait(self, callback, t, now)
        if self.closed:
            loop.call_soon(self._fail, w, BackendUnavailable(f"pool for node {self.key.node} is closed"))
            return w
        self.waiters.append(w)
        if self._timer is None or w.deadline < self._timer_at:
            self._arm(loop, w.deadline, now)
        if self.idle:  # the caller did not try_acquire first: still deliver through the loop
            loop.call_soon(self._hand_idle)
        elif self.can_open():
            self._spawn_open()
        elif self.reserve_size and self._reserve_timer is None:
            self._reserve_timer = loop.call_later(self.cfg.reserve_pool_timeout, self._use_reserve)
        return w

    def _use_reserve(self) -> None:
        """reserve_pool_timeout passed: a client still waiting that long gets a reserve connection."""
        self._reserve_timer = None
        if self.closed or not self.waiters:
            return
        now = time.monotonic() + 0.001
        rpt = self.cfg.reserve_pool_timeout
        first = next((w for w in self.waiters if w.pending), None)
        if first is None:
            return
        if first.started + rpt <= now:
            if self.can_open(reserve=True):
                log.info("pool %s/%s/%s: using the reserve pool", self.key.node, self.key.database, self.key.user)
                self._spawn_open()
            delay = rpt
        else:
            delay = first.started + rpt - now
        self._reserve_timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._use_reserve)

    def _check(self, conn: BackendConnection, sql: str) -> None:
        """server_check_query on a connection idle past server_check_delay, then back to the pool."""
        self.checking += 1
        self.active.add(conn)

        async def run() -> None:
            ok = True
            try:
                await asyncio.wait_for(conn.query(sql), self.cfg.connect_timeout)
            except (QueryError, OSError, TimeoutError, ConnectionError) as exc:
                log.info("server_check_query failed on %s (%s); closing the connection", self.key.node, exc)
                ok = False
            finally:
                self.checking -= 1
            self.release(conn, ok, reset=False)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_open(self) -> None:
        """Open one connection for the first waiter; the slot is reserved now (N waiters in one
        tick never open more than the pool size)."""
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._open_for_waiter(reserved=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hand_idle(self) -> None:
        while self.waiters:
            conn = self.try_acquire()
            if conn is None:
                return
            self.active.discard(conn)
            self.acquired_total -= 1
            if not self._give(conn):
                self.idle.append(conn)
                return

    def _give(self, conn: BackendConnection) -> bool:
        """Hand `conn` to the first pending waiter; False if there is none."""
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if not w.pending:
                continue
            w.pending = False
            self.active.add(conn)
            self.acquired_total += 1
            self.waited_count += 1
            self.wait_total_s += time.monotonic() - w.started
            try:
                w.callback(conn, None)
            except Exception:
                log.exception("pool waiter callback failed")
            return True
        return False

    def _fail(self, w: PoolWait, exc: Exception) -> None:
        if not w.pending:
            return
        w.pending = False
        try:
            w.callback(None, exc)
        except Exception:
            log.exception("pool waiter callback failed")

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_later(max(0.0, deadline - now), self._sweep)

    def _sweep(self) -> None:
        """The timer fired: time out every waiter past its deadline, re-arm for the next one."""
        self._timer = None
        now = time.monotonic() + 0.001  # timers may fire up to a tick early
        expired: list[PoolWait] = []
        nxt = 0.0
        for w in self.waiters:
            if w.deadline <= now:
                expired.append(w)
            elif nxt == 0.0 or w.deadline < nxt:
                nxt = w.deadline
        for w in expired:
            if not w.pending:  # withdrawn by an earlier callback of this sweep
                continue
            self.waiters.remove(w)
            self.timeouts += 1
            self._fail(
                w,
                PoolTimeout(
                    f"no server connection available for node {self.key.node} within {w.timeout:g}s "
                    f"(pool size {self.size})"
                ),
            )
        if nxt and self.waiters and (self._timer is None or nxt < self._timer_at):
            self._arm(asyncio.get_running_loop(), nxt, now - 0.001)

    async def _open(self, reserved: bool = False) -> BackendConnection:
        if not reserved:
            self.connecting += 1
        try:
            conn = await connect(
                self.key.node,
                self.host,
                self.port,
                self.key.user,
                self.password() if callable(self.password) else self.password,  # asked per connection
                self.key.database,
                timeout=self.cfg.connect_timeout,
                tls=self.tls,
            )
        except BackendAuthError as exc:
            self.connect_errors += 1
            for hook in self.failure_hooks:
                hook(self.key.node, exc.sqlstate, f"cannot log in: {exc.message}")
            raise BackendUnavailable(
                f"cannot log in to node {self.key.node}: {exc.message}", sqlstate=exc.sqlstate
            ) from None
        except (OSError, TimeoutError) as exc:
            self.connect_errors += 1
            for hook in self.failure_hooks:
                hook(self.key.node, None, f"cannot connect: {exc or 'timeout'}")
            raise BackendUnavailable(
                f"cannot connect to node {self.key.node} ({self.host}:{self.port}): "
                f"{str(exc) or f'connect timeout (server_connect_timeout {self.cfg.connect_timeout:g}s)'}"
            ) from None
        finally:
            self.connecting -= 1
        if not self.server_params:
            self.server_params = dict(conn.params)
        conn.on_lost = self._lost
        return conn

    def _lost(self, conn: BackendConnection) -> None:
        if conn.dropped_in_use:
            for hook in self.failure_hooks:
                hook(self.key.node, None, "server connection lost while in use")
        if conn in self.idle:
            self.idle.remove(conn)
        self._slot_freed()
        for cap in self.caps:
            cap.freed(self)

    # ------------------------------------------------------------------ release
    def release(self, conn: BackendConnection, reusable: bool = True, reset: bool = True) -> None:
        """Give a connection back. Unknown or failed state → closed, never reused."""
        self.active.discard(conn)
        now = _monotonic()  # one clock read per release
        conn.detach(now)
        conn.pinned_by = None
        if (
            not reusable
            or conn.closed
            or self.closed
            or self.retired
            or now - conn.created_at > self._max_lifetime
        ):
            conn.close()
            self._slot_freed()
            for cap in self.caps:
                cap.freed(self)
            return
        if reset and self._reset_always:
            self._reset_in_background(conn)
            return
        if self.waiters and self._give(conn):
            return
        self.idle.append(conn)

    def _reset_in_background(self, conn: BackendConnection) -> None:
        """server_reset_query_always: transaction pooling resets too, before anyone else gets it."""
        self.checking += 1
        self.active.add(conn)
        task = asyncio.get_running_loop().create_task(self._reset_then_release(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset_then_release(self, conn: BackendConnection) -> None:
        try:
            await self.reset_and_release(conn, self.cfg.reset_query)
        finally:
            self.checking -= 1

    def _slot_freed(self) -> None:
        """A connection went away: start one for the first waiter, if any."""
        if self.waiters and not self.closed and self.can_open():
            self._spawn_open()

    async def _open_for_waiter(self, reserved: bool = False) -> None:
        try:
            conn = await self._open(reserved)
        except Exception as exc:
            while self.waiters:
                w = self.waiters.popleft()
                if w.pending:
                    self._fail(w, exc)
                    return
            return
        self.release(conn, reset=False)

    async def reset_and_release(self, conn: BackendConnection, query: str | None) -> None:
        """Session-mode release: run the reset query (e.g. DISCARD ALL), then give it back."""
        conn.detach()
        ok = not conn.closed and conn.tx_status == ord("I")
        if ok and query:
            try:
                await asyncio.wait_for(conn.query(query), 5.0)
                conn.applied.clear()
                conn.prepared.clear()
            except (QueryError, OSError, TimeoutError, ConnectionError) as exc:
                log.info("reset of a connection to %s failed (%s); closing it", self.key.node, exc)
                ok = False
        self.release(conn, ok, reset=False)

    # ------------------------------------------------------------------ maintenance
    def reap(self) -> None:
        """Close idle connections past idle_timeout / max_lifetime, keeping min_size."""
        now = time.monotonic()
        keep: list[BackendConnection] = []
        for conn in self.idle:
            too_old = now - conn.created_at > self.cfg.max_lifetime
            too_idle = now - conn.last_used > self.cfg.idle_timeout
            if conn.closed:
                continue
            if too_old or (too_idle and self.total - 1 >= self.min_size):
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    async def fill_min(self) -> None:
        while not self.closed and self.total < min(self.min_size, self.size) and all(c.room() for c in self.caps):
            try:
                conn = await self._open()
            except BackendUnavailable as exc:
                log.warning("%s", exc.message)
                return
            self.idle.append(conn)

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reserve_timer is not None:
            self._reserve_timer.cancel()
            self._reserve_timer = None
        waiters = list(self.waiters)
        self.waiters.clear()
        for w in waiters:
            self._fail(w, BackendUnavailable(f"pool for node {self.key.node} closed"))

    def snapshot(self) -> dict[str, object]:
        return {
            "node": self.key.node,
            "database": self.key.database,
            "user": self.key.user,
            "mode": self.mode.value,
            "size": self.size,
            "active": len(self.active),
            "idle": len(self.idle),
            "connecting": self.connecting,
            "waiting": len(self.waiters),
            "acquired_total": self.acquired_total,
            "timeouts": self.timeouts,
            "connect_errors": self.connect_errors,
            "avg_wait_ms": (self.wait_total_s / self.waited_count * 1000.0) if self.waited_count else 0.0,
        }
