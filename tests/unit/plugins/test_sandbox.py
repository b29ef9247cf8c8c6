"""Bad plugins are contained: limits, traps, bad answers, refused loads, fail modes, disabling."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.config.schema import PluginLimits
from heliosproxy.plugins.hooks import Block, Continue, HookType, RouteBlock
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.wasm import wat2wasm
from tests.unit.plugins.helpers import Events, install, query, respond_wat

Make = Callable[..., PluginManager]
BLOCK_OK = {"pre_query": {"action": "block", "reason": "good plugin ran"}}


def with_good_plugin(pdir: Path) -> None:
    """A healthy plugin after the bad one in the chain: proves the chain continues."""
    install(pdir, "zz_good", wat2wasm(respond_wat(BLOCK_OK)), priority=1000)


def errors_of(m: PluginManager, name: str, hook: str = "pre_query") -> tuple[int, int]:
    s = next(s for s in m.stats() if s["name"] == name)
    st = s["calls"][hook]
    return st["calls"], st["errors"]


def test_infinite_loop_times_out(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "loop", "loop", limits={"timeout_ms": 20})
    with_good_plugin(pdir)
    m = manager(limits=PluginLimits(fuel=10**15))  # only the deadline can stop it
    t0 = time.perf_counter()
    assert m.pre_query(query()) == Block("good plugin ran")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, elapsed  # 20 ms deadline (+ a tick), nowhere near the fuel budget
    assert errors_of(m, "loop") == (1, 1)
    err = events.named("plugin_error")[0]
    assert (err["plugin"], err["hook"], err["kind"]) == ("loop", "pre_query", "timeout")


def test_out_of_fuel(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "spin", "spin", limits={"fuel": 100_000, "timeout_ms": 5000})
    m = manager()
    assert m.pre_query(query()) == Continue()
    assert events.named("plugin_error")[0]["kind"] == "out_of_fuel"


def test_memory_bomb_stops_at_cap(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "bomb", "membomb", limits={"memory": "8MiB"})
    with_good_plugin(pdir)
    m = manager()
    assert m.pre_query(query()) == Block("good plugin ran")
    assert events.named("plugin_error")[0]["kind"] == "trap"
    assert m.plugins["bomb"].instance.memory_size() <= 8 * 1024 * 1024
    # The plugin stays usable (and capped) for the next call.
    assert m.pre_query(query()) == Block("good plugin ran")
    assert errors_of(m, "bomb") == (2, 2)


def test_memory_over_cap_at_load_is_refused(
    pdir: Path, manager: Make, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    install(pdir, "big", "bigmem")
    with caplog.at_level(logging.ERROR, "heliosproxy.plugins"):
        m = manager(limits=PluginLimits(memory=16 * 1024 * 1024))
    assert m.plugins == {}
    assert "plugin big refused: instantiation failed" in caplog.text
    assert events.named("plugin_load_failed")[0]["plugin"] == "big"


def test_trap_is_contained(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "trap", "trap")
    with_good_plugin(pdir)
    m = manager()
    assert m.pre_query(query()) == Block("good plugin ran")
    err = events.named("plugin_error")[0]
    assert err["kind"] == "trap" and "unreachable" in err["message"]


def test_bad_json(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "badjson", "bad_json")
    m = manager()
    assert m.pre_query(query()) == Continue()
    assert events.named("plugin_error")[0]["kind"] == "bad_json"


def test_out_of_bounds_result(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "oob", "oob")
    m = manager()
    assert m.pre_query(query()) == Continue()
    err = events.named("plugin_error")[0]
    assert err["kind"] == "bad_pointer" and "outside linear memory" in err["message"]


@pytest.mark.parametrize(
    ("module", "permissions", "reason"),
    [
        ("abi_v2", [], "unsupported plugin ABI version 2 (this host speaks ABI v1)"),
        ("kv_import", ["log"], "import helios.kv_set needs permission 'kv'"),
        ("wasi_import", [], "import wasi_snapshot_preview1.fd_write is not provided by the host"),
        ("init_refuses", [], "init refused its config: bad config"),
    ],
)
def test_refused_at_load(
    pdir: Path,
    manager: Make,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    module: str,
    permissions: list[str],
    reason: str,
) -> None:
    install(pdir, "bad", module, permissions=permissions)
    with_good_plugin(pdir)
    with caplog.at_level(logging.ERROR, "heliosproxy.plugins"):
        m = manager()
    assert sorted(m.plugins) == ["zz_good"]
    assert f"plugin bad refused: {reason}" in caplog.text
    assert reason in events.named("plugin_load_failed")[0]["reason"]


def test_hook_declared_but_not_exported(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "p", wat2wasm(respond_wat({"pre_query": None})), hooks=["pre_query", "route"])
    m = manager()
    assert m.plugins == {}
    assert (
        "declares hook 'route' but the module does not export it" in (events.named("plugin_load_failed")[0]["reason"])
    )


def test_fail_closed_blocks(pdir: Path, manager: Make) -> None:
    install(pdir, "trap", "trap", fail_mode="closed")
    with_good_plugin(pdir)
    m = manager()
    assert m.pre_query(query()) == Block("plugin trap failed: trap")


def test_fail_closed_route_blocks(pdir: Path, manager: Make) -> None:
    install(
        pdir,
        "badroute",
        wat2wasm(respond_wat({"route": "nope"})),
        hooks=["route"],
        fail_mode="closed",
    )
    m = manager()
    assert m.route(query()) == RouteBlock("plugin badroute failed: bad_json")


def test_disable_after_consecutive_errors(
    pdir: Path, manager: Make, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    install(pdir, "trap", "trap")
    m = manager(disable_after=3)
    with caplog.at_level(logging.ERROR, "heliosproxy.plugins"):
        for _ in range(5):
            assert m.pre_query(query()) == Continue()
    assert errors_of(m, "trap") == (3, 3)  # not called once disabled
    assert m.stats()[0]["state"] == "disabled" and m.stats()[0]["disabled"] is True
    assert not m.has_pre_query
    assert events.named("plugin_disabled") == [{"plugin": "trap", "errors": 3}]
    assert "plugin trap disabled after 3 consecutive errors" in caplog.text
    assert m.chain(HookType.PRE_QUERY) == ()
