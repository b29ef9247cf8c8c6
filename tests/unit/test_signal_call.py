"""The classifier's SignalCall: whole-statement pg_cancel_backend/pg_terminate_backend calls (issue 10)."""

from __future__ import annotations

import pytest

from heliosproxy.sql import Classifier, SignalCall, classify_uncached


@pytest.mark.parametrize(
    ("sql", "want"),
    [
        ("SELECT pg_cancel_backend(1073741825)", SignalCall("pg_cancel_backend", "pg_cancel_backend",
                                                            (("const", 1073741825),))),
        ("select pg_catalog.pg_terminate_backend($1::int, 5) as gone",
         SignalCall("pg_terminate_backend", "gone", (("param", 1), ("const", 5)))),
        ("SELECT pg_terminate_backend($1);", SignalCall("pg_terminate_backend", "pg_terminate_backend",
                                                        (("param", 1),))),
    ],
)
def test_whole_statement_calls_are_recognised(sql: str, want: SignalCall) -> None:
    assert classify_uncached(sql).signal == want


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
        "SELECT pg_cancel_backend(12), 1",
        "SELECT pg_cancel_backend(12); SELECT 1",
        "SELECT pg_cancel_backend(12, 3)",  # no such function: the server says so
        "SELECT pg_terminate_backend('12')",
        "SELECT myschema.pg_cancel_backend(12)",
        "SELECT pg_cancel_backend(12) WHERE false",
        "SELECT pg_backend_pid()",
    ],
)
def test_other_shapes_are_not(sql: str) -> None:
    assert classify_uncached(sql).signal is None


def test_the_literal_pid_is_never_taken_from_a_cached_record() -> None:
    c = Classifier()
    for pid in (1073741825, 1073741826, 1073741825, 1073741999):
        info = c.classify(f"SELECT pg_cancel_backend({pid})")
        assert info.signal is not None and info.signal.args == (("const", pid),)
