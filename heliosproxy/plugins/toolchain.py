"""Plugin author tools: scaffold (`plugin new`), build, run one hook in the sandbox, verify."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heliosproxy.config.schema import PluginsConfig
from heliosproxy.plugins import hooks
from heliosproxy.plugins.events import parse_event
from heliosproxy.plugins.hooks import HookType, PluginError, PluginLoadError
from heliosproxy.plugins.kv import KvStore
from heliosproxy.plugins.loader import CheckedPlugin, check_plugin
from heliosproxy.plugins.manifest import Manifest
from heliosproxy.plugins.metrics import PluginMetrics
from heliosproxy.plugins.wasm import HostBindings, WasmRuntime

LANGS = ("zig", "c", "assemblyscript")
_SOURCE = {"zig": ".zig", "c": ".c", "assemblyscript": ".ts"}
_SDK = {"zig": "helios.zig", "c": "helios.h", "assemblyscript": "helios.ts"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
REPO = Path(__file__).resolve().parents[2]
SDK_DIR = REPO / "plugins" / "sdk"
TOOLCHAIN_DIR = REPO / "plugins" / "toolchain"


class ToolError(Exception):
    """A plugin tool failed; the message says what to do."""


# ---------------------------------------------------------------------------------- scaffold

_ZIG = """\
//! {name}: a HeliosProxy plugin (Zig). Build: heliosproxy plugin build {dirname}
const h = @import("helios"); // importing the SDK exports alloc, dealloc, helios_abi_version

export fn pre_query(ptr: i32, len: i32) i64 {{
    return h.run(ptr, len, preQuery);
}}

fn preQuery(ctx: h.Value) i64 {{
    const q = ctx.getStr("query") orelse return h.proceed();
    _ = q; // e.g. if (h.sql.startsWithKeyword(q, "vacuum")) return h.block("no VACUUM here");
    return h.proceed(); // 0 = continue with the statement unchanged
}}
"""

_C = """\
/* {name}: a HeliosProxy plugin (C). Build: heliosproxy plugin build {dirname} */
#include "helios.h"

static int64_t pre_query_impl(const char *json, int32_t len) {{
    (void)json;
    (void)len; /* e.g. if (helios_contains(json, len, "VACUUM")) return helios_block("no VACUUM here"); */
    return 0; /* continue with the statement unchanged */
}}
HELIOS_HOOK(pre_query, pre_query_impl)
"""

_AS = """\
// {name}: a HeliosProxy plugin (AssemblyScript). Build: heliosproxy plugin build {dirname}
import * as h from "./helios";
export {{ alloc, dealloc, helios_abi_version }} from "./helios";

export function pre_query(ptr: i32, len: i32): i64 {{
  const ctx = h.input(ptr, len); // the QueryContext JSON
  // e.g. if (ctx.toUpperCase().includes("VACUUM")) return h.block("no VACUUM here");
  return h.proceed(); // 0 = continue with the statement unchanged
}}
"""

_MANIFEST = """\
name: {name}
version: 0.1.0
description: {name} (scaffolded by heliosproxy plugin new)
author: you
hooks: [pre_query]
permissions: []            # any of: log, metrics, kv, clock, events (one per host function you call)
priority: 100
limits: {{memory: 16MiB, fuel: 10000000, timeout_ms: 50}}
fail_mode: open
"""

_CONTEXT = {
    "query": "SELECT 1",
    "normalized": "SELECT $1",
    "tables": [],
    "is_read_only": True,
    "hook_context": {
        "request_id": "r-1",
        "client_id": "c-1",
        "identity": "app",
        "database": "app",
        "branch": None,
        "attributes": {},
    },
}


def scaffold(name: str, lang: str, parent: Path) -> Path:
    """Create parent/NAME/ with the source, the SDK, the manifest, a sample context and a README."""
    if not _NAME_RE.match(name):
        raise ToolError(f"plugin name {name!r} must be 1-128 of [A-Za-z0-9_-]")
    if lang not in LANGS:
        raise ToolError(f"--lang must be one of {', '.join(LANGS)}")
    target = Path(parent) / name
    if target.exists() and any(target.iterdir()):
        raise ToolError(f"{target} already exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    template = {"zig": _ZIG, "c": _C, "assemblyscript": _AS}[lang]
    (target / f"{name}{_SOURCE[lang]}").write_text(template.format(name=name, dirname=target))
    shutil.copyfile(sdk_file(lang), target / _SDK[lang])
    (target / f"{name}.yaml").write_text(_MANIFEST.format(name=name))
    (target / "ctx.json").write_text(json.dumps(_CONTEXT, indent=2) + "\n")
    (target / "README.md").write_text(
        f"# {name}\n\nA HeliosProxy plugin in {lang}.\n\n"
        f"```sh\n"
        f"heliosproxy plugin build {target}            # -> {target}/build/{name}.wasm + {name}.yaml\n"
        f"heliosproxy plugin test {target} --hook pre_query --context {target}/ctx.json\n"
        f"heliosproxy plugin verify {target}\n"
        f"```\n\nBuild line (run in this directory): `{' '.join(build_command(lang, target, name))}`\n\n"
        f"Then copy build/{name}.wasm and build/{name}.yaml into the proxy's `plugins.dir`.\n"
    )
    return target


def sdk_file(lang: str) -> Path:
    path = SDK_DIR / _SDK[lang]
    if not path.is_file():
        raise ToolError(f"the {lang} SDK {path} is missing (run from a HeliosProxy checkout)")
    return path


# ---------------------------------------------------------------------------------- build

@dataclass(frozen=True, slots=True)
class Project:
    directory: Path
    name: str
    lang: str

    @property
    def source(self) -> Path:
        return self.directory / f"{self.name}{_SOURCE[self.lang]}"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{self.name}.yaml"

    @property
    def wasm(self) -> Path:
        return self.directory / "build" / f"{self.name}.wasm"


def find_project(directory: Path) -> Project:
    """DIR holds NAME.yaml and one of NAME.zig / NAME.c / NAME.ts."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ToolError(f"{directory} is not a directory")
    for manifest in sorted(directory.glob("*.yaml")):
        name = manifest.stem
        for lang in LANGS:
            if (directory / f"{name}{_SOURCE[lang]}").is_file():
                return Project(directory, name, lang)
    raise ToolError(f"{directory}: no plugin here (expected NAME.yaml beside NAME.zig, NAME.c or NAME.ts)")


def _asc() -> list[str]:
    candidates = [os.environ.get("HELIOS_ASC", ""), str(TOOLCHAIN_DIR / "node_modules" / ".bin" / "asc")]
    for c in candidates:
        if c and Path(c).is_file():
            return [c]
    found = shutil.which("asc")
    if found:
        return [found]
    raise ToolError(
        "AssemblyScript compiler not found: run `make install` (npm ci in plugins/toolchain) "
        "or set HELIOS_ASC"
    )


def _zig() -> list[str]:
    if importlib.util.find_spec("ziglang") is None:
        raise ToolError("Zig not found: pip install 'heliosproxy[plugins]' (PyPI's ziglang), or run `make install`")
    return [sys.executable, "-m", "ziglang"]


def build_command(lang: str, directory: Path, name: str, out: Path | None = None) -> list[str]:
    """The compiler command line for a project (run inside `directory`)."""
    out_s = str(out) if out is not None else f"build/{name}.wasm"
    zig = _zig() if out is not None else ["python", "-m", "ziglang"]
    if lang == "zig":
        return [
            *zig, "build-exe", "-target", "wasm32-freestanding", "-fno-entry", "-rdynamic",
            "-O", "ReleaseSmall", "--stack", "65536", "--dep", "helios", f"-Mroot={name}.zig",
            "-Mhelios=helios.zig", f"-femit-bin={out_s}",
        ]
    if lang == "c":
        return [
            *zig, "cc", "--target=wasm32-freestanding", "-O2", "-nostdlib", "-Wl,--no-entry",
            "-o", out_s, f"{name}.c",
        ]
    asc = _asc() if out is not None else ["asc"]
    return [*asc, f"{name}.ts", "-o", out_s, "-O3", "--runtime", "incremental"]


def build(directory: Path) -> Path:
    """Compile DIR's plugin into DIR/build/NAME.wasm and copy NAME.yaml beside it."""
    project = find_project(directory)
    out_dir = project.directory / "build"
    out_dir.mkdir(exist_ok=True)
    tmp = out_dir / f".{project.name}.tmp.wasm"
    cmd = build_command(project.lang, project.directory, project.name, tmp.resolve())
    env = dict(os.environ)
    cache = out_dir / ".zig-cache"
    env.setdefault("ZIG_LOCAL_CACHE_DIR", str(cache.resolve()))
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(cache.resolve()))
    try:
        result = subprocess.run(cmd, cwd=project.directory, capture_output=True, text=True, env=env, timeout=600)
    except FileNotFoundError as e:
        raise ToolError(f"cannot run {cmd[0]}: {e.strerror}") from None
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolError(f"building {project.source} failed:\n{(result.stderr or result.stdout).rstrip()}")
    tmp.replace(project.wasm)
    shutil.copyfile(project.manifest, out_dir / f"{project.name}.yaml")
    return project.wasm


# ---------------------------------------------------------------------------------- load, test, verify

def resolve_wasm(target: Path) -> Path:
    """NAME.wasm itself, or a project directory's build/NAME.wasm."""
    target = Path(target)
    if target.is_dir():
        project = find_project(target)
        if not project.wasm.is_file():
            raise ToolError(f"{project.wasm} not found: run `heliosproxy plugin build {target}` first")
        return project.wasm
    return target


@dataclass(slots=True)
class Sandbox:
    """A plugin loaded exactly as the proxy loads it, with host functions that print to stderr."""

    runtime: WasmRuntime
    plugin: CheckedPlugin
    metrics: PluginMetrics

    def close(self) -> None:
        self.runtime.close()


def load(wasm_path: Path, cfg: PluginsConfig, *, quiet: bool = False) -> Sandbox:
    """check_plugin (the proxy's own checks) with a fresh runtime; raises PluginLoadError / SignatureError."""
    runtime = WasmRuntime(tick_ms=max(1.0, min(5.0, cfg.limits.timeout_ms / 10)))
    kv = KvStore(cfg.kv_max_keys, cfg.kv_max_value_bytes)
    metrics = PluginMetrics()
    name = wasm_path.stem

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr)

    def record(kind: str, metric: str, labels: str, value: float) -> None:
        problem = metrics.record(kind, metric, labels, value)
        say(f"metric {kind} {metric}{{{labels}}} {value}" + (f" DROPPED: {problem}" if problem else ""))

    def event(raw: bytes) -> int:
        try:
            doc = parse_event(name, raw)
        except ValueError as e:
            say(f"event REFUSED: {e}")
            return -1
        say("event " + json.dumps({k: v for k, v in doc.items() if k != "ts"}))
        return 0

    def host_for(manifest: Manifest) -> HostBindings:
        return HostBindings(
            log=lambda level, msg: say(f"plugin {name} log[{level}]: {msg}"),
            metric_add=lambda metric, value: record("add", metric, "", value),
            kv=kv.namespace(name) if "kv" in manifest.permissions else None,
            metric_record=record,
            event=event,
        )

    try:
        plugin = check_plugin(wasm_path, cfg, runtime, host_for)
    except BaseException:
        runtime.close()
        raise
    return Sandbox(runtime, plugin, metrics)


_DEFAULTS: dict[HookType, dict[str, Any]] = {
    HookType.PRE_QUERY: {"action": "continue"},
    HookType.ROUTE: {"action": "default"},
    HookType.AUTHENTICATE: {"action": "defer"},
    HookType.AUTHORIZE: {"action": "defer"},
}
_PARSERS: dict[HookType, Any] = {
    HookType.PRE_QUERY: hooks.parse_pre_query,
    HookType.REWRITE: hooks.parse_pre_query,
    HookType.ROUTE: hooks.parse_route,
    HookType.AUTHENTICATE: hooks.parse_auth,
    HookType.AUTHORIZE: hooks.parse_auth,
}


def run_hook(sandbox: Sandbox, hook_name: str, context: bytes) -> tuple[dict[str, Any], bool]:
    """Call one hook as the proxy does: ({"answer", "fuel", "elapsed_us"} or with "error", ok)."""
    hook = HookType.from_str(hook_name)
    if hook is None:
        raise ToolError(f"unknown hook {hook_name!r} (known: {', '.join(h.value for h in HookType)})")
    plugin = sandbox.plugin
    if hook not in plugin.manifest.hooks:
        raise ToolError(f"{plugin.name}: the manifest does not declare hook {hook.value!r}")
    instance = plugin.instance
    t0 = time.perf_counter()
    try:
        raw = instance.call(hook.export_name(), context)
        error: PluginError | None = None
    except PluginError as e:
        raw, error = None, e
    elapsed_us = round((time.perf_counter() - t0) * 1e6, 1)
    fuel = instance.fuel - instance.fuel_left()
    out: dict[str, Any] = {"answer": None, "fuel": fuel, "elapsed_us": elapsed_us}
    if error is not None:
        out["error"] = {"kind": error.kind, "message": error.message}
        return out, False
    if raw is None:
        out["answer"] = _DEFAULTS.get(hook)
        return out, True
    try:
        out["answer"] = json.loads(raw)
    except ValueError:
        out["answer"] = raw.decode("utf-8", "replace")
    parse = _PARSERS.get(hook)
    if parse is not None:
        try:
            parse(raw)
        except PluginError as e:  # the proxy would count this answer as a plugin error
            out["error"] = {"kind": e.kind, "message": e.message}
            return out, False
    return out, True


__all__ = [
    "LANGS",
    "PluginLoadError",
    "Project",
    "Sandbox",
    "ToolError",
    "build",
    "build_command",
    "find_project",
    "load",
    "resolve_wasm",
    "run_hook",
    "scaffold",
]
