"""Routing hints from `/*helios:...*/` comments and validation of `SET helios.*` values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from heliosproxy.errors import HeliosError, UndefinedObject

__all__ = [
    "HELIOS_SETTINGS",
    "ROUTES",
    "Hints",
    "parse_duration_ms",
    "parse_helios_set",
    "parse_hints",
]

ROUTES: Final = frozenset({"primary", "standby", "auto"})
# Proxy-level settings a session may SET / RESET / SHOW.
HELIOS_SETTINGS: Final = ("helios.route", "helios.node", "helios.branch")
_MARKER: Final = "helios:"
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_UNITS: Final = (("ms", 1.0), ("s", 1000.0), ("min", 60_000.0), ("m", 60_000.0), ("h", 3_600_000.0))


@dataclass(frozen=True, slots=True)
class Hints:
    """Routing hints of one statement; a key that was absent or invalid is None.

    route: "primary" | "standby" | "auto"; node / branch: names (checked by the router, which
    answers 42704 for unknown ones); lag_ms: the largest acceptable standby replay lag;
    extra: any other key=value pairs, lowercased keys.
    """

    route: str | None = None
    node: str | None = None
    branch: str | None = None
    lag_ms: float | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)


def parse_duration_ms(text: str) -> float | None:
    """`500` (ms), `500ms`, `2s`, `1m`/`1min`, `1h` -> milliseconds; None if not a duration >= 0."""
    t = text.strip().lower()
    scale = 1.0
    for unit, factor in _UNITS:
        if t.endswith(unit) and unit != t:
            head = t[: -len(unit)].strip()
            if head and (head[-1].isdigit() or head[-1] == "."):
                t, scale = head, factor
                break
    try:
        value = float(t) * scale
    except ValueError:
        return None
    if value != value or value < 0 or value == float("inf"):
        return None
    return value


def _comment_bodies(sql: str) -> list[str]:
    """Bodies of the leading comments, then of the trailing block comments."""
    bodies: list[str] = []
    n = len(sql)
    i = 0
    while True:
        while i < n and sql[i].isspace():
            i += 1
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                break
            bodies.append(sql[i + 2 : end])
            i = end + 2
        elif sql.startswith("--", i):
            end = sql.find("\n", i + 2)
            bodies.append(sql[i + 2 : n if end < 0 else end])
            if end < 0:
                return bodies
            i = end + 1
        else:
            break
    lead_end = i
    j = n
    trailing: list[str] = []
    while True:
        while j > lead_end and (sql[j - 1].isspace() or sql[j - 1] == ";"):
            j -= 1
        if j - 2 >= lead_end and sql.startswith("*/", j - 2):
            start = sql.rfind("/*", lead_end, j - 2)
            if start < 0:
                break
            trailing.append(sql[start + 2 : j - 2])
            j = start
        else:
            break
    bodies.extend(reversed(trailing))
    return bodies


def parse_hints(sql: str) -> Hints | None:
    """Hints from leading/trailing `/*helios:k=v,...*/` (or leading `-- helios:...`) comments.

    Returns None when the text holds no hint comment (fast path: no "helios:" substring).
    Keys: route (primary|standby|auto, else ignored), node, branch, lag (ms, or with a unit:
    500ms, 2s, 1m, 1h); other keys land in `extra`. Later comments override earlier ones.
    """
    if _MARKER not in sql:
        return None
    route = node = branch = None
    lag: float | None = None
    extra: dict[str, str] = {}
    found = False
    for body in _comment_bodies(sql):
        text = body.strip()
        if not text.startswith(_MARKER):
            continue
        found = True
        for pair in text[len(_MARKER) :].split(","):
            key, sep, value = pair.partition("=")
            key = key.strip().lower()
            value = value.strip()
            if not sep or not key or not value:
                continue
            if key == "route":
                if value.lower() in ROUTES:
                    route = value.lower()
            elif key == "node":
                node = value
            elif key == "branch":
                branch = value
            elif key == "lag":
                ms = parse_duration_ms(value)
                if ms is not None:
                    lag = ms
            else:
                extra[key] = value
    if not found:
        return None
    return Hints(route, node, branch, lag, MappingProxyType(extra) if extra else _EMPTY)


def parse_helios_set(name: str, value: str | None) -> tuple[str, str | None]:
    """Validate one `SET`/`RESET helios.<key>` entry from StatementInfo.settings.

    Returns `(key, value)` with key one of route/node/branch and value None for RESET /
    DEFAULT. route values are lowercased and must be primary|standby|auto (22023 otherwise);
    an unknown helios.* name raises UndefinedObject (42704). Whether a node or branch exists
    is for the router to check.
    """
    lname = name.lower()
    if lname not in HELIOS_SETTINGS:
        raise UndefinedObject(f'unrecognized configuration parameter "{name}"')
    key = lname[len("helios.") :]
    if value is None:
        return key, None
    text = value.strip()
    if key == "route":
        text = text.lower()
        if text not in ROUTES:
            raise HeliosError(
                f'invalid value for parameter "{lname}": "{value}"',
                sqlstate="22023",
                detail="Available values: primary, standby, auto.",
            )
        return key, text
    if not text:
        raise HeliosError(f'invalid value for parameter "{lname}": ""', sqlstate="22023")
    return key, text
