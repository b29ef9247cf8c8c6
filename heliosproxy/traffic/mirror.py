"""Mirroring (`mirror:`): a sampled copy of statements runs on a shadow node off the client's path, and is compared."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.config.schema import MirrorConfig, MirrorStatements
from heliosproxy.errors import BackendAuthError, HeliosError
from heliosproxy.pool.manager import PoolManager
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import Msg
from heliosproxy.sql.classify import StatementInfo
from heliosproxy.traffic.meter import ReplyMeter, Summary, summarize

log = logging.getLogger("heliosproxy.mirror")

_EXECUTE_ALL = b"\x00\x00\x00\x00"  # Execute's max rows: 0 = all
_COUNTERS = ("mirrored", "mismatches", "slower", "errors", "dropped")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def settings_sql(applied: dict[str, str], want: dict[str, str]) -> str:
    """One statement that brings a shadow connection's settings to the client session's."""
    calls = [f"pg_catalog.set_config({_quote(k)}, NULL, false)" for k in applied if k not in want]
    changed = sorted((k for k, v in want.items() if applied.get(k) != v),
                     key=lambda k: (k != "session_authorization", k != "role", k))
    calls.extend(f"pg_catalog.set_config({_quote(k)}, {_quote(want[k])}, false)" for k in changed)
    return "SELECT " + ", ".join(calls) if calls else ""


@dataclass(slots=True)
class Job:
    """One sampled statement: what to send to the shadow, and what the client was answered."""

    request: bytes  # protocol messages ending in Query or Sync
    settings: dict[str, str]
    user: str
    database: str
    query: str  # normalized text (no literal values)
    start: float = field(default_factory=time.monotonic)
    reply: bytes | None = None  # the client's reply (None: over max_result)
    rows: int = 0
    primary_ms: float = 0.0


class _Runner:
    """Owns a shadow connection while a job runs on it: hands each reply over at its ReadyForQuery."""

    def __init__(self, limit: int):
        self.meter = ReplyMeter(None, False)
        self.limit = limit
        self.waiter: asyncio.Future[tuple[bytes | None, int, float]] | None = None
        self.status = codes.TX_IDLE

    async def reply(self, conn: BackendConnection, request: bytes) -> tuple[bytes | None, int, float]:
        fut: asyncio.Future[tuple[bytes | None, int, float]] = asyncio.get_running_loop().create_future()
        self.waiter = fut

        def done(reply: bytes | None, rows: int, at: float) -> None:
            if not fut.done():
                fut.set_result((reply, rows, at))

        self.meter.arm(done, self.limit)
        conn.write(request)
        return await fut

    def on_backend_data(self, conn: BackendConnection, data: bytes) -> None:
        self.meter.feed(data)

    def on_backend_lost(self, conn: BackendConnection, exc: Exception | None) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionResetError(str(exc or "the shadow closed the connection")))

    def on_backend_drained(self, conn: BackendConnection) -> None:
        pass


class Mirror:
    """Samples statements (`offer_*`), queues them (bounded) and runs them on the shadow with
    `concurrency` tasks; counts and recent mismatches are in `view()`."""

    def __init__(self, cfg: MirrorConfig, pools: PoolManager):
        self.cfg = cfg
        self.pools = pools
        self.mirrored = 0
        self.mismatches = 0
        self.slower = 0
        self.errors = 0
        self.dropped = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.recent)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.running = 0
        self._workers: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._spawn()

    def configure(self, cfg: MirrorConfig) -> None:
        self.cfg = cfg
        if cfg.recent != self.recent.maxlen:
            self.recent = collections.deque(self.recent, maxlen=cfg.recent)
        while len(self._workers) > cfg.concurrency:
            self._workers.pop().cancel()
        self._spawn()

    def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self._workers) < self.cfg.concurrency:
            self._workers.append(loop.create_task(self._work()))

    async def stop(self) -> None:
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ sampling (client path)
    def eligible(self, info: StatementInfo) -> bool:
        if info.statements < 1 or info.parse_error or info.tx is not None or info.effects or info.pins:
            return False
        if "CopyStmt" in info.kinds:
            return False
        return info.read_only or self.cfg.statements is MirrorStatements.ALL

    def _arm(self, session: Any, info: StatementInfo, request: bytes) -> None:
        if (
            session.tx_status != codes.TX_IDLE
            or session.pending
            or session.inflight
            or session.hold is not None
        ):
            return  # not alone on the wire: its reply could not be told from others'
        if self.queue.qsize() >= self.cfg.queue:
            self.dropped += 1
            return
        meter = session.tap
        if meter is None:
            meter = session.tap = ReplyMeter(session.inflight, False)
        job = Job(request, dict(session.settings), session.user, session.database, info.normalized[:500])

        def captured(reply: bytes | None, rows: int, at: float) -> None:
            if not meter.count and session.tap is meter:
                session.tap = None  # no analytics: nothing reads this session's replies until the next sample
            self._captured(job, reply, rows, at)

        meter.arm(captured, self.cfg.max_result)

    def offer_query(self, session: Any, info: StatementInfo, msg: bytes) -> None:
        """A simple-protocol Query about to be sent (`msg` as sent to the server)."""
        if random.random() < self.cfg.sample and self.eligible(info):
            self._arm(session, info, msg)

    def offer_batch(self, session: Any, info: StatementInfo, batch: list[Msg]) -> None:
        """An extended-protocol batch about to be sent: mirrored when it executes one statement once."""
        if random.random() >= self.cfg.sample or not self.eligible(info):
            return
        bind: Msg | None = None
        executes = 0
        for m in batch:
            if m.t == codes.F_BIND:
                if bind is not None:
                    return
                bind = m
            elif m.t == codes.F_EXECUTE:
                executes += 1
                if m.data[-4:] != _EXECUTE_ALL:
                    return  # a portal fetched in parts: not one comparable reply
        if bind is None or executes != 1 or batch[-1].t != codes.F_SYNC:
            return
        st = session.statements.get(bind.stmt) if bind.stmt else session.unnamed
        if st is None:
            return
        request = (
            messages.msg(codes.F_PARSE, b"\x00" + st.raw + b"\x00" + st.tail)
            + messages.msg(codes.F_BIND, b"\x00\x00" + bind.data[bind.at :])
            + messages.msg(codes.F_EXECUTE, b"\x00" + _EXECUTE_ALL)
            + messages.SYNC
        )
        self._arm(session, info, request)

    def _captured(self, job: Job, reply: bytes | None, rows: int, at: float) -> None:
        """The client's reply is complete (called while it is written): queue the copy."""
        job.reply, job.rows = reply, rows
        job.primary_ms = (at - job.start) * 1000.0
        if self.queue.qsize() >= self.cfg.queue:
            self.dropped += 1
            return
        self.queue.put_nowait(job)

    # ------------------------------------------------------------------ the shadow side
    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self.running += 1
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the worker
                log.exception("mirror: comparing a statement failed")
                self._error(job, None, f"internal error: {exc!r}")
            finally:
                self.running -= 1

    async def _run(self, job: Job) -> None:
        cfg = self.cfg
        try:
            async with asyncio.timeout(cfg.timeout):
                reply, rows, shadow_ms = await self._execute(job)
        except TimeoutError:
            self._error(job, None, f"no answer from the shadow within mirror.timeout ({cfg.timeout:g}s)")
            return
        except (OSError, ConnectionError, HeliosError, BackendAuthError) as exc:
            self._error(job, None, getattr(exc, "message", None) or str(exc) or exc.__class__.__name__)
            return
        primary = summarize(job.reply, job.rows)
        shadow = summarize(reply, rows)
        self.mirrored += 1
        if primary.sqlstate != shadow.sqlstate:
            if shadow.sqlstate is not None:
                self._error(job, shadow, f"the shadow failed: {shadow.sqlstate} {shadow.message}", primary, shadow_ms)
            else:
                self._note("mismatch", job, primary, shadow, shadow_ms,
                           f"the primary failed ({primary.sqlstate} {primary.message}), the shadow did not")
            return
        if primary.rows != shadow.rows:
            self._note("mismatch", job, primary, shadow, shadow_ms, f"rows: {primary.rows} vs {shadow.rows}")
        elif primary.row_hash is not None and shadow.row_hash is not None and primary.row_hash != shadow.row_hash:
            self._note("mismatch", job, primary, shadow, shadow_ms, "same row count, different rows")
        if shadow_ms > job.primary_ms * cfg.slower_ratio and shadow_ms - job.primary_ms > 1.0:
            self.slower += 1

    async def _execute(self, job: Job) -> tuple[bytes | None, int, float]:
        pool = self.pools.get(self.cfg.node, job.database, job.user)
        conn = await pool.acquire(self.cfg.timeout)
        runner = _Runner(self.cfg.max_result)
        conn.attach(runner)
        reusable = False
        try:
            sync = settings_sql(conn.applied, job.settings)
            if sync:
                answer, _, _ = await runner.reply(conn, messages.query(sync))
                refused = summarize(answer, 0)
                if refused.sqlstate is not None:  # (nothing of it applied: one statement)
                    raise HeliosError(f"the shadow refused the session's settings: {refused.sqlstate} "
                                      f"{refused.message}")
                conn.applied = dict(job.settings)
            start = time.monotonic()
            reply, rows, at = await runner.reply(conn, job.request)
            reusable = (reply is None or reply[-1] == codes.TX_IDLE) and not conn.closed
            return reply, rows, (at - start) * 1000.0
        finally:
            pool.release(conn, reusable)

    # ------------------------------------------------------------------ results
    def _note(self, kind: str, job: Job, primary: Summary | None, shadow: Summary | None, shadow_ms: float | None,
              detail: str) -> None:
        if kind == "mismatch":
            self.mismatches += 1
        self.recent.appendleft({
            "at": time.time(),
            "kind": kind,
            "query": job.query,
            "user": job.user,
            "database": job.database,
            "primary": {**(primary or summarize(job.reply, job.rows)).as_dict(), "ms": round(job.primary_ms, 3)},
            "shadow": None if shadow is None else {**shadow.as_dict(),
                                                   "ms": None if shadow_ms is None else round(shadow_ms, 3)},
            "detail": detail,
        })

    def _error(self, job: Job, shadow: Summary | None, detail: str, primary: Summary | None = None,
               shadow_ms: float | None = None) -> None:
        self.errors += 1
        log.debug("mirror: %s: %s", job.query[:80], detail)
        self._note("error", job, primary, shadow, shadow_ms, detail)

    def view(self) -> dict[str, Any]:
        return {
            "node": self.cfg.node,
            "sample": self.cfg.sample,
            "statements": self.cfg.statements.value,
            **{k: getattr(self, k) for k in _COUNTERS},
            "queued": self.queue.qsize(),
            "running": self.running,
            "recent": list(self.recent),
        }


def merge_views(views: list[dict[str, Any]], recent: int = 50) -> dict[str, Any]:
    """One view of several workers' mirror views (counters summed, recent events newest first)."""
    views = [v for v in views if v]
    if not views:
        return {"enabled": False, **{k: 0 for k in _COUNTERS}, "queued": 0, "recent": []}
    out: dict[str, Any] = {"enabled": True, "node": views[0].get("node"), "sample": views[0].get("sample"),
                           "statements": views[0].get("statements")}
    for k in (*_COUNTERS, "queued", "running"):
        out[k] = sum(int(v.get(k, 0)) for v in views)
    events = [e for v in views for e in v.get("recent", [])]
    events.sort(key=lambda e: e.get("at", 0), reverse=True)
    out["recent"] = events[:recent]
    return out
