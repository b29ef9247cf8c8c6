"""Hook input JSON is exactly what json.dumps gives; the fast-matched answers parse like the JSON path."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosproxy.plugins.hooks import (
    HookContext,
    PluginError,
    QueryContext,
    parse_pre_query,
    parse_route,
)

texts = st.text(max_size=40)
opt_texts = st.none() | texts


def reference(ctx: QueryContext) -> bytes:
    return json.dumps(ctx.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None)
@given(
    query=texts,
    normalized=texts,
    tables=st.lists(texts, max_size=4),
    read_only=st.booleans(),
    request_id=texts,
    client_id=opt_texts,
    identity=opt_texts,
    database=opt_texts,
    branch=opt_texts,
    attributes=st.dictionaries(texts, texts, max_size=3),
)
def test_context_json_is_what_json_dumps_gives(
    query: str,
    normalized: str,
    tables: list[str],
    read_only: bool,
    request_id: str,
    client_id: str | None,
    identity: str | None,
    database: str | None,
    branch: str | None,
    attributes: dict[str, str],
) -> None:
    hc = HookContext(request_id, client_id, identity, database, branch, attributes)
    ctx = QueryContext(query, normalized, tables, read_only, hc)
    try:
        expected = reference(ctx)
    except UnicodeEncodeError:  # lone surrogates: both ways refuse them
        with pytest.raises(UnicodeEncodeError):
            ctx.to_json()
        return
    assert ctx.to_json() == expected
    assert json.loads(ctx.to_json()) == ctx.to_dict()
    assert hc.to_json() == json.dumps(hc.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    # The session's shared HookContext with this statement's request_id: the same bytes.
    shared = HookContext("login", client_id, identity, database, branch, attributes)
    shared.tail_json()  # cached before: the statement's JSON reuses it
    ctx2 = QueryContext(query, normalized, tuple(tables), read_only, shared, request_id)
    assert ctx2.to_json() == expected
    assert ctx2.to_dict() == ctx.to_dict()


def test_shared_hook_context_tail_is_cached_until_invalidated() -> None:
    shared = HookContext("", "c1", "alice", "app", None, {"tenant": "acme"})
    a = QueryContext("SELECT 1", "SELECT $1", ("t",), True, shared, "c1-1")
    assert json.loads(a.to_json())["hook_context"] == {
        "request_id": "c1-1", "client_id": "c1", "identity": "alice", "database": "app", "branch": None,
        "attributes": {"tenant": "acme"},
    }
    shared.attributes["tenant"] = "other"  # what SET helios.tenant does to the session's dict
    shared.branch = "b1"
    b = QueryContext("SELECT 2", "SELECT $1", ("t",), True, shared, "c1-2")
    assert json.loads(b.to_json())["hook_context"]["attributes"] == {"tenant": "acme"}  # cached: stale
    shared.invalidate()
    c = QueryContext("SELECT 3", "SELECT $1", ("t",), True, shared, "c1-3")
    hook = json.loads(c.to_json())["hook_context"]
    assert (hook["request_id"], hook["branch"], hook["attributes"]) == ("c1-3", "b1", {"tenant": "other"})
    assert json.loads(a.to_json())["hook_context"]["request_id"] == "c1-1"  # each statement's JSON is its own


def test_context_json_examples() -> None:
    ctx = QueryContext(
        'SELECT \'é"\\\n\x01\u2028\'',
        "SELECT $1",
        ["public.t", 'we"ird'],
        True,
        HookContext("c1-7", "c1", None, "app", None, {"tenant": "acme"}),
    )
    assert ctx.to_json() == (
        b'{"query":"SELECT \'\xc3\xa9\\"\\\\\\n\\u0001\xe2\x80\xa8\'","normalized":"SELECT $1",'
        b'"tables":["public.t","we\\"ird"],"is_read_only":true,"hook_context":{"request_id":"c1-7",'
        b'"client_id":"c1","identity":null,"database":"app","branch":null,"attributes":{"tenant":"acme"}}}'
    )


ANSWERS = [
    b'{"action":"continue"}',
    b'{"action": "continue"}',
    b'{"action":"default"}',
    b'{"action": "default"}',
    b'{"action":"primary"}',
    b'{"action": "primary"}',
    b'{"action":"standby"}',
    b'{"action": "standby"}',
]


@pytest.mark.parametrize("raw", ANSWERS)
def test_fast_matched_answers_parse_like_their_json(raw: bytes) -> None:
    # The same document with a trailing space is not fast-matched: it goes through json.loads.
    slow = raw + b" "
    for parse in (parse_pre_query, parse_route):
        try:
            expected: object = parse(slow)
        except PluginError as e:
            expected = ("error", e.kind)
        try:
            got: object = parse(raw)
        except PluginError as e:
            got = ("error", e.kind)
        assert got == expected
