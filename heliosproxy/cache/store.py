"""The per-worker store of cached answers: an LRU bounded in bytes, with TTLs, rules and table generations."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from heliosproxy.cache.gens import GLOBAL_SLOT, Generations, table_slot
from heliosproxy.config.schema import CacheConfig
from heliosproxy.sql.hints import parse_duration_ms

__all__ = ["CacheStats", "Entry", "ResultCache"]

_ENTRY_OVERHEAD: Final = 200  # bytes per entry besides its answer (key digest, objects, index sets)
# Catalog and statistics relations change without writes the proxy can see.
_SYSTEM_SCHEMAS: Final = ("pg_catalog.", "information_schema.", "pg_toast.")


@dataclass(slots=True)
class CacheStats:
    """Counters of one worker's cache (metrics and SHOW CACHE read them)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0  # dropped to stay under max_memory
    invalidations: int = 0  # dropped because a table they read was written (or CACHE CLEAR)
    expired: int = 0
    too_large: int = 0  # answers over max_result, not stored
    bytes: int = 0


class Entry:
    """One cached answer: the server's messages as the client got them (ReadyForQuery excluded)."""

    __slots__ = ("body", "expires", "size", "slots", "stamp")

    def __init__(self, body: bytes, slots: tuple[int, ...], stamp: tuple[int, ...], expires: float):
        self.body = body
        self.slots = slots
        self.stamp = stamp
        self.expires = expires
        self.size = len(body) + _ENTRY_OVERHEAD


def _bare(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class ResultCache:
    """Answers by key (a digest of everything that can change them); see heliosproxy/cache/gens.py for
    how writes anywhere in the process group make entries invalid."""

    def __init__(self, config: CacheConfig, gens: Generations):
        self.gens = gens
        self.stats = CacheStats()
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._by_slot: dict[int, set[bytes]] = {}
        self.config = config
        self._exact: dict[str, float | None] = {}
        self._bare: dict[str, float | None] = {}
        self._rules: tuple[tuple[frozenset[str], float], ...] = ()
        # tables of a statement -> (the rule's ttl or None, system tables read?, their slots): statements
        # repeat, so the policy and the slots are worked out once per table list.
        self._policy: dict[tuple[str, ...], tuple[float | None, bool, tuple[int, ...]]] = {}
        self.configure(config)

    # ------------------------------------------------------------------ policy
    def configure(self, config: CacheConfig) -> None:
        """New limits and rules (reload); entries over the new max_memory are evicted."""
        self.config = config
        self._rules = tuple(
            (frozenset(t.strip() for t in r.tables), config.default_ttl if r.ttl is None else r.ttl)
            for r in config.rules
        )
        self._policy = {}
        self._shrink(config.max_memory)

    def ttl_for(self, tables: tuple[str, ...], hint: str | None) -> float | None:
        """Seconds to keep an answer reading `tables`, or None when it is not to be cached.

        hint: the value of a `/*helios:cache=...*/` hint (`skip`, or a duration such as `30s`). Without
        one, the first rule listing every table the statement reads decides (a rule's unqualified
        name matches the table in any schema)."""
        policy = self._policy.get(tables)
        if policy is None:
            policy = self._work_out(tables)
        if policy[1]:
            return None
        if hint is not None:
            return _hint_ttl(hint)
        return policy[0]

    def _work_out(self, tables: tuple[str, ...]) -> tuple[float | None, bool, tuple[int, ...]]:
        system = any(t.startswith(_SYSTEM_SCHEMAS) or _bare(t).startswith("pg_") for t in tables)
        rule: float | None = None
        if tables:
            for names, ttl in self._rules:
                if all(t in names or _bare(t) in names for t in tables):
                    rule = ttl
                    break
        slots = (GLOBAL_SLOT, *sorted({table_slot(t) for t in tables}))
        if len(self._policy) >= 10_000:
            self._policy.clear()
        policy = self._policy[tables] = (rule, system, slots)
        return policy

    # ------------------------------------------------------------------ entries
    def stamp(self, tables: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The slots of these tables (and the global one) and their values now: taken before a miss is
        sent, so that a write committed while it runs makes what it brings back invalid."""
        policy = self._policy.get(tables)
        if policy is None:
            policy = self._work_out(tables)
        slots = policy[2]
        return slots, self.gens.stamp(slots)

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        stats = self.stats
        if entry is None:
            stats.misses += 1
            return None
        if entry.expires < time.monotonic():
            stats.expired += 1
            stats.misses += 1
            self._drop(key, entry)
            return None
        if not self.gens.current(entry.slots, entry.stamp):
            stats.invalidations += 1
            stats.misses += 1
            self._drop(key, entry)
            return None
        self._entries.move_to_end(key)
        stats.hits += 1
        return entry.body

    def put(self, key: bytes, body: bytes, slots: tuple[int, ...], stamp: tuple[int, ...], ttl: float) -> bool:
        """Store an answer unless a table it read was written since `stamp` was taken."""
        if len(body) > self.config.max_result:
            self.stats.too_large += 1
            return False
        if not self.gens.current(slots, stamp):
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        entry = Entry(body, slots, stamp, time.monotonic() + ttl)
        if entry.size > self.config.max_memory:
            self.stats.too_large += 1
            return False
        self._shrink(self.config.max_memory - entry.size)
        self._entries[key] = entry
        self.stats.bytes += entry.size
        self.stats.stores += 1
        for s in slots[1:]:
            self._by_slot.setdefault(s, set()).add(key)
        return True

    def invalidate(self, slots: set[int] | tuple[int, ...]) -> int:
        """A write to these slots was acknowledged (or is about to be): new values for every worker, and
        this worker's entries that read them are dropped now. GLOBAL_SLOT drops everything."""
        self.gens.bump(slots)
        if GLOBAL_SLOT in slots:
            n = len(self._entries)
            self._entries.clear()
            self._by_slot.clear()
            self.stats.bytes = 0
            self.stats.invalidations += n
            return n
        n = 0
        for s in slots:
            keys = self._by_slot.pop(s, None)
            if not keys:
                continue
            for key in list(keys):
                entry = self._entries.pop(key, None)
                if entry is not None:
                    self._unindex(key, entry)
                    n += 1
        self.stats.invalidations += n
        return n

    def clear(self, table: str | None = None) -> int:
        """CACHE CLEAR [table]: for every worker (through the shared generations)."""
        return self.invalidate((GLOBAL_SLOT,) if table is None else (table_slot(table),))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: bytes, entry: Entry) -> None:
        del self._entries[key]
        self._unindex(key, entry)

    def _unindex(self, key: bytes, entry: Entry) -> None:
        self.stats.bytes -= entry.size
        by_slot = self._by_slot
        for s in entry.slots[1:]:
            keys = by_slot.get(s)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del by_slot[s]

    def _shrink(self, budget: int) -> None:
        entries = self._entries
        while entries and self.stats.bytes > budget:
            key, entry = entries.popitem(last=False)
            self._unindex(key, entry)
            self.stats.evictions += 1


def _hint_ttl(text: str) -> float | None:
    """`skip` -> None; a duration as routing hints write them (`30s`, `500ms`, `2m`, `1h`; a bare
    number is milliseconds) -> seconds; anything else, or zero -> None."""
    if text.strip().lower() == "skip":
        return None
    ms = parse_duration_ms(text)
    if ms is None or ms <= 0:
        return None
    return ms / 1000.0
