"""House rules for the whole tree: ruff and mypy clean, module docstrings, one importer per library, layering."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "heliosproxy"
# Each third-party library is imported in one place.
OWNERS = {
    "pglast": ("heliosproxy/sql/",),
    "wasmtime": ("heliosproxy/plugins/wasm.py",),
    "yaml": ("heliosproxy/config/load.py",),
    "prometheus_client": ("heliosproxy/metrics.py", "heliosproxy/admin/http.py"),
    "uvloop": ("heliosproxy/server.py",),
}
# Lower layers never import higher ones.
LOWER_NEVER_IMPORTS = {
    "heliosproxy/protocol/": ("heliosproxy.session", "heliosproxy.pool", "heliosproxy.server", "heliosproxy.admin"),
    "heliosproxy/sql/": ("heliosproxy.session", "heliosproxy.pool", "heliosproxy.server", "heliosproxy.routing"),
    "heliosproxy/config/": ("heliosproxy.session", "heliosproxy.pool", "heliosproxy.server", "heliosproxy.backends"),
    "heliosproxy/backends/": ("heliosproxy.session", "heliosproxy.pool", "heliosproxy.server", "heliosproxy.admin"),
    "heliosproxy/pool/": ("heliosproxy.session", "heliosproxy.server", "heliosproxy.admin"),
    "heliosproxy/routing/": ("heliosproxy.session", "heliosproxy.server", "heliosproxy.admin"),
    "heliosproxy/plugins/": ("heliosproxy.session", "heliosproxy.server", "heliosproxy.admin", "heliosproxy.pool"),
    "heliosproxy/traffic/": ("heliosproxy.session", "heliosproxy.server", "heliosproxy.admin"),
}


def _imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_ruff_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "heliosproxy", "tests", "bench"],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_module_docstrings_and_import_owners() -> None:
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        if not doc or not doc.strip():
            problems.append(f"{rel}: no module docstring saying its job")
        imported = _imports(tree)
        for lib, owners in OWNERS.items():
            if any(m == lib or m.startswith(lib + ".") for m in imported) and not rel.startswith(owners):
                problems.append(f"{rel}: imports {lib} (only {', '.join(owners)} may)")
        for prefix, banned in LOWER_NEVER_IMPORTS.items():
            if rel.startswith(prefix):
                for m in imported:
                    if m.startswith(banned):
                        problems.append(f"{rel}: a lower layer imports {m}")
    assert not problems, "\n".join(problems)
