"""The SQL admin console of the virtual database `heliosproxy`: SHOW, RELOAD, PAUSE, KILL, SWITCHOVER, SHUTDOWN."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from heliosproxy.admin import (
    VERSION,
    AdminError,
    ServerControl,
    aggregate,
    config_view,
    kill_clients,
    nodes_view,
    queries_view,
    set_node_disabled,
    stats_view,
    switchover,
)
from heliosproxy.admin import pgbouncer as pgb
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import messages
from heliosproxy.session import pgcompat
from heliosproxy.traffic import analytics as traffic_analytics
from heliosproxy.traffic import control as traffic

log = logging.getLogger("heliosproxy.admin")

HELP = (
    ("SHOW POOLS", "PgBouncer's pools per (database, user): clients, servers, maxwait"),
    ("SHOW CLIENTS", "client connections (id is what KILL_CLIENT takes)"),
    ("SHOW SERVERS", "backend connections of every pool"),
    ("SHOW SOCKETS", "clients and servers in one list (also ACTIVE_SOCKETS)"),
    (
        "SHOW STATS",
        "per-database transactions, queries, bytes, xact/query/wait time (also STATS_TOTALS, STATS_AVERAGES, TOTALS)",
    ),
    ("SHOW DATABASES", "databases: pool settings, connections, paused/disabled"),
    ("SHOW USERS", "users: pool overrides and connections"),
    ("SHOW LISTS", "counts of databases, users, pools, clients, servers"),
    ("SHOW MEM", "object counts and memory"),
    ("SHOW FDS", "file descriptors of listeners, clients and servers"),
    ("SHOW STATE", "active, paused, suspended"),
    ("SHOW NODES", "nodes: role, state, lag, timeline, write target, circuit breaker"),
    ("SHOW NODE_STATS", "query, error and byte counters per (node, route)"),
    ("SHOW PLUGINS", "loaded plugins and their call counters"),
    ("SHOW CONFIG", "the running configuration, values as written in the file (secrets masked)"),
    ("SHOW QUERIES", "top statements by total time"),
    ("SHOW VERSION", "the proxy version"),
    ("SHOW MIRROR", "mirroring to the shadow node: counters, then recent mismatches and errors"),
    ("SHOW ANALYTICS", "per-statement calls, errors, time (total, mean, p50, p99), rows, bytes"),
    ("SHOW LIMITS", "rate limits and quotas per key value: allowed, rejected, queued (all workers)"),
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
    ("SWITCHOVER [TO node]", "planned switchover: pause, drain, promote the standby once caught up, fence the "
                             "old primary, resume; one row old_primary, new_primary, pause_ms, replayed"),
    (
        "SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]",
        "stop the proxy now, once servers are released, or once clients have gone",
    ),
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


# With workers: N>1 these run on every worker (the asking worker first; PAUSE/WAIT_CLOSE wait for all).
_EVERYWHERE = frozenset(
    {
        "RELOAD",
        "PAUSE",
        "RESUME",
        "SUSPEND",
        "RECONNECT",
        "WAIT_CLOSE",
        "DISABLE",
        "ENABLE",
        "KILL",
        "KILL_CLIENT",
        "SHUTDOWN",
    }
)
_WAITING = frozenset({"PAUSE", "WAIT_CLOSE"})


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    return messages.result_set(columns, [[_cell(r.get(c)) for c in columns] for r in rows])


def _typed(columns: tuple[pgb.Col, ...]) -> Callable[[list[dict[str, Any]], bool], bytes]:
    return lambda rows, _aggregated: pgb.table(columns, rows)


_NODE_COLS = (
    "name",
    "host",
    "port",
    "configured_role",
    "role",
    "state",
    "write_target",
    "disabled",
    "lag_bytes",
    "lag_ms",
    "timeline",
    "weight",
    "priority",
    "active_connections",
    "last_check_age_s",
    "last_error",
    "breaker",
)
_NODE_STATS_COLS = (
    "node",
    "route",
    "total_query_count",
    "total_error_count",
    "total_received",
    "total_sent",
    "total_query_time",
    "avg_query_time",
    "total_client_connections",
    "refused_client_connections",
    "login_failures",
    "protocol_errors",
)
_PLUGIN_COLS = (
    "name",
    "version",
    "state",
    "priority",
    "fail_mode",
    "hooks",
    "calls",
    "errors",
    "signed_by",
    "last_error",
)
_QUERY_COLS = ("fingerprint", "query", "calls", "total_ms", "mean_ms", "errors")


class _PeerSession:
    """Who asked, for a command another worker's console forwards here (logged by RELOAD and others)."""

    admin = True

    def __init__(self, user: str, peer: str, origin: str = "console") -> None:
        self.user = user
        self.peer = f"{peer} (via another worker)"
        self.requested_by = f"HTTP {self.peer}" if origin == "HTTP" else f"console {user}@{self.peer}"


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
            "SWITCHOVER": self._switchover,
            "SET": lambda _a, _s: messages.command_complete("SET"),  # drivers' startup SETs: accepted, ignored
            "CACHE": lambda a, _s: self.server.cache_service.clear(a),  # CACHE CLEAR [table] (result cache)
        }
        self.suspended = False
        self._waiting = False  # execute() may answer with an awaitable (PAUSE, WAIT_CLOSE)
        ctx = self._ctx
        # SHOW items answered from rows (merged across workers with workers: N>1): item -> (rows, render).
        stats_rows: Callable[[], list[dict[str, Any]]] = lambda: pgb.stats_rows(ctx())  # noqa: E731
        self.views: dict[str, tuple[Callable[[], list[dict[str, Any]]], Callable[[list[dict[str, Any]], bool], bytes]]]
        self.views = {
            "POOLS": (lambda: pgb.pool_rows(ctx()), lambda r, _a: pgb.table(pgb.POOL_COLS + pgb.POOL_EXTRA, r)),
            "CLIENTS": (lambda: pgb.client_rows(ctx()), _typed(pgb.SOCKET_COLS + pgb.CLIENT_EXTRA)),
            "SERVERS": (lambda: pgb.server_rows(ctx()), _typed(pgb.SOCKET_COLS + pgb.SERVER_EXTRA)),
            "SOCKETS": (lambda: pgb.client_rows(ctx()) + pgb.server_rows(ctx()), _typed(pgb.SOCKET_COLS)),
            "ACTIVE_SOCKETS": (
                lambda: [r for r in pgb.client_rows(ctx()) + pgb.server_rows(ctx()) if r["state"] == "active"],
                _typed(pgb.SOCKET_COLS),
            ),
            "FDS": (self._fds_rows, _typed(pgb.FDS_COLS)),
            "STATS": (stats_rows, lambda r, _a: pgb.table(pgb.STATS_COLS + pgb.STATS_EXTRA, r)),
            "STATS_TOTALS": (stats_rows, lambda r, _a: pgb.table(pgb.STATS_TOTALS_COLS, r)),
            "STATS_AVERAGES": (
                stats_rows,
                lambda r, _a: pgb.table(pgb.STATS_AVERAGES_COLS, pgb.stats_average_rows(ctx(), r)),
            ),
            "TOTALS": (
                stats_rows,
                lambda r, _a: pgb.table((("name", pgb.TEXT), ("value", pgb.NUMERIC)), pgb.totals_rows(ctx(), r)),
            ),
            "DATABASES": (
                lambda: pgb.database_rows(ctx()),
                lambda r, _a: pgb.table(pgb.DATABASE_COLS + pgb.DATABASE_EXTRA, r),
            ),
            "USERS": (lambda: pgb.user_rows(ctx()), lambda r, _a: pgb.table(pgb.USER_COLS, r)),
            "LISTS": (lambda: pgb.list_rows(ctx()), lambda r, _a: pgb.table(pgb.LIST_COLS, r)),
            "MEM": (lambda: pgb.mem_rows(ctx()), lambda r, _a: pgb.table(pgb.MEM_COLS, r)),
            "NODES": (lambda: nodes_view(self.server), lambda r, _a: _table(_NODE_COLS, r)),
            "NODE_STATS": (lambda: stats_view(self.server), lambda r, _a: _table(_NODE_STATS_COLS, r)),
            "PLUGINS": (self._plugin_rows, lambda r, _a: _table(_PLUGIN_COLS, r)),
            "QUERIES": (lambda: queries_view(self.server, limit=1000), lambda r, _a: _table(_QUERY_COLS, r[:100])),
        }
        self.shows: dict[str, Callable[[], bytes]] = {
            **{item: self._local_show(item) for item in self.views},
            "STATE": lambda: pgb.table(pgb.STATE_COLS, pgb.state_rows(self.server.ctx, self.suspended)),
            "PEERS": lambda: pgb.table(
                (("peer_id", pgb.INT4), ("host", pgb.TEXT), ("port", pgb.INT4), ("pool_size", pgb.INT4)), []
            ),
            "PEER_POOLS": lambda: pgb.table(
                (
                    ("peer_id", pgb.INT4),
                    ("cl_active_cancel_req", pgb.INT4),
                    ("cl_waiting_cancel_req", pgb.INT4),
                    ("sv_active_cancel", pgb.INT4),
                    ("sv_login", pgb.INT4),
                ),
                [],
            ),
            "DNS_HOSTS": lambda: pgb.table((("hostname", pgb.TEXT), ("ttl", pgb.INT8), ("addrs", pgb.TEXT)), []),
            "DNS_ZONES": lambda: pgb.table((("zonename", pgb.TEXT), ("serial", pgb.INT8), ("count", pgb.INT4)), []),
            "CONFIG": self.show_config,
            "VERSION": self.show_version,
            "HELP": self.show_help,
            "MIRROR": self.show_mirror,  # issue 15 §4
            "ANALYTICS": self.show_analytics,  # issue 15 §5
            "LIMITS": self.show_limits,
            "CACHE": lambda: self.server.cache_service.show(),  # result cache state and counters
        }

    def _ctx(self) -> Any:
        return self.server.ctx

    def _local_show(self, item: str) -> Callable[[], bytes]:
        rows, render = self.views[item]
        return lambda: render(rows(), False)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # ------------------------------------------------------------------ entry
    def execute(self, sql: str, session: Any) -> bytes | Awaitable[bytes] | None:
        """Response messages, or an awaitable of them (with workers: N>1 every SHOW of rows is merged from all
        workers and every command runs on all; PAUSE and WAIT_CLOSE answer once connections are released)."""
        link = getattr(self.server, "link", None)
        if link is not None and getattr(link, "workers", 1) > 1:
            words = sql.strip().rstrip(";").split()
            verb = words[0].upper() if words else ""
            if verb == "SHOW" and len(words) == 2 and words[1].upper() in self.views:
                return self._show_all_workers(link, words[1].upper())
            if verb == "SHOW" and len(words) == 2 and words[1].upper() == "CACHE" and self.server.cache_service:
                return self._show_cache_all(link)
            if verb == "SHOW" and len(words) == 2 and words[1].upper() in ("MIRROR", "ANALYTICS"):
                return self._show_traffic(words[1].upper())
            if verb in _EVERYWHERE and ";" not in sql.strip().rstrip(";"):
                return self._run_everywhere(link, sql, session, verb)
        self._waiting = True
        try:
            out: bytes | Awaitable[bytes] | None = self.execute_local(sql, session)
            return out
        finally:
            self._waiting = False

    async def _show_all_workers(self, link: Any, item: str) -> bytes:
        """SHOW over every worker's rows (listed shows get a `worker` column)."""
        rows_fn, render = self.views[item]
        local = rows_fn()
        answers = await link.ask_admin({"show": item})
        per_worker = [(int(link.worker_id), local)] + [(int(a["worker"]), a.get("rows") or []) for a in answers]
        merged = aggregate.merge(item, per_worker)
        if item in aggregate.LISTED:
            cols = {
                "CLIENTS": pgb.SOCKET_COLS + pgb.CLIENT_EXTRA,
                "SERVERS": pgb.SOCKET_COLS + pgb.SERVER_EXTRA,
                "FDS": pgb.FDS_COLS,
            }.get(item, pgb.SOCKET_COLS)
            return pgb.table(cols + pgb.WORKER, merged)
        return render(merged, True)

    async def _run_everywhere(self, link: Any, sql: str, session: Any, verb: str) -> bytes:
        """A command on this worker and on every other one (SHUTDOWN: the others first). KILL_CLIENT and KILL
        of a client or database this worker does not have are answered by the worker that has it."""
        request = {"run": sql, "user": getattr(session, "user", "?"), "peer": str(getattr(session, "peer", "?"))}
        timeout = None if verb in _WAITING else 30.0
        if verb == "SHUTDOWN":
            self._check_shutdown(sql)
            await link.ask_admin(request, timeout)
        words = sql.strip().rstrip(";").split()
        one_client = verb == "KILL" and len(words) == 2 and any(
            getattr(c, "client_id", None) == words[1] for c in list(self.server.ctx.clients))
        self._waiting = True
        try:
            local: Any = self.execute_local(sql, session)
        except HeliosError as exc:
            if verb not in ("KILL_CLIENT", "KILL") or exc.sqlstate != "42704":
                raise
            answers = await link.ask_admin(request, timeout)
            if any(a.get("ok") for a in answers):
                return messages.command_complete(verb)
            raise
        finally:
            self._waiting = False
        if verb in ("SHUTDOWN", "KILL_CLIENT") or one_client:  # a client id is one client: found here, done
            return bytes(local)
        if inspect.isawaitable(local):
            out, answers = await asyncio.gather(local, link.ask_admin(request, timeout))
        else:
            out, answers = local, await link.ask_admin(request, timeout)
        for a in answers:
            if a.get("error") and verb not in ("KILL", "KILL_CLIENT"):
                log.warning("%s on worker %s: %s", verb, a.get("worker"), a["error"])
        if verb == "RELOAD":
            failed = [f"worker {a.get('worker')}: {a['error']}" for a in answers if a.get("error")]
            if failed:
                raise HeliosError("reload failed on " + "; ".join(failed), sqlstate="F0000")
        return bytes(out)

    async def answer_peer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Another worker's console asks: `show` -> this worker's rows; `run` -> run the command here."""
        try:
            item = request.get("show")
            if isinstance(item, str) and item in self.views:
                return {"rows": self.views[item][0]()}
            sql = request.get("run")
            if isinstance(sql, str):
                session = _PeerSession(str(request.get("user", "?")), str(request.get("peer", "?")),
                                       str(request.get("origin", "console")))
                self._waiting = bool(request.get("wait", True))
                try:
                    out = self.execute_local(sql, session)
                finally:
                    self._waiting = False
                if inspect.isawaitable(out):
                    await out
                return {"ok": True}
            return {"error": "bad request"}
        except HeliosError as exc:
            return {"error": exc.message, "sqlstate": exc.sqlstate}

    async def _show_cache_all(self, link: Any) -> bytes:
        """SHOW CACHE with workers: one row per worker (each has its own cache)."""
        snaps: list[dict[str, Any]] = await link.gather()
        return bytes(self.server.cache_service.show_workers([(s.get("worker"), s.get("cache")) for s in snaps]))

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
            log.info("admin %s: %s", who, text, extra={"event": "admin_command", "user": who, "command": text,
                                                        "client": str(getattr(session, "peer", "?"))})
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
            raise HeliosError(f'unknown SHOW item "{args[0]}"; one of: {", ".join(self.shows)}', sqlstate="42601")
        return fn()

    def _fds_rows(self) -> list[dict[str, Any]]:
        srv = self.server
        listeners = [x for x in (getattr(srv, "listener", None), getattr(srv, "unix_listener", None)) if x]
        return pgb.fds_rows(srv.ctx, listeners)

    def _plugin_rows(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.server.ctx.plugins.stats():
            calls = p.get("calls", {})
            rows.append(
                {
                    **{c: p.get(c) for c in _PLUGIN_COLS},
                    "calls": sum(v["calls"] for v in calls.values()),
                    "errors": sum(v["errors"] for v in calls.values()),
                }
            )
        return rows

    def show_config(self) -> bytes:
        return pgb.table(
            tuple((c, pgb.TEXT) for c in ("key", "value", "default", "changeable")), config_view(self.server.config)
        )

    # issue 15 §4, §5: mirror and analytics (all workers' numbers in multi-worker mode)
    def show_mirror(self) -> bytes:
        m = self.server.ctx.mirror
        view = m.view() if m is not None else {}
        return _table(traffic.MIRROR_COLUMNS, traffic.mirror_rows(view))

    def show_analytics(self) -> bytes:
        a = self.server.ctx.analytics
        view = traffic_analytics.merge([a.snapshot()] if a is not None else [])
        return _table(traffic_analytics.FINGERPRINT_COLUMNS, view["fingerprints"])

    async def _show_traffic(self, item: str) -> bytes:
        tc: traffic.TrafficControl = getattr(self.server, "traffic")  # noqa: B009 (not in ServerControl)
        if item == "MIRROR":
            return _table(traffic.MIRROR_COLUMNS, traffic.mirror_rows(await tc.mirror_view()))
        view = await tc.analytics_view()
        return _table(traffic_analytics.FINGERPRINT_COLUMNS, view["fingerprints"])

    def show_limits(self) -> bytes:
        limiter = self.server.ctx.limits
        rows = limiter.rows() if limiter is not None else []
        return pgb.table((("name", pgb.TEXT), ("key", pgb.TEXT), ("value", pgb.TEXT), ("allowed", pgb.INT8),
                          ("rejected", pgb.INT8), ("queued", pgb.INT8)), rows)

    def show_version(self) -> bytes:
        return pgb.table((("version", pgb.TEXT),), [{"version": VERSION}])

    def show_help(self) -> bytes:
        return messages.result_set(["command", "description"], [list(h) for h in HELP])

    # ------------------------------------------------------------------ actions
    def _reload(self, args: list[str], _session: Any) -> bytes:
        _no_args("RELOAD", args)
        ok, message = self.server.reload(
            requested_by=getattr(_session, "requested_by", None)
            or f"console {getattr(_session, 'user', '?')}@{getattr(_session, 'peer', '?')}"
        )
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

    def _check_shutdown(self, sql: str) -> str:
        return _shutdown_mode(sql.strip().rstrip(";").split()[1:])

    def _switchover(self, args: list[str], _session: Any) -> Awaitable[bytes]:
        """SWITCHOVER [TO node] (issue 16 §3): answers once the new primary takes writes."""
        if args and not (len(args) == 2 and args[0].upper() == "TO"):
            raise HeliosError("SWITCHOVER takes nothing or TO node", sqlstate="42601")
        return self._switchover_row(args[1] if args else None)

    async def _switchover_row(self, target: str | None) -> bytes:
        try:
            row = await switchover.run(self.server, target)
        except AdminError as exc:
            raise HeliosError(exc.message, sqlstate=exc.sqlstate) from None
        return _table(switchover.COLUMNS, [row])

    def _shutdown(self, args: list[str], _session: Any) -> bytes:
        mode = _shutdown_mode(args)
        log.warning("SHUTDOWN %s from the admin console", mode.upper())
        self.server.request_shutdown(mode)
        return messages.command_complete("SHUTDOWN")


def _shutdown_mode(args: list[str]) -> str:
    if not args:
        return "immediate"
    if len(args) != 1 or args[0].upper() not in ("WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
        raise HeliosError("SHUTDOWN takes WAIT_FOR_SERVERS or WAIT_FOR_CLIENTS", sqlstate="42601")
    return args[0].lower()


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
