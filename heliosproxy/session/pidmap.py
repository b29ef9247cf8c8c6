"""pg_cancel_backend/pg_terminate_backend of a PID the proxy gave a client: act on that client's session.

Under transaction pooling a client's BackendKeyData carries a PID the proxy made up (bit 30 set,
the worker id in bits 24-29, see ProxyContext.new_key), so no server knows it. A statement that
is exactly `SELECT pg_cancel_backend(p)` or `SELECT pg_terminate_backend(p[, timeout])` (the
classifier's SignalCall; p a literal or a Bind parameter) with such a `p` is answered here:

- cancel: the statement that client is running (if any) is cancelled on its server; `t`.
- terminate: that client gets FATAL 57P01 "terminating connection due to administrator
  command" and is disconnected (a statement it was running is cancelled); `t`.
- the PID of no live session: WARNING "PID p is not a PostgreSQL backend process" and `f`
  (what the server itself answers; a PID of this worker is simply passed to the server).
- permissions as PostgreSQL's pg_signal_backend(): only a superuser may signal a superuser's
  session; otherwise the caller's role (its SET ROLE, else its login user) must have the
  privileges of the target's login user, or of pg_signal_backend: else 42501 with the server's
  message. Same role: allowed without asking; other roles: one catalog query on a connection
  of the caller's pool on the primary.
- the caller's own PID: cancel is ERROR 57014 "canceling statement due to user request",
  terminate ends the caller's own session with 57P01, as on a server.

A PID issued by another worker is looked up (and signalled) there over the worker link
(workers.WorkerLink.ask_pid). PIDs that are not ours (real server PIDs, e.g. of session-mode
clients) and statements of any other shape go to the server untouched. The call is answered here
only when the client has nothing else in flight (pending == 0): a call pipelined behind
unfinished statements goes to the server, which answers `f` for a proxy PID.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from heliosproxy.backends.connection import QueryError
from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import Msg
from heliosproxy.session.local import answer_locally
from heliosproxy.session.state import Plan
from heliosproxy.sql.classify import SignalCall

if TYPE_CHECKING:
    from heliosproxy.session.context import ProxyContext
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")

LOOKUP, CANCEL, TERMINATE = 0, 1, 2
_PROXY_BIT = 0x40000000
_BOOL_OID, _INT4_OID, _INT8_OID = 16, 23, 20
_H = struct.Struct("!H")
_i = struct.Struct("!i")
# PostgreSQL 15's messages (src/backend/storage/ipc/signalfuncs.c).
_NOT_SUPERUSER = {
    CANCEL: "must be a superuser to cancel superuser query",
    TERMINATE: "must be a superuser to terminate superuser process",
}
_NO_PERMISSION = {
    CANCEL: "must be a member of the role whose query is being canceled or member of pg_signal_backend",
    TERMINATE: "must be a member of the role whose process is being terminated or member of pg_signal_backend",
}
# (caller super, target super, caller has the privileges of the target or of pg_signal_backend)
_PERMISSION_SQL = (
    "SELECT c.rolsuper, coalesce(t.rolsuper, false), "
    "c.rolsuper OR coalesce(pg_catalog.pg_has_role(c.oid, t.oid, 'USAGE'), false) "
    "OR pg_catalog.pg_has_role(c.oid, 'pg_signal_backend', 'USAGE') "
    "FROM pg_catalog.pg_roles c LEFT JOIN pg_catalog.pg_roles t ON t.rolname = $2 WHERE c.rolname = $1"
)

# What to answer: a boolean (with an optional WARNING before it), an ERROR, or nothing (the
# caller's own session ended).
Outcome = tuple[str, Any, str | None]


def ours(pid: int) -> bool:
    """A PID the proxy made up (never a server's: those stay below 2^22 on Linux)."""
    return pid & 0xC0000000 == _PROXY_BIT


def _worker_of(pid: int) -> int:
    return (pid >> 24) & 0x3F


def _find(ctx: ProxyContext, pid: int) -> ClientSession | None:
    """The live client session given `pid` (admin console sessions are no server sessions)."""
    for (p, _key), session in ctx.cancel_keys.items():
        if p == pid:
            return None if session.admin else session
    return None


def serve(ctx: ProxyContext, pid: int, action: int) -> bytes:
    """A peer worker's request about a PID this worker issued: the session's login user (empty:
    no such session), after cancelling or terminating it when asked to."""
    session = _find(ctx, pid)
    if session is None:
        return b""
    user = session.user.encode()
    _act(session, action)
    return user


def _act(session: ClientSession, action: int) -> None:
    if action == CANCEL:
        session.cancel_running()
    elif action == TERMINATE:
        log.info("client %s user=%s: terminated by pg_terminate_backend(%d)", session.peer, session.user, session.pid)
        session.close()


def _role_of(session: ClientSession) -> str:
    role = session.settings.get("role")
    return role if role and role.lower() != "none" else session.user


async def _denied(session: ClientSession, target_user: str, action: int) -> tuple[str, str] | None:
    """PostgreSQL's permission rule for signalling a backend of `target_user`: None if allowed."""
    caller = _role_of(session)
    if caller == target_user:
        return None
    ctx = session.ctx
    t = ctx.router.primary()
    if t is None:
        return ("08006", "no primary is available to check the permission to signal a session")
    pool = ctx.pools.get(t.node, session.database, session.user)
    timeout = ctx.config.health.timeout + ctx.config.pool.connect_timeout
    conn = await pool.acquire(timeout)
    try:
        rows = await asyncio.wait_for(conn.query(_PERMISSION_SQL, (caller, target_user)), timeout)
    except BaseException:
        pool.release(conn, reusable=False)
        raise
    pool.release(conn)
    if not rows:
        return ("42501", _NO_PERMISSION[action])
    caller_super, target_super, privileged = (v == "t" for v in rows[0])
    if target_super and not caller_super:
        return ("42501", _NOT_SUPERUSER[action])
    if not privileged:
        return ("42501", _NO_PERMISSION[action])
    return None


def _sync_outcome(session: ClientSession, action: int, pid: int) -> Outcome | None:
    """The answer when it needs no waiting (a session of this worker with the caller's role)."""
    target = _find(session.ctx, pid)
    if target is None or _role_of(session) != target.user:
        return None
    return _signal(session, target, action)


def _signal(session: ClientSession, target: ClientSession, action: int) -> Outcome:
    if target is session:
        if action == CANCEL:
            return ("error", ("57014", "canceling statement due to user request"), None)
        _act(session, action)
        return ("closed", None, None)
    _act(target, action)
    return ("bool", True, None)


async def _outcome(session: ClientSession, action: int, pid: int) -> Outcome:
    ctx = session.ctx
    worker = _worker_of(pid)
    ask: Callable[[int, int, int], Awaitable[bytes | None]] | None = ctx.ask_pid
    if worker == ctx.worker_id or ask is None:
        target = _find(ctx, pid)
        if target is None:
            return _no_backend(pid)
        denied = await _denied(session, target.user, action)
        if denied is not None:
            return ("error", denied, None)
        # Still there after the wait (it may have gone meanwhile)?
        return _signal(session, target, action) if _find(ctx, pid) is target else _no_backend(pid)
    found = await ask(worker, pid, LOOKUP)
    if not found:
        return _no_backend(pid)
    denied = await _denied(session, found.decode(), action)
    if denied is not None:
        return ("error", denied, None)
    done = await ask(worker, pid, action)
    return ("bool", True, None) if done else _no_backend(pid)


def _no_backend(pid: int) -> Outcome:
    return ("bool", False, f"PID {pid} is not a PostgreSQL backend process")


def _arguments(call: SignalCall, params: list[int | None] | None) -> tuple[int, int] | None:
    """(pid, timeout) of the call when every argument is a known integer."""
    values: list[int] = []
    for kind, v in call.args:
        if kind == "const":
            values.append(v)
        elif params is None or not 1 <= v <= len(params):
            return None
        else:
            p = params[v - 1]
            if p is None:
                return None  # NULL: the function is strict, the server answers NULL
            values.append(p)
    return values[0], values[1] if len(values) > 1 else 0


def _wanted(session: ClientSession, call: SignalCall, params: list[int | None] | None) -> tuple[int, int] | None:
    args = _arguments(call, params)
    if args is None or not ours(args[0]) or not -(2**31) <= args[0] < 2**31:
        return None
    if session.pending or session.expect or session.tx_status == codes.TX_FAILED:
        return None  # in flight behind other statements, or 25P02 from the server
    ctx = session.ctx
    if _worker_of(args[0]) == ctx.worker_id and _find(ctx, args[0]) is None:
        return None  # no such session: the server answers exactly that (WARNING, f)
    return args


def _row_description(column: str, fmt: int) -> bytes:
    body = _H.pack(1) + messages.cstr(column) + struct.pack("!IhIhih", 0, 0, _BOOL_OID, 1, -1, fmt)
    return messages.msg(codes.B_ROW_DESCRIPTION, body)


def _result(value: bool, fmt: int, warning: str | None) -> bytes:
    out = b""
    if warning:
        out += messages.error_response("WARNING", "01000", warning, notice=True)
    data = (b"\x01" if value else b"\x00") if fmt == 1 else (b"t" if value else b"f")
    out += messages.msg(codes.B_DATA_ROW, _H.pack(1) + _i.pack(len(data)) + data)
    return out + messages.command_complete("SELECT 1")


def _action(call: SignalCall) -> int:
    return CANCEL if call.function == "pg_cancel_backend" else TERMINATE


# ------------------------------------------------------------------ simple query
def on_query(session: ClientSession, call: SignalCall) -> bool:
    """A simple Query that is a SignalCall: True if answered here (now or once decided)."""
    args = _wanted(session, call, None)
    if args is None:
        return False
    pid, timeout = args

    def answer(outcome: Outcome) -> None:
        kind, value, warning = outcome
        if kind == "error":
            session._answer_error(*value)
        elif kind == "bool":
            session._answer(_row_description(call.column, 0) + _result(value, 0, warning))

    if call.function == "pg_terminate_backend" and timeout < 0:
        session._answer_error("22023", '"timeout" must not be negative')
        return True
    _decide(session, _action(call), pid, answer)
    return True


def _decide(session: ClientSession, action: int, pid: int, answer: Callable[[Outcome], None]) -> None:
    outcome = _sync_outcome(session, action, pid)
    if outcome is not None:
        answer(outcome)
        return

    session.stalled = Plan.deferred(None)  # the client's next messages wait for this answer
    session._pause_reading()
    session._spawn(_decide_later(session, action, pid, answer))


async def _decide_later(
    session: ClientSession, action: int, pid: int, answer: Callable[[Outcome], None]
) -> None:
    try:
        outcome = await _outcome(session, action, pid)
    except Exception as exc:  # a lookup that failed is the client's error, never a traceback
        log.warning("client %s user=%s: cannot signal PID %d: %r", session.peer, session.user, pid, exc)
        sqlstate = exc.sqlstate if isinstance(exc, (HeliosError, QueryError)) and exc.sqlstate else "08006"
        outcome = ("error", (sqlstate, f"cannot check the permission to signal PID {pid}: {exc}"), None)
    session.stalled = None
    if session.io.closing():
        return
    answer(outcome)
    session._continue()


# ------------------------------------------------------------------ extended protocol
def _bind_params(msg: bytes, pos: int) -> tuple[list[int | None], list[int]] | None:
    """The integer values of a Bind's parameters (None: NULL or not an integer) and its result
    formats; `pos` is where the parameter format codes start."""
    start = pos
    try:
        (nf,) = _H.unpack_from(msg, pos)
        formats = list(struct.unpack_from(f"!{nf}H", msg, pos + 2))
        pos += 2 + 2 * nf
        (n,) = _H.unpack_from(msg, pos)
        pos += 2
        values: list[int | None] = []
        for k in range(n):
            (ln,) = _i.unpack_from(msg, pos)
            pos += 4
            if ln < 0:
                values.append(None)
                continue
            raw = msg[pos : pos + ln]
            pos += ln
            fmt = formats[k] if nf > 1 else (formats[0] if nf == 1 else 0)
            if fmt == 1:
                values.append(int.from_bytes(raw, "big", signed=True) if ln in (2, 4, 8) else None)
            else:
                try:
                    values.append(int(raw.decode("ascii").strip()))
                except (UnicodeDecodeError, ValueError):
                    values.append(None)
        return values, messages.bind_result_formats(msg, start)
    except (struct.error, IndexError, ValueError):
        return None


def on_batch(
    session: ClientSession,
    batch: list[Msg],
    call: SignalCall,
    bind: bytes,
    bind_pos: int,
    param_types: bytes,
    sync: bool,
    rename: bool,
) -> bool:
    """An extended-protocol batch (up to Sync/Flush) that binds a SignalCall: True if answered here.

    Only a batch about that one statement is answered (Parse, Bind, Describe, Execute, Close,
    Sync); in session mode (no renaming) a batch that prepares a named statement goes to the server."""
    binds = 0
    for m in batch:
        t = m.t
        if t == codes.F_BIND or t == codes.F_EXECUTE:
            binds += t == codes.F_BIND
        elif t == codes.F_PARSE:
            if m.name and not rename:
                return False
        elif t not in (codes.F_DESCRIBE, codes.F_CLOSE, codes.F_SYNC, codes.F_FLUSH):
            return False
    if binds != 1:
        return False
    decoded = _bind_params(bind, bind_pos)
    if decoded is None:
        return False
    params, result_formats = decoded
    args = _wanted(session, call, params)
    if args is None:
        return False
    pid, timeout = args
    fmt = result_formats[0] if result_formats else 0
    nparams = max([v for k, v in call.args if k == "param"] + [0])
    declared = list(struct.unpack_from(f"!{_H.unpack_from(param_types, 0)[0]}I", param_types, 2)) if param_types else []
    nparams = max(nparams, len(declared))
    oids = []
    for k in range(nparams):
        oid = declared[k] if k < len(declared) else 0
        if not oid:
            oid = next((_INT8_OID if i else _INT4_OID for i, (kind, v) in enumerate(call.args)
                        if kind == "param" and v == k + 1), _INT4_OID)
        oids.append(oid)

    def answer(outcome: Outcome) -> None:
        kind, value, warning = outcome
        if kind == "closed":
            return
        body = answer_locally(
            session, batch, oids, lambda k: _row_description(call.column, fmt if k == ord("P") else 0),
            None if kind == "error" else _result(value, fmt, warning),
        )
        session._write(body)
        if kind == "error":
            session._batch_error(batch, value[0], value[1], sync, 0)  # its Parse was answered: kept
        elif sync:
            session._answer(b"")

    if call.function == "pg_terminate_backend" and timeout < 0:
        answer(("error", ("22023", '"timeout" must not be negative'), None))
        return True
    _decide(session, _action(call), pid, answer)
    return True
