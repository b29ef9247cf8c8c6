"""Frontend extended-protocol messages as typed records: each decoded once, checked, its parts named by field."""

from __future__ import annotations

from typing import Any, Final, final

from heliosproxy.protocol import codes, messages

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


# After login, per type byte: 1 when the type may be read on (FRONTEND_TYPES less PasswordMessage).
_STATEMENT_TYPES: Final = bytes([1 if t in codes.FRONTEND_TYPES and t != codes.F_PASSWORD else 0 for t in range(256)])


def header_error(t: int, length: int, max_size: int) -> str:
    """Framing after login: "" when a message header (type byte, length) may be read on, else the violation."""
    if 4 <= length <= max_size and _STATEMENT_TYPES[t]:
        return ""  # the common case: one table look-up and two compares
    if not _STATEMENT_TYPES[t]:
        return f"invalid frontend message type {t}"
    if length < 4:
        return "invalid message length"
    return f"message of {length} bytes exceeds max_message_size ({max_size})"


# Names (portal, statement) are short: a compiled byte loop finds their NUL faster than bytes.index's
# generic method call; past this many bytes (a query text) bytes.index takes over.
_SHORT: Final = 64


def _nul(data: bytes, pos: int) -> int:
    """Index of the first NUL at or after `pos`; ValueError (or IndexError) when there is none."""
    stop = min(len(data), pos + _SHORT)
    i = pos
    while i < stop:
        if data[i] == 0:
            return i
        i += 1
    return data.index(0, i)


def _text(data: bytes, start: int, end: int, codec: str) -> str:
    """data[start:end] decoded in the client's encoding ("" without a copy when empty)."""
    if start == end:
        return ""
    if codec == "utf-8":
        return data[start:end].decode("utf-8")  # mypyc calls the UTF-8 decoder directly
    return data[start:end].decode(codec)


def _u16(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


def _check_bind(data: bytes, pos: int) -> None:
    """Walk a Bind after its two names (`pos`): format codes, parameters, result formats, and nothing more.
    ValueError or IndexError when malformed (the same rules as messages.bind_result_formats)."""
    pos += 2 + 2 * _u16(data, pos)
    n = _u16(data, pos)
    pos += 2
    for _ in range(n):
        b0 = data[pos]
        ln = (b0 << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        if b0 < 0x80:
            pos += ln
        elif ln != 0xFFFFFFFF:  # negative: only -1 (NULL) is allowed
            raise ValueError("invalid parameter length")
    if pos + 2 + 2 * _u16(data, pos) != len(data):
        raise ValueError("invalid message length")


def decode(t: int, data: bytes, codec: str) -> Msg:
    """Decode one extended-protocol message; ValueError (or IndexError, UnicodeDecodeError)
    when it is malformed."""
    if t == codes.F_BIND:
        end = _nul(data, 5)
        p2 = _nul(data, end + 1) + 1
        _check_bind(data, p2)
        return Msg(t, data, _text(data, 5, end, codec), stmt=_text(data, end + 1, p2 - 1, codec), at=p2)
    if t == codes.F_EXECUTE:
        end = _nul(data, 5)
        if end != len(data) - 5:
            raise ValueError("truncated")
        return Msg(t, data, _text(data, 5, end, codec))  # a portal name must be text
    if t == codes.F_PARSE:
        end = _nul(data, 5)
        name = _text(data, 5, end, codec)
        p2 = data.index(0, end + 1) + 1
        if len(data) != p2 + 2 + 4 * _u16(data, p2):
            raise ValueError("bad parameter types")
        raw = data[end + 1 : p2 - 1]
        try:
            sql = raw.decode("utf-8") if codec == "utf-8" else raw.decode(codec)
            return Msg(t, data, name, sql=sql, raw=raw, tail=data[p2:])
        except UnicodeDecodeError:
            return Msg(t, data, name, sql=raw.decode(codec, "replace"), raw=raw, tail=data[p2:], readable=False)
    if t == codes.F_DESCRIBE or t == codes.F_CLOSE:
        kind = data[5]
        if kind != STATEMENT and kind != PORTAL:
            raise ValueError(f"invalid {'DESCRIBE' if t == codes.F_DESCRIBE else 'CLOSE'} message subtype")
        n = len(data)
        if _nul(data, 6) != n - 1:
            raise ValueError("trailing bytes")
        return Msg(t, data, _text(data, 6, n - 1, codec), sub=kind)
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
