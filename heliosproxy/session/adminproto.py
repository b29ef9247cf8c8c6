"""Extended-protocol batches on the admin console: Parse/Bind/Describe/Execute/Close answered message by message."""

from __future__ import annotations

import inspect
import struct
from typing import Any

from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import STATEMENT, Msg

_I = struct.Struct("!I")
_H = struct.Struct("!H")
_h = struct.Struct("!h")
_i = struct.Struct("!i")
INT8, INT4, TEXT, NUMERIC = 20, 23, 25, 1700


def _result_formats(msg: bytes, pos: int) -> list[int]:
    """The result-column format codes of a Bind message (`pos`: just after the statement name)."""
    return messages.bind_result_formats(msg, pos)

def _oids(rowdesc: bytes) -> list[int]:
    n = _H.unpack_from(rowdesc, 5)[0]
    pos = 7
    out = []
    for _ in range(n):
        pos = rowdesc.index(b"\x00", pos) + 1
        out.append(_I.unpack_from(rowdesc, pos + 6)[0])
        pos += 18
    return out


def _numeric(v: int) -> bytes:
    digits: list[int] = []
    n = abs(v)
    while n:
        digits.append(n % 10000)
        n //= 10000
    digits.reverse()
    head = struct.pack("!hhHh", len(digits), len(digits) - 1 if digits else 0, 0x4000 if v < 0 else 0, 0)
    return head + b"".join(_h.pack(d) for d in digits)


def _binary(value: bytes, oid: int) -> bytes:
    if oid == INT4:
        return _i.pack(int(value))
    if oid == INT8:
        return struct.pack("!q", int(value))
    if oid == NUMERIC:
        return _numeric(int(value))
    return value  # text: the same bytes


def _to_formats(rows: bytes, oids: list[int], formats: list[int]) -> bytes:
    """DataRows re-encoded for the result formats a Bind asked for (binary for int4, int8, numeric, text)."""
    if not any(formats):
        return rows
    fmt = formats * len(oids) if len(formats) == 1 else formats
    out: list[bytes] = []
    pos = 0
    while pos < len(rows):
        t = rows[pos]
        end = pos + 1 + _I.unpack_from(rows, pos + 1)[0]
        if t != codes.B_DATA_ROW:
            out.append(rows[pos:end])
            pos = end
            continue
        n = _H.unpack_from(rows, pos + 5)[0]
        q = pos + 7
        cols: list[bytes] = []
        for k in range(n):
            ln = _i.unpack_from(rows, q)[0]
            q += 4
            if ln < 0:
                cols.append(_i.pack(-1))
                continue
            val = rows[q : q + ln]
            q += ln
            if k < len(fmt) and fmt[k] == 1:
                val = _binary(val, oids[k] if k < len(oids) else TEXT)
            cols.append(_i.pack(len(val)) + val)
        out.append(messages.msg(codes.B_DATA_ROW, _H.pack(n) + b"".join(cols)))
        pos = end
    return b"".join(out)


def _split_rowdesc(body: bytes) -> tuple[bytes, bytes]:
    """(RowDescription or b"", the rest) of a console answer."""
    if body[:1] == bytes((codes.B_ROW_DESCRIPTION,)):
        end = 1 + _I.unpack_from(body, 1)[0]
        return body[:end], body[end:]
    return b"", body


async def answer(session: Any, batch: list[Msg]) -> bytes:
    """What a server would answer to this batch, with the console as the server. Statements (named or not)
    live in `session.compat.admin_statements`; Describe runs only SHOW (it must not run a command)."""
    admin = session.ctx.admin
    stmts: dict[str, str] = session.compat.admin_statements
    portal_sql: str | None = None
    formats: list[int] = []
    out: list[bytes] = []
    failed = False
    for m in batch:
        t = m.t
        if failed and t != codes.F_SYNC:
            continue
        try:
            if t == codes.F_PARSE:
                stmts[m.name] = m.sql
                out.append(messages.PARSE_COMPLETE)
            elif t == codes.F_BIND:
                portal_sql = stmts.get(m.stmt)
                if portal_sql is None:
                    raise HeliosError(f'prepared statement "{m.stmt}" does not exist', sqlstate="26000")
                formats = _result_formats(m.data, m.at)
                out.append(messages.BIND_COMPLETE)
            elif t == codes.F_DESCRIBE:
                sql = stmts.get(m.name) if m.sub == STATEMENT else portal_sql
                if sql is None:
                    raise HeliosError(f'prepared statement "{m.name}" does not exist', sqlstate="26000")
                if m.sub == STATEMENT:
                    out.append(messages.parameter_description([]))
                rowdesc = b""
                if sql.strip().upper().startswith("SHOW") and admin is not None:
                    rowdesc, _ = _split_rowdesc(admin.execute_local(sql, session) or b"")
                out.append(rowdesc or messages.NO_DATA)
            elif t == codes.F_EXECUTE:
                if portal_sql is None:
                    raise HeliosError('portal "" does not exist', sqlstate="34000")
                if admin is None:
                    raise HeliosError("the admin console is not available", sqlstate="0A000")
                # execute(), not execute_local(): with workers a SHOW is merged from all of them and a
                # command runs on all (an awaitable answer then).
                res = admin.execute(portal_sql, session)
                if inspect.isawaitable(res):
                    res = await res
                rowdesc, rows = _split_rowdesc(res or b"")
                out.append(_to_formats(rows, _oids(rowdesc), formats) if rowdesc else rows)
            elif t == codes.F_CLOSE:
                if m.sub == STATEMENT:
                    stmts.pop(m.name, None)
                out.append(messages.CLOSE_COMPLETE)
            elif t == codes.F_SYNC:
                failed = False
                out.append(messages.READY_IDLE)
        except HeliosError as exc:
            out.append(messages.error_response("ERROR", exc.sqlstate, exc.message))
            failed = True
    if failed:
        session.skip_to_sync = True  # a Flush ended the batch: ignore messages until the Sync, like a server
    return b"".join(out)
