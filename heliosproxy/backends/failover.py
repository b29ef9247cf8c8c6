"""Failover: follow a promotion to the new write target, fence a returning old primary, optionally promote."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from heliosproxy.backends.connection import QueryError, connect
from heliosproxy.backends.health import HealthMonitor, checker_credentials
from heliosproxy.backends.registry import Node, NodeState, Registry
from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import Config, Role
from heliosproxy.errors import BackendAuthError

log = logging.getLogger("heliosproxy.failover")


class FailoverManager:
    """Decides the write target from what the health checks saw.

    - The write target is the reachable node that reports it is not in recovery; when several do,
      the one on the highest timeline (the newest promotion) wins and the others are marked
      `conflict` (no reads, no writes) until they rejoin as standbys or the winner goes away.
    - When the write target reports it is in recovery again (demoted), writes wait for a new one.
    - With failover.promote, after failover.primary_down_for without a primary the best standby
      (least replay lag, then highest priority, then name) is promoted with pg_promote().
    `drain(node)` is called for the node that lost the write role (its pooled connections go).
    """

    def __init__(self, config: Config, registry: Registry, health: HealthMonitor, drain: Callable[[str], None]):
        self.config = config
        self.registry = registry
        self.health = health
        self.drain = drain
        self.conflicts_total = 0
        self.promotions_ok = 0
        self.promotions_failed = 0
        self.last_primary: str | None = registry.primary
        self.primary_missing_since: float | None = None
        self.last_event: str | None = None
        self._promoting: asyncio.Task[None] | None = None
        health.listeners.append(self.evaluate)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._promoting is not None:
            self._promoting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._promoting

    def configure(self, config: Config) -> None:
        self.config = config

    # ------------------------------------------------------------------ decisions
    @staticmethod
    def _claims_primary(n: Node) -> bool:
        """Reachable (its last check succeeded), not disabled, and out of recovery."""
        return (
            not n.shadow
            and n.in_recovery is False
            and n.last_error is None
            and n.state is not NodeState.DOWN
            and n.state is not NodeState.UNKNOWN
            and not n.disabled
        )

    def evaluate(self, _changed: str | None = None) -> None:
        reg = self.registry
        claimants = [n for n in reg.nodes.values() if self._claims_primary(n)]
        current = reg.nodes.get(reg.primary) if reg.primary is not None else None
        if claimants:
            winner = max(
                claimants,
                key=lambda n: (n.timeline or 0, n is current, n.cfg.priority, n.cfg.role is Role.PRIMARY),
            )
            if winner is not current:
                self._switch(winner, "reports it is out of recovery" + _tl(winner))
            for n in claimants:
                if n is winner:
                    continue
                if n.state is not NodeState.CONFLICT:
                    n.state = NodeState.CONFLICT
                    n.changed_at = time.monotonic()
                    self.conflicts_total += 1
                    self.last_event = (f"conflict: node {n.name}{_tl(n)} claims primary while {winner.name}"
                                       f"{_tl(winner)} is the write target; fenced off")
                    log.error("%s", self.last_event)
                    reg.changed()
        elif current is not None and current.in_recovery is True and current.last_error is None:
            # The write target was demoted (rejoined as a standby): no writes until a new primary shows up.
            self.last_event = f"node {current.name} is in recovery: no primary until one is promoted"
            log.warning("%s", self.last_event)
            reg.set_primary(None)
        # Conflicts end when the node rejoins as a standby (or is the winner now).
        for n in reg.nodes.values():
            if n.state is NodeState.CONFLICT and (n.in_recovery is True or n.name == reg.primary):
                n.state = NodeState.UP
                n.changed_at = time.monotonic()
                log.info("node %s no longer conflicts (%s)", n.name,
                         "write target" if n.name == reg.primary else "in recovery")
                reg.changed()
        self._watch_primary()

    def _switch(self, winner: Node, why: str) -> None:
        reg = self.registry
        old = reg.primary
        reg.set_primary(winner.name)
        if old is None and self.last_primary is not None and self.last_primary != winner.name:
            reg.failovers += 1  # set_primary counts only direct switches
        winner.role = Role.PRIMARY
        if winner.state is NodeState.CONFLICT:
            winner.state = NodeState.UP
        previous = old or self.last_primary
        self.last_event = f"failover: writes now go to {winner.name} ({why}); previous write target {previous}"
        log.warning("%s", self.last_event)
        self.last_primary = winner.name
        self.primary_missing_since = None
        if previous is not None and previous != winner.name:
            self.drain(previous)

    # ------------------------------------------------------------------ promotion
    def _watch_primary(self) -> None:
        now = time.monotonic()
        if self.registry.primary_node() is not None:
            self.primary_missing_since = None
            if self.registry.primary is not None:
                self.last_primary = self.registry.primary
            return
        if self.primary_missing_since is None:
            self.primary_missing_since = now
            return
        fo = self.config.failover
        if not fo.promote or (self._promoting is not None and not self._promoting.done()):
            return
        if now - self.primary_missing_since < fo.primary_down_for:
            return
        candidate = self.best_standby()
        if candidate is None:
            return
        self.primary_missing_since = now  # the next attempt waits primary_down_for again
        self._promoting = asyncio.get_running_loop().create_task(self._promote(candidate))

    def best_standby(self) -> Node | None:
        """Usable standbys: synchronous first (as the primary last reported), then least replay lag,
        then highest priority, then name."""
        cands = [
            n
            for n in self.registry.nodes.values()
            if n.in_recovery is True and n.state in (NodeState.UP, NodeState.LAGGING) and not n.disabled
            and not n.shadow
        ]
        if not cands:
            return None
        inf = float("inf")
        return min(
            cands,
            key=lambda n: (
                n.name not in self.registry.sync_standbys,
                n.lag_bytes if n.lag_bytes is not None else inf,
                -n.cfg.priority,
                n.name,
            ),
        )

    async def _promote(self, node: Node) -> None:
        down_for = time.monotonic() - (self.primary_missing_since or time.monotonic())
        log.warning("failover.promote: no primary for %.1fs; promoting %s (lag %s bytes)",
                    max(down_for, self.config.failover.primary_down_for), node.name, node.lag_bytes)
        user, password = checker_credentials(self.config)
        try:
            conn = await connect(node.name, node.cfg.host, node.cfg.port, user, password,
                                 self.config.health.database, timeout=self.config.health.timeout + 4,
                                 params={"application_name": "heliosproxy-failover"},
                                 tls=node_tls(self.config, node.cfg))
            try:
                rows = await asyncio.wait_for(conn.query("SELECT pg_promote(true, 30)"), 35)
                if not rows or rows[0][0] != "t":
                    raise RuntimeError("pg_promote() returned false")
                rows = await asyncio.wait_for(conn.query("SELECT pg_is_in_recovery()"), 5)
                if rows[0][0] != "f":
                    raise RuntimeError("still in recovery after pg_promote()")
            finally:
                conn.close()
        except (OSError, TimeoutError, ConnectionError, BackendAuthError, QueryError, RuntimeError) as exc:
            self.promotions_failed += 1
            msg = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
            self.last_event = f"promotion of {node.name} failed: {msg}"
            log.error("%s", self.last_event)
            return
        self.promotions_ok += 1
        self.last_event = f"promoted {node.name}"
        log.warning("failover.promote: %s left recovery", node.name)
        checker = self.health.checkers.get(node.name)
        if checker is not None:
            checker.request_check()  # by its own loop: never a second query on the checker's connection


def _tl(n: Node) -> str:
    return f" (timeline {n.timeline})" if n.timeline is not None else ""
