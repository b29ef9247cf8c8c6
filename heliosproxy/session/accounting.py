"""What a finished statement counts: query statistics, the duration histogram, per-node counters, PgBouncer's
counters, analytics, and the post_query observers' outcome."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.plugins import hooks
from heliosproxy.session import pgcompat
from heliosproxy.session.context import ProxyContext, QueryStat
from heliosproxy.session.state import Inflight
from heliosproxy.sql.classify import StatementInfo

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

_perf_counter: Final = time.perf_counter


def finish(s: ClientSession, fl: Inflight, conn: BackendConnection) -> None:
    """A statement got its ReadyForQuery: count it everywhere it is counted, and tell post_query observers."""
    elapsed = _perf_counter() - fl.start
    ctx = s.ctx
    error = fl.error is not None
    if fl.info is not None:
        record(ctx, fl.info, elapsed, error)
    if ctx.analytics is not None:
        ctx.analytics.finished(s, fl.info, elapsed, fl.error, s.scanner.bytes_seen - fl.start_bytes)
    pgcompat.statement_done(s, fl.start, elapsed)
    route = fl.target.route if fl.target is not None else "primary"
    if route == "standby" and conn.node == ctx.registry.primary:
        route = "primary"  # it ran inside a transaction that began on the primary
    key = (conn.node, route, "error" if error else "ok")
    q = ctx.counters.queries
    q[key] = q.get(key, 0) + 1
    if fl.qctx is not None and ctx.plugins.has_post_query:
        outcome = hooks.PostQueryOutcome(
            success=not error,
            target_node=conn.node,
            elapsed_us=int(elapsed * 1_000_000),
            response_bytes=s.scanner.bytes_seen - fl.start_bytes,
            error=fl.error,
        )
        ctx.plugins.post_query(fl.qctx, outcome)


def record(ctx: ProxyContext, info: StatementInfo, elapsed: float, error: bool) -> None:
    """Per-statement statistics (SHOW QUERIES, /api/queries) and the duration histogram, bucketed now."""
    fp = info.fingerprint
    if not fp:
        return
    stats = ctx.query_stats
    st = stats.get(fp)
    if st is None:
        if len(stats) >= 5000:
            return
        st = stats[fp] = QueryStat(info.normalized[:500])
    st.calls += 1
    st.total_us += int(elapsed * 1_000_000)
    if error:
        st.errors += 1
    ctx.counters.durations.observe(elapsed)
