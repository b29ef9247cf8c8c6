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
