"""Pure protocol code: reply scanning across arbitrary chunk splits, SCRAM both ways, MD5, startup packets."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import (
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    md5_password,
    parse_sasl_mechanisms,
)
from heliosproxy.protocol.scan import ERROR_SEEN, ReplyScanner

_reply = st.one_of(
    st.builds(
        lambda s: messages.ready_for_query(s), st.sampled_from([codes.TX_IDLE, codes.TX_IN_BLOCK, codes.TX_FAILED])
    ),
    st.builds(lambda n: messages.data_row(["x" * n]), st.integers(0, 300)),
    st.builds(lambda t: messages.command_complete(t), st.sampled_from(["SELECT 1", "INSERT 0 1"])),
    st.just(messages.error_response("ERROR", "42P01", "no such table")),
    st.just(messages.PARSE_COMPLETE),
    st.just(messages.row_description(["a", "b"])),
)


def _errors_before_each_ready(replies: list[bytes]) -> list[bool]:
    out: list[bool] = []
    err = False
    for r in replies:
        if r[0] == codes.B_ERROR:
            err = True
        elif r[0] == codes.B_READY_FOR_QUERY:
            out.append(err)
            err = False
    return out


@given(st.lists(_reply, min_size=1, max_size=30), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_scanner_finds_every_ready_for_query_across_any_split(replies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(replies)
    expected = [r[5] for r in replies if r[0] == codes.B_READY_FOR_QUERY]
    errors_before = _errors_before_each_ready(replies)
    scanner = ReplyScanner()
    seen: list[int] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        seen.extend(scanner.feed(stream[pos : pos + step]))
        pos += step
        i += 1
    assert [s & 0xFF for s in seen] == expected
    assert [bool(s & ERROR_SEEN) for s in seen] == errors_before
    assert scanner.bytes_seen == len(stream)


def test_scram_client_and_server_agree() -> None:
    secret = ScramSecret.from_password("apppass")
    server = ScramServer(secret)
    client = ScramClient("apppass")
    server_first = server.handle_first(client.first_message())
    final = server.handle_final(client.final_message(server_first))
    assert final is not None
    client.verify_final(final)


def test_scram_wrong_password_and_unknown_user_fail_the_same_way() -> None:
    for server in (ScramServer(ScramSecret.from_password("apppass")), ScramServer(None)):
        client = ScramClient("wrong" if server.known else "apppass")
        first = server.handle_first(client.first_message())
        assert server.handle_final(client.final_message(first)) is None


def test_scram_rejects_tampered_server_signature() -> None:
    server = ScramServer(ScramSecret.from_password("pw"))
    client = ScramClient("pw")
    first = server.handle_first(client.first_message())
    server.handle_final(client.final_message(first))
    with pytest.raises(ScramError):
        client.verify_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


def test_scram_rejects_channel_binding_and_garbage() -> None:
    with pytest.raises(ScramError):
        ScramServer(None).handle_first(b"p=tls-server-end-point,,n=,r=abc")
    with pytest.raises(ScramError):
        ScramServer(None).handle_first(b"\xff\xfe")


def test_md5_matches_postgres_formula() -> None:
    inner = hashlib.md5(b"secretbob").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + b"salt").hexdigest().encode()
    assert md5_password("bob", "secret", b"salt") == expected


def test_sasl_mechanism_list_is_parsed_in_full() -> None:
    payload = b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    assert parse_sasl_mechanisms(payload) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


def test_startup_round_trip_and_malformed() -> None:
    raw = messages.startup_message({"user": "app", "database": "db", "application_name": "x"})
    code, params = messages.decode_startup(raw[4:])
    assert code == codes.PROTOCOL_3_0
    assert params == {"user": "app", "database": "db", "application_name": "x"}
    with pytest.raises(ValueError):
        messages.decode_startup(raw[4:-1])  # missing terminator
    with pytest.raises(ValueError):
        messages.decode_startup(b"\x00\x03\x00\x00user\x00\x00")  # name without value


def test_error_response_fields() -> None:
    raw = messages.error_response("ERROR", "42000", "blocked", "why")
    assert raw[0] == codes.B_ERROR
    fields = messages.parse_error_fields(raw[5:])
    assert fields["S"] == "ERROR" and fields["C"] == "42000" and fields["M"] == "blocked" and fields["D"] == "why"


def test_result_set_shape() -> None:
    data = messages.result_set(["greeting"], [["hello"], [None]])
    scanner_types = []
    pos = 0
    while pos < len(data):
        scanner_types.append(chr(data[pos]))
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    assert scanner_types == ["T", "D", "D", "C"]
    assert data.endswith(messages.command_complete("SELECT 2"))
