"""The one routing decision (routing.decide.decide), table-driven over real config, registry and planner, no sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from heliosproxy.backends.registry import NodeState, Registry
from heliosproxy.config.schema import (
    BranchConfig,
    Config,
    Consistency,
    DatabaseRoute,
    Fallback,
    NodeConfig,
    PoolMode,
    Role,
    RoutingConfig,
)
from heliosproxy.errors import HeliosError
from heliosproxy.plugins import hooks
from heliosproxy.pool.manager import PoolManager
from heliosproxy.protocol import codes
from heliosproxy.routing.catalog import Catalog, _Functions
from heliosproxy.routing.consistency import POSITION_UNKNOWN, STANDBY_BEHIND, TIME_FLOOR, ReadPlanner, SessionReads
from heliosproxy.routing.decide import decide
from heliosproxy.routing.router import Router, Target
from heliosproxy.sql.classify import classify_uncached
from heliosproxy.sql.hints import parse_hints

STANDBYS = ("s1", "s2")


@dataclass
class Sess:
    """A RouteSession without a socket."""

    db_route: DatabaseRoute = DatabaseRoute.AUTO
    route_pref: str | None = None
    node_pref: str | None = None
    branch_pref: str | None = None
    mode: PoolMode = PoolMode.TRANSACTION
    tx_status: int = codes.TX_IDLE
    reads: SessionReads = field(default_factory=SessionReads)
    last_write_at: float = 0.0
    database: str = "db"
    user: str = "u"


def _world(
    *, split: bool = True, fallback: Fallback = Fallback.PRIMARY, consistency: Consistency = Consistency.SESSION,
    ryw_ms: float = 0.0,
) -> tuple[ReadPlanner, Registry]:
    config = Config(
        nodes=(
            NodeConfig("p", "127.0.0.1", 1, Role.PRIMARY),
            NodeConfig("s1", "127.0.0.1", 2, Role.STANDBY),
            NodeConfig("s2", "127.0.0.1", 3, Role.STANDBY),
        ),
        routing=RoutingConfig(read_write_split=split, standby_fallback=fallback, consistency=consistency,
                              read_your_writes_ms=ryw_ms),
        branches=(BranchConfig("b1", "p", "app_branch"), BranchConfig("bs", "s2", "app_ro")),
    )
    reg = Registry(config)
    for n in reg.nodes.values():
        n.state = NodeState.UP
    catalog = Catalog(config, reg, PoolManager(config))
    # pg_proc of database "db": add_order(int) VOLATILE, price(int) STABLE
    catalog._functions["db"] = _Functions(
        [["public", "add_order", "1", "1", "f", "v"], ["public", "price", "1", "1", "f", "s"]],
        time.monotonic() + 600,
    )
    return ReadPlanner(config, Router(config, reg), catalog), reg


def _no_standby(reg: Registry) -> None:
    for name in STANDBYS:
        reg.nodes[name].state = NodeState.DOWN
    reg.changed()


def _no_primary(reg: Registry) -> None:
    reg.nodes["p"].state = NodeState.DOWN
    reg.primary = None
    reg.changed()


def _wrote_unsampled(planner: ReadPlanner, s: Sess) -> None:
    planner.acknowledged(s.reads, classify_uncached("INSERT INTO t VALUES (1)"), True, "db")


def _wrote_standby_behind(planner: ReadPlanner, s: Sess) -> None:
    _wrote_unsampled(planner, s)
    p = planner.router.registry.nodes["p"]
    p.wal_lsn, p.wal_lsn_sent = 1000, time.monotonic()
    for name in STANDBYS:
        planner.router.registry.nodes[name].wal_lsn = 999


def _wrote_standby_caught_up(planner: ReadPlanner, s: Sess) -> None:
    _wrote_standby_behind(planner, s)
    planner.router.registry.nodes["s2"].wal_lsn = 1000


def _lagging_s1(planner: ReadPlanner, s: Sess) -> None:
    reg = planner.router.registry
    reg.nodes["s1"].lag_ms = 5000.0
    reg.nodes["s2"].lag_ms = 10.0


Setup = Callable[[ReadPlanner, Sess], None]
P = "p"  # the primary as a concrete Target (no primary-wait)
PRIMARY = None  # decide()'s "the primary, resolved when sent"
S = "standby"  # any standby (s1 or s2)
A = "auto-standby"  # a standby chosen by classification alone (a 25006 refusal may rerun on the primary)

# (id, sql, session fields, plugin route, world options, setup, expected)
# expected: PRIMARY (None), P, S, A, a node name, ("branch", node, db), or an SQLSTATE string "!xxxxx"
CASES: list[tuple[str, str, dict[str, object], hooks.RouteResult | None, dict[str, object], Setup | None, object]] = [
    # classification
    ("read", "SELECT 1", {}, None, {}, None, A),
    ("write", "INSERT INTO t VALUES (1)", {}, None, {}, None, PRIMARY),
    ("select_for_update", "SELECT * FROM t FOR UPDATE", {}, None, {}, None, PRIMARY),
    ("cte_write", "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", {}, None, {}, None, PRIMARY),
    ("nextval", "SELECT nextval('q')", {}, None, {}, None, PRIMARY),
    ("volatile_user_function", "SELECT add_order(7)", {}, None, {}, None, PRIMARY),
    ("stable_user_function", "SELECT price(7)", {}, None, {}, None, A),
    ("split_off_read", "SELECT 1", {}, None, {"split": False}, None, PRIMARY),
    ("session_pooling_read", "SELECT 1", {"mode": PoolMode.SESSION}, None, {}, None, PRIMARY),
    # transaction state
    ("begin", "BEGIN", {}, None, {}, None, PRIMARY),
    ("begin_read_only", "BEGIN READ ONLY", {}, None, {}, None, A),
    ("begin_read_only_split_off", "BEGIN READ ONLY", {}, None, {"split": False}, None, PRIMARY),
    ("commit", "COMMIT", {}, None, {}, None, PRIMARY),
    ("read_in_transaction", "SELECT 1", {"tx_status": codes.TX_IN_BLOCK}, None, {}, None, S),
    ("write_in_transaction", "UPDATE t SET a = 1", {"tx_status": codes.TX_IN_BLOCK}, None, {}, None, PRIMARY),
    # hints
    ("hint_primary_read", "/*helios:route=primary*/ SELECT 1", {}, None, {}, None, PRIMARY),
    ("hint_standby_write", "/*helios:route=standby*/ INSERT INTO t VALUES (1)", {}, None, {}, None, S),
    ("hint_auto_read", "/*helios:route=auto*/ SELECT 1", {}, None, {}, None, A),
    ("hint_auto_write", "/*helios:route=auto*/ DELETE FROM t", {}, None, {}, None, PRIMARY),
    ("hint_node", "/*helios:node=s2*/ INSERT INTO t VALUES (1)", {}, None, {}, None, "s2"),
    ("hint_branch", "/*helios:branch=b1*/ SELECT 1", {}, None, {}, None, ("branch", "p", "app_branch")),
    ("hint_branch_beats_node", "/*helios:branch=bs,node=s1*/ SELECT 1", {}, None, {}, None,
     ("branch", "s2", "app_ro")),
    ("hint_node_beats_route", "/*helios:node=s1,route=primary*/ SELECT 1", {}, None, {}, None, "s1"),
    ("hint_unknown_node", "/*helios:node=nosuch*/ SELECT 1", {}, None, {}, None, "!42704"),
    ("hint_unknown_branch", "/*helios:branch=nosuch*/ SELECT 1", {}, None, {}, None, "!42704"),
    ("hint_lag_skips_lagging", "/*helios:route=standby,lag=500ms*/ SELECT 1", {}, None, {}, _lagging_s1, "s2"),
    ("hint_lag_on_auto_read", "/*helios:lag=500ms*/ SELECT 1", {}, None, {}, _lagging_s1, "s2"),
    ("hint_beats_session_pref", "/*helios:route=standby*/ SELECT 1", {"route_pref": "primary"}, None, {}, None,
     S),
    # session SET helios.*
    ("set_route_primary", "SELECT 1", {"route_pref": "primary"}, None, {}, None, PRIMARY),
    ("set_route_standby_write", "INSERT INTO t VALUES (1)", {"route_pref": "standby"}, None, {}, None, S),
    ("set_route_standby_begin", "BEGIN", {"route_pref": "standby"}, None, {}, None, PRIMARY),
    ("set_node", "SELECT 1", {"node_pref": "s1"}, None, {}, None, "s1"),
    ("set_branch", "INSERT INTO t VALUES (1)", {"branch_pref": "bs"}, None, {}, None, ("branch", "s2", "app_ro")),
    ("set_branch_beats_node", "SELECT 1", {"branch_pref": "b1", "node_pref": "s1"}, None, {}, None,
     ("branch", "p", "app_branch")),
    # plugin route hook results
    ("plugin_default", "SELECT 1", {}, hooks.ROUTE_DEFAULT, {}, None, A),
    ("plugin_primary", "SELECT 1", {}, hooks.ROUTE_PRIMARY, {}, None, PRIMARY),
    ("plugin_standby", "SELECT 1", {}, hooks.ROUTE_STANDBY, {}, None, S),
    ("plugin_node", "SELECT 1", {}, hooks.RouteNode("s2"), {}, None, "s2"),
    ("plugin_branch", "SELECT 1", {}, hooks.RouteBranch("b1"), {}, None, ("branch", "p", "app_branch")),
    ("plugin_block", "SELECT 1", {}, hooks.RouteBlock("nope"), {}, None, "!42000"),
    ("plugin_beats_hint", "/*helios:route=standby*/ SELECT 1", {}, hooks.ROUTE_PRIMARY, {}, None, PRIMARY),
    ("plugin_unknown_node", "SELECT 1", {}, hooks.RouteNode("nosuch"), {}, None, "!42704"),
    # database aliases (databases: {alias: {route: ...}})
    ("alias_standby_write", "INSERT INTO t VALUES (1)", {"db_route": DatabaseRoute.STANDBY}, None, {}, None, S),
    ("alias_standby_beats_hint", "/*helios:route=primary*/ SELECT 1", {"db_route": DatabaseRoute.STANDBY}, None,
     {}, None, S),
    ("alias_primary_read", "SELECT 1", {"db_route": DatabaseRoute.PRIMARY}, None, {}, None, PRIMARY),
    ("alias_standby_beats_plugin", "SELECT 1", {"db_route": DatabaseRoute.STANDBY}, hooks.ROUTE_PRIMARY, {}, None,
     S),
    # standby availability
    ("no_standby_read", "SELECT 1", {}, None, {}, lambda pl, s: _no_standby(pl.router.registry), P),
    ("no_standby_hint_standby", "/*helios:route=standby*/ SELECT 1", {}, None, {},
     lambda pl, s: _no_standby(pl.router.registry), P),
    ("no_standby_fallback_error", "SELECT 1", {}, None, {"fallback": Fallback.ERROR},
     lambda pl, s: _no_standby(pl.router.registry), "!08006"),
    ("no_standby_fallback_error_write", "INSERT INTO t VALUES (1)", {}, None, {"fallback": Fallback.ERROR},
     lambda pl, s: _no_standby(pl.router.registry), PRIMARY),
    ("no_primary_read", "SELECT 1", {}, None, {}, lambda pl, s: _no_primary(pl.router.registry), A),
    ("no_primary_write", "INSERT INTO t VALUES (1)", {}, None, {}, lambda pl, s: _no_primary(pl.router.registry),
     PRIMARY),
    # consistency (routing.consistency, routing.read_your_writes_ms)
    ("session_wrote_position_unknown", "SELECT 1", {}, None, {}, _wrote_unsampled, P),
    ("session_wrote_standby_behind", "SELECT 1", {}, None, {}, _wrote_standby_behind, P),
    ("session_wrote_standby_caught_up", "SELECT 1", {}, None, {}, _wrote_standby_caught_up, "s2"),
    ("eventual_wrote", "SELECT 1", {}, None, {"consistency": Consistency.EVENTUAL}, _wrote_unsampled, A),
    ("ryw_floor", "SELECT 1", {"last_write_at": time.monotonic() + 3600}, None, {"ryw_ms": 1000.0}, None, P),
    ("session_wrote_hint_standby", "/*helios:route=standby*/ SELECT 1", {}, None, {}, _wrote_unsampled, S),
    ("session_wrote_in_transaction", "SELECT 1", {"tx_status": codes.TX_IN_BLOCK}, None, {}, _wrote_unsampled, S),
]


@pytest.mark.parametrize(
    ("sql", "sess", "plugin", "world", "setup", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_decide(
    sql: str, sess: dict[str, object], plugin: hooks.RouteResult | None, world: dict[str, object],
    setup: Setup | None, expected: object,
) -> None:
    planner, _ = _world(**world)  # type: ignore[arg-type]
    s = Sess(**sess)  # type: ignore[arg-type]
    if setup is not None:
        setup(planner, s)
    info = classify_uncached(sql)
    hints = parse_hints(sql)
    if isinstance(expected, str) and expected.startswith("!"):
        with pytest.raises(HeliosError) as err:
            decide(planner, s, info, hints, plugin, info.read_only)
        assert err.value.sqlstate == expected[1:]
        return
    t = decide(planner, s, info, hints, plugin, info.read_only)
    if expected is PRIMARY:
        assert t is None
        return
    assert t is not None
    if expected == P:
        assert t == Target("p", None, "primary")
    elif expected in (S, A):
        assert t.node in STANDBYS and t.route == "standby" and t.database is None
        assert t.auto is (expected == A)
    elif isinstance(expected, tuple):
        assert (t.route, t.node, t.database) == expected
    else:
        assert t.node == expected and t.route in ("node", "standby")


def test_reads_moved_to_the_primary_are_counted_by_reason() -> None:
    planner, _ = _world()
    s = Sess()
    read = classify_uncached("SELECT 1")
    _wrote_unsampled(planner, s)
    assert decide(planner, s, read, None, None, True) == Target("p", None, "primary")
    _wrote_standby_behind(planner, s)
    assert decide(planner, s, read, None, None, True) == Target("p", None, "primary")
    assert planner.moved == {POSITION_UNKNOWN: 1, STANDBY_BEHIND: 1}
    s2 = Sess(last_write_at=time.monotonic())
    planner2, _ = _world(ryw_ms=60_000.0)
    decide(planner2, s2, read, None, None, True)
    assert planner2.moved == {TIME_FLOOR: 1}


def test_batch_read_only_flag_overrides_the_last_statement() -> None:
    """An extended batch routes by `read_only` for all of it (a write anywhere in it: the primary)."""
    planner, _ = _world()
    info = classify_uncached("SELECT 1")
    assert decide(planner, Sess(), info, None, None, False) is None
    t = decide(planner, Sess(), info, None, None, True)
    assert t is not None and t.node in STANDBYS
