"""PgBouncer 1.25's SHOW tables (names, order and types of its columns) built from the proxy's own state."""

from __future__ import annotations

import os
import resource
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from heliosproxy import __version__
from heliosproxy.protocol import codes, messages
from heliosproxy.session import pgcompat

TEXT, INT4, INT8, NUMERIC, BYTEA = 25, 23, 20, 1700, 17
Col = tuple[str, int]

_H = struct.Struct("!H")
_RD_TAIL = struct.Struct("!IhIhih")


def table(columns: Sequence[Col], rows: Iterable[dict[str, Any]], tag: str = "SHOW") -> bytes:
    """RowDescription with real type OIDs, DataRows, CommandComplete (PgBouncer ends every SHOW with 'SHOW')."""
    parts = [_H.pack(len(columns))]
    for name, oid in columns:
        size = {INT4: 4, INT8: 8}.get(oid, -1)
        parts.append(messages.cstr(name) + _RD_TAIL.pack(0, 0, oid, size, -1, 0))
    out = [messages.msg(codes.B_ROW_DESCRIPTION, b"".join(parts))]
    for r in rows:
        out.append(messages.data_row([_cell(r.get(name), oid) for name, oid in columns]))
    out.append(messages.command_complete(tag))
    return b"".join(out)


def _cell(value: Any, oid: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return ("1" if value else "0") if oid != TEXT else ("t" if value else "f")
    if oid in (INT4, INT8):
        return str(int(value))
    if oid == NUMERIC:
        return str(int(value)) if isinstance(value, int) or float(value).is_integer() else f"{float(value):.0f}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _ts(mono: float | None) -> str | None:
    """A monotonic instant as PgBouncer prints times ('2026-01-02 03:04:05 UTC')."""
    if not mono:
        return None
    wall = time.time() - (time.monotonic() - mono)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _wall_ts(wall: float | None) -> str | None:
    if not wall:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _split(addr: Any) -> tuple[str | None, int | None]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    if isinstance(addr, str):  # a Unix socket: peername is "" (or the path, for sockname)
        return "unix", 0
    return None, None


def _tls(transport: Any) -> str:
    """PgBouncer's `tls` column: protocol/cipher of a TLS connection ('' in clear)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0]}" if cipher else str(ssl_object.version() or "")


# ---------------------------------------------------------------------- SHOW CLIENTS / SERVERS / SOCKETS
SOCKET_COLS: tuple[Col, ...] = (
    ("type", TEXT), ("user", TEXT), ("database", TEXT), ("replication", TEXT), ("state", TEXT),
    ("addr", TEXT), ("port", INT4), ("local_addr", TEXT), ("local_port", INT4),
    ("connect_time", TEXT), ("request_time", TEXT), ("wait", INT4), ("wait_us", INT4), ("close_needed", INT4),
    ("ptr", TEXT), ("link", TEXT), ("remote_pid", INT4), ("tls", TEXT), ("application_name", TEXT),
    ("prepared_statements", INT4), ("id", INT4),
)  # fmt: skip
CLIENT_EXTRA: tuple[Col, ...] = (
    ("client_id", TEXT), ("node", TEXT), ("pinned", TEXT), ("pool_mode", TEXT), ("queries", INT8),
)
SERVER_EXTRA: tuple[Col, ...] = (("node", TEXT), ("tx_status", TEXT), ("client_id", TEXT))
WORKER: tuple[Col, ...] = (("worker", INT4),)


def client_state(c: Any) -> str:
    if getattr(c, "phase", 3) < 3:
        return "login"
    if pgcompat.is_waiting(c):
        return "waiting"
    return "active" if c.backend is not None else "idle"


def client_rows(ctx: Any) -> list[dict[str, Any]]:
    now = time.monotonic()
    out = []
    for c in list(ctx.clients):
        t = c.io.transport
        addr, port = _split(t.get_extra_info("peername") if t is not None else None)
        laddr, lport = _split(t.get_extra_info("sockname") if t is not None else None)
        since = pgcompat.wait_started(c)
        wait = now - since if since else 0.0
        b = c.backend
        out.append({
            "type": "C", "user": c.user or "(nouser)", "database": c.database or "(nodb)", "replication": "none",
            "state": client_state(c), "addr": addr, "port": port, "local_addr": laddr, "local_port": lport,
            "connect_time": _wall_ts(c.connected_at), "request_time": _ts(c.compat.request_time),
            "wait": int(wait), "wait_us": int((wait - int(wait)) * 1_000_000), "close_needed": 0,
            "ptr": c.client_id or f"c-{id(c):x}", "link": f"s{b.pid}" if b is not None else None,
            "remote_pid": 0, "tls": _tls(t), "application_name": c.app_name,
            "prepared_statements": len(c.statements),
            "id": c.pid, "client_id": c.client_id, "node": b.node if b is not None else None,
            "pinned": c.pinned, "pool_mode": "statement" if c.compat.statement_mode else c.mode.value,
            "queries": c.query_count, "_wait_start": since,
        })  # fmt: skip
    out.sort(key=lambda d: d["connect_time"] or "")
    return out


def server_rows(ctx: Any) -> list[dict[str, Any]]:
    out = []
    for pool in _all_pools(ctx):
        for state, conns in (("active", list(pool.active)), ("idle", list(pool.idle))):
            for conn in conns:
                owner = conn.owner if conn.owner is not None else conn.pinned_by
                t = conn.transport
                laddr, lport = _split(t.get_extra_info("sockname") if t is not None else None)
                cid = getattr(owner, "client_id", None) or None
                out.append({
                    "type": "S", "user": pool.key.user, "database": pool.key.database, "replication": "none",
                    "state": state, "addr": conn.host, "port": conn.port, "local_addr": laddr, "local_port": lport,
                    "connect_time": _ts(conn.created_at), "request_time": _ts(conn.last_used),
                    "wait": 0, "wait_us": 0, "close_needed": 1 if pool.retired else 0,
                    "ptr": f"s{conn.pid}", "link": cid, "remote_pid": conn.pid, "tls": _tls(t),
                    "application_name": getattr(owner, "app_name", "") if owner is not None else "",
                    "prepared_statements": len(conn.prepared), "id": conn.pid,
                    "node": pool.key.node, "tx_status": chr(conn.tx_status), "client_id": cid,
                })  # fmt: skip
    return out


def _all_pools(ctx: Any) -> list[Any]:
    """Live pools plus retired ones that still hold connections (RECONNECT/RELOAD: close_needed)."""
    pools = list(ctx.pools.pools.values())
    seen = {id(p) for p in pools}
    for cap in list(ctx.pools.caps.values()):
        for p in list(cap.pools):
            if id(p) not in seen:
                seen.add(id(p))
                pools.append(p)
    for p in list(getattr(ctx.pools, "retired", ())):
        if id(p) not in seen and p.total:
            seen.add(id(p))
            pools.append(p)
    return pools


# ---------------------------------------------------------------------- SHOW POOLS
POOL_COLS: tuple[Col, ...] = (
    ("database", TEXT), ("user", TEXT), ("cl_active", INT4), ("cl_waiting", INT4), ("cl_active_cancel_req", INT4),
    ("cl_waiting_cancel_req", INT4), ("sv_active", INT4), ("sv_active_cancel", INT4), ("sv_being_canceled", INT4),
    ("sv_idle", INT4), ("sv_used", INT4), ("sv_tested", INT4), ("sv_login", INT4), ("maxwait", INT4),
    ("maxwait_us", INT4), ("pool_mode", TEXT), ("load_balance_hosts", TEXT),
)  # fmt: skip
POOL_EXTRA: tuple[Col, ...] = (
    ("pool_size", INT4), ("reserve_pool_size", INT4), ("nodes", TEXT), ("acquired_total", INT8),
    ("timeouts", INT8), ("connect_errors", INT8),
)


def pool_rows(ctx: Any, clients: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (database, user) as PgBouncer has it; server counts summed over the nodes."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(db: str, user: str) -> dict[str, Any]:
        r = rows.get((db, user))
        if r is None:
            r = rows[(db, user)] = {
                "database": db, "user": user, "cl_active": 0, "cl_waiting": 0, "cl_active_cancel_req": 0,
                "cl_waiting_cancel_req": 0, "sv_active": 0, "sv_active_cancel": 0, "sv_being_canceled": 0,
                "sv_idle": 0, "sv_used": 0, "sv_tested": 0, "sv_login": 0, "maxwait": 0, "maxwait_us": 0,
                "pool_mode": ctx.pools.mode_for(user, db).value, "load_balance_hosts": None,
                "pool_size": 0, "reserve_pool_size": 0, "nodes": [], "acquired_total": 0, "timeouts": 0,
                "connect_errors": 0, "_maxwait": 0.0,
            }  # fmt: skip
        return r

    for pool in _all_pools(ctx):
        r = row(pool.key.database, pool.key.user)
        checking = min(pool.checking, len(pool.active))
        r["sv_active"] += len(pool.active) - checking
        r["sv_tested"] += checking
        r["sv_idle"] += len(pool.idle)
        r["sv_login"] += pool.connecting
        if not pool.retired:
            r["pool_size"] = max(r["pool_size"], pool.size)
            r["reserve_pool_size"] = max(r["reserve_pool_size"], pool.reserve_size)
            r["pool_mode"] = pool.mode.value
        if pool.key.node not in r["nodes"]:
            r["nodes"].append(pool.key.node)
        r["acquired_total"] += pool.acquired_total
        r["timeouts"] += pool.timeouts
        r["connect_errors"] += pool.connect_errors
    now = time.monotonic()
    for c in clients if clients is not None else client_rows(ctx):
        if c["database"] in pgcompat.ADMIN_DATABASES or c["state"] == "login":
            continue
        r = row(c["database"], c["user"])
        if c["state"] == "waiting":
            r["cl_waiting"] += 1
            since = c.get("_wait_start") or 0.0
            if since:
                r["_maxwait"] = max(r["_maxwait"], now - since)
        else:
            r["cl_active"] += 1
    for r in rows.values():
        w = r.pop("_maxwait")
        r["maxwait"], r["maxwait_us"] = int(w), int((w - int(w)) * 1_000_000)
        if not r["pool_size"]:
            r["pool_size"] = _pool_size(ctx, r["database"], r["user"])
    return sorted(rows.values(), key=lambda r: (r["database"], r["user"]))


def _pool_size(ctx: Any, db: str, user: str) -> int:
    cfg = ctx.config
    u = cfg.user(user)
    d = ctx.pools.db_config(db)
    return int((u.pool_size if u and u.pool_size else None) or (d.pool_size if d else None) or cfg.pool.size)


# ---------------------------------------------------------------------- SHOW STATS family
_STAT_NAMES = ("server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time",
               "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count",
               "client_login_count")  # fmt: skip
_TOTAL_NAMES = ("total_server_assignment_count", "total_xact_count", "total_query_count", "total_received",
                "total_sent", "total_xact_time", "total_query_time", "total_wait_time", "total_client_parse_count",
                "total_server_parse_count", "total_bind_count", "total_client_login_count")  # fmt: skip
_AVG_NAMES = ("avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
              "avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count", "avg_server_parse_count",
              "avg_bind_count", "avg_client_login_count")  # fmt: skip
# PgBouncer 1.25 has no client_login_count column (newer versions add it): it goes with the extras.
STATS_COLS: tuple[Col, ...] = (
    ("database", TEXT), *((n, NUMERIC) for n in _TOTAL_NAMES[:11]), *((n, NUMERIC) for n in _AVG_NAMES[:11]),
)
STATS_EXTRA: tuple[Col, ...] = (
    ("total_requests", NUMERIC),  # the pre-1.8 name of total_query_count (prometheus-pgbouncer-exporter 1.7)
    ("total_client_login_count", NUMERIC), ("avg_client_login_count", NUMERIC),
)
STATS_TOTALS_COLS: tuple[Col, ...] = (
    ("database", TEXT), ("server_assignment_count", NUMERIC), ("xact_count", NUMERIC), ("query_count", NUMERIC),
    ("bytes_received", NUMERIC), ("bytes_sent", NUMERIC), ("xact_time", NUMERIC), ("query_time", NUMERIC),
    ("wait_time", NUMERIC), ("client_parse_count", NUMERIC), ("server_parse_count", NUMERIC), ("bind_count", NUMERIC),
)  # fmt: skip
STATS_AVERAGES_COLS: tuple[Col, ...] = (
    *STATS_TOTALS_COLS[:9], ("avg_client_parse_count", NUMERIC), ("avg_server_parse_count", NUMERIC),
    ("avg_bind_count", NUMERIC),
)


def _databases_seen(ctx: Any) -> list[str]:
    names = {d.name for d in ctx.config.databases}
    names.update(ctx.pg_stats.dbs)
    names.update(ctx.disabled_databases)
    names.update(d for d in ctx.paused if d != "*")
    names.update(p.key.database for p in list(ctx.pools.pools.values()))
    names.update(c.database for c in list(ctx.clients) if c.database and not c.admin and c.phase >= 3)
    names.difference_update(pgcompat.ADMIN_DATABASES)
    return sorted(names)


def stats_rows(ctx: Any) -> list[dict[str, Any]]:
    book = ctx.pg_stats
    avgs = book.averages()
    out = []
    for db in sorted(book.dbs):
        tot = book.dbs[db].as_tuple()
        avg = avgs.get(db, (0.0,) * len(tot))
        r: dict[str, Any] = {"database": db}
        r.update(zip(_TOTAL_NAMES, tot, strict=True))
        r.update(zip(_AVG_NAMES, avg, strict=True))
        out.append(derive_stats(r))
    return out


def derive_stats(r: dict[str, Any]) -> dict[str, Any]:
    """The SHOW STATS_TOTALS names and the exporter's old names, from a row's total_* values."""
    r.update(zip(_STAT_NAMES, [r[n] for n in _TOTAL_NAMES], strict=True))
    r["bytes_received"], r["bytes_sent"] = r["received"], r["sent"]
    r["total_requests"] = r["total_query_count"]
    return r


# avg_*_time are per transaction / query / assignment: merged weighted by these rates.
_AVG_WEIGHTS = {"avg_xact_time": "avg_xact_count", "avg_query_time": "avg_query_count",
                "avg_wait_time": "avg_server_assignment_count"}  # fmt: skip


def merge_stats(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """SHOW STATS rows of several workers as one row per database: totals and rates add up, average
    times are weighted by their rates."""
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = merged.get(r["database"])
        if m is None:
            m = merged[r["database"]] = {
                "database": r["database"],
                **{n: 0 for n in _TOTAL_NAMES},
                **{n: 0.0 for n in _AVG_NAMES},
                "_w": {n: 0.0 for n in _AVG_WEIGHTS},
            }
        for n in _TOTAL_NAMES:
            m[n] += int(r.get(n) or 0)
        for n in _AVG_NAMES:
            if n in _AVG_WEIGHTS:
                w = float(r.get(_AVG_WEIGHTS[n]) or 0.0)
                m[n] += float(r.get(n) or 0.0) * w
                m["_w"][n] += w
            else:
                m[n] += float(r.get(n) or 0.0)
    out = []
    for db in sorted(merged):
        m = merged[db]
        weights = m.pop("_w")
        for n, w in weights.items():
            m[n] = m[n] / w if w else 0.0
        out.append(derive_stats(m))
    return out


def stats_average_rows(ctx: Any, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    out = []
    for r in stats_rows(ctx) if rows is None else rows:
        a = {"database": r["database"]}
        a.update(zip(_STAT_NAMES, [r[n] for n in _AVG_NAMES], strict=True))
        a["bytes_received"], a["bytes_sent"] = a["received"], a["sent"]
        for n in ("client_parse_count", "server_parse_count", "bind_count"):
            a["avg_" + n] = a[n]
        out.append(a)
    return out


def totals_rows(ctx: Any, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """SHOW TOTALS: name/value rows, SHOW STATS over all databases (average times weighted)."""
    rows = stats_rows(ctx) if rows is None else rows
    total = merge_stats({**r, "database": "*"} for r in rows)
    one = total[0] if total else {n: 0 for n in _TOTAL_NAMES + _AVG_NAMES}
    return [{"name": n, "value": one[n]} for n in _TOTAL_NAMES[:11] + _AVG_NAMES[:11]]


# ---------------------------------------------------------------------- SHOW DATABASES / USERS / LISTS
DATABASE_COLS: tuple[Col, ...] = (
    ("name", TEXT), ("host", TEXT), ("port", INT4), ("database", TEXT), ("force_user", TEXT), ("pool_size", INT4),
    ("min_pool_size", INT4), ("reserve_pool_size", INT4), ("server_lifetime", INT4), ("pool_mode", TEXT),
    ("load_balance_hosts", TEXT), ("max_connections", INT4), ("current_connections", INT4),
    ("max_client_connections", INT4), ("current_client_connections", INT4), ("paused", INT4), ("disabled", INT4),
)  # fmt: skip
DATABASE_EXTRA: tuple[Col, ...] = (("reserve_pool", INT4), ("route", TEXT))  # exporter 1.7 reads reserve_pool


def database_rows(ctx: Any) -> list[dict[str, Any]]:
    cfg = ctx.config
    primary = cfg.node(ctx.registry.primary or "") or (cfg.nodes[0] if cfg.nodes else None)
    out = []
    pools = _all_pools(ctx)
    for name in _databases_seen(ctx):
        d = ctx.pools.db_config(name)
        dbname = d.dbname if d is not None else name
        conns = sum(p.total for p in pools if p.key.database in (name, dbname))
        nclients = sum(1 for c in list(ctx.clients) if c.database == name and not c.admin)
        reserve = (d.reserve_pool_size if d is not None else None) or 0
        max_db = d.max_db_connections if d is not None and d.max_db_connections is not None else None
        out.append({
            "name": name, "host": primary.host if primary else None, "port": primary.port if primary else None,
            "database": dbname, "force_user": None,
            "pool_size": (d.pool_size if d is not None else None) or cfg.pool.size,
            "min_pool_size": (d.min_pool_size if d is not None else None) or cfg.pool.min_size,
            "reserve_pool_size": reserve, "server_lifetime": int(cfg.pool.max_lifetime),
            "pool_mode": d.pool_mode.value if d is not None and d.pool_mode is not None else None,
            "load_balance_hosts": None,
            "max_connections": max_db if max_db is not None else cfg.pool.max_db_connections,
            "current_connections": conns, "max_client_connections": 0, "current_client_connections": nclients,
            "paused": "*" in ctx.paused or name in ctx.paused, "disabled": name in ctx.disabled_databases,
            "reserve_pool": reserve, "route": d.route.value if d is not None else "auto",
        })  # fmt: skip
    return out


USER_COLS: tuple[Col, ...] = (
    ("name", TEXT), ("pool_size", TEXT), ("reserve_pool_size", TEXT), ("pool_mode", TEXT),
    ("max_user_connections", INT4), ("current_connections", INT4), ("max_user_client_connections", INT4),
    ("current_client_connections", INT4),
)  # fmt: skip


def user_rows(ctx: Any) -> list[dict[str, Any]]:
    cfg = ctx.config
    pools = _all_pools(ctx)
    out = []
    for u in cfg.users:
        out.append({
            "name": u.name, "pool_size": "" if u.pool_size is None else str(u.pool_size), "reserve_pool_size": "",
            "pool_mode": u.pool_mode.value if u.pool_mode is not None else None,
            "max_user_connections": u.max_user_connections if u.max_user_connections is not None
            else cfg.pool.max_user_connections,
            "current_connections": sum(p.total for p in pools if p.key.user == u.name),
            "max_user_client_connections": 0,
            "current_client_connections": sum(1 for c in list(ctx.clients) if c.user == u.name),
        })  # fmt: skip
    return out


LIST_COLS: tuple[Col, ...] = (("list", TEXT), ("items", INT4))


def list_rows(ctx: Any) -> list[dict[str, Any]]:
    clients = list(ctx.clients)
    pools = _all_pools(ctx)
    items = (
        ("databases", len(_databases_seen(ctx))), ("users", len(ctx.config.users)), ("peers", 0),
        ("pools", len({(p.key.database, p.key.user) for p in pools})), ("peer_pools", 0),
        ("free_clients", 0), ("used_clients", len(clients)),
        ("login_clients", sum(1 for c in clients if c.phase < 3)), ("free_servers", 0),
        ("used_servers", sum(p.total for p in pools)),
        ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0), ("dns_pending", 0),
    )  # fmt: skip
    return [{"list": k, "items": v} for k, v in items]


MEM_COLS: tuple[Col, ...] = (("name", TEXT), ("size", INT4), ("used", INT4), ("free", INT4), ("memtotal", INT4))


def mem_rows(ctx: Any) -> list[dict[str, Any]]:
    """PgBouncer lists its slab caches; the proxy's equivalents are its object counts (sizes are estimates)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clients = len(ctx.clients)
    servers = sum(p.total for p in _all_pools(ctx))
    return [
        {"name": "client", "size": 4096, "used": clients, "free": 0, "memtotal": clients * 4096},
        {"name": "server", "size": 2048, "used": servers, "free": 0, "memtotal": servers * 2048},
        {"name": "pool", "size": 1024, "used": len(ctx.pools.pools), "free": 0,
         "memtotal": len(ctx.pools.pools) * 1024},
        {"name": "process_maxrss", "size": 1, "used": rss_kib * 1024, "free": 0, "memtotal": rss_kib * 1024},
    ]


FDS_COLS: tuple[Col, ...] = (
    ("fd", INT4), ("task", TEXT), ("user", TEXT), ("database", TEXT), ("addr", TEXT), ("port", INT4),
    ("cancel", INT8), ("link", INT4), ("client_encoding", TEXT), ("std_strings", TEXT), ("datestyle", TEXT),
    ("timezone", TEXT), ("password", TEXT), ("scram_client_key", BYTEA), ("scram_server_key", BYTEA),
)  # fmt: skip


def _fd(transport: Any) -> int | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(sock.fileno()) if sock is not None else None
    except (OSError, ValueError):
        return None


def fds_rows(ctx: Any, listeners: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for srv in listeners:
        for s in getattr(srv, "sockets", ()) or ():
            addr, port = _split(s.getsockname())
            out.append({"fd": s.fileno(), "task": "pooler", "addr": addr, "port": port})
    server_fd: dict[int, int | None] = {}
    for pool in _all_pools(ctx):
        for conn in list(pool.active) + list(pool.idle):
            fd = _fd(conn.transport)
            server_fd[id(conn)] = fd
            owner = conn.owner
            out.append({
                "fd": fd, "task": "server", "user": pool.key.user, "database": pool.key.database,
                "addr": conn.host, "port": conn.port, "cancel": conn.secret_key,
                "link": _fd(owner.io.transport) if owner is not None and hasattr(owner, "io") else None,
                "client_encoding": conn.params.get("client_encoding"),
                "std_strings": conn.params.get("standard_conforming_strings"),
                "datestyle": conn.params.get("DateStyle"), "timezone": conn.params.get("TimeZone"),
            })  # fmt: skip
    for c in list(ctx.clients):
        t = c.io.transport
        addr, port = _split(t.get_extra_info("peername") if t is not None else None)
        out.append({
            "fd": _fd(t), "task": "client", "user": c.user, "database": c.database, "addr": addr,
            "port": port, "cancel": c.key, "link": server_fd.get(id(c.backend)) if c.backend is not None else None,
            "client_encoding": c.settings.get("client_encoding"), "datestyle": c.settings.get("datestyle"),
            "timezone": c.settings.get("timezone"),
        })  # fmt: skip
    return out


STATE_COLS: tuple[Col, ...] = (("key", TEXT), ("value", TEXT))


def state_rows(ctx: Any, suspended: bool) -> list[dict[str, Any]]:
    paused = "*" in ctx.paused and not suspended
    return [
        {"key": "active", "value": "no" if (paused or suspended) else "yes"},
        {"key": "paused", "value": "yes" if paused else "no"},
        {"key": "suspended", "value": "yes" if suspended else "no"},
    ]


def version_string() -> str:
    return f"HeliosProxy {__version__} (PgBouncer-compatible console, pid {os.getpid()})"
