"""Extended-protocol requests without sockets: decoding into typed records, and renaming them for one server."""

from __future__ import annotations

import collections
import struct

import pytest

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import FAIL_BIND, PORTAL, STATEMENT, Msg, decode, names_in
from heliosproxy.session.prepared import Statement
from heliosproxy.session.relay import HIDE, PASS, REPLACE, SYNTH, Expect
from heliosproxy.session.rename import Renamer, parse_msg
from heliosproxy.sql.classify import classify_uncached
from tests.helpers import extmsg
from tests.helpers.extmsg import close, describe, parse

M = messages.msg
C = messages.cstr


def bind(portal: str, stmt: str, params: tuple[bytes, ...] = ()) -> bytes:
    return extmsg.bind(stmt, params, portal)


EXECUTE = M(codes.F_EXECUTE, C("") + b"\x00\x00\x00\x00")
SYNC = messages.SYNC
FLUSH = M(codes.F_FLUSH, b"")


def dec(data: bytes) -> Msg:
    return decode(data[0], data, "utf-8")


# ------------------------------------------------------------------ decoding
def test_parse_is_decoded_once_into_named_fields() -> None:
    m = dec(parse("s1", "SELECT $1", (23,)))
    assert (m.t, m.name, m.sql, m.raw, m.readable) == (codes.F_PARSE, "s1", "SELECT $1", b"SELECT $1", True)
    assert m.tail == struct.pack("!HI", 1, 23)
    assert m.names_statement()


def test_bind_names_portal_statement_and_where_its_parameters_start() -> None:
    data = bind("p", "s1", (b"42",))
    m = dec(data)
    assert (m.name, m.stmt) == ("p", "s1")
    assert data[m.at :] == b"\x00\x00" + struct.pack("!Hi", 1, 2) + b"42" + b"\x00\x00"


@pytest.mark.parametrize(
    ("data", "sub", "name", "named"),
    [
        (describe(b"S", "s1"), STATEMENT, "s1", True),
        (describe(b"P", "p1"), PORTAL, "p1", False),
        (close(b"S", ""), STATEMENT, "", False),
        (close(b"S", "s2"), STATEMENT, "s2", True),
    ],
)
def test_describe_and_close(data: bytes, sub: int, name: str, named: bool) -> None:
    m = dec(data)
    assert (m.sub, m.name, m.names_statement()) == (sub, name, named)


def test_text_not_in_the_clients_encoding_is_kept_unreadable() -> None:
    data = M(codes.F_PARSE, b"\x00SELECT '\xff'\x00\x00\x00")
    m = dec(data)
    assert not m.readable and m.raw == b"SELECT '\xff'"


@pytest.mark.parametrize(
    "data",
    [
        M(codes.F_PARSE, b"s\x00SELECT 1\x00\x00\x02\x00\x00\x00\x17"),  # 2 types announced, 1 sent
        M(codes.F_PARSE, b"s\x00SELECT 1"),  # no terminator
        M(codes.F_DESCRIBE, b"Xname\x00"),  # neither S nor P
        M(codes.F_CLOSE, b"Sname\x00junk"),
        M(codes.F_EXECUTE, b"\x00\x00\x00"),  # truncated row limit
        M(codes.F_BIND, b"\x00s\x00\x00\x05"),  # truncated format codes
        M(codes.F_BIND, b"\x00s\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # parameter length -2
        M(codes.F_BIND, b"\x00s\x00\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"),  # value past the end
        M(codes.F_BIND, b"\x00s\x00\x00\x00\x00\x00\x00\x00\x00"),  # a byte after the result formats
        M(codes.F_BIND, b"\x00s\x00\x00\x00\x00\x00\x00\x01"),  # result formats announced, not sent
        M(codes.F_BIND, b"p" * 100),  # no NUL after a long name
        M(codes.F_EXECUTE, b"p" * 100 + b"\x00\x00\x00\x00"),  # no NUL
    ],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises((ValueError, IndexError, struct.error, UnicodeDecodeError)):
        dec(data)


def test_bind_with_nulls_long_names_and_another_encoding() -> None:
    portal, stmt = "p" * 70, "s\u00e9" * 40  # past the short-name scan; not ASCII
    body = (portal.encode("latin-1") + b"\x00" + stmt.encode("latin-1") + b"\x00" + struct.pack("!HH", 1, 1)
            + struct.pack("!Hi", 2, -1) + struct.pack("!i", 3) + b"abc" + struct.pack("!HHH", 2, 0, 1))
    data = M(codes.F_BIND, body)
    m = decode(codes.F_BIND, data, "latin-1")
    assert (m.name, m.stmt) == (portal, stmt)
    assert messages.bind_result_formats(data, m.at) == [0, 1]
    e = decode(codes.F_EXECUTE, M(codes.F_EXECUTE, C(portal) + b"\x00\x00\x00\x00"), "utf-8")
    assert e.name == portal


def test_names_in() -> None:
    assert not names_in([dec(parse("", "SELECT 1")), dec(bind("", "")), dec(EXECUTE), dec(SYNC)])
    assert names_in([dec(bind("", "s"))])
    assert not names_in([dec(describe(b"P", "portal"))])


# ------------------------------------------------------------------ renaming for one server
def stmt(name: str, sql: str = "SELECT 1", server: str = "hp_aa") -> Statement:
    return Statement(name, sql, b"\x00\x00", classify_uncached(sql), server, raw=sql.encode())


def rename(batch: list[bytes], statements: dict[str, Statement], prepared: list[str], limit: int = 10,
           on: bool = True, inject: bytes | None = None) -> tuple[list[bytes], list[Expect], Renamer]:
    out: list[bytes] = []
    fix: list[Expect] = []
    lru: dict[str, None] = dict.fromkeys(prepared)
    r = Renamer(lru, limit, out, fix)
    msgs = [dec(b) for b in batch]
    for m in msgs:  # what the session resolves when it judges the batch, in order
        if m.t == codes.F_PARSE or (m.t == codes.F_DESCRIBE and m.sub == STATEMENT):
            m.st = statements.get(m.name)
        elif m.t == codes.F_BIND:
            m.st = statements.get(m.stmt)
        elif m.t == codes.F_CLOSE and m.sub == STATEMENT:
            statements.pop(m.name, None)
    r.batch(msgs, on, inject)
    return out, fix, r


def shape(fix: list[Expect]) -> list[tuple[int, int, bytes]]:
    return [(e.kind, e.action, e.data) for e in fix]


def test_unnamed_statements_pass_as_sent() -> None:
    batch = [parse("", "SELECT 1"), bind("", ""), EXECUTE, SYNC]
    out, fix, r = rename(batch, {}, [])
    assert out == batch and not r.hidden
    assert shape(fix) == [(codes.F_PARSE, PASS, b""), (codes.F_BIND, PASS, b""), (codes.F_EXECUTE, PASS, b""),
                          (codes.F_SYNC, PASS, b"")]


def test_parse_of_a_name_the_server_lacks_is_sent_under_the_shared_name() -> None:
    st = stmt("s1")
    out, fix, r = rename([parse("s1", "SELECT 1"), SYNC], {"s1": st}, [])
    assert out == [parse_msg(st), SYNC] and r.hidden
    assert fix[0].data == b"hp_aa" and fix[0].client == "s1" and fix[0].action == PASS
    assert list(r.prepared) == ["hp_aa"]


def test_parse_of_a_name_the_server_has_is_answered_by_the_proxy() -> None:
    st = stmt("s1")
    out, fix, _r = rename([parse("s1", "SELECT 1"), SYNC], {"s1": st}, ["hp_aa"])
    assert out == [SYNC]
    assert fix[0].action == SYNTH and fix[0].data == messages.PARSE_COMPLETE and fix[0].stmt is st


def test_bind_on_a_server_without_the_statement_gets_a_hidden_parse_first() -> None:
    st = stmt("s1")
    out, fix, r = rename([bind("", "s1", (b"7",)), EXECUTE, SYNC], {"s1": st}, [])
    renamed = bind("", "hp_aa", (b"7",))
    assert out == [parse_msg(st), renamed, EXECUTE, SYNC] and r.hidden
    assert shape(fix)[:2] == [(codes.F_PARSE, HIDE, b"hp_aa"), (codes.F_BIND, PASS, b"")]


def test_bind_on_a_server_with_the_statement_is_only_renamed() -> None:
    st = stmt("s1")
    out, _fix, r = rename([bind("p", "s1"), EXECUTE, SYNC], {"s1": st}, ["hp_aa"])
    assert out == [bind("p", "hp_aa"), EXECUTE, SYNC] and not r.hidden


def test_describe_statement_is_renamed_and_close_is_answered_here() -> None:
    st = stmt("s1")
    statements = {"s1": st}
    out, fix, _r = rename([describe(b"S", "s1"), close(b"S", "s1"), SYNC], statements, ["hp_aa"])
    assert out == [describe(b"S", "hp_aa"), SYNC]
    assert shape(fix)[1] == (0, SYNTH, messages.CLOSE_COMPLETE)
    assert "s1" not in statements  # the client's name is gone; the shared statement stays on the server


def test_unknown_names_go_to_the_server_which_reports_them() -> None:
    out, _fix, r = rename([bind("", "nope"), EXECUTE, SYNC], {}, [])
    assert out == [bind("", "nope"), EXECUTE, SYNC] and not r.hidden


def test_lru_closes_the_oldest_shared_statement_hidden() -> None:
    st = stmt("s1", server="hp_new")
    out, fix, r = rename([bind("", "s1"), EXECUTE, SYNC], {"s1": st}, ["hp_old1", "hp_old2"], limit=2)
    assert out[:2] == [parse_msg(st), messages.close_statement("hp_old1")]
    assert shape(fix)[1] == (codes.F_CLOSE, HIDE, b"")
    assert list(r.prepared) == ["hp_old2", "hp_new"]


def test_session_mode_sends_everything_as_the_client_did() -> None:
    st = stmt("s1")
    batch = [parse("s1", "SELECT 1"), bind("", "s1"), describe(b"S", "s1"), close(b"S", "s1"), FLUSH]
    out, fix, r = rename(batch, {"s1": st}, [], on=False)
    assert out == batch and len(fix) == 4 and not r.hidden  # Flush has no answer


def test_an_injected_failure_replaces_the_servers_error_with_the_proxys() -> None:
    err = messages.error_response("ERROR", "42000", "blocked")
    out, fix, r = rename([FAIL_BIND, SYNC], {}, [], inject=err)
    assert out == [FAIL_BIND, SYNC] and fix[0].action == REPLACE and fix[0].data == err and r.hidden


# ------------------------------------------------------------------ framing after login
@pytest.mark.parametrize(
    ("t", "length", "error"),
    [
        (codes.F_QUERY, 9, ""),
        (codes.F_SYNC, 4, ""),
        (codes.F_PASSWORD, 9, "invalid frontend message type 112"),  # only at login
        (ord("z"), 9, "invalid frontend message type 122"),
        (codes.F_QUERY, 3, "invalid message length"),
        (codes.F_QUERY, 1025, "message of 1025 bytes exceeds max_message_size (1024)"),
    ],
)
def test_header_error(t: int, length: int, error: str) -> None:
    from heliosproxy.protocol.frontend import header_error

    assert header_error(t, length, 1024) == error


class _Host:
    def refuses_parse(self, st: Statement, index: int) -> bool:
        return True

    def reply_error(self, m: bytes, head: Expect | None, index: int) -> None:
        pass

    def statement_dropped(self, server: str) -> None:
        pass

    def statement_prepared(self, server: str) -> None:
        pass

    def hold_done(self, held: list[bytes]) -> bool:
        return False


def test_requests_answered_as_sent_share_one_expectation_that_an_error_leaves_unchanged() -> None:
    from heliosproxy.session.relay import ReplyRelay

    st = stmt("s1")
    long_portal = "p" * 80  # past the short-name scan
    out, fix, _r = rename([bind(long_portal, "s1", (b"7", b"")), EXECUTE, SYNC], {"s1": st}, ["hp_aa"])
    assert out == [bind(long_portal, "hp_aa", (b"7", b"")), EXECUTE, SYNC]
    _out2, fix2, _r2 = rename([bind("", "s1"), EXECUTE, SYNC], {"s1": st}, ["hp_aa"])
    assert [a is b for a, b in zip(fix, fix2, strict=True)] == [True, True, True]  # no allocation per batch
    relay = ReplyRelay(_Host(), collections.deque(fix))
    err = messages.error_response("ERROR", "22P02", "invalid input")
    out3, readies = relay.feed(err + messages.ready_for_query(codes.TX_IDLE))
    assert b"".join(out3) == err + messages.ready_for_query(codes.TX_IDLE) and readies == [codes.TX_IDLE]
    assert [(e.kind, e.action, e.data, e.failed, e.rows, e.stmt, e.gate, e.capture, e.client) for e in fix2] == [
        (t, PASS, b"", False, [], None, False, None, None) for t in (codes.F_BIND, codes.F_EXECUTE, codes.F_SYNC)
    ]
