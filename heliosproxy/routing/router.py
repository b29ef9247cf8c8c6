"""Turns a statement's class, hints and session preferences into a target node and database."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from heliosproxy.backends.registry import Node, Registry
from heliosproxy.config.schema import Config, Fallback, Policy
from heliosproxy.errors import BackendUnavailable, InsufficientPrivilege, UndefinedObject


@dataclass(frozen=True, slots=True)
class Target:
    node: str
    database: str | None  # None: the client's own database
    route: str  # primary | standby | node | branch  (for metrics and post_query)
    auto: bool = False  # a standby chosen by classification alone (a 25006 refusal may rerun on the primary)


class Router:
    """Primitives over the registry (primary, standby by policy, node, branch); routing.decide combines them."""

    def __init__(self, config: Config, registry: Registry, active_on: Callable[[str], int] | None = None):
        self.registry = registry
        self.active_on = active_on or (lambda _n: 0)
        self._rr = 0
        self._cached_gen = -1
        self._wheel: list[Node] = []
        self._targets: dict[str, Target] = {}  # standby targets, reused
        self._primary_cache: tuple[int, Target | None] | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.routing = config.routing
        self._cached_gen = -1
        self._primary_cache = None

    # ------------------------------------------------------------------ primitives
    def primary(self) -> Target | None:
        reg = self.registry
        cached = self._primary_cache
        if cached is not None and cached[0] == reg.generation:
            return cached[1]
        node = reg.primary_node()
        target = None if node is None else Target(node.name, None, "primary")
        self._primary_cache = (reg.generation, target)
        return target

    def _standby_wheel(self) -> list[Node]:
        if self._cached_gen != self.registry.generation:
            wheel: list[Node] = []
            for n in self.registry.standbys():
                wheel.extend([n] * max(1, n.cfg.weight))
            self._wheel = wheel
            self._cached_gen = self.registry.generation
        return self._wheel

    def standby(self, max_lag_ms: float | None = None, min_lsn: int = 0) -> Target | None:
        """A usable standby by policy (one that replayed min_lsn, when given), or None."""
        wheel = self._standby_wheel()
        if max_lag_ms is not None:
            wheel = [n for n in wheel if n.lag_ms is None or n.lag_ms <= max_lag_ms]
        if min_lsn:
            wheel = [n for n in wheel if n.wal_lsn is not None and n.wal_lsn >= min_lsn]
        if not wheel:
            return None
        policy = self.routing.policy
        if policy is Policy.ROUND_ROBIN:
            self._rr += 1
            node = wheel[self._rr % len(wheel)]
        elif policy is Policy.RANDOM:
            node = random.choice(wheel)
        else:
            seen: dict[str, Node] = {n.name: n for n in wheel}
            node = min(seen.values(), key=lambda n: self.active_on(n.name) / max(1, n.cfg.weight))
        t = self._targets.get(node.name)
        if t is None:
            t = self._targets[node.name] = Target(node.name, None, "standby")
        return t

    def read_target(self, max_lag_ms: float | None = None) -> Target | None:
        """Where a read goes: a standby, else per standby_fallback."""
        t = self.standby(max_lag_ms)
        if t is not None:
            return t
        if self.routing.standby_fallback is Fallback.ERROR:
            raise BackendUnavailable("no standby is available for a read", sqlstate="08006")
        return self.primary()

    def node(self, name: str) -> Target:
        node = self.registry.nodes.get(name)
        if node is None:
            raise UndefinedObject(f'node "{name}" does not exist')
        if node.shadow:
            raise InsufficientPrivilege(f'node "{name}" is a shadow node (a mirror target): no client statements')
        return Target(name, None, "node")

    def branch(self, name: str) -> Target:
        b = self.config.branch(name)
        if b is None:
            raise UndefinedObject(f'branch "{name}" does not exist')
        return Target(b.node, b.database, "branch")
