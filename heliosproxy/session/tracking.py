"""What a session records of its state and its server's at each step: the effects that pin it, the settings a
statement changed (kept at commit, undone at rollback, read back when only the server knows them), the prepared
statements DEALLOCATE / DISCARD ALL dropped, and the hidden statement that syncs a server's settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.protocol import codes
from heliosproxy.session import settings as settings_mod
from heliosproxy.session.state import Inflight
from heliosproxy.sql.classify import Effect, Setting, StatementInfo, TxControl

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")

_TEMP_SCHEMA: Final = Effect.TEMP_TABLE | Effect.DIRTY


def track_effects(s: ClientSession, info: StatementInfo) -> None:
    if info.ddl:
        s.ctx.schema_epoch += 1  # plans made before it may be stale: prepare afresh
    if info.calls_unknown and s.ctx.config.pool.strict_isolation:
        pin_for(s, "a function with unknown effects (pool.strict_isolation)")
    effects = info.effects
    if not effects:
        return
    if effects & Effect.LISTEN:
        s._listen_pid = True
    if effects & _TEMP_SCHEMA:
        s._temp_schema = True
    if info.pins and not s.pinned and s.txn:
        s.pinned = True
        log.debug("client %s pinned to its server connection (%s)", s.peer, ",".join(info.kinds))
    if effects & Effect.PREPARE and s.txn and not s.pinned:
        # SQL-level PREPARE lives on one backend: keep it for the session.
        s.pinned = True
        log.debug("client %s pinned to its server connection (SQL PREPARE)", s.peer)


def pin_for(s: ClientSession, reason: str) -> None:
    if not s.pinned and s.txn:
        s.pinned = True
        log.debug("client %s pinned to its server connection (%s)", s.peer, reason)


def forget(s: ClientSession, info: StatementInfo, conn: BackendConnection) -> None:
    """DEALLOCATE / DISCARD ALL ran on the server (a failed one changed nothing): forget what it dropped.
    A query string of several statements that failed may have run it before its error: assumed so."""
    if info.effects & Effect.DISCARD or None in info.deallocate:
        conn.prepared.clear()  # shared statements too: the server no longer has them
        s.statements.clear()
        s.unnamed = None
        if info.effects & Effect.DISCARD:
            conn.applied = {}
        return
    for target in info.deallocate:
        if target is not None:
            s.statements.pop(target, None)


def settle(s: ClientSession, info: StatementInfo, conn: BackendConnection) -> None:
    settle_settings(s, info.effects, info.settings, conn)


def settle_settings(s: ClientSession, effects: int, changes: tuple[Setting, ...], conn: BackendConnection) -> None:
    """The server accepted a statement that changes session settings: record what it did.

    Both the session's view and the server connection's are updated; inside a transaction
    the state before it is kept so that a rollback can restore both."""
    if s._committed is None:
        s._committed = dict(s.settings)
        s._applied_base = dict(conn.applied)
    if effects & Effect.DISCARD:
        settings_mod.discard_all(s.settings, conn.applied, s.startup_settings)
        s.statements.clear()
        s.unnamed = None
        if s.pinned and not s._temp_schema:
            # Nothing is left on the server that the client must keep (its temp schema, if
            # it made one, outlives DISCARD ALL: then it keeps that server, as direct).
            s.pinned = False
            log.debug("client %s unpinned (DISCARD ALL)", s.peer)
    settings_mod.apply(s.settings, conn.applied, s.startup_settings, changes)
    s._set_codec()


def adopt(
    s: ClientSession, names: tuple[str, ...], rows: list[list[str | None]] | None, conn: BackendConnection
) -> None:
    """Values of settings read back after a statement that may have changed them (READBACK)."""
    if not rows or conn is not s.backend:
        return  # the readback failed (an aborted transaction: it will roll back anyway)
    changes: list[Setting] = []
    for name, value in zip(names, rows[0], strict=False):
        if value is None:
            if name in s.settings:
                changes.append((name, None, False))
        elif s.settings.get(name) != value:
            changes.append((name, value, False))
    if not changes:
        return
    in_tx = conn.tx_status != codes.TX_IDLE
    settle_settings(s, Effect.SET, tuple(changes), conn)
    if not in_tx:
        s._committed = None  # autocommit: it is already committed
        s._applied_base = None


def end_transaction(s: ClientSession, fl: Inflight | None, conn: BackendConnection, prev: int) -> None:
    """A transaction (explicit or implicit) with setting changes ended: keep them or undo them."""
    info = fl.info if fl is not None else None
    if fl is not None and fl.error is not None:
        committed = False
    elif prev == codes.TX_FAILED:
        committed = False  # COMMIT of a failed transaction is a ROLLBACK
    elif prev == codes.TX_IN_BLOCK:
        committed = info is None or info.tx is not TxControl.ROLLBACK
    else:
        committed = True
    if not committed:
        assert s._applied_base is not None and s._committed is not None
        s.settings = s._committed
        conn.applied = s._applied_base
        s._set_codec()
    s._committed = None
    s._applied_base = None


def sync_settings_sql(s: ClientSession, conn: BackendConnection) -> str:
    """One hidden statement that brings the server connection's settings to this session's."""
    sql = settings_mod.sync_sql(conn.applied, s.settings)
    conn.applied = dict(s.settings)
    return sql


def forget_failed(s: ClientSession, conn: BackendConnection, server: str, client: str | None) -> None:
    """A Parse failed on the server: this server does not have it, and the client's Parse that
    failed (`client`, its name) made no statement. Other names for the same text stay: they
    were prepared before, as on a direct connection."""
    conn.prepared.pop(server, None)
    if client:
        st = s.statements.get(client)
        if st is not None and st.server == server:
            del s.statements[client]
