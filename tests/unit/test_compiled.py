"""The compiled hot path: `make install` builds it, the suite runs on it, and HELIOS_PURE=1 runs the same source."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from heliosproxy import _compiled
from tests.helpers import REPO_ROOT

_PURE_ENV = {**os.environ, "HELIOS_PURE": "1"}
# Socket-free tests of the compiled modules, run again on their .py files (test_pool_wait.py is left out:
# its 50 ms timer assertions flake on a loaded machine whichever build runs them).
_PURE_SUITE = (
    "tests/unit/test_protocol.py", "tests/unit/test_decide.py", "tests/unit/test_router.py",
    "tests/unit/test_consistency.py", "tests/unit/test_metrics.py", "tests/unit/test_classify.py",
    "tests/unit/test_relay.py", "tests/unit/test_frontend_rename.py", "tests/unit/test_settings_sync.py",
    "tests/unit/test_flows.py",
)


_BUILT_ENV = {k: v for k, v in os.environ.items() if k != "HELIOS_PURE"}


def test_the_suite_runs_on_the_compiled_build() -> None:
    """`make test` (CI) must exercise the extension modules, not the .py files beside them. Checked in a
    fresh interpreter without HELIOS_PURE, so it holds (and is checked) whatever this run's environment."""
    code = (
        "import heliosproxy, sys\n"
        "from heliosproxy import _compiled\n"
        "for n in _compiled.HOT_MODULES: __import__(n)\n"
        "print(heliosproxy.PURE_REASON)\n"
        "print(_compiled.compiled_modules() == list(_compiled.HOT_MODULES))\n"
        "print(sorted(n for n in _compiled.HOT_MODULES if not str(sys.modules[n].__file__).endswith('.so')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_BUILT_ENV, cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["None", "True", "[]"], f"hot modules load from source (run `make install`): {out}"


def test_helios_pure_loads_every_hot_module_from_its_source() -> None:
    code = (
        "import heliosproxy, sys\n"
        "from heliosproxy import _compiled\n"
        "for n in _compiled.HOT_MODULES: __import__(n)\n"
        "import heliosproxy.server\n"  # the whole program imports on the pure modules
        "print(heliosproxy.PURE_REASON)\n"
        "print(sorted(sys.modules[n].__file__.rsplit('.', 1)[1] for n in _compiled.HOT_MODULES))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_PURE_ENV, cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["HELIOS_PURE is set", str(["py"] * len(_compiled.HOT_MODULES))]


def test_the_pure_fallback_passes_the_socket_free_tests() -> None:
    """The fallback is the same source, and it is tested: these unit tests again, with HELIOS_PURE=1."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_PURE_SUITE],
                         env=_PURE_ENV, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


def _package(tmp_path: Path, recorded: dict[str, str]) -> Path:
    pkg = tmp_path / "heliosproxy"
    for name in _compiled.HOT_MODULES:
        src = _compiled.source_path(name, pkg)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"X = {name!r}\n")
    (pkg / _compiled.MANIFEST).write_text(json.dumps(recorded))
    return pkg


def test_an_edited_source_makes_the_build_stale(tmp_path: Path) -> None:
    """After `make install`, editing a hot module must not silently run the old compiled code."""
    recorded = {n: hashlib.sha256(f"X = {n!r}\n".encode()).hexdigest() for n in _compiled.HOT_MODULES}
    pkg = _package(tmp_path, recorded)
    assert _compiled.pure_reason(pkg, {}) is None
    assert _compiled.pure_reason(pkg, {"HELIOS_PURE": "0"}) is None
    assert _compiled.pure_reason(pkg, {"HELIOS_PURE": "1"}) == "HELIOS_PURE is set"
    _compiled.source_path("heliosproxy.session.client", pkg).write_text("X = 'edited'\n")
    reason = _compiled.pure_reason(pkg, {})
    assert reason is not None and "client.py changed since it was compiled" in reason
    (pkg / _compiled.MANIFEST).unlink()
    assert _compiled.pure_reason(pkg, {}) is None  # a pure install: nothing to choose
