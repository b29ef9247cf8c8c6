"""Encoders and decoders for the messages the proxy builds or inspects; everything else is forwarded raw."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

from heliosproxy.protocol import codes

_I: Final = struct.Struct("!I")
_i: Final = struct.Struct("!i")
_H: Final = struct.Struct("!H")
_II: Final = struct.Struct("!II")


def msg(type_: int, body: bytes) -> bytes:
    """Frame a typed message: type byte, Int32 length (including itself), body."""
    return bytes((type_,)) + _I.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


# ---------------------------------------------------------------- backend → client


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None = None,
    *,
    notice: bool = False,
) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(message)
    if detail:
        body += b"D" + cstr(detail)
    return msg(codes.B_NOTICE if notice else codes.B_ERROR, body + b"\x00")


def ready_for_query(status: int) -> bytes:
    return b"Z\x00\x00\x00\x05" + bytes((status,))


READY_IDLE: Final = ready_for_query(codes.TX_IDLE)
AUTH_OK_MSG: Final = msg(codes.B_AUTH, _I.pack(codes.AUTH_OK))
PARSE_COMPLETE: Final = b"1\x00\x00\x00\x04"
BIND_COMPLETE: Final = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE: Final = b"3\x00\x00\x00\x04"
NO_DATA: Final = b"n\x00\x00\x00\x04"
EMPTY_QUERY: Final = b"I\x00\x00\x00\x04"


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return msg(codes.B_AUTH, _I.pack(code) + payload)


def parameter_status(name: str, value: str) -> bytes:
    return msg(codes.B_PARAMETER_STATUS, cstr(name) + cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return msg(codes.B_BACKEND_KEY_DATA, _II.pack(pid & 0xFFFFFFFF, key & 0xFFFFFFFF))


def command_complete(tag: str) -> bytes:
    return msg(codes.B_COMMAND_COMPLETE, cstr(tag))


def row_description(columns: Sequence[str]) -> bytes:
    """Text-format columns of type text (OID 25)."""
    parts = [_H.pack(len(columns))]
    for name in columns:
        parts.append(cstr(name) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))
    return msg(codes.B_ROW_DESCRIPTION, b"".join(parts))


def data_row(values: Sequence[str | None]) -> bytes:
    parts = [_H.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_i.pack(-1))
        else:
            b = v.encode()
            parts.append(_i.pack(len(b)) + b)
    return msg(codes.B_DATA_ROW, b"".join(parts))


def parameter_description(oids: Sequence[int]) -> bytes:
    return msg(codes.B_PARAMETER_DESCRIPTION, _H.pack(len(oids)) + b"".join(_I.pack(o) for o in oids))


def result_set(columns: Sequence[str], rows: Iterable[Sequence[str | None]]) -> bytes:
    """RowDescription, DataRow per row and CommandComplete `SELECT n` (no ReadyForQuery)."""
    out = [row_description(columns)]
    n = 0
    for row in rows:
        out.append(data_row(row))
        n += 1
    out.append(command_complete(f"SELECT {n}"))
    return b"".join(out)


def parse_error_fields(body: bytes | memoryview) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body: {'S': 'ERROR', 'C': '42P01', 'M': ...}."""
    out: dict[str, str] = {}
    data = bytes(body)
    i = 0
    while i < len(data) and data[i] != 0:
        code = chr(data[i])
        end = data.index(b"\x00", i + 1)
        out[code] = data[i + 1 : end].decode(errors="replace")
        i = end + 1
    return out


# ---------------------------------------------------------------- client → server


def startup_message(params: dict[str, str]) -> bytes:
    body = _I.pack(codes.PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _I.pack(len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return _I.pack(16) + _I.pack(codes.CANCEL_REQUEST) + _II.pack(pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def query(sql: str) -> bytes:
    return msg(codes.F_QUERY, cstr(sql))


def password_message(payload: bytes) -> bytes:
    return msg(codes.F_PASSWORD, payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return msg(codes.F_PASSWORD, cstr(mechanism) + _i.pack(len(data)) + data)


def parse(name: str, sql: str, param_types: bytes = b"\x00\x00") -> bytes:
    """Parse; `param_types` is the raw Int16 count + Int32 OIDs tail as the client sent it."""
    return msg(codes.F_PARSE, cstr(name) + cstr(sql) + param_types)


def close_statement(name: str) -> bytes:
    return msg(codes.F_CLOSE, b"S" + cstr(name))


SYNC: Final = b"S\x00\x00\x00\x04"
TERMINATE: Final = b"X\x00\x00\x00\x04"


def read_cstr(data: bytes | bytearray | memoryview, pos: int) -> tuple[str, int]:
    """Decode a NUL-terminated string at `pos`; returns (text, position after the NUL)."""
    end = bytes(data[pos:]).index(b"\x00") + pos if isinstance(data, memoryview) else data.index(0, pos)
    return bytes(data[pos:end]).decode(), end + 1


def decode_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """Body of an untyped startup packet (after the length): (code, params). Raises ValueError if malformed."""
    if len(body) < 4:
        raise ValueError("startup packet too short")
    code = _I.unpack_from(body, 0)[0]
    params: dict[str, str] = {}
    if code != codes.PROTOCOL_3_0:
        return code, params
    parts = body[4:].split(b"\x00")
    # A well-formed list ends with an empty name and the final terminator: [..., b"", b""].
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ValueError("startup packet is not NUL-terminated")
    items = parts[:-2]
    if len(items) % 2:
        raise ValueError("startup packet has a parameter without a value")
    for k, v in zip(items[0::2], items[1::2], strict=True):
        params[k.decode()] = v.decode()
    return code, params


def bind_result_formats(msg: bytes, pos: int) -> list[int]:
    """Walk a Bind after its two names (`pos`): format codes, parameters, result formats, and nothing
    more; returns the result-column format codes. Raises ValueError/struct.error when malformed."""
    h = _H.unpack_from
    i = _i.unpack_from
    n = h(msg, pos)[0]
    pos += 2 + 2 * n
    n = h(msg, pos)[0]
    pos += 2
    for _ in range(n):
        ln = i(msg, pos)[0]
        pos += 4
        if ln > 0:
            pos += ln
        elif ln < -1:
            raise ValueError("invalid parameter length")
    n = h(msg, pos)[0]
    if pos + 2 + 2 * n != len(msg):
        raise ValueError("invalid message length")
    return [h(msg, pos + 2 + 2 * k)[0] for k in range(n)] if n else []
