"""Result cache row of `make bench`: a cache hit against the same statement's round trip to the server."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

# (label, statement): a primary-key read (the server's work is tiny) and an aggregate (a few ms of work).
QUERIES = (
    ("point", "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = 4242"),
    ("aggregate", "SELECT bid, count(*), sum(abalance) FROM pgbench_accounts WHERE aid <= 20000 GROUP BY bid"),
)
SKIP = "/*helios:cache=skip*/ "


class Client(Protocol):
    def query_ok(self, sql: str = "SELECT 1") -> bool: ...
    def close(self) -> None: ...


def _timed(client: Client, sql: str) -> float:
    t0 = time.perf_counter()
    if not client.query_ok(sql):
        raise RuntimeError(f"query failed: {sql}")
    return (time.perf_counter() - t0) * 1e6


def measure(proxy_port: int, direct_port: int, connect: Callable[[int], Client], n: int = 2000) -> dict[str, Any]:
    """Median µs per statement, one client, interleaved: a hit through the proxy, the same statement
    through the proxy with /*helios:cache=skip*/ (the server round trip) and straight to the server."""
    out: dict[str, Any] = {"n": n}
    via = connect(proxy_port)
    direct = connect(direct_port)
    try:
        for label, sql in QUERIES:
            via.query_ok(sql)  # the miss that stores it
            hit: list[float] = []
            server: list[float] = []
            raw: list[float] = []
            rounds = n if label == "point" else max(50, n // 20)
            for _ in range(rounds):
                hit.append(_timed(via, sql))
                server.append(_timed(via, SKIP + sql))
                raw.append(_timed(direct, sql))
            h, s, d = statistics.median(hit), statistics.median(server), statistics.median(raw)
            out[label] = {"rounds": rounds, "hit_us": h, "proxy_server_us": s, "direct_us": d,
                          "server_over_hit": s / h if h else None}
    finally:
        via.close()
        direct.close()
    return out


def render(row: dict[str, Any]) -> list[str]:
    if "error" in row:
        return [f"result cache: failed: {row['error'][-300:]}"]
    lines = ["result cache, 1 client, median per statement (hit | server round trip through the proxy | direct):"]
    for label, _sql in QUERIES:
        r = row.get(label)
        if r is None:
            continue
        lines.append(f"  {label:<10}{r['hit_us']:9.1f} us | {r['proxy_server_us']:9.1f} us | {r['direct_us']:9.1f} us"
                     f"   server/hit x{r['server_over_hit']:.1f}  ({r['rounds']} rounds)")
    return lines
