"""Where an auto-routed read may run: routing.consistency by WAL position, function volatility, time floor.

session: a client's write is acknowledged when its ReadyForQuery arrives (`acknowledged`). The
position it must see is the primary's WAL *insert* position sampled by a query sent after that
moment (health.lag_interval samples, one requested right away): every commit acknowledged before
the sample was sent ends at or before it. Until such a sample exists, and while no standby's
replay position (sampled the same way) has reached it, the client's reads go to the primary.
strong: the same with the last write acknowledged to any client of this worker process.
eventual: any usable standby; routing.read_your_writes_ms keeps a session's reads on the primary
for that long after its write (a floor that applies in every mode).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from heliosproxy.config.schema import Config, Consistency, DatabaseRoute, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.routing.catalog import Catalog
from heliosproxy.routing.router import Router, Target
from heliosproxy.sql.classify import StatementInfo, TxControl

_log = logging.getLogger("heliosproxy.routing")

# Reasons a read went to the primary instead of a standby (heliosproxy_reads_on_primary_total).
POSITION_UNKNOWN = "position_unknown"  # wrote; no primary WAL sample taken after the write yet
STANDBY_BEHIND = "standby_behind"  # no standby has replayed up to the write's position
TIME_FLOOR = "read_your_writes_ms"  # within read_your_writes_ms of the session's last write
FUNCTION_UNKNOWN = "function_lookup"  # calls a function whose volatility is not known yet
# Statement kinds that change nothing another session could read.
_NO_WRITE = frozenset(
    {
        "VariableSetStmt", "VariableShowStmt", "DiscardStmt", "DeallocateStmt", "PrepareStmt",
        "ListenStmt", "UnlistenStmt",
    }
)
_SAMPLE_EVERY = 0.01  # at most this often the planner asks for an early WAL sample


class SessionReads:
    """One client's consistency state: when its last write was acknowledged, the position to see."""

    __slots__ = ("ack_at", "need_lsn", "read_only_tx", "tx_ddl")

    def __init__(self) -> None:
        self.ack_at = 0.0  # monotonic time of the last acknowledged write; 0 = none pending
        self.need_lsn = 0  # the primary position that write is within (0 = not known yet)
        self.tx_ddl = False  # the open transaction changed the catalog
        self.read_only_tx = False  # the open transaction began READ ONLY (its COMMIT wrote nothing)


class ReadPlanner:
    """Decides read targets for auto-routed reads and keeps the counters behind the metrics."""

    def __init__(
        self,
        config: Config,
        router: Router,
        catalog: Catalog,
        request_sample: Callable[[str | None], None] | None = None,
    ):
        self.router = router
        self.catalog = catalog
        self.request_sample = request_sample or (lambda _n: None)
        self.everyone = SessionReads()  # strong: writes acknowledged to any client
        self.moved: dict[str, int] = {}  # reason -> reads sent to the primary
        self.retried_read_only = 0  # autocommit reads refused by a standby (25006) rerun on the primary
        self._asked = 0.0
        self._auto: dict[str, Target] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.mode = config.routing.consistency
        self.ryw = config.routing.read_your_writes_ms
        self.catalog.configure(config)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.catalog.stop()

    # ------------------------------------------------------------------ writes
    def acknowledged(self, s: SessionReads, info: StatementInfo | None, idle: bool, database: str) -> None:
        """A statement that ran as a write (on the primary) got its ReadyForQuery."""
        if info is not None and info.read_only and (
            not info.functions or self.catalog.needs_primary(database, None, info.functions) is False
        ):
            return  # a read sent to the primary by a hint or SET helios.route: it wrote nothing
        if info is not None and info.ddl:
            s.tx_ddl = True
        if not idle:
            return
        if s.tx_ddl:
            s.tx_ddl = False
            self.catalog.forget(database)
        if s.read_only_tx:
            s.read_only_tx = False
            if info is not None and info.tx is TxControl.COMMIT:
                return
        if info is not None and (info.tx is TxControl.ROLLBACK or (info.kinds and _NO_WRITE.issuperset(info.kinds))):
            return
        now = time.monotonic()
        s.ack_at = now
        s.need_lsn = 0
        if self.mode is Consistency.STRONG:
            self.everyone.ack_at = now
            self.everyone.need_lsn = 0
        if now - self._asked > _SAMPLE_EVERY:
            self._asked = now
            self.request_sample(self.router.registry.primary)

    # ------------------------------------------------------------------ reads
    def read_target(
        self,
        s: SessionReads,
        last_write_at: float,
        info: StatementInfo | None,
        database: str,
        user: str,
        lag_ms: float | None,
    ) -> Target | None:
        """Where an auto-routed read goes; None = the primary as for a write."""
        router = self.router
        if info is not None and info.tx is TxControl.BEGIN_READ_ONLY:
            s.read_only_tx = True
        if info is not None and info.functions:
            verdict = self.catalog.needs_primary(database, user, info.functions)
            if verdict:
                return None  # calls a volatile function: a write
            if verdict is None:
                return self._moved(FUNCTION_UNKNOWN, lag_ms)
        if self.ryw and (time.monotonic() - last_write_at) * 1000.0 < self.ryw:
            return self._moved(TIME_FLOOR, lag_ms)
        mode = self.mode
        if mode is Consistency.EVENTUAL:
            return self._retryable(router.read_target(lag_ms))
        state = self.everyone if mode is Consistency.STRONG else s
        if not state.ack_at:
            return self._retryable(router.read_target(lag_ms))
        need = state.need_lsn
        if not need:
            p = router.registry.primary_node()
            if p is None:
                return router.read_target(lag_ms)  # no primary: the freshest we can do
            if p.wal_lsn is None or p.wal_lsn_sent <= state.ack_at:
                return self._moved(POSITION_UNKNOWN, lag_ms)
            need = state.need_lsn = p.wal_lsn
        t = router.standby(lag_ms, need)
        if t is not None:
            return self._retryable(t)
        if router.standby(lag_ms) is None:
            return router.read_target(lag_ms)  # no standby at all: standby_fallback decides
        if router.primary() is None:
            return router.read_target(lag_ms)
        now = time.monotonic()
        if now - self._asked > _SAMPLE_EVERY:
            self._asked = now
            for n in router.registry.standbys():
                self.request_sample(n.name)
        return self._moved(STANDBY_BEHIND, lag_ms)

    def _moved(self, reason: str, lag_ms: float | None) -> Target | None:
        t = self.router.primary()
        if t is None:
            return self.router.read_target(lag_ms)  # no primary: a standby rather than a wait
        self.moved[reason] = self.moved.get(reason, 0) + 1
        return t

    def _retryable(self, t: Target | None) -> Target | None:
        """The auto-routed twin of a standby target (its 25006 refusal may rerun on the primary)."""
        if t is None or t.route != "standby" or not self.config.routing.retry_read_only_errors:
            return t
        a = self._auto.get(t.node)
        if a is None:
            a = self._auto[t.node] = Target(t.node, None, "standby", True)
        return a

    # ------------------------------------------------------------------ login
    def login_target(self, route: DatabaseRoute, mode: PoolMode) -> Target | None:
        """The node whose ParameterStatus a client gets at login; None = wait for a primary.
        Transaction pooling needs no primary to log in: any healthy node answers."""
        router = self.router
        if route is DatabaseRoute.STANDBY:
            return router.standby() or router.primary()
        if route is DatabaseRoute.PRIMARY or mode is PoolMode.SESSION:
            return router.primary()
        return router.primary() or router.standby()

    @staticmethod
    def reported_params(route: DatabaseRoute) -> dict[str, str]:
        """What libpq's target_session_attrs looks at: a read-only alias is a standby, the rest a primary."""
        v = "on" if route is DatabaseRoute.STANDBY else "off"
        return {"default_transaction_read_only": v, "in_hot_standby": v}

    async def admit_database(self, database: str, user: str, pool_databases: set[str], pools: int) -> None:
        """Raise FATAL-worthy errors for a database that gets no pool: 3D000 when no server has it
        (asked once, cached briefly), 53300 past pool.max_pools."""
        if database in pool_databases:
            if self.config.routing.read_write_split:
                self.catalog.ensure_loading(database, user)  # its pools may be busy: never wait at login
            return
        if pools >= self.config.pool.max_pools:
            raise HeliosError(
                f"sorry, too many pools (pool.max_pools = {self.config.pool.max_pools})", sqlstate="53300"
            )
        try:
            exists = await self.catalog.database_exists(database)
        except Exception as exc:  # no server to ask: the pool's own connect reports what is wrong
            _log.info("cannot check that database %s exists: %s", database, getattr(exc, "message", None) or exc)
            return
        if not exists:
            raise HeliosError(f'database "{database}" does not exist', sqlstate="3D000")
        if self.config.routing.read_write_split:
            await self.catalog.ensure_loaded(database, user)


_I = struct.Struct("!I")


def error_sqlstate(data: bytes | bytearray) -> str | None:
    """The SQLSTATE of the first ErrorResponse among whole backend messages in `data`, if any."""
    pos = 0
    n = len(data)
    while n - pos >= 5:
        end = pos + 1 + _I.unpack_from(data, pos + 1)[0]
        if data[pos] == codes.B_ERROR:
            return messages.parse_error_fields(bytes(data[pos + 5 : end])).get("C")
        pos = end
    return None
