"""The SQL admin console of the virtual database `heliosproxy`: SHOW ..., RELOAD, PAUSE, DISABLE, KILL, SHUTDOWN."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from heliosproxy.admin import (
    VERSION,
    AdminError,
    ServerControl,
    config_view,
    kill_clients,
    nodes_view,
    queries_view,
    set_node_disabled,
    stats_view,
)
from heliosproxy.admin import pgbouncer as pgb
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import messages
from heliosproxy.session import pgcompat

log = logging.getLogger("heliosproxy.admin")

HELP = (
    ("SHOW POOLS", "PgBouncer's pools per (database, user): clients, servers, maxwait"),
    ("SHOW CLIENTS", "client connections (id is what KILL_CLIENT takes)"),
    ("SHOW SERVERS", "backend connections of every pool"),
    ("SHOW SOCKETS", "clients and servers in one list (also ACTIVE_SOCKETS)"),
    ("SHOW STATS", "per-database transactions, queries, bytes, xact/query/wait time (also STATS_TOTALS, "
                   "STATS_AVERAGES, TOTALS)"),
    ("SHOW DATABASES", "databases: pool settings, connections, paused/disabled"),
    ("SHOW USERS", "users: pool overrides and connections"),
    ("SHOW LISTS", "counts of databases, users, pools, clients, servers"),
    ("SHOW MEM", "object counts and memory"),
    ("SHOW FDS", "file descriptors of listeners, clients and servers"),
    ("SHOW STATE", "active, paused, suspended"),
    ("SHOW NODES", "nodes: role, state, lag, timeline, write target"),
    ("SHOW NODE_STATS", "query, error and byte counters per (node, route)"),
    ("SHOW PLUGINS", "loaded plugins and their call counters"),
    ("SHOW CONFIG", "the running configuration (secrets masked)"),
    ("SHOW QUERIES", "top statements by total time"),
    ("SHOW VERSION", "the proxy version"),
    ("SHOW CACHE", "result cache: entries, bytes, hits, misses, evictions, invalidations, WAL reader"),
    ("CACHE CLEAR [table]", "drop cached results (of one table) in every worker"),
    ("RELOAD", "re-read the config file (a bad file keeps the running config)"),
    ("PAUSE [db]", "hold new statements (of db, or all); returns once no server connection is in use"),
    ("RESUME [db]", "undo PAUSE, KILL or SUSPEND"),
    ("SUSPEND", "hold every new statement (like PAUSE, at once)"),
    ("RECONNECT [db]", "close each server connection (of db) once it is released"),
    ("WAIT_CLOSE [db]", "wait until connections closed by RECONNECT/RELOAD are gone"),
    ("DISABLE db|node", "refuse new clients of db (a node: send it no new statements)"),
    ("ENABLE db|node", "undo DISABLE"),
    ("KILL [db]", "close every client and server connection (of db) now; db stays paused until RESUME"),
    ("KILL_CLIENT id", "close one client (id or client_id from SHOW CLIENTS)"),
    ("SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]", "stop the proxy now, once servers are released, "
                                                     "or once clients have gone"),
)

_WORD = re.compile(r'"([^"]*)"|(\S+)')


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


_AGGREGATED = frozenset({"CLIENTS", "POOLS", "QUERIES", "CACHE"})


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    return messages.result_set(columns, [[_cell(r.get(c)) for c in columns] for r in rows])


class AdminConsole:
    """`execute(sql, session)` answers one statement with response messages (no ReadyForQuery)."""

    def __init__(self, server: ServerControl):
        self.server = server
        self.commands: dict[str, Callable[[list[str], Any], bytes | Awaitable[bytes]]] = {
            "SHOW": self._show,
            "RELOAD": self._reload,
            "PAUSE": self._pause,
            "RESUME": self._resume,
            "DISABLE": self._disable,
            "ENABLE": self._enable,
            "KILL": self._kill,
            "KILL_CLIENT": self._kill_client,
            "SUSPEND": self._suspend,
            "RECONNECT": self._reconnect,
            "WAIT_CLOSE": self._wait_close,
            "SHUTDOWN": self._shutdown,
            "SET": lambda _a, _s: messages.command_complete("SET"),  # drivers' startup SETs: accepted, ignored
            "CACHE": lambda a, _s: self.server.cache_service.clear(a),  # CACHE CLEAR [table] (result cache)
        }
        self.suspended = False
        self._waiting = False  # execute() may answer with an awaitable (PAUSE, WAIT_CLOSE)
        self.shows: dict[str, Callable[[], bytes]] = {
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
            "SOCKETS": self.show_sockets,
            "ACTIVE_SOCKETS": self.show_active_sockets,
            "NODES": self.show_nodes,
            "STATS": self.show_stats,
            "STATS_TOTALS": lambda: pgb.table(pgb.STATS_TOTALS_COLS, pgb.stats_rows(self.server.ctx)),
            "STATS_AVERAGES": lambda: pgb.table(pgb.STATS_AVERAGES_COLS, pgb.stats_average_rows(self.server.ctx)),
            "TOTALS": lambda: pgb.table((("name", pgb.TEXT), ("value", pgb.NUMERIC)), pgb.totals_rows(self.server.ctx)),
            "DATABASES": lambda: pgb.table(pgb.DATABASE_COLS + pgb.DATABASE_EXTRA, pgb.database_rows(self.server.ctx)),
            "USERS": lambda: pgb.table(pgb.USER_COLS, pgb.user_rows(self.server.ctx)),
            "LISTS": lambda: pgb.table(pgb.LIST_COLS, pgb.list_rows(self.server.ctx)),
            "MEM": lambda: pgb.table(pgb.MEM_COLS, pgb.mem_rows(self.server.ctx)),
            "FDS": self.show_fds,
            "STATE": lambda: pgb.table(pgb.STATE_COLS, pgb.state_rows(self.server.ctx, self.suspended)),
            "PEERS": lambda: pgb.table((("peer_id", pgb.INT4), ("host", pgb.TEXT), ("port", pgb.INT4),
                                        ("pool_size", pgb.INT4)), []),
            "PEER_POOLS": lambda: pgb.table((("peer_id", pgb.INT4), ("cl_active_cancel_req", pgb.INT4),
                                             ("cl_waiting_cancel_req", pgb.INT4), ("sv_active_cancel", pgb.INT4),
                                             ("sv_login", pgb.INT4)), []),
            "DNS_HOSTS": lambda: pgb.table((("hostname", pgb.TEXT), ("ttl", pgb.INT8), ("addrs", pgb.TEXT)), []),
            "DNS_ZONES": lambda: pgb.table((("zonename", pgb.TEXT), ("serial", pgb.INT8), ("count", pgb.INT4)), []),
            "NODE_STATS": self.show_node_stats,
            "PLUGINS": self.show_plugins,
            "CONFIG": self.show_config,
            "QUERIES": self.show_queries,
            "VERSION": self.show_version,
            "HELP": self.show_help,
            "CACHE": lambda: self.server.cache_service.show(),  # result cache state and counters
        }

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # ------------------------------------------------------------------ entry
    def execute(self, sql: str, session: Any) -> bytes | Awaitable[bytes] | None:
        """Response messages, or an awaitable of them (multi-worker SHOW CLIENTS/POOLS/QUERIES; PAUSE and
        WAIT_CLOSE, which answer once server connections are released or closed)."""
        link = getattr(self.server, "link", None)
        if link is not None:
            words = sql.strip().rstrip(";").split()
            if len(words) == 2 and words[0].upper() == "SHOW" and words[1].upper() in _AGGREGATED:
                return self._show_all_workers(link, words[1].upper())
        self._waiting = True
        try:
            out: bytes | Awaitable[bytes] | None = self.execute_local(sql, session)
            return out
        finally:
            self._waiting = False

    async def _show_all_workers(self, link: Any, item: str) -> bytes:
        """SHOW over every worker's snapshot, with a `worker` column."""
        snaps: list[dict[str, Any]] = await link.gather()
        if item == "CACHE":  # result cache: one row per worker
            return bytes(self.server.cache_service.show_workers([(s.get("worker"), s.get("cache")) for s in snaps]))
        if item == "CLIENTS":
            rows = [{**c, "worker": s.get("worker")} for s in snaps for c in s.get("pgb_clients", [])]
            return pgb.table(pgb.SOCKET_COLS + pgb.CLIENT_EXTRA + pgb.WORKER, rows)
        if item == "POOLS":
            merged: dict[tuple[str, str], dict[str, Any]] = {}
            for snap in snaps:
                for p in snap.get("pgb_pools", []):
                    m = merged.get((p["database"], p["user"]))
                    if m is None:
                        merged[(p["database"], p["user"])] = dict(p)
                        continue
                    for k, v in p.items():
                        if k in ("maxwait", "maxwait_us", "pool_size", "reserve_pool_size"):
                            m[k] = max(m[k], v)
                        elif isinstance(v, int) and not isinstance(v, bool):
                            m[k] += v
                        elif isinstance(v, list):
                            m[k] = sorted(set(m[k]) | set(v))
            return pgb.table(pgb.POOL_COLS + pgb.POOL_EXTRA, sorted(merged.values(), key=lambda r: (r["database"],
                                                                                                 r["user"])))
        merged_q: dict[str, list[Any]] = {}
        for snap in snaps:
            for fp, (query, calls, total_us, errors) in snap.get("queries", {}).items():
                q = merged_q.setdefault(fp, [query, 0, 0, 0])
                q[1] += calls
                q[2] += total_us
                q[3] += errors
        top = sorted(merged_q.items(), key=lambda kv: kv[1][2], reverse=True)[:100]
        rows = [
            {"fingerprint": fp, "query": q, "calls": c, "total_ms": round(t / 1000.0, 3),
             "mean_ms": round(t / 1000.0 / c, 3) if c else 0.0, "errors": e}
            for fp, (q, c, t, e) in top
        ]
        return _table(("fingerprint", "query", "calls", "total_ms", "mean_ms", "errors"), rows)

    def execute_local(self, sql: str, session: Any) -> Any:
        """Answer from this worker's state only (also used for extended-protocol admin queries)."""
        text = sql.strip().rstrip(";").strip()
        if not text:
            return messages.EMPTY_QUERY
        if ";" in text:
            raise HeliosError("the admin console runs one command at a time", sqlstate="42601")
        words = [m.group(1) if m.group(1) is not None else m.group(2) for m in _WORD.finditer(text)]
        verb = words[0].upper()
        handler = self.commands.get(verb)
        if handler is None:
            raise HeliosError(f'unknown admin command "{words[0]}"; try SHOW HELP', sqlstate="42601")
        who = getattr(session, "user", "?")
        if verb not in ("SHOW", "SET"):
            log.info("admin %s: %s", who, text)
        try:
            return handler(words[1:], session)
        except AdminError as exc:
            raise HeliosError(exc.message, sqlstate=exc.sqlstate) from None

    # ------------------------------------------------------------------ SHOW
    def _show(self, args: list[str], _session: Any) -> bytes:
        if len(args) != 1:
            raise HeliosError(f"SHOW takes one of: {', '.join(self.shows)}", sqlstate="42601")
        fn = self.shows.get(args[0].upper())
        if fn is None:
            raise HeliosError(f'unknown SHOW item "{args[0]}"; one of: {", ".join(self.shows)}',
                              sqlstate="42601")
        return fn()

    def show_pools(self) -> bytes:
        return pgb.table(pgb.POOL_COLS + pgb.POOL_EXTRA, pgb.pool_rows(self.server.ctx))

    def show_clients(self) -> bytes:
        return pgb.table(pgb.SOCKET_COLS + pgb.CLIENT_EXTRA, pgb.client_rows(self.server.ctx))

    def show_servers(self) -> bytes:
        return pgb.table(pgb.SOCKET_COLS + pgb.SERVER_EXTRA, pgb.server_rows(self.server.ctx))

    def show_sockets(self) -> bytes:
        ctx = self.server.ctx
        return pgb.table(pgb.SOCKET_COLS, pgb.client_rows(ctx) + pgb.server_rows(ctx))

    def show_active_sockets(self) -> bytes:
        ctx = self.server.ctx
        rows = [r for r in pgb.client_rows(ctx) + pgb.server_rows(ctx) if r["state"] == "active"]
        return pgb.table(pgb.SOCKET_COLS, rows)

    def show_fds(self) -> bytes:
        srv = self.server
        listeners = [x for x in (getattr(srv, "listener", None), getattr(srv, "unix_listener", None)) if x]
        return pgb.table(pgb.FDS_COLS, pgb.fds_rows(srv.ctx, listeners))

    def show_nodes(self) -> bytes:
        cols = ("name", "host", "port", "configured_role", "role", "state", "write_target", "disabled",
                "lag_bytes", "lag_ms", "timeline", "weight", "priority", "active_connections",
                "last_check_age_s", "last_error")
        return _table(cols, nodes_view(self.server))

    def show_stats(self) -> bytes:
        return pgb.table(pgb.STATS_COLS + pgb.STATS_EXTRA, pgb.stats_rows(self.server.ctx))

    def show_node_stats(self) -> bytes:
        cols = ("node", "route", "total_query_count", "total_error_count", "total_received", "total_sent",
                "total_query_time", "avg_query_time", "total_client_connections", "refused_client_connections",
                "login_failures", "protocol_errors")
        return _table(cols, stats_view(self.server))

    def show_plugins(self) -> bytes:
        rows = []
        for p in self.server.ctx.plugins.stats():
            calls = p.get("calls", {})
            rows.append({**p, "calls": sum(v["calls"] for v in calls.values()),
                         "errors": sum(v["errors"] for v in calls.values())})
        cols = ("name", "version", "state", "priority", "fail_mode", "hooks", "calls", "errors", "signed_by",
                "last_error")
        return _table(cols, rows)

    def show_config(self) -> bytes:
        return pgb.table(tuple((c, pgb.TEXT) for c in ("key", "value", "default", "changeable")),
                         config_view(self.server.config))

    def show_queries(self) -> bytes:
        return _table(("fingerprint", "query", "calls", "total_ms", "mean_ms", "errors"), queries_view(self.server))

    def show_version(self) -> bytes:
        return pgb.table((("version", pgb.TEXT),), [{"version": VERSION}])

    def show_help(self) -> bytes:
        return messages.result_set(["command", "description"], [list(h) for h in HELP])

    # ------------------------------------------------------------------ actions
    def _reload(self, args: list[str], _session: Any) -> bytes:
        _no_args("RELOAD", args)
        ok, message = self.server.reload(
            requested_by=f"console {getattr(_session, 'user', '?')}@{getattr(_session, 'peer', '?')}")
        if not ok:
            raise HeliosError(f"reload failed, the running config is kept: {message}", sqlstate="F0000")
        return messages.command_complete("RELOAD")

    # PgBouncer's process controls. Database names are not checked against a list: the proxy serves any
    # database the server has, as PgBouncer does with a `*` fallback entry.
    def _pause(self, args: list[str], _session: Any) -> bytes | Awaitable[bytes]:
        ctx = self.server.ctx
        paused: set[str] = ctx.paused
        target = _one_or_all("PAUSE", args)
        if target in pgcompat.ADMIN_DATABASES:
            raise HeliosError(f"cannot pause admin db: {target}", sqlstate="55000")
        if "*" in paused or self.suspended:
            raise HeliosError("already suspended/paused", sqlstate="55000")
        paused.add(target)
        db = None if target == "*" else target
        if not self._waiting:
            return messages.command_complete("PAUSE")
        return self._until(lambda: self._in_use(db) == 0, "PAUSE", after=lambda: self.server.ctx.pools.reconnect(db))

    def _in_use(self, db: str | None) -> int:
        """Clients of db (or all) holding a server connection: what PAUSE waits for."""
        return sum(
            1
            for c in list(self.server.ctx.clients)
            if not c.admin and c.backend is not None and (db is None or c.database == db)
        )

    async def _until(self, cond: Callable[[], bool], tag: str, after: Callable[[], Any] | None = None) -> bytes:
        while not cond():
            await asyncio.sleep(0.05)
        if after is not None:
            after()
        return messages.command_complete(tag)

    def _resume(self, args: list[str], _session: Any) -> bytes:
        paused: set[str] = self.server.ctx.paused
        target = _one_or_all("RESUME", args)
        if target == "*":
            if getattr(self.server.ctx, "shutting_down", False):
                raise HeliosError("pooler is shutting down", sqlstate="55000")
            if not paused and not self.suspended:
                raise HeliosError("pooler is not paused/suspended", sqlstate="55000")
            paused.clear()
            self.suspended = False
        elif target in paused:
            paused.discard(target)
        else:
            raise HeliosError(f"database {target} is not paused", sqlstate="55000")
        return messages.command_complete("RESUME")

    def _suspend(self, args: list[str], _session: Any) -> bytes:
        _no_args("SUSPEND", args)
        ctx = self.server.ctx
        if "*" in ctx.paused or self.suspended:
            raise HeliosError("already suspended/paused", sqlstate="55000")
        if ctx.paused:
            raise HeliosError("cannot suspend with paused databases", sqlstate="55000")
        self.suspended = True
        ctx.paused.add("*")
        return messages.command_complete("SUSPEND")

    def _reconnect(self, args: list[str], _session: Any) -> bytes:
        target = _one_or_all("RECONNECT", args)
        if target in pgcompat.ADMIN_DATABASES:
            raise HeliosError(f"cannot reconnect admin db: {target}", sqlstate="55000")
        self.server.ctx.pools.reconnect(None if target == "*" else target)
        return messages.command_complete("RECONNECT")

    def _wait_close(self, args: list[str], _session: Any) -> bytes | Awaitable[bytes]:
        target = _one_or_all("WAIT_CLOSE", args)
        if target in pgcompat.ADMIN_DATABASES:
            raise HeliosError(f"cannot wait in admin db: {target}", sqlstate="55000")
        db = None if target == "*" else target
        pools = self.server.ctx.pools
        if not self._waiting or pools.closing(db) == 0:
            return messages.command_complete("WAIT_CLOSE")
        return self._until(lambda: pools.closing(db) == 0, "WAIT_CLOSE")

    def _disable(self, args: list[str], _session: Any) -> bytes:
        name = _one_db("DISABLE", args)
        if name in self.server.ctx.registry.nodes:
            set_node_disabled(self.server, name, True)
        else:
            if name in pgcompat.ADMIN_DATABASES:
                raise HeliosError(f"cannot disable admin db: {name}", sqlstate="55000")
            self.server.ctx.disabled_databases.add(name)
        return messages.command_complete("DISABLE")

    def _enable(self, args: list[str], _session: Any) -> bytes:
        name = _one_db("ENABLE", args)
        if name in self.server.ctx.registry.nodes:
            set_node_disabled(self.server, name, False)
        else:
            self.server.ctx.disabled_databases.discard(name)
        return messages.command_complete("ENABLE")

    def _kill(self, args: list[str], _session: Any) -> bytes:
        ctx = self.server.ctx
        target = _one_or_all("KILL", args)
        if target != "*" and any(getattr(c, "client_id", None) == target for c in list(ctx.clients)):
            kill_clients(self.server, target)  # a client_id: the proxy's older KILL
            return messages.command_complete("KILL")
        if target in pgcompat.ADMIN_DATABASES:
            raise HeliosError(f"cannot kill admin db: {target}", sqlstate="55000")
        if "*" in ctx.paused or self.suspended:
            raise HeliosError("already suspended/paused", sqlstate="55000")
        if target != "*":
            known = set(pgb._databases_seen(ctx))
            if target not in known:
                raise HeliosError(
                    f'no client with client_id or database "{target}" (see SHOW CLIENTS, SHOW DATABASES)',
                    sqlstate="42704",
                )
        db = None if target == "*" else target
        ctx.paused.add(target)  # new work waits until RESUME, as in PgBouncer
        for c in list(ctx.clients):
            if not c.admin and (db is None or c.database == db):
                c.close("57P01", "terminating connection due to administrator command (KILL)")
        ctx.pools.reconnect(db)
        return messages.command_complete("KILL")

    def _kill_client(self, args: list[str], _session: Any) -> bytes:
        target = _one("KILL_CLIENT", args, "id")
        for c in list(self.server.ctx.clients):
            if str(c.pid) == target or c.client_id == target:
                c.close("08P01", "admin forced disconnect")
                return messages.command_complete("KILL_CLIENT")
        raise HeliosError("client not found", sqlstate="42704")

    def _shutdown(self, args: list[str], _session: Any) -> bytes:
        mode = "immediate"
        if args:
            if len(args) != 1 or args[0].upper() not in ("WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
                raise HeliosError("SHUTDOWN takes WAIT_FOR_SERVERS or WAIT_FOR_CLIENTS", sqlstate="42601")
            mode = args[0].lower()
        log.warning("SHUTDOWN %s from the admin console", mode.upper())
        self.server.request_shutdown(mode)
        return messages.command_complete("SHUTDOWN")


def _one_db(verb: str, args: list[str]) -> str:
    if len(args) != 1:
        raise HeliosError("a database is required", sqlstate="42601")
    return args[0]


def _no_args(verb: str, args: list[str]) -> None:
    if args:
        raise HeliosError(f"{verb} takes no argument", sqlstate="42601")


def _one(verb: str, args: list[str], what: str) -> str:
    if len(args) != 1:
        raise HeliosError(f"{verb} needs exactly one argument: {what}", sqlstate="42601")
    return args[0]


def _one_or_all(verb: str, args: list[str]) -> str:
    if len(args) > 1:
        raise HeliosError(f"{verb} takes at most one argument: a database", sqlstate="42601")
    return args[0] if args else "*"


def _ts(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
