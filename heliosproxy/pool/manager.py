"""All pools of the process, created on first use and rebuilt when their settings change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from heliosproxy.backends.credentials import CredentialStore
from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import Config, DatabaseConfig, PoolMode
from heliosproxy.errors import BackendUnavailable
from heliosproxy.pool.pool import ConnCap, Pool, PoolKey


class PoolManager:
    def __init__(self, config: Config, credentials: CredentialStore | None = None):
        self.config = config
        # How each user logs in to servers (plaintext, md5 hash, or SCRAM pass-through with a ClientKey).
        self.credentials = credentials or CredentialStore(config)
        self.pools: dict[PoolKey, Pool] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.caps: dict[tuple[str, str], ConnCap] = {}  # ("db"|"user", name) -> shared limit
        self._fills: set[asyncio.Task[None]] = set()
        self.retired: list[Pool] = []  # retired pools that may still hold active connections
        self.failure_hooks: list[Callable[[str, str | None, str], None]] = []  # every pool's (circuit breakers)

    def db_config(self, database: str) -> DatabaseConfig | None:
        """The `databases:` entry of a client database name (or of the server database it maps to)."""
        d = self.config.database(database)
        if d is None:
            d = next((x for x in self.config.databases if x.dbname == database), None)
        return d

    def mode_for(self, user: str, database: str | None = None) -> PoolMode:
        """PgBouncer's precedence: the user's pool_mode, then the database's, then pool.mode."""
        u = self.config.user(user)
        if u is not None and u.pool_mode is not None:
            return u.pool_mode
        d = self.db_config(database) if database is not None else None
        if d is not None and d.pool_mode is not None:
            return d.pool_mode
        return self.config.pool.mode

    def _cap(self, kind: str, name: str, limit: int) -> ConnCap | None:
        if limit <= 0:
            return None
        cap = self.caps.get((kind, name))
        if cap is None:
            cap = self.caps[(kind, name)] = ConnCap(f"{kind} {name}", limit)
        cap.limit = limit
        return cap

    def get(self, node: str, database: str, user: str) -> Pool:
        key = PoolKey(node, database, user)
        pool = self.pools.get(key)
        if pool is not None and not pool.retired:
            return pool
        nc = self.config.node(node)
        if nc is None:
            raise BackendUnavailable(f"node {node!r} is not configured")
        u = self.config.user(user)
        d = self.db_config(database)
        pc = self.config.pool
        size = (u.pool_size if u and u.pool_size else None) or (d.pool_size if d else None) or pc.size
        mode = self.mode_for(user, database)
        creds = self.credentials
        pool = Pool(key, nc.host, nc.port, lambda: creds.for_server(user), size, mode, pc)
        pool.tls = node_tls(self.config, nc)
        pool.failure_hooks = self.failure_hooks
        if d is not None:
            if d.min_pool_size is not None:
                pool.min_size = d.min_pool_size
            pool.reserve_size = d.reserve_pool_size or 0
        db_limit = d.max_db_connections if d is not None and d.max_db_connections is not None else pc.max_db_connections
        user_limit = (
            u.max_user_connections if u is not None and u.max_user_connections is not None else pc.max_user_connections
        )
        for cap in (self._cap("db", database, db_limit), self._cap("user", user, user_limit)):
            if cap is not None:
                cap.pools.add(pool)
                pool.caps.append(cap)
        self.pools[key] = pool
        return pool

    def configure(self, config: Config) -> None:
        """New config: pools whose settings changed are retired (connections close as they come back)."""
        old = self.config
        self.config = config
        self.credentials.configure(config)
        for key in list(self.pools):
            nc_old, nc_new = old.node(key.node), config.node(key.node)
            u_old, u_new = old.user(key.user), config.user(key.user)
            gone = u_new is None and config.auth.auth_user is None  # (auth_query users are not listed)
            if (
                nc_new is None
                or gone
                or nc_old != nc_new
                or u_old != u_new
                or old.pool != config.pool
                or old.databases != config.databases
            ):
                self._retire(key)

    def reconnect(self, database: str | None) -> int:
        """RECONNECT [db]: every server connection (of db) closes once released; how many pools."""
        keys = [k for k in self.pools if database is None or k.database == database]
        for key in keys:
            self._retire(key)
        return len(keys)

    def closing(self, database: str | None) -> int:
        """Connections still open in retired pools (of db): what WAIT_CLOSE waits for."""
        self.retired = [p for p in self.retired if p.total]
        return sum(p.total for p in self.retired if database is None or p.key.database == database)

    def drain_node(self, node: str) -> None:
        """The node lost its role or went down: close idle connections, retire its pools."""
        for key in [k for k in self.pools if k.node == node]:
            self._retire(key)

    def _retire(self, key: PoolKey) -> None:
        """Idle connections close now; active ones close as their clients give them back."""
        pool = self.pools.pop(key)
        pool.retired = True
        self.retired = [p for p in self.retired if p.total] + [pool]  # close_needed until their last goes
        for conn in pool.idle:
            conn.close()
        pool.idle.clear()

    def close_idle(self, database: str) -> int:
        """Close every idle pooled connection to `database` (any node, any user); connections in
        use are left alone. Returns how many were closed."""
        closed = 0
        for key, pool in self.pools.items():
            if key.database != database:
                continue
            for conn in pool.idle:
                if not conn.closed:
                    conn.close()
                    closed += 1
            pool.idle = []
        return closed

    def active_on(self, node: str) -> int:
        return sum(len(p.active) for k, p in self.pools.items() if k.node == node)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in list(self.pools.values()):
                pool.reap()
                if pool.min_size and not pool.closed and pool.total < min(pool.min_size, pool.size):
                    task = asyncio.get_running_loop().create_task(pool.fill_min())
                    self._fills.add(task)
                    task.add_done_callback(self._fills.discard)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self.credentials.close()
        for pool in self.pools.values():
            pool.close()
            for conn in list(pool.active):
                conn.close()
