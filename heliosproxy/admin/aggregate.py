"""With `workers: N>1`: every worker's rows of one admin SHOW merged into the rows of the whole process group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from heliosproxy.admin import pgbouncer as pgb

Rows = list[dict[str, Any]]
WorkerRows = Sequence[tuple[int, Rows]]  # (worker id, that worker's rows), the asking worker first

# One row per object, whichever worker holds it: rows of every worker, each with its `worker`.
LISTED = frozenset({"CLIENTS", "SERVERS", "SOCKETS", "ACTIVE_SOCKETS", "FDS"})


def _listed(per_worker: WorkerRows) -> Rows:
    return [{**r, "worker": w} for w, rows in per_worker for r in rows]


def _keyed(
    per_worker: WorkerRows,
    key: Sequence[str],
    summed: frozenset[str] = frozenset(),
    maxed: frozenset[str] = frozenset(),
) -> Rows:
    """Rows with the same key merged: `summed` columns add up, `maxed` take the largest, booleans OR
    (paused, disabled), lists unite, anything else is the first worker's (configuration)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _w, rows in per_worker:
        for r in rows:
            k = tuple(r.get(c) for c in key)
            m = merged.get(k)
            if m is None:
                merged[k] = {n: (list(v) if isinstance(v, list) else v) for n, v in r.items()}
                continue
            for n, v in r.items():
                old = m.get(n)
                if n in summed:
                    m[n] = (old or 0) + (v or 0)
                elif n in maxed:
                    m[n] = max(old or 0, v or 0)
                elif isinstance(v, bool) or isinstance(old, bool):
                    m[n] = bool(old) or bool(v)
                elif isinstance(v, list):
                    m[n] = sorted(set(old or []) | set(v), key=str)
                elif old is None:
                    m[n] = v
    return list(merged.values())


_POOL_SUMMED = frozenset(n for n, _ in pgb.POOL_COLS if n.startswith(("cl_", "sv_"))) | {
    "acquired_total", "timeouts", "connect_errors"}  # fmt: skip


def _pools(per_worker: WorkerRows) -> Rows:
    waits: dict[tuple[Any, Any], float] = {}
    for _w, rows in per_worker:
        for r in rows:
            k = (r["database"], r["user"])
            waits[k] = max(waits.get(k, 0.0), int(r.get("maxwait") or 0) + int(r.get("maxwait_us") or 0) / 1e6)
    out = _keyed(per_worker, ("database", "user"), _POOL_SUMMED, frozenset({"pool_size", "reserve_pool_size"}))
    for r in out:
        w = waits.get((r["database"], r["user"]), 0.0)
        r["maxwait"], r["maxwait_us"] = int(w), round((w - int(w)) * 1_000_000)
    return sorted(out, key=lambda r: (r["database"], r["user"]))


def _lists(per_worker: WorkerRows) -> Rows:
    """Counts add up, except databases and users (the same everywhere): the largest."""
    out = _keyed(per_worker, ("list",), frozenset({"items"}))
    for r in out:
        if r["list"] in ("databases", "users"):
            r["items"] = max((x["items"] for _w, rows in per_worker for x in rows if x["list"] == r["list"]), default=0)
    return out


def _node_stats(per_worker: WorkerRows) -> Rows:
    summed = frozenset({"total_query_count", "total_error_count", "total_received", "total_sent",
                        "total_query_time", "total_client_connections", "refused_client_connections",
                        "login_failures", "protocol_errors"})  # fmt: skip
    out = _keyed(per_worker, ("node", "route"), summed)
    for r in out:
        if r.get("avg_query_time") is not None:
            calls = r.get("total_query_count") or 0
            r["avg_query_time"] = (r.get("total_query_time") or 0) // calls if calls else 0
    return out


def _queries(per_worker: WorkerRows) -> Rows:
    out = _keyed(per_worker, ("fingerprint",), frozenset({"calls", "total_ms", "errors"}))
    for r in out:
        r["total_ms"] = round(float(r["total_ms"]), 3)
        r["mean_ms"] = round(r["total_ms"] / r["calls"], 3) if r["calls"] else 0.0
    return sorted(out, key=lambda r: r["total_ms"], reverse=True)[:100]


def _stats(per_worker: WorkerRows) -> Rows:
    return pgb.merge_stats(r for _w, rows in per_worker for r in rows)


MERGES: dict[str, Callable[[WorkerRows], Rows]] = {
    "CLIENTS": _listed,
    "SERVERS": _listed,
    "SOCKETS": _listed,
    "ACTIVE_SOCKETS": _listed,
    "FDS": _listed,
    "POOLS": _pools,
    "STATS": _stats,
    "STATS_TOTALS": _stats,
    "STATS_AVERAGES": _stats,
    "TOTALS": _stats,
    "DATABASES": lambda pw: _keyed(pw, ("name",), frozenset({"current_connections", "current_client_connections"})),
    "USERS": lambda pw: _keyed(pw, ("name",), frozenset({"current_connections", "current_client_connections"})),
    "LISTS": _lists,
    "MEM": lambda pw: _keyed(pw, ("name",), frozenset({"used", "free", "memtotal"})),
    "NODES": lambda pw: _keyed(pw, ("name",), frozenset({"active_connections"})),
    "NODE_STATS": _node_stats,
    "PLUGINS": lambda pw: _keyed(pw, ("name",), frozenset({"calls", "errors"})),
    "QUERIES": _queries,
}


def merge(item: str, per_worker: WorkerRows) -> Rows:
    """The rows of SHOW `item` for the whole process group."""
    return MERGES[item](per_worker)
