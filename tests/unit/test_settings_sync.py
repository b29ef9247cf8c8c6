"""Session settings without sockets: recording SET/RESET/DISCARD and the hidden statement that syncs a server."""

from __future__ import annotations

import pytest

from heliosproxy.session.settings import RESET, apply, discard_all, sync_sql

Q = "pg_catalog.set_config"


@pytest.mark.parametrize(
    ("applied", "want", "sql"),
    [
        ({}, {}, ""),
        ({"work_mem": "64kB"}, {"work_mem": "64kB"}, ""),
        ({}, {"work_mem": "64kB"}, f"SELECT {Q}('work_mem', '64kB', false)"),
        ({"work_mem": "64kB"}, {}, f"SELECT {Q}('work_mem', NULL, false)"),
        ({"work_mem": RESET}, {}, ""),  # the server already has its default
        ({}, {"search_path": "a's"}, f"SELECT {Q}('search_path', 'a''s', false)"),  # a literal, quoted
        (
            {"role": "r1"},
            {"session_authorization": "u2"},
            f"SELECT {Q}('role', NULL, false), {Q}('session_authorization', 'u2', false)",
        ),
        (
            # session_authorization resets the role: it goes first, the role is set again after it
            {"role": "r1", "session_authorization": "u1"},
            {"role": "r1", "session_authorization": "u2", "work_mem": "1MB"},
            f"SELECT {Q}('session_authorization', 'u2', false), {Q}('role', 'r1', false),"
            f" {Q}('work_mem', '1MB', false)",
        ),
        (
            {"session_authorization": "u1", "role": "r1"},
            {"role": "r1"},
            f"SELECT {Q}('session_authorization', NULL, false), {Q}('role', 'r1', false)",
        ),
    ],
)
def test_sync_sql(applied: dict[str, str], want: dict[str, str], sql: str) -> None:
    assert sync_sql(applied, want) == sql


def test_set_and_reset_go_back_to_the_startup_value() -> None:
    settings = {"application_name": "app"}
    applied: dict[str, str] = {}
    startup = {"application_name": "app"}
    apply(settings, applied, startup, [("application_name", "other", False), ("work_mem", "1MB", False)])
    assert settings == {"application_name": "other", "work_mem": "1MB"}
    assert applied == {"application_name": "other", "work_mem": "1MB"}
    apply(settings, applied, startup, [("application_name", None, False), ("work_mem", None, False)])
    assert settings == {"application_name": "app"}
    assert applied == {"application_name": RESET, "work_mem": RESET}


def test_set_local_and_helios_attributes_are_not_session_settings() -> None:
    settings: dict[str, str] = {}
    applied: dict[str, str] = {}
    apply(settings, applied, {}, [("work_mem", "1MB", True), ("helios.tenant", "t1", False)])
    assert settings == {} and applied == {}


def test_reset_all_keeps_role_and_session_authorization() -> None:
    settings = {"role": "r1", "work_mem": "1MB", "application_name": "x"}
    applied = {"role": "r1", "work_mem": "1MB", "application_name": "x"}
    apply(settings, applied, {"application_name": "app"}, [("all", None, False)])
    assert settings == {"role": "r1", "application_name": "app"}
    assert applied == {"role": "r1", "work_mem": RESET, "application_name": RESET}


def test_session_authorization_resets_the_role() -> None:
    settings = {"role": "r1"}
    applied = {"role": "r1"}
    apply(settings, applied, {}, [("session_authorization", "u2", False)])
    assert settings == {"session_authorization": "u2"}
    assert applied == {"session_authorization": "u2", "role": RESET}


def test_discard_all() -> None:
    settings = {"work_mem": "1MB", "application_name": "x"}
    applied = {"work_mem": "1MB"}
    discard_all(settings, applied, {"application_name": "app"})
    assert settings == {"application_name": "app"} and applied == {}
    assert sync_sql(applied, settings) == f"SELECT {Q}('application_name', 'app', false)"


def test_readback_sql() -> None:
    from heliosproxy.session.settings import readback_sql

    assert readback_sql(("work_mem", "x'y")) == (
        "SELECT pg_catalog.current_setting('work_mem', true), pg_catalog.current_setting('x''y', true)"
    )
