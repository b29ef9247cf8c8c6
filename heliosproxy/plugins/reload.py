"""Hot reload: poll the plugin directory's *.wasm / *.yaml / *.sig mtimes, debounced, per plugin."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

WATCHED_SUFFIXES = (".wasm", ".yaml", ".sig")


class ReloadKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    kind: ReloadKind
    name: str  # plugin name = file stem of NAME.wasm


Signature = tuple[tuple[str, int, int], ...]  # (suffix, mtime_ns, size) per existing file


class DirectoryWatcher:
    """Reports a plugin as changed once its files stayed unchanged for `debounce` s (two polls)."""

    def __init__(self, directory: Path, debounce: float, clock: Callable[[], float] = time.monotonic):
        self.directory = Path(directory)
        self.debounce = debounce
        self.clock = clock
        self._known: dict[str, Signature] = {}  # applied state, by plugin name
        self._pending: dict[str, tuple[Signature, float]] = {}  # seen state, since when

    def _scan(self) -> dict[str, Signature]:
        files: dict[str, list[tuple[str, int, int]]] = {}
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            entries = []
        for p in entries:
            if p.suffix not in WATCHED_SUFFIXES:
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            files.setdefault(p.stem, []).append((p.suffix, st.st_mtime_ns, st.st_size))
        return {name: tuple(sorted(sig)) for name, sig in files.items() if any(s[0] == ".wasm" for s in sig)}

    def prime(self) -> None:
        """Take the current directory state as already applied (after the initial load)."""
        self._known = self._scan()
        self._pending.clear()

    def poll(self) -> list[ReloadEvent]:
        now = self.clock()
        current = self._scan()
        events: list[ReloadEvent] = []
        for name in sorted(set(current) | set(self._known) | set(self._pending)):
            sig = current.get(name)
            if sig == self._known.get(name):
                self._pending.pop(name, None)
                continue
            key = sig or ()
            pend = self._pending.get(name)
            if pend is None or pend[0] != key:
                self._pending[name] = (key, now)
                continue
            if now - pend[1] < self.debounce:
                continue
            del self._pending[name]
            if sig is None:
                self._known.pop(name, None)
                events.append(ReloadEvent(ReloadKind.REMOVED, name))
            else:
                kind = ReloadKind.MODIFIED if name in self._known else ReloadKind.ADDED
                self._known[name] = sig
                events.append(ReloadEvent(kind, name))
        return events
