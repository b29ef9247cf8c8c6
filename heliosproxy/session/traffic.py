"""The session's gate before a statement leaves for a server: rate limits and quotas, circuit breakers.

Called at the top of ClientSession._dispatch when `ctx.gates` is set (limits or breakers configured);
nothing runs otherwise. A statement is let through, refused (ERROR 53400 naming the limit, or 08006
for a node whose breaker is open; the session goes on), or held: the session's `stalled` keeps the
client's next messages in order while a task waits for a token or a concurrency slot (queue) or for
its borrowed token to come due (delay). Concurrency is counted per session with a statement in flight:
the unit is taken by its first statement and given back when nothing is in flight (`settle`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from heliosproxy.config.schema import LimitKey, PoolMode
from heliosproxy.protocol import codes
from heliosproxy.session.state import Plan
from heliosproxy.sql.classify import TxControl
from heliosproxy.traffic.limits import GO, REJECT, Limiter, Rule, label_of

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

# Statements that end a transaction are never limited: a client must always be able to roll back.
_ENDS = frozenset((TxControl.COMMIT, TxControl.ROLLBACK, TxControl.ROLLBACK_TO, TxControl.PREPARE_TRANSACTION))
_TASKS: set[asyncio.Task[Any]] = set()
_READY = 3  # session/state.py's READY phase


class TrafficState:
    """One session's gate state."""

    __slots__ = ("admitted", "held", "limiter", "waiting", "wants", "wants_for")

    def __init__(self) -> None:
        self.admitted: Plan | None = None  # the last statement let through (a resend or rerun of it passes)
        self.waiting: Plan | None = None  # the statement a task is holding back
        self.held: tuple[int, ...] = ()  # limit slots whose concurrency unit this session holds
        self.limiter: Limiter | None = None  # the one `held` was taken from
        self.wants: list[tuple[Rule, bytes]] = []  # the session's own (rule, label) pairs, for wants_for
        self.wants_for: tuple[int, str | None] | None = None  # (limits generation, tenant)


def _addr(peer: str) -> str:
    host, sep, _port = peer.rpartition(":")
    return host.strip("[]") if sep else peer


def _value(session: ClientSession, key: LimitKey, plan: Plan) -> str | None:
    if key is LimitKey.USER:
        return session.user
    if key is LimitKey.DATABASE:
        return session.database
    if key is LimitKey.CLIENT_ADDR:
        return _addr(session.peer)
    if key is LimitKey.TENANT:
        return session.attrs.get("tenant")  # SET helios.tenant, or set by a plugin
    info = plan.info
    return info.fingerprint or None if info is not None else None


def _wants(session: ClientSession, st: TrafficState, limiter: Limiter, plan: Plan) -> list[tuple[Rule, bytes]]:
    """(rule, label) of every limit the statement counts against. The session's own keys (user, database,
    client address, tenant) are built once per session, limits generation and tenant."""
    tenant = session.attrs.get("tenant") if limiter.has_tenant else None
    if st.wants_for != (limiter.generation, tenant):
        out: list[tuple[Rule, bytes]] = []
        for key, rules in limiter.by_key.items():
            value = None if key is LimitKey.FINGERPRINT else _value(session, key, plan)
            if value is None:
                continue  # e.g. no tenant set: tenant limits do not apply
            for rule in rules:
                out.append((rule, label_of(rule, value)))
        st.wants, st.wants_for = out, (limiter.generation, tenant)
    by_fp = limiter.by_fingerprint
    info = plan.info
    if not by_fp or info is None or not info.fingerprint:
        return st.wants
    return st.wants + [(rule, label_of(rule, info.fingerprint)) for rule in by_fp]


def _message(rule: Rule, wants: list[tuple[Rule, bytes]]) -> str:
    value = next((lb.partition(b"\x00")[2].decode("utf-8", "replace") for r, lb in wants if r is rule), "")
    what = []
    if rule.rate is not None:
        what.append(f"rate {rule.rate:g}/s, burst {rule.burst:g}")
    if rule.concurrency is not None:
        what.append(f"concurrency {rule.concurrency}")
    return f'limit "{rule.name}" exceeded for {rule.key.value} "{value}" ({", ".join(what)})'


def _refuse(session: ClientSession, plan: Plan, sqlstate: str, message: str) -> None:
    if plan.batch is not None:
        session._batch_error(plan.batch, sqlstate, message, plan.sync, len(plan.batch))
    else:
        session._answer_error(sqlstate, message)


def _node_of(session: ClientSession, plan: Plan) -> str | None:
    conn = session.backend
    if conn is not None and (session.pinned or session.mode is PoolMode.SESSION):
        return conn.node
    if plan.target is not None:
        return plan.target.node
    return session.ctx.registry.primary


def gate(session: ClientSession, plan: Plan) -> bool:
    """True when the statement does not go now (it was answered, or a task holds it back)."""
    info = plan.info
    if info is None:
        return False  # the proxy's own statements (and FunctionCall)
    st: TrafficState | None = session.traffic
    if st is None:
        st = session.traffic = TrafficState()
    if plan is st.admitted:
        return False
    if plan is st.waiting:
        session.stalled = plan  # resumed early by the session: the task still holds it
        return True
    ctx = session.ctx
    breakers = ctx.breakers
    if breakers is not None and breakers.blocked and session.tx_status == codes.TX_IDLE:
        node = _node_of(session, plan)
        if node is not None and node in breakers.blocked:
            breakers.refused(node)
            _refuse(session, plan, "08006", f'circuit breaker for node "{node}" is {breakers.state(node)}:'
                                            " the node failed repeatedly; not waiting for it")
            return True
    limiter: Limiter | None = ctx.limits
    if limiter is None or info.tx in _ENDS:
        st.admitted = plan
        return False
    wants = _wants(session, st, limiter, plan)
    if not wants:
        st.admitted = plan
        return False
    st.limiter = limiter
    v = limiter.decide(wants, st.held, True)
    if v.outcome == GO:
        if v.held:
            st.held += v.held
        if v.delay <= 0:
            st.admitted = plan
            return False
        _hold(session, st, plan, _delay(session, st, plan, v.delay))
        return True
    assert v.rule is not None
    if v.outcome == REJECT:
        if not session.pending:
            settle(session)
        _refuse(session, plan, "53400", _message(v.rule, wants))
        return True
    _hold(session, st, plan, _queue(session, st, plan, limiter, wants, v.rule, v.retry_in))
    return True


def _hold(session: ClientSession, st: TrafficState, plan: Plan, coro: Any) -> None:
    st.waiting = plan
    session.stalled = plan
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(lambda t: _done(session, t))


def _done(session: ClientSession, task: asyncio.Task[Any]) -> None:
    _TASKS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        session._internal_error(task.exception() or RuntimeError("traffic gate"))


async def _delay(session: ClientSession, st: TrafficState, plan: Plan, seconds: float) -> None:
    await asyncio.sleep(seconds)
    _release_plan(session, st, plan, None)


async def _queue(session: ClientSession, st: TrafficState, plan: Plan, limiter: Limiter,
                 wants: list[tuple[Rule, bytes]], rule: Rule, retry_in: float) -> None:
    start = time.monotonic()
    deadline = start + rule.max_wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            limiter.give_up(rule, next(lb for r, lb in wants if r is rule))
            _release_plan(session, st, plan, _message(rule, wants))
            return
        await limiter.pause(min(retry_in, left))
        if session.phase != _READY or st.waiting is not plan:  # the session went away
            return
        v = limiter.decide(wants, st.held, False)
        if v.outcome == GO:
            st.held += v.held
            if v.delay > 0:
                await asyncio.sleep(v.delay)
            _release_plan(session, st, plan, None)
            return
        assert v.rule is not None
        rule = v.rule
        if v.outcome == REJECT:
            _release_plan(session, st, plan, _message(rule, wants))
            return
        deadline = min(deadline, start + rule.max_wait)
        retry_in = v.retry_in


def _release_plan(session: ClientSession, st: TrafficState, plan: Plan, refusal: str | None) -> None:
    """The wait is over: send the statement, or answer it with 53400."""
    if st.waiting is not plan or session.phase != _READY:
        if session.phase != _READY:
            settle(session)  # units taken after the session closed
        return
    st.waiting = None
    if session.stalled is plan:
        session.stalled = None
    if refusal is None:
        st.admitted = plan
        session._dispatch(plan)
    else:
        if not session.pending:
            settle(session)
        _refuse(session, plan, "53400", refusal)
    if session.stalled is None:
        session._continue()


def settle(session: ClientSession) -> None:
    """Nothing in flight any more (or the session is gone): give back its concurrency units."""
    st: TrafficState | None = session.traffic
    if st is None or not st.held or st.waiting is not None:
        return  # (a held-back statement keeps the session's units: it runs next)
    held, st.held = st.held, ()
    if st.limiter is not None:
        st.limiter.release(held)


def closed(session: ClientSession) -> None:
    """The client is gone: stop any wait, give back its units."""
    st: TrafficState | None = session.traffic
    if st is not None:
        st.waiting = None
        settle(session)
