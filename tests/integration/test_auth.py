"""Client and backend authentication through the proxy, connection limits and the login timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess, base_config, deep_merge
from tests.helpers.rawpg import RawPg, ServerError, data_rows

# What each client auth method makes the proxy ask: the authentication request codes in order
# (10 SASL, 11 SASLContinue, 12 SASLFinal, 5 MD5, 0 Ok), and libpq's require_auth name.
METHODS = {
    "scram-sha-256": ([10, 11, 12, 0], "scram-sha-256"),
    "md5": ([5, 0], "md5"),
    "trust": ([0], "none"),
}
# The auth requests seen before a wrong password is refused.
REFUSED_AFTER = {"scram-sha-256": [10, 11], "md5": [5]}


def _proxy_config(cluster: PgCluster, **overrides: object) -> dict[str, object]:
    return deep_merge(base_config(cluster.node_config()), {"routing": {"read_write_split": False}, **overrides})


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_proxy(request: pytest.FixtureRequest, cluster: PgCluster) -> Iterator[tuple[str, ProxyProcess]]:
    method: str = request.param
    with ProxyProcess(_proxy_config(cluster, auth={"method": method})) as p:
        yield method, p


def test_client_auth_method(method_proxy: tuple[str, ProxyProcess]) -> None:
    method, proxy = method_proxy
    requests, require_auth = METHODS[method]
    with RawPg(proxy.host, proxy.port) as raw:
        raw.login("app", "apppass", "app")
        assert raw.auth_requests == requests
        assert data_rows(raw.query("SELECT current_user")) == [["app"]]
    # libpq refuses to log in unless the proxy asked for exactly this method.
    with psycopg.connect(proxy.dsn(require_auth=require_auth), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")


def test_wrong_password_and_unknown_user_look_the_same(method_proxy: tuple[str, ProxyProcess]) -> None:
    method, proxy = method_proxy
    if method == "trust":
        # No password is asked for; an unknown user is still refused with 28P01.
        with RawPg(proxy.host, proxy.port) as raw:
            with pytest.raises(ServerError) as unknown:
                raw.login("nosuchuser", None, "app")
            assert raw.auth_requests == []
            assert unknown.value.fields["S"] == "FATAL"
            assert unknown.value.fields["C"] == "28P01"
            assert unknown.value.fields["M"] == 'password authentication failed for user "nosuchuser"'
            assert raw.closed_within(2.0)
        return
    seen: dict[str, tuple[list[int], dict[str, str]]] = {}
    for user in ("app", "nosuchuser"):
        with RawPg(proxy.host, proxy.port) as raw:
            with pytest.raises(ServerError) as err:
                raw.login(user, "wrong-S3cr3t-pw", "app")
            assert raw.closed_within(2.0), "the connection stays open after a failed login"
            seen[user] = (raw.auth_requests, err.value.fields)
    for user, (requests, fields) in seen.items():
        assert requests == REFUSED_AFTER[method], user
        assert fields["S"] == "FATAL"
        assert fields["C"] == "28P01"
        assert fields["M"] == f'password authentication failed for user "{user}"'
    # No user oracle: the same fields, apart from the name in the message.
    app_fields = {k: v.replace('"app"', '"X"') for k, v in seen["app"][1].items()}
    unknown_fields = {k: v.replace('"nosuchuser"', '"X"') for k, v in seen["nosuchuser"][1].items()}
    assert app_fields == unknown_fields
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        psycopg.connect(proxy.dsn(password="wrong-S3cr3t-pw"), connect_timeout=5)
    out = proxy.output()
    assert "wrong-S3cr3t-pw" not in out, "the proxy logged a password"
    assert "apppass" not in out, "the proxy logged a password"
    assert "user=nosuchuser" in out and "127.0.0.1:" in out, "no log line with the client address and user"


@pytest.fixture(scope="module", params=["transaction", "session"])
def mode_proxy(request: pytest.FixtureRequest, cluster: PgCluster) -> Iterator[ProxyProcess]:
    with ProxyProcess(_proxy_config(cluster, pool={"mode": request.param})) as p:
        yield p


@pytest.mark.parametrize(
    ("user", "password"),
    [("app", "apppass"), ("md5user", "md5pass"), ("plainuser", "plainpass"), ("trustuser", "trustpass")],
)
def test_backend_auth_methods(mode_proxy: ProxyProcess, cluster: PgCluster, user: str, password: str) -> None:
    # The backend asks app for SCRAM, md5user for md5, plainuser for a cleartext password and trusts
    # trustuser (tests/helpers/pgcluster.py HBA); the client side is SCRAM in every case.
    with psycopg.connect(mode_proxy.dsn(user=user, password=password), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_database(), inet_server_port()").fetchone()
        assert row == (user, "app", cluster.primary.port)
        assert conn.execute("SELECT %s::int * 2", (21,)).fetchone() == (42,)


def test_max_client_connections(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"routing": {"read_write_split": False}}, max_client_connections=3)
    conns = [psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) for _ in range(3)]
    try:
        with RawPg(proxy.host, proxy.port) as raw:
            fields = raw.read_error()
            assert (fields["S"], fields["C"]) == ("FATAL", "53300")
            assert fields["M"].startswith("sorry, too many")
            assert raw.closed_within(2.0)
        with pytest.raises(psycopg.OperationalError, match="sorry, too many"):
            psycopg.connect(proxy.dsn(), connect_timeout=5)
        for conn in conns:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        conns.pop().close()
        # The freed slot is usable once the proxy noticed the close.
        deadline = time.monotonic() + 5
        while True:
            try:
                conns.append(psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5))
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert conns[-1].execute("SELECT 2").fetchone() == (2,)
    finally:
        for conn in conns:
            conn.close()


def test_client_login_timeout(proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"routing": {"read_write_split": False}}, client_login_timeout="1s")
    with RawPg(proxy.host, proxy.port) as silent, RawPg(proxy.host, proxy.port) as stalled:
        started = time.monotonic()
        # `stalled` sends its startup packet, then never answers the SCRAM challenge.
        stalled.startup("app", "app")
        kind, _ = stalled.read_message()
        assert kind == "R"
        assert not silent.closed_within(0.6), "closed long before client_login_timeout"
        assert silent.closed_within(2.5), "a client that sent nothing was not closed after client_login_timeout"
        assert stalled.closed_within(1.0), "a client stuck in authentication was not closed"
        assert time.monotonic() - started < 3.5
    # A logged-in client is not subject to the login timeout.
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        time.sleep(1.5)
        assert conn.execute("SELECT 1").fetchone() == (1,)
