"""TLS to servers: a cluster whose pg_hba.conf has only hostssl lines, with every server_tls/node tls mode."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers.pgcluster import ClusterTls, PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.tlsca import TestCA

SSL_OF_MY_BACKEND = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    base = tmp_path_factory.mktemp("server-pki")
    return TestCA(base / "ca", "Server CA"), TestCA(base / "other", "Another CA")


@pytest.fixture
def ssl_cluster(cluster_factory: Callable[..., PgCluster], server_pki: tuple[TestCA, TestCA]) -> PgCluster:
    ca, _ = server_pki
    cert, key = ca.issue("pgserver", ("localhost",))  # not 127.0.0.1: verify-full must use the name
    return cluster_factory(standbys=0, tls=ClusterTls(cert, key))


def _proxy(proxy_factory: ProxyFactory, cluster: PgCluster, *, host: str = "127.0.0.1", **extra: Any) -> ProxyProcess:
    nodes = [{**n, "host": host} for n in cluster.node_config()]
    return proxy_factory({"routing": {"read_write_split": False}, **extra}, cluster=cluster, nodes=nodes)


def _node_state(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(f"{proxy.admin_url}/api/nodes", timeout=5) as resp:
        state: str = json.load(resp)[0]["state"]
        return state


def _query(proxy: ProxyProcess, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return tuple(row)


def test_plaintext_is_refused_by_the_hostssl_cluster(ssl_cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = _proxy(proxy_factory, ssl_cluster, server_tls={"tls": "disable"})
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        _query(proxy, "SELECT 1")


def test_prefer_default_and_require_use_tls(ssl_cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = _proxy(proxy_factory, ssl_cluster)  # server_tls.tls defaults to prefer
    ssl_on, version = _query(proxy, SSL_OF_MY_BACKEND)
    assert ssl_on is True and version.startswith("TLSv1")
    # Health checks log in over TLS too: the node is seen up.
    deadline = time.monotonic() + 10
    while _node_state(proxy) != "up":
        assert time.monotonic() < deadline, proxy.output()[-2000:]
        time.sleep(0.1)
    proxy2 = _proxy(proxy_factory, ssl_cluster, server_tls={"tls": "require"})
    assert _query(proxy2, SSL_OF_MY_BACKEND)[0] is True


def test_require_fails_against_a_server_without_tls(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"routing": {"read_write_split": False}, "server_tls": {"tls": "require"}})
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL was required"):
        _query(proxy, "SELECT 1")
    # prefer (the default) falls back to plaintext there.
    assert _query(proxy_factory({"routing": {"read_write_split": False}}), "SELECT 1") == (1,)


def test_verify_ca_and_verify_full(
    ssl_cluster: PgCluster, proxy_factory: ProxyFactory, server_pki: tuple[TestCA, TestCA]
) -> None:
    ca, other = server_pki
    good = {"tls_ca": str(ca.ca_path)}
    # verify-ca: the chain is checked, not the name (127.0.0.1 is not in the certificate).
    proxy = _proxy(proxy_factory, ssl_cluster, server_tls={"tls": "verify-ca", **good})
    assert _query(proxy, SSL_OF_MY_BACKEND)[0] is True
    # verify-full: the name must match too.
    wrong_name = _proxy(proxy_factory, ssl_cluster, server_tls={"tls": "verify-full", **good})
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed: IP address mismatch"):
        _query(wrong_name, "SELECT 1")
    by_name = _proxy(proxy_factory, ssl_cluster, host="localhost", server_tls={"tls": "verify-full", **good})
    assert _query(by_name, SSL_OF_MY_BACKEND)[0] is True
    # Another CA: refused, whatever the default says, when the node's own keys say so.
    nodes = [{**n, "host": "localhost", "tls": "verify-full", "tls_ca": str(other.ca_path)}
             for n in ssl_cluster.node_config()]
    wrong_ca = proxy_factory({"routing": {"read_write_split": False}, "server_tls": {"tls": "disable"}},
                             cluster=ssl_cluster, nodes=nodes)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _query(wrong_ca, "SELECT 1")


def test_client_certificate_to_the_server(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory, server_pki: tuple[TestCA, TestCA],
    tmp_path: Path,
) -> None:
    ca, _ = server_pki
    cert, key = ca.issue("pgserver-cc", ("localhost",))
    cluster = cluster_factory(standbys=0, tls=ClusterTls(cert, key, ca=ca.ca_path))
    without = _proxy(proxy_factory, cluster, server_tls={"tls": "require"})
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        _query(without, "SELECT 1")
    client_cert, client_key = ca.issue("heliosproxy-client", client=True)
    nodes = [{**n, "tls_cert": str(client_cert), "tls_key": str(client_key)} for n in cluster.node_config()]
    with_cert = proxy_factory({"routing": {"read_write_split": False}, "server_tls": {"tls": "require"}},
                              cluster=cluster, nodes=nodes)
    assert _query(with_cert, "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == (
        True, "/CN=heliosproxy-client")
