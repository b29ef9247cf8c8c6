"""Typed plugin hook declarations (seed names): hook types, contexts, results, JSON codecs."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring as _str  # the C escaper json itself uses (ensure_ascii=False)
from typing import Any

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _opt(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _attrs_json(attrs: dict[str, str]) -> str:
    """`attrs` as compact JSON, byte for byte what json.dumps gives: a str -> str map is joined directly
    (the generic encoder builds an encoder object per call: 3x the cost for the usual one or two keys)."""
    if not attrs:
        return "{}"
    parts: list[str] = []
    for k, v in attrs.items():
        if type(k) is not str or type(v) is not str:
            return _encode(attrs)
        parts.append(f"{_str(k)}:{_str(v)}")
    return "{" + ",".join(parts) + "}"


class HookType(StrEnum):
    """A hook a plugin may implement; the value is the wasm export name (ABI v1)."""

    PRE_QUERY = "pre_query"
    POST_QUERY = "post_query"
    AUTHENTICATE = "authenticate"
    AUTHORIZE = "authorize"
    CACHE_GET = "cache_get"
    CACHE_SET = "cache_set"
    ROUTE = "route"
    REWRITE = "rewrite"
    METRICS = "metrics"
    ON_CONNECT = "on_connect"
    ON_DISCONNECT = "on_disconnect"
    CUSTOM = "custom_hook"
    POST_AUTH = "post_auth"  # observer: the outcome of every client login (success or failure)

    def export_name(self) -> str:
        return self.value

    @classmethod
    def from_str(cls, text: str) -> HookType | None:
        """Manifest spelling (with the seed's aliases) -> HookType, or None when unknown."""
        return _HOOK_ALIASES.get(text.strip().lower())

    @property
    def is_observer(self) -> bool:
        return self in _OBSERVERS


_HOOK_ALIASES: dict[str, HookType] = {
    "pre_query": HookType.PRE_QUERY,
    "prequery": HookType.PRE_QUERY,
    "post_query": HookType.POST_QUERY,
    "postquery": HookType.POST_QUERY,
    "authenticate": HookType.AUTHENTICATE,
    "auth": HookType.AUTHENTICATE,
    "authorize": HookType.AUTHORIZE,
    "cache_get": HookType.CACHE_GET,
    "cacheget": HookType.CACHE_GET,
    "cache_set": HookType.CACHE_SET,
    "cacheset": HookType.CACHE_SET,
    "route": HookType.ROUTE,
    "routing": HookType.ROUTE,
    "rewrite": HookType.REWRITE,
    "metrics": HookType.METRICS,
    "on_connect": HookType.ON_CONNECT,
    "connect": HookType.ON_CONNECT,
    "on_disconnect": HookType.ON_DISCONNECT,
    "disconnect": HookType.ON_DISCONNECT,
    "custom": HookType.CUSTOM,
    "custom_hook": HookType.CUSTOM,
    "post_auth": HookType.POST_AUTH,
    "postauth": HookType.POST_AUTH,
}
_OBSERVERS = frozenset(
    {HookType.POST_QUERY, HookType.ON_CONNECT, HookType.ON_DISCONNECT, HookType.METRICS, HookType.POST_AUTH}
)


class PluginError(Exception):
    """One failed hook call (trap, timeout, out of fuel, bad JSON, bad pointer, wrong shape)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class PluginLoadError(Exception):
    """A plugin that cannot be loaded (bad manifest, ABI, import, signature, instantiation)."""


# ---------------------------------------------------------------------------------------------
# Contexts


@dataclass(slots=True)
class HookContext:
    request_id: str = ""
    client_id: str | None = None
    identity: str | None = None
    database: str | None = None
    branch: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    _tail: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "client_id": self.client_id,
            "identity": self.identity,
            "database": self.database,
            "branch": self.branch,
            "attributes": self.attributes,
        }

    def to_json(self) -> bytes:
        return self.json_text().encode()

    def json_text(self) -> str:
        """`to_dict()` as compact JSON text, byte for byte what json.dumps gives, built directly
        (a statement's context is encoded on the hot path; the generic encoder costs ~3x more)."""
        return (
            f'{{"request_id":{_str(self.request_id)},"client_id":{_opt(self.client_id)},'
            f'"identity":{_opt(self.identity)},"database":{_opt(self.database)},'
            f'"branch":{_opt(self.branch)},"attributes":{_attrs_json(self.attributes)}}}'
        )

    def tail_json(self) -> str:
        """The JSON text of `to_dict()` after its request_id member (`,"client_id":…}`), cached.

        For a session's one long-lived HookContext, whose statements each carry their own
        request_id (QueryContext.request_id): the cache holds until invalidate(), which the
        session calls whenever it changes a field or the attributes (SET helios.*)."""
        tail = self._tail
        if tail is None:
            tail = self._tail = (
                f',"client_id":{_opt(self.client_id)},"identity":{_opt(self.identity)},'
                f'"database":{_opt(self.database)},"branch":{_opt(self.branch)},'
                f'"attributes":{_attrs_json(self.attributes)}}}'
            )
        return tail

    def invalidate(self) -> None:
        """Forget the cached tail_json() (a field or an attribute changed)."""
        self._tail = None


@dataclass(slots=True)
class QueryContext:
    """One statement's context; its JSON is encoded once and shared by every hook and plugin.

    Two ways to give the hook context: a HookContext of the statement's own (its request_id is
    the statement's), or the session's shared HookContext plus `request_id`: then the JSON is
    this statement's request_id followed by the shared context's cached `tail_json()`, read when
    the JSON is first encoded (right away when a pre_query or route plugin runs)."""

    query: str
    normalized: str = ""
    tables: Sequence[str] = field(default_factory=list)
    is_read_only: bool = False
    hook_context: HookContext = field(default_factory=HookContext)
    request_id: str | None = None
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        hook = self.hook_context.to_dict()
        if self.request_id is not None:
            hook["request_id"] = self.request_id
        return {
            "query": self.query,
            "normalized": self.normalized,
            "tables": list(self.tables),
            "is_read_only": self.is_read_only,
            "hook_context": hook,
        }

    def to_json(self) -> bytes:
        """UTF-8 JSON of the context, cached: call invalidate() after changing a field."""
        data = self._json
        if data is None:
            tables = self.tables
            hc = self.hook_context
            rid = self.request_id
            if rid is None:
                hook = (
                    f'{{"request_id":{_str(hc.request_id)},"client_id":{_opt(hc.client_id)},'
                    f'"identity":{_opt(hc.identity)},"database":{_opt(hc.database)},'
                    f'"branch":{_opt(hc.branch)},"attributes":{_attrs_json(hc.attributes)}}}'
                )
            else:
                hook = f'{{"request_id":{_str(rid)}{hc.tail_json()}'
            data = self._json = (
                f'{{"query":{_str(self.query)},"normalized":{_str(self.normalized)},'
                f'"tables":[{",".join(map(_str, tables)) if tables else ""}],'
                f'"is_read_only":{"true" if self.is_read_only else "false"},'
                f'"hook_context":{hook}}}'
            ).encode()
        return data

    def invalidate(self) -> None:
        self._json = None


@dataclass(frozen=True, slots=True)
class PostQueryOutcome:
    success: bool
    target_node: str | None = None
    elapsed_us: int = 0
    response_bytes: int = 0
    error: str | None = None

    def to_json(self) -> bytes:
        """Encoded when the observer call is queued, right after the client's ReadyForQuery: `at_ms` (Unix
        milliseconds) is then, so an observer needs no clock call per statement."""
        return _encode(
            {
                "success": self.success,
                "target_node": self.target_node,
                "elapsed_us": self.elapsed_us,
                "response_bytes": self.response_bytes,
                "error": self.error,
                "at_ms": int(time.time() * 1000),
            }
        ).encode()


def auth_request_json(hook: HookContext, user: str, database: str, client_addr: str, password: str | None) -> bytes:
    """The authenticate/authorize input document (ABI v1)."""
    return _encode(
        {
            "user": user,
            "database": database,
            "client_addr": client_addr,
            "password": password,
            "hook_context": hook.to_dict(),
        }
    ).encode()


def auth_outcome_json(
    hook: HookContext,
    user: str,
    database: str,
    client_addr: str,
    success: bool,
    sqlstate: str | None,
    reason: str | None,
) -> bytes:
    """The post_auth input document (ABI v1 observer): a login's outcome, never its password."""
    return _encode(
        {
            "user": user,
            "database": database,
            "client_addr": client_addr,
            "success": success,
            "sqlstate": sqlstate,
            "reason": reason,
            "hook_context": hook.to_dict(),
        }
    ).encode()


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Continue:
    pass


@dataclass(frozen=True, slots=True)
class Rewrite:
    query: str


@dataclass(frozen=True, slots=True)
class Block:
    reason: str


@dataclass(frozen=True, slots=True)
class Cached:
    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]


PreQueryResult = Continue | Rewrite | Block | Cached
CONTINUE = Continue()


@dataclass(frozen=True, slots=True)
class RouteDefault:
    pass


@dataclass(frozen=True, slots=True)
class RoutePrimary:
    pass


@dataclass(frozen=True, slots=True)
class RouteStandby:
    pass


@dataclass(frozen=True, slots=True)
class RouteNode:
    name: str


@dataclass(frozen=True, slots=True)
class RouteBranch:
    name: str


@dataclass(frozen=True, slots=True)
class RouteBlock:
    reason: str


RouteResult = RouteDefault | RoutePrimary | RouteStandby | RouteNode | RouteBranch | RouteBlock
ROUTE_DEFAULT = RouteDefault()
ROUTE_PRIMARY = RoutePrimary()
ROUTE_STANDBY = RouteStandby()


@dataclass(frozen=True, slots=True)
class AuthSuccess:
    identity: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuthDenied:
    reason: str


@dataclass(frozen=True, slots=True)
class AuthDefer:
    pass


AuthResult = AuthSuccess | AuthDenied | AuthDefer
AUTH_DEFER = AuthDefer()

DEFAULT_BLOCK_REASON = "blocked by plugin"
_CONTINUE_JSON = b'{"action":"continue"}'  # the common answers skip json.loads
_DEFAULT_JSON = b'{"action":"default"}'
# Exact texts of the common answers (compact, and as Python's / JS's default spacing writes them).
_FAST_PRE_QUERY: dict[bytes, PreQueryResult] = {
    _CONTINUE_JSON: CONTINUE,
    b'{"action": "continue"}': CONTINUE,
}
_FAST_ROUTE: dict[bytes, RouteResult] = {
    _DEFAULT_JSON: ROUTE_DEFAULT,
    b'{"action": "default"}': ROUTE_DEFAULT,
    b'{"action":"primary"}': ROUTE_PRIMARY,
    b'{"action": "primary"}': ROUTE_PRIMARY,
    b'{"action":"standby"}': ROUTE_STANDBY,
    b'{"action": "standby"}': ROUTE_STANDBY,
}


def _load(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise PluginError("bad_json", f"result is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PluginError("bad_result", 'result must be a JSON object with an "action" key')
    action = doc.get("action")
    if not isinstance(action, str):
        raise PluginError("bad_result", 'result has no string "action"')
    return doc


def _text(doc: dict[str, Any], key: str, *, alt: str | None = None, default: str | None = None) -> str:
    value = doc.get(key)
    if value is None and alt is not None:
        value = doc.get(alt)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise PluginError("bad_result", f"action {doc['action']!r} needs a string {key!r}")
    return value


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return _encode(value)


def parse_pre_query(raw: bytes | None) -> PreQueryResult:
    if raw is None:
        return CONTINUE
    fast = _FAST_PRE_QUERY.get(raw)
    if fast is not None:
        return fast
    doc = _load(raw)
    action = doc["action"]
    if action == "continue":
        return CONTINUE
    if action == "rewrite":
        return Rewrite(_text(doc, "query"))
    if action == "block":
        return Block(_text(doc, "reason", default=DEFAULT_BLOCK_REASON))
    if action == "cached":
        columns = doc.get("columns")
        rows = doc.get("rows", [])
        if not isinstance(columns, list) or not isinstance(rows, list):
            raise PluginError("bad_result", 'cached needs "columns" and "rows" lists')
        names: list[str] = []
        for c in columns:
            if isinstance(c, dict):
                c = c.get("name")
            if not isinstance(c, str):
                raise PluginError("bad_result", "cached column names must be strings")
            names.append(c)
        out: list[tuple[str | None, ...]] = []
        for r in rows:
            if not isinstance(r, list) or len(r) != len(names):
                raise PluginError("bad_result", f"cached row must be a list of {len(names)} values")
            out.append(tuple(_cell(v) for v in r))
        return Cached(tuple(names), tuple(out))
    raise PluginError("bad_result", f"unknown pre_query action {action!r}")


def parse_route(raw: bytes | None) -> RouteResult:
    if raw is None:
        return ROUTE_DEFAULT
    fast = _FAST_ROUTE.get(raw)
    if fast is not None:
        return fast
    doc = _load(raw)
    action = doc["action"]
    if action == "default":
        return ROUTE_DEFAULT
    if action == "primary":
        return ROUTE_PRIMARY
    if action == "standby":
        return ROUTE_STANDBY
    if action == "node":
        return RouteNode(_text(doc, "name", alt="target"))
    if action == "branch":
        return RouteBranch(_text(doc, "name", alt="target"))
    if action == "block":
        return RouteBlock(_text(doc, "reason", default=DEFAULT_BLOCK_REASON))
    raise PluginError("bad_result", f"unknown route action {action!r}")


def parse_auth(raw: bytes | None) -> AuthResult:
    if raw is None:
        return AUTH_DEFER
    doc = _load(raw)
    action = doc["action"]
    if action == "defer":
        return AUTH_DEFER
    if action == "success":
        identity = doc.get("identity", {})
        if not isinstance(identity, dict):
            raise PluginError("bad_result", 'success needs an "identity" object')
        return AuthSuccess(identity)
    if action == "denied":
        return AuthDenied(_text(doc, "reason", alt="message", default="denied by plugin"))
    raise PluginError("bad_result", f"unknown authenticate action {action!r}")
