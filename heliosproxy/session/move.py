"""Issue 16 §2: a session-pooling or pinned client's session moves to a new server, its state rebuilt there."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.config.schema import DatabaseRoute, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import STATEMENT
from heliosproxy.session import tracking
from heliosproxy.session.state import READY, Plan
from heliosproxy.sql import sessionstate
from heliosproxy.sql.classify import Effect, StatementInfo

if TYPE_CHECKING:
    from heliosproxy.pool.pool import Pool
    from heliosproxy.routing.router import Target
    from heliosproxy.session.core import ClientSession
    from heliosproxy.session.replay import Replay

log = logging.getLogger("heliosproxy.replay")

# Statements that change what the proxy rebuilds (prepared statements, LISTEN channels).
_TRACKED = Effect.PREPARE | Effect.DEALLOCATE | Effect.DISCARD | Effect.LISTEN | Effect.UNLISTEN
# Session state a new server cannot be given.
_REASONS = (
    (Effect.TEMP_TABLE, "temporary objects"),
    (Effect.HOLD_CURSOR, "a WITH HOLD cursor"),
    (Effect.ADVISORY_LOCK, "a session-level advisory lock"),
    (Effect.DIRTY, "session state the proxy cannot follow"),
)
_UNMOVABLE = Effect.TEMP_TABLE | Effect.HOLD_CURSOR | Effect.ADVISORY_LOCK | Effect.DIRTY
# A server ending the session because it is shut down or the backend was terminated (not a
# timeout or an error of the session's own): the session may go on elsewhere.
_ENDING = frozenset(("57P01", "57P02"))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class NoServerError(Exception):
    """acquire_until() found no server in time (the message is the last error seen, if any)."""


async def acquire_until(
    s: ClientSession, deadline: float, pick: Callable[[], Target | None]
) -> tuple[BackendConnection, Pool]:
    """A live server connection from the pool of the node `pick()` names, tried again until `deadline`
    (a failover in progress: no primary yet, a refused connection); NoServerError when none came."""
    last: BaseException | None = None
    while time.monotonic() < deadline and s.phase == READY:
        try:
            target = pick()
        except HeliosError as exc:
            last, target = exc, None
        if target is None:
            await asyncio.sleep(0.05)
            continue
        pool = s.ctx.pools.get(target.node, target.database or s.database, s.user)
        try:
            conn = await pool.acquire(timeout=max(0.1, deadline - time.monotonic()))
        except (HeliosError, OSError, TimeoutError, ConnectionError) as exc:
            last = exc
            await asyncio.sleep(0.1)
            continue
        if conn.closed:
            pool.release(conn, reusable=False)
            continue
        return conn, pool
    raise NoServerError(str(last) if last else "")


class MoveFailedError(Exception):
    """The session cannot go on on a new server (no server in time, or its state could not be rebuilt)."""


class Moves:
    """Per client session (failover.replay on): the state a new server must be given, and the move."""

    __slots__ = ("channels", "fatal", "parsed", "pins_seen", "prepared", "r", "s", "why")

    def __init__(self, replay: Replay, session: ClientSession):
        self.r = replay
        self.s = session
        # Session pooling: protocol-level statements under the client's own names: the Parse as sent.
        # (Transaction pooling renames them; each server gets them lazily.)
        self.parsed: dict[str, bytes] = {}
        self.prepared: dict[str, str] = {}  # SQL PREPARE: name -> its statement's text
        self.channels: dict[str, None] = {}  # LISTEN channels, in order
        self.why: str | None = None  # state a new server cannot be given
        self.pins_seen = False  # transaction pooling: a statement that pins was seen (the pin is explained)
        self.fatal: tuple[BackendConnection, bytes] | None = None  # a server's 57P01/57P02 FATAL, held back

    # ------------------------------------------------------------------ tracking
    def on_send(self, plan: Plan) -> None:
        """Every plan sent to a server (from Replay.on_send): follow the session state it makes or drops."""
        s = self.s
        if plan.batch is None:
            info = plan.info
            raw = plan.raw
            if info is not None and raw is not None and (info.effects or info.calls_unknown):
                self._effects(plan, info, lambda: raw[5:-1].decode(s._codec, "replace"))
            return
        session = s.mode is PoolMode.SESSION
        unnamed: str | None = None
        for m in plan.batch:
            t = m.t
            if t == codes.F_PARSE:
                if not m.name:
                    unnamed = m.sql
                elif session:
                    self.parsed[m.name] = m.data
            elif t == codes.F_CLOSE and session and m.sub == STATEMENT and m.name:
                self.parsed.pop(m.name, None)
            elif t == codes.F_BIND:
                if m.stmt:
                    st = s.statements.get(m.stmt)
                    if st is not None and (st.info.effects or st.info.calls_unknown):
                        self._effects(plan, st.info, st.sql)
                elif unnamed is not None:
                    last = s.unnamed
                    same = last is not None and last.sql is unnamed
                    info2 = last.info if last is not None and same else s.ctx.classifier.classify(unnamed)
                    if info2.effects or info2.calls_unknown:
                        self._effects(plan, info2, unnamed)
                elif s.unnamed is not None and (s.unnamed.info.effects or s.unnamed.info.calls_unknown):
                    self._effects(plan, s.unnamed.info, s.unnamed.sql)

    def _effects(self, plan: Plan, info: StatementInfo, text: str | Callable[[], str]) -> None:
        s = self.s
        e = info.effects
        if s.mode is PoolMode.TRANSACTION:
            if info.pins or e & Effect.PREPARE:
                self.pins_seen = True  # the pin (ClientSession._track_effects) is for state seen here
            if info.calls_unknown and s.ctx.config.pool.strict_isolation and self.why is None:
                self.why = "a function with unknown effects (pool.strict_isolation)"
            if info.readback and not plan.sync and self.why is None:
                self.why = "set_config() before a Flush"
        if e & _UNMOVABLE and self.why is None:
            for bit, reason in _REASONS:
                if e & bit:
                    self.why = f"{reason} ({', '.join(info.kinds)})"
                    break
        if not e & _TRACKED:
            return
        # LISTEN/UNLISTEN take effect at COMMIT: inside a transaction block the proxy keeps the union (a channel
        # too many after a move shows as an extra notification; one too few would be lost silently).
        in_block = s.tx_status != codes.TX_IDLE or info.statements > 1
        for what, name, stmt in sessionstate.actions(text if isinstance(text, str) else text()):
            if what == sessionstate.PREPARE and name is not None:
                self.prepared[name] = stmt
            elif what == sessionstate.DEALLOCATE:
                if name is None:
                    self.prepared.clear()
                    self.parsed.clear()
                else:
                    self.prepared.pop(name, None)
                    self.parsed.pop(name, None)
            elif what == sessionstate.LISTEN and name is not None:
                self.channels[name] = None
            elif what == sessionstate.UNLISTEN and not in_block:
                if name is None:
                    self.channels.clear()
                else:
                    self.channels.pop(name, None)
            elif what == sessionstate.DISCARD_ALL:
                self.prepared.clear()
                self.parsed.clear()
                self.channels.clear()
                self.pins_seen = False

    def unmovable(self) -> str | None:
        """Why this session cannot move to a new server (None: it can; its settings, prepared
        statements and LISTEN channels are rebuilt there)."""
        s = self.s
        if self.why is not None:
            return self.why
        if s._temp_schema:
            return "temporary objects"
        if s.mode is PoolMode.TRANSACTION and s.pinned and not self.pins_seen:
            return "pinned to its server by state the proxy did not see made"
        return None

    # ------------------------------------------------------------------ a server ending the session
    def hold_fatal(self, conn: BackendConnection, data: bytes) -> bool:
        """Hook in ClientSession.on_backend_data for a chunk that ends like an ErrorResponse: a server's FATAL
        57P01/57P02 (backend terminated, server shut down) at the end of the chunk, at a message boundary,
        is kept back (the replies before it are handled as usual) and the connection is taken as lost right
        away (nothing more comes from it, nothing more is sent to it): the session may go on elsewhere,
        else the client gets this FATAL. True when the chunk was handled here."""
        s = self.s
        if conn is not s.backend:
            return False
        at = data.rfind(b"SFATAL\x00", max(0, len(data) - 8192)) - 5  # a FATAL is the last message, and short
        if at < 0 or data[at] != codes.B_ERROR or int.from_bytes(data[at + 1 : at + 5], "big") + 1 + at != len(data):
            return False
        if messages.parse_error_fields(data[at + 5 :]).get("C") not in _ENDING:
            return False
        if at:
            s.on_backend_data(conn, data[:at])  # what came before it, as usual
            tail = data[at:]
            if not self._can_hold(conn):
                s.on_backend_data(conn, tail)  # relayed as usual (this hook declines it: not at a boundary)
            else:
                self._hold(conn, tail)
            return True
        if not self._can_hold(conn):
            return False
        self._hold(conn, data)
        return True

    def _can_hold(self, conn: BackendConnection) -> bool:

        s = self.s
        if conn is not s.backend or s.phase != READY:
            return False
        for fl in s.inflight:
            sig = fl.info.signal if fl.info is not None else None
            if sig is not None and sig.function == "pg_terminate_backend":
                return False  # it may have terminated its own backend: its session ends, as on a server
        return not ((s.relay.buf if s.slow else not s.scanner.at_boundary) or self.r._left or self.r._hdr)

    def _hold(self, conn: BackendConnection, fatal: bytes) -> None:
        self.fatal = (conn, bytes(fatal))
        self.s.on_backend_lost(conn, None)

    def give_up(self) -> None:
        """The session is not moved (Replay._why_not): a held FATAL goes to a client whose session ends."""
        s = self.s
        held, self.fatal = self.fatal, None
        if held is None or held[0] is not s.backend:
            return
        owed = bool(
            s.pending or s.expect or s.inflight or s.tx_status != codes.TX_IDLE or s.unsynced
            or (s.stalled is not None and s.stalled.answer is None)
        )
        if s.mode is PoolMode.SESSION or s.pinned or owed:
            s._write(held[1])
            s.scanner.fatal = True  # ClientSession.on_backend_lost then closes without another word

    # ------------------------------------------------------------------ the move
    def move(self, conn: BackendConnection) -> bool:
        """An idle session-pooling or pinned client lost its server: hold its input, get a new server,
        rebuild the session there, go on. True (the session goes on, or is closed with 08006 later)."""
        s = self.s
        log.warning("client %s: server connection to node %s was lost; the session moves to a new server",
                    s.peer, conn.node)
        self.fatal = None
        if s.hold is not None:
            s._release_hold()
        s.drop_server(conn)
        self.r._hold_input()
        self.r._start(self._reconnect())
        return True

    def reconnect(self) -> bool:
        """After Replay ended a transaction without a server (Replay._end): a session-pooling or pinned
        client gets its new server now (its input stays held until then). True when started."""
        s = self.s

        if s.phase != READY or s.backend is not None or not (s.mode is PoolMode.SESSION or s.pinned):
            return False
        self.r._hold_input()
        self.r._start(self._reconnect())
        return True

    async def ready(self, conn: BackendConnection, pool: Pool) -> bool:
        """Replay._replay got a new server: rebuild a session-pooling or pinned client's state on it before
        anything is replayed. False when it could not (the client got 08006)."""
        s = self.s
        if not (s.mode is PoolMode.SESSION or s.pinned):
            return True
        deadline = time.monotonic() + s.ctx.config.failover.write_timeout
        try:
            await self._rebuild(conn, deadline)
        except (MoveFailedError, OSError, ConnectionError, TimeoutError) as exc:
            pool.release(conn, reusable=False)
            self._fail(str(exc) or exc.__class__.__name__)
            return False
        return True

    def _fail(self, why: str) -> None:

        s = self.s
        if s.phase == READY:
            log.warning("client %s: the session could not move to a new server: %s", s.peer, why)
            s._fatal("08006", "server connection lost")

    async def _reconnect(self) -> None:

        s = self.s
        deadline = time.monotonic() + s.ctx.config.failover.write_timeout
        while True:
            try:
                conn, pool = await self._acquire(deadline)
            except MoveFailedError as exc:
                self._fail(str(exc))
                return
            if s.phase != READY:
                pool.release(conn)
                return
            try:
                await self._rebuild(conn, deadline)
            except MoveFailedError as exc:
                pool.release(conn, reusable=False)
                self._fail(str(exc))
                return
            except (OSError, ConnectionError, TimeoutError) as exc:
                pool.release(conn, reusable=False)  # lost again: another server, while time is left
                if time.monotonic() >= deadline:
                    self._fail(f"no server within failover.write_timeout ({exc!r})")
                    return
                await asyncio.sleep(0.1)
                continue
            if s.phase != READY:
                pool.release(conn, reusable=False)
                return
            if self.channels and s.pid != conn.pid:
                s._listen_pid = True
                s._listening = True  # notifications carry the PID the client knows
            s._bind(conn, pool)
            s._just_bound = False
            s.ctx.sessions_moved += 1
            log.info("client %s: session moved to node %s (%d prepared statement(s), %d channel(s) rebuilt)",
                     s.peer, conn.node, len(self.parsed) + len(self.prepared), len(self.channels))
            self.r._release_input()
            return

    async def _acquire(self, deadline: float) -> tuple[BackendConnection, Pool]:
        s = self.s
        router = s.ctx.router

        def pick() -> Target | None:
            if s.branch_pref:
                return router.branch(s.branch_pref)
            if s.db_route is DatabaseRoute.STANDBY:
                return router.read_target() or router.primary()
            return router.primary()

        try:
            return await acquire_until(s, deadline, pick)
        except NoServerError as exc:
            why = f"no server within failover.write_timeout ({exc})" if str(exc) else "no server"
            raise MoveFailedError(why) from None

    async def _rebuild(self, conn: BackendConnection, deadline: float) -> None:
        """Give an unattached server connection this session's settings, prepared statements and LISTEN
        channels. A statement the server refuses (other than as a duplicate) is forgotten, as if it had
        never been prepared: the client's next use of it gets the server's 26000. Raises MoveFailedError
        when the session cannot be rebuilt, OSError/ConnectionError/TimeoutError when the server is lost."""
        s = self.s
        codec = s._codec
        steps: list[tuple[str, str | None, bytes]] = []  # (what, name, messages ending in one ReadyForQuery)
        sql = tracking.sync_settings_sql(s, conn)
        if sql:
            steps.append(("settings", None, messages.query(sql)))
        # Under the session's current settings: PostgreSQL itself parses a prepared statement again under
        # the current search_path when it changed since the PREPARE.
        for name, msg in self.parsed.items():
            steps.append(("parse", name, msg + messages.SYNC))
        for name, text in self.prepared.items():
            steps.append(("prepare", name, messages.msg(codes.F_QUERY, text.encode(codec, "replace") + b"\x00")))
        for ch in self.channels:
            steps.append(("listen", ch, messages.msg(codes.F_QUERY, ("LISTEN " + _ident(ch)).encode(codec, "replace")
                                                     + b"\x00")))
        if not steps:
            return
        conn.write(b"".join(p for _w, _n, p in steps))
        answers = await asyncio.wait_for(self._answers(conn, len(steps)), max(5.0, deadline - time.monotonic()))
        for (what, target, _p), err in zip(steps, answers, strict=True):
            if err is None:
                continue
            code, message = err.get("C", ""), err.get("M", "")
            if what in ("parse", "prepare") and code != "42P05" and target is not None:
                log.info("client %s: prepared statement %s not rebuilt on node %s (%s %s): forgotten",
                         s.peer, target, conn.node, code, message)
                (self.parsed if what == "parse" else self.prepared).pop(target, None)
                continue
            raise MoveFailedError(f"{what} {target or ''}: {code} {message}".replace("  ", " "))
        if conn.tx_status != codes.TX_IDLE:
            raise MoveFailedError("the new server is inside a transaction")

    @staticmethod
    async def _answers(conn: BackendConnection, n: int) -> list[dict[str, str] | None]:
        """Read the answers of n requests (each ending in a ReadyForQuery): each one's first error, if any."""
        return [(await conn.read_answer())[1] for _ in range(n)]
