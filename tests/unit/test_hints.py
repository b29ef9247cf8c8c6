"""Tests of `/*helios:...*/` routing hints and `SET helios.*` validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosproxy.errors import HeliosError, UndefinedObject
from heliosproxy.sql import Classifier, Hints, parse_helios_set, parse_hints
from heliosproxy.sql.hints import parse_duration_ms

HINTS = [
    ("/*helios:route=primary*/ SELECT 1", Hints(route="primary")),
    ("/*helios:route=standby*/SELECT 1", Hints(route="standby")),
    ("/*helios:route=auto*/ SELECT 1", Hints(route="auto")),
    ("/* helios: route = STANDBY */ SELECT 1", Hints(route="standby")),
    ("/*helios:route=standby,lag=500*/ SELECT 1", Hints(route="standby", lag_ms=500.0)),
    ("/*helios:lag=2s*/ SELECT 1", Hints(lag_ms=2000.0)),
    ("/*helios:lag=250ms*/ SELECT 1", Hints(lag_ms=250.0)),
    ("/*helios:lag=1.5*/ SELECT 1", Hints(lag_ms=1.5)),
    ("/*helios:node=pg-2*/ SELECT 1", Hints(node="pg-2")),
    ("/*helios:branch=Feature_X*/ SELECT 1", Hints(branch="Feature_X")),
    ("SELECT 1 /*helios:route=primary*/", Hints(route="primary")),
    ("SELECT 1 /*helios:route=primary*/ ;\n", Hints(route="primary")),
    ("-- helios:route=standby\nSELECT 1", Hints(route="standby")),
    ("/* app=x */ /*helios:node=n1*/ SELECT 1", Hints(node="n1")),
    (
        "/*helios:route=standby*/ SELECT 1 /*helios:route=primary,node=n3*/",
        Hints(route="primary", node="n3"),
    ),
    ("/*helios:route=replica*/ SELECT 1", Hints()),  # invalid route value: key ignored
    ("/*helios:lag=soon*/ SELECT 1", Hints()),  # invalid lag: key ignored
    ("/*helios:lag=-5*/ SELECT 1", Hints()),
    ("/*helios:route=,node*/ SELECT 1", Hints()),
    ("/*helios:*/ SELECT 1", Hints()),
    (
        "/*helios:timeout=5s,Priority=high*/ SELECT 1",
        Hints(extra={"timeout": "5s", "priority": "high"}),
    ),
]


@pytest.mark.parametrize(("sql", "expected"), HINTS)
def test_hints(sql: str, expected: Hints) -> None:
    got = parse_hints(sql)
    assert got is not None
    assert got == expected


NO_HINTS = [
    "SELECT 1",
    "SELECT 'helios:route=standby'",
    "SELECT '/*helios:route=standby*/'",
    "SELECT 1 /*helios:route=standby*/ + 1",  # a comment in the middle is not a hint
    "/* helios  route=standby */ SELECT 1",
    "/*helios:route=standby SELECT 1",  # unterminated comment
    "",
]


@pytest.mark.parametrize("sql", NO_HINTS)
def test_no_hints(sql: str) -> None:
    assert parse_hints(sql) is None


def test_hints_do_not_change_classification_cache_key() -> None:
    c = Classifier()
    plain = c.classify("SELECT * FROM t WHERE a = 1")
    hinted = c.classify("/*helios:route=primary*/ SELECT * FROM t WHERE a = 1")
    assert hinted.read_only is plain.read_only is True
    assert hinted.tables == ("t",)
    assert parse_hints("/*helios:route=primary*/ SELECT * FROM t WHERE a = 1") == Hints(route="primary")


def test_hints_are_hashable_and_immutable() -> None:
    h = parse_hints("/*helios:route=standby,x=1*/ SELECT 1")
    assert h is not None
    assert hash(h) == hash(Hints(route="standby"))
    with pytest.raises(TypeError):
        h.extra["x"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500", 500.0),
        ("500ms", 500.0),
        ("2s", 2000.0),
        ("1m", 60000.0),
        ("1min", 60000.0),
        ("1h", 3600000.0),
        ("0", 0.0),
        (" 3 s ", 3000.0),
        ("x", None),
        ("ms", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("", None),
    ],
)
def test_durations(text: str, ms: float | None) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("helios.route", "primary", ("route", "primary")),
        ("helios.route", "STANDBY", ("route", "standby")),
        ("helios.route", "auto", ("route", "auto")),
        ("helios.route", None, ("route", None)),
        ("HELIOS.NODE", "pg-2", ("node", "pg-2")),
        ("helios.branch", "Dev", ("branch", "Dev")),
    ],
)
def test_parse_helios_set(name: str, value: str | None, expected: tuple[str, str | None]) -> None:
    assert parse_helios_set(name, value) == expected


def test_parse_helios_set_errors() -> None:
    with pytest.raises(HeliosError) as bad_route:
        parse_helios_set("helios.route", "replica")
    assert bad_route.value.sqlstate == "22023"
    with pytest.raises(UndefinedObject) as unknown:
        parse_helios_set("helios.colour", "red")
    assert unknown.value.sqlstate == "42704"
    assert "helios.colour" in unknown.value.message


def test_set_helios_round_trip_through_classifier() -> None:
    info = Classifier().classify("SET helios.route TO 'Standby'")
    ((name, value, _local),) = info.settings
    assert parse_helios_set(name, value) == ("route", "standby")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120).map(lambda s: s + " /*helios:" + s))
def test_parse_hints_never_raises(sql: str) -> None:
    got = parse_hints(sql)
    assert got is None or isinstance(got, Hints)
