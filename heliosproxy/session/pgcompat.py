"""PgBouncer's ways in a session: per-database counters, statement pooling, and the client-side timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from heliosproxy.config.schema import Config, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes
from heliosproxy.sql.classify import StatementInfo, TxControl

if TYPE_CHECKING:
    from heliosproxy.session.context import ProxyContext
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")
_monotonic: Final = time.monotonic

# The admin console answers on these database names (PgBouncer's name is an alias).
ADMIN_DATABASES = frozenset({"heliosproxy", "pgbouncer"})
STATS_PERIOD = 60.0  # PgBouncer's stats_period: averages cover the last full period

# PgBouncer's wording (FATAL, SQLSTATE 08P01).
STATEMENT_MODE_ERROR = "transaction blocks not allowed in statement pooling mode"
QUERY_TIMEOUT = "query timeout"
IDLE_TX_TIMEOUT = "idle transaction timeout"
CLIENT_IDLE_TIMEOUT = "client_idle_timeout"


@dataclass(slots=True)
class DbStats:
    """PgBouncer's SHOW STATS counters of one database (times in microseconds)."""

    server_assignment_count: int = 0
    xact_count: int = 0
    query_count: int = 0
    received: int = 0
    sent: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0
    client_parse_count: int = 0
    server_parse_count: int = 0
    bind_count: int = 0
    client_login_count: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(slots=True)
class StatsBook:
    """Every database's counters plus the snapshot the averages are computed from."""

    dbs: dict[str, DbStats] = field(default_factory=dict)
    prev: dict[str, tuple[int, ...]] = field(default_factory=dict)
    prev_at: float = field(default_factory=time.monotonic)
    avg: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def of(self, database: str) -> DbStats:
        st = self.dbs.get(database)
        if st is None:
            st = self.dbs[database] = DbStats()
        return st

    def averages(self) -> dict[str, tuple[float, ...]]:
        """Per-second rates (times: per transaction/query/assignment) over the last full stats period."""
        now = _monotonic()
        span = now - self.prev_at
        if span >= STATS_PERIOD or not self.avg:
            cur = {db: st.as_tuple() for db, st in self.dbs.items()}
            if span >= STATS_PERIOD or not self.prev:
                self.avg = {db: _avg(t, self.prev.get(db), span) for db, t in cur.items()}
                if span >= STATS_PERIOD:
                    self.prev, self.prev_at = cur, now
        return self.avg


def _avg(cur: tuple[int, ...], prev: tuple[int, ...] | None, span: float) -> tuple[float, ...]:
    p = prev or (0,) * len(cur)
    d = [c - o for c, o in zip(cur, p, strict=True)]
    (assign, xact, query, recv, sent, xact_t, query_t, wait_t, cparse, sparse, bind, logins) = d
    s = max(span, 1e-9)
    return (
        assign / s, xact / s, query / s, recv / s, sent / s,
        xact_t / xact if xact else 0.0, query_t / query if query else 0.0,
        wait_t / assign if assign else 0.0,
        cparse / s, sparse / s, bind / s, logins / s,
    )  # fmt: skip


class ClientCompat:
    """Per-client state for the counters and timeouts (`ClientSession.compat`)."""

    __slots__ = ("admin_statements", "db", "last_reply", "request_time", "statement_mode", "wait_start",
                 "xact_start")

    def __init__(self) -> None:
        self.db: DbStats | None = None
        self.request_time = _monotonic()  # the client's last request (PgBouncer's request_time)
        self.last_reply = 0.0
        self.statement_mode = False
        self.wait_start = 0.0  # waiting for a server outside a pool queue (PAUSE, no primary)
        self.xact_start = 0.0
        self.admin_statements: dict[str, str] = {}  # admin console: prepared statement name -> SQL

    def received(self, n: int) -> None:
        self.request_time = _monotonic()
        db = self.db
        if db is not None:
            db.received += n

    def sent(self, n: int) -> None:
        db = self.db
        if db is not None:
            db.sent += n

    def assigned(self) -> None:
        db = self.db
        if db is not None:
            db.server_assignment_count += 1


def book(ctx: ProxyContext) -> StatsBook:
    return ctx.pg_stats


def login(client: ClientSession) -> PoolMode:
    """At login of a non-admin client: refuse a DISABLEd database, count the login, pick the pool mode.

    Statement pooling runs as transaction pooling that refuses a transaction block."""
    ctx = client.ctx
    if client.database in ctx.disabled_databases:
        raise HeliosError(f'database "{client.database}" is disabled', sqlstate="08P01")
    mode = ctx.pools.mode_for(client.user, client.database)
    if mode is PoolMode.STATEMENT:
        client.compat.statement_mode = True
        return PoolMode.TRANSACTION
    return mode


def count_login(client: ClientSession) -> None:
    """The login was admitted (the database exists): count it in its database's statistics."""
    st = book(client.ctx).of(client.database)
    st.client_login_count += 1
    client.compat.db = st


def reported(config: Config, name: str) -> bool:
    """pool.track_extra_parameters: startup parameters reported back in ParameterStatus."""
    return name in config.pool.track_extra_parameters


def waited(client: ClientSession, since: float) -> None:
    """A client that waited since `since` (monotonic) got its server connection."""
    client.compat.wait_start = 0.0
    db = client.compat.db
    if db is not None and since:
        db.wait_time += int((_monotonic() - since) * 1_000_000)


def wait_started(client: ClientSession) -> float:
    """When the client began waiting for a server (monotonic), 0.0 if it is not waiting."""
    w = getattr(client, "_pool_wait", None)
    if w is not None:
        return float(w.started)
    if client.stalled is not None and client.backend is None:
        return client.compat.wait_start or client.compat.request_time
    return 0.0


def is_waiting(client: ClientSession) -> bool:
    """cl_waiting: the client sent a request and has no server connection yet (also under PAUSE)."""
    return client.stalled is not None and client.backend is None


def statement_done(client: ClientSession, started: float, elapsed: float) -> None:
    """A statement got its ReadyForQuery: query counters; a transaction ends at an idle ReadyForQuery."""
    compat = client.compat
    now = _monotonic()
    compat.last_reply = now
    db = compat.db
    if db is None:
        return
    db.query_count += 1
    db.query_time += int(elapsed * 1_000_000)
    if not compat.xact_start:
        compat.xact_start = now - elapsed
    if client.tx_status == codes.TX_IDLE:
        db.xact_count += 1
        db.xact_time += int((now - compat.xact_start) * 1_000_000)
        compat.xact_start = 0.0


def refuse_block(client: ClientSession, info: StatementInfo) -> bool:
    """Statement pooling: BEGIN/START TRANSACTION on its own ends the client before it reaches a server."""
    if client.compat.statement_mode and info.statements == 1 and info.tx in (TxControl.BEGIN,
                                                                             TxControl.BEGIN_READ_ONLY):
        client.close("08P01", STATEMENT_MODE_ERROR)
        return True
    return False


def refuse_transaction(client: ClientSession, status: int) -> bool:
    """Statement pooling: a ReadyForQuery inside a transaction ends the client (PgBouncer's 08P01)."""
    if status != codes.TX_IDLE and client.compat.statement_mode:
        client.close("08P01", STATEMENT_MODE_ERROR)
        return True
    return False


class Janitor:
    """Closes clients past query_timeout, idle_transaction_timeout or client_idle_timeout (a Server extra)."""

    def __init__(self, ctx: ProxyContext):
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    def _period(self) -> float | None:
        p = self.ctx.config.pool
        ts = [t for t in (p.query_timeout, p.idle_transaction_timeout, p.client_idle_timeout) if t > 0]
        if not ts:
            return None
        return min(1.0, max(0.02, min(ts) / 10.0))

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def configure(self, _config: Config) -> None:
        pass  # the loop reads ctx.config each round

    async def _loop(self) -> None:
        while True:
            period = self._period()
            await asyncio.sleep(period or 1.0)
            if period is not None:
                try:
                    self.sweep()
                except Exception:
                    log.exception("timeout sweep failed")

    def sweep(self) -> None:
        p = self.ctx.config.pool
        now = _monotonic()
        for c in list(self.ctx.clients):
            if c.admin or getattr(c, "phase", None) != 3:  # READY
                continue
            compat: ClientCompat = c.compat
            busy = c.pending > 0 or bool(c.expect)
            if busy and c.backend is not None:
                if p.query_timeout > 0 and now - compat.request_time > p.query_timeout:
                    breakers = self.ctx.breakers
                    if breakers is not None and c.inflight and c.scanner.bytes_seen == c.inflight[0].start_bytes:
                        # Not a byte from the server since the statement went out: an unresponsive server.
                        breakers.failure(c.backend.node, "query timeout without a reply from the server")
                    _timeout(c, QUERY_TIMEOUT)
            elif c.backend is not None and c.tx_status != codes.TX_IDLE:
                idle_since = max(compat.request_time, compat.last_reply)
                if p.idle_transaction_timeout > 0 and now - idle_since > p.idle_transaction_timeout:
                    _timeout(c, IDLE_TX_TIMEOUT)
            elif (
                c.backend is None
                and c.stalled is None
                and p.client_idle_timeout > 0
                and now - compat.request_time > p.client_idle_timeout
            ):
                _timeout(c, CLIENT_IDLE_TIMEOUT)


def _timeout(client: Any, reason: str) -> None:
    log.info("client %s user=%s: closing because: %s", client.peer, client.user, reason)
    client.close("08P01", reason)
