"""The SQL admin console of the virtual database `heliosproxy`: SHOW ..., RELOAD, PAUSE, DISABLE, KILL, SHUTDOWN."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from heliosproxy.admin import (
    VERSION,
    AdminError,
    ServerControl,
    clients_view,
    config_view,
    kill_clients,
    nodes_view,
    queries_view,
    servers_view,
    set_node_disabled,
    stats_view,
)
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import messages

log = logging.getLogger("heliosproxy.admin")

HELP = (
    ("SHOW POOLS", "pools per (node, database, user): clients and server connections"),
    ("SHOW CLIENTS", "client connections (client_id is what KILL takes)"),
    ("SHOW SERVERS", "backend connections of every pool"),
    ("SHOW NODES", "nodes: role, state, lag, timeline, write target"),
    ("SHOW STATS", "query, error and byte counters"),
    ("SHOW PLUGINS", "loaded plugins and their call counters"),
    ("SHOW CONFIG", "the running configuration (secrets masked)"),
    ("SHOW QUERIES", "top statements by total time"),
    ("SHOW VERSION", "the proxy version"),
    ("RELOAD", "re-read the config file (a bad file keeps the running config)"),
    ("PAUSE [db]", "hold new statements (of db, or all)"),
    ("RESUME [db]", "release paused statements"),
    ("DISABLE node", "send no new statements to node"),
    ("ENABLE node", "undo DISABLE"),
    ("KILL client_id|db", "close a client (or every client of a database) with 57P01"),
    ("SHUTDOWN", "drain clients and stop the proxy"),
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


_AGGREGATED = frozenset({"CLIENTS", "POOLS", "QUERIES"})


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    return messages.result_set(columns, [[_cell(r.get(c)) for c in columns] for r in rows])


class AdminConsole:
    """`execute(sql, session)` answers one statement with response messages (no ReadyForQuery)."""

    def __init__(self, server: ServerControl):
        self.server = server
        self.commands: dict[str, Callable[[list[str], Any], bytes]] = {
            "SHOW": self._show,
            "RELOAD": self._reload,
            "PAUSE": self._pause,
            "RESUME": self._resume,
            "DISABLE": self._disable,
            "ENABLE": self._enable,
            "KILL": self._kill,
            "SHUTDOWN": self._shutdown,
            "SET": lambda _a, _s: messages.command_complete("SET"),  # drivers' startup SETs: accepted, ignored
        }
        self.shows: dict[str, Callable[[], bytes]] = {
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
            "NODES": self.show_nodes,
            "STATS": self.show_stats,
            "PLUGINS": self.show_plugins,
            "CONFIG": self.show_config,
            "QUERIES": self.show_queries,
            "VERSION": self.show_version,
            "HELP": self.show_help,
        }

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # ------------------------------------------------------------------ entry
    def execute(self, sql: str, session: Any) -> bytes | Awaitable[bytes] | None:
        """Response messages, or (multi-worker SHOW CLIENTS/POOLS/QUERIES) an awaitable of them."""
        link = getattr(self.server, "link", None)
        if link is not None:
            words = sql.strip().rstrip(";").split()
            if len(words) == 2 and words[0].upper() == "SHOW" and words[1].upper() in _AGGREGATED:
                return self._show_all_workers(link, words[1].upper())
        return self.execute_local(sql, session)

    async def _show_all_workers(self, link: Any, item: str) -> bytes:
        """SHOW over every worker's snapshot, with a `worker` column."""
        snaps: list[dict[str, Any]] = await link.gather()
        if item == "CLIENTS":
            cols = ("worker", "client_id", "user", "database", "state", "addr", "application_name",
                    "backend_node", "backend_pid", "pinned", "mode", "queries")
            rows = [{**c, "worker": s.get("worker")} for s in snaps for c in s.get("clients", [])]
            return _table(cols, rows)
        if item == "POOLS":
            pool_cols = ("worker", "database", "user", "node", "mode", "size", "active", "idle", "connecting",
                         "waiting", "acquired_total", "timeouts", "connect_errors")
            rows = [{**p, "worker": s.get("worker")} for s in snaps for p in s.get("pools", [])]
            return _table(pool_cols, rows)
        merged: dict[str, list[Any]] = {}
        for snap in snaps:
            for fp, (query, calls, total_us, errors) in snap.get("queries", {}).items():
                m = merged.setdefault(fp, [query, 0, 0, 0])
                m[1] += calls
                m[2] += total_us
                m[3] += errors
        top = sorted(merged.items(), key=lambda kv: kv[1][2], reverse=True)[:100]
        rows = [
            {"fingerprint": fp, "query": q, "calls": c, "total_ms": round(t / 1000.0, 3),
             "mean_ms": round(t / 1000.0 / c, 3) if c else 0.0, "errors": e}
            for fp, (q, c, t, e) in top
        ]
        return _table(("fingerprint", "query", "calls", "total_ms", "mean_ms", "errors"), rows)

    def execute_local(self, sql: str, session: Any) -> bytes | None:
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
        ctx = self.server.ctx
        bound: dict[int, int] = {}
        for c in list(ctx.clients):
            p = getattr(c, "backend_pool", None)
            if p is not None and getattr(c, "backend", None) is not None:
                bound[id(p)] = bound.get(id(p), 0) + 1
        rows = []
        for pool in list(ctx.pools.pools.values()):
            s = pool.snapshot()
            rows.append(
                {
                    "database": pool.key.database,
                    "user": pool.key.user,
                    "cl_active": bound.get(id(pool), 0),
                    "cl_waiting": s["waiting"],
                    "sv_active": s["active"],
                    "sv_idle": s["idle"],
                    "sv_login": s["connecting"],
                    "pool_mode": s["mode"],
                    "node": pool.key.node,
                    "pool_size": s["size"],
                    "acquired_total": s["acquired_total"],
                    "timeouts": s["timeouts"],
                    "connect_errors": s["connect_errors"],
                    "avg_wait_us": int(float(str(s["avg_wait_ms"])) * 1000),
                }
            )
        cols = ("database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login", "pool_mode",
                "node", "pool_size", "acquired_total", "timeouts", "connect_errors", "avg_wait_us")
        return _table(cols, rows)

    def show_clients(self) -> bytes:
        rows = []
        for d in clients_view(self.server):
            addr, _, port = str(d.get("addr", "")).rpartition(":")
            rows.append({**d, "type": "C", "addr": addr or d.get("addr"), "port": port or None,
                         "connect_time": _ts(d.get("connected_at")), "node": d.get("backend_node"),
                         "remote_pid": d.get("backend_pid"), "pool_mode": d.get("mode")})
        cols = ("type", "user", "database", "state", "addr", "port", "connect_time", "application_name",
                "client_id", "node", "remote_pid", "pinned", "pool_mode", "queries")
        return _table(cols, rows)

    def show_servers(self) -> bytes:
        cols = ("type", "user", "database", "state", "addr", "port", "connect_time", "request_time",
                "remote_pid", "link", "node", "tx_status", "prepared_statements")
        return _table(cols, servers_view(self.server))

    def show_nodes(self) -> bytes:
        cols = ("name", "host", "port", "configured_role", "role", "state", "write_target", "disabled",
                "lag_bytes", "lag_ms", "timeline", "weight", "priority", "active_connections",
                "last_check_age_s", "last_error")
        return _table(cols, nodes_view(self.server))

    def show_stats(self) -> bytes:
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
        return _table(("key", "value", "default", "changeable"), config_view(self.server.config))

    def show_queries(self) -> bytes:
        return _table(("fingerprint", "query", "calls", "total_ms", "mean_ms", "errors"), queries_view(self.server))

    def show_version(self) -> bytes:
        return messages.result_set(["version"], [[VERSION]])

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

    def _pause(self, args: list[str], _session: Any) -> bytes:
        paused: set[str] = self.server.ctx.paused
        paused.add(_one_or_all("PAUSE", args))
        return messages.command_complete("PAUSE")

    def _resume(self, args: list[str], _session: Any) -> bytes:
        paused: set[str] = self.server.ctx.paused
        target = _one_or_all("RESUME", args)
        if target == "*":
            paused.clear()
        elif target in paused:
            paused.discard(target)
        else:
            raise HeliosError(f'database "{target}" is not paused', sqlstate="55000")
        return messages.command_complete("RESUME")

    def _disable(self, args: list[str], _session: Any) -> bytes:
        set_node_disabled(self.server, _one("DISABLE", args, "node"), True)
        return messages.command_complete("DISABLE")

    def _enable(self, args: list[str], _session: Any) -> bytes:
        set_node_disabled(self.server, _one("ENABLE", args, "node"), False)
        return messages.command_complete("ENABLE")

    def _kill(self, args: list[str], _session: Any) -> bytes:
        kill_clients(self.server, _one("KILL", args, "client_id"))
        return messages.command_complete("KILL")

    def _shutdown(self, args: list[str], _session: Any) -> bytes:
        _no_args("SHUTDOWN", args)
        log.warning("SHUTDOWN from the admin console")
        self.server.request_shutdown()
        return messages.command_complete("SHUTDOWN")


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
