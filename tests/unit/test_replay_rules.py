"""failover.no_replay_functions matching (issue 16): which statement texts make a transaction non-replayable."""

from __future__ import annotations

import pytest

from heliosproxy.config.schema import DEFAULT_NO_REPLAY_FUNCTIONS
from heliosproxy.session.replay import _pattern


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT now()",
        "select NOW ()",
        "SELECT pg_catalog.now()",
        "INSERT INTO t VALUES (current_timestamp)",
        "SELECT localtimestamp",
        "SELECT nextval('s')",
        "SELECT gen_random_uuid()",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_try_advisory_lock(1)",
        "SELECT random() * 10",
        "SELECT txid_current()",
        "SELECT pg_backend_pid()",
    ],
)
def test_non_replayable_calls_are_found(sql: str) -> None:
    assert _pattern(DEFAULT_NO_REPLAY_FUNCTIONS).search(sql.encode()) is not None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM ledger WHERE worker = $1",
        "SELECT known, nowhere(1), my_random_thing FROM t",
        "UPDATE totals SET n = n + 1 WHERE id = 1",
        "SELECT nextvalue FROM t",
        "SELECT current_timestamps FROM t",
    ],
)
def test_replayable_statements_are_not_flagged(sql: str) -> None:
    assert _pattern(DEFAULT_NO_REPLAY_FUNCTIONS).search(sql.encode()) is None


def test_a_prefix_entry_and_an_empty_list() -> None:
    assert _pattern(("audit_*",)).search(b"SELECT audit_stamp(1)") is not None
    assert _pattern(("audit_*",)).search(b"SELECT stamp(1)") is None
    assert _pattern(()).search(b"SELECT now()") is None


def test_commit_verdict_trusts_a_committed_id_only_where_the_history_reaches_its_anchor() -> None:
    from heliosproxy.session.replay import verdict

    seg, blk = 16 << 20, 8192
    # A promoted standby whose history ends before the transaction's first record reuses its id: never COMMIT.
    assert verdict("committed", 1000, 2000, blk, seg, False, False) == "aborted"
    assert verdict("in progress", 1000, 2000, blk, seg, False, False) == "aborted"
    assert verdict("committed", 2000, 2000, blk, seg, False, False) == "committed"
    assert verdict("in progress", 3000, 2000, blk, seg, False, False) == "wait"
    # "aborted" or an id in the future is the truth wherever it is said.
    assert verdict("aborted", None, 2000, blk, seg, False, False) == "aborted"
    assert verdict("future", 5000, 2000, blk, seg, True, True) == "aborted"
    # The insert position just past a page header: the last record ended at the page boundary.
    assert verdict("committed", 3 * blk, 3 * blk + 24, blk, seg, False, False) == "committed"
    assert verdict("committed", seg, seg + 40, blk, seg, False, False) == "committed"
    assert verdict("committed", 3 * blk - 8, 3 * blk + 24, blk, seg, False, False) == "aborted"
    # The same server, never restarted: its own history is whole (an old crash recovery does not matter).
    assert verdict("committed", 10, 2000, blk, seg, True, True) == "committed"
    # The same server after a clean restart (no recovery), or another node that was never in recovery.
    assert verdict("committed", None, 2000, blk, seg, True, False) == "committed"
    assert verdict("committed", None, 2000, blk, seg, False, False) == "unknown"
    # The same server after a crash that lost the transaction's records.
    assert verdict("committed", 1500, 2000, blk, seg, True, False) == "aborted"


def test_a_flush_goes_right_after_the_last_execute_before_the_commit_and_flush_only_plans_are_skipped() -> None:
    from heliosproxy.protocol import codes
    from heliosproxy.protocol.frontend import Msg
    from heliosproxy.session.replay import _flush_before_commit, _partial_plan
    from heliosproxy.session.state import Plan

    def item(t: int, tag: str = "") -> Msg:
        return Msg(t, tag.encode())

    batch = [item(codes.F_PARSE), item(codes.F_BIND, "insert"), item(codes.F_EXECUTE), item(codes.F_PARSE),
             item(codes.F_BIND, "commit"), item(codes.F_EXECUTE), item(codes.F_SYNC)]
    _flush_before_commit(batch, lambda m: m.t == codes.F_BIND and m.data == b"commit")
    assert [m.t for m in batch] == [codes.F_PARSE, codes.F_BIND, codes.F_EXECUTE, codes.F_FLUSH,
                                    codes.F_PARSE, codes.F_BIND, codes.F_EXECUTE, codes.F_SYNC]
    flush = Plan(None, None, [item(codes.F_FLUSH)], None, None, False, False)
    work = Plan(None, None, list(batch), None, None, True, True)
    assert _partial_plan([flush, flush, work]) == 2
    assert _partial_plan([work, flush]) == 0
