"""Incremental header scanner for backend→client bytes: finds message boundaries and ReadyForQuery without copying."""

from __future__ import annotations

import struct
from typing import Final

_I: Final = struct.Struct("!I")
_Z: Final = 90  # 'Z'
_E: Final = 69  # 'E'
_S: Final = 83  # 'S'
# The first field of a server's ErrorResponse is its severity: these end the session.
_FATAL: Final = frozenset((b"SFATAL", b"SPANIC"))
ERROR_SEEN: Final = 0x100  # or-ed into a status when an ErrorResponse came since the previous ReadyForQuery


class ReplyScanner:
    """Tracks message framing across chunks of a backend stream.

    `feed(chunk)` walks only the 5-byte headers and returns the ReadyForQuery statuses seen in
    this chunk (in order), each or-ed with ERROR_SEEN when an ErrorResponse preceded it. Bodies
    are skipped, never copied, so the caller can forward the chunk as is. Headers split across
    chunks are kept in a small carry buffer.
    """

    __slots__ = ("_carry", "_err", "_skip", "_want_status", "bytes_seen", "fatal", "params")

    def __init__(self) -> None:
        self._skip = 0  # body bytes of the current message still to skip
        self._carry = b""  # partial header from the previous chunk
        self._want_status = False  # the next byte is a ReadyForQuery status
        self._err = 0
        self.bytes_seen = 0
        self.fatal = False  # an ErrorResponse of severity FATAL/PANIC went by: the server is ending the session
        self.params = False  # a ParameterStatus went by since the flag was last cleared

    def reset(self) -> None:
        self.fatal = False
        self.params = False
        self._err = 0
        self._skip = 0
        self._carry = b""
        self._want_status = False

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at a message boundary."""
        return not self._skip and not self._carry and not self._want_status

    def feed(self, chunk: bytes) -> list[int]:
        statuses: list[int] = []
        n = len(chunk)
        self.bytes_seen += n
        pos = 0
        if self._want_status:
            if n == 0:
                return statuses
            statuses.append(chunk[0] | self._err)
            self._err = 0
            self._want_status = False
            pos = 1
        if self._skip:
            if self._skip >= n - pos:
                self._skip -= n - pos
                return statuses
            pos += self._skip
            self._skip = 0
        if self._carry:
            need = 5 - len(self._carry)
            head = self._carry + chunk[pos : pos + need]
            if len(head) < 5:
                self._carry = head
                return statuses
            self._carry = b""
            pos += need
            length = _I.unpack_from(head, 1)[0] - 4
            if head[0] == _E:
                self._err = ERROR_SEEN
                if bytes(chunk[pos : pos + 6]) in _FATAL:
                    self.fatal = True
            elif head[0] == _S:
                self.params = True
            elif head[0] == _Z:
                if pos < n:
                    statuses.append(chunk[pos] | self._err)
                    self._err = 0
                    pos += 1
                else:
                    self._want_status = True
                    return statuses
                length -= 1
            if length > n - pos:
                self._skip = length - (n - pos)
                return statuses
            pos += length
        while pos + 5 <= n:
            t = chunk[pos]
            # The length, read byte by byte: compiled, cheaper than a Struct call and its tuple.
            end = pos + 1 + ((chunk[pos + 1] << 24) | (chunk[pos + 2] << 16) | (chunk[pos + 3] << 8) | chunk[pos + 4])
            if t == _E:
                self._err = ERROR_SEEN
                if bytes(chunk[pos + 5 : pos + 11]) in _FATAL:
                    self.fatal = True
            elif t == _S:
                self.params = True
            elif t == _Z:
                if pos + 5 < n:
                    statuses.append(chunk[pos + 5] | self._err)
                    self._err = 0
                else:
                    self._want_status = True
                    return statuses
            if end > n:
                self._skip = end - n
                return statuses
            pos = end
        if pos < n:
            self._carry = chunk[pos:]
        return statuses
