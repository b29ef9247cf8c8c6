"""Statements the proxy answers for a session itself, without a server: SET/SHOW helios.*, DISCARD ALL and
DEALLOCATE of the client's own names under transaction pooling, Parse/Close of statements every server knows,
and a plugin's cached answer (as a server would answer each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import STATEMENT, Msg
from heliosproxy.session.prepared import Statement
from heliosproxy.sql.classify import Effect, StatementInfo

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession


def helios_statement(s: ClientSession, info: StatementInfo, sql: str) -> None:
    """SET / RESET / SHOW helios.route, .node, .branch and attributes (helios.tenant, ...): the proxy's own."""
    name, value, _ = info.settings[0] if info.settings else ("helios.route", None, False)
    key = name[len("helios.") :]
    if info.effects & Effect.HELIOS_SHOW:
        cur = {"route": s.route_pref or "auto", "node": s.node_pref or "", "branch": s.branch_pref or ""}
        cur.update(s.attrs)
        if key not in cur:
            s._answer_error("42704", f'unrecognized configuration parameter "{name}"')
            return
        rows = messages.row_description([name]) + messages.data_row([cur[key]])
        s._answer(rows + messages.command_complete("SHOW"))
        return
    v = (value or "").strip().strip("'\"") or None
    try:
        if key == "route":
            if v not in (None, "primary", "standby", "auto"):
                s._answer_error(
                    "22023",
                    f'invalid value for parameter "helios.route": "{v}"',
                )
                return
            s.route_pref = None if v in (None, "auto") else v
        elif key == "node":
            if v is not None:
                s.ctx.router.node(v)
            s.node_pref = v
        elif key == "branch":
            if v is not None:
                s.ctx.router.branch(v)
            s.branch_pref = v
        elif v is None:
            s.attrs.pop(key, None)
        else:
            s.attrs[key] = v
    except HeliosError as exc:
        s._answer_error(exc.sqlstate, exc.message)
        return
    hc = s.hook_ctx
    if hc is not None:  # the session's plugin context changed: its cached JSON too
        hc.branch = s.branch_pref
        hc.invalidate()
    tag = "RESET" if sql.lstrip().upper().startswith("RESET") else "SET"
    s._answer(messages.command_complete(tag))


def own_session_statement(s: ClientSession, info: StatementInfo) -> bool:
    """DISCARD ALL / DEALLOCATE of this client's names: act on its own session only.

    Under transaction pooling the server connection is shared: its statements are the ones
    other clients' names point to, so these never reach it. True when answered here."""
    if not s.txn:
        return False
    for target in info.deallocate:
        if target is not None and target.startswith("hp_") and target not in s.statements:
            # A name the proxy gives shared statements: never the client's, never to deallocate.
            s._answer_error("26000", f'prepared statement "{target}" does not exist')
            return True
    if info.statements != 1 or s.pending or s.expect:
        return False
    if (
        info.deallocate
        and info.deallocate[0] is not None
        and info.deallocate[0] in s.statements
        and s.tx_status != codes.TX_FAILED
    ):
        # A protocol-level statement of this client: servers only know it by its shared name.
        del s.statements[info.deallocate[0]]
        s._answer(messages.command_complete("DEALLOCATE"))
        return True
    if s.pinned or s.tx_status != codes.TX_IDLE:
        return False  # pinned: the server holds this client's state alone and is told
    if info.effects & Effect.DISCARD:
        # As a server would: report the parameters that go back to their login values.
        reports = reset_reports(s)
        s.settings = dict(s.startup_settings)
        s.statements.clear()
        s.unnamed = None
        s._set_codec()
        s._answer(reports + messages.command_complete("DISCARD ALL"))
        return True
    target = info.deallocate[0] if info.deallocate else ""
    if target is None:
        s.statements.clear()
        s._answer(messages.command_complete("DEALLOCATE ALL"))
        return True
    if target in s.statements:
        del s.statements[target]
        s._answer(messages.command_complete("DEALLOCATE"))
        return True
    return False  # not ours: the server answers (26000, or a SQL-level statement of a pinned client)


def reset_reports(s: ClientSession) -> bytes:
    """ParameterStatus messages a server sends when DISCARD ALL resets this session's settings:
    each reported parameter the client changed, back to its value at login."""
    login = {k.lower(): (k, v) for k, v in s.login_params.items()}
    out: list[bytes] = []
    startup = s.startup_settings
    for name, value in s.settings.items():
        key = name.lower()
        if key in login and startup.get(name) != value:
            out.append(messages.parameter_status(*login[key]))
            if key == "session_authorization" and "is_superuser" in login:
                out.append(messages.parameter_status(*login["is_superuser"]))
    return b"".join(out)


def local_batch(s: ClientSession, batch: list[Msg], sync: bool) -> bool:
    """Answer Parse/Close of named statements without a backend when the server side is known.

    A Parse whose text every backend already accepted once (same text and types) needs no
    server round trip: the statement is prepared lazily where the client's Bind lands. This
    also keeps clients that prepare synchronously (pgbench -M prepared) from waiting for a
    backend while holding none."""
    known = s.ctx.known_statements
    out: list[bytes] = []
    for m in batch:
        t = m.t
        if t == codes.F_PARSE and m.name:
            st = m.st
            if st is None or st.server not in known:
                return False
            out.append(messages.PARSE_COMPLETE)
        elif t == codes.F_CLOSE and m.sub == STATEMENT and m.name:
            s.statements.pop(m.name, None)
            out.append(messages.CLOSE_COMPLETE)
        elif t != codes.F_SYNC and t != codes.F_FLUSH:
            return False
    if sync:
        out.append(messages.ready_for_query(s.tx_status))
    s._write(b"".join(out))
    return True


def batch_cached(s: ClientSession, batch: list[Msg], st: Statement, sync: bool) -> None:
    """Answer a batch about a statement a plugin answered from cache, as a server would."""
    res = st.cached
    assert res is not None
    rowdesc = messages.row_description(res.columns)
    rows = messages.result_set(res.columns, res.rows)[len(rowdesc) :]
    body = answer_locally(s, batch, [25] * st.param_count(), lambda _kind: rowdesc, rows)
    if sync:
        s._answer(body)
    else:
        s._write(body)


def answer_locally(s: ClientSession, batch: list[Msg],
    param_oids: list[int],
    rowdesc: Callable[[int], bytes],
    result: bytes | None,
) -> bytes:
    """What a server answers to a batch about one statement the proxy answers itself (a plugin's cached
    answer, a translated pg_cancel_backend): Parse/Bind/Describe/Execute/Close, up to an Execute whose
    `result` is None (an error follows). `rowdesc(kind)` is the RowDescription for Describe 'S' or 'P'."""
    out: list[bytes] = []
    for m in batch:
        t = m.t
        if t == codes.F_PARSE:
            out.append(messages.PARSE_COMPLETE)
        elif t == codes.F_BIND:
            out.append(messages.BIND_COMPLETE)
        elif t == codes.F_DESCRIBE:
            if m.sub == STATEMENT:
                out.append(messages.parameter_description(param_oids))
            out.append(rowdesc(m.sub))
        elif t == codes.F_EXECUTE:
            if result is None:
                break
            out.append(result)
        elif t == codes.F_CLOSE:
            if m.sub == STATEMENT and m.name:
                s.statements.pop(m.name, None)
            out.append(messages.CLOSE_COMPLETE)
    return b"".join(out)
