"""sql/sessionstate.actions: the prepared statements and LISTEN channels a statement string makes or drops."""

from __future__ import annotations

from heliosproxy.sql.sessionstate import DEALLOCATE, DISCARD_ALL, LISTEN, PREPARE, UNLISTEN, actions


def test_each_statement_in_order_with_its_own_text() -> None:
    sql = ('SELECT 1; PREPARE "Größe"(int) AS SELECT $1 + 1 ;LISTEN "Ch x"; UNLISTEN *; unlisten abc; '
           "DEALLOCATE ALL; DEALLOCATE PREPARE foo; DISCARD ALL; DISCARD TEMP")
    assert actions(sql) == [
        (PREPARE, "Größe", 'PREPARE "Größe"(int) AS SELECT $1 + 1'),
        (LISTEN, "Ch x", ""),
        (UNLISTEN, None, ""),
        (UNLISTEN, "abc", ""),
        (DEALLOCATE, None, ""),
        (DEALLOCATE, "foo", ""),
        (DISCARD_ALL, None, ""),
    ]


def test_a_lone_prepare_and_text_that_does_not_parse() -> None:
    assert actions("prepare q as select 'a;b'") == [(PREPARE, "q", "prepare q as select 'a;b'")]
    assert actions("PREPARE q AS SELEC") == []
