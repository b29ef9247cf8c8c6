"""Bounded memory per client: stop reading a client once what the proxy holds for it passes max_client_buffer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession


# What the proxy keeps per statement in flight (its Inflight, the queued write, classification), in bytes:
# a client pipelining tiny statements costs far more than their bytes.
PER_STATEMENT: Final = 512
# Statements taken from one client per event-loop callback: a pipelining client cannot delay the others.
BURST: Final = 256
# Below this many bytes of input and statements in flight, check() is skipped: the transports' own
# write buffers are bounded by their high-water marks (pause_writing), far below max_client_buffer.
CHEAP_BELOW: Final = 65536  # 64 KiB


def held(session: ClientSession) -> int:
    """Bytes the proxy holds for this client: its unprocessed input, statements in flight, the server
    write buffer and its own."""
    n = len(session.buf) + (session.pending + len(session.expect)) * PER_STATEMENT
    conn = session.backend
    if conn is not None and conn.transport is not None:
        n += conn.transport.get_write_buffer_size()
    n += session.io.write_buffer_size()
    return n


def check_cheaply(session: ClientSession) -> None:
    """check(), skipped while what the proxy holds is clearly small (the common case, per client read).
    The client's own write buffer is left out here: its high-water mark pauses the server instead."""
    n = len(session.buf) + (session.pending + len(session.expect)) * PER_STATEMENT
    conn = session.backend
    if conn is not None and conn.transport is not None:
        n += conn.transport.get_write_buffer_size()
    if n > min(CHEAP_BELOW, session.ctx.max_client_buffer // 4):
        check(session)


def check(session: ClientSession) -> None:
    """After taking client input: past max_client_buffer, reading this client pauses until the server drains."""
    if held(session) > session.ctx.max_client_buffer:
        session.held_paused = True
        session._pause_reading()


def drained(session: ClientSession) -> None:
    """A write buffer (server or client side) drained: resume reading once under half the limit."""
    if session.held_paused and held(session) <= session.ctx.max_client_buffer // 2:
        session.held_paused = False
        session._continue()
