"""Random bytes from clients (before and after login) never crash the proxy or disturb other clients."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyProcess, base_config, deep_merge
from tests.helpers.rawpg import RawPg

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def proxy(cluster: PgCluster) -> Iterator[ProxyProcess]:
    config = deep_merge(
        base_config(cluster.node_config()),
        {"max_message_size": "1MB", "client_login_timeout": "2s", "routing": {"read_write_split": False}},
    )
    with ProxyProcess(config) as p:
        yield p


def _drain(sock: socket.socket) -> None:
    sock.settimeout(0.3)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, OSError):
        pass


# Messages that look like the protocol: a type byte, a length (often wrong), a body.
_frames = st.builds(
    lambda t, n, body: bytes([t]) + struct.pack("!i", n) + body,
    st.integers(0, 255),
    st.one_of(st.integers(-5, 40), st.integers(0, 2**31 - 1)),
    st.binary(max_size=40),
)
_garbage = st.lists(st.one_of(_frames, st.binary(max_size=64)), min_size=1, max_size=6).map(b"".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_garbage)
def test_garbage_before_startup(proxy: ProxyProcess, data: bytes) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        sock.sendall(data)
        _drain(sock)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_garbage)
def test_garbage_after_login(proxy: ProxyProcess, data: bytes) -> None:
    with RawPg(proxy.host, proxy.port, timeout=2) as raw:
        raw.login("app", "apppass", "app")
        try:
            raw.send(data)
        except OSError:
            return
        _drain(raw.sock)


def test_proxy_still_serves_after_the_fuzzing(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)
