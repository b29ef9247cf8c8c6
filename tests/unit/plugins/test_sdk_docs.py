"""plugins/README.md's SDK reference names every public function of the Zig, C and AssemblyScript SDKs."""

from __future__ import annotations

import re

from tests.helpers import REPO_ROOT

SDK = REPO_ROOT / "plugins" / "sdk"
README = (REPO_ROOT / "plugins" / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"### {title}")
    end = README.find("\n### ", start + 1)
    return README[start:end]


def test_zig_sdk_fully_documented() -> None:
    doc = section("Zig (")
    names = set(re.findall(r"^\s*pub fn (\w+)\(", (SDK / "helios.zig").read_text(), re.M))
    assert {"run", "block", "metricSetLabels", "startsWithKeyword", "optString"} <= names  # methods included
    missing = [n for n in sorted(names) if not any(form in doc for form in (f"{n}(", f".{n}", f"`{n}`"))]
    assert missing == [], f"undocumented Zig SDK functions: {missing}"


def test_c_sdk_fully_documented() -> None:
    doc = section("C (")
    text = (SDK / "helios.h").read_text()
    names = set(re.findall(r"^static [\w\s\*]*?\b(helios_(?!host_|export_)\w+)\(", text, re.M))
    assert "helios_block" in names
    missing = [n for n in sorted(names) if n not in doc and not n.endswith("_")]
    assert missing == [], f"undocumented C SDK functions: {missing}"
    assert "HELIOS_HOOK" in doc


def test_assemblyscript_sdk_fully_documented() -> None:
    doc = section("AssemblyScript (")
    names = set(re.findall(r"^export function (\w+)\(", (SDK / "helios.ts").read_text(), re.M))
    assert "block" in names
    missing = [n for n in sorted(names) if n not in doc]
    assert missing == [], f"undocumented AssemblyScript SDK functions: {missing}"
