"""Catalog facts routing needs from a server: function volatility (pg_proc) and which databases exist."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from heliosproxy.backends.connection import QueryError, connect
from heliosproxy.backends.health import checker_credentials
from heliosproxy.backends.registry import Node, Registry
from heliosproxy.config.schema import Config
from heliosproxy.errors import BackendAuthError, HeliosError
from heliosproxy.pool.manager import PoolManager

log = logging.getLogger("heliosproxy.routing")

FuncKey = tuple[str | None, str, int]  # (schema or None, name, argument count)
DB_EXISTS_TTL = 10.0  # seconds an answer about a database's existence is reused
DB_MISSING_TTL = 2.0
_LOOKUP_ERRORS = (OSError, TimeoutError, ConnectionError, BackendAuthError, QueryError, HeliosError)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _names(raw: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    plain: set[str] = set()
    qualified: set[str] = set()
    for name in raw:
        n = name.strip().lower()
        if n:
            (qualified if "." in n else plain).add(n)
    return frozenset(plain), frozenset(qualified)


# Every function outside pg_catalog and information_schema, with what a call must match.
FUNCTIONS_SQL = (
    "SELECT n.nspname, p.proname, p.pronargs, p.pronargs - p.pronargdefaults, p.provariadic <> 0, p.provolatile"
    " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
)


class _Functions:
    """One database's user-defined and extension functions: name -> [(schema, min args, max args, volatile)]."""

    __slots__ = ("by_name", "expires")

    def __init__(self, rows: list[list[str | None]], expires: float):
        self.expires = expires
        self.by_name: dict[str, list[tuple[str, int, int, bool]]] = {}
        for schema, name, nargs, required, variadic, vol in rows:
            hi = 1 << 30 if variadic == "t" else int(nargs or 0)
            lo = int(required or 0) - (1 if variadic == "t" else 0)
            self.by_name.setdefault(str(name), []).append((str(schema), lo, hi, vol == "v"))

    def volatile(self, schema: str | None, name: str, nargs: int) -> bool:
        for sch, lo, hi, vol in self.by_name.get(name, ()):
            if vol and lo <= nargs <= hi and (schema is None or schema == sch):
                return True
        return False


class Catalog:
    """Per-database caches answered from short catalog queries on a connection of the proxy's own.

    Function lists are loaded when the first client of a database logs in (awaited there), then
    refreshed in the background after routing.function_cache_ttl or after DDL through the proxy;
    meanwhile a statement calling a function of that database is answered "unknown"."""

    def __init__(self, config: Config, registry: Registry, pools: PoolManager):
        self.registry = registry
        self.pools = pools
        self._functions: dict[str, _Functions] = {}
        self._pending: set[str] = set()
        self._loaded_as: dict[str, str] = {}  # database -> the user whose pool loaded its list
        self._stale: set[str] = set()  # DDL passed while a load ran
        self._exists: dict[str, tuple[float, bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.lookups = 0
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.ttl = config.routing.function_cache_ttl
        self.read_only_plain, self.read_only_qualified = _names(config.routing.read_only_functions)

    # ------------------------------------------------------------------ functions
    def needs_primary(self, database: str, user: str | None, funcs: tuple[FuncKey, ...]) -> bool | None:
        """True: a called function is a VOLATILE one outside pg_catalog (and not in
        routing.read_only_functions); False: none is; None: not known yet (a load started)."""
        fns = self._functions.get(database)
        if fns is None:
            if user is not None:
                self.refresh(database, user)
            return None
        if fns.expires < time.monotonic() and user is not None:
            self.refresh(database, user)  # keep answering from the old list meanwhile
        for schema, name, nargs in funcs:
            if schema is None:
                if name in self.read_only_plain:
                    continue
            elif f"{schema}.{name}" in self.read_only_qualified:
                continue
            if fns.volatile(schema, name, nargs):
                return True
        return False

    def forget(self, database: str) -> None:
        """DDL passed through the proxy: this database's function list is stale; reload it now."""
        self._functions.pop(database, None)
        self._stale.add(database)  # a load running now may have read the catalog before the DDL
        user = self._loaded_as.get(database)
        if user is not None:
            self.refresh(database, user)

    def refresh(self, database: str, user: str) -> None:
        if database not in self._pending:
            self._pending.add(database)
            self._spawn(self.load(database, user))

    async def load(self, database: str, user: str) -> None:
        """(Re)load a database's function list; failures are logged, the list stays as it was."""
        self._pending.add(database)
        self._loaded_as[database] = user
        try:
            self._stale.discard(database)
            started = time.monotonic()
            rows = await self._query(database, user, FUNCTIONS_SQL)
            if database in self._stale:  # more DDL while this ran: its answer may predate it
                self._spawn(self.load(database, user))
                return
            self._functions[database] = _Functions(rows, started + self.ttl)
        except _LOOKUP_ERRORS as exc:
            log.info("loading the functions of database %s failed: %s", database, exc)
        finally:
            self._pending.discard(database)

    def ensure_loading(self, database: str, user: str) -> None:
        """Start loading the database's function list in the background if there is none."""
        if database not in self._functions:
            self.refresh(database, user)

    async def ensure_loaded(self, database: str, user: str) -> None:
        """At a login: load the database's function list if there is none yet."""
        if database not in self._functions and database not in self._pending:
            await self.load(database, user)

    # ------------------------------------------------------------------ databases
    async def database_exists(self, database: str) -> bool:
        """Does a server have this database? Asked once, then cached briefly. Raises on no server."""
        hit = self._exists.get(database)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        rows = await self._checker_query(f"SELECT 1 FROM pg_catalog.pg_database WHERE datname = {_lit(database)}")
        found = bool(rows)
        if len(self._exists) > 10_000:
            self._exists.clear()
        self._exists[database] = (time.monotonic() + (DB_EXISTS_TTL if found else DB_MISSING_TTL), found)
        return found

    # ------------------------------------------------------------------ plumbing
    def _node(self) -> Node | None:
        """The primary (freshest catalog), else any usable node."""
        node = self.registry.primary_node()
        if node is not None:
            return node
        return next((n for n in self.registry.nodes.values() if n.usable and not n.shadow), None)

    def _timeout(self) -> float:
        return self.config.health.timeout + self.config.pool.connect_timeout

    async def _query(self, database: str, user: str, sql: str) -> list[list[str | None]]:
        """Run `sql` on a connection of the client's own pool (no extra server connection)."""
        node = self._node()
        if node is None:
            raise ConnectionError("no usable node for a catalog lookup")
        pool = self.pools.get(node.name, database, user)
        conn = await pool.acquire(self._timeout())
        self.lookups += 1
        try:
            rows = await asyncio.wait_for(conn.query(sql), self._timeout())
        except BaseException:
            pool.release(conn, reusable=False)
            raise
        pool.release(conn)
        return rows

    async def _checker_query(self, sql: str) -> list[list[str | None]]:
        """Run `sql` as the health checker's user in health.database, on a connection closed after."""
        node = self._node()
        if node is None:
            raise ConnectionError("no usable node for a catalog lookup")
        user, password = checker_credentials(self.config)
        conn = await connect(
            node.name, node.cfg.host, node.cfg.port, user, password, self.config.health.database,
            timeout=self._timeout(), params={"application_name": "heliosproxy-catalog"},
        )
        self.lookups += 1
        try:
            return await asyncio.wait_for(conn.query(sql), self._timeout())
        finally:
            conn.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
