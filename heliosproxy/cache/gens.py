"""Per-table write generations in memory shared by every worker (forked after this module is imported).

A write stamps each table it touched with a new value, never used before by any process, before its
ReadyForQuery is forwarded; a cached answer remembers the values its tables had before it was asked
for and is served only while they are unchanged. So a write seen by one worker invalidates the
answers of every worker, without messages: each checks the shared values when it looks an entry up.
Tables are hashed (crc32 of the unqualified name) into SLOTS slots; a collision only drops more.
"""

from __future__ import annotations

import itertools
import mmap
import os
import time
import zlib
from typing import Final

__all__ = ["GLOBAL_SLOT", "SLOTS", "Generations", "shared_generations", "table_slot"]

SLOTS: Final = 1 << 16
GLOBAL_SLOT: Final = 0  # bumped by writes whose tables are unknown (DDL, functions, ...) and CACHE CLEAR


def table_slot(name: str) -> int:
    """The slot of a table: its last name part (`s.t` -> t; parts unquoted, as the classifier joins them)."""
    last = name.rsplit(".", 1)[-1]  # as the classifier joins names: unquoted parts (a dot in a name collides)
    return 1 + zlib.crc32(last.encode("utf-8", "surrogatepass")) % (SLOTS - 1)


class Generations:
    """SLOTS unsigned 64-bit values in an anonymous shared mapping."""

    __slots__ = ("_counter", "_map", "_pid", "_view")

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, SLOTS * 8)  # MAP_SHARED | MAP_ANONYMOUS: children see the same pages
        self._view = memoryview(self._map).cast("Q")
        self._pid = -1
        self._counter = itertools.count(1)

    def get(self, slot: int) -> int:
        return int(self._view[slot])

    def stamp(self, slots: tuple[int, ...]) -> tuple[int, ...]:
        view = self._view
        return tuple([view[s] for s in slots])

    def current(self, slots: tuple[int, ...], stamp: tuple[int, ...]) -> bool:
        """Are these slots still at the values of `stamp`?"""
        view = self._view
        return stamp == tuple([view[s] for s in slots])

    def bump(self, slots: set[int] | tuple[int, ...]) -> None:
        """Give each slot a value no process has written before (pid in the high bits, a counter below)."""
        pid = os.getpid()
        if pid != self._pid:  # a forked child: its own counter, from the clock (a reused pid goes on past
            self._pid = pid  # what its earlier owner wrote unless that one wrote more than one value per µs)
            self._counter = itertools.count(time.time_ns() // 1000)
        base = (pid & 0x3FFFFF) << 42
        view = self._view
        for s in slots:
            view[s] = base | (next(self._counter) & ((1 << 42) - 1))


_SHARED = Generations()


def shared_generations() -> Generations:
    """The process group's table (made when this module is first imported, before workers fork)."""
    return _SHARED
