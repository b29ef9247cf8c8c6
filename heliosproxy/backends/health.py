"""Health checks: one checker per node on its own connection, writing role, state and lag into the Registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.registry import Node, NodeState, Registry
from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import Config, Role
from heliosproxy.errors import BackendAuthError
from heliosproxy.protocol.auth import Credential

log = logging.getLogger("heliosproxy.health")

# One round trip: recovery flag, the node's own LSN (current WAL on a primary, replayed WAL on a
# standby), received LSN, replay delay (0 when idle and caught up: everything received is replayed)
# and timeline (from the current WAL file name on a primary: right after a promotion the checkpoint
# record still shows the old one).
PROBE_SQL = """\
SELECT r,
  CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
  CASE WHEN r THEN pg_last_wal_receive_lsn() END,
  CASE WHEN NOT r THEN 0
       WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
       ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0) END,
  CASE WHEN NOT r THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       ELSE coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                     (SELECT timeline_id FROM pg_control_checkpoint())) END,
  CASE WHEN NOT r THEN (SELECT string_agg(application_name, ',') FROM pg_stat_replication
                        WHERE sync_state IN ('sync', 'quorum')) END
FROM (SELECT pg_is_in_recovery() AS r) s"""

# Between full checks, every health.lag_interval: the WAL position routing.consistency compares.
# On a primary the *insert* position: it is at or past the end of every record already inserted,
# so of every commit acknowledged before this query was sent (pg_current_wal_lsn() is the write
# position, which may still be behind a commit with synchronous_commit = off).
LSN_SQL = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_insert_lsn() END"
)

# For a checker user without access to the WAL functions: role only.
BASIC_PROBE_SQL = "SELECT pg_is_in_recovery(), NULL, NULL, NULL, NULL, NULL"


def parse_lsn(text: str | None) -> int | None:
    """'16/B374D848' -> 0x16B374D848; None stays None."""
    if not text:
        return None
    hi, _, lo = text.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        return None


@dataclass(slots=True)
class Probe:
    """What one successful check saw."""

    in_recovery: bool
    lsn: int | None  # current WAL LSN on a primary, replay LSN on a standby
    receive_lsn: int | None
    lag_ms: float | None
    timeline: int | None
    at: float
    sync_standbys: tuple[str, ...] = ()  # on a primary: application_names of its synchronous standbys
    sent: float = 0.0  # when the probe query was sent (monotonic)


def checker_credentials(config: Config) -> tuple[str, str | Credential | None]:
    """The user the checks log in as: health.user with health.password, else health.user from `users`,
    else the first user with a plaintext password (then an md5 hash: md5 servers accept it)."""
    if config.health.user is not None:
        if config.health.password is not None:
            return config.health.user, config.health.password
        u = config.user(config.health.user)
        if u is not None:
            return u.name, _credential(u.password)
        log.error("health.user %r is not in users; using the first user with a password", config.health.user)
    creds = [(u.name, _credential(u.password)) for u in config.users if u.password is not None]
    for want in ("plaintext", "md5"):
        for name, cred in creds:
            if cred is not None and cred.kind == want:
                return name, cred
    if config.users:
        return config.users[0].name, None
    return "postgres", None


def _credential(password: str | None) -> Credential | None:
    try:
        return Credential.parse(password) if password is not None else None
    except ValueError:  # config.load refuses these; never crash a health check on one
        return None


class NodeChecker:
    """Checks one node every health.interval on a connection of its own."""

    def __init__(self, monitor: HealthMonitor, name: str):
        self.monitor = monitor
        self.name = name
        self.conn: BackendConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.basic = False  # the checker user cannot call the WAL functions
        self.last_probe: Probe | None = None
        self.wake = asyncio.Event()
        self.full_due = False  # wake for a full check (else: only an early WAL position sample)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"health-{self.name}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            self.full_due = False
            await self.check()
            # Until the next full check: WAL position samples every lag_interval (or when woken).
            while True:
                health = self.monitor.config.health
                now = time.monotonic()
                left = started + health.interval - now
                if left <= 0 or self.full_due:
                    break
                lag = health.lag_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), min(left, lag) if lag else left)
                woke = self.wake.is_set()
                self.wake.clear()  # before sampling: a request made until now is served by this sample
                if self.full_due or time.monotonic() >= started + health.interval:
                    break
                if lag or woke:
                    await self.sample()

    def request_check(self) -> None:
        """Run a full check now."""
        self.full_due = True
        self.wake.set()

    def request_sample(self) -> None:
        """Sample the WAL position now (a client's write was just acknowledged)."""
        self.wake.set()

    async def sample(self) -> None:
        """One WAL position sample on the checker's connection (skipped while it has none)."""
        conn = self.conn
        if conn is None or conn.closed or self.basic:
            return
        sent = time.monotonic()
        try:
            rows = await asyncio.wait_for(conn.query(LSN_SQL), self.monitor.config.health.timeout)
        except (OSError, TimeoutError, ConnectionError, QueryError) as exc:
            log.debug("health: node %s: WAL position sample failed: %s", self.name, exc)
            self._drop()  # the next full check reconnects and judges the node
            return
        r = rows[0]
        self.monitor.record_lsn(self.name, r[0] == "t", parse_lsn(r[1]), sent)

    async def check(self) -> Probe | None:
        """Run one check now and record its outcome in the registry; the probe, or None on failure."""
        cfg = self.monitor.config
        node = self.monitor.registry.nodes.get(self.name)
        if node is None:
            return None
        timeout = cfg.health.timeout
        try:
            probe = await asyncio.wait_for(self._probe(node), timeout)
        except (OSError, TimeoutError, ConnectionError, BackendAuthError, QueryError) as exc:
            self._drop()
            reason = _reason(exc, timeout)
            self.monitor.record_failure(self.name, reason)
            return None
        self.last_probe = probe
        self.monitor.record_success(self.name, probe)
        return probe

    async def _probe(self, node: Node) -> Probe:
        conn = self.conn
        if conn is None or conn.closed:
            user, password = checker_credentials(self.monitor.config)
            conn = await connect(
                self.name,
                node.cfg.host,
                node.cfg.port,
                user,
                password,
                self.monitor.config.health.database,
                timeout=self.monitor.config.health.timeout,
                params={"application_name": "heliosproxy-health"},
                tls=node_tls(self.monitor.config, node.cfg),
            )
            self.conn = conn
        sent = time.monotonic()
        try:
            rows = await conn.query(BASIC_PROBE_SQL if self.basic else PROBE_SQL)
        except QueryError as exc:
            if exc.sqlstate == "42501" and not self.basic:
                log.warning("health: node %s: %s; checking the role only (grant pg_monitor for lag)",
                            self.name, exc.message)
                self.basic = True
                rows = await conn.query(BASIC_PROBE_SQL)
            else:
                raise
        r = rows[0]
        return Probe(
            in_recovery=r[0] == "t",
            lsn=parse_lsn(r[1]),
            receive_lsn=parse_lsn(r[2]),
            lag_ms=float(r[3]) if r[3] is not None else None,
            timeline=int(r[4]) if r[4] is not None else None,
            at=time.monotonic(),
            sync_standbys=tuple(x for x in (r[5] or "").split(",") if x) if len(r) > 5 else (),
            sent=sent,
        )


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"check timed out after {timeout:g}s"
    if isinstance(exc, BackendAuthError | QueryError):
        return f"{exc.message} ({exc.sqlstate})"
    return str(exc) or exc.__class__.__name__


class HealthMonitor:
    """All node checkers. Writes the one authoritative node state into the Registry;
    `on_update(name)` runs after every check (failover listens there)."""

    def __init__(self, config: Config, registry: Registry):
        self.config = config
        self.registry = registry
        self.checkers: dict[str, NodeChecker] = {}
        self.listeners: list[Callable[[str], None]] = []
        self.on_down: list[Callable[[str], None]] = []
        self.primary_lsn: int | None = None
        self.primary_lsn_at = 0.0
        self.checks_total = 0
        self.check_failures_total = 0
        self._running = False
        self._stopping: set[asyncio.Task[None]] = set()  # checkers of removed nodes, stopping

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._running = True
        for name in self.registry.nodes:
            self._add(name)

    async def stop(self) -> None:
        self._running = False
        for checker in list(self.checkers.values()):
            await checker.stop()
        self.checkers.clear()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping a health checker failed: %r", task.exception())

    def configure(self, config: Config) -> None:
        """After a reload (the registry is already reconfigured): checkers for added nodes, none for removed."""
        self.config = config
        if not self._running:
            return
        for name in list(self.checkers):
            node = self.registry.nodes.get(name)
            if node is None:
                checker = self.checkers.pop(name)
                task = asyncio.get_running_loop().create_task(checker.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopped)
            elif self.checkers[name].conn is not None and (
                self.checkers[name].conn.host,  # type: ignore[union-attr]
                self.checkers[name].conn.port,  # type: ignore[union-attr]
            ) != (node.cfg.host, node.cfg.port):
                self.checkers[name]._drop()
        for name in self.registry.nodes:
            if name not in self.checkers:
                self._add(name)
        for checker in self.checkers.values():
            checker.request_check()

    def _add(self, name: str) -> None:
        checker = NodeChecker(self, name)
        self.checkers[name] = checker
        checker.start()

    async def check_all(self) -> None:
        """Check every node once, now (tests and the admin use it)."""
        await asyncio.gather(*(c.check() for c in list(self.checkers.values())))

    def request_sample(self, name: str | None) -> None:
        """Ask node `name`'s checker for a WAL position sample now."""
        checker = self.checkers.get(name) if name is not None else None
        if checker is not None:
            checker.request_sample()

    # ------------------------------------------------------------------ state transitions
    def record_lsn(self, name: str, in_recovery: bool, lsn: int | None, sent: float) -> None:
        """A WAL position sample (see LSN_SQL) sent at monotonic time `sent`."""
        node = self.registry.nodes.get(name)
        if node is None or lsn is None:
            return
        if in_recovery != (node.role is Role.STANDBY) or node.shadow:
            node.wal_lsn = None  # its role changed: the next full check sorts it out
            return
        if sent > node.wal_lsn_sent:
            node.wal_lsn = lsn
            node.wal_lsn_sent = sent
    def record_success(self, name: str, probe: Probe) -> None:
        node = self.registry.nodes.get(name)
        if node is None:
            return
        self.checks_total += 1
        before = _fingerprint(node)
        now = time.monotonic()
        node.last_check = now
        node.last_error = None
        node.consecutive_failures = 0
        node.consecutive_successes += 1
        node.in_recovery = probe.in_recovery
        role = Role.STANDBY if probe.in_recovery else Role.PRIMARY
        if node.shadow:
            role = Role.SHADOW  # whatever the server is, it stays a mirror target
        if role is not node.role:
            node.wal_lsn = None  # a sample of the other role means nothing now
            node.wal_lsn_sent = max(node.wal_lsn_sent, probe.sent)
        node.role = role
        if probe.timeline is not None:
            node.timeline = probe.timeline
        if probe.in_recovery:
            node.lag_ms = probe.lag_ms
            node.lag_bytes = self._lag_bytes(probe)
            if probe.lsn is not None and probe.sent > node.wal_lsn_sent:
                node.wal_lsn, node.wal_lsn_sent = probe.lsn, probe.sent
        else:
            node.lag_ms = 0.0 if probe.lsn is not None else None
            node.lag_bytes = 0 if probe.lsn is not None else None
            if name == self.registry.primary and probe.lsn is not None and not node.shadow:
                self.primary_lsn = probe.lsn
                self.primary_lsn_at = now
            if name == self.registry.primary:
                # Standbys are known by application_name = node name in their primary_conninfo.
                self.registry.sync_standbys = frozenset(probe.sync_standbys)
        health = self.config.health
        if node.state is NodeState.CONFLICT:
            pass  # only failover clears a conflict
        elif node.state is NodeState.DOWN and node.consecutive_successes < health.successes_before_up:
            pass
        else:
            node.state = NodeState.LAGGING if self._lagging(node) else NodeState.UP
        if before != _fingerprint(node):
            if before[0] != node.state:
                node.changed_at = now
                log.info("node %s is %s (%s, lag %s bytes / %s ms)", name, node.state.value,
                         node.role.value, node.lag_bytes, _ms(node.lag_ms))
            self.registry.changed()
        self._notify(name)

    def record_failure(self, name: str, reason: str) -> None:
        node = self.registry.nodes.get(name)
        if node is None:
            return
        self.checks_total += 1
        self.check_failures_total += 1
        now = time.monotonic()
        node.last_check = now
        node.last_error = reason
        node.consecutive_successes = 0
        node.consecutive_failures += 1
        # The write target goes down after failures_before_down failures (that is what starts a
        # failover); any other node leaves the read rotation at its first failed check.
        threshold = self.config.health.failures_before_down if name == self.registry.primary else 1
        if node.state is not NodeState.DOWN and node.consecutive_failures >= threshold:
            node.state = NodeState.DOWN
            node.changed_at = now
            log.warning("node %s is down after %d failed check(s): %s", name, node.consecutive_failures, reason)
            self.registry.changed()
            for cb in self.on_down:
                cb(name)
        elif node.consecutive_failures == 1:
            log.info("node %s: check failed: %s", name, reason)
        self._notify(name)

    def _notify(self, name: str) -> None:
        for cb in self.listeners:
            try:
                cb(name)
            except Exception:
                log.exception("health listener failed")

    def _lag_bytes(self, probe: Probe) -> int | None:
        if probe.lsn is None:
            return None
        ref = self.primary_lsn
        if ref is None:
            ref = probe.receive_lsn
        if ref is None:
            return None
        return max(0, ref - probe.lsn)

    def _lagging(self, node: Node) -> bool:
        if node.role is not Role.STANDBY:
            return False
        r = self.config.routing
        if r.max_lag_bytes is not None and node.lag_bytes is not None and node.lag_bytes > r.max_lag_bytes:
            return True
        return r.max_lag_ms is not None and node.lag_ms is not None and node.lag_ms > r.max_lag_ms


def _fingerprint(node: Node) -> tuple[NodeState, Role, int | None, bool | None]:
    return node.state, node.role, node.timeline, node.in_recovery


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"
