"""Test helpers: build plugins from the WAT modules in tests/wat and install them in a dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heliosproxy.config.schema import PluginLimits, PluginsConfig
from heliosproxy.plugins.hooks import HookContext, QueryContext
from heliosproxy.plugins.wasm import wat2wasm

WAT_DIR = Path(__file__).resolve().parents[2] / "wat"


def _wat_string(data: bytes) -> str:
    out = []
    for b in data:
        ch = chr(b)
        if ch in ('"', "\\") or b < 0x20 or b >= 0x7F:
            out.append(f"\\{b:02x}")
        else:
            out.append(ch)
    return "".join(out)


def respond_wat(responses: dict[str, Any]) -> str:
    """A module answering each hook with a fixed document (dict -> JSON, str raw, None -> 0)."""
    parts = []
    offset = 4096
    for hook, answer in responses.items():
        if answer is None:
            parts.append(f'(func (export "{hook}") (param i32 i32) (result i64) (i64.const 0))')
            continue
        raw = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        parts.append(f'(data (i32.const {offset}) "{_wat_string(raw)}")')
        packed = (offset << 32) | len(raw)
        parts.append(f'(func (export "{hook}") (param i32 i32) (result i64) (i64.const {packed}))')
        offset += (len(raw) + 15) // 16 * 16 + 16
    return wat_text("respond").replace("(;RESPONSES;)", "\n  ".join(parts))


def wat_text(name: str) -> str:
    prelude = (WAT_DIR / "prelude.wat").read_text()
    return (WAT_DIR / f"{name}.wat").read_text().replace("(;PRELUDE;)", prelude)


def wasm_of(name: str) -> bytes:
    return wat2wasm(wat_text(name))


def install(
    directory: Path,
    name: str,
    wasm: bytes | str,
    *,
    hooks: list[str] | None = None,
    permissions: list[str] | None = None,
    **manifest: Any,
) -> Path:
    """Write NAME.wasm (bytes, or a tests/wat module name) and NAME.yaml (JSON is valid YAML)."""
    if isinstance(wasm, str):
        wasm = wasm_of(wasm)
    doc: dict[str, Any] = {
        "name": name,
        "version": manifest.pop("version", "1.0.0"),
        "description": f"test plugin {name}",
        "author": "tests",
        "hooks": hooks if hooks is not None else ["pre_query"],
        "permissions": permissions or [],
    }
    doc.update(manifest)
    path = directory / f"{name}.wasm"
    path.write_bytes(wasm)
    (directory / f"{name}.yaml").write_text(json.dumps(doc, indent=2) + "\n")
    return path


def config(directory: Path, **kw: Any) -> PluginsConfig:
    limits = kw.pop("limits", PluginLimits())
    return PluginsConfig(dir=str(directory), limits=limits, **kw)


def query(sql: str = "SELECT 1", **attrs: str) -> QueryContext:
    return QueryContext(
        query=sql,
        normalized=sql,
        tables=["users"],
        is_read_only=sql.lstrip().upper().startswith("SELECT"),
        hook_context=HookContext(request_id="req-1", client_id="client-1", database="app", attributes=dict(attrs)),
    )


class Events:
    """Collects (event, data) pairs from PluginManager.on_event."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.items.append((name, data))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for n, d in self.items if n == name]
