"""A client session's call-ins to the result cache: look up before dispatch, capture the reply, invalidate writes.

client.py calls in at four places, each behind one attribute check so that a proxy without
`cache.enabled` pays nothing else: `on_query` / `on_batch` before a request is routed (answer a hit,
start a capture, note the tables a write touches), `_write` (the capture sees exactly the bytes the
client gets), `before_ready` (a write's tables get new generations before its ReadyForQuery is
forwarded) and `finish` (at the request's ReadyForQuery the captured answer is checked and stored).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from heliosproxy.cache import GLOBAL_SLOT, CacheStats, ResultCache, shared_generations, table_slot
from heliosproxy.cache.wal import WalReader
from heliosproxy.config.schema import CacheInvalidation, Config, PoolMode
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import STATEMENT, Msg
from heliosproxy.sql.classify import StatementInfo
from heliosproxy.sql.hints import Hints

if TYPE_CHECKING:
    from heliosproxy.backends.connection import BackendConnection
    from heliosproxy.session.context import ProxyContext
    from heliosproxy.session.core import ClientSession
    from heliosproxy.session.state import Inflight

__all__ = ["CacheService", "Capture", "before_ready", "finish", "on_batch", "on_query", "write_slots"]

log = logging.getLogger("heliosproxy.cache")
_I = struct.Struct("!I")
# Settings that cannot change a statement's answer; every other one the client set is in the key.
_NEUTRAL: Final = frozenset(
    {
        "application_name", "fallback_application_name", "statement_timeout", "lock_timeout",
        "idle_in_transaction_session_timeout", "idle_session_timeout", "work_mem", "maintenance_work_mem",
        "client_min_messages", "random_page_cost", "seq_page_cost", "effective_cache_size", "geqo",
    }
)
_NEUTRAL_PREFIXES: Final = ("enable_", "log_", "jit", "geqo_", "tcp_", "helios.")
# Statement kinds that change no table data (a write-classified string made only of these drops nothing).
_NO_DATA: Final = frozenset(
    {
        "TransactionStmt", "VariableSetStmt", "VariableShowStmt", "PrepareStmt", "DeallocateStmt", "ListenStmt",
        "UnlistenStmt", "NotifyStmt", "DiscardStmt", "LockStmt", "FetchStmt", "ClosePortalStmt",
        "CheckPointStmt", "VacuumStmt", "ConstraintsSetStmt",
    }
)
# Kinds whose writes are to the tables they name.
_TABLE_WRITES: Final = frozenset(
    {
        "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt", "SelectStmt", "ExplainStmt",
        "DeclareCursorStmt", "TruncateStmt",
    }
)
# Messages a cacheable answer may hold (no errors, notices, parameter reports, suspended portals, COPY).
_ANSWER_TYPES: Final = frozenset(
    (
        codes.B_ROW_DESCRIPTION, codes.B_DATA_ROW, codes.B_COMMAND_COMPLETE, codes.B_PARSE_COMPLETE,
        codes.B_BIND_COMPLETE, codes.B_NO_DATA, codes.B_PARAMETER_DESCRIPTION,
    )
)


class Capture:
    """The reply of one cacheable miss, collected from what the session writes to its client."""

    __slots__ = ("info", "key", "limit", "over", "parts", "size", "slots", "stamp", "ttl")

    def __init__(self, key: bytes, info: StatementInfo, slots: tuple[int, ...], stamp: tuple[int, ...],
                 ttl: float, limit: int):
        self.key = key
        self.info = info
        self.slots = slots
        self.stamp = stamp
        self.ttl = ttl
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.over = False

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit + 6:  # (+ its ReadyForQuery)
            self.over = True
            self.parts.clear()
        elif not self.over:
            self.parts.append(data)


def write_slots(info: StatementInfo) -> set[int]:
    """Slots of the tables a statement string may write; {GLOBAL_SLOT} when that is not known."""
    if info.parse_error or info.calls_unknown:
        return {GLOBAL_SLOT}
    named = False
    for kind in info.kinds:
        if kind in _NO_DATA:
            continue
        if kind in _TABLE_WRITES:
            named = True
            continue
        return {GLOBAL_SLOT}  # DDL, DO, CALL, EXECUTE, ...
    return {table_slot(t) for t in info.tables} if named else set()


def _cacheable(info: StatementInfo) -> bool:
    return (
        info.read_only
        and info.statements == 1
        and info.kinds == ("SelectStmt",)
        and not info.volatile
        and not info.calls_unknown
        and not info.effects
    )


def _session_ok(s: ClientSession) -> bool:
    return (
        s.tx_status == codes.TX_IDLE
        and not s.pending
        and not s.expect
        and not s.pinned
        and not s._temp_schema
        and s.hold is None
        and not s.node_pref
        and not s.branch_pref
    )


def _key(s: ClientSession, request: list[bytes]) -> bytes:
    """A digest of everything that can change the answer: database, user, the client's settings
    (role, search_path, TimeZone, DateStyle, IntervalStyle, extra_float_digits, bytea_output,
    client_encoding, ...) and the request's own bytes (text, parameters, formats)."""
    base = s.cache_base  # (settings, database, user, primary) when its key prefix was hashed, and that hash
    primary = s.ctx.registry.primary or ""
    if base is None or base[0] != s.settings or base[1] != s.database or base[2] != s.user or base[3] != primary:
        base = s.cache_base = (dict(s.settings), s.database, s.user, primary, _base_hash(s, primary))
    h = base[4].copy()
    for p in request:
        h.update(_I.pack(len(p)))
        h.update(p)
    digest: bytes = h.digest()
    return digest


def _base_hash(s: ClientSession, primary: str) -> Any:
    h = hashlib.blake2b(digest_size=24)
    # The primary's name too: after a failover, answers stored from the old primary (which may hold
    # writes the new one never got) are not found any more.
    parts = [s.database.encode(), s.user.encode(), primary.encode()]
    for name in sorted(s.settings):
        low = name.lower()
        if low in _NEUTRAL or low.startswith(_NEUTRAL_PREFIXES):
            continue
        parts.append(low.encode() + b"=" + s.settings[name].encode("utf-8", "surrogatepass"))
    parts.append(b"--")
    for p in parts:
        h.update(_I.pack(len(p)))
        h.update(p)
    return h


def _start(s: ClientSession, cache: ResultCache, info: StatementInfo, hints: Hints | None,
           request: list[bytes]) -> bool:
    """A hit is answered (True); a cacheable miss starts a capture."""
    if not _cacheable(info) or not _session_ok(s):
        return False
    hint: str | None = None
    if hints is not None:
        if hints.node or hints.branch:
            return False
        hint = hints.extra.get("cache")
    ttl = cache.ttl_for(info.tables, hint)
    if ttl is None:
        return False
    key = _key(s, request)
    body = cache.get(key)
    if body is not None:
        s._answer(body)
        return True
    slots, stamp = cache.stamp(info.tables)
    s.cache_rec = Capture(key, info, slots, stamp, ttl, cache.config.max_result)
    return False


def on_query(s: ClientSession, msg: bytes, info: StatementInfo, hints: Hints | None) -> bool:
    """A simple Query about to be routed: True when it was answered from the cache."""
    s.cache_rec = None
    cache = s.ctx.cache
    if cache is None:
        return False
    if not info.read_only or info.calls_unknown or info.parse_error:
        s.cache_dirty |= write_slots(info)
        return False
    return _start(s, cache, info, hints, [b"Q", msg])


def on_batch(s: ClientSession, batch: list[Msg], info: StatementInfo | None,
             hints: Hints | None, sync: bool) -> bool:
    """An extended-protocol batch about to be routed: True when it was answered from the cache.

    Cached: one Bind (unnamed portal) and one Execute, with Parse / Describe as the client sent
    them, ending in Sync. A Parse is only answered locally where the proxy owns statement names
    (transaction pooling, client not pinned)."""
    s.cache_rec = None
    cache = s.ctx.cache
    if cache is None:
        return False
    statements = s.statements
    request: list[bytes] = [b"X"]
    binds = executes = 0
    shape_ok = sync
    local_names = s.mode is not PoolMode.SESSION and not s.pinned
    for msg in batch:
        t = msg.t
        m = msg.data
        if t == codes.F_BIND:
            st = statements.get(msg.stmt) if msg.stmt else s.unnamed
            if st is None:
                shape_ok = False
                continue
            si = st.info
            if not si.read_only or si.calls_unknown or si.parse_error:
                s.cache_dirty |= write_slots(si)
            binds += 1
            shape_ok = shape_ok and not msg.name
            request.append(b"B" + st.raw + b"\x00" + st.tail + b"\x00" + m[msg.at :])
        elif t == codes.F_PARSE:
            shape_ok = shape_ok and local_names
            request.append(b"P" + msg.raw + b"\x00" + msg.tail)
        elif t == codes.F_DESCRIBE:
            if msg.sub == STATEMENT:
                st = statements.get(msg.name) if msg.name else s.unnamed
                if st is None:
                    shape_ok = False
                else:
                    request.append(b"DS" + st.raw + b"\x00" + st.tail)
            else:
                shape_ok = shape_ok and not msg.name
                request.append(b"DP")
        elif t == codes.F_EXECUTE:
            executes += 1
            shape_ok = shape_ok and m[5] == 0
            request.append(b"E" + m[-4:])
        elif t == codes.F_SYNC:
            request.append(b"S")
        else:
            shape_ok = False
    if not shape_ok or binds != 1 or executes != 1 or info is None:
        return False
    return _start(s, cache, info, hints, request)


def before_ready(s: ClientSession, readies: int, last: int) -> None:
    """ReadyForQuery of `readies` requests is about to be forwarded: the tables of the writes sent
    so far get new generations first. Kept until the session is idle with nothing in flight, so that
    a COMMIT drops again what its transaction wrote."""
    cache = s.ctx.cache
    dirty = s.cache_dirty
    if cache is not None:
        cache.invalidate(dirty)
    if (last & 0xFF) == codes.TX_IDLE and readies >= s.pending:
        dirty.clear()


def finish(s: ClientSession, fl: Inflight | None, conn: BackendConnection, status: int) -> None:
    """The captured request's ReadyForQuery: store the answer if it is one a server would give again."""
    rec = s.cache_rec
    s.cache_rec = None
    cache = s.ctx.cache
    if rec is None or cache is None or fl is None or fl.info is not rec.info:
        return
    if fl.error is not None or status != codes.TX_IDLE or s.pending or conn.node != s.ctx.registry.primary:
        return  # failed, inside a transaction now, pipelined, or from a standby (it may lag behind writes)
    if rec.over:
        cache.stats.too_large += 1
        return
    data = b"".join(rec.parts)
    body = _answer_body(data)
    if body is not None:
        cache.put(rec.key, body, rec.slots, rec.stamp, rec.ttl)


def _answer_body(data: bytes) -> bytes | None:
    """The messages before the final ReadyForQuery, if all are of kinds a cache may replay.

    ParameterStatus messages are left out: a cacheable statement changes no setting, so they come
    from the proxy applying the client's own settings to the server it got (the client has them)."""
    pos = 0
    n = len(data)
    completes = 0
    keep: list[bytes] = []
    start = 0
    while pos < n:
        if n - pos < 5:
            return None
        t = data[pos]
        end = pos + 1 + _I.unpack_from(data, pos + 1)[0]
        if end > n:
            return None
        if t == codes.B_READY_FOR_QUERY:
            if end != n or completes != 1:
                return None
            keep.append(data[start:pos])
            return b"".join(keep) if len(keep) > 1 else keep[0]
        if t == codes.B_PARAMETER_STATUS:
            keep.append(data[start:pos])
            start = end
        elif t not in _ANSWER_TYPES:
            return None
        elif t == codes.B_COMMAND_COMPLETE:
            completes += 1
        pos = end
    return None


class CacheService:
    """A Server extra: turns ctx.cache on and off with the config, runs the WAL reader (worker 0 only:
    generations are shared, so one reader invalidates every worker), answers SHOW CACHE / CACHE CLEAR."""

    def __init__(self, ctx: ProxyContext, worker_id: int = 0):
        self.ctx = ctx
        self.worker_id = worker_id
        self.wal: WalReader | None = None
        self._started = False
        self.configure(ctx.config)

    def configure(self, config: Config) -> None:
        cc = config.cache
        ctx = self.ctx
        if not cc.enabled:
            ctx.cache = None
        elif ctx.cache is None:
            ctx.cache = ResultCache(cc, shared_generations())
        else:
            ctx.cache.configure(cc)
        if self.wal is not None:
            self.wal.configure(config)
        if self._started:
            self._spawn_wal_change(config)

    def _want_wal(self, config: Config) -> bool:
        cc = config.cache
        return cc.enabled and cc.invalidation is CacheInvalidation.WAL and self.worker_id == 0

    def _spawn_wal_change(self, config: Config) -> None:
        want = self._want_wal(config)
        if want and self.wal is None:
            self.wal = WalReader(config, self.ctx.registry, self._on_wal_write)
            _spawn(self.wal.start())
        elif not want and self.wal is not None:
            wal, self.wal = self.wal, None
            _spawn(wal.stop())

    def _on_wal_write(self, slots: set[int]) -> None:
        cache = self.ctx.cache
        if cache is not None:
            cache.invalidate(slots)
        else:
            shared_generations().bump(slots)

    async def start(self) -> None:
        self._started = True
        if self._want_wal(self.ctx.config):
            self.wal = WalReader(self.ctx.config, self.ctx.registry, self._on_wal_write)
            await self.wal.start()

    async def stop(self) -> None:
        self._started = False
        if self.wal is not None:
            await self.wal.stop()
            self.wal = None

    # ------------------------------------------------------------------ console
    def show(self) -> bytes:
        """SHOW CACHE: one row of this worker's cache state and counters."""
        return messages.result_set(SHOW_CACHE_COLUMNS, [self.row()])

    @staticmethod
    def show_workers(rows: list[tuple[Any, list[str | None]]]) -> bytes:
        """SHOW CACHE over every worker (multi-worker mode): one row each, with a `worker` column."""
        return messages.result_set((*SHOW_CACHE_COLUMNS, "worker"), [[*r, str(w)] for w, r in rows if r])

    def row(self) -> list[str | None]:
        """This worker's SHOW CACHE row (also in its snapshot for the other workers)."""
        cache = self.ctx.cache
        cc = self.ctx.config.cache
        st = cache.stats if cache is not None else CacheStats()
        looked = st.hits + st.misses
        wal = self.wal
        row: list[str | None] = [
            "on" if cache is not None else "off",
            cc.invalidation.value,
            str(len(cache) if cache is not None else 0),
            str(st.bytes),
            str(cc.max_memory),
            str(st.hits),
            str(st.misses),
            f"{st.hits / looked:.3f}" if looked else "0",
            str(st.stores),
            str(st.evictions),
            str(st.invalidations),
            str(st.expired),
            str(st.too_large),
            None if wal is None else ("streaming" if wal.connected else "connecting"),
            None if wal is None else str(wal.commits),
            None if wal is None else wal.last_error,
        ]
        return row

    def clear(self, args: list[str]) -> bytes:
        """CACHE CLEAR [table]: every worker's entries (of that table) stop being served."""
        if not args or args[0].upper() != "CLEAR" or len(args) > 2:
            raise HeliosError("usage: CACHE CLEAR [table]", sqlstate="42601")
        cache = self.ctx.cache
        table = args[1] if len(args) == 2 else None
        if cache is not None:
            cache.clear(table)
        else:
            shared_generations().bump((GLOBAL_SLOT,) if table is None else (table_slot(table),))
        return messages.command_complete("CACHE CLEAR")


SHOW_CACHE_COLUMNS: Final = (
    "enabled", "invalidation", "entries", "bytes", "max_memory", "hits", "misses", "hit_ratio", "stores",
    "evictions", "invalidations", "expired", "too_large", "wal_state", "wal_commits", "wal_error",
)
_TASKS: set[asyncio.Task[None]] = set()  # WAL reader starts and stops after a reload, referenced until done


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task[None]) -> None:
    _TASKS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("result cache: starting or stopping the WAL reader failed: %r", task.exception())
