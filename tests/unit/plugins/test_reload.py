"""Hot reload: modified / added / removed plugins, and a broken new version keeping the old one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.plugins.hooks import Block, Continue
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.reload import DirectoryWatcher, ReloadEvent, ReloadKind
from heliosproxy.plugins.wasm import wat2wasm
from tests.unit.plugins.helpers import Events, install, query, respond_wat

Make = Callable[..., PluginManager]


def blocker(reason: str) -> bytes:
    return wat2wasm(respond_wat({"pre_query": {"action": "block", "reason": reason}}))


def settle(m: PluginManager, until: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m.check_updates()
        if until():
            return
        time.sleep(0.02)
    raise AssertionError("hot reload did not apply in time")


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_watcher_debounces(tmp_path: Path) -> None:
    now = [0.0]
    w = DirectoryWatcher(tmp_path, debounce=0.5, clock=lambda: now[0])
    w.prime()
    (tmp_path / "p.wasm").write_bytes(b"x")
    assert w.poll() == []
    now[0] = 0.3
    assert w.poll() == []
    now[0] = 0.6
    assert w.poll() == [ReloadEvent(ReloadKind.ADDED, "p")]
    (tmp_path / "p.yaml").write_text("x")
    now[0] = 1.0
    assert w.poll() == []
    (tmp_path / "p.yaml").write_text("xy")  # still changing: the debounce restarts
    now[0] = 1.4
    assert w.poll() == []
    now[0] = 2.0
    assert w.poll() == [ReloadEvent(ReloadKind.MODIFIED, "p")]
    (tmp_path / "p.wasm").unlink()
    now[0] = 2.1
    assert w.poll() == []
    now[0] = 2.7
    assert w.poll() == [ReloadEvent(ReloadKind.REMOVED, "p")]
    assert w.poll() == []


def test_modified_added_removed(pdir: Path, manager: Make, events: Events) -> None:
    install(pdir, "p", blocker("v1"), version="1.0.0")
    m = manager(hot_reload=True, debounce=0.05)
    assert m.pre_query(query()) == Block("v1")

    install(pdir, "p", blocker("v2"), version="2.0.0")
    bump_mtime(pdir / "p.wasm")
    settle(m, lambda: m.plugins["p"].manifest.version == "2.0.0")
    assert m.pre_query(query()) == Block("v2")
    assert events.named("plugin_reloaded") == [{"plugin": "p", "version": "2.0.0"}]

    install(pdir, "a_first", blocker("added"), priority=1)
    settle(m, lambda: "a_first" in m.plugins)
    assert m.pre_query(query()) == Block("added")

    (pdir / "a_first.wasm").unlink()
    settle(m, lambda: "a_first" not in m.plugins)
    assert m.pre_query(query()) == Block("v2")
    assert events.named("plugin_unloaded") == [{"plugin": "a_first"}]

    (pdir / "p.wasm").unlink()
    settle(m, lambda: not m.plugins)
    assert m.pre_query(query()) == Continue() and not m.has_pre_query


@pytest.mark.parametrize("broken", ["bad_wasm", "bad_manifest", "wrong_abi"])
def test_broken_new_version_keeps_old(
    pdir: Path, manager: Make, events: Events, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    install(pdir, "p", blocker("v1"), version="1.0.0")
    m = manager(hot_reload=True, debounce=0.05)
    if broken == "bad_wasm":
        (pdir / "p.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    elif broken == "bad_manifest":
        (pdir / "p.yaml").write_text("name: p\nhooks: [nope]\n")
    else:
        install(pdir, "p", "abi_v2", version="2.0.0")
    with caplog.at_level(logging.ERROR, "heliosproxy.plugins"):
        settle(m, lambda: bool(events.named("plugin_load_failed")))
    assert m.plugins["p"].manifest.version == "1.0.0"
    assert m.pre_query(query()) == Block("v1")
    assert "plugin p: new version refused; keeping version 1.0.0 running" in caplog.text

    install(pdir, "p", blocker("v3"), version="3.0.0")  # a fixed version then loads
    bump_mtime(pdir / "p.wasm")
    settle(m, lambda: m.plugins["p"].manifest.version == "3.0.0")
    assert m.pre_query(query()) == Block("v3")


def test_reload_reenables_disabled_plugin(pdir: Path, manager: Make) -> None:
    install(pdir, "p", "trap")
    m = manager(hot_reload=True, debounce=0.05, disable_after=1)
    m.pre_query(query())
    assert m.plugins["p"].disabled
    install(pdir, "p", blocker("fixed"), version="1.0.1")
    settle(m, lambda: m.plugins["p"].manifest.version == "1.0.1")
    assert m.pre_query(query()) == Block("fixed")
