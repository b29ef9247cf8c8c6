"""The extended protocol of a session: its messages collected into a batch up to Sync or Flush, each Parse judged
(classified, pre_query), each message's statement resolved in order, then the batch routed and dispatched."""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Final

from heliosproxy.errors import HeliosError
from heliosproxy.plugins import hooks
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import STATEMENT, Msg
from heliosproxy.protocol.frontend import decode as decode_msg
from heliosproxy.session import local, pgcompat, pidmap, resultcache, tracking
from heliosproxy.session.prepared import Statement, server_name
from heliosproxy.session.relay import ABORTED
from heliosproxy.session.state import Plan
from heliosproxy.sql.classify import Effect, StatementInfo, TxControl, classify_uncached
from heliosproxy.sql.hints import Hints, parse_hints

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")

_HELIOS: Final = Effect.HELIOS_SET | Effect.HELIOS_SHOW
_UNREADABLE: Final = classify_uncached("\x00")  # text not valid in the client's encoding: a write, to the primary
_EXITS: Final = frozenset((TxControl.COMMIT, TxControl.ROLLBACK, TxControl.ROLLBACK_TO, TxControl.PREPARE_TRANSACTION))


def exits_transaction(sql: str) -> bool:
    """Would a server run this in an aborted transaction (COMMIT, ROLLBACK [TO], PREPARE TRANSACTION)?"""
    info = classify_uncached(sql)
    return info.statements == 1 and info.tx in _EXITS


def on_extended(s: ClientSession, t: int, msg: bytes) -> None:
    """Parse, Bind, Describe, Execute, Close: decoded once (protocol/frontend.py) and added to the batch."""
    try:
        m = decode_msg(t, msg, s._codec)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        log.warning("client %s user=%s: malformed %r message: %s", s.peer, s.user, chr(t), exc)
        s._violation("invalid frontend message format")
        return
    s.batch.append(m)


def batch_end(s: ClientSession, sync: bool, partial: bool = False) -> None:
    """The client sent Sync or Flush, or stopped sending mid-pipeline (`partial`): judge, route, dispatch."""
    batch = s.batch
    s.batch = []
    if len(batch) == 1 and not partial and s.backend is None and not s.pending:
        if sync:
            s._write(messages.ready_for_query(s.tx_status))
        return
    ctx = s.ctx
    plugins = ctx.plugins
    want_ctx = plugins.has_query_hooks
    read_only = True
    any_stmt = False
    info: StatementInfo | None = None
    hints: Hints | None = None
    qctx: hooks.QueryContext | None = None
    rename = s.txn
    for i, m in enumerate(batch):
        t = m.t
        if t == codes.F_PARSE:
            name = m.name
            if name and rename and name in s.statements:
                if s.tx_status == codes.TX_FAILED and not exits_transaction(m.sql):
                    # A server checks the aborted transaction first.
                    s._batch_error(batch, "25P02", ABORTED, sync, i)
                else:
                    s._batch_error(batch, "42P05", f'prepared statement "{name}" already exists', sync, i)
                return
            judged = judge(s, name, m.sql, m.tail, m.raw, m.readable)
            if isinstance(judged, HeliosError):
                s._batch_error(batch, judged.sqlstate, judged.message, sync, i)
                return
            st = judged
            if st.raw is not m.raw:  # rewritten by a plugin
                batch[i] = m.with_data(messages.msg(t, messages.cstr(name) + st.raw + b"\x00" + m.tail))
            if name:
                s.statements[name] = st
            else:
                s.unnamed = st
            batch[i].st = st
            if st.cached is not None:
                local.batch_cached(s, batch, st, sync)
                return
            tracking.track_effects(s, st.info)
        elif t == codes.F_BIND:
            stmt_name = m.stmt
            st2 = s.statements.get(stmt_name) if stmt_name else s.unnamed
            if st2 is None:
                read_only = False  # unknown to us: the server answers for it (26000)
                continue
            if st2.generation != plugins.generation:
                st2 = _judged_now(s, st2, batch, sync, i)
                if st2 is None:
                    return
            m.st = st2
            if st2.cached is not None:
                local.batch_cached(s, batch, st2, sync)
                return
            if st2.info.signal is not None and pidmap.on_batch(
                s, batch, st2.info.signal, m.data, m.at, st2.tail, sync, rename
            ):
                return  # pg_cancel_backend/pg_terminate_backend of a PID the proxy issued
            any_stmt = True
            info = st2.info
            if s.compat.statement_mode and pgcompat.refuse_block(s, info):
                return
            read_only = read_only and st2.info.read_only
            if st2.hints is not None:
                hints = st2.hints
            if want_ctx and (plugins.has_route or plugins.has_post_query):  # pre_query ran at its Parse
                qctx = s._query_ctx(st2.sql, st2.info)
        elif t == codes.F_CLOSE and rename and m.sub == STATEMENT and m.name:
            s.statements.pop(m.name, None)  # in order: a Parse of the same name may follow
        elif t == codes.F_DESCRIBE and m.sub == STATEMENT:
            st3 = s.statements.get(m.name) if m.name else s.unnamed
            if st3 is not None and st3.generation != plugins.generation:
                st3 = _judged_now(s, st3, batch, sync, i)
                if st3 is None:
                    return
            m.st = st3
            if st3 is not None and st3.cached is not None and not any_stmt:
                local.batch_cached(s, batch, st3, sync)
                return
    if not any_stmt:
        # Parse/Describe/Close only: nothing executes, any node that knows the statement will do.
        read_only = all(m.t != codes.F_EXECUTE for m in batch)
        if (
            s.backend is None
            and not s.pending
            and rename
            and not partial
            and local.local_batch(s, batch, sync)
        ):
            return
    if ctx.cache is not None and resultcache.on_batch(s, batch, info, hints, sync):
        return  # answered from the result cache; a miss to be cached runs on the primary:
    if not sync:
        # The rest of this pipeline goes to the same server, and may write: the primary.
        read_only = False
    try:
        target = s._route(info, hints, qctx, read_only and s.cache_rec is None) if info is not None else None
    except HeliosError as exc:
        s._batch_error(batch, exc.sqlstate, exc.message, sync, len(batch))
        return
    if ctx.mirror is not None and info is not None:
        ctx.mirror.offer_batch(s, info, batch)
    s._dispatch(Plan(target, None, batch, info, qctx, sync, not read_only))


def judge(s: ClientSession, name: str, sql: str, tail: bytes, raw: bytes, readable: bool) -> Statement | HeliosError:
    """A client's Parse: classify it and run pre_query (block, rewrite, cached answer)."""
    ctx = s.ctx
    plugins = ctx.plugins
    sinfo = ctx.classifier.classify(sql) if readable else _UNREADABLE
    if sinfo.effects and sinfo.effects & _HELIOS:
        return HeliosError("SET/SHOW helios.* must be sent as a simple query", sqlstate="0A000")
    verdict: hooks.Cached | None = None
    text, data = sql, raw
    if plugins.has_pre_query:
        res = plugins.pre_query(s._query_ctx(sql, sinfo))
        if isinstance(res, hooks.Block):
            return HeliosError(res.reason, sqlstate="42000")
        if isinstance(res, hooks.Rewrite):
            text = res.query
            try:
                data = text.encode(s._codec)
            except UnicodeEncodeError:
                return HeliosError("the rewritten query cannot be sent in the client's encoding", sqlstate="22P05")
            sinfo = ctx.classifier.classify(text)
        elif isinstance(res, hooks.Cached):
            verdict = res
    return Statement(
        name,
        text,
        tail,
        sinfo,
        server_name(text, tail, ctx.schema_epoch) if name else "",  # only named ones are renamed
        parse_hints(text) if "helios:" in text else None,
        verdict,
        data,
        sql if text is not sql else "",
        plugins.generation,
        readable,
    )


def _judged_now(s: ClientSession, st: Statement, batch: list[Msg], sync: bool, at: int) -> Statement | None:
    """The plugin set changed since `st` was judged: judge it again. None: now refused (the batch was answered)."""
    again = rejudge(s, st)
    if isinstance(again, HeliosError):
        s._batch_error(batch, again.sqlstate, again.message, sync, at)
        return None
    return again


def rejudge(s: ClientSession, st: Statement) -> Statement | HeliosError:
    """Judge a prepared statement again for the current plugin set; keep the client's name."""
    original = st.original or st.sql
    raw = st.raw if not st.original else original.encode(s._codec, "replace")
    again = judge(s, st.name, original, st.tail, raw, st.readable)
    if isinstance(again, Statement):
        if st.name:
            s.statements[st.name] = again
        else:
            s.unnamed = again
    return again
