"""Rate limits and quotas: token buckets and concurrency caps per key value, in one table all workers share.

The table is a fixed array of slots in a shared memory mapping (a file in the supervisor's run
directory, mapped by every worker; an anonymous mapping with a single worker), guarded by a POSIX
record lock (fcntl.lockf) that the kernel drops if its holder dies. One slot per (limit, key value):
its bucket (tokens, refill time), how many of its sessions run a statement now (in total and per
worker: a restarted worker clears the share it held before), and its allowed/rejected/queued
counters. Slots are found by open addressing (a bounded probe); when a probe window is full the
least recently used idle slot is recycled, so the key space (client addresses, fingerprints) is
bounded by SLOTS. Every decision is exact across workers: no budget is split per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from heliosproxy.config.schema import Config, LimitAction, LimitConfig, LimitKey

SLOTS = 8192
PROBES = 16
WORKER_COLUMNS = 64  # per-worker shares of `active` (worker ids past it share a column)
_HEAD = struct.Struct("<QdddiiQQQ")  # hash, tokens, stamp, used, active, spare, allowed, rejected, queued
_LABEL_AT = _HEAD.size  # 64
_LABEL = 96  # "name\0value", utf-8, truncated
_COLS_AT = _LABEL_AT + _LABEL
_SLOT = _COLS_AT + 2 * WORKER_COLUMNS
SIZE = SLOTS * _SLOT
_Q = struct.Struct("<Q")
_H = struct.Struct("<H")
_ALLOWED, _REJECTED, _QUEUED = 6, 7, 8  # field positions in _HEAD
CONCURRENCY_POLL = 0.005  # a queued statement re-checks a concurrency cap this often (other workers' releases)

GO, WAIT, REJECT = range(3)


@dataclass(frozen=True, slots=True)
class Rule:
    """A LimitConfig ready for the hot path."""

    name: str
    key: LimitKey
    rate: float | None
    burst: float
    concurrency: int | None
    action: LimitAction
    max_wait: float

    @classmethod
    def of(cls, c: LimitConfig) -> Rule:
        burst = float(c.burst) if c.burst is not None else max(1.0, c.rate or 1.0)
        return cls(c.name, c.key, c.rate, burst, c.concurrency, c.action, c.max_wait)


@dataclass(slots=True)
class Verdict:
    """GO (held: slots whose concurrency unit the session now holds; delay: seconds to hold the
    statement first), WAIT (rule: the one that refused; retry_in: seconds) or REJECT (rule)."""

    outcome: int
    rule: Rule | None = None
    retry_in: float = 0.0
    delay: float = 0.0
    held: tuple[int, ...] = ()


def _hash(label: bytes) -> int:
    h = int.from_bytes(hashlib.blake2b(label, digest_size=8).digest(), "little")
    return h or 1  # 0 marks an empty slot


class LimitTable:
    """The shared slots and their lock. `path` None: a private table (one worker)."""

    def __init__(self, path: str | None, worker: int):
        self.fd: int | None = None
        if path is None:
            self.buf = mmap.mmap(-1, SIZE)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self.fd = fd
            self.lock()
            try:
                if os.fstat(fd).st_size < SIZE:
                    os.ftruncate(fd, SIZE)
            finally:
                self.unlock()
            self.buf = mmap.mmap(fd, SIZE)
        self.column = _COLS_AT + 2 * (worker % WORKER_COLUMNS)
        self.index: dict[bytes, int] = {}  # label -> slot (checked against the slot's hash on use)
        self.clear_own()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.buf.close()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def lock(self) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def clear_own(self) -> None:
        """Give back every concurrency unit this worker id held (a worker restarted after a crash)."""
        buf, col = self.buf, self.column
        self.lock()
        try:
            for s in range(SLOTS):
                off = s * _SLOT
                mine = _H.unpack_from(buf, off + col)[0]
                if mine:
                    head = list(_HEAD.unpack_from(buf, off))
                    head[4] = max(0, head[4] - mine)
                    _HEAD.pack_into(buf, off, *head)
                    _H.pack_into(buf, off + col, 0)
        finally:
            self.unlock()

    # ------------------------------------------------------------------ slots (call with the lock held)
    def slot(self, label: bytes, burst: float, now: float) -> int | None:
        """The slot of `label`, made (a full bucket) if new; None when its probe window is all busy."""
        buf = self.buf
        h = _hash(label)
        idx = self.index.get(label)
        if idx is not None and _Q.unpack_from(buf, idx * _SLOT)[0] == h:
            return idx
        home = h % SLOTS
        victim: int | None = None
        victim_used = math.inf
        for i in range(PROBES):
            s = (home + i) % SLOTS
            off = s * _SLOT
            sh, _t, _st, used, active, *_ = _HEAD.unpack_from(buf, off)
            if sh == h:
                self._remember(label, s)
                return s
            if sh == 0:
                victim = s
                break
            if active == 0 and used < victim_used:
                victim, victim_used = s, used
        if victim is None:
            return None
        off = victim * _SLOT
        buf[off:off + _SLOT] = bytes(_SLOT)
        _HEAD.pack_into(buf, off, h, burst, now, now, 0, 0, 0, 0, 0)
        text = label[:_LABEL]
        buf[off + _LABEL_AT:off + _LABEL_AT + len(text)] = text
        self._remember(label, victim)
        return victim

    def _remember(self, label: bytes, idx: int) -> None:
        if len(self.index) > 4 * SLOTS:
            self.index.clear()
        self.index[label] = idx

    def rows(self) -> Iterable[tuple[str, str, int, int, int, int]]:
        """(limit name, key value, allowed, rejected, queued, active) of every slot in use."""
        buf = self.buf
        self.lock()
        try:
            raw = [(bytes(buf[s * _SLOT:(s + 1) * _SLOT])) for s in range(SLOTS)]
        finally:
            self.unlock()
        for data in raw:
            head = _HEAD.unpack_from(data, 0)
            if head[0] == 0:
                continue
            label = data[_LABEL_AT:_LABEL_AT + _LABEL].rstrip(b"\x00").decode("utf-8", "replace")
            name, _, value = label.partition("\x00")
            yield name, value, head[_ALLOWED], head[_REJECTED], head[_QUEUED], head[4]


def label_of(rule: Rule, value: str) -> bytes:
    return rule.name.encode() + b"\x00" + value.encode("utf-8", "replace")


class Limiter:
    """The configured limits over a LimitTable: decide, count, release."""

    def __init__(self, config: Config, table: LimitTable):
        self.table = table
        self.rules: tuple[Rule, ...] = ()
        self.by_key: dict[LimitKey, tuple[Rule, ...]] = {}
        self._released = asyncio.Event()
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.rules = tuple(Rule.of(c) for c in config.limits)
        by: dict[LimitKey, list[Rule]] = {}
        for r in self.rules:
            by.setdefault(r.key, []).append(r)
        self.by_key = {k: tuple(v) for k, v in by.items()}

    def decide(self, wants: list[tuple[Rule, bytes]], holds: tuple[int, ...], first: bool) -> Verdict:
        """One statement's verdict over every limit that applies to it (all or nothing).

        `holds`: slots whose concurrency unit the session already holds (a statement in flight);
        `first`: the statement's first attempt (a WAIT counts it as queued once)."""
        table = self.table
        buf = table.buf
        now = time.monotonic()
        table.lock()
        try:
            plan: list[tuple[int, float, bool, bool]] = []
            delay = 0.0
            for rule, label in wants:
                idx = table.slot(label, rule.burst, now)
                if idx is None:
                    continue  # the table is full of busy keys here: not limited (never refuse by accident)
                off = idx * _SLOT
                head = _HEAD.unpack_from(buf, off)
                tokens, stamp, active = head[1], head[2], head[4]
                rate = rule.rate
                late = False
                if rate is not None:
                    tokens = min(rule.burst, tokens + max(0.0, now - stamp) * rate)
                    if rule.action is LimitAction.DELAY:
                        due = (1.0 - tokens) / rate if tokens < 1.0 else 0.0
                        if due > rule.max_wait:
                            return self._refuse(idx, rule, REJECT, 0.0, first)
                        delay = max(delay, due)
                        late = due > 0
                    elif tokens < 1.0:
                        wait = (1.0 - tokens) / rate
                        return self._refuse(idx, rule, WAIT if rule.action is LimitAction.QUEUE else REJECT,
                                            wait, first)
                    tokens -= 1.0
                conc = rule.concurrency is not None and idx not in holds
                if conc and active >= (rule.concurrency or 0):
                    return self._refuse(idx, rule, REJECT if rule.action is LimitAction.REJECT else WAIT,
                                        CONCURRENCY_POLL, first)
                plan.append((idx, tokens, conc, late))
            held: list[int] = []
            for idx, tokens, conc, late in plan:
                off = idx * _SLOT
                row = list(_HEAD.unpack_from(buf, off))
                row[1], row[2], row[3] = tokens, now, now
                row[_ALLOWED] += 1
                if late and first:
                    row[_QUEUED] += 1  # delayed
                if conc:
                    row[4] += 1
                    mine = _H.unpack_from(buf, off + table.column)[0]
                    _H.pack_into(buf, off + table.column, min(0xFFFF, mine + 1))
                    held.append(idx)
                _HEAD.pack_into(buf, off, *row)
            return Verdict(GO, None, 0.0, delay, tuple(held))
        finally:
            table.unlock()

    def _refuse(self, idx: int, rule: Rule, outcome: int, retry_in: float, first: bool) -> Verdict:
        """(lock held) Count a refusal: rejected at once, or queued on a statement's first wait."""
        if outcome == REJECT:
            self._bump(idx, _REJECTED)
        elif first:
            self._bump(idx, _QUEUED)
        return Verdict(outcome, rule, retry_in)

    def _bump(self, idx: int, field: int) -> None:
        buf = self.table.buf
        off = idx * _SLOT
        head = list(_HEAD.unpack_from(buf, off))
        head[field] += 1
        _HEAD.pack_into(buf, off, *head)

    def give_up(self, rule: Rule, label: bytes) -> None:
        """A queued statement waited max_wait in vain: count it rejected."""
        table = self.table
        table.lock()
        try:
            idx = table.slot(label, rule.burst, time.monotonic())
            if idx is not None:
                self._bump(idx, _REJECTED)
        finally:
            table.unlock()

    def release(self, held: tuple[int, ...]) -> None:
        """A session's statements are done: give back its concurrency units."""
        table = self.table
        buf = table.buf
        col = table.column
        table.lock()
        try:
            for idx in held:
                off = idx * _SLOT
                head = list(_HEAD.unpack_from(buf, off))
                head[4] = max(0, head[4] - 1)
                _HEAD.pack_into(buf, off, *head)
                mine = _H.unpack_from(buf, off + col)[0]
                _H.pack_into(buf, off + col, max(0, mine - 1))
        finally:
            table.unlock()
        ev = self._released
        self._released = asyncio.Event()
        ev.set()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when a session of this worker gives back a concurrency unit."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), max(0.0, seconds))

    def rows(self) -> list[dict[str, object]]:
        """SHOW LIMITS: one row per (configured limit, key value) seen."""
        kinds = {r.name: r.key.value for r in self.rules}
        out: list[dict[str, object]] = []
        for name, value, allowed, rejected, queued, active in self.table.rows():
            if name in kinds:
                out.append({"name": name, "key": kinds[name], "value": value, "allowed": allowed,
                            "rejected": rejected, "queued": queued, "active": active})
        out.sort(key=lambda r: (str(r["name"]), str(r["value"])))
        return out
