"""Packaging: wheel and editable install build without setuptools warnings, shipping LICENSE and the dashboard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from tests.helpers import REPO_ROOT

# These check packaging, not compilation: a pure build (HELIOS_NO_COMPILE=1) takes seconds, a mypyc one
# minutes. The compiled build is what `make install` gives the suite (tests/unit/test_compiled.py checks it).
_PURE = {**os.environ, "HELIOS_NO_COMPILE": "1"}
# pip's own notes about this machine's package index settings are not the build's business.
_PIP_NOISE = re.compile(r"^WARNING: Location '.*' is ignored.*$", re.MULTILINE)


def _build_warnings(output: str) -> list[str]:
    text = _PIP_NOISE.sub("", output)
    return [ln for ln in text.splitlines() if re.search(r"warn|deprecat|careful", ln, re.IGNORECASE)]


def test_license_file_matches_the_declared_license() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_wheel_builds_clean_with_license_and_dashboard(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO_ROOT)],
                         capture_output=True, text=True, timeout=300, env=_PURE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _build_warnings(res.stdout + res.stderr) == []
    (wheel,) = tmp_path.glob("heliosproxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "heliosproxy/admin/static/index.html" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


def test_editable_install_builds_clean(tmp_path: Path) -> None:
    """What `make install` does (pip install -e), into a throwaway environment."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                          "--no-deps", "-e", str(REPO_ROOT)], capture_output=True, text=True, timeout=300,
                         env=_PURE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _build_warnings(res.stdout + res.stderr) == []
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import heliosproxy; print(heliosproxy.__file__)"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == str(REPO_ROOT / "heliosproxy" / "__init__.py"), out.stderr
