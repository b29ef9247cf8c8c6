"""Plugin events (helios.emit_event): validation and the bounded list served at /api/anomalies."""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")
MAX_EVENT_BYTES = 4096  # the JSON a plugin hands to emit_event
MAX_DETAIL = 1024  # characters of `detail` kept
MAX_TENANT = 128
_KIND = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def parse_event(plugin: str, raw: bytes, now: float | None = None) -> dict[str, Any]:
    """A plugin's event document -> the stored event; ValueError says what is wrong.

    In: `{"kind": "tautology", "severity": "high", "tenant": "acme", "detail": "..."}` (severity and
    tenant optional). Out: `{"plugin", "kind", "severity", "tenant", "detail", "at"}`, `at` being
    ISO 8601 UTC with milliseconds.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"event over {MAX_EVENT_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        raise ValueError("event is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("event is not a JSON object")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValueError("event kind must be [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)")
    severity = doc.get("severity", "medium")
    if severity not in SEVERITIES:
        raise ValueError(f"event severity must be one of {', '.join(SEVERITIES)}")
    tenant = doc.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise ValueError("event tenant must be a string or null")
    detail = doc.get("detail", "")
    if not isinstance(detail, str):
        raise ValueError("event detail must be a string")
    t = time.time() if now is None else now
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
    return {
        "plugin": plugin,
        "kind": kind,
        "severity": severity,
        "tenant": tenant[:MAX_TENANT] if tenant else None,
        "detail": detail[:MAX_DETAIL],
        "at": at,
        "ts": t,  # for merging workers' lists; not part of the served shape
    }


class EventLog:
    """The newest `limit` events of every plugin of this process (oldest dropped first)."""

    def __init__(self, limit: int):
        self.events: deque[dict[str, Any]] = deque(maxlen=max(1, limit))
        self.total = 0  # events ever recorded (the list keeps only the newest)

    def resize(self, limit: int) -> None:
        if self.events.maxlen != max(1, limit):
            self.events = deque(self.events, maxlen=max(1, limit))

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.total += 1

    def raw(self) -> list[dict[str, Any]]:
        return list(self.events)


def served(events: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Newest first, at most `limit`, in the /api/anomalies shape (merging several workers' lists)."""
    ordered = sorted(events, key=lambda e: e.get("ts", 0.0), reverse=True)[: max(0, limit)]
    keys = ("plugin", "kind", "severity", "tenant", "detail", "at")
    return [{k: e.get(k) for k in keys} for e in ordered]
