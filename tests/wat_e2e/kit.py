"""Helpers for the plugin end-to-end tests: build/copy example plugins, compile WAT, read the proxy log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wasmtime

from heliosproxy.config.load import load_yaml_file
from tests.helpers import REPO_ROOT
from tests.helpers.proxy import ProxyProcess

WAT_DIR = Path(__file__).resolve().parent
PLUGINS_SRC = REPO_ROOT / "plugins"
PLUGINS_BUILD = PLUGINS_SRC / "build"
EXAMPLES = ("block_ddl", "add_limit", "cache_answer", "tenant_router", "api_key_auth", "audit_log", "noop")

_build_lock = threading.Lock()
_built = False


def build_examples() -> Path:
    """Run plugins/build.sh once per test process (it rebuilds only what changed); the build dir."""
    global _built
    with _build_lock:
        if not _built:
            res = subprocess.run(
                ["bash", str(PLUGINS_SRC / "build.sh")], cwd=REPO_ROOT, capture_output=True, text=True,
                env={"PYTHON": sys.executable, "PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=300,
            )
            if res.returncode != 0:
                raise RuntimeError(f"plugins/build.sh failed:\n{res.stdout}\n{res.stderr}")
            _built = True
    for name in EXAMPLES:
        if not (PLUGINS_BUILD / f"{name}.wasm").is_file():
            raise RuntimeError(f"plugins/build.sh did not produce {name}.wasm")
    return PLUGINS_BUILD


def manifest_of(name: str) -> dict[str, Any]:
    """The example plugin's manifest (plugins/NAME/NAME.yaml) as a dict."""
    doc = load_yaml_file(PLUGINS_SRC / name / f"{name}.yaml")
    assert isinstance(doc, dict)
    return doc


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write a manifest as JSON (JSON is YAML; keeps yaml out of the tests), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)


def install_example(
    dest: Path,
    name: str,
    *,
    as_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """Copy example plugin `name` (wasm + manifest) into `dest` as `as_name`; the wasm path.

    `config` replaces the manifest's config; other keyword arguments replace manifest fields.
    """
    build_examples()
    target = as_name or name
    dest.mkdir(parents=True, exist_ok=True)
    manifest = manifest_of(name)
    manifest["name"] = target
    if config is not None:
        manifest["config"] = dict(config)
    manifest.update(fields)
    wasm = dest / f"{target}.wasm"
    tmp = dest / f".{target}.wasm.tmp"
    shutil.copyfile(PLUGINS_BUILD / f"{name}.wasm", tmp)
    write_manifest(dest / f"{target}.yaml", manifest)
    tmp.replace(wasm)
    return wasm


def wat_bytes(name: str) -> bytes:
    """tests/wat_e2e/NAME.wat with the shared prelude spliced in, compiled to wasm bytes."""
    text = (WAT_DIR / f"{name}.wat").read_text()
    text = text.replace("(;PRELUDE;)", (WAT_DIR / "prelude.wat").read_text())
    return bytes(wasmtime.wat2wasm(text))


def install_wat(dest: Path, name: str, **fields: Any) -> Path:
    """Compile tests/wat_e2e/NAME.wat into dest/NAME.wasm with its NAME.yaml (fields override it)."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = load_yaml_file(WAT_DIR / f"{name}.yaml")
    assert isinstance(manifest, dict)
    manifest.update(fields)
    write_manifest(dest / f"{name}.yaml", manifest)
    wasm = dest / f"{name}.wasm"
    wasm.write_bytes(wat_bytes(name))
    return wasm


def plugin_config(directory: Path, **extra: Any) -> dict[str, Any]:
    """The `plugins:` section for a proxy using `directory`."""
    return {"plugins": {"enabled": True, "dir": str(directory), **extra}}


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll `predicate()` until it is truthy; its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def plugin_log_lines(proxy: ProxyProcess, plugin: str) -> list[str]:
    """The messages a plugin wrote with log() (text format: '... plugin NAME: MESSAGE')."""
    marker = f"plugin {plugin}: "
    out = []
    for line in proxy.output().splitlines():
        i = line.find(marker)
        if i >= 0:
            out.append(line[i + len(marker):])
    return out


def admin_plugins(proxy: ProxyProcess) -> list[dict[str, Any]] | None:
    """GET /api/plugins from the admin HTTP API, or None while the proxy has no admin API."""
    try:
        with urllib.request.urlopen(proxy.admin_url + "/api/plugins", timeout=2) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, ConnectionError, OSError):
        return None
    if isinstance(doc, dict) and "plugins" in doc:
        doc = doc["plugins"]
    assert isinstance(doc, list), doc
    return doc


def proxy_rss_kib(proxy: ProxyProcess) -> int:
    """Resident memory of the proxy process (and its workers, if any) in KiB."""
    total = 0
    pids = [proxy.pid]
    children = Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total
