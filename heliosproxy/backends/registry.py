"""The one authoritative state per node (role, up/down, lag, disabled) read by the router, admin and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from heliosproxy.config.schema import Config, NodeConfig, Role


class NodeState(str, Enum):
    UNKNOWN = "unknown"  # not probed yet: treated as usable
    UP = "up"
    DOWN = "down"
    LAGGING = "lagging"
    CONFLICT = "conflict"  # claims primary while a newer primary exists


@dataclass(slots=True)
class Node:
    cfg: NodeConfig
    role: Role  # as the server reports it (configured role until probed)
    state: NodeState = NodeState.UNKNOWN
    disabled: bool = False
    lag_bytes: int | None = None
    lag_ms: float | None = None
    timeline: int | None = None
    in_recovery: bool | None = None
    last_check: float = 0.0
    last_error: str | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    changed_at: float = field(default_factory=time.monotonic)
    # WAL position sampled every health.lag_interval: insert LSN on a primary, replay LSN on a
    # standby; wal_lsn_sent is when the sampling query was sent (monotonic), wal_lsn_tli its timeline.
    wal_lsn: int | None = None
    wal_lsn_sent: float = 0.0
    breaker: str = "closed"  # circuit breaker (routing/breaker.py): closed | open | half_open

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def shadow(self) -> bool:
        """A mirror target (role: shadow): no client traffic, never promoted, never a write target."""
        return self.cfg.role is Role.SHADOW

    @property
    def usable(self) -> bool:
        return not self.disabled and self.state in (NodeState.UNKNOWN, NodeState.UP, NodeState.LAGGING)


class Registry:
    """Nodes by name plus the current write target. Health checks and failover mutate it; the router reads it."""

    def __init__(self, config: Config):
        self.nodes: dict[str, Node] = {}
        self.primary: str | None = None
        self.generation = 0  # bumped on every change the router must notice
        self.failovers = 0
        self.sync_standbys: frozenset[str] = frozenset()  # as the primary last reported them
        self.configure(config)

    def configure(self, config: Config) -> None:
        old = self.nodes
        self.nodes = {}
        for nc in config.nodes:
            prev = old.get(nc.name)
            if prev is not None and (prev.cfg.host, prev.cfg.port) == (nc.host, nc.port):
                prev.cfg = nc
                if nc.role is Role.SHADOW:
                    prev.role = Role.SHADOW
                self.nodes[nc.name] = prev
            else:
                self.nodes[nc.name] = Node(nc, nc.role)
        if self.primary in self.nodes and self.nodes[self.primary].shadow:
            self.primary = None  # a node made a shadow is no write target any more
        if self.primary not in self.nodes:
            self.primary = next((n.name for n in self.nodes.values() if n.role is Role.PRIMARY), None)
        self.generation += 1

    def standbys(self) -> list[Node]:
        """Usable nodes that serve reads: reported standbys that are not the write target."""
        return [
            n
            for n in self.nodes.values()
            if n.name != self.primary
            and n.role is Role.STANDBY
            and n.usable
            and n.state is not NodeState.LAGGING
            and n.breaker == "closed"
        ]

    def primary_node(self) -> Node | None:
        if self.primary is None:
            return None
        n = self.nodes.get(self.primary)
        if n is None or not n.usable:
            return None
        return n

    def set_primary(self, name: str | None) -> None:
        if name != self.primary:
            if self.primary is not None and name is not None:
                self.failovers += 1
            self.primary = name
            self.generation += 1

    def changed(self) -> None:
        self.generation += 1
