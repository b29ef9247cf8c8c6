"""Extended-query frontend messages (Parse/Bind/Describe/Execute/Close/Sync) as bytes, for raw-socket tests."""

from __future__ import annotations

import struct

from .rawpg import RawPg, cstr, data_rows, error_fields, msg


def parse(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    body = cstr(name) + cstr(sql) + struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    return msg(b"P", body)


def bind(statement: str, params: tuple[str | bytes | None, ...] = (), portal: str = "") -> bytes:
    """Bind text parameters (no format codes = all text), results in text."""
    body = cstr(portal) + cstr(statement) + b"\x00\x00" + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            raw = p if isinstance(p, bytes) else p.encode()
            body += struct.pack("!i", len(raw)) + raw
    return msg(b"B", body + b"\x00\x00")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def describe(kind: bytes, name: str) -> bytes:
    return msg(b"D", kind + cstr(name))


def close(kind: bytes, name: str) -> bytes:
    return msg(b"C", kind + cstr(name))


def sync() -> bytes:
    return msg(b"S")


def run_named(raw: RawPg, name: str, params: tuple[str | None, ...] = ()) -> tuple[str, list[list[str | None]]]:
    """Bind+Execute+Sync the prepared statement `name`: ("ok", rows) or (SQLSTATE, [])."""
    raw.send(bind(name, params) + execute() + sync())
    replies = raw.read_until_ready()
    for kind, body in replies:
        if kind == "E":
            return error_fields(body).get("C", "?"), []
    return "ok", data_rows(replies)


def prepare_named(raw: RawPg, name: str, sql: str) -> str:
    """Parse+Sync: "ok" or the SQLSTATE of the error."""
    raw.send(parse(name, sql) + sync())
    for kind, body in raw.read_until_ready():
        if kind == "E":
            return error_fields(body).get("C", "?")
    return "ok"
