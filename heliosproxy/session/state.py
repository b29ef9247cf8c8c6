"""What a session carries between stages: its phases, a request waiting for a server, a statement in flight."""

from __future__ import annotations

import time
from typing import Final

from heliosproxy.plugins import hooks
from heliosproxy.protocol.frontend import Msg
from heliosproxy.routing.router import Target
from heliosproxy.sql.classify import StatementInfo

# Phases of a client connection.
STARTUP: Final = 0
AUTH: Final = 1
LOGIN: Final = 2
READY: Final = 3
CLOSED: Final = 4

_perf_counter: Final = time.perf_counter


class Inflight:
    """A statement (simple Query or extended batch up to Sync) waiting for its ReadyForQuery."""

    __slots__ = ("error", "info", "qctx", "start", "start_bytes", "target")

    def __init__(
        self, info: StatementInfo | None, target: Target | None, qctx: hooks.QueryContext | None, start_bytes: int
    ):
        self.start = _perf_counter()
        self.info = info
        self.target = target
        self.qctx = qctx
        self.start_bytes = start_bytes
        self.error: str | None = None


class Plan:
    """What to send for one client request once a backend is at hand."""

    __slots__ = ("answer", "batch", "dbs", "info", "inject", "qctx", "raw", "retries", "sync", "target", "write")

    def __init__(
        self,
        target: Target | None,
        raw: bytes | None,
        batch: list[Msg] | None,
        info: StatementInfo | None,
        qctx: hooks.QueryContext | None,
        sync: bool,
        write: bool,
    ):
        self.target = target  # None = primary, resolved at dispatch (may wait for one)
        self.raw = raw  # simple path: bytes to forward as they are
        self.batch = batch  # extended path: the messages to rewrite per backend
        self.info = info
        self.qctx = qctx
        self.sync = sync  # expects a ReadyForQuery
        self.write = write
        self.answer: bytes | None = None  # set: a proxy answer to write once earlier replies are in
        # DROP/ALTER/CREATE ... TEMPLATE DATABASE: databases our own idle connections may keep busy
        # (55006); the statement is retried once after closing them.
        self.dbs: tuple[str, ...] = ()
        self.retries = 0  # sent again because the pooled server it got was already gone
        # An error of the proxy's inside a pipeline the server has begun: the server is made to fail
        # at this point too (skipping to the Sync, as it would have), and the client sees this error.
        self.inject: bytes | None = None

    @classmethod
    def deferred(cls, answer: bytes | None) -> Plan:
        plan = cls(None, None, None, None, None, False, False)
        plan.answer = answer
        return plan
