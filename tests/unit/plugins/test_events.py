"""helios.emit_event and post_auth: validation, the bounded event list, metrics, permissions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heliosproxy.config.schema import PluginsConfig
from heliosproxy.plugins.events import EventLog, parse_event, served
from heliosproxy.plugins.hooks import HookContext, QueryContext
from heliosproxy.plugins.manager import PluginManager
from tests.wat_e2e.kit import install_example


def _manager(d: Path, **kw: object) -> PluginManager:
    m = PluginManager(PluginsConfig(dir=str(d), **kw))  # type: ignore[arg-type]
    m.load_all()
    return m


def _probe(m: PluginManager, n: int) -> None:
    hc = HookContext(identity="app", attributes={"tenant": "acme"})
    m.pre_query(QueryContext(f"SELECT * FROM t WHERE a = '' OR {n}={n}", hook_context=hc))


def test_parse_event_shape_and_refusals() -> None:
    e = parse_event("p", b'{"kind": "probe", "tenant": "t", "detail": "d"}', now=1_700_000_000.25)
    assert e == {"plugin": "p", "kind": "probe", "severity": "medium", "tenant": "t", "detail": "d",
                 "at": "2023-11-14T22:13:20.250Z", "ts": 1_700_000_000.25}
    for bad in (b"[]", b"{", b'{"kind": "a b"}', b'{"kind": "k", "severity": "huge"}', b'{"kind": "k", "tenant": 1}',
                b'{"kind": "k", "detail": 5}', b'{"severity": "low"}', json.dumps({"kind": "k", "detail": "x" * 5000})
                .encode()):
        with pytest.raises(ValueError):
            parse_event("p", bad)
    assert len(parse_event("p", json.dumps({"kind": "k", "detail": "x" * 3000}).encode())["detail"]) == 1024


def test_event_log_is_bounded_and_served_newest_first() -> None:
    log = EventLog(3)
    for i in range(5):
        log.add(parse_event("p", json.dumps({"kind": "k", "detail": str(i)}).encode(), now=100.0 + i))
    assert log.total == 5
    assert [e["detail"] for e in served(log.raw(), 10)] == ["4", "3", "2"]
    assert [e["detail"] for e in served(log.raw(), 1)] == ["4"]
    assert "ts" not in served(log.raw(), 1)[0]


def test_sqli_guard_events_reach_the_list_and_the_metrics(tmp_path: Path) -> None:
    install_example(tmp_path, "sqli_guard")
    m = _manager(tmp_path, max_events=4)
    for n in range(6):
        _probe(m, n)
    assert m.events.total == 6 and len(m.events.raw()) == 4
    assert {(e["plugin"], e["kind"], e["tenant"]) for e in m.events.raw()} == {("sqli_guard", "tautology", "acme")}
    series = m.stats()[0]["metric_series"]
    assert {"type": "counter", "name": "events", "labels": {"kind": "tautology", "severity": "high"},
            "value": 6.0} in series


def test_emit_event_needs_the_events_permission(tmp_path: Path) -> None:
    install_example(tmp_path, "sqli_guard", permissions=["metrics"])
    m = _manager(tmp_path)
    assert m.plugins == {}
    assert "import helios.emit_event needs permission 'events'" in m.last_refusal["sqli_guard"]


def test_post_auth_reaches_auth_burst_only_on_failures(tmp_path: Path) -> None:
    install_example(tmp_path, "auth_burst", config={"threshold": 2, "window_ms": 60000})
    m = _manager(tmp_path)
    assert m.has_post_auth and not m.has_auth  # an observer: logins keep their configured method
    hc = HookContext(identity="app")
    m.post_auth(hc, "app", "app", "10.1.1.1:4000", True)
    m.post_auth(hc, "app", "app", "10.1.1.1:4001", False, "28P01", "bad password")
    m.drain_observers()
    assert m.events.raw() == []
    m.post_auth(hc, "app", "app", "10.1.1.2:4002", False, "28P01", "bad password")
    m.drain_observers()
    assert [e["detail"].split(" within")[0] for e in m.events.raw()] == ["2 failed logins for user app"]
