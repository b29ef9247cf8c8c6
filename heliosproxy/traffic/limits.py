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
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
# Hot-path views of a slot: (tokens, stamp) at 8, `used` at 24, `active` at 32, counters at 40/48/56.
_TS = struct.Struct("<dd")
_TSU = struct.Struct("<ddd")
_I = struct.Struct("<i")
_AT_TOKENS, _AT_USED, _AT_ACTIVE = 8, 24, 32
_AT = {_ALLOWED: 40, _REJECTED: 48, _QUEUED: 56}
LOCK_PATIENCE = 0.2  # seconds
FLUSH_EVERY = 0.2  # allowed counters are kept per worker and added to the shared table this often
CONCURRENCY_POLL = 0.005  # a queued statement re-checks a concurrency cap this often (other workers' releases)

GO, WAIT, REJECT = range(3)
log = logging.getLogger("heliosproxy.traffic")


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
    delay: bool  # action is delay
    queue: bool  # action is queue

    @classmethod
    def of(cls, c: LimitConfig) -> Rule:
        burst = float(c.burst) if c.burst is not None else max(1.0, c.rate or 1.0)
        return cls(c.name, c.key, c.rate, burst, c.concurrency, c.action, c.max_wait,
                   c.action is LimitAction.DELAY, c.action is LimitAction.QUEUE)


@dataclass(slots=True)
class Verdict:
    """GO (held: slots whose concurrency unit the session now holds; delay: seconds to hold the
    statement first), WAIT (rule: the one that refused; retry_in: seconds) or REJECT (rule)."""

    outcome: int
    rule: Rule | None = None
    retry_in: float = 0.0
    delay: float = 0.0
    held: tuple[int, ...] = ()


_GO = Verdict(GO)


def _hash(label: bytes) -> int:
    h = int.from_bytes(hashlib.blake2b(label, digest_size=8).digest(), "little")
    return h or 1  # 0 marks an empty slot


class LimitTable:
    """The shared slots and their lock. `path` None: a private table (one worker)."""

    def __init__(self, path: str | None, worker: int, lock: Any = None):
        self.fd: int | None = None
        self.shared = path is not None  # other processes map it too: take the lock
        self.sem = lock  # a process-shared semaphore from the supervisor (multiprocessing.Lock), else lockf
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
        self.index: dict[bytes, tuple[int, int]] = {}  # label -> (slot, hash), checked against the slot on use
        self.clear_own()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.buf.close()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def lock(self) -> None:
        sem = self.sem
        if sem is not None:
            # Held for microseconds at a time: a wait this long means its holder died holding it. Go on
            # without it; unlock() then gives the semaphore back (repairing it).
            if not sem.acquire(True, LOCK_PATIENCE):
                log.error("the limit table lock was held for %gs (a worker died holding it?); taking it over",
                          LOCK_PATIENCE)
        elif self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        sem = self.sem
        if sem is not None:
            with contextlib.suppress(ValueError):  # (released too many times: only after a take-over)
                sem.release()
        elif self.fd is not None:
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
        known = self.index.get(label)
        if known is not None and _Q.unpack_from(buf, known[0] * _SLOT)[0] == known[1]:
            return known[0]  # (another worker may have recycled the slot: then its hash differs)
        h = _hash(label)
        home = h % SLOTS
        victim: int | None = None
        victim_used = math.inf
        for i in range(PROBES):
            s = (home + i) % SLOTS
            off = s * _SLOT
            sh, _t, _st, used, active, *_ = _HEAD.unpack_from(buf, off)
            if sh == h:
                self._remember(label, s, h)
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
        self._remember(label, victim, h)
        return victim

    def _remember(self, label: bytes, idx: int, h: int) -> None:
        if len(self.index) > 4 * SLOTS:
            self.index.clear()
        self.index[label] = (idx, h)

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
        self.has_tenant = False
        self.by_fingerprint: tuple[Rule, ...] = ()
        self._released = asyncio.Event()
        self.waiters = 0  # tasks of this worker in pause()
        self.counts: dict[tuple[int, int], int] = {}  # (slot offset, slot hash) -> allowed, not yet in the table
        self.generation = 0  # bumped by configure (sessions rebuild what they cached)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.generation += 1
        self.rules = tuple(Rule.of(c) for c in config.limits)
        by: dict[LimitKey, list[Rule]] = {}
        for r in self.rules:
            by.setdefault(r.key, []).append(r)
        self.by_key = {k: tuple(v) for k, v in by.items()}
        self.has_tenant = LimitKey.TENANT in self.by_key
        self.by_fingerprint = self.by_key.get(LimitKey.FINGERPRINT, ())

    def decide(self, wants: list[tuple[Rule, bytes]], holds: tuple[int, ...], first: bool) -> Verdict:
        """One statement's verdict over every limit that applies to it (all or nothing).

        `holds`: slots whose concurrency unit the session already holds (a statement in flight);
        `first`: the statement's first attempt (a WAIT counts it as queued once)."""
        table = self.table
        buf = table.buf
        now = time.monotonic()
        ts_unpack, i_unpack = _TS.unpack_from, _I.unpack_from
        if table.shared:
            table.lock()
        try:
            plan: list[tuple[int, Rule, float, bool, bool]] = []
            delay = 0.0
            for rule, label in wants:
                idx = table.slot(label, rule.burst, now)
                if idx is None:
                    continue  # the table is full of busy keys here: not limited (never refuse by accident)
                off = idx * _SLOT
                tokens = 0.0
                late = False
                rate = rule.rate
                if rate is not None:
                    tokens, stamp = ts_unpack(buf, off + _AT_TOKENS)
                    if now > stamp:
                        tokens += (now - stamp) * rate
                    if tokens > rule.burst:
                        tokens = rule.burst
                    if rule.delay:
                        if tokens < 1.0:
                            due = (1.0 - tokens) / rate
                            if due > rule.max_wait:
                                return self._refuse(idx, rule, REJECT, 0.0, first)
                            if due > delay:
                                delay = due
                            late = True
                    elif tokens < 1.0:
                        return self._refuse(idx, rule, WAIT if rule.queue else REJECT, (1.0 - tokens) / rate, first)
                    tokens -= 1.0
                conc = rule.concurrency is not None and idx not in holds
                if conc and i_unpack(buf, off + _AT_ACTIVE)[0] >= (rule.concurrency or 0):
                    return self._refuse(idx, rule, WAIT if rule.queue or rule.delay else REJECT,
                                        CONCURRENCY_POLL, first)
                plan.append((off, rule, tokens, conc, late))
            held: list[int] = []
            q_unpack, q_pack = _Q.unpack_from, _Q.pack_into
            col = table.column
            counts = self.counts
            if not counts and plan:
                self._flush_soon()
            for off, rule, tokens, conc, late in plan:
                if rule.rate is not None:
                    _TSU.pack_into(buf, off + _AT_TOKENS, tokens, now, now)
                else:
                    _TS.pack_into(buf, off + _AT_TOKENS + 8, now, now)  # stamp (unused), used
                key = (off, q_unpack(buf, off)[0])
                counts[key] = counts.get(key, 0) + 1  # allowed (added to the table by flush())
                if late and first:
                    at = off + 56
                    q_pack(buf, at, q_unpack(buf, at)[0] + 1)  # queued (delayed)
                if conc:
                    _I.pack_into(buf, off + _AT_ACTIVE, i_unpack(buf, off + _AT_ACTIVE)[0] + 1)
                    mine = _H.unpack_from(buf, off + col)[0]
                    _H.pack_into(buf, off + col, min(0xFFFF, mine + 1))
                    held.append(off // _SLOT)
            if not held and not delay:
                return _GO  # (the common case: nothing to hold, no delay)
            return Verdict(GO, None, 0.0, delay, tuple(held))
        finally:
            if table.shared:
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
        at = idx * _SLOT + _AT[field]
        _Q.pack_into(buf, at, _Q.unpack_from(buf, at)[0] + 1)

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
        i_unpack, i_pack, h_unpack, h_pack = _I.unpack_from, _I.pack_into, _H.unpack_from, _H.pack_into
        if table.shared:
            table.lock()
        try:
            for idx in held:
                off = idx * _SLOT
                active = i_unpack(buf, off + _AT_ACTIVE)[0]
                i_pack(buf, off + _AT_ACTIVE, active - 1 if active > 0 else 0)
                mine = h_unpack(buf, off + col)[0]
                h_pack(buf, off + col, mine - 1 if mine > 0 else 0)
        finally:
            if table.shared:
                table.unlock()
        if self.waiters:
            ev = self._released
            self._released = asyncio.Event()
            ev.set()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when a session of this worker gives back a concurrency unit."""
        self.waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), max(0.0, seconds))
        finally:
            self.waiters -= 1

    def _flush_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # no event loop (a direct caller): the next rows() flushes
            asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Add this worker's allowed counts to the shared table (slots recycled meanwhile are skipped)."""
        counts = self.counts
        if not counts:
            return
        self.counts = {}
        table = self.table
        buf = table.buf
        table.lock()
        try:
            for (off, h), n in counts.items():
                if _Q.unpack_from(buf, off)[0] == h:
                    at = off + _AT[_ALLOWED]
                    _Q.pack_into(buf, at, _Q.unpack_from(buf, at)[0] + n)
        finally:
            table.unlock()

    def rows(self) -> list[dict[str, object]]:
        """SHOW LIMITS: one row per (configured limit, key value) seen."""
        self.flush()
        kinds = {r.name: r.key.value for r in self.rules}
        out: list[dict[str, object]] = []
        for name, value, allowed, rejected, queued, active in self.table.rows():
            if name in kinds:
                out.append({"name": name, "key": kinds[name], "value": value, "allowed": allowed,
                            "rejected": rejected, "queued": queued, "active": active})
        out.sort(key=lambda r: (str(r["name"]), str(r["value"])))
        return out
