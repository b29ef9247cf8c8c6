"""Circuit breakers per node: closed -> open after repeated connection-class failures, half-open probe, closed.

Failures come from the data path (a server connection that cannot be opened or logged in with
08xxx/57P0x, one lost while in use, a proxy query_timeout with no reply from the server at all)
and from the node's health checks (a check that times out or cannot connect: what a hung server
does). `failures` of them within `window` open the breaker: the node leaves the read rotation and
statements that need it fail at once with 08006. After `open_for` it is half-open: the proxy asks
for a health check of the node right away, and that probe's outcome closes it (success) or opens it
again for another `open_for` (failure). Breakers live in each worker (each sees its own traffic and
runs its own health checks); the state is Node.breaker in the registry.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable

from heliosproxy.backends.registry import Registry
from heliosproxy.config.schema import BreakerConfig

log = logging.getLogger("heliosproxy.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
_SQLSTATE_IN_REASON = re.compile(r"\(([0-9A-Z]{5})\)\s*$")


def connection_class(sqlstate: str | None) -> bool:
    """Is this SQLSTATE a connection-class failure (08xxx, 57P0x)? None (no SQLSTATE: a socket error,
    a timeout) counts too."""
    return sqlstate is None or sqlstate.startswith("08") or sqlstate.startswith("57P0")


class Breaker:
    """One node's breaker."""

    __slots__ = ("failures", "handle", "opened", "opened_at", "state")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures: collections.deque[float] = collections.deque()
        self.opened_at = 0.0
        self.opened = 0  # times it opened (metrics)
        self.handle: asyncio.TimerHandle | None = None


class Breakers:
    """Every node's breaker over the registry; `blocked` is the set of nodes not closed (the fast check)."""

    def __init__(self, config: BreakerConfig, registry: Registry, request_check: Callable[[str], None]):
        self.config = config
        self.registry = registry
        self.request_check = request_check  # run a health check of this node now (the half-open probe)
        self.breakers: dict[str, Breaker] = {}
        self.blocked: set[str] = set()
        self.fast_fails: dict[str, int] = {}  # statements refused with 08006 per node (metrics)

    def configure(self, config: BreakerConfig) -> None:
        self.config = config
        for name in list(self.breakers):
            if name not in self.registry.nodes:
                self._set(name, self.breakers.pop(name), CLOSED)
            else:
                self.registry.nodes[name].breaker = self.breakers[name].state  # (a node rebuilt by the reload)

    def close_all(self) -> None:
        """Breakers switched off (reload): every node usable again."""
        for name, b in list(self.breakers.items()):
            self._set(name, b, CLOSED)
        self.breakers.clear()

    def _get(self, node: str) -> Breaker:
        b = self.breakers.get(node)
        if b is None:
            b = self.breakers[node] = Breaker()
        return b

    def state(self, node: str) -> str:
        b = self.breakers.get(node)
        return CLOSED if b is None else b.state

    # ------------------------------------------------------------------ events
    def failure(self, node: str, reason: str) -> None:
        """A connection-class failure against `node`."""
        if node not in self.registry.nodes:
            return
        b = self._get(node)
        if b.state == HALF_OPEN:
            log.warning("node %s: circuit breaker probe failed (%s); open again for %gs", node, reason,
                        self.config.open_for)
            self._open(node, b)
            return
        if b.state == OPEN:
            return
        now = time.monotonic()
        fails = b.failures
        fails.append(now)
        while fails and fails[0] < now - self.config.window:
            fails.popleft()
        if len(fails) >= self.config.failures:
            log.warning("node %s: circuit breaker open after %d failures within %gs (last: %s)", node,
                        len(fails), self.config.window, reason)
            self._open(node, b)

    def success(self, node: str) -> None:
        """A health check of `node` succeeded: it closes a half-open breaker."""
        b = self.breakers.get(node)
        if b is not None and b.state == HALF_OPEN:
            log.info("node %s: circuit breaker closed (probe succeeded)", node)
            b.failures.clear()
            self._set(node, b, CLOSED)

    def health_outcome(self, node: str) -> None:
        """A health monitor listener: every full check of `node` ends here (last_error None = success)."""
        n = self.registry.nodes.get(node)
        if n is None:
            return
        if n.last_error is None:
            self.success(node)
            return
        m = _SQLSTATE_IN_REASON.search(n.last_error)
        if connection_class(m.group(1) if m else None):
            self.failure(node, f"health check: {n.last_error}")

    def refused(self, node: str) -> None:
        self.fast_fails[node] = self.fast_fails.get(node, 0) + 1

    # ------------------------------------------------------------------ transitions
    def _open(self, node: str, b: Breaker) -> None:
        b.failures.clear()
        b.opened += 1
        b.opened_at = time.monotonic()
        self._set(node, b, OPEN)
        if b.handle is not None:
            b.handle.cancel()
        b.handle = asyncio.get_running_loop().call_later(self.config.open_for, self._half_open, node)

    def _half_open(self, node: str) -> None:
        b = self.breakers.get(node)
        if b is None or b.state != OPEN:
            return
        b.handle = None
        log.info("node %s: circuit breaker half-open; probing", node)
        self._set(node, b, HALF_OPEN)
        self.request_check(node)

    def _set(self, node: str, b: Breaker, state: str) -> None:
        if state != CLOSED:
            self.blocked.add(node)
        else:
            self.blocked.discard(node)
            if b.handle is not None:
                b.handle.cancel()
                b.handle = None
        if b.state != state:
            b.state = state
            n = self.registry.nodes.get(node)
            if n is not None:
                n.breaker = state
            self.registry.changed()  # the router's standby rotation is rebuilt without blocked nodes
