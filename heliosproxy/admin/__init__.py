"""Operator views shared by the SQL console, the HTTP API and metrics: nodes, pools, clients, queries, config."""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any, Protocol

from heliosproxy import __version__
from heliosproxy.backends.registry import Node, NodeState
from heliosproxy.config.load import size_field
from heliosproxy.config.schema import Config

VERSION = f"HeliosProxy {__version__}"
_SECRET_KEYS = ("password", "token")


class ServerControl(Protocol):
    """What the admin needs from the running server (heliosproxy.server.Server)."""

    @property
    def ctx(self) -> Any: ...  # heliosproxy.session.context.ProxyContext (a higher layer)

    @property
    def config(self) -> Config: ...

    @property
    def reloads_ok(self) -> int: ...

    @property
    def reloads_failed(self) -> int: ...

    @property
    def last_reload_error(self) -> str | None: ...

    @property
    def cache_service(self) -> Any: ...  # heliosproxy.session.resultcache.CacheService (result cache)

    def reload(self, requested_by: str = "unknown") -> tuple[bool, str]: ...

    def request_shutdown(self, mode: str = "drain") -> None: ...


class AdminError(Exception):
    """A refused admin action; `status` for HTTP, `sqlstate` for the SQL console."""

    def __init__(self, message: str, *, status: int = 400, sqlstate: str = "22023"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.sqlstate = sqlstate


# ---------------------------------------------------------------------- nodes
def node_view(node: Node, primary: str | None, active: int) -> dict[str, Any]:
    return {
        "name": node.name,
        "host": node.cfg.host,
        "port": node.cfg.port,
        "configured_role": node.cfg.role.value,
        "role": node.role.value,
        "state": node.state.value,
        "write_target": node.name == primary,
        "disabled": node.disabled,
        "usable": node.usable,
        "lag_bytes": node.lag_bytes,
        "lag_ms": None if node.lag_ms is None else round(node.lag_ms, 3),
        "timeline": node.timeline,
        "in_recovery": node.in_recovery,
        "weight": node.cfg.weight,
        "priority": node.cfg.priority,
        "active_connections": active,
        "last_check_age_s": None if not node.last_check else round(time.monotonic() - node.last_check, 3),
        "last_error": node.last_error,
        "breaker": node.breaker,  # circuit breaker: closed | open | half_open
    }


def nodes_view(server: ServerControl) -> list[dict[str, Any]]:
    ctx = server.ctx
    reg = ctx.registry
    return [node_view(n, reg.primary, ctx.pools.active_on(n.name)) for n in reg.nodes.values()]


def set_node_disabled(server: ServerControl, name: str, disabled: bool) -> dict[str, Any]:
    """DISABLE/ENABLE: a disabled node gets no new statements (its open transactions finish)."""
    ctx = server.ctx
    node: Node | None = ctx.registry.nodes.get(name)
    if node is None:
        known = ", ".join(ctx.registry.nodes)
        raise AdminError(f'node "{name}" does not exist (nodes: {known})', status=404, sqlstate="42704")
    if node.disabled != disabled:
        node.disabled = disabled
        node.changed_at = time.monotonic()
        ctx.registry.changed()
    return node_view(node, ctx.registry.primary, ctx.pools.active_on(name))


def set_paused(server: ServerControl, database: str, paused: bool) -> dict[str, Any]:
    """PAUSE/RESUME one database ("*" = all): new statements wait while paused."""
    held: set[str] = server.ctx.paused
    if paused:
        held.add(database)
    elif database == "*":
        held.clear()
    elif database in held:
        held.discard(database)
    else:
        raise AdminError(f'database "{database}" is not paused', status=409, sqlstate="55000")
    return {"database": database, "paused": sorted(held)}


def set_plugin_disabled(server: ServerControl, name: str, disabled: bool) -> dict[str, Any]:
    plugins = server.ctx.plugins
    if not plugins.set_disabled(name, disabled):
        known = ", ".join(p["name"] for p in plugins.stats()) or "none loaded"
        raise AdminError(f'plugin "{name}" is not loaded (plugins: {known})', status=404, sqlstate="42704")
    return next(p for p in plugins.stats() if p["name"] == name)


def primary_reachable(server: ServerControl) -> bool:
    node = server.ctx.registry.primary_node()
    return node is not None and node.state in (NodeState.UP, NodeState.LAGGING)


# ---------------------------------------------------------------------- pools / servers / clients
def pools_view(server: ServerControl) -> list[dict[str, Any]]:
    out = []
    for pool in list(server.ctx.pools.pools.values()):
        out.append(dict(pool.snapshot()))
    return out


def servers_view(server: ServerControl) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    now_wall = time.time()
    now_mono = time.monotonic()
    for pool in list(server.ctx.pools.pools.values()):
        for state, conns in (("active", list(pool.active)), ("idle", list(pool.idle))):
            for c in conns:
                owner = c.owner if c.owner is not None else c.pinned_by
                out.append(
                    {
                        "type": "S",
                        "user": pool.key.user,
                        "database": pool.key.database,
                        "node": pool.key.node,
                        "state": state,
                        "addr": c.host,
                        "port": c.port,
                        "connect_time": _iso(now_wall - (now_mono - c.created_at)),
                        "request_time": _iso(now_wall - (now_mono - c.last_used)),
                        "remote_pid": c.pid,
                        "link": getattr(owner, "client_id", None) or None,
                        "tx_status": chr(c.tx_status),
                        "prepared_statements": len(c.prepared),
                    }
                )
    return out


def clients_view(server: ServerControl) -> list[dict[str, Any]]:
    out = []
    for client in list(server.ctx.clients):
        d = dict(client.describe())
        if getattr(client, "stalled", None) is not None:
            d["state"] = "waiting"
        out.append(d)
    out.sort(key=lambda d: d.get("connected_at") or 0)
    return out


def kill_clients(server: ServerControl, target: str) -> int:
    """Close the client with this client_id, or every client of this database; how many."""
    clients = list(server.ctx.clients)
    chosen = [c for c in clients if getattr(c, "client_id", None) == target]
    if not chosen:
        chosen = [c for c in clients if getattr(c, "database", None) == target]
    if not chosen:
        raise AdminError(f'no client with client_id or database "{target}" (see SHOW CLIENTS)',
                         status=404, sqlstate="42704")
    for c in chosen:
        c.close("57P01", "terminating connection due to administrator command (KILL)")
    return len(chosen)


# ---------------------------------------------------------------------- queries / stats
def queries_view(server: ServerControl, limit: int = 100) -> list[dict[str, Any]]:
    stats = server.ctx.query_stats
    items = sorted(stats.items(), key=lambda kv: kv[1].total_us, reverse=True)[:limit]
    return [
        {
            "fingerprint": fp,
            "query": st.normalized,
            "calls": st.calls,
            "total_ms": round(st.total_us / 1000.0, 3),
            "mean_ms": round(st.total_us / 1000.0 / st.calls, 3) if st.calls else 0.0,
            "errors": st.errors,
        }
        for fp, st in items
    ]


def stats_view(server: ServerControl) -> list[dict[str, Any]]:
    """One row per (node, route) with query counts; a first row '*' with the process totals."""
    ctx = server.ctx
    c = ctx.counters
    per: dict[tuple[str, str], list[int]] = {}
    for (node, route, result), n in list(c.queries.items()):
        row = per.setdefault((node, route), [0, 0])
        row[0] += n
        if result != "ok":
            row[1] += n
    total_q = sum(v[0] for v in per.values())
    total_err = sum(v[1] for v in per.values())
    total_us = sum(st.total_us for st in ctx.query_stats.values())
    calls = sum(st.calls for st in ctx.query_stats.values())
    rows: list[dict[str, Any]] = [
        {
            "node": "*",
            "route": "*",
            "total_query_count": total_q,
            "total_error_count": total_err,
            "total_received": c.bytes_in,
            "total_sent": c.bytes_out,
            "total_query_time": total_us,
            "avg_query_time": (total_us // calls) if calls else 0,
            "total_client_connections": c.clients_total,
            "refused_client_connections": c.clients_refused,
            "login_failures": c.login_failures,
            "protocol_errors": c.protocol_errors,
        }
    ]
    for (node, route), (q, err) in sorted(per.items()):
        rows.append({"node": node, "route": route, "total_query_count": q, "total_error_count": err})
    return rows


# ---------------------------------------------------------------------- config
_LONG = 60  # SHOW CONFIG shortens longer values (the HTTP API has the full config)


def _flatten(value: Any, prefix: str, out: list[tuple[str, Any, str]]) -> None:
    """(key path, value, kind) of every leaf; kind: duration, duration_ms, size or plain."""
    for f in dataclasses.fields(value):
        key = f"{prefix}.{f.name}" if prefix else f.name
        v = getattr(value, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _flatten(v, key, out)
            continue
        kind = "plain"
        if isinstance(v, float) and not isinstance(v, bool):
            kind = "duration_ms" if f.name.endswith("_ms") else "duration"
        elif isinstance(v, int) and not isinstance(v, bool) and size_field(type(value), f.name):
            kind = "size"
        out.append((key, v, kind))


def format_duration(seconds: float) -> str:
    """Seconds as the config's duration syntax: 0.5 -> 500ms, 15 -> 15s, 600 -> 10m, 90 -> 1m30s."""
    if seconds == 0:
        return "0s"
    if seconds < 1 or not float(seconds).is_integer():
        ms = seconds * 1000
        return f"{int(ms)}ms" if float(ms).is_integer() else f"{seconds:g}s"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    if s > 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


def format_size(n: int) -> str:
    """Bytes as the config's size syntax: 67108864 -> 64MiB, 1000 -> 1kB, 100 -> 100B."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024),
                       ("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):  # fmt: skip
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _render(key: str, value: Any, kind: str = "plain") -> str | None:
    if value is None:
        return None
    if any(key.endswith("." + s) or key == s for s in _SECRET_KEYS):
        return "********"
    if kind == "duration":
        return format_duration(float(value))
    if kind == "duration_ms":
        return format_duration(float(value) / 1000.0)
    if kind == "size":
        return format_size(int(value))
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if value and dataclasses.is_dataclass(value[0]):
            return ", ".join(getattr(v, "name", str(i)) for i, v in enumerate(value))
        return ", ".join(str(v) for v in value)
    return str(value)


def _shorten(text: str | None) -> str | None:
    if text is None or len(text) <= _LONG:
        return text
    return text[: _LONG - 3] + "..."


_RESTART_ONLY = ("listen", "listen_unix", "workers", "admin.listen")


def config_view(config: Config, *, full: bool = False) -> list[dict[str, Any]]:
    """key / value / default / changeable, PgBouncer's SHOW CONFIG shape: values as written in the file
    (`15s`, `64MiB`), defaults in the same syntax, long values shortened (unless full), secrets masked."""
    cur: list[tuple[str, Any, str]] = []
    _flatten(config, "", cur)
    dl: list[tuple[str, Any, str]] = []
    _flatten(Config(nodes=()), "", dl)
    dflt = {k: (v, kind) for k, v, kind in dl}
    written = dict(config.written)
    rows = []
    for key, value, kind in cur:
        if key in ("source", "written"):
            continue
        shown = written.get(key) if value is not None else None
        if shown is None or any(key.endswith("." + s) or key == s for s in _SECRET_KEYS):
            shown = _render(key, value, kind)
        default = None
        if key in dflt and key != "nodes":
            default = _render(key, dflt[key][0], dflt[key][1])
        rows.append(
            {
                "key": key,
                "value": shown if full else _shorten(shown),
                "default": default if full else _shorten(default),
                "changeable": "no" if key in _RESTART_ONLY else "yes",
            }
        )
    return rows


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
