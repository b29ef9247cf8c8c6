"""Planned switchover (issue 16 §3): pause, drain, catch the standby up, promote it, fence the old primary, resume."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from heliosproxy.admin import AdminError
from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.health import checker_credentials, parse_lsn
from heliosproxy.backends.registry import Node, NodeState
from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import PoolMode
from heliosproxy.errors import BackendAuthError

log = logging.getLogger("heliosproxy.switchover")

PAUSE_KEY = "*"  # ctx.paused entry: every database (the console's PAUSE machinery holds new statements)
_CATCH_UP = 30.0  # at most this long for the target to replay the old primary's last WAL position
COLUMNS = ("old_primary", "new_primary", "pause_ms", "replayed")


@dataclass(slots=True)
class SwitchoverStats:
    """What metrics and SHOW read: how many switchovers ran and the last pause."""

    total: int = 0
    failed: int = 0
    last_pause: float | None = None  # seconds
    running: bool = False


def stats_of(server: Any) -> SwitchoverStats:
    st: SwitchoverStats | None = getattr(server.ctx, "switchover", None)
    if st is None:
        st = SwitchoverStats()
        server.ctx.switchover = st
    return st


async def run(server: Any, target_name: str | None) -> dict[str, Any]:
    """Run one switchover; the result row (COLUMNS). AdminError when refused or failed."""
    ctx = server.ctx
    cfg = server.config
    reg = ctx.registry
    st = stats_of(server)
    if getattr(server, "link", None) is not None:
        raise AdminError("SWITCHOVER needs workers: 1 (each worker process routes on its own)",
                         status=409, sqlstate="0A000")
    if st.running:
        raise AdminError("a switchover is already running", status=409, sqlstate="55000")
    old = reg.primary_node()
    if old is None:
        raise AdminError("no primary is available to switch over from", status=409, sqlstate="55000")
    target = _pick_target(server, target_name, old)
    if PAUSE_KEY in ctx.paused:
        raise AdminError("the proxy is paused (RESUME first)", status=409, sqlstate="55000")
    st.running = True
    started = time.monotonic()
    replayed_before = getattr(ctx, "replays_ok", 0)
    log.warning("SWITCHOVER: %s -> %s: pausing new transactions", old.name, target.name)
    ctx.paused.add(PAUSE_KEY)
    fenced = promoting = False
    try:
        drained = await _drain(ctx, old.name, cfg.failover.switchover_drain)
        if not drained:
            log.warning("SWITCHOVER: transactions still running on %s after failover.switchover_drain "
                        "(%gs); their server connections are closed", old.name, cfg.failover.switchover_drain)
        # Fence first: from here on nothing the proxy sends may reach the old primary.
        t_drained = time.monotonic()
        _fence(server, old)
        fenced = True
        lsn = await _current_lsn(server, old)
        await _wait_replayed(server, target, lsn)
        t_caught_up = time.monotonic()
        promoting = True  # from here a failure leaves the old primary fenced: the operator decides
        await _promote(server, target)
        # Transactions cut at the end of the drain are replayed on the new primary (failover.replay):
        # the pause lasts until they are (bounded by failover.write_timeout).
        deadline = time.monotonic() + cfg.failover.write_timeout
        while any(getattr(c, "replay", None) is not None and c.replay.held for c in list(ctx.clients)):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        log.info("SWITCHOVER: drained in %.0f ms, %s caught up in %.0f ms, promoted in %.0f ms",
                 (t_drained - started) * 1000, target.name, (t_caught_up - t_drained) * 1000,
                 (time.monotonic() - t_caught_up) * 1000)
        if reg.primary != target.name:
            raise AdminError(f"{target.name} was promoted but is not the write target", status=500,
                             sqlstate="XX000")
    except AdminError:
        st.failed += 1
        if fenced and not promoting:
            # Nothing was promoted: the old primary is the primary again.
            old.disabled = False
            old.changed_at = time.monotonic()
            reg.changed()
            log.warning("SWITCHOVER aborted before the promotion: %s takes writes again", old.name)
        raise
    finally:
        ctx.paused.discard(PAUSE_KEY)
        st.running = False
    pause = time.monotonic() - started
    st.total += 1
    st.last_pause = pause
    replayed = getattr(ctx, "replays_ok", 0) - replayed_before
    log.warning("SWITCHOVER: writes now go to %s; %s is fenced (disabled) until an operator re-adds it; "
                "clients paused %.0f ms", target.name, old.name, pause * 1000)
    return {"old_primary": old.name, "new_primary": target.name, "pause_ms": round(pause * 1000),
            "replayed": replayed}


def _pick_target(server: Any, name: str | None, old: Node) -> Node:
    reg = server.ctx.registry
    if name is None:
        best: Node | None = server.failover.best_standby()
        if best is None:
            raise AdminError("no usable standby to switch over to", status=409, sqlstate="55000")
        return best
    node: Node | None = reg.nodes.get(name)
    if node is None:
        known = ", ".join(reg.nodes)
        raise AdminError(f'node "{name}" does not exist (nodes: {known})', status=404, sqlstate="42704")
    if node is old:
        raise AdminError(f"{name} is already the primary", status=409, sqlstate="55000")
    if node.in_recovery is not True or node.disabled or node.state not in (NodeState.UP, NodeState.LAGGING):
        raise AdminError(f"{name} is not a usable standby (state {node.state.value}"
                         f"{', disabled' if node.disabled else ''})", status=409, sqlstate="55000")
    return node


def _busy_on(client: Any, node: str) -> bool:
    """Does this client still run something on `node` that a switchover must wait for?"""
    conn = client.backend
    if client.admin or conn is None or conn.node != node:
        return False
    if client.mode is PoolMode.SESSION or client.pinned:
        return bool(client.pending or client.expect or client.tx_status != 73)  # 73 = 'I'
    return True  # transaction pooling: bound only while a transaction or statement runs


async def _drain(ctx: Any, node: str, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while any(_busy_on(c, node) for c in list(ctx.clients)):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _fence(server: Any, old: Node) -> None:
    """Take the old primary out: disabled (no reads, no writes, not a primary claimant) and every
    server connection to it closed. It stays so until an operator runs ENABLE."""
    ctx = server.ctx
    old.disabled = True
    old.changed_at = time.monotonic()
    ctx.registry.changed()
    ctx.pools.drain_node(old.name)
    for c in list(ctx.clients):
        conn = c.backend
        if conn is not None and conn.node == old.name and not conn.closed:
            conn.abort()  # the client's session decides (replay, move or 08006)


async def _connect(server: Any, node: Node) -> BackendConnection:
    cfg = server.config
    user, password = checker_credentials(cfg)
    return await connect(node.name, node.cfg.host, node.cfg.port, user, password, cfg.health.database,
                         timeout=cfg.health.timeout + 4, params={"application_name": "heliosproxy-switchover"},
                         tls=node_tls(cfg, node.cfg))


def _failed(what: str, exc: BaseException) -> AdminError:
    msg = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    log.error("SWITCHOVER: %s: %s", what, msg)
    return AdminError(f"switchover failed: {what}: {msg}", status=500, sqlstate="55000")


_ERRORS = (OSError, TimeoutError, ConnectionError, BackendAuthError, QueryError)


async def _current_lsn(server: Any, node: Node) -> int:
    try:
        conn = await _connect(server, node)
        try:
            rows = await asyncio.wait_for(conn.query("SELECT pg_current_wal_insert_lsn()"), 5)
        finally:
            conn.close()
    except _ERRORS as exc:
        raise _failed(f"reading the WAL position of {node.name}", exc) from None
    lsn = parse_lsn(rows[0][0])
    if lsn is None:
        raise _failed(f"reading the WAL position of {node.name}", RuntimeError("no position"))
    return lsn


async def _wait_replayed(server: Any, node: Node, lsn: int) -> None:
    try:
        conn = await _connect(server, node)
        try:
            deadline = time.monotonic() + _CATCH_UP
            while True:
                rows = await asyncio.wait_for(conn.query("SELECT pg_last_wal_replay_lsn()"), 5)
                done = parse_lsn(rows[0][0])
                if done is not None and done >= lsn:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replayed {rows[0][0]}, not the old primary's position, "
                                       f"within {_CATCH_UP:g}s")
                await asyncio.sleep(0.005)
        finally:
            conn.close()
    except _ERRORS as exc:
        raise _failed(f"waiting for {node.name} to catch up", exc) from None


async def _promote(server: Any, node: Node) -> None:
    try:
        conn = await _connect(server, node)
        try:
            # Signal the promotion and watch for its end here (pg_promote(true) polls only every 100 ms).
            rows = await asyncio.wait_for(conn.query("SELECT pg_promote(false)"), 5)
            if not rows or rows[0][0] != "t":
                raise QueryError("pg_promote() returned false", "55000")
            deadline = time.monotonic() + 30
            while (await asyncio.wait_for(conn.query("SELECT pg_is_in_recovery()"), 5))[0][0] != "f":
                if time.monotonic() > deadline:
                    raise QueryError("still in recovery 30s after pg_promote()", "55000")
                await asyncio.sleep(0.005)
        finally:
            conn.close()
    except _ERRORS as exc:
        raise _failed(f"promoting {node.name}", exc) from None
    server.failover.promotions_ok += 1
    # Its checker (never a second query on its connection) sees it out of recovery; failover makes it
    # the write target.
    checker = server.health.checkers.get(node.name)
    deadline = time.monotonic() + 5
    while server.ctx.registry.primary != node.name and time.monotonic() < deadline:
        if checker is not None:
            checker.request_check()
        await asyncio.sleep(0.01)
