"""Load and validate the YAML config into Config; errors say `file:line: key: reason`."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
from enum import Enum
from fractions import Fraction
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml

from heliosproxy.config.schema import (
    AnalyticsConfig,
    AuthConfig,
    AuthMethod,
    AuthUserConfig,
    BranchConfig,
    BreakerConfig,
    BurstConfig,
    CacheConfig,
    CacheInvalidation,
    CacheRule,
    CacheWalUser,
    Config,
    DatabaseConfig,
    FailoverConfig,
    HealthConfig,
    LimitConfig,
    LogConfig,
    MirrorConfig,
    NodeConfig,
    NPlusOneConfig,
    PluginLimits,
    PluginsConfig,
    PoolConfig,
    Role,
    RoutingConfig,
    ServerTlsMode,
    SlowLogConfig,
    TlsMode,
    UserConfig,
)
from heliosproxy.errors import ConfigError, ConfigErrors
from heliosproxy.protocol.auth import Credential

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "load_config",
    "load_yaml_file",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_yaml_text",
    "size_field",
]

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: tuple[str, ...] = ("text", "json")

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# Integer fields written as byte sizes (`64MiB`); every float field in the schema is a duration.
_SIZE_FIELDS: frozenset[tuple[type, str]] = frozenset(
    {
        (Config, "max_message_size"),
        (RoutingConfig, "max_lag_bytes"),
        (PluginsConfig, "kv_max_value_bytes"),
        (PluginLimits, "memory"),
        (Config, "max_client_buffer"),
        (FailoverConfig, "replay_max_bytes"),
    }
)



def size_field(owner: type, name: str) -> bool:
    """Is owner.name an integer written as a byte size (`64MiB`)? (Every float field is a duration.)"""
    return (owner, name) in _SIZE_FIELDS


# Strings that must not be empty.
_NONEMPTY: frozenset[tuple[type, str]] = frozenset(
    {
        (UserConfig, "name"),
        (NodeConfig, "name"),
        (NodeConfig, "host"),
        (BranchConfig, "node"),
        (BranchConfig, "database"),
        (AuthUserConfig, "name"),
        (AuthConfig, "auth_query"),
        (AuthConfig, "auth_dbname"),
        (LimitConfig, "name"),
    }
)

# PgBouncer's names for existing keys: (section, PgBouncer name) -> our name.
_ALIASES: dict[tuple[type, str], str] = {
    (PoolConfig, "server_lifetime"): "max_lifetime",
    (PoolConfig, "server_idle_timeout"): "idle_timeout",
    (PoolConfig, "server_connect_timeout"): "connect_timeout",
    (PoolConfig, "query_wait_timeout"): "acquire_timeout",
}

_ALIASED: frozenset[tuple[type, str]] = frozenset((cls, name) for (cls, _), name in _ALIASES.items())

# Values never shown in error messages.
_SECRETS: frozenset[str] = frozenset({"password", "token"})

# (low, low_inclusive, high): numeric range of a field (high inclusive, None = unbounded).
_RANGES: dict[tuple[type, str], tuple[float, bool, float | None]] = {
    (Config, "workers"): (1, True, None),
    (Config, "max_client_connections"): (1, True, None),
    (Config, "client_login_timeout"): (0, False, None),
    (Config, "max_message_size"): (1, True, None),
    (Config, "shutdown_timeout"): (0, True, None),
    (UserConfig, "pool_size"): (1, True, None),
    (NodeConfig, "port"): (1, True, 65535),
    (NodeConfig, "weight"): (0, True, None),
    (PoolConfig, "size"): (1, True, None),
    (PoolConfig, "min_size"): (0, True, None),
    (PoolConfig, "acquire_timeout"): (0, False, None),
    (PoolConfig, "idle_timeout"): (0, True, None),
    (PoolConfig, "max_lifetime"): (0, True, None),
    (PoolConfig, "connect_timeout"): (0, False, None),
    (PoolConfig, "prepared_statements_per_server"): (1, True, None),
    (PoolConfig, "reserve_pool_timeout"): (0, True, None),
    (PoolConfig, "server_check_delay"): (0, True, None),
    (PoolConfig, "query_timeout"): (0, True, None),
    (PoolConfig, "idle_transaction_timeout"): (0, True, None),
    (PoolConfig, "client_idle_timeout"): (0, True, None),
    (PoolConfig, "max_db_connections"): (0, True, None),
    (PoolConfig, "max_user_connections"): (0, True, None),
    (UserConfig, "max_user_connections"): (0, True, None),
    (DatabaseConfig, "pool_size"): (1, True, None),
    (DatabaseConfig, "min_pool_size"): (0, True, None),
    (DatabaseConfig, "reserve_pool_size"): (0, True, None),
    (DatabaseConfig, "max_db_connections"): (0, True, None),
    (RoutingConfig, "max_lag_bytes"): (0, True, None),
    (RoutingConfig, "max_lag_ms"): (0, True, None),
    (RoutingConfig, "read_your_writes_ms"): (0, True, None),
    (RoutingConfig, "classify_cache_size"): (1, True, None),
    (RoutingConfig, "function_cache_ttl"): (0, True, None),
    (HealthConfig, "lag_interval"): (0, False, None),
    (PoolConfig, "max_pools"): (1, True, None),
    (HealthConfig, "interval"): (0, False, None),
    (HealthConfig, "timeout"): (0, False, None),
    (HealthConfig, "failures_before_down"): (1, True, None),
    (HealthConfig, "successes_before_up"): (1, True, None),
    (FailoverConfig, "primary_down_for"): (0, True, None),
    (FailoverConfig, "write_timeout"): (0, True, None),
    (FailoverConfig, "replay_max_bytes"): (0, True, None),
    (FailoverConfig, "switchover_drain"): (0, True, None),
    (AuthConfig, "auth_query_ttl"): (0, True, None),
    (PluginsConfig, "max_plugins"): (0, True, None),
    (PluginsConfig, "disable_after"): (1, True, None),
    (PluginsConfig, "poll_interval"): (0, False, None),
    (PluginsConfig, "debounce"): (0, True, None),
    (PluginsConfig, "kv_max_keys"): (0, True, None),
    (PluginsConfig, "kv_max_value_bytes"): (1, True, None),
    (PluginsConfig, "max_events"): (1, True, None),
    (PluginLimits, "memory"): (65536, True, None),
    (PluginLimits, "fuel"): (1, True, None),
    (PluginLimits, "timeout_ms"): (0, False, None),
    (Config, "max_login_connections"): (1, True, None),
    (Config, "max_login_connections_per_ip"): (1, True, None),
    (Config, "max_client_buffer"): (65536, True, None),
    # issue 15: limits and circuit_breaker
    (LimitConfig, "rate"): (0, False, None),
    (LimitConfig, "burst"): (1, True, None),
    (LimitConfig, "concurrency"): (1, True, None),
    (LimitConfig, "max_wait"): (0, True, None),
    (BreakerConfig, "failures"): (1, True, None),
    (BreakerConfig, "window"): (0, False, None),
    (BreakerConfig, "open_for"): (0, False, None),
}

# --- issue 15 §4, §5: mirror and analytics ---
_SIZE_FIELDS = _SIZE_FIELDS | {(MirrorConfig, "max_result")}
_NONEMPTY = _NONEMPTY | {(MirrorConfig, "node"), (SlowLogConfig, "file")}
_RANGES.update(
    {
        (MirrorConfig, "sample"): (0, False, 1),
        (MirrorConfig, "queue"): (1, True, None),
        (MirrorConfig, "concurrency"): (1, True, None),
        (MirrorConfig, "timeout"): (0, False, None),
        (MirrorConfig, "slower_ratio"): (1, True, None),
        (MirrorConfig, "max_result"): (0, True, None),
        (MirrorConfig, "recent"): (1, True, None),
        (AnalyticsConfig, "max_fingerprints"): (1, True, None),
        (AnalyticsConfig, "max_events"): (1, True, None),
        (SlowLogConfig, "threshold"): (0, True, None),
        (NPlusOneConfig, "threshold"): (2, True, None),
        (NPlusOneConfig, "window"): (0, False, None),
        (BurstConfig, "threshold"): (2, True, None),
        (BurstConfig, "window"): (0, False, None),
    }
)


def _check_traffic(parser: _Parser, config: Config) -> None:
    """mirror.node names a node with role shadow; shadow nodes serve no branch."""
    m = config.mirror
    if m is not None:
        node = config.node(m.node)
        key = "mirror.node"
        if node is None:
            known = ", ".join(n.name for n in config.nodes)
            parser.fail(parser.line_of(key), key, f"unknown node {m.node!r} (nodes: {known})")
        elif node.role is not Role.SHADOW:
            parser.fail(parser.line_of(key), key,
                        f"node {m.node!r} has role {node.role.value}; a mirror target needs role: shadow")
    for b in config.branches:
        bn = config.node(b.node)
        if bn is not None and bn.role is Role.SHADOW:
            key = f"branches.{b.name}.node"
            parser.fail(parser.line_of(key), key, f"node {b.node!r} is a shadow node (it takes no client statements)")


# --- end of issue 15 block ---

# ---- result cache (issue 15 part 1)
_SIZE_FIELDS = _SIZE_FIELDS | {(CacheConfig, "max_memory"), (CacheConfig, "max_result")}
_NONEMPTY = _NONEMPTY | {(CacheWalUser, "name"), (CacheConfig, "wal_database")}
_RANGES.update(
    {
        (CacheConfig, "max_memory"): (1, True, None),
        (CacheConfig, "max_result"): (1, True, None),
        (CacheConfig, "default_ttl"): (0, False, None),
        (CacheRule, "ttl"): (0, False, None),
    }
)

_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(us|ms|s|m|h|d)")
_NUMBER_TEXT = re.compile(r"^\s*-?(?:\d+(?:\.\d+)?|\.\d+)\s*$")
_DURATION_TEXT = re.compile(r"^(?:\s*(?:\d+(?:\.\d+)?|\.\d+)\s*(?:us|ms|s|m|h|d))+\s*$")

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$")

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Recorded(Exception):
    """A part of the file is unusable and its errors are already in _Parser.errors: skip that part."""


class _Bad(Exception):
    """A value problem found below the walker; the walker adds file, line and key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- scalars


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _duration(value: object, unit: float) -> float:
    """Seconds (or milliseconds when unit=1e-3) from a number in that unit or a `500ms` string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"expected a duration like 500ms, 1s, 10m or a number, got {_describe(value)}")
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        value = float(value)  # "1.5" (e.g. from ${VAR}): a number in the field's unit
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Bad(f"bad duration {value!r}: not a finite number")
        return float(value)
    if not _DURATION_TEXT.match(value):
        raise _Bad(
            f"bad duration {value!r} (use a number or a number with a unit: us, ms, s, m, h, d;"
            " e.g. 500ms, 1s, 1m30s)"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    if not math.isfinite(seconds):
        raise _Bad(f"bad duration {value!r}: too large")
    return seconds / unit


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad(
            f"expected a size like 64MiB, 512kB or a number of bytes, got {_describe(value)}"
        )
    if isinstance(value, int):
        return value
    m = _SIZE_TEXT.match(value)
    factor = _SIZE_UNITS.get(m.group(2).lower() if m and m.group(2) else "b") if m else None
    if m is None or factor is None:
        raise _Bad(
            f"bad size {value!r} (use a number of bytes or a number with a unit: B, kB, MB, GB, TB,"
            " KiB, MiB, GiB, TiB; e.g. 64MiB)"
        )
    number = Fraction(m.group(1)) * factor
    if number.denominator != 1:
        raise _Bad(f"bad size {value!r}: not a whole number of bytes")
    return int(number)


def parse_duration(
    value: object, where: str, *, file: str = "<config>", line: int | None = None
) -> float:
    """Seconds from `500ms`, `1s`, `10m`, `1h`, `2d`, `1m30s` or a plain number of seconds.

    `where` is the key named in the ConfigError raised for a bad value.
    """
    try:
        return _duration(value, 1.0)
    except _Bad as exc:
        raise ConfigError(file, line, where, exc.reason) from None


def parse_size(
    value: object, where: str, *, file: str = "<config>", line: int | None = None
) -> int:
    """Bytes from an int or `64MiB`, `64MB`, `512kB`, `1GiB` (kB, MB: 1000^n; KiB, MiB: 1024^n).

    `where` is the key named in the ConfigError raised for a bad value.
    """
    try:
        return _size(value)
    except _Bad as exc:
        raise ConfigError(file, line, where, exc.reason) from None


# --------------------------------------------------------------------------- the walker


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar"


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.loader: yaml.SafeLoader
        self.lines: dict[str, int] = {}
        self.written: dict[str, str] = {}  # scalar values as written (SHOW CONFIG), by key path
        self.errors: list[ConfigError] = []  # every problem found, reported together
        self.checking = False  # cross-field checks: fail() records and goes on

    # ---- errors

    def record(self, exc: ConfigError | _Recorded) -> None:
        if isinstance(exc, ConfigError):
            self.errors.append(exc)

    def fail(self, node: yaml.Node | int | None, key: str, reason: str) -> NoReturn:
        if isinstance(node, yaml.Node):
            line: int | None = node.start_mark.line + 1
        else:
            line = node
        error = ConfigError(self.source, line, key, reason)
        if self.checking:  # the checks only read a built Config: record the problem and go on
            self.errors.append(error)
            return  # type: ignore[misc]
        raise error

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)

    # ---- entry

    def parse(self) -> Config:
        try:
            self.loader = yaml.SafeLoader(self.text)
            try:
                root = self.loader.get_single_node()
            finally:
                self.loader.dispose()
        except yaml.reader.ReaderError as exc:
            at = self.text.count("\n", 0, exc.position) + 1
            raise ConfigError(self.source, at, "", f"invalid YAML: {exc.reason}") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigError(self.source, line, "", f"invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.source, None, "", f"invalid YAML: {exc}") from None
        if root is None:
            self.fail(1, "", "the config is empty; it must be a mapping with at least `nodes`")
        if not isinstance(root, yaml.MappingNode):
            self.fail(root, "", f"the top level must be a mapping of keys, got {_node_kind(root)}")
        try:
            config: Config = self.build(Config, root, "")
        except _Recorded:
            raise ConfigErrors(self.errors) from None
        if self.errors:
            raise ConfigErrors(self.errors)
        config = dataclasses.replace(config, source=self.source, written=tuple(sorted(self.written.items())))
        self.checking = True
        self.check(config, root)
        self.checking = False
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)
        return config

    # ---- scalars

    def substitute(self, text: str, node: yaml.Node, key: str) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name)
            if default is not None and not value:
                return default
            if value is None:
                self.fail(
                    node,
                    key,
                    f"environment variable {name} is not set"
                    f" (write ${{{name}:-default}} to give a default)",
                )
            return value

        result = _ENV_REF.sub(repl, text)
        leftover = _ENV_REF.sub("", text)
        if "${" in leftover:
            self.fail(
                node,
                key,
                "bad variable reference: write ${NAME} or ${NAME:-default} ($${ for a literal ${)",
            )
        return result

    def scalar(self, node: yaml.Node, key: str) -> object:
        if isinstance(node, yaml.MappingNode):
            return {}
        if isinstance(node, yaml.SequenceNode):
            return []
        assert isinstance(node, yaml.ScalarNode)
        tag, value = node.tag, node.value
        if tag == _STR_TAG and "${" in value:
            value = self.substitute(value, node, key)
            if node.style is None:  # plain scalar: `port: ${PORT}` becomes an integer
                tag = self.loader.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, value, (True, False)
                )
        new = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, style=node.style)
        try:
            return self.loader.construct_object(new, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.fail(node, key, f"bad value: {problem}")
        except ValueError as exc:
            self.fail(node, key, f"bad value: {exc}")

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG

    # ---- mappings

    def pairs(
        self, node: yaml.MappingNode, path: str, merging: frozenset[int] = frozenset()
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) with merge keys (`<<: *base`) applied; duplicates fail."""
        explicit: list[tuple[str, yaml.Node, yaml.Node]] = []
        merged: list[tuple[str, yaml.Node, yaml.Node]] = []
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        self.fail(src, _join(path, "<<"), "a merge key needs a mapping or a list")
                    if id(src) in merging or src is node:
                        self.fail(src, _join(path, "<<"), "a merge key refers to itself")
                    merged.extend(self.pairs(src, path, merging | {id(node)}))
                continue
            key = self.scalar(knode, path)
            if not isinstance(key, str):
                self.fail(knode, path, f"keys must be strings, got {_describe(key)}")
            explicit.append((key, knode, vnode))
        seen: dict[str, yaml.Node] = {}
        for key, knode, _ in explicit:
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.fail(knode, _join(path, key), f"duplicate key (first given at line {first})")
            seen[key] = knode
        result: list[tuple[str, yaml.Node, yaml.Node]] = []
        for key, knode, vnode in merged:
            if key not in seen:
                seen[key] = knode
                result.append((key, knode, vnode))
        return result + explicit

    def build(self, cls: type[Any], node: yaml.Node, path: str, **preset: Any) -> Any:
        if self.is_null(node):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, f"expected a mapping, got {_describe(self.scalar(node, path))}")
        hints = get_type_hints(cls)
        fields = {
            f.name: f
            for f in dataclasses.fields(cls)
            if f.name not in preset and not (cls is Config and f.name in ("source", "written"))
        }
        kwargs: dict[str, Any] = dict(preset)
        broken = False
        for key, knode, vnode in self.pairs(node, path):
            alias = _ALIASES.get((cls, key))
            if alias is not None or (cls, key) in _ALIASED:
                name = alias or key
                if name in kwargs:
                    self.fail(knode, _join(path, key), f"{name} is given twice (also as its PgBouncer name)")
                key = name
            sub = _join(path, key)
            try:  # a bad key is recorded and skipped: the rest of the file is still checked
                if key not in fields:
                    self.fail(knode, sub, self.unknown_key_reason(key, fields))
                self.lines[sub] = vnode.start_mark.line + 1
                kwargs[key] = self.convert(cls, key, hints[key], vnode, sub)
            except (ConfigError, _Recorded) as exc:
                self.record(exc)
                broken = True
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and name not in kwargs:
                if not broken:
                    self.record(ConfigError(self.source, node.start_mark.line + 1, _join(path, name),
                                            "required key is missing"))
                raise _Recorded()
        return cls(**kwargs)

    @staticmethod
    def unknown_key_reason(key: str, fields: dict[str, Any]) -> str:
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key (known keys: {', '.join(sorted(fields))})"

    # ---- values

    def convert(self, owner: type, name: str, tp: Any, node: yaml.Node, path: str) -> Any:
        if owner is Config and name == "branches":
            return self.named(BranchConfig, "{node, database}", node, path)
        if owner is Config and name == "databases":
            return self.named(DatabaseConfig, "{database, route, pool_mode, ...}", node, path)
        if owner is Config and name == "workers":
            raw = self.scalar(node, path)
            if raw == "auto":
                self.written[path] = "auto"
                return os.cpu_count() or 1
        base, optional = _unwrap_optional(tp)
        if optional and self.is_null(node):
            return None
        if get_origin(base) is tuple:
            (item_tp, _) = get_args(base)
            return self.sequence(owner, name, item_tp, node, path)
        if dataclasses.is_dataclass(base):
            return self.build(base, node, path)  # type: ignore[arg-type]
        raw = self.scalar(node, path)
        if optional and raw is None:  # e.g. `token: ${TOKEN:-}` with TOKEN unset
            return None
        if isinstance(node, yaml.ScalarNode) and name not in _SECRETS:
            self.written[path] = node.value if "${" not in node.value else str(raw)
        try:
            value = self.typed(owner, name, base, raw)
        except _Bad as exc:
            self.fail(node, path, exc.reason)
        self.check_range(owner, name, value, node, path)
        return value

    def typed(self, owner: type, name: str, tp: Any, raw: object) -> Any:
        if owner is LogConfig and name in ("level", "format"):
            choices = LOG_LEVELS if name == "level" else LOG_FORMATS
            if not isinstance(raw, str) or raw.lower() not in choices:
                shown = repr(raw) if isinstance(raw, str) else _describe(raw)
                raise _Bad(f"{shown} is not one of {', '.join(choices)}")
            return raw.lower()
        if tp is bool:
            if not isinstance(raw, bool):
                raise _Bad(f"expected true or false, got {_describe(raw)}")
            return raw
        if tp is int:
            if (owner, name) in _SIZE_FIELDS:
                return _size(raw)
            if isinstance(raw, bool) or not isinstance(raw, int):
                if owner is Config and name == "workers":
                    raise _Bad(f"expected an integer or auto, got {_describe(raw)}")
                raise _Bad(f"expected an integer, got {_describe(raw)}")
            return raw
        if owner is LimitConfig and name == "rate" and (isinstance(raw, bool) or not isinstance(raw, int | float)):
            raise _Bad(f"expected a number of statements per second, got {_describe(raw)}")
        if tp is float:
            return _duration(raw, 1e-3 if name.endswith("_ms") else 1.0)
        if tp is str:
            if not isinstance(raw, str):
                hint = " (quote it)" if isinstance(raw, int | float | bool) else ""
                got = _describe(raw)
                if name in _SECRETS:  # never echo a password or token
                    got = got.split(" ")[0] if raw is not None else got
                raise _Bad(f"expected a string, got {got}{hint}")
            if (owner, name) in _NONEMPTY and not raw.strip():
                raise _Bad("must not be empty")
            return raw
        if isinstance(tp, type) and issubclass(tp, Enum):
            allowed = [str(m.value) for m in tp]
            if not isinstance(raw, str) or raw not in allowed:
                shown = repr(raw) if isinstance(raw, str) else _describe(raw)
                raise _Bad(f"{shown} is not one of {', '.join(allowed)}")
            return tp(raw)
        raise AssertionError(f"unsupported field type {tp!r} for {owner.__name__}.{name}")

    def check_range(self, owner: type, name: str, value: Any, node: yaml.Node, path: str) -> None:
        spec = _RANGES.get((owner, name))
        if spec is None or value is None:
            return
        low, inclusive, high = spec
        written = isinstance(node, yaml.ScalarNode) and "${" not in node.value
        shown = node.value if written else value  # as written, or the substituted value
        if high is not None and not (low <= value <= high):
            self.fail(node, path, f"must be between {low} and {high}, got {shown}")
        if inclusive and value < low:
            self.fail(node, path, f"must be >= {low}, got {shown}")
        if not inclusive and value <= low:
            self.fail(node, path, f"must be > {low}, got {shown}")

    def sequence(self, owner: type, name: str, item_tp: Any, node: yaml.Node, path: str) -> Any:
        if self.is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, f"expected a list, got {_describe(self.scalar(node, path))}")
        items: list[Any] = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            self.lines[sub] = item.start_mark.line + 1
            if dataclasses.is_dataclass(item_tp):
                try:
                    items.append(self.build(item_tp, item, sub))  # type: ignore[arg-type]
                except (ConfigError, _Recorded) as exc:
                    self.record(exc)
                continue
            raw = self.scalar(item, sub)
            if not isinstance(raw, str) or not raw.strip():
                self.fail(item, sub, f"expected a name (a non-empty string), got {_describe(raw)}")
            items.append(raw.strip().lower() if name in ("write_functions", "no_replay_functions") else raw)
        return tuple(items)

    def named(self, cls: type[Any], shape: str, node: yaml.Node, path: str) -> tuple[Any, ...]:
        """A mapping of NAME -> {fields} (branches:, databases:) as a tuple of cls(name=NAME, ...)."""
        what = "branch" if cls is BranchConfig else "database"
        if self.is_null(node):
            return ()
        if not isinstance(node, yaml.MappingNode):
            self.fail(
                node,
                path,
                f"expected a mapping of {what} name -> {shape}, got {_describe(self.scalar(node, path))}",
            )
        result: list[Any] = []
        for key, knode, vnode in self.pairs(node, path):
            sub = _join(path, key)
            if not key.strip():
                self.fail(knode, path, f"a {what} name must not be empty")
            self.lines[sub] = knode.start_mark.line + 1
            try:
                result.append(self.build(cls, vnode, sub, name=key))
            except (ConfigError, _Recorded) as exc:
                self.record(exc)
        return tuple(result)

    # ---- cross-field checks

    def check(self, config: Config, root: yaml.MappingNode) -> None:
        top = root.start_mark.line + 1
        if not config.nodes:
            self.fail(self.line_of("nodes") or top, "nodes", "at least one node is required")
            return  # (the checks below would only repeat it)

        seen: dict[str, int] = {}
        for i, n in enumerate(config.nodes):
            key = f"nodes[{i}].name"
            if n.name in seen:
                reason = f"duplicate node name {n.name!r} (nodes[{seen[n.name]}])"
                self.fail(self.line_of(key), key, reason)
            seen[n.name] = i
        primaries = [i for i, n in enumerate(config.nodes) if n.role is Role.PRIMARY]
        if not primaries:
            self.fail(
                self.line_of("nodes"), "nodes", "no node has role primary (exactly one is required)"
            )
        if len(primaries) > 1:
            first, second = primaries[0], primaries[1]
            key = f"nodes[{second}].role"
            self.fail(
                self.line_of(key),
                key,
                f"more than one node has role primary ({config.nodes[first].name!r} and"
                f" {config.nodes[second].name!r}); exactly one is required",
            )

        users: dict[str, int] = {}
        for i, u in enumerate(config.users):
            key = f"users[{i}].name"
            if u.name in users:
                reason = f"duplicate user name {u.name!r} (users[{users[u.name]}])"
                self.fail(self.line_of(key), key, reason)
            users[u.name] = i
            if config.auth.method is not AuthMethod.TRUST and u.password is None and config.auth.auth_user is None:
                self.fail(
                    self.line_of(f"users[{i}]"),
                    f"users[{i}].password",
                    f"user {u.name!r} needs a password when auth.method is"
                    f" {config.auth.method.value}",
                )
        self.check_secrets(config)

        for b in config.branches:
            key = f"branches.{b.name}.node"
            if config.node(b.node) is None:
                known = ", ".join(n.name for n in config.nodes)
                self.fail(self.line_of(key), key, f"unknown node {b.node!r} (nodes: {known})")

        for i, name in enumerate(config.admin.users):
            key = f"admin.users[{i}]"
            if name not in users:
                self.fail(self.line_of(key), key, f"unknown user {name!r} (not listed in users)")

        self.check_listen(config.listen, "listen", top)
        if config.admin.listen is not None:
            self.check_listen(config.admin.listen, "admin.listen", top)
        if config.admin.metrics_auth and not config.admin.token:
            key = "admin.metrics_auth"
            self.fail(self.line_of(key) or top, key, "needs admin.token (the token /metrics will ask for)")

        self.check_tls(config, top)
        _check_traffic(self, config)

        self.check_limits(config)
        self.check_cache(config, top)

        if config.pool.min_size > config.pool.size:
            self.fail(
                self.line_of("pool.min_size"),
                "pool.min_size",
                f"must be <= pool.size ({config.pool.size}), got {config.pool.min_size}",
            )

    def check_limits(self, config: Config) -> None:
        """limits: (issue 15 §2): unique names; each limits something; burst goes with rate."""
        names: dict[str, int] = {}
        for i, lim in enumerate(config.limits):
            key = f"limits[{i}]"
            if lim.name in names:
                self.fail(self.line_of(f"{key}.name"), f"{key}.name",
                          f"duplicate limit name {lim.name!r} (limits[{names[lim.name]}])")
            names[lim.name] = i
            if lim.rate is None and lim.concurrency is None:
                self.fail(self.line_of(key), key, "needs rate or concurrency (or both)")
            if lim.burst is not None and lim.rate is None:
                self.fail(self.line_of(f"{key}.burst"), f"{key}.burst", "needs rate (burst is the bucket of rate)")
    def check_cache(self, config: Config, top: int) -> None:
        """cache: rules name tables; invalidation: wal needs wal_user."""
        cache = config.cache
        for i, rule in enumerate(cache.rules):
            key = f"cache.rules[{i}].tables"
            if not rule.tables or any(not t.strip() for t in rule.tables):
                self.fail(self.line_of(key) or self.line_of(f"cache.rules[{i}]") or top, key,
                          "a rule needs a non-empty list of table names")
        if cache.invalidation is CacheInvalidation.WAL and cache.wal_user is None:
            key = "cache.invalidation"
            self.fail(self.line_of(key) or top, key,
                      "wal needs cache.wal_user: {name, password} (a user with the REPLICATION attribute)")

    def check_secrets(self, config: Config) -> None:
        """Hashed secrets (SCRAM verifiers, md5 hashes), auth_user and health.password fit together."""
        creds: dict[str, Credential] = {}
        for i, u in enumerate(config.users):
            if u.password is None:
                continue
            key = f"users[{i}].password"
            try:
                cred = creds[u.name] = Credential.parse(u.password)
            except ValueError as exc:
                self.fail(
                    self.line_of(key),
                    key,
                    f"{exc} (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> as in pg_authid)",
                )
                continue  # recorded (check-config reports every error)
            if cred.md5 is not None and config.auth.method is AuthMethod.SCRAM:
                self.fail(
                    self.line_of(key),
                    key,
                    f"user {u.name!r} has an md5 hash, which cannot verify SCRAM-SHA-256 clients;"
                    " give the SCRAM-SHA-256 verifier from pg_authid or set auth.method: md5",
                )
        au = config.auth.auth_user
        if au is not None and au.password is not None:
            key = "auth.auth_user.password"
            try:
                if Credential.parse(au.password).scram is not None:
                    self.fail(
                        self.line_of(key),
                        key,
                        "must be a plaintext password or an md5 hash: the proxy logs in as auth_user"
                        " on its own, without a client whose SCRAM proof it could pass through",
                    )
            except ValueError as exc:
                self.fail(self.line_of(key), key, str(exc))
        h = config.health
        if h.password is not None and h.user is None:
            self.fail(self.line_of("health.password"), "health.password", "needs health.user (the user it belongs to)")
        if h.password is None and h.user is not None:
            hcred = creds.get(h.user)
            if hcred is not None and hcred.scram is not None:
                self.fail(
                    self.line_of("health.user"),
                    "health.user",
                    f"user {h.user!r} has only a SCRAM verifier, which cannot log in without a client;"
                    " set health.password (plaintext or ${VAR})",
                )

    def check_tls(self, config: Config, top: int) -> None:
        """tls: and server_tls:/nodes[].tls_*: versions, needed files, files readable."""
        tls = config.tls
        if tls.min_version not in ("TLSv1.2", "TLSv1.3"):
            self.fail(self.line_of("tls.min_version"), "tls.min_version",
                      f"{tls.min_version!r} is not one of TLSv1.2, TLSv1.3")
        if tls.mode is not TlsMode.DISABLE:
            for name in ("cert", "key"):
                if getattr(tls, name) is None:
                    self.fail(self.line_of("tls") or top, f"tls.{name}",
                              f"required when tls.mode is {tls.mode.value}")
            if tls.client_certs.value != "none" and tls.ca is None:
                self.fail(self.line_of("tls.client_certs"), "tls.ca",
                          f"required when tls.client_certs is {tls.client_certs.value}")
        files: list[tuple[str, str | None]] = []
        if tls.mode is not TlsMode.DISABLE:
            files += [(f"tls.{n}", getattr(tls, n)) for n in ("cert", "key", "ca")]
        st = config.server_tls
        files += [(f"server_tls.{n}", getattr(st, n)) for n in ("tls_ca", "tls_cert", "tls_key")]
        for i, n in enumerate(config.nodes):
            files += [(f"nodes[{i}].{k}", getattr(n, k)) for k in ("tls_ca", "tls_cert", "tls_key")]
            mode = n.tls or st.tls
            has_cert, has_key = (n.tls_cert or st.tls_cert) is not None, (n.tls_key or st.tls_key) is not None
            if mode is not ServerTlsMode.DISABLE and has_cert != has_key:
                self.fail(self.line_of(f"nodes[{i}]"), f"nodes[{i}].tls_key",
                          "tls_cert and tls_key go together (a client certificate needs its key)")
        for key, path in files:
            if path is not None and not os.access(path, os.R_OK):
                self.fail(self.line_of(key) or top, key, f"cannot read {path!r}")

    def check_listen(self, value: str, key: str, default_line: int) -> None:
        line = self.line_of(key) or default_line
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            self.fail(
                line,
                key,
                f"expected host:port (e.g. 127.0.0.1:6432 or [::1]:6432; port 0..65535),"
                f" got {value!r}",
            )


def parse_config(text: str, source: str) -> Config:
    """Build a Config from YAML text; `source` names the file in error messages."""
    return _Parser(text, source).parse()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError (`file:line: key: reason`)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(source, None, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, "", f"cannot read: not UTF-8 text ({exc.reason})") from None
    return parse_config(text, source)


def load_yaml_file(path: str | os.PathLike[str]) -> Any:
    """Any YAML document (safe types only), for other readers such as plugin manifests.

    OSError propagates; bad YAML raises ConfigError (`file:line: invalid YAML: problem`).
    """
    source = os.fspath(path)
    with open(source, encoding="utf-8") as f:
        text = f.read()
    return parse_yaml_text(text, source)


def parse_yaml_text(text: str | bytes, source: str) -> Any:
    """Any YAML document (safe types only) from text already read, e.g. bytes whose signature was checked.

    Bad YAML raises ConfigError (`source:line: invalid YAML: problem`).
    """
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(source, line, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, "", f"invalid YAML: {exc}") from None
