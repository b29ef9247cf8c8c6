"""Build hook: compiles the hot-path modules (heliosproxy/_compiled.py HOT_MODULES) with mypyc.

Everything else about the package is in pyproject.toml. HELIOS_NO_COMPILE=1 builds a pure-Python
package. The SHA-256 of each compiled source goes to heliosproxy/_compiled.json, which the package
checks at import (an edited source loads every hot module from its .py until rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
HOT_MODULES: tuple[str, ...] = __import__("heliosproxy._compiled", fromlist=["HOT_MODULES"]).HOT_MODULES
MANIFEST = ROOT / "heliosproxy" / "_compiled.json"


def _paths() -> list[str]:
    return [str(Path(*m.split(".")).with_suffix(".py")) for m in HOT_MODULES]


def extensions() -> list[object]:
    if os.environ.get("HELIOS_NO_COMPILE", "") not in ("", "0"):
        return []  # the .py files only (a manifest left by an earlier build is harmless: no extension, no use)
    from mypyc.build import mypycify

    # Extension modules linked by an earlier build (e.g. of a module no longer in HOT_MODULES) would
    # otherwise be copied into the wheel next to the new ones: start from an empty build/lib.
    for old in ROOT.glob("build/lib.*"):
        shutil.rmtree(old)
    paths = _paths()
    MANIFEST.write_text(
        json.dumps({m: hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for m, p in zip(HOT_MODULES, paths,
                                                                                              strict=True)},
                   indent=1)
        + "\n"
    )
    return list(mypycify(paths, opt_level="3", group_name="heliosproxy"))


setup(ext_modules=extensions())
