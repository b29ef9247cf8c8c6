"""Builds rate limits and circuit breakers from the config, feeds the breakers, re-applies both on reload."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from heliosproxy.backends.health import HealthMonitor
from heliosproxy.config.schema import Config
from heliosproxy.routing.breaker import Breakers, connection_class
from heliosproxy.traffic.limits import Limiter, LimitTable

log = logging.getLogger("heliosproxy.traffic")
SHARED_FILE = "limits.shm"


class GateControl:
    """A Server extra: sets ctx.limits, ctx.breakers and ctx.gates (None/False when not configured).

    `rundir` (multi-worker mode) holds the limit table every worker maps, guarded by `lock` (a semaphore
    the supervisor made before forking); without it the table is private to this process."""

    def __init__(self, ctx: Any, health: HealthMonitor, rundir: Path | None, worker_id: int, lock: Any = None):
        self.ctx = ctx  # heliosproxy.session.context.ProxyContext (a higher layer)
        self.health = health
        self.rundir = rundir
        self.lock = lock  # the supervisor's process-shared lock of the limit table (multi-worker)
        self.worker_id = worker_id
        self.limiter: Limiter | None = None
        self.breakers: Breakers | None = None

    async def start(self) -> None:
        self.configure(self.ctx.config)

    async def stop(self) -> None:
        if self.limiter is not None:
            self.limiter.flush()
            self.ctx.limits = None
            self.ctx.gates = self.ctx.breakers is not None

    def configure(self, config: Config) -> None:
        ctx = self.ctx
        if config.limits:
            if self.limiter is None:
                path = str(self.rundir / SHARED_FILE) if self.rundir is not None else None
                self.limiter = Limiter(config, LimitTable(path, self.worker_id, self.lock))
            else:
                self.limiter.configure(config)
            ctx.limits = self.limiter
        else:
            ctx.limits = None
        cb = config.circuit_breaker
        if cb is not None:
            if self.breakers is None:
                self.breakers = Breakers(cb, ctx.registry, self._probe)
                self.health.listeners.append(self._health_outcome)
                ctx.pools.failure_hooks.append(self._pool_failure)
            else:
                self.breakers.configure(cb)
            ctx.breakers = self.breakers
        elif self.breakers is not None:
            self.breakers.close_all()
            self.health.listeners.remove(self._health_outcome)
            ctx.pools.failure_hooks.remove(self._pool_failure)
            self.breakers = None
            ctx.breakers = None
        ctx.gates = ctx.limits is not None or ctx.breakers is not None

    # ------------------------------------------------------------------ breaker feeds
    def _probe(self, node: str) -> None:
        checker = self.health.checkers.get(node)
        if checker is not None:
            checker.request_check()

    def _health_outcome(self, node: str) -> None:
        if self.breakers is not None:
            self.breakers.health_outcome(node)

    def _pool_failure(self, node: str, sqlstate: str | None, reason: str) -> None:
        if self.breakers is not None and connection_class(sqlstate):
            self.breakers.failure(node, reason)
