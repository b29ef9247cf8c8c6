"""Protocol violations from a raw-socket client: exact ErrorResponse, closed connection, others unaffected."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyProcess, base_config, deep_merge
from tests.helpers.rawpg import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3_0,
    SSL_REQUEST,
    RawPg,
    data_rows,
    msg,
    query_msg,
    special_request,
    startup_packet,
)

MAX_MESSAGE_SIZE = 1_000_000  # "1MB" in the config: kB/MB are powers of 1000


@pytest.fixture(scope="module")
def proxy(cluster: PgCluster) -> Iterator[ProxyProcess]:
    config = deep_merge(
        base_config(cluster.node_config()),
        {"routing": {"read_write_split": False}, "max_message_size": "1MB"},
    )
    with ProxyProcess(config) as p:
        yield p


@pytest.fixture(scope="module")
def bystander(proxy: ProxyProcess) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A well-behaved client connected for the whole module; it must keep working after each violation."""
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        yield conn


def _still_works(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    assert conn.execute("SELECT 40 + %s::int", (2,)).fetchone() == (42,)


def _logged_in(proxy: ProxyProcess) -> RawPg:
    raw = RawPg(proxy.host, proxy.port)
    raw.login("app", "apppass", "app")
    assert data_rows(raw.query("SELECT 1")) == [["1"]]
    return raw


def _assert_fatal(raw: RawPg, sqlstate: str, message: str) -> None:
    fields = raw.read_error()
    assert (fields["S"], fields.get("V"), fields["C"], fields["M"]) == ("FATAL", "FATAL", sqlstate, message)
    assert raw.closed_within(2.0), "the proxy did not close the connection after the FATAL error"


def test_unknown_message_type(
    proxy: ProxyProcess, cluster: PgCluster, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    # A direct connection answers exactly this (postgres.c SocketBackend); the proxy must match.
    with RawPg("127.0.0.1", cluster.primary.port) as direct:
        direct.login("app", "apppass", "app")
        direct.send(msg(b"!", b"xyz"))
        fields = direct.read_error()
        assert (fields["C"], fields["M"]) == ("08P01", "invalid frontend message type 33")
    with _logged_in(proxy) as raw:
        raw.send(msg(b"!", b"xyz"))
        _assert_fatal(raw, "08P01", "invalid frontend message type 33")
    _still_works(bystander)


def test_message_length_below_four(proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]) -> None:
    with _logged_in(proxy) as raw:
        raw.send(b"Q" + struct.pack("!I", 3))
        _assert_fatal(raw, "08P01", "invalid message length")
    _still_works(bystander)


def test_message_over_max_message_size(
    proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    # Only the header and a little of the body are sent: the proxy must refuse on the length alone.
    with _logged_in(proxy) as raw:
        raw.send(b"Q" + struct.pack("!I", 2_000_000) + b"SELECT '" + b"x" * 1000)
        _assert_fatal(
            raw, "08P01", f"message of 2000000 bytes exceeds max_message_size ({MAX_MESSAGE_SIZE})"
        )
    _still_works(bystander)


def test_message_just_under_max_message_size_is_relayed(proxy: ProxyProcess) -> None:
    literal = "x" * (MAX_MESSAGE_SIZE - 100)
    with _logged_in(proxy) as raw:
        raw.send(query_msg(f"SELECT length('{literal}')"))
        assert data_rows(raw.read_until_ready()) == [[str(len(literal))]]


def _assert_closed_silently(raw: RawPg) -> None:
    """What PostgreSQL does with a broken startup packet: log it and close, sending nothing."""
    assert raw.closed_within(2.0), "the connection was not closed"
    assert raw.pending == b"", f"expected no answer, got {raw.pending[:100]!r}"


def test_garbage_before_startup(
    proxy: ProxyProcess, cluster: PgCluster, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n"
    with RawPg("127.0.0.1", cluster.primary.port) as direct:
        direct.send(garbage)
        _assert_closed_silently(direct)
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(garbage)
        _assert_closed_silently(raw)
    proxy.wait_output("invalid length of startup packet")
    _still_works(bystander)


def test_connection_closed_before_a_complete_startup_packet(
    proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(startup_packet({"user": "app", "database": "app"})[:10])
        raw.sock.shutdown(socket.SHUT_WR)
        _assert_closed_silently(raw)
    _still_works(bystander)


def test_startup_packet_over_10000_bytes(
    proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    packet = startup_packet({"user": "app", "database": "app", "application_name": "a" * 12_000})
    assert len(packet) > 10_000
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(packet)
        _assert_closed_silently(raw)
    # A startup packet just under the limit is fine.
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app", application_name="b" * 9_000)
        assert data_rows(raw.query("SELECT length(current_setting('application_name')) > 0")) == [["t"]]
    _still_works(bystander)


def test_unsupported_protocol_version(
    proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(startup_packet({"user": "app", "database": "app"}, version=2 << 16))
        _assert_fatal(raw, "0A000", "unsupported frontend protocol 2.0: server supports 3.0 to 3.0")
    _still_works(bystander)


def test_newer_minor_version_negotiates_down(proxy: ProxyProcess) -> None:
    # 3.5 is answered with NegotiateProtocolVersion (newest minor 3.0, no unsupported options), then login.
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(startup_packet({"user": "app", "database": "app"}, version=PROTOCOL_3_0 | 5))
        kind, body = raw.read_message()
        assert (kind, body) == ("v", struct.pack("!II", PROTOCOL_3_0, 0))
        raw.authenticate("app", "apppass")
        assert data_rows(raw.query("SELECT 7")) == [["7"]]


@pytest.mark.parametrize("code", [SSL_REQUEST, GSSENC_REQUEST], ids=["SSLRequest", "GSSENCRequest"])
def test_encryption_request_answered_n_then_login(proxy: ProxyProcess, code: int) -> None:
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(special_request(code))
        assert raw.read_bytes(1) == b"N"
        raw.login("app", "apppass", "app")
        assert data_rows(raw.query("SELECT current_user")) == [["app"]]


def test_libpq_with_sslmode_prefer_falls_back_to_plaintext(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(sslmode="prefer"), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.pgconn.ssl_in_use is False


def test_cancel_request_with_unknown_key_just_closes(
    proxy: ProxyProcess, bystander: psycopg.Connection[tuple[object, ...]]
) -> None:
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(special_request(CANCEL_REQUEST, 12345, 67890))
        assert raw.closed_within(2.0)
        assert raw.pending == b"", "a CancelRequest gets no answer"
    _still_works(bystander)


def test_terminate_closes_cleanly(proxy: ProxyProcess) -> None:
    with _logged_in(proxy) as raw:
        raw.send(msg(b"X"))
        assert raw.closed_within(2.0)
        assert raw.pending == b""
