"""Config of limits/circuit_breaker (issue 15 §2, §3) and the limit table's bookkeeping across two mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliosproxy.config.load import parse_config
from heliosproxy.config.schema import BreakerConfig, LimitAction, LimitKey
from heliosproxy.errors import ConfigError
from heliosproxy.traffic.limits import GO, REJECT, WAIT, Limiter, LimitTable, label_of

NODES = "nodes:\n  - {name: p, host: 127.0.0.1, role: primary}\nauth: {method: trust}\nusers: [{name: app}]\n"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(NODES + text, "x.yaml")
    return str(info.value)


def test_limits_and_breaker_parse() -> None:
    c = parse_config(NODES + """\
limits:
  - {name: u, key: user, rate: 5, burst: 5, action: reject}
  - {name: t, key: tenant, concurrency: 2, action: queue, max_wait: 250ms}
circuit_breaker: {failures: 3, window: 10s, open_for: 8s}
""", "x.yaml")
    assert [(x.name, x.key, x.rate, x.burst, x.action) for x in c.limits] == [
        ("u", LimitKey.USER, 5.0, 5, LimitAction.REJECT), ("t", LimitKey.TENANT, None, None, LimitAction.QUEUE)]
    assert c.limits[1].max_wait == 0.25 and c.limits[1].concurrency == 2
    assert c.circuit_breaker == BreakerConfig(3, 10.0, 8.0)
    assert parse_config(NODES, "x.yaml").circuit_breaker is None
    assert parse_config(NODES, "x.yaml").limits == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("limits: [{name: a, key: user}]\n", "limits[0]: needs rate or concurrency (or both)"),
    ("limits: [{name: a, key: user, rate: 1}, {name: a, key: database, rate: 1}]\n",
     "limits[1].name: duplicate limit name 'a' (limits[0])"),
    ("limits: [{name: a, key: user, concurrency: 1, burst: 3}]\n", "limits[0].burst: needs rate"),
    ("limits: [{name: a, key: host, rate: 1}]\n", "'host' is not one of user, database, client_addr, tenant,"),
    ("limits: [{name: a, key: user, rate: 0}]\n", "limits[0].rate: must be > 0"),
    ("limits: [{name: a, key: user, rate: 5/s}]\n", "expected a number of statements per second"),
    ("limits: [{name: a, key: user, rate: 1, action: drop}]\n", "is not one of reject, queue, delay"),
    ("circuit_breaker: {failures: 0}\n", "circuit_breaker.failures: must be >= 1"),
    ("circuit_breaker: {open_for: 0s}\n", "circuit_breaker.open_for: must be > 0"),
])
def test_bad_limits(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_two_workers_share_one_bucket_and_a_restart_frees_its_units(tmp_path: Path) -> None:
    config = parse_config(NODES + "limits: [{name: u, key: user, rate: 0.001, burst: 3, concurrency: 1}]\n", "x")
    path = str(tmp_path / "limits.shm")
    w0, w1 = Limiter(config, LimitTable(path, 0)), Limiter(config, LimitTable(path, 1))
    rule = w0.rules[0]
    want = [(rule, label_of(rule, "app"))]
    v = w0.decide(want, (), True)
    assert v.outcome == GO and v.held
    assert w1.decide(want, (), True).outcome == REJECT  # the other worker sees worker 0's running statement
    w0.release(v.held)
    v1 = w1.decide(want, (), True)
    assert v1.outcome == GO
    w1.release(v1.held)
    v2 = w0.decide(want, (), True)  # the third token
    assert v2.outcome == GO
    assert w1.decide(want, (), True).outcome == REJECT  # concurrency (worker 0 holds it)
    w0.flush()  # (a worker adds its allowed counts to the table every FLUSH_EVERY, and when it stops)
    LimitTable(path, 0)  # worker 0 restarted: what it held is given back
    assert w1.decide(want, (), True).outcome == REJECT  # now: no token left (burst 3 spent)
    rows = w1.rows()
    assert [(r["allowed"], r["rejected"], r["active"]) for r in rows] == [(3, 3, 0)]


def test_queue_waits_for_a_token() -> None:
    config = parse_config(NODES + "limits: [{name: q, key: user, rate: 10, burst: 1, action: queue}]\n", "x")
    lim = Limiter(config, LimitTable(None, 0))
    want = [(lim.rules[0], label_of(lim.rules[0], "app"))]
    assert lim.decide(want, (), True).outcome == GO
    v = lim.decide(want, (), True)
    assert v.outcome == WAIT and 0.05 < v.retry_in <= 0.1
    assert lim.rows()[0]["queued"] == 1
