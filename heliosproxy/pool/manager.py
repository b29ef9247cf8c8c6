"""All pools of the process, created on first use and rebuilt when their settings change."""

from __future__ import annotations

import asyncio
import contextlib

from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import Config, PoolMode
from heliosproxy.errors import BackendUnavailable
from heliosproxy.pool.pool import Pool, PoolKey


class PoolManager:
    def __init__(self, config: Config):
        self.config = config
        self.pools: dict[PoolKey, Pool] = {}
        self._reaper: asyncio.Task[None] | None = None

    def mode_for(self, user: str) -> PoolMode:
        u = self.config.user(user)
        return (u.pool_mode if u and u.pool_mode else None) or self.config.pool.mode

    def get(self, node: str, database: str, user: str) -> Pool:
        key = PoolKey(node, database, user)
        pool = self.pools.get(key)
        if pool is not None and not pool.retired:
            return pool
        nc = self.config.node(node)
        if nc is None:
            raise BackendUnavailable(f"node {node!r} is not configured")
        u = self.config.user(user)
        size = (u.pool_size if u and u.pool_size else None) or self.config.pool.size
        pool = Pool(key, nc.host, nc.port, u.password if u else None, size, self.mode_for(user), self.config.pool)
        pool.tls = node_tls(self.config, nc)
        self.pools[key] = pool
        return pool

    def configure(self, config: Config) -> None:
        """New config: pools whose settings changed are retired (connections close as they come back)."""
        old = self.config
        self.config = config
        for key in list(self.pools):
            nc_old, nc_new = old.node(key.node), config.node(key.node)
            u_old, u_new = old.user(key.user), config.user(key.user)
            if nc_new is None or u_new is None or nc_old != nc_new or u_old != u_new or old.pool != config.pool:
                self._retire(key)

    def drain_node(self, node: str) -> None:
        """The node lost its role or went down: close idle connections, retire its pools."""
        for key in [k for k in self.pools if k.node == node]:
            self._retire(key)

    def _retire(self, key: PoolKey) -> None:
        """Idle connections close now; active ones close as their clients give them back."""
        pool = self.pools.pop(key)
        pool.retired = True
        for conn in pool.idle:
            conn.close()
        pool.idle.clear()

    def active_on(self, node: str) -> int:
        return sum(len(p.active) for k, p in self.pools.items() if k.node == node)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in list(self.pools.values()):
                pool.reap()

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for pool in self.pools.values():
            pool.close()
            for conn in list(pool.active):
                conn.close()
