"""Plugin-defined metrics: counters and gauges with optional labels, bounded per plugin."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_SERIES = 256  # distinct (kind, name, labels) per plugin
MAX_LABELS = 4  # label pairs per series
MAX_NAME = 128
MAX_LABEL_VALUE = 128
RESERVED_LABELS = frozenset({"plugin", "name", "worker"})
_LABEL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

Labels = tuple[tuple[str, str], ...]


def parse_labels(text: str) -> Labels:
    """`k=v,k2=v2` -> sorted pairs; ValueError says what is wrong."""
    if not text:
        return ()
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"label {part!r} is not key=value")
        if not _LABEL_KEY.match(key) or key.startswith("__"):
            raise ValueError(f"label name {key!r} must be [A-Za-z_][A-Za-z0-9_]* (not __*)")
        if key in RESERVED_LABELS:
            raise ValueError(f"label name {key!r} is reserved")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key} value longer than {MAX_LABEL_VALUE} bytes")
        if key in pairs:
            raise ValueError(f"label {key} given twice")
        pairs[key] = value
    if len(pairs) > MAX_LABELS:
        raise ValueError(f"more than {MAX_LABELS} labels")
    return tuple(sorted(pairs.items()))


@dataclass(slots=True)
class PluginMetrics:
    """One plugin's series; the manager keeps it by plugin name, so a hot reload keeps the values."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    dropped: int = 0
    events_refused: int = 0  # emit_event documents refused (bad shape)

    def record(self, kind: str, name: str, labels: str, value: float) -> str | None:
        """Apply `add` (counter) or `set` (gauge); the reason when the sample is dropped."""
        try:
            if not name or len(name) > MAX_NAME:
                raise ValueError(f"metric names are 1-{MAX_NAME} bytes")
            if value != value:  # NaN
                raise ValueError("value is NaN")
            key = (name, parse_labels(labels))
            series = self.counters if kind == "add" else self.gauges
            if kind == "add" and value < 0:
                raise ValueError("a counter only goes up (use metric_set for a gauge)")
            if key not in series and len(self.counters) + len(self.gauges) >= MAX_SERIES:
                raise ValueError(f"more than {MAX_SERIES} series for this plugin")
        except ValueError as e:
            self.dropped += 1
            return str(e)
        if kind == "add":
            series[key] = series.get(key, 0.0) + value
        else:
            series[key] = value
        return None

    def simple(self) -> dict[str, float]:
        """Unlabelled counters by name (the shape SHOW PLUGINS and /api/plugins always had)."""
        return {name: v for (name, labels), v in self.counters.items() if not labels}

    def series(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            for (name, labels), value in sorted(table.items()):
                out.append({"type": kind, "name": name, "labels": dict(labels), "value": value})
        return out
