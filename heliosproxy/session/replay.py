"""Failover without client errors (issue 16): record a transaction and its result checksum, replay it elsewhere."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
import struct
import time
from typing import TYPE_CHECKING, Any

from heliosproxy.backends.connection import BackendConnection, QueryError, connect
from heliosproxy.backends.health import checker_credentials
from heliosproxy.backends.tls import node_tls
from heliosproxy.config.schema import Config, PoolMode
from heliosproxy.errors import BackendAuthError, HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import Msg
from heliosproxy.session import resultcache, tracking
from heliosproxy.session.move import Moves, NoServerError, acquire_until
from heliosproxy.session.relay import ASYNC as _ASYNC
from heliosproxy.session.relay import HIDE, Expect
from heliosproxy.session.state import READY, Plan
from heliosproxy.sql.classify import Effect, TxControl

if TYPE_CHECKING:
    from heliosproxy.pool.pool import Pool
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.replay")

_I = struct.Struct("!I")
SQLSTATE = "40001"
MESSAGE = "could not serialize access: transaction could not be replayed after failover"
# Sent in place of the client's next statement when a replay failed: the server itself answers it with
# 40001 and leaves the transaction aborted (later statements get 25P02, ROLLBACK works), as PostgreSQL would.
REFUSE_SQL = (
    "DO $heliosproxy$BEGIN RAISE EXCEPTION USING ERRCODE = '40001', "
    "MESSAGE = 'could not serialize access: transaction could not be replayed after failover'; END$heliosproxy$"
)
# The transaction id and, once it has one, the WAL insert position just past its first record (an "anchor"):
# a promoted standby reuses the ids of transactions none of whose records reached it, so pg_xact_status()
# there speaks of *this* transaction only if the new primary's history reaches the anchor (see verdict()).
XID_SQL = (
    "SELECT x, CASE WHEN x IS NULL THEN NULL ELSE pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_catalog.pg_lsn"
    " END, EXTRACT(EPOCH FROM pg_catalog.pg_postmaster_start_time())"
    " FROM (SELECT pg_catalog.pg_current_xact_id_if_assigned() AS x) heliosproxy_xid"
)
# The same, before a COMMIT pipelined behind the transaction's first writes: a tiny transactional WAL
# record of the transaction's own (a logical message with prefix 'heliosproxy') gives it an id and an
# anchor at once (NULL in a read-only transaction).
ANCHOR_SQL = (
    "SELECT pg_catalog.pg_current_xact_id_if_assigned(), a.l, "
    "EXTRACT(EPOCH FROM pg_catalog.pg_postmaster_start_time()) FROM (SELECT CASE WHEN "
    "pg_catalog.current_setting('transaction_read_only') = 'off' THEN "
    "pg_catalog.pg_logical_emit_message(true, 'heliosproxy', '') - '0/0'::pg_catalog.pg_lsn END AS l OFFSET 0) a"
)
# Asked on the new primary: the outcome, how far its own recovery replayed the old history (NULL: it has
# not been in recovery since it started) and the WAL page geometry (to read the anchor exactly).
STATUS_SQL = (
    "SELECT pg_catalog.pg_xact_status('{xid}'::pg_catalog.xid8), "
    "pg_catalog.pg_last_wal_replay_lsn() - '0/0'::pg_catalog.pg_lsn, "
    "pg_catalog.current_setting('wal_block_size')::int, "
    "pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')), "
    "EXTRACT(EPOCH FROM pg_catalog.pg_postmaster_start_time())"
)
_Z = codes.B_READY_FOR_QUERY
# Statement kinds whose effect a second run cannot reproduce (or whose data the proxy does not keep).
_UNREPLAYABLE_KINDS = frozenset(
    {"CopyStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt", "ListenStmt", "UnlistenStmt"}
)
_UNREPLAYABLE_EFFECTS = (
    Effect.DIRTY | Effect.TEMP_TABLE | Effect.HOLD_CURSOR | Effect.ADVISORY_LOCK | Effect.LISTEN | Effect.UNLISTEN
)
# SQL keywords that read the clock without parentheses.
_KEYWORDS = frozenset({"current_timestamp", "localtimestamp", "current_time", "localtime", "current_date"})
_PATTERNS: dict[tuple[str, ...], re.Pattern[bytes]] = {}

RECORD, SWALLOW, DISCARD = range(3)


class Xid(enum.Enum):
    UNKNOWN = 0  # not asked yet
    ASKED = 1  # asked; no answer (yet, or it was lost with the server)
    NONE = 2  # the transaction wrote nothing (no transaction id was assigned)


def _pattern(names: tuple[str, ...]) -> re.Pattern[bytes]:
    pat = _PATTERNS.get(names)
    if pat is None:
        calls: list[str] = []
        words: list[str] = []
        for name in names:
            body = re.escape(name[:-1]) + r"\w*" if name.endswith("*") else re.escape(name)
            (words if name in _KEYWORDS else calls).append(body)
        alts = []
        if calls:
            alts.append(r"(?<![\w$])(?:" + "|".join(calls) + r")\s*\(")
        if words:
            alts.append(r"(?<![\w$])(?:" + "|".join(words) + r")(?![\w$])")
        pat = re.compile("|".join(alts).encode() if alts else rb"(?!)", re.IGNORECASE)
        _PATTERNS[names] = pat
    return pat


def new(session: ClientSession) -> Replay | None:
    """A recorder for this session when failover.replay is on."""
    return Replay(session) if session.ctx.config.failover.replay else None


class Replay:
    """Per client session: what was sent since the transaction began, a running checksum of every reply
    byte relayed to the client (asynchronous messages left out), and the replay after a lost server."""

    __slots__ = (
        "_hdr",
        "_left",
        "_type",
        "_zwant",
        "after_done",
        "attempts",
        "bad",
        "commit_n",
        "done_n",
        "expect_rfqs",
        "hasher",
        "held",
        "idle",
        "mv",
        "n",
        "n_rfq",
        "partial",
        "phase2",
        "plans",
        "refuse_next",
        "replay_rfqs",
        "resending",
        "rfqs",
        "rhasher",
        "rn",
        "s",
        "saved_framing",
        "size",
        "state",
        "target_n",
        "token",
        "wrap",
        "wrapping",
        "writes",
        "wrote",
        "xid",
        "xid_life",
        "xid_lsn",
    )

    def __init__(self, session: ClientSession):
        self.s = session
        self.state = RECORD
        self.idle = True  # nothing recorded: relay without walking
        self.plans: list[Plan] = []
        self.size = 0
        self.bad: str | None = None  # why the recorded transaction cannot be replayed
        self.hasher = hashlib.blake2b(digest_size=16)
        self.n = 0  # checksummed bytes the client has
        self.n_rfq = 0  # ... of which up to the last ReadyForQuery
        self.rfqs = 0  # ReadyForQuery messages relayed since recording began
        self.xid: str | Xid = Xid.UNKNOWN
        self.xid_lsn = 0  # the WAL insert position on its server when the id was asked (past its first record)
        self.xid_life = ""  # ... and that server's start time (the same "life": its history is intact)
        self.wrote = False  # a write was sent in the transaction: its id is asked with the next statement
        self.writes = 0  # writes sent (a "no id" answer holds only if none was sent after the question)
        self.commit_n = -1
        self.done_n = 0  # statements answered (CommandComplete, EmptyQuery, ...) since the last ReadyForQuery
        self.after_done = 0  # other replies relayed since the last of those (-1: an error was relayed)
        # message framing of the relayed stream
        self._type = 0
        self._left = 0  # bytes of the current message still to come (0: at a boundary)
        self._hdr = b""  # a header split across chunks
        self._zwant = False
        # replaying
        self.resending = False
        self.target_n = 0
        self.rn = 0
        self.rhasher = hashlib.blake2b(digest_size=16)
        self.expect_rfqs = 0
        self.replay_rfqs = 0
        self.phase2: list[Plan] = []
        self.partial = False
        self.refuse_next = False
        self.held = False
        self.mv = Moves(self, session)  # issue 16 §2: the session state a new server is given (session/move.py)
        self.attempts = 0  # replays started since the last success (a lost server during a replay retries)
        self.saved_framing: tuple[int, int, bytes, bool, int] | None = None  # + the client's tx status
        self.wrap: Wrap | None = None  # an autocommit write run inside a hidden transaction (see _wrap_send)
        self.wrapping = False
        self.token: Plan | None = None  # set as the session's `stalled`: the client's next messages wait

    # ------------------------------------------------------------------ recording
    def _reset(self) -> None:
        self.plans = []
        self.size = 0
        self.bad = None
        self.hasher = hashlib.blake2b(digest_size=16)
        self.n = self.n_rfq = self.rfqs = 0
        self.xid = Xid.UNKNOWN
        self.wrote = False
        self.commit_n = -1
        self.done_n = self.after_done = 0

    def on_send(self, conn: BackendConnection, plan: Plan) -> bool:
        """Hook at the top of ClientSession._send: record the plan (and ask for the transaction id
        with a COMMIT); a plan after a refused replay becomes the server-side 40001. True when it sent
        the plan itself (an autocommit write wrapped so that its outcome can be found out)."""
        s = self.s
        if self.refuse_next:
            self.refuse_next = False
            info = plan.info
            if not (info is not None and info.tx is TxControl.ROLLBACK and info.statements == 1):
                if not plan.sync:
                    s._fatal("08006", "server connection lost")
                    return False
                plan.raw = messages.query(REFUSE_SQL)
                plan.batch = None
                plan.info = None
                plan.write = False
        if self.resending:
            return False
        if not self.wrapping and self._wrappable(conn, plan):
            self._wrap_send(conn, plan)
            return True
        info = plan.info
        self.mv.on_send(plan)  # prepared statements, LISTEN channels, state that cannot move (session/move.py)
        if self.idle:
            if (s.pending or s.expect) and not self.wrapping:
                return False  # not at a reply boundary: nothing to record from here
            self.idle = False
            self._reset()
            self._type = self._left = 0
            self._hdr = b""
            self._zwant = False
            if s.tx_status != codes.TX_IDLE:
                self.bad = "recording began inside a transaction"  # its BEGIN is not known
        self.plans.append(plan)
        if self.bad is None:
            self._judge(plan)
        commit = info is not None and info.tx is TxControl.COMMIT and info.statements == 1 and plan.raw is not None
        if commit:
            self.commit_n = self.n
        # A COMMIT pipelined behind other statements (issue 16 §1): its transaction's id is anchored
        # before it (it may be the transaction's first write), and replies before the COMMIT are flushed.
        piped = not commit and plan.write and self._commits(plan)
        if piped and plan.batch is not None:
            _flush_before_commit(plan.batch, self._commits_at)
        if (
            (commit or self.wrote or piped)
            and (self.xid is Xid.UNKNOWN or (piped and self.xid is Xid.NONE))
            and s.tx_status == codes.TX_IN_BLOCK
            and not s.pending
            and not s.expect
            and not s.unsynced  # a Query inside an unsynced pipeline would drop the client's unnamed statement
            and s.backend is conn
        ):
            # The transaction id, asked with the first statement after its first write (or with the
            # COMMIT), in the same write as that statement (no extra round trip): if the server is
            # lost before COMMIT's answer, pg_xact_status() on the new primary tells the outcome.

            self.xid = Xid.ASKED
            asked_at = self.writes
            conn.write(messages.query(ANCHOR_SQL if piped else XID_SQL))
            s.expect.append(Expect(codes.F_QUERY, HIDE, capture=lambda rows: self._got_xid(conn, rows, asked_at)))
            if not s.slow:
                s.slow = True
                s.relay.reset()
        if plan.write:
            # After the ask above: the id is asked with the *next* statement, once this one assigned it.
            self.writes += 1
            if s.tx_status == codes.TX_IN_BLOCK:
                self.wrote = True
            if self.xid is Xid.NONE:
                self.xid = Xid.UNKNOWN  # "wrote nothing" no longer holds
        return False

    def _got_xid(self, conn: BackendConnection, rows: list[list[str | None]] | None, asked_at: int) -> None:
        if rows is None or conn is not self.s.backend:
            self.xid = Xid.ASKED
        elif not rows or rows[0][0] is None:
            # No id yet: nothing written so far. A write sent after the question may have assigned one.
            self.xid = Xid.NONE if self.writes == asked_at else Xid.UNKNOWN
        elif len(rows[0]) < 3 or rows[0][1] is None:
            self.xid = Xid.ASKED  # no anchor: the outcome could not be told apart from a reused id
        else:
            self.xid = rows[0][0]
            self.xid_lsn = int(rows[0][1])
            self.xid_life = rows[0][2] or ""

    def _judge(self, plan: Plan) -> None:
        """Mark the recording unreplayable when this plan cannot run twice with the same result."""
        cfg = self.s.ctx.config.failover
        pat = _pattern(cfg.no_replay_functions)
        s = self.s
        texts: list[bytes] = []
        if plan.batch is None:
            if plan.raw is None or plan.info is None:
                self.bad = "a function call message"
                return
            texts.append(plan.raw)
            self.size += len(plan.raw)
        else:
            for msg in plan.batch:
                self.size += len(msg.data)
                if msg.t == codes.F_PARSE:
                    texts.append(msg.data)
                elif msg.t == codes.F_BIND:
                    st = s.statements.get(msg.stmt) if msg.stmt else s.unnamed
                    if st is not None:
                        texts.append(st.raw)
        info = plan.info
        if plan.dbs:
            self.bad = "a database-level statement"
        elif info is not None and (info.effects & _UNREPLAYABLE_EFFECTS or any(k in _UNREPLAYABLE_KINDS
                                                                                for k in info.kinds)):
            self.bad = f"{', '.join(info.kinds)}"
        elif info is not None and info.tx is TxControl.PREPARE_TRANSACTION:
            self.bad = "PREPARE TRANSACTION"
        elif self.size > cfg.replay_max_bytes:
            self.bad = f"over failover.replay_max_bytes ({cfg.replay_max_bytes})"
        else:
            for text in texts:
                m = pat.search(text)
                if m is not None:
                    self.bad = f"calls {m.group(0).decode('ascii', 'replace').rstrip('( ')}"
                    return

    # ------------------------------------------------------------------ the relayed stream
    def relayed(self, data: bytes) -> bytes:
        """Hook on every chunk of server replies relayed to the client: checksum it; while
        replaying, hold back what the client already has. Returns what to write to the client."""
        w = self.wrap
        if w is not None and w.status < 0 and self.state == RECORD:
            data = self._withhold_ready(w, data)
        if self.idle and self.state == RECORD:
            return data
        out_from = 0 if self.state == RECORD else -1  # -1: nothing of this chunk goes out (yet)
        matched = False
        pos = 0
        n = len(data)
        while pos < n:
            before = self.state
            if self._left == 0:  # a header (maybe split across chunks)
                part = data[pos : pos + 5 - len(self._hdr)]
                t = self._hdr[0] if self._hdr else data[pos]
                cut = self._seg(data, pos, pos + len(part), t)
                self._hdr += part
                pos += len(part)
                if cut >= 0:
                    out_from, matched = cut, True
                if len(self._hdr) < 5:
                    break
                self._type = self._hdr[0]
                self._left = _I.unpack_from(self._hdr, 1)[0] - 4
                self._hdr = b""
                self._zwant = self._type == _Z
                if self._left == 0:
                    self._done(0, before != RECORD and (cut < 0 or cut == pos))
                continue
            take = min(self._left, n - pos)
            status = data[pos] if self._zwant else 0
            self._zwant = False
            cut = self._seg(data, pos, pos + take, self._type)
            pos += take
            self._left -= take
            if cut >= 0:
                out_from, matched = cut, True
            if self._left == 0:
                self._done(status, before != RECORD and (cut < 0 or cut == pos))
        if matched:
            self._matched()
        if out_from < 0:
            return b""
        return data[out_from:] if out_from else data

    def _seg(self, data: bytes, a: int, b: int, t: int) -> int:
        """Account one piece of a message; while swallowing, the offset where the replay caught up (else -1)."""
        if a >= b or t in _ASYNC:
            return -1
        if self.state == RECORD:
            self.hasher.update(data[a:b])
            self.n += b - a
            return -1
        if self.state == SWALLOW:
            take = min(b - a, self.target_n - self.rn)
            self.rhasher.update(data[a : a + take])
            self.rn += take
            if self.rn >= self.target_n:
                if self.rhasher.digest() == self.hasher.digest():
                    self.state = RECORD  # the client has exactly this: what follows is new to it
                    rest = a + take
                    if rest < b:
                        self.hasher.update(data[rest:b])
                        self.n += b - rest
                    return rest
                self.state = DISCARD
                log.info("client %s: replayed results differ from what the client received", self.s.peer)
        return -1

    def _done(self, status: int, replayed: bool) -> None:
        """A whole message went by (`replayed`: one the client already had)."""
        if self._type != _Z:
            if not replayed and self.state == RECORD and self._type not in _ASYNC and self.after_done >= 0:
                if self._type in _COMPLETIONS:
                    self.done_n += 1
                    self.after_done = 0
                elif self._type == codes.B_ERROR:
                    self.after_done = -1
                else:
                    self.after_done += 1
            return
        if not replayed:
            if self.state != RECORD:
                return
            self.done_n = self.after_done = 0
            self.rfqs += 1
            self.n_rfq = self.n
            if status == codes.TX_IDLE:
                self._drop_answered(self.rfqs)
            return
        self.replay_rfqs += 1
        if self.replay_rfqs >= self.expect_rfqs and self.state != RECORD:
            self.state = DISCARD  # it ended short of what the client received, or differs
            asyncio.get_running_loop().call_soon(self._guard, self._mismatched)

    def _drop_answered(self, rfqs: int) -> None:
        """The transaction ended (ReadyForQuery idle): forget the plans answered so far."""
        k = _after_syncs(self.plans, rfqs)
        rest = self.plans[k:]
        self._reset()
        self.plans = rest
        if not rest:
            self.idle = self._left == 0 and not self._hdr
        else:
            self.bad = "statements pipelined past the end of a transaction"

    # ------------------------------------------------------------------ a lost server
    def on_lost(self, conn: BackendConnection) -> bool:
        """Hook at the top of ClientSession.on_backend_lost. True when the session goes on here."""

        s = self.s
        if conn is not s.backend or s.phase != READY:
            return False
        if self.state != RECORD or (self.held and self.saved_framing is not None):
            # Lost again while replaying: start over from what the client has.
            if self.state == DISCARD:
                self.bad = self.bad or "replayed results differed"
            self.state = RECORD
            self.phase2 = []
            if self.saved_framing is not None:
                self._type, self._left, self._hdr, self._zwant, s.tx_status = self.saved_framing
            self.attempts += 1
            if self.attempts > 5:
                return self._why_not("lost its server during 5 replays")
        if s.scanner.fatal:
            return self._why_not("the server's FATAL was relayed")
        if self.wrap is not None:
            return self._wrap_lost(conn, self.wrap)
        if s.mode is not PoolMode.TRANSACTION or s.pinned:
            why = self._unmovable()
            if why is not None:
                return self._why_not(f"its session holds state a new server cannot be given ({why})")
            owed = s.pending or s.expect or s.inflight or s.tx_status != codes.TX_IDLE or s.stalled is not None
            if not owed:
                return self._move(conn)
        if self.idle:
            return self._why_not("nothing in flight")
        if s.stalled is not None or s._pool_wait is not None:
            return self._why_not("a statement waits for a server")
        answered = _after_syncs(self.plans, self.rfqs)
        rest = self.plans[answered:]
        partial = self.n > self.n_rfq
        in_block = s.tx_status != codes.TX_IDLE
        first = rest[0].info if rest else None
        if not in_block:
            if not rest:
                return False
            reads = all(not p.write or (p.target is not None and p.target.auto) for p in rest)
            begins = first is not None and first.tx in (TxControl.BEGIN, TxControl.BEGIN_READ_ONLY)
            if self.bad is not None or not (reads or begins):
                # an autocommit write in flight: its outcome is not known (08006)
                return self._why_not(self.bad or "an autocommit write was in flight")
            self._takeover(conn)
            s.ctx.reads_retried += 1 if reads and not begins else 0
            # A read routed to a standby goes where routing allows now; one meant for the primary waits for it.
            standby = reads and not begins and all(p.target is not None for p in rest)
            self._start(self._replay(conn.node, answered, partial, read=standby))
            return True
        single = len(rest) == 1 and not partial and first is not None and first.statements == 1
        if single and first is not None and first.tx is TxControl.COMMIT and rest[0].raw is not None:
            if s.tx_status == codes.TX_FAILED:
                self._takeover(conn)
                self._answer_end("ROLLBACK", committed=False)
                return True
            if self.commit_n != self.n or self.xid in (Xid.UNKNOWN, Xid.ASKED):
                return self._why_not("the transaction id of the COMMIT in flight is not known")
            self._takeover(conn)
            if self.xid is Xid.NONE:
                self._answer_end("COMMIT", committed=True)  # nothing was written: nothing to lose
            else:
                self._start(self._resolve_commit(str(self.xid), self.xid_lsn, self.xid_life, conn.node))
            return True
        if single and first is not None and first.tx is TxControl.ROLLBACK:
            self._takeover(conn)
            self._answer_end("ROLLBACK", committed=False)
            return True
        if any(p.info is not None and p.info.tx is TxControl.PREPARE_TRANSACTION for p in rest):
            return self._why_not("a PREPARE TRANSACTION in flight")
        if any(self._commits(p) for p in rest):
            # A COMMIT pipelined behind other statements: found out as a lone COMMIT is. Committed: the client
            # gets the COMMIT's answers if it has every reply before them; did not commit: replayed (or 40001).
            if not isinstance(self.xid, str):
                return self._why_not("the transaction id of a COMMIT pipelined behind other statements is not known")
            boundary = self._left == 0 and not self._hdr
            tail = self._commit_tail(rest) if boundary else None
            k = _partial_plan(rest) if partial else -1
            # The plan the client has part of the answers to ends the transaction: not run again.
            rerun = not (k >= 0 and self._commits(rest[k]))
            synced = any(p.sync for p in rest)
            self._takeover(conn)
            self._start(self._resolve_pipelined(conn.node, answered, partial, tail, rerun, boundary, synced))
            return True
        self._takeover(conn)
        self._start(self._replay(conn.node, answered, partial, read=False))
        return True

    def _commits_at(self, m: Msg) -> bool:
        """Is this batch item a Bind of a COMMIT?"""
        if m.t != codes.F_BIND:
            return False
        name = m.stmt
        st = self.s.statements.get(name) if name else self.s.unnamed
        return st is not None and st.info.tx is TxControl.COMMIT

    def _commits(self, plan: Plan) -> bool:
        """Does the plan end its transaction with a COMMIT (simple: its last transaction statement)?"""
        if plan.batch is None:
            return plan.info is not None and plan.info.tx is TxControl.COMMIT
        return any(self._commits_at(m) for m in plan.batch)

    def _commit_tail(self, rest: list[Plan]) -> bytes | None:
        """What the server would still answer after every statement before the pipelined COMMIT, when the
        COMMIT is the last statement sent and the client has every reply before it; else None."""
        if self.after_done < 0:
            return None  # an error was relayed: the server skipped the COMMIT (or it is a ROLLBACK)
        before = 0  # statements answered before the COMMIT
        tail: list[bytes] = []
        seen = executed = False
        for p in rest:
            if p.batch is None:
                if seen or p.info is None:
                    return None
                kinds = p.info.kinds
                if p.info.tx is TxControl.COMMIT:
                    if not kinds or kinds[-1] != "TransactionStmt":
                        return None
                    before += len(kinds) - 1
                    tail = [messages.command_complete("COMMIT"), messages.READY_IDLE]
                    seen = executed = True
                else:
                    before += max(1, len(kinds))
                continue
            for m in p.batch:
                t = m.t
                if t == codes.F_BIND:
                    if self._commits_at(m):
                        if seen:
                            return None
                        seen = True
                    elif seen:
                        return None  # another statement after the COMMIT
                    tail.append(messages.BIND_COMPLETE)
                elif t == codes.F_EXECUTE:
                    if not seen:
                        before += 1
                        tail = []  # the client has these replies (checked below)
                    elif executed:
                        return None
                    else:
                        executed = True
                        tail.append(messages.command_complete("COMMIT"))
                elif t == codes.F_PARSE:
                    tail.append(messages.PARSE_COMPLETE)
                elif t == codes.F_DESCRIBE:
                    if m.sub == _STATEMENT:
                        tail.append(messages.parameter_description(()))
                    tail.append(messages.NO_DATA)
                elif t == codes.F_CLOSE:
                    tail.append(messages.CLOSE_COMPLETE)
                elif t == codes.F_SYNC:
                    tail.append(messages.READY_IDLE)
        if not seen or before != self.done_n or self.after_done > len(tail):
            return None
        return b"".join(tail[self.after_done :])

    async def _resolve_pipelined(self, lost: str, answered: int, partial: bool, tail: bytes | None, rerun: bool,
                                 boundary: bool, synced: bool) -> None:
        """A COMMIT pipelined behind other statements was in flight: its outcome tells what to do.

        Committed: the client gets the answers owed after its last statement before the COMMIT (`tail`),
        when it has all before. Not committed: the transaction runs again (its COMMIT sent only once the
        replayed results matched), or, when the client has part of the COMMIT's own request's answers,
        40001 there (the transaction is over, as after a failed COMMIT)."""
        s = self.s

        outcome = await self._outcome(str(self.xid), self.xid_lsn, self.xid_life, lost)
        if s.phase != READY:
            return
        if outcome is None:
            s._fatal("08006", "server connection lost")
        elif outcome:
            if tail is None:
                log.warning("client %s: a COMMIT pipelined behind other statements committed, but replies before "
                            "it were lost with the server: the client cannot be given them", s.peer)
                s._fatal("08006", "server connection lost")
                return
            ready = tail.endswith(messages.READY_IDLE)
            self._end(tail[: -len(messages.READY_IDLE)] if ready else tail, committed=True, ready=ready)
        elif rerun and tail is None:
            await self._replay(lost, answered, partial, read=False)  # nothing committed: run it all again
        elif boundary:
            s.ctx.replays_failed += 1
            log.info("client %s: a COMMIT pipelined behind other statements did not commit: 40001", s.peer)
            self._end(messages.error_response("ERROR", SQLSTATE, MESSAGE), committed=False, ready=synced)
        else:
            s._fatal("08006", "server connection lost")

    def _unmovable(self) -> str | None:
        """Why a session-pooling or pinned client's session cannot move to a new server (session/move.py)."""
        return self.mv.unmovable()

    def _move(self, conn: BackendConnection) -> bool:
        """Issue 16 §2: an idle session-pooling or pinned client gets a new server now, its settings,
        prepared statements and LISTEN channels rebuilt there (session/move.py)."""
        return self.mv.move(conn)

    def _why_not(self, reason: str) -> bool:
        log.info("client %s: not replayed: %s", self.s.peer, reason)
        self.mv.give_up()  # a server's FATAL held back goes to the client now
        self.saved_framing = None
        self.state = RECORD
        return False

    def _takeover(self, conn: BackendConnection) -> None:
        """What on_backend_lost does for the lost connection; the client's input waits meanwhile."""
        s = self.s
        log.warning("client %s: server connection to node %s was lost inside a transaction or statement; "
                    "failover.replay takes over", s.peer, conn.node)
        if s.hold is not None:
            s._release_hold()
        s.drop_server(conn)
        s.pending = 0
        s.inflight.clear()
        if self.saved_framing is None:
            self.saved_framing = (self._type, self._left, self._hdr, self._zwant, s.tx_status)
        self._type = self._left = 0  # the new server's replies start at a message boundary
        self._hdr = b""
        self._zwant = False
        self._hold_input()

    def _hold_input(self) -> None:
        self.held = True
        self.s._processing = True  # ClientSession._process returns at once: client messages wait

    def _release_input(self) -> None:
        if self.held:
            self.held = False
            self.s._processing = False
            self.s._continue()

    def _start(self, coro: Any) -> None:
        self.s._spawn(coro)

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            self.s._internal_error(exc)

    def _answer_end(self, tag: str, committed: bool) -> None:
        """Answer the client's COMMIT/ROLLBACK here: its transaction is over either way."""
        self._end(messages.command_complete(tag), committed)

    def _refuse_end(self) -> None:
        """A COMMIT that did not commit: 40001, and the transaction is over."""
        self.s.ctx.replays_failed += 1
        self._end(messages.error_response("ERROR", SQLSTATE, MESSAGE), False)

    def _end(self, answer: bytes, committed: bool, ready: bool = True) -> None:
        s = self.s
        if not committed and s._committed is not None:
            s.settings = s._committed
            s._set_codec()
        s._committed = None
        s._applied_base = None
        s.tx_status = codes.TX_IDLE
        if s.cache_dirty:
            resultcache.before_ready(s, 1, codes.TX_IDLE)
        self._reset()
        self.idle = True
        self._type = self._left = 0
        self._hdr = b""
        self.saved_framing = None
        s._write(answer + messages.ready_for_query(codes.TX_IDLE) if ready else answer)
        if self.mv.reconnect():
            return  # a session-pooling or pinned client gets its new server first (session/move.py)
        self._release_input()

    async def _resolve_commit(self, xid: str, anchor: int, life: str, lost: str) -> None:
        """The COMMIT was in flight: ask the (new) primary whether the transaction committed."""
        s = self.s

        outcome = await self._outcome(xid, anchor, life, lost)
        if s.phase != READY:
            return
        if outcome is None:
            s._fatal("08006", "server connection lost")
        elif outcome:
            self._answer_end("COMMIT", committed=True)
        else:
            self._refuse_end()

    async def _outcome(self, xid: str, anchor: int, life: str, lost: str) -> bool | None:
        """Whether transaction `xid` (anchored at WAL position `anchor` on node `lost`, started at `life`)
        committed, as the current primary tells; None when that cannot be found out in failover.write_timeout."""
        s = self.s
        ctx = s.ctx
        cfg: Config = ctx.config
        deadline = time.monotonic() + cfg.failover.write_timeout
        last = "no primary"

        while s.phase == READY and time.monotonic() < deadline:
            node = ctx.registry.primary_node()
            if node is None:
                await asyncio.sleep(0.05)
                continue
            user, password = checker_credentials(cfg)
            try:
                conn = await connect(node.name, node.cfg.host, node.cfg.port, user, password, cfg.health.database,
                                     timeout=max(0.5, deadline - time.monotonic()),
                                     params={"application_name": "heliosproxy-replay"},
                                     tls=node_tls(cfg, node.cfg))
                try:
                    rows = await asyncio.wait_for(conn.query(STATUS_SQL.format(xid=int(xid))), 5)
                finally:
                    conn.close()
            except QueryError as exc:
                if exc.sqlstate == "22023" and "future" in exc.message:
                    rows = [["future", None, None, None, None]]  # the new primary never saw the id: nor its commit
                else:
                    last = exc.message
                    await asyncio.sleep(0.1)
                    continue
            except (OSError, TimeoutError, ConnectionError, BackendAuthError) as exc:
                last = str(exc) or exc.__class__.__name__
                await asyncio.sleep(0.1)
                continue
            if s.phase != READY:
                return None
            row = rows[0] if rows and len(rows[0]) == 5 else [None, None, None, None, None]
            replayed = int(row[1]) if row[1] is not None else None
            block = int(row[2]) if row[2] is not None else 8192
            segment = int(row[3]) if row[3] is not None else 16 << 20
            same = node.name == lost
            answer = verdict(row[0], replayed, anchor, block, segment, same, same and row[4] == life)
            if answer == "committed" or answer == "aborted":
                ctx.commits_resolved += 1
                log.info("client %s: a COMMIT in flight when node %s was lost: transaction %s %s (%s on node %s, "
                         "recovered to %s, anchor %s)", s.peer, lost, xid,
                         "committed" if answer == "committed" else "did not commit", row[0], node.name,
                         replayed, anchor)
                return answer == "committed"
            if answer == "unknown":
                log.warning("client %s: outcome of a COMMIT in flight cannot be found out: node %s says %s but has "
                            "not recovered from node %s's history since it started", s.peer, node.name, row[0], lost)
                return None
            last = f"transaction {xid} is {row[0]}"
            await asyncio.sleep(0.05)
        log.warning("client %s: outcome of a COMMIT in flight unknown after failover.write_timeout (%s)", s.peer, last)
        return None

    async def _acquire(self, lost: str, read: bool) -> tuple[BackendConnection, Pool]:
        s = self.s
        router = s.ctx.router
        deadline = time.monotonic() + s.ctx.config.failover.write_timeout
        try:
            return await acquire_until(
                s, deadline, lambda: (router.read_target() if read else None) or router.primary()
            )
        except NoServerError as exc:
            raise BackendUnavailableError(str(exc) or "no server within failover.write_timeout") from None

    async def _replay(self, lost: str, answered: int, partial: bool, read: bool) -> None:

        s = self.s
        plans = list(self.plans)
        # The plan the client has part of the answers to (a Flush alone before it answers nothing).
        phase1 = plans[: answered + _partial_plan(plans[answered:]) + 1] if partial else plans[:answered]
        self.phase2 = plans[len(phase1):]
        self.partial = partial
        bad = self.bad
        try:
            conn, pool = await self._acquire(lost, read)
        except BackendUnavailableError as exc:
            if s.phase == READY:
                log.warning("client %s: no server to replay on: %s", s.peer, exc)
                s._fatal("08006", "server connection lost")
            return
        if s.phase != READY:
            pool.release(conn)
            return
        if not await self.mv.ready(conn, pool):
            return  # a session-pooling or pinned client's state could not be rebuilt there: 08006
        s._bind(conn, pool)
        s._just_bound = False
        self.xid = Xid.UNKNOWN  # a new transaction on the new server: its id is asked again
        self.wrote = any(p.write for p in plans)
        if s._committed is not None:
            s.settings = dict(s._committed)  # as at the transaction's start: the replay sets them again
            s._applied_base = dict(s._committed)
            s._set_codec()
        s.slow = True
        s.relay.reset()
        if bad is not None:
            self.saved_framing = None
            log.info("client %s: transaction not replayed (%s): 40001", s.peer, bad)
            s.ctx.replays_failed += 1
            if partial:
                s._fatal("08006", "server connection lost")
                return
            # A transaction to abort on the new server; the client's next statement gets 40001 there.
            conn.write(messages.query("BEGIN"))
            s.expect.append(Expect(codes.F_QUERY, HIDE))
            self._refuse_rest()
            return
        self.target_n = self.n
        self.rn = 0
        self.rhasher = hashlib.blake2b(digest_size=16)
        self.expect_rfqs = sum(1 for p in phase1 if p.sync)
        self.replay_rfqs = 0
        log.info("client %s: replaying %d statement(s) on node %s (%d more after)", s.peer, len(phase1), conn.node,
                 len(self.phase2))
        if self.target_n == 0 or not phase1:
            self.state = RECORD
            self._send_all(phase1)
            self._matched()
            return
        self.state = SWALLOW
        self._send_all(phase1)
        # The client's messages wait until the replay is judged (then they follow it in order).

    def _send_all(self, plans: list[Plan]) -> None:

        s = self.s
        conn = s.backend
        if conn is None:
            return
        self.resending = True
        try:
            for p in plans:
                if s.phase == READY and s.backend is conn:
                    s._send(conn, p)
        finally:
            self.resending = False

    def _matched(self) -> None:
        """The replay reproduced every byte the client had: the rest of its work goes on."""
        s = self.s
        s.ctx.replays_ok += 1
        self.attempts = 0
        self.saved_framing = None
        log.info("client %s: transaction replayed after a lost server; results match", s.peer)
        rest, self.phase2 = self.phase2, []
        if rest:
            if s.backend is None:
                s._fatal("08006", "server connection lost")
                return
            self._send_all(rest)
        asyncio.get_running_loop().call_soon(self._guard, self._release_input)

    def _mismatched(self) -> None:
        """The replay's results differ (or it ended short): 40001 for the client's pending statement."""

        s = self.s
        if self.state == RECORD or s.phase != READY:
            return
        self.state = RECORD
        self.saved_framing = None
        self.attempts = 0
        s.ctx.replays_failed += 1
        log.info("client %s: transaction could not be replayed after failover: 40001", s.peer)
        if self.partial:
            s._fatal("08006", "server connection lost")
            return
        # Everything the replay sent is answered and swallowed; the recorded stream stays the client's.
        self._refuse_rest()

    def _refuse_rest(self) -> None:
        """Send the client's unanswered statements with the first replaced by the server-side 40001."""
        rest, self.phase2 = self.phase2, []
        self.refuse_next = True  # on_send turns the next plan into REFUSE_SQL; later ones meet an aborted transaction
        self.bad = self.bad or "refused after failover"
        self._send_all(rest)
        self._release_input()


    # ------------------------------------------------------------------ autocommit writes (issue 16 §1)
    def _wrappable(self, conn: BackendConnection, plan: Plan) -> bool:
        """An autocommit write whose outcome must be found out if its server is lost: DML (or a SELECT
        that writes) the client sent alone, with nothing else in flight, that can run in a transaction block."""
        s = self.s
        if (
            self.wrap is not None
            or self.state != RECORD
            or self.saved_framing is not None
            or not plan.sync
            or not plan.write
            or plan.answer is not None
            or plan.dbs
            or plan.inject is not None
            or s.tx_status != codes.TX_IDLE
            or s.pending
            or s.expect
            or s.unsynced
            or s.stalled is not None
            or s.hold is not None
            or s.backend is not conn
            or s.compat.statement_mode
        ):
            return False
        if plan.batch is None:
            return plan.raw is not None and _wrappable_info(plan.info)
        parsed_unnamed = False
        executes = 0
        for m in plan.batch:
            t = m.t
            if t == codes.F_PARSE:
                pname = m.name
                if pname is None:
                    return False
                parsed_unnamed = parsed_unnamed or not pname
            elif t == codes.F_BIND:
                name = m.stmt
                if name is None or (not name and not parsed_unnamed):
                    return False  # an unnamed statement from an earlier batch: a hidden Query would drop it
                st = s.statements.get(name) if name else s.unnamed
                if st is None or not _wrappable_info(st.info):
                    return False
            elif t == codes.F_EXECUTE:
                executes += 1
            elif t not in (codes.F_DESCRIBE, codes.F_SYNC, codes.F_CLOSE, codes.F_FLUSH):
                return False
        return executes > 0

    def _wrap_send(self, conn: BackendConnection, plan: Plan) -> None:
        """Send an autocommit write as hidden BEGIN, the client's request, hidden transaction id query; its
        ReadyForQuery is held back until a hidden COMMIT (sent once the id is in) is answered. If the server
        is lost meanwhile, the outcome is found out as for a COMMIT in flight (_wrap_lost). The client sees
        exactly what a direct connection shows."""
        s = self.s
        if not s.slow:
            s.slow = True
            s.relay.reset()
        if s.settings != conn.applied:
            q = tracking.sync_settings_sql(s, conn)  # outside the hidden transaction: a rollback must not undo it
            if q:
                conn.write(messages.query(q))
                s.expect.append(Expect(codes.F_QUERY, HIDE))
        conn.write(_BEGIN)
        s.expect.append(Expect(codes.F_QUERY, HIDE))
        w = self.wrap = Wrap(conn, plan)
        self.wrapping = True
        try:
            s._send(conn, plan)  # on_send records it (self.wrapping) and the session sends it as usual
        finally:
            self.wrapping = False
        if s.backend is not conn or self.wrap is not w:
            return
        conn.write(messages.query(XID_SQL))
        s.expect.append(Expect(codes.F_QUERY, HIDE, capture=lambda rows: self._guard(lambda: self._wrap_xid(w, rows))))
        self.token = s.stalled = _token()  # the client's next messages wait for the hidden COMMIT

    def _withhold_ready(self, w: Wrap, data: bytes) -> bytes:
        """Cut the wrapped request's ReadyForQuery ('T' or 'E') out of relayed replies (whole messages)."""
        pos = 0
        n = len(data)
        while pos + 5 <= n:
            end = pos + 1 + _I.unpack_from(data, pos + 1)[0]
            if data[pos] == _Z and end <= n:
                w.status = data[pos + 5]
                return data[:pos] + data[end:]
            pos = end
        return data

    def _wrap_xid(self, w: Wrap, rows: list[list[str | None]] | None) -> None:
        """The hidden id query was answered: end the hidden transaction (COMMIT, or ROLLBACK after an error)."""
        s = self.s
        if self.wrap is not w:
            return  # the server was lost meanwhile (_wrap_lost took over)
        if s.backend is not w.conn:
            self.wrap = None
            self._untoken()
            s._fatal("08006", "server connection lost")
            return
        if rows is None or w.status == codes.TX_FAILED:
            w.xid = None
            sql = _ROLLBACK
        else:
            row = rows[0] if rows else [None, None, None]
            w.xid = row[0] if len(row) >= 3 and row[1] is not None else None
            if w.xid is not None:
                w.anchor = int(row[1] or 0)
                w.life = row[2] or ""
            sql = _COMMIT
        w.ending = Expect(codes.F_QUERY, HIDE, capture=lambda rows: self._guard(lambda: self._wrap_ended(w, rows)))
        w.conn.write(sql)
        s.expect.append(w.ending)

    def _wrap_ended(self, w: Wrap, rows: list[list[str | None]] | None) -> None:
        """The hidden COMMIT was answered: now the client gets its ReadyForQuery (idle)."""
        s = self.s
        if self.wrap is not w or s.backend is not w.conn:
            return
        ending = w.ending
        error = b""
        if rows is None and ending is not None and ending.data[:1] == b"E":
            error = ending.data  # the COMMIT failed (a deferred constraint, a serialization failure)
        self.wrap = None
        s.tx_status = codes.TX_IDLE
        if s.mode is PoolMode.TRANSACTION and w.plan.target is None:
            s.ctx.reads.acknowledged(s.reads, w.plan.info, True, s.database)
        if s.cache_dirty:
            resultcache.before_ready(s, 1, codes.TX_IDLE)  # committed now: cached reads of its tables go
        s._write(self.relayed(error + messages.ready_for_query(codes.TX_IDLE)))
        asyncio.get_running_loop().call_soon(self._guard, lambda: self._wrap_release(w.conn))

    def _wrap_release(self, conn: BackendConnection) -> None:
        s = self.s
        if (
            s.backend is conn
            and s.tx_status == codes.TX_IDLE
            and not s.pending
            and not s.expect
            and not s.unsynced
            and s.mode is PoolMode.TRANSACTION
            and not s.pinned
        ):
            s._unbind(reusable=True)
        self._untoken()
        if s.stalled is None:
            s._continue()

    def _untoken(self) -> None:
        if self.token is not None:
            if self.s.stalled is self.token:
                self.s.stalled = None
            self.token = None

    def _wrap_lost(self, conn: BackendConnection, w: Wrap) -> bool:
        """The server of a wrapped autocommit write was lost before the client got its ReadyForQuery."""
        s = self.s
        self.wrap = None
        self._untoken()
        at_boundary = self._left == 0 and not self._hdr
        if not at_boundary:
            return self._why_not("lost inside a reply message")
        if w.ending is None:
            # No COMMIT was sent: nothing committed. A client that saw nothing of it gets it run anew
            # (wrapped again); one that saw part of its result gets 40001 (the results could differ).
            self._takeover(conn)
            self.saved_framing = None
            if self.n == 0:
                self._reset()
                self.idle = True
                s.tx_status = codes.TX_IDLE
                log.info("client %s: an autocommit write in flight did not commit; it is sent again", s.peer)
                self._start(self._send_when_reachable(w.plan, False))
                return True
            log.info("client %s: an autocommit write in flight did not commit: 40001", s.peer)
            self._refuse_end()
            return True
        self._takeover(conn)
        self.saved_framing = None
        if w.xid is None:
            self._end(b"", committed=True)  # it failed, or wrote nothing: no outcome to find out
            return True
        self._start(self._resolve_write(w))
        return True

    async def _resolve_write(self, w: Wrap) -> None:
        s = self.s

        assert w.xid is not None
        outcome = await self._outcome(w.xid, w.anchor, w.life, w.conn.node)
        if s.phase != READY:
            return
        if outcome is None:
            s._fatal("08006", "server connection lost")
        elif outcome:
            self._end(b"", committed=True)
        else:
            self._refuse_end()

    def retry_unsent(self, plan: Plan, exc: HeliosError) -> bool:
        """Hook in ClientSession._answer_plan_error: a statement that never reached a server because
        its server could not be reached (a dead primary not yet noticed) waits for one instead, up to
        failover.write_timeout, as a write does while no primary is known. True when it took over."""
        s = self.s
        # 57P03: a server that refuses logins now (shutting down, starting up): as unreachable as a dead one.
        unreachable = exc.sqlstate.startswith("08") or exc.sqlstate == "57P03"
        if not unreachable or s.backend is not None or s.tx_status != codes.TX_IDLE:
            return False
        if plan.raw is None and plan.batch is None:
            return False
        self._hold_input()
        self._start(self._send_when_reachable(plan, plan.target is not None and not plan.write))
        return True

    async def _send_when_reachable(self, plan: Plan, read: bool) -> None:

        s = self.s
        try:
            conn, pool = await self._acquire("", read)
        except BackendUnavailableError as exc:
            if s.phase == READY:
                s._write(messages.error_response("ERROR", "08006", f"no server available: {exc}")
                         + (messages.ready_for_query(s.tx_status) if plan.sync else b""))
                self._release_input()
            return
        if s.phase != READY:
            pool.release(conn)
            return
        if s.backend is not None:  # cannot happen: input was held
            pool.release(conn)
            s._fatal("08006", "server connection lost")
            return
        s._bind(conn, pool)
        s._send(conn, plan)
        self._release_input()


_COMPLETIONS = frozenset((codes.B_COMMAND_COMPLETE, codes.B_EMPTY_QUERY, codes.B_PORTAL_SUSPENDED))
_FLUSH = b"H\x00\x00\x00\x04"


# Batch items, read in one place: this branch's (type, bytes, decoded) tuples. With the typed records
# (protocol/frontend.Msg) these become m.t, m.name, m.stmt, m.sub and Msg(codes.F_FLUSH, _FLUSH).
_STATEMENT = ord("S")


def _partial_plan(rest: list[Plan]) -> int:
    """Index in `rest` (the unanswered plans) of the first that the server answers anything to."""
    for i, p in enumerate(rest):
        if p.batch is None or any(m.t != codes.F_FLUSH for m in p.batch):
            return i
    return 0


def _flush_before_commit(batch: list[Msg], commits_at: Any) -> None:
    """Insert a Flush right after the last Execute before the batch's COMMIT: the server sends the replies
    before the COMMIT ahead of it, so that a COMMIT lost in flight can be answered (Replay._commit_tail)."""
    last_exec = -1
    for i, m in enumerate(batch):
        if m.t == codes.F_EXECUTE:
            last_exec = i
        elif commits_at(m):
            batch.insert(last_exec + 1, Msg(codes.F_FLUSH, _FLUSH))
            return


_BEGIN = messages.query("BEGIN")
_COMMIT = messages.query("COMMIT")
_ROLLBACK = messages.query("ROLLBACK")
# Autocommit statements wrapped in a hidden transaction: plain DML, or a SELECT that writes.
_WRAP_KINDS = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt"})


def _wrappable_info(info: Any) -> bool:
    return (
        info is not None
        and info.statements == 1
        and info.tx is None
        and not info.effects
        and not info.parse_error
        and bool(info.kinds)
        and all(k in _WRAP_KINDS for k in info.kinds)
    )


def _token() -> Plan:

    return Plan.deferred(None)


class Wrap:
    """An autocommit write sent inside a hidden transaction, until its hidden COMMIT is answered."""

    __slots__ = ("anchor", "conn", "ending", "life", "plan", "status", "xid")

    def __init__(self, conn: BackendConnection, plan: Plan):
        self.conn = conn
        self.plan = plan
        self.status = -1  # the request's own ReadyForQuery status, once withheld
        self.xid: str | None = None  # its transaction id (None: it failed or wrote nothing)
        self.anchor = 0
        self.life = ""
        self.ending: Expect | None = None  # the hidden COMMIT/ROLLBACK, once sent


class BackendUnavailableError(Exception):
    """No server to replay on within failover.write_timeout."""


def verdict(status: str | None, replayed: int | None, anchor: int, block: int, segment: int,
            same_node: bool, same_life: bool) -> str:
    """The outcome of a transaction whose COMMIT was in flight: "committed", "aborted", "wait" (ask again)
    or "unknown". `status` is pg_xact_status(id) on the current primary ("future": it never saw the id),
    `replayed` its pg_last_wal_replay_lsn() (None: not in recovery since it started), `anchor` the WAL
    insert position on the lost server when the id was asked (after the transaction's first record),
    `same_node`/`same_life`: the primary is the lost server / and has not restarted since.

    A promoted standby hands out again the ids of transactions none of whose records reached it, so its
    "committed" is about *this* transaction only if its history reaches the anchor. "aborted" (or an id
    in the future) holds either way: had this transaction committed there, its id would not be reused."""
    if status in ("aborted", "future"):
        return "aborted"
    if same_life:
        replayed = None  # not restarted: its own history is whole (a recovery before the transaction is moot)
    if anchor % segment == _LONG_PAGE_HEADER:
        anchor -= _LONG_PAGE_HEADER  # the insert position skips a page header the last record does not reach
    elif anchor % block == _PAGE_HEADER:
        anchor -= _PAGE_HEADER
    if replayed is None:
        # Not recovered since it started (a clean restart keeps all its WAL): the lost server itself, whose
        # history is whole; any other node cannot tell.
        if not same_node:
            return "unknown"
    elif replayed < anchor:
        return "aborted"  # the new primary's history ends before this transaction's first record
    if status == "committed":
        return "committed"
    if status == "in progress":
        return "wait"
    return "unknown"


_PAGE_HEADER = 24  # SizeOfXLogShortPHD
_LONG_PAGE_HEADER = 40  # SizeOfXLogLongPHD (the first page of a WAL segment)


def _after_syncs(plans: list[Plan], syncs: int) -> int:
    """Index just past the plan whose answer was the `syncs`-th ReadyForQuery."""
    if syncs <= 0:
        return 0
    seen = 0
    for i, p in enumerate(plans):
        if p.sync:
            seen += 1
            if seen == syncs:
                return i + 1
    return len(plans)
