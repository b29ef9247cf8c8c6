"""Router decisions over a Registry built from a Config, table-driven, without sockets."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from heliosproxy.backends.registry import NodeState, Registry
from heliosproxy.config.schema import (
    BranchConfig,
    Config,
    Fallback,
    NodeConfig,
    Policy,
    Role,
    RoutingConfig,
)
from heliosproxy.errors import HeliosError, UndefinedObject
from heliosproxy.routing.router import Router, Target


def make(
    *,
    weights: tuple[int, int] = (1, 1),
    policy: Policy = Policy.ROUND_ROBIN,
    split: bool = True,
    fallback: Fallback = Fallback.PRIMARY,
    active: dict[str, int] | None = None,
) -> tuple[Router, Registry, Config]:
    config = Config(
        nodes=(
            NodeConfig("p", "127.0.0.1", 5432, Role.PRIMARY),
            NodeConfig("s1", "127.0.0.1", 5433, Role.STANDBY, weight=weights[0]),
            NodeConfig("s2", "127.0.0.1", 5434, Role.STANDBY, weight=weights[1]),
        ),
        routing=RoutingConfig(read_write_split=split, policy=policy, standby_fallback=fallback),
        branches=(BranchConfig("b1", "p", "app_branch"), BranchConfig("bs", "s2", "app_ro")),
    )
    registry = Registry(config)
    counts = active or {}
    return Router(config, registry, lambda n: counts.get(n, 0)), registry, config


# The whole decision (hints, session wishes, plugins, transactions, consistency) is routing.decide.decide:
# tests/unit/test_decide.py. These are the Router's primitives it is built on.


@pytest.mark.parametrize(("kind", "name"), [("node", "nosuch"), ("branch", "nosuch")])
def test_unknown_node_or_branch_is_42704_naming_it(kind: str, name: str) -> None:
    router, _, _ = make()
    with pytest.raises(UndefinedObject) as err:
        router.node(name) if kind == "node" else router.branch(name)
    assert err.value.sqlstate == "42704"
    assert name in err.value.message and kind in err.value.message


def _picks(router: Router, n: int) -> list[str]:
    out = []
    for _ in range(n):
        t = router.read_target()
        assert t is not None
        out.append(t.node)
    return out


def test_round_robin_alternates() -> None:
    router, _, _ = make()
    picks = _picks(router, 10)
    assert Counter(picks) == {"s1": 5, "s2": 5}
    assert all(a != b for a, b in itertools.pairwise(picks))


@pytest.mark.parametrize(("weights", "expected"), [((1, 1), (50, 50)), ((3, 1), (75, 25)), ((1, 4), (20, 80))])
def test_round_robin_honours_weights(weights: tuple[int, int], expected: tuple[int, int]) -> None:
    router, _, _ = make(weights=weights)
    c = Counter(_picks(router, 100))
    assert (c["s1"], c["s2"]) == expected


def test_random_policy_uses_only_standbys_by_weight() -> None:
    router, _, _ = make(policy=Policy.RANDOM, weights=(1, 9))
    c = Counter(_picks(router, 2000))
    assert set(c) == {"s1", "s2"}
    assert 100 <= c["s1"] <= 320, c  # ~10% of 2000


def test_least_connections_picks_the_least_busy_per_weight() -> None:
    active = {"s1": 5, "s2": 1}
    router, _, _ = make(policy=Policy.LEAST_CONNECTIONS, active=active)
    assert set(_picks(router, 5)) == {"s2"}
    active.update({"s1": 0, "s2": 3})
    assert set(_picks(router, 5)) == {"s1"}
    router2, _, _ = make(policy=Policy.LEAST_CONNECTIONS, weights=(4, 1), active={"s1": 3, "s2": 1})
    assert set(_picks(router2, 3)) == {"s1"}  # 3/4 < 1/1


@pytest.mark.parametrize("how", ["disabled", "down", "lagging"])
def test_unusable_standby_is_skipped(how: str) -> None:
    router, registry, _ = make()
    node = registry.nodes["s1"]
    if how == "disabled":
        node.disabled = True
    else:
        node.state = NodeState.DOWN if how == "down" else NodeState.LAGGING
    registry.changed()
    assert set(_picks(router, 6)) == {"s2"}
    node.disabled = False
    node.state = NodeState.UP
    registry.changed()
    assert set(_picks(router, 6)) == {"s1", "s2"}


def test_hint_lag_limit_skips_standbys_known_to_lag() -> None:
    router, registry, _ = make()
    registry.nodes["s1"].lag_ms = 2000.0
    registry.nodes["s2"].lag_ms = 10.0
    assert {router.read_target(500.0).node for _ in range(4)} == {"s2"}  # type: ignore[union-attr]
    registry.nodes["s2"].lag_ms = 900.0
    t = router.read_target(500.0)
    assert t == Target("p", None, "primary")  # no standby within the limit: fallback


def test_no_usable_standby_falls_back_to_the_primary() -> None:
    router, registry, _ = make()
    for name in ("s1", "s2"):
        registry.nodes[name].disabled = True
    registry.changed()
    assert router.read_target() == Target("p", None, "primary")
    assert router.read_target() == Target("p", None, "primary")


def test_no_usable_standby_with_fallback_error_raises() -> None:
    router, registry, _ = make(fallback=Fallback.ERROR)
    for name in ("s1", "s2"):
        registry.nodes[name].state = NodeState.DOWN
    registry.changed()
    with pytest.raises(HeliosError) as err:
        router.read_target()
    assert "standby" in err.value.message
    # writes are not affected
    assert router.primary() == Target("p", None, "primary")


def test_no_primary_means_none_for_writes() -> None:
    router, registry, _ = make()
    registry.nodes["p"].state = NodeState.DOWN
    registry.changed()
    assert router.primary() is None
    assert router.primary() is None


def test_a_promoted_standby_becomes_the_write_target_and_stops_taking_reads() -> None:
    router, registry, _ = make()
    registry.nodes["p"].state = NodeState.DOWN
    registry.set_primary("s1")
    registry.nodes["s1"].role = Role.PRIMARY
    registry.changed()
    assert router.primary() == Target("s1", None, "primary")
    assert set(_picks(router, 4)) == {"s2"}
    assert registry.failovers == 1


def test_reconfigured_weights_take_effect() -> None:
    router, registry, config = make(weights=(1, 1))
    assert Counter(_picks(router, 10)) == {"s1": 5, "s2": 5}
    new = Config(
        nodes=(config.nodes[0], NodeConfig("s1", "127.0.0.1", 5433, Role.STANDBY, weight=4), config.nodes[2]),
        routing=config.routing,
        branches=config.branches,
    )
    registry.configure(new)
    router.configure(new)
    c = Counter(_picks(router, 50))
    assert (c["s1"], c["s2"]) == (40, 10)
