"""A pool of logged-in backend connections for one (node, database, user): acquire, release, limits, reaping."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.config.schema import PoolConfig, PoolMode
from heliosproxy.errors import BackendAuthError, BackendUnavailable, PoolTimeout

log = logging.getLogger("heliosproxy.pool")


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
        self.waiters: collections.deque[asyncio.Future[BackendConnection]] = collections.deque()
        self.server_params: dict[str, str] = {}
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
        self.waiters.append(fut)
        started = time.monotonic()
        t = self.cfg.acquire_timeout if timeout is None else timeout
        try:
            conn = await asyncio.wait_for(fut, t)
        except TimeoutError:
            self.timeouts += 1
            raise PoolTimeout(
                f"no server connection available for node {self.key.node} within {t:g}s "
                f"(pool size {self.size})"
            ) from None
        finally:
            if fut in self.waiters:
                self.waiters.remove(fut)
        self.waited_count += 1
        self.wait_total_s += time.monotonic() - started
        self.acquired_total += 1
        return conn

    async def _open(self) -> BackendConnection:
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
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                self.active.add(conn)
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def _slot_freed(self) -> None:
        """A connection went away: start one for the first waiter, if any."""
        if self.waiters and not self.closed and self.total < self.size:
            asyncio.get_running_loop().create_task(self._open_for_waiter())

    async def _open_for_waiter(self) -> None:
        try:
            conn = await self._open()
        except Exception as exc:
            while self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
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
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(BackendUnavailable(f"pool for node {self.key.node} closed"))
        self.waiters.clear()

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
