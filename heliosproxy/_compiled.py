"""Chooses compiled (mypyc) or pure-Python hot modules at import: HELIOS_PURE=1 or a stale build mean the source.

setup.py compiles HOT_MODULES into C extension modules that sit next to their .py files and records
the SHA-256 of each compiled source in `_compiled.json`. Python imports an extension before a .py of
the same name, so a checkout edited after `make install` would silently run the old code: at
import, a hot source whose hash differs from the recorded one (or HELIOS_PURE=1 in the
environment) makes *every* hot module load from its .py (all or none: compiled modules call each
other directly, so a mix would pair old and new classes). The pure modules are the same source.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles (the per-transaction path). Order does not matter.
HOT_MODULES: tuple[str, ...] = (
    "heliosproxy.protocol.scan",
    "heliosproxy.protocol.messages",
    "heliosproxy.sql.classify",
    "heliosproxy.pool.pool",
    "heliosproxy.backends.connection",
    "heliosproxy.routing.router",
    "heliosproxy.routing.consistency",
    "heliosproxy.routing.decide",
    "heliosproxy.metrics",
    "heliosproxy.protocol.frontend",
    "heliosproxy.session.rename",
    "heliosproxy.session.core",
    "heliosproxy.session.local",
    "heliosproxy.session.accounting",
    "heliosproxy.session.extended",
    "heliosproxy.session.tracking",
    "heliosproxy.session.client",
    "heliosproxy.session.context",
    "heliosproxy.session.flow",
    "heliosproxy.session.pgcompat",
    "heliosproxy.histogram",
    "heliosproxy.session.relay",
    "heliosproxy.session.prepared",
    "heliosproxy.session.state",
)
MANIFEST = "_compiled.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_reason(package_dir: Path = _PACKAGE_DIR, env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """Why the hot modules load from source (None: the compiled build is current, or there is none)."""
    if env.get("HELIOS_PURE", "") not in ("", "0"):
        return "HELIOS_PURE is set"
    try:
        recorded = json.loads((package_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None  # no compiled build: the .py files are all there is
    for module, sha in recorded.items():
        src = source_path(module, package_dir)
        try:
            if digest(src) != sha:
                return f"{src.name} changed since it was compiled (run `make install` to rebuild)"
        except OSError:
            return f"{src} is missing"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the hot modules' .py files ahead of their extension modules."""

    def __init__(self, names: Sequence[str], package_dir: Path):
        self.names = frozenset(names)
        self.package_dir = package_dir

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        src = source_path(fullname, self.package_dir)
        return importlib.util.spec_from_file_location(fullname, src)


def choose() -> str | None:
    """Called once by heliosproxy/__init__.py; returns why the build is not used, if it is not."""
    reason = pure_reason()
    if reason is not None and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(HOT_MODULES, _PACKAGE_DIR))
    return reason


def compiled_modules() -> list[str]:
    """The hot modules imported so far that run as compiled code."""
    return [
        name for name in HOT_MODULES
        if name in sys.modules and not str(getattr(sys.modules[name], "__file__", "")).endswith(".py")
    ]
