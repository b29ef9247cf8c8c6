"""Frontend extended-protocol messages as typed records: each decoded once, checked, its parts named by field."""

from __future__ import annotations

import struct
from typing import Any, Final, final

from heliosproxy.protocol import codes, messages

_H = struct.Struct("!H")
STATEMENT: Final = 83  # 'S' in Describe/Close: a prepared statement (80 'P' is a portal)
PORTAL: Final = 80


@final
class Msg:
    """One message of an extended-protocol batch (Parse, Bind, Describe, Close, Execute, Sync, Flush).

    `data` is the message as the client sent it (type byte and length included); the other fields are
    what the proxy reads from it, decoded in the client's encoding:
      Parse     name = statement name, sql/raw = query text/bytes, tail = parameter-type section,
                readable = the text decoded cleanly
      Bind      name = portal, stmt = statement name, at = offset of the parameter section in data
      Describe  sub = STATEMENT or PORTAL, name = its name
      Close     sub = STATEMENT or PORTAL, name = its name
    """

    __slots__ = ("at", "data", "name", "raw", "readable", "sql", "st", "stmt", "sub", "t", "tail")

    def __init__(
        self,
        t: int,
        data: bytes,
        name: str = "",
        stmt: str = "",
        sub: int = 0,
        sql: str = "",
        raw: bytes = b"",
        tail: bytes = b"",
        readable: bool = True,
        at: int = 0,
    ) -> None:
        self.t = t
        self.data = data
        self.name = name
        self.stmt = stmt
        self.sub = sub
        self.sql = sql
        self.raw = raw
        self.tail = tail
        self.readable = readable
        self.at = at
        # The session's prepared statement this message names (Parse: the one it makes; Bind, Describe: the
        # one it uses), resolved in order when the batch is judged, so that a Close and a new Parse of the
        # same name later in the batch do not change what an earlier message meant. None: unknown to it.
        self.st: Any = None

    def with_data(self, data: bytes) -> Msg:
        """The same message with other bytes (a plugin rewrote its text)."""
        return Msg(self.t, data, self.name, self.stmt, self.sub, self.sql, self.raw, self.tail, self.readable, self.at)

    def names_statement(self) -> bool:
        """Does this message refer to a named prepared statement (which transaction pooling renames)?"""
        t = self.t
        if t == codes.F_PARSE:
            return self.name != ""
        if t == codes.F_BIND:
            return self.stmt != ""
        if t == codes.F_DESCRIBE or t == codes.F_CLOSE:
            return self.sub == STATEMENT and self.name != ""
        return False

    def __repr__(self) -> str:
        return f"Msg({chr(self.t)!r}, name={self.name!r}, stmt={self.stmt!r}, sub={self.sub})"


_STATEMENT_TYPES: Final = frozenset(codes.FRONTEND_TYPES - {codes.F_PASSWORD})  # after login


def header_error(t: int, length: int, max_size: int) -> str:
    """Framing after login: "" when a message header (type byte, length) may be read on, else the violation."""
    if t not in _STATEMENT_TYPES:
        return f"invalid frontend message type {t}"
    if length < 4:
        return "invalid message length"
    if length > max_size:
        return f"message of {length} bytes exceeds max_message_size ({max_size})"
    return ""


def decode(t: int, data: bytes, codec: str) -> Msg:
    """Decode one extended-protocol message; ValueError (or IndexError, UnicodeDecodeError,
    struct.error) when it is malformed."""
    if t == codes.F_PARSE:
        end = data.index(0, 5)
        name = data[5:end].decode(codec)
        p2 = data.index(0, end + 1) + 1
        if len(data) != p2 + 2 + 4 * _H.unpack_from(data, p2)[0]:
            raise ValueError("bad parameter types")
        raw = data[end + 1 : p2 - 1]
        try:
            return Msg(t, data, name, sql=raw.decode(codec), raw=raw, tail=data[p2:])
        except UnicodeDecodeError:
            return Msg(t, data, name, sql=raw.decode(codec, "replace"), raw=raw, tail=data[p2:], readable=False)
    if t == codes.F_BIND:
        end = data.index(0, 5)
        portal = data[5:end].decode(codec)
        p2 = data.index(0, end + 1) + 1
        stmt = data[end + 1 : p2 - 1].decode(codec)
        messages.bind_result_formats(data, p2)  # validates the rest of the Bind
        return Msg(t, data, portal, stmt=stmt, at=p2)
    if t == codes.F_DESCRIBE or t == codes.F_CLOSE:
        kind = data[5]
        if kind != STATEMENT and kind != PORTAL:
            raise ValueError(f"invalid {'DESCRIBE' if t == codes.F_DESCRIBE else 'CLOSE'} message subtype")
        if data.index(0, 6) != len(data) - 1:
            raise ValueError("trailing bytes")
        return Msg(t, data, data[6:-1].decode(codec), sub=kind)
    if t == codes.F_EXECUTE:
        end = data.index(0, 5)
        if end != len(data) - 5:
            raise ValueError("truncated")
        return Msg(t, data, data[5:end].decode(codec))  # a portal name must be text
    return Msg(t, data)


def names_in(batch: list[Msg]) -> bool:
    """Does the batch refer to a named prepared statement (which transaction pooling renames)?"""
    return any(m.names_statement() for m in batch)


# A Bind of a statement no server has: makes a server fail at that point of a pipeline (Plan.inject).
FAIL_BIND: Final = messages.msg(codes.F_BIND, b"\x00hp_no_such_statement\x00\x00\x00\x00\x00\x00\x00")


def fail_bind() -> Msg:
    return Msg(codes.F_BIND, FAIL_BIND, at=len(FAIL_BIND) - 6)


def join(batch: list[Msg]) -> bytes:
    """The batch's bytes as the client sent them."""
    return b"".join([m.data for m in batch])
