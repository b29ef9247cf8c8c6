"""The Zig example plugins (plugins/, built by plugins/build.sh) run through the PluginManager."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.plugins.hooks import (
    AuthDefer,
    AuthDenied,
    AuthSuccess,
    Block,
    Cached,
    Continue,
    HookContext,
    PostQueryOutcome,
)
from heliosproxy.plugins.manager import PluginManager
from tests.unit.plugins.helpers import query

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "plugins" / "build"
Make = Callable[..., PluginManager]


@pytest.fixture(scope="module")
def built() -> Path:
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(ROOT / "plugins" / "build.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return BUILD


def copy(built: Path, pdir: Path, *names: str) -> None:
    for n in names:
        for suffix in (".wasm", ".yaml"):
            shutil.copy(built / f"{n}{suffix}", pdir / f"{n}{suffix}")


def test_examples_through_the_manager(built: Path, pdir: Path, manager: Make) -> None:
    copy(built, pdir, "noop", "block_ddl", "cache_answer", "api_key_auth", "audit_log")
    m = manager()
    assert sorted(m.plugins) == ["api_key_auth", "audit_log", "block_ddl", "cache_answer", "noop"]
    assert m.pre_query(query("SELECT 1")) == Continue()
    verdict = m.pre_query(query("DROP TABLE users"))
    assert isinstance(verdict, Block) and "DROP" in verdict.reason
    assert m.pre_query(query("SELECT /*cache:hello*/ 1")) == Cached(("greeting",), (("hello from wasm",),))
    hc = HookContext(request_id="r", client_id="c")
    assert m.authenticate(hc, "app", "app", "127.0.0.1:5000", "hk_demo_alice") == AuthSuccess({"name": "alice"})
    assert isinstance(m.authenticate(hc, "app", "app", "127.0.0.1:5000", "hk_nope"), AuthDenied)
    assert m.authenticate(hc, "app", "app", "127.0.0.1:5000", "apppass") == AuthDefer()
    m.post_query(query("SELECT 1"), PostQueryOutcome(True, "primary", 10, 20, None))
    m.post_query(query("SELECT x"), PostQueryOutcome(False, "primary", 10, 20, "no column x"))
    assert m.drain_observers() == 2
    audit = next(s for s in m.stats() if s["name"] == "audit_log")
    assert audit["calls"]["post_query"] == {
        "calls": 2,
        "errors": 0,
        "total_us": pytest.approx(audit["calls"]["post_query"]["total_us"]),
    }
    assert audit["metrics"] == {"queries_ok": 1.0, "queries_failed": 1.0}
    assert all(e["errors"] == 0 for s in m.stats() for e in s["calls"].values())
