"""Plugin manifests (NAME.yaml beside NAME.wasm): parsing, validation and effective limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heliosproxy.config.load import parse_yaml_text
from heliosproxy.config.schema import FailMode, PluginLimits
from heliosproxy.plugins.hooks import HookType, PluginLoadError

REWRITE_MULTI = "rewrite_multi_statement"  # pre_query may rewrite one statement into several
PERMISSIONS = frozenset({"log", "metrics", "kv", "clock", "events", REWRITE_MULTI})
DEFAULT_PRIORITY = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_KEYS = frozenset(
    {
        "name",
        "version",
        "description",
        "author",
        "license",
        "hooks",
        "permissions",
        "priority",
        "limits",
        "fail_mode",
        "config",
    }
)
_LIMIT_KEYS = frozenset({"memory", "fuel", "timeout_ms"})


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    description: str = ""
    author: str = ""
    hooks: tuple[HookType, ...] = ()
    permissions: frozenset[str] = frozenset()
    priority: int = DEFAULT_PRIORITY
    limits: PluginLimits = field(default_factory=PluginLimits)
    fail_mode: FailMode = FailMode.OPEN
    config: Any = None


def parse_size(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise PluginLoadError(f"{key}: expected a size like 16MiB, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
            mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
            return int(float(m.group(1)) * mult)
    raise PluginLoadError(f"{key}: expected a size like 16MiB, got {value!r}")


def _str(doc: dict[str, Any], key: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if value is None:
        raise PluginLoadError(f"{key}: required")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise PluginLoadError(f"{key}: expected a string, got {value!r}")
    return str(value)


def _list(doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PluginLoadError(f"{key}: expected a list of strings")
    return value


def parse_manifest(doc: Any, defaults: PluginLimits, *, expect_name: str | None = None) -> Manifest:
    """Validate a manifest document; limits default to, and are capped by, `defaults`."""
    if not isinstance(doc, dict):
        raise PluginLoadError("manifest must be a mapping")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise PluginLoadError(f"{unknown[0]}: unknown manifest key")
    name = _str(doc, "name")
    if not _NAME_RE.match(name):
        raise PluginLoadError(f"name: {name!r} must be 1-128 of [A-Za-z0-9_-]")
    if expect_name is not None and name != expect_name:
        raise PluginLoadError(f"name: {name!r} does not match the file name {expect_name!r}")
    version = _str(doc, "version", "0.0.0")
    hooks: list[HookType] = []
    for h in _list(doc, "hooks"):
        ht = HookType.from_str(h)
        if ht is None:
            raise PluginLoadError(f"hooks: unknown hook {h!r}")
        if ht not in hooks:
            hooks.append(ht)
    perms = _list(doc, "permissions")
    for p in perms:
        if p not in PERMISSIONS:
            raise PluginLoadError(f"permissions: unknown permission {p!r} (known: {', '.join(sorted(PERMISSIONS))})")
    priority = doc.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PluginLoadError(f"priority: expected an integer, got {priority!r}")
    limits = _limits(doc.get("limits"), defaults)
    fm = doc.get("fail_mode", "open")
    try:
        fail_mode = FailMode(fm)
    except ValueError:
        raise PluginLoadError(f"fail_mode: expected open or closed, got {fm!r}") from None
    return Manifest(
        name=name,
        version=version,
        description=_str(doc, "description", ""),
        author=_str(doc, "author", ""),
        hooks=tuple(hooks),
        permissions=frozenset(perms),
        priority=priority,
        limits=limits,
        fail_mode=fail_mode,
        config=doc.get("config"),
    )


def _limits(raw: Any, defaults: PluginLimits) -> PluginLimits:
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise PluginLoadError("limits: expected a mapping")
    unknown = sorted(set(raw) - _LIMIT_KEYS)
    if unknown:
        raise PluginLoadError(f"limits.{unknown[0]}: unknown key (memory, fuel, timeout_ms)")
    memory = defaults.memory
    if "memory" in raw:
        memory = min(parse_size(raw["memory"], "limits.memory"), defaults.memory)
    fuel = defaults.fuel
    if "fuel" in raw:
        f = raw["fuel"]
        if not isinstance(f, int) or isinstance(f, bool) or f <= 0:
            raise PluginLoadError(f"limits.fuel: expected a positive integer, got {f!r}")
        fuel = min(f, defaults.fuel)
    timeout = defaults.timeout_ms
    if "timeout_ms" in raw:
        t = raw["timeout_ms"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise PluginLoadError(f"limits.timeout_ms: expected a positive number, got {t!r}")
        timeout = min(float(t), defaults.timeout_ms)
    if memory < 65536:
        raise PluginLoadError("limits.memory: at least 64KiB (one wasm page)")
    return PluginLimits(memory=memory, fuel=fuel, timeout_ms=timeout)


def load_manifest(path: Path, defaults: PluginLimits, *, expect_name: str | None = None) -> Manifest:
    """Read NAME.yaml once and parse it (the loader itself uses manifest_from_bytes on verified bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PluginLoadError(f"cannot read manifest {path}: {e.strerror or e}") from None
    return manifest_from_bytes(data, path, defaults, expect_name=expect_name)


def manifest_from_bytes(
    data: bytes, path: Path, defaults: PluginLimits, *, expect_name: str | None = None
) -> Manifest:
    """The manifest parsed from `data`: the very bytes whose signature was checked (never read again)."""
    try:
        doc = parse_yaml_text(data, str(path))
    except Exception as e:  # ConfigError (bad YAML) or a decoding error
        raise PluginLoadError(f"manifest {path} is not valid YAML: {e}") from None
    try:
        return parse_manifest(doc, defaults, expect_name=expect_name)
    except PluginLoadError as e:
        raise PluginLoadError(f"{path}: {e}") from None
