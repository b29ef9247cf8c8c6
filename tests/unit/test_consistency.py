"""Pure parts of issue 11: the functions a statement calls, pg_proc argument matching, read decisions by LSN."""

from __future__ import annotations

import time

from heliosproxy.backends.registry import NodeState, Registry
from heliosproxy.config.schema import Config, Consistency, NodeConfig, Role, RoutingConfig
from heliosproxy.pool.manager import PoolManager
from heliosproxy.protocol import messages
from heliosproxy.routing.catalog import Catalog, _Functions
from heliosproxy.routing.consistency import POSITION_UNKNOWN, STANDBY_BEHIND, ReadPlanner, SessionReads, error_sqlstate
from heliosproxy.routing.router import Router
from heliosproxy.sql.classify import classify_uncached


def test_functions_called_and_ddl() -> None:
    info = classify_uncached("SELECT add_order(7), s.f(1, 2), pg_catalog.random(), nextval('q')")
    assert set(info.functions) == {(None, "add_order", 1), ("s", "f", 2)}
    assert not info.ddl
    assert classify_uncached("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'").ddl
    assert classify_uncached("DO $$BEGIN END$$").ddl
    assert not classify_uncached("INSERT INTO t VALUES (1)").ddl
    assert not classify_uncached("BEGIN").ddl


def test_function_argument_matching() -> None:
    rows: list[list[str | None]] = [
        ["public", "f", "2", "1", "f", "v"],  # f(a, b DEFAULT ..): 1 or 2 args
        ["public", "g", "2", "2", "t", "v"],  # g(a, VARIADIC b): 1 or more
        ["public", "h", "0", "0", "f", "s"],  # stable
    ]
    fns = _Functions(rows, time.monotonic() + 60)
    assert fns.volatile(None, "f", 1) and fns.volatile(None, "f", 2) and not fns.volatile(None, "f", 3)
    assert not fns.volatile(None, "f", 0)
    assert fns.volatile(None, "g", 1) and fns.volatile(None, "g", 9)
    assert not fns.volatile(None, "h", 0)
    assert fns.volatile("public", "f", 1) and not fns.volatile("other", "f", 1)


def test_error_sqlstate() -> None:
    data = messages.row_description(["a"]) + messages.error_response("ERROR", "25006", "read-only")
    assert error_sqlstate(data + messages.ready_for_query(73)) == "25006"
    assert error_sqlstate(messages.row_description(["a"])) is None


def _planner(mode: Consistency) -> tuple[ReadPlanner, Registry]:
    config = Config(
        nodes=(NodeConfig("p", "127.0.0.1", 1, Role.PRIMARY), NodeConfig("s", "127.0.0.1", 2, Role.STANDBY)),
        routing=RoutingConfig(consistency=mode),
    )
    reg = Registry(config)
    for n in reg.nodes.values():
        n.state = NodeState.UP
    router = Router(config, reg)
    return ReadPlanner(config, router, Catalog(config, reg, PoolManager(config))), reg


def test_session_reads_follow_the_write_position() -> None:
    planner, reg = _planner(Consistency.SESSION)
    s = SessionReads()
    info = classify_uncached("SELECT 1")
    assert planner.read_target(s, 0.0, info, "db", "u", None).node == "s"  # type: ignore[union-attr]
    planner.acknowledged(s, classify_uncached("INSERT INTO t VALUES (1)"), True, "db")
    # no primary sample sent after the write yet
    assert planner.read_target(s, 0.0, info, "db", "u", None).node == "p"  # type: ignore[union-attr]
    assert planner.moved == {POSITION_UNKNOWN: 1}
    p, st = reg.nodes["p"], reg.nodes["s"]
    p.wal_lsn, p.wal_lsn_sent = 1000, time.monotonic()
    st.wal_lsn, st.wal_lsn_sent = 999, time.monotonic()
    assert planner.read_target(s, 0.0, info, "db", "u", None).node == "p"  # type: ignore[union-attr]
    assert planner.moved[STANDBY_BEHIND] == 1
    st.wal_lsn = 1000
    t = planner.read_target(s, 0.0, info, "db", "u", None)
    assert t is not None and t.node == "s" and t.auto
    other = SessionReads()  # another client wrote nothing
    assert planner.read_target(other, 0.0, info, "db", "u", None).node == "s"  # type: ignore[union-attr]


def test_strong_and_eventual() -> None:
    strong, _ = _planner(Consistency.STRONG)
    info = classify_uncached("SELECT 1")
    strong.acknowledged(SessionReads(), None, True, "db")
    assert strong.read_target(SessionReads(), 0.0, info, "db", "u", None).node == "p"  # type: ignore[union-attr]
    eventual, _ = _planner(Consistency.EVENTUAL)
    s = SessionReads()
    eventual.acknowledged(s, None, True, "db")
    assert eventual.read_target(s, 0.0, info, "db", "u", None).node == "s"  # type: ignore[union-attr]
    # ROLLBACK and SET are no writes
    session, _ = _planner(Consistency.SESSION)
    s = SessionReads()
    session.acknowledged(s, classify_uncached("ROLLBACK"), True, "db")
    session.acknowledged(s, classify_uncached("SET search_path = x"), True, "db")
    assert s.ack_at == 0.0


def test_commit_of_a_read_only_transaction_is_no_write() -> None:
    planner, _ = _planner(Consistency.SESSION)
    s = SessionReads()
    begin = classify_uncached("BEGIN READ ONLY")
    assert planner.read_target(s, 0.0, begin, "db", "u", None).node == "s"  # type: ignore[union-attr]
    planner.acknowledged(s, classify_uncached("COMMIT"), True, "db")
    assert s.ack_at == 0.0
    planner.acknowledged(s, classify_uncached("COMMIT"), True, "db")  # a read-write transaction's COMMIT
    assert s.ack_at > 0.0
