"""Each result kind of pre_query, route and authenticate, and the chain order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from heliosproxy.plugins.hooks import (
    AuthDefer,
    AuthDenied,
    AuthSuccess,
    Block,
    Cached,
    Continue,
    HookContext,
    HookType,
    Rewrite,
    RouteBlock,
    RouteBranch,
    RouteDefault,
    RouteNode,
    RoutePrimary,
    RouteStandby,
)
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.wasm import wat2wasm
from tests.unit.plugins.helpers import install, query, respond_wat

Make = Callable[..., PluginManager]


def one(pdir: Path, manager: Make, hook: str, answer: object) -> PluginManager:
    install(pdir, "p", wat2wasm(respond_wat({hook: answer})), hooks=[hook])
    m = manager()
    assert [s["name"] for s in m.stats()] == ["p"]
    return m


def test_no_plugins_is_continue(manager: Make) -> None:
    m = manager()
    assert not (m.has_pre_query or m.has_route or m.has_auth or m.has_post_query)
    assert m.pre_query(query()) == Continue()
    assert m.route(query()) == RouteDefault()


def test_pre_query_zero_is_continue(pdir: Path, manager: Make) -> None:
    m = one(pdir, manager, "pre_query", None)
    assert m.has_pre_query
    assert m.pre_query(query()) == Continue()
    assert m.stats()[0]["calls"]["pre_query"]["calls"] == 1


def test_pre_query_continue(pdir: Path, manager: Make) -> None:
    m = one(pdir, manager, "pre_query", {"action": "continue"})
    assert m.pre_query(query()) == Continue()


def test_pre_query_rewrite(pdir: Path, manager: Make) -> None:
    m = one(pdir, manager, "pre_query", {"action": "rewrite", "query": "SELECT 2 LIMIT 10"})
    assert m.pre_query(query()) == Rewrite("SELECT 2 LIMIT 10")


def test_pre_query_block(pdir: Path, manager: Make) -> None:
    m = one(pdir, manager, "pre_query", {"action": "block", "reason": "DROP is not allowed"})
    assert m.pre_query(query("DROP TABLE t")) == Block("DROP is not allowed")


def test_pre_query_cached(pdir: Path, manager: Make) -> None:
    answer = {"action": "cached", "columns": ["id", "name"], "rows": [[1, "ann"], [2, None]]}
    m = one(pdir, manager, "pre_query", answer)
    assert m.pre_query(query()) == Cached(("id", "name"), (("1", "ann"), ("2", None)))


def test_route_kinds(pdir: Path, manager: Make) -> None:
    cases = [
        (None, RouteDefault()),
        ({"action": "default"}, RouteDefault()),
        ({"action": "primary"}, RoutePrimary()),
        ({"action": "standby"}, RouteStandby()),
        ({"action": "node", "name": "standby2"}, RouteNode("standby2")),
        ({"action": "branch", "name": "feature"}, RouteBranch("feature")),
        ({"action": "block", "reason": "no"}, RouteBlock("no")),
    ]
    for i, (answer, expected) in enumerate(cases):
        install(pdir, f"r{i}", wat2wasm(respond_wat({"route": answer})), hooks=["route"])
        m = manager()
        assert m.has_route and not m.has_pre_query
        assert m.route(query()) == expected, answer
        (pdir / f"r{i}.wasm").unlink()


def test_auth_kinds(pdir: Path, manager: Make) -> None:
    hc = HookContext(request_id="r", client_id="c")
    cases = [
        (None, AuthDefer()),
        ({"action": "defer"}, AuthDefer()),
        ({"action": "success", "identity": {"user_id": "7"}}, AuthSuccess({"user_id": "7"})),
        ({"action": "denied", "reason": "bad key"}, AuthDenied("bad key")),
    ]
    for i, (answer, expected) in enumerate(cases):
        install(pdir, f"a{i}", wat2wasm(respond_wat({"authenticate": answer})), hooks=["authenticate"])
        m = manager()
        assert m.has_auth
        assert m.authenticate(hc, "app", "app", "127.0.0.1", "secret") == expected, answer
        (pdir / f"a{i}.wasm").unlink()


def test_wrong_result_shape_is_an_error(pdir: Path, manager: Make) -> None:
    m = one(pdir, manager, "pre_query", {"action": "rewrite"})  # no "query"
    assert m.pre_query(query()) == Continue()
    st = m.stats()[0]["calls"]["pre_query"]
    assert (st["calls"], st["errors"]) == (1, 1)
    assert "rewrite" in (m.stats()[0]["last_error"] or "")


def test_order_priority_then_name(pdir: Path, manager: Make) -> None:
    # b (priority 5) runs before a (10) and c (10); a before c by name. The first
    # non-Continue answer wins, so the verdict tells who ran first.
    install(
        pdir,
        "c",
        wat2wasm(respond_wat({"pre_query": {"action": "block", "reason": "c"}})),
        priority=10,
    )
    install(
        pdir,
        "a",
        wat2wasm(respond_wat({"pre_query": {"action": "block", "reason": "a"}})),
        priority=10,
    )
    install(pdir, "b", wat2wasm(respond_wat({"pre_query": {"action": "continue"}})), priority=5)
    m = manager()
    assert [p.name for p in m.chain(HookType.PRE_QUERY)] == ["b", "a", "c"]
    assert m.pre_query(query()) == Block("a")
    calls = {s["name"]: s["calls"].get("pre_query", {}).get("calls", 0) for s in m.stats()}
    assert calls == {"a": 1, "b": 1, "c": 0}
    install(pdir, "a", wat2wasm(respond_wat({"pre_query": None})), priority=10)
    m2 = manager()
    assert m2.pre_query(query()) == Block("c")
