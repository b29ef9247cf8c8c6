"""The admin console session without sockets: frontend messages in (whole and in 1/3/7-byte chunks), the bytes out."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import pytest

from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.session.admin import AdminSession

Z = messages.READY_IDLE
FLUSH = b"H\x00\x00\x00\x04"
ROWS = messages.result_set(["version"], [["HeliosProxy"]])
ROWDESC = messages.row_description(["version"])


class Console:
    """Answers SHOW VERSION (now, or later as with workers); anything else is an unknown command."""

    def __init__(self, later: bool = False):
        self.later = later
        self.seen: list[str] = []

    def execute(self, sql: str, session: Any) -> Any:
        self.seen.append(sql)
        if self.later:
            return self._later(sql)
        return self.execute_local(sql, session)

    async def _later(self, sql: str) -> bytes:
        await asyncio.sleep(0)
        return bytes(self.execute_local(sql, None))

    def execute_local(self, sql: str, session: Any) -> bytes:
        if sql.strip().upper() == "SHOW VERSION":
            return ROWS
        raise HeliosError(f'unknown admin command "{sql.split()[0]}"; try SHOW HELP', sqlstate="42601")


class Session:
    """What AdminSession uses of a ClientSession."""

    def __init__(self, console: Console | None):
        self.buf = bytearray()
        self.phase = 3
        self.ctx = SimpleNamespace(config=SimpleNamespace(max_message_size=1 << 20), admin=console)
        self.compat = SimpleNamespace(admin_statements={})
        self.closed = False
        self.io = SimpleNamespace(close=self._close)  # session/core.py Io: only close() is used here
        self.peer, self.user, self._codec = "test", "admin", "utf-8"
        self.query_count = 0
        self.skip_to_sync = False
        self.out = bytearray()
        self.fatal: list[str] = []
        self.paused = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.console = AdminSession(self)  # type: ignore[arg-type]

    def _write(self, data: bytes) -> None:
        self.out += data

    def _close(self) -> None:
        self.closed = True

    def _violation(self, message: str) -> None:
        self.fatal.append(message)
        self.phase = 4
        self.buf.clear()

    def _pause_reading(self) -> None:
        self.paused = True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def _continue(self) -> None:
        self.paused = False
        self.console.process()


def run(data: bytes, chunk: int | None, console: Console | None = None) -> Session:
    """Feed `data` as data_received would, whole or in chunks, letting spawned answers finish."""

    async def main() -> Session:
        s = Session(console if console is not None else Console())
        step = chunk or max(1, len(data))
        for i in range(0, len(data), step):
            s.buf += data[i : i + step]
            s.console.process()
            while s.tasks:
                await s.tasks.pop(0)
        return s

    return asyncio.run(main())


def parse(name: str, sql: str) -> bytes:
    return messages.msg(codes.F_PARSE, messages.cstr(name) + messages.cstr(sql) + b"\x00\x00")


def bind(portal: str, stmt: str, result_formats: tuple[int, ...] = ()) -> bytes:
    body = messages.cstr(portal) + messages.cstr(stmt) + b"\x00\x00" + b"\x00\x00"
    body += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)
    return messages.msg(codes.F_BIND, body)


def describe(kind: bytes, name: str) -> bytes:
    return messages.msg(codes.F_DESCRIBE, kind + messages.cstr(name))


def execute(portal: str = "") -> bytes:
    return messages.msg(codes.F_EXECUTE, messages.cstr(portal) + b"\x00\x00\x00\x00")


def error(sqlstate: str, message: str) -> bytes:
    return messages.error_response("ERROR", sqlstate, message)


UNKNOWN = error("42601", 'unknown admin command "SHOW"; try SHOW HELP')
UNKNOWN_FOO = error("42601", 'unknown admin command "FOO"; try SHOW HELP')
ROWS_ONLY = ROWS[len(ROWDESC):]

# Each case: the client's bytes, what it must get.
CASES = {
    "simple query": (messages.query("SHOW VERSION"), ROWS + Z),
    "unknown command": (messages.query("FOO"), UNKNOWN_FOO + Z),
    "two queries in one read": (messages.query("SHOW VERSION") + messages.query("FOO"), ROWS + Z + UNKNOWN_FOO + Z),
    "extended, unnamed statement": (
        parse("", "SHOW VERSION") + bind("", "") + describe(b"P", "") + execute() + messages.SYNC,
        messages.PARSE_COMPLETE + messages.BIND_COMPLETE + ROWDESC + ROWS_ONLY + Z,
    ),
    "extended, named statement described": (
        parse("s1", "SHOW VERSION") + describe(b"S", "s1") + messages.SYNC + bind("", "s1") + execute()
        + messages.SYNC,
        messages.PARSE_COMPLETE + messages.parameter_description([]) + ROWDESC + Z
        + messages.BIND_COMPLETE + ROWS_ONLY + Z,
    ),
    "extended error skips to Sync": (
        bind("", "nosuch") + execute() + messages.SYNC + messages.query("SHOW VERSION"),
        error("26000", 'prepared statement "nosuch" does not exist') + Z + ROWS + Z,
    ),
    "error before a Flush: messages ignored until the Sync": (
        bind("", "nosuch") + FLUSH + parse("", "SHOW VERSION") + messages.SYNC,
        error("26000", 'prepared statement "nosuch" does not exist') + Z,
    ),
    "function call refused": (
        messages.msg(codes.F_FUNCTION_CALL, b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
        error("0A000", "the admin console does not run function calls") + Z,
    ),
    "terminate": (messages.msg(codes.F_TERMINATE, b"") + messages.query("SHOW VERSION"), b""),
}


@pytest.mark.parametrize("later", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_admin_session_table(case: str, chunk: int | None, later: bool) -> None:
    data, expected = CASES[case]
    s = run(data, chunk, Console(later))
    assert bytes(s.out) == expected
    assert not s.fatal
    assert s.closed == (case == "terminate")  # Terminate closes the connection, nothing after it runs


def test_no_console() -> None:
    s = Session(None)
    s.ctx.admin = None
    s.buf += messages.query("SHOW VERSION")
    s.console.process()
    assert bytes(s.out) == error("0A000", "the admin console is not available") + Z


def test_answer_gathered_later_holds_the_next_message() -> None:
    async def main() -> None:
        console = Console(later=True)
        s = Session(console)
        s.buf += messages.query("SHOW VERSION") + messages.query("FOO")
        s.console.process()
        assert console.seen == ["SHOW VERSION"] and s.paused and s.out == b""  # FOO waits
        while s.tasks:
            await s.tasks.pop(0)
        assert console.seen == ["SHOW VERSION", "FOO"]
        assert bytes(s.out) == ROWS + Z + UNKNOWN_FOO + Z

    asyncio.run(main())


@pytest.mark.parametrize(("data", "fatal"), [
    (b"X\x00\x00\x00\x02", "invalid message length"),
    (b"p\x00\x00\x00\x05\x00", "invalid frontend message type 112"),
    (messages.msg(codes.F_QUERY, b"SHOW\x00VERSION\x00"), "invalid string in message"),
    (messages.msg(codes.F_DESCRIBE, b"Xs\x00"), "invalid frontend message format"),
])
def test_protocol_violations(data: bytes, fatal: str) -> None:
    s = run(data, None)
    assert s.fatal == [fatal] and s.out == b""
