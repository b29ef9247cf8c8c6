"""The one routing decision: alias, plugin route, hints, session wishes, transactions, classification, consistency."""

from __future__ import annotations

from typing import Protocol

from heliosproxy.config.schema import DatabaseRoute, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.plugins import hooks
from heliosproxy.protocol import codes
from heliosproxy.routing.consistency import ReadPlanner, SessionReads
from heliosproxy.routing.router import Target
from heliosproxy.sql.classify import StatementInfo, TxControl
from heliosproxy.sql.hints import Hints


class RouteSession(Protocol):
    """What the decision reads of a client session (session/core.py's ClientSession has these)."""

    db_route: DatabaseRoute  # databases: ALIAS route
    route_pref: str | None  # SET helios.route (None = auto)
    node_pref: str | None  # SET helios.node
    branch_pref: str | None  # SET helios.branch / database DB@BRANCH
    mode: PoolMode
    tx_status: int  # the last ReadyForQuery status (codes.TX_IDLE outside a transaction)
    reads: SessionReads
    last_write_at: float
    database: str
    user: str


def decide(
    planner: ReadPlanner,
    s: RouteSession,
    info: StatementInfo,
    hints: Hints | None,
    plugin_route: hooks.RouteResult | None,
    read_only: bool,
) -> Target | None:
    """Where a statement (or an extended batch, `read_only` for all of it) runs. None = the primary,
    resolved when it is sent (a write waits up to failover.write_timeout for one to be known).

    Order, first match wins: a database alias's route; the plugin route hook's result; the
    statement's hints (branch, node, route); the session's SET helios.branch / node / route;
    transaction control (BEGIN READ ONLY may start on a standby, other BEGIN/COMMIT/... on the
    primary); then a read in transaction pooling with routing.read_write_split goes to a standby
    (inside a transaction: where it began; outside: as routing.consistency allows); all else to
    the primary. Raises HeliosError for an unknown node/branch (42704), a plugin block (42000) and
    no standby with standby_fallback: error (08006)."""
    router = planner.router
    if s.db_route is not DatabaseRoute.AUTO:  # databases: ALIAS with route primary | standby
        return router.read_target() if s.db_route is DatabaseRoute.STANDBY else None
    if plugin_route is not None and not isinstance(plugin_route, hooks.RouteDefault):
        if isinstance(plugin_route, hooks.RoutePrimary):
            return None
        if isinstance(plugin_route, hooks.RouteStandby):
            return router.read_target()
        if isinstance(plugin_route, hooks.RouteNode):
            return router.node(plugin_route.name)
        if isinstance(plugin_route, hooks.RouteBranch):
            return router.branch(plugin_route.name)
        if isinstance(plugin_route, hooks.RouteBlock):
            raise HeliosError(plugin_route.reason, sqlstate="42000")
    if hints is not None and (hints.route or hints.node or hints.branch):
        if hints.branch:
            return router.branch(hints.branch)
        if hints.node:
            return router.node(hints.node)
        if hints.route == "primary":
            return None
        if hints.route == "standby":
            return router.read_target(hints.lag_ms)
    if s.branch_pref:
        return router.branch(s.branch_pref)
    if s.node_pref:
        return router.node(s.node_pref)
    route_pref = s.route_pref
    if route_pref == "primary":
        return None
    tx = info.tx
    if route_pref == "standby" and tx is None:
        return router.read_target()
    split = router.routing.read_write_split
    if tx is not None:
        if tx is TxControl.BEGIN_READ_ONLY and split:
            return planner.read_target(s.reads, s.last_write_at, info, s.database, s.user, None)
        return None
    if read_only and split and s.mode is PoolMode.TRANSACTION:
        lag = hints.lag_ms if hints is not None else None
        if s.tx_status != codes.TX_IDLE:
            return router.read_target(lag)  # runs where the transaction began
        return planner.read_target(s.reads, s.last_write_at, info, s.database, s.user, lag)
    return None
