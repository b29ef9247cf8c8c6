"""Fixtures for plugin tests: a temp plugin dir and a manager factory that always stops."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from heliosproxy.plugins.manager import PluginManager
from tests.unit.plugins.helpers import Events, config


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def manager(pdir: Path, events: Events) -> Iterator[Callable[..., PluginManager]]:
    made: list[PluginManager] = []

    def make(**kw: Any) -> PluginManager:
        m = PluginManager(config(pdir, **kw), on_event=events)
        m.load_all()
        made.append(m)
        return m

    yield make
    for m in made:
        m.runtime.close()
