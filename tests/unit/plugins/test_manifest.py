"""Manifest validation: required and unknown keys, hooks, permissions, limits, fail mode."""

from __future__ import annotations

from typing import Any

import pytest

from heliosproxy.config.schema import FailMode, PluginLimits
from heliosproxy.plugins.hooks import HookType, PluginLoadError
from heliosproxy.plugins.manifest import parse_manifest

DEFAULTS = PluginLimits(memory=64 * 1024 * 1024, fuel=10_000_000, timeout_ms=50)


def test_full_manifest() -> None:
    m = parse_manifest(
        {
            "name": "block_ddl",
            "version": "1.2.0",
            "description": "d",
            "author": "a",
            "hooks": ["pre_query", "postquery"],
            "permissions": ["log", "kv"],
            "priority": 5,
            "limits": {"memory": "16MiB", "fuel": 1000, "timeout_ms": 10},
            "fail_mode": "closed",
            "config": {"tables": ["t"]},
        },
        DEFAULTS,
        expect_name="block_ddl",
    )
    assert m.hooks == (HookType.PRE_QUERY, HookType.POST_QUERY)
    assert m.permissions == frozenset({"log", "kv"})
    assert m.limits == PluginLimits(memory=16 * 1024 * 1024, fuel=1000, timeout_ms=10)
    assert m.fail_mode is FailMode.CLOSED and m.priority == 5 and m.config == {"tables": ["t"]}


def test_limits_default_and_are_capped() -> None:
    m = parse_manifest({"name": "p", "limits": {"fuel": 10**12, "memory": "1GiB"}}, DEFAULTS)
    assert m.limits == DEFAULTS
    assert parse_manifest({"name": "p"}, DEFAULTS).fail_mode is FailMode.OPEN


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": "1"}, "name: required"),
        ({"name": "a b"}, "must be 1-128 of"),
        ({"name": "p", "hooks": ["pre_qery"]}, "hooks: unknown hook 'pre_qery'"),
        ({"name": "p", "permissions": ["network"]}, "permissions: unknown permission 'network'"),
        ({"name": "p", "fail_mode": "maybe"}, "fail_mode: expected open or closed"),
        ({"name": "p", "limits": {"memroy": 1}}, "limits.memroy: unknown key"),
        ({"name": "p", "limits": {"memory": "lots"}}, "limits.memory: expected a size"),
        ({"name": "p", "priority": "high"}, "priority: expected an integer"),
        ({"name": "p", "colour": "red"}, "colour: unknown manifest key"),
        ({"name": "other"}, "does not match the file name 'p'"),
    ],
)
def test_invalid(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginLoadError, match=message):
        parse_manifest(doc, DEFAULTS, expect_name="p")
