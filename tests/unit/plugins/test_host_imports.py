"""Host imports (log, metric_add, kv_*, now_ms), persistent state, init config, observers."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.plugins.hooks import (
    Block,
    Continue,
    HookContext,
    PostQueryOutcome,
    RouteDefault,
    RoutePrimary,
)
from heliosproxy.plugins.manager import PluginManager
from tests.unit.plugins.helpers import Events, install, query

Make = Callable[..., PluginManager]


def test_state_persists_metrics_and_logs(
    pdir: Path, manager: Make, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    install(pdir, "counter", "counter", permissions=["log", "metrics"])
    m = manager()
    with caplog.at_level(logging.INFO, "heliosproxy.plugins"):
        results = [m.pre_query(query()) for _ in range(4)]
    assert results == [Continue(), Continue(), Block("third call"), Block("third call")]
    assert [e for e in events.named("plugin_metric")] == [{"plugin": "counter", "metric": "calls", "value": 1.0}] * 4
    assert m.stats()[0]["metrics"] == {"calls": 4.0}
    assert caplog.text.count("plugin counter: counted") == 4


def test_kv_round_trip_and_limits(pdir: Path, manager: Make) -> None:
    install(pdir, "kv", "kv", hooks=["pre_query", "route", "authenticate"], permissions=["kv"])
    m = manager(kv_max_keys=2, kv_max_value_bytes=400)
    q1, q2, q3 = query("SELECT 1"), query("SELECT 2"), query("SELECT 3")
    assert m.route(q1) == RouteDefault()  # kv_get: missing
    assert m.pre_query(q1) == Block("stored")
    assert m.route(q1) == RoutePrimary()  # kv_get found it (a copy in guest memory)
    assert m.pre_query(q2) == Block("stored")
    assert m.pre_query(q3) == Block("over")  # a third key: over kv_max_keys
    assert m.pre_query(query("SELECT '" + "x" * 400 + "'")) == Block("over")  # value too big
    ns = m.kv.namespace("kv")
    assert len(ns) == 2 and ns.get(q1.to_json()) == q1.to_json()
    # authenticate deletes the key named by its own input; deleting a missing key is fine.
    hc = HookContext(request_id="r")
    m.authenticate(hc, "u", "d", "1.2.3.4", None)
    assert len(ns) == 2
    ns.delete(q1.to_json())
    assert m.route(q1) == RouteDefault()
    assert m.pre_query(q3) == Block("stored")
    assert m.stats()[0]["calls"]["pre_query"]["errors"] == 0


def test_kv_survives_reload_namespace_is_per_plugin(pdir: Path, manager: Make) -> None:
    install(pdir, "kv", "kv", hooks=["pre_query", "route"], permissions=["kv"])
    m = manager()
    m.pre_query(query("SELECT 1"))
    assert len(m.kv.namespace("kv")) == 1
    assert len(m.kv.namespace("other")) == 0


def test_init_gets_config_and_observers_run_off_the_hot_path(pdir: Path, manager: Make, events: Events) -> None:
    install(
        pdir,
        "obs",
        "observer",
        hooks=["post_query", "on_connect", "on_disconnect"],
        permissions=["kv", "metrics", "clock"],
        config={"tables": ["users"], "limit": 100},
    )
    m = manager()
    ns = m.kv.namespace("obs")
    assert json.loads(ns.get(b"config") or b"") == {"tables": ["users"], "limit": 100}
    assert m.has_post_query and not m.has_pre_query
    ctx = query("SELECT 1")
    hc = ctx.hook_context
    m.on_connect(hc)
    m.post_query(ctx, PostQueryOutcome(True, "standby1", 1234, 99, None))
    m.on_disconnect(hc)
    assert ns.get(b"last_post") is None  # only enqueued
    assert m.drain_observers() == 3
    post = json.loads(ns.get(b"last_post") or b"")
    assert post[0] == ctx.to_dict()
    assert isinstance(post[1].pop("at_ms"), int)  # when the outcome was queued (Unix ms)
    assert post[1] == {
        "success": True,
        "target_node": "standby1",
        "elapsed_us": 1234,
        "response_bytes": 99,
        "error": None,
    }
    assert json.loads(ns.get(b"last_connect") or b"") == hc.to_dict()
    assert json.loads(ns.get(b"last_disconnect") or b"") == hc.to_dict()
    (now,) = struct.unpack("<q", ns.get(b"now") or b"")
    assert abs(now - time.time() * 1000) < 60_000
    assert len(events.named("plugin_metric")) == 3


async def test_background_task_drains_observers(pdir: Path, manager: Make) -> None:
    install(pdir, "obs", "observer", hooks=["post_query"], permissions=["kv", "metrics", "clock"])
    m = manager()
    await m.start()
    try:
        m.post_query(query("SELECT 42"), PostQueryOutcome(False, None, 5, 0, "boom"))
        for _ in range(100):
            if m.kv.namespace("obs").get(b"last_post"):
                break
            await asyncio.sleep(0.01)
        post = json.loads(m.kv.namespace("obs").get(b"last_post") or b"")
        assert post[1]["error"] == "boom" and post[0]["query"] == "SELECT 42"
    finally:
        await m.stop()
