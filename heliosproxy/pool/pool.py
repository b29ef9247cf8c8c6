"""A pool of logged-in backend connections for one (node, database, user): acquire, release, limits, reaping."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.tls import BackendTls
from heliosproxy.config.schema import PoolConfig, PoolMode
from heliosproxy.errors import BackendAuthError, BackendUnavailable, PoolTimeout

log = logging.getLogger("heliosproxy.pool")

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
        password: str | None,
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

    # ------------------------------------------------------------------ counts
    @property
    def total(self) -> int:
        return len(self.idle) + len(self.active) + self.connecting

    # ------------------------------------------------------------------ acquire
    def try_acquire(self) -> BackendConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
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
        if self.total < self.size:
            conn = await self._open()
            self.active.add(conn)
            self.acquired_total += 1
            return conn
        fut: asyncio.Future[BackendConnection] = asyncio.get_running_loop().create_future()

        def done(conn: BackendConnection | None, exc: Exception | None) -> None:
            if fut.done():  # the awaiting task went away in between: give the connection back
                if conn is not None:
                    self.release(conn)
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
                self.release(fut.result())
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
        elif self.total < self.size:
            self._spawn_open()
        return w

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
                self.password,
                self.key.database,
                timeout=self.cfg.connect_timeout,
                tls=self.tls,
            )
        except BackendAuthError as exc:
            self.connect_errors += 1
            raise BackendUnavailable(
                f"cannot log in to node {self.key.node}: {exc.message}", sqlstate=exc.sqlstate
            ) from None
        except (OSError, TimeoutError) as exc:
            self.connect_errors += 1
            raise BackendUnavailable(
                f"cannot connect to node {self.key.node} ({self.host}:{self.port}): {exc or 'timeout'}"
            ) from None
        finally:
            self.connecting -= 1
        if not self.server_params:
            self.server_params = dict(conn.params)
        conn.on_lost = self._lost
        return conn

    def _lost(self, conn: BackendConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        self._slot_freed()

    # ------------------------------------------------------------------ release
    def release(self, conn: BackendConnection, reusable: bool = True) -> None:
        """Give a connection back. Unknown or failed state → closed, never reused."""
        self.active.discard(conn)
        conn.detach()
        conn.pinned_by = None
        now = time.monotonic()
        if (
            not reusable
            or conn.closed
            or self.closed
            or self.retired
            or now - conn.created_at > self.cfg.max_lifetime
        ):
            conn.close()
            self._slot_freed()
            return
        if self.waiters and self._give(conn):
            return
        self.idle.append(conn)

    def _slot_freed(self) -> None:
        """A connection went away: start one for the first waiter, if any."""
        if self.waiters and not self.closed and self.total < self.size:
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
        self.release(conn)

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
        self.release(conn, ok)

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
            if too_old or (too_idle and self.total - 1 >= self.cfg.min_size):
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    async def fill_min(self) -> None:
        while not self.closed and self.total < min(self.cfg.min_size, self.size):
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
