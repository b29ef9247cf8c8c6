"""Reads the replies a client is sent (as written): rows per statement and, on request, one statement's whole reply."""

from __future__ import annotations

import collections
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heliosproxy.protocol import codes, messages

_I = struct.Struct("!I")
_H = struct.Struct("!H")
_C = codes.B_COMMAND_COMPLETE
_Z = codes.B_READY_FOR_QUERY
_D = codes.B_DATA_ROW
_E = codes.B_ERROR
_MASK = (1 << 64) - 1

# (reply bytes or None when larger than the capture limit, rows by command tags, monotonic end time)
Captured = Callable[[bytes | None, int, float], None]


def tag_rows(tag: bytes) -> int:
    """Rows a CommandComplete tag reports (SELECT n, INSERT 0 n, UPDATE n, COPY n, ...); 0 for none."""
    end = len(tag)
    while end and tag[end - 1] == 0:
        end -= 1
    start = end
    while start and 48 <= tag[start - 1] <= 57:
        start -= 1
    if start == end or (start and tag[start - 1] != 32):
        return 0
    return int(tag[start:end])


class ReplyMeter:
    """Fed every chunk written to one client, in order.

    Counts rows by CommandComplete tags. With `count=True`, each ReadyForQuery that ends a
    statement still in the session's `inflight` queue records its rows (`take()` gives a
    finished statement its rows). `arm()` captures the bytes from now to the next ReadyForQuery
    (one statement's reply) and hands them over; only full messages are walked, bodies are
    copied only for CommandComplete."""

    __slots__ = ("_cap_limit", "_cap_size", "_cap_start", "_captured", "_carry", "_on_capture", "_skip",
                 "count", "done", "host", "inflight", "mark", "rows", "tracks")

    def __init__(self, inflight: collections.deque[Any] | None, count: bool):
        self.inflight = inflight
        self.count = count
        self.rows = 0  # rows reported by command tags so far
        self.done: collections.deque[int] = collections.deque()  # rows of each finished statement, in order
        self.mark = 0  # `rows` at the last ReadyForQuery
        self._skip = 0  # body bytes of the current message still to pass
        self._carry = bytearray()  # a partial header, or a partial CommandComplete/ReadyForQuery
        self._captured: list[bytes] | None = None
        self._cap_size = 0
        self._cap_limit = 0
        self._cap_start = 0
        self._on_capture: Captured | None = None
        # The session's analytics state (heliosproxy/traffic/analytics.py): N+1 trackers, client host.
        self.tracks: dict[str, Any] | None = None
        self.host = ""

    @property
    def at_boundary(self) -> bool:
        return not self._skip and not self._carry

    @property
    def capturing(self) -> bool:
        return self._captured is not None

    def arm(self, on_capture: Captured, limit: int) -> bool:
        """Capture the next reply (up to its ReadyForQuery); False when not at a message boundary."""
        if not self.at_boundary or self._captured is not None:
            return False
        self._captured = []
        self._cap_size = 0
        self._cap_limit = limit
        self._cap_start = self.rows
        self._on_capture = on_capture
        return True

    def take(self) -> int | None:
        """Rows of the oldest finished statement (None when its ReadyForQuery was not seen)."""
        if not self.done:
            return None
        return self.done.popleft()

    def feed(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                self._keep(data, 0, n)
                return
            pos = self._skip
            self._skip = 0
        if self._carry:
            c = self._carry
            if len(c) < 5:
                take = min(5 - len(c), n - pos)
                c += data[pos : pos + take]
                pos += take
                if len(c) < 5:
                    self._keep(data, 0, n)
                    return
            total = 1 + _I.unpack_from(c, 1)[0]
            if c[0] != _C and c[0] != _Z:
                rest = total - len(c)
                self._carry = bytearray()
                if rest > n - pos:
                    self._skip = rest - (n - pos)
                    self._keep(data, 0, n)
                    return
                pos += rest
            else:
                take = min(total - len(c), n - pos)
                c += data[pos : pos + take]
                pos += take
                if len(c) < total:
                    self._keep(data, 0, n)
                    return
                whole = bytes(c)
                self._carry = bytearray()
                if self._message(whole[0], whole, 0, total, data, pos):
                    return
        unpack = _I.unpack_from
        while pos + 5 <= n:
            t = data[pos]
            end = pos + 1 + unpack(data, pos + 1)[0]
            if t in (_C, _Z):
                if end > n:
                    break
                if self._message(t, data, pos, end, data, end):
                    return
            elif end > n:
                self._skip = end - n
                self._keep(data, 0, n)
                return
            pos = end
        if pos < n:
            self._carry = bytearray(data[pos:])
        self._keep(data, 0, n)

    def _message(self, t: int, buf: bytes, start: int, end: int, chunk: bytes, chunk_end: int) -> bool:
        """A whole CommandComplete or ReadyForQuery; True when the rest of `chunk` was handled here."""
        if t == _C:
            self.rows += tag_rows(buf[start + 5 : end])
            return False
        if self.count and self.inflight is not None and len(self.done) < len(self.inflight):
            self.done.append(self.rows - self.mark)
        self.mark = self.rows  # (a ReadyForQuery of the proxy's own answer only moves the mark)
        if self._captured is None:
            return False
        # The captured reply ends here: hand it over, then go on with the rest of the chunk.
        self._keep(chunk, 0, chunk_end)
        parts, self._captured = self._captured, None
        over = self._cap_size > self._cap_limit
        cb, self._on_capture = self._on_capture, None
        rows = self.rows - self._cap_start
        if cb is not None:
            cb(None if over else b"".join(parts), rows, time.monotonic())
        if chunk_end < len(chunk):
            self.feed(chunk[chunk_end:])
        return True

    def _keep(self, chunk: bytes, start: int, end: int) -> None:
        parts = self._captured
        if parts is None or end <= start:
            return
        self._cap_size += end - start
        if self._cap_size <= self._cap_limit:
            parts.append(chunk[start:end] if (start, end) != (0, len(chunk)) else chunk)


@dataclass(slots=True)
class Summary:
    """What a reply says for comparison: rows (by tags), an order-independent hash of its rows, the error."""

    rows: int = 0
    row_hash: str | None = None  # None: not computed (reply over the capture limit)
    sqlstate: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "hash": self.row_hash, "error": self.sqlstate, "message": self.message}


def summarize(reply: bytes | None, rows: int) -> Summary:
    """Summary of one statement's reply: the sum (mod 2^64) of each DataRow's hash, so row order
    does not matter and duplicates count; `rows` is the tag count the meter saw."""
    out = Summary(rows=rows)
    if reply is None:
        return out
    acc = 0
    pos = 0
    n = len(reply)
    blake = hashlib.blake2b
    while pos + 5 <= n:
        t = reply[pos]
        end = pos + 1 + _I.unpack_from(reply, pos + 1)[0]
        if end > n:
            break
        if t == _D:
            acc = (acc + int.from_bytes(blake(reply[pos + 5 : end], digest_size=8).digest(), "big")) & _MASK
        elif t == _E and out.sqlstate is None:
            f = messages.parse_error_fields(reply[pos + 5 : end])
            out.sqlstate = f.get("C", "XX000")
            out.message = f.get("M")
        pos = end
    out.row_hash = f"{acc:016x}"
    return out
