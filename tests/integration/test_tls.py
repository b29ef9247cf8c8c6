"""TLS to clients: psql, psycopg, asyncpg and node-postgres with require/verify-full against a test CA."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from tests.helpers import REPO_ROOT
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import GSSENC_REQUEST, SSL_REQUEST, RawPg, special_request, startup_packet
from tests.helpers.tlsca import TestCA

NODE_DIR = REPO_ROOT / "tests" / "node"


class Pki:
    """A CA, a server certificate for localhost (not 127.0.0.1), a client certificate for `app`, and a foreign CA."""

    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory / "ca")
        self.server_cert, self.server_key = self.ca.issue("proxy", ("localhost",))
        self.client_cert, self.client_key = self.ca.issue("app", client=True)
        self.other = TestCA(directory / "other", "Some other CA")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _tls_proxy(proxy_factory: ProxyFactory, pki: Pki, **tls: Any) -> ProxyProcess:
    cfg = {"mode": "allow", "cert": str(pki.server_cert), "key": str(pki.server_key), **tls}
    return proxy_factory({"routing": {"read_write_split": False}}, tls=cfg)


def _dsn(proxy: ProxyProcess, host: str = "127.0.0.1", **params: str) -> str:
    parts = {"host": host, "port": str(proxy.port), "user": "app", "password": "apppass", "dbname": "app",
             "connect_timeout": "5", **params}
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _psycopg(dsn: str) -> tuple[bool, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row is not None
        return bool(conn.pgconn.ssl_in_use), str(row[0])


def _psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["psql", "-X", "-At", "-d", dsn, "-c", sql], env=env, text=True,
                          capture_output=True, timeout=30)


def _node(config: dict[str, Any], sql: str) -> dict[str, Any]:
    node = shutil.which("node") or "/usr/bin/node"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run `make install` (npm ci in tests/node)"
    res = subprocess.run([node, str(NODE_DIR / "pg_query.js"), json.dumps(config), sql], text=True,
                         capture_output=True, timeout=30, cwd=NODE_DIR)
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ====================================================================== the four clients


def test_psql_require_and_verify_full(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)
    res = _psql(_dsn(proxy, sslmode="require"), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert res.returncode == 0, res.stderr
    info = _psql(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.ca.ca_path)), r"\conninfo")
    assert info.returncode == 0, info.stderr
    assert "SSL connection (protocol: TLSv1.3" in info.stdout, info.stdout
    # Wrong CA, wrong host name: the client refuses the proxy.
    bad_ca = _psql(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.other.ca_path)), "SELECT 1")
    assert bad_ca.returncode != 0 and "certificate verify failed" in bad_ca.stderr, bad_ca.stderr
    bad_host = _psql(_dsn(proxy, host="wrong.example", hostaddr="127.0.0.1", sslmode="verify-full",
                          sslrootcert=str(pki.ca.ca_path)), "SELECT 1")
    assert bad_host.returncode != 0 and 'does not match host name "wrong.example"' in bad_host.stderr, bad_host.stderr


def test_psycopg_require_verify_full_and_direct_tls(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)
    assert _psycopg(_dsn(proxy, sslmode="require")) == (True, "app")
    assert _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.ca.ca_path))) == (
        True, "app")
    # PostgreSQL 17's direct TLS (no SSLRequest; ALPN "postgresql") on the same port.
    assert _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.ca.ca_path),
                         sslnegotiation="direct")) == (True, "app")
    # allow: plaintext clients are still served.
    assert _psycopg(_dsn(proxy, sslmode="disable")) == (False, "app")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.other.ca_path)))
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _psycopg(_dsn(proxy, host="wrong.example", hostaddr="127.0.0.1", sslmode="verify-full",
                      sslrootcert=str(pki.ca.ca_path)))


def test_asyncpg_require_and_verify_full(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)

    async def run(host: str, ssl_arg: Any) -> Any:
        conn = await asyncpg.connect(host=host, port=proxy.port, user="app", password="apppass", database="app",
                                     ssl=ssl_arg, timeout=5)
        try:
            used = conn._transport.get_extra_info("ssl_object") is not None
            return used, await conn.fetchval("SELECT 40 + 2")
        finally:
            await conn.close()

    assert asyncio.run(run("127.0.0.1", "require")) == (True, 42)
    good = ssl.create_default_context(cafile=str(pki.ca.ca_path))
    assert asyncio.run(run("localhost", good)) == (True, 42)
    other = ssl.create_default_context(cafile=str(pki.other.ca_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(run("localhost", other))
    wrong_host = ssl.create_default_context(cafile=str(pki.ca.ca_path))
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        asyncio.run(run("127.0.0.1", wrong_host))  # the certificate names localhost only


def test_node_postgres_require_and_verify_full(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)
    base = {"host": "127.0.0.1", "port": proxy.port, "user": "app", "password": "apppass", "database": "app"}
    require = _node({**base, "ssl": {"rejectUnauthorized": False}}, "SELECT 1 AS one")
    assert require == {"rows": [{"one": 1}], "ssl": True}
    full = _node({**base, "host": "localhost", "ssl": {"ca": str(pki.ca.ca_path)}}, "SELECT 2 AS two")
    assert full == {"rows": [{"two": 2}], "ssl": True}
    bad_ca = _node({**base, "host": "localhost", "ssl": {"ca": str(pki.other.ca_path)}}, "SELECT 1")
    assert bad_ca.get("code") in ("UNABLE_TO_VERIFY_LEAF_SIGNATURE", "SELF_SIGNED_CERT_IN_CHAIN"), bad_ca
    # node-postgres checks the name it connects to (servername), not the address.
    bad_host = _node({**base, "ssl": {"ca": str(pki.ca.ca_path), "servername": "wrong.example"}}, "SELECT 1")
    assert bad_host.get("code") == "ERR_TLS_CERT_ALTNAME_INVALID", bad_host


# ====================================================================== modes and negotiation


def test_client_certificate_required_with_verify(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki, mode="require", ca=str(pki.ca.ca_path), client_certs="verify")
    root = str(pki.ca.ca_path)
    with pytest.raises(psycopg.OperationalError, match=r"certificate required|alert"):
        _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=root))
    ok = _dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=root, sslcert=str(pki.client_cert),
              sslkey=str(pki.client_key))
    assert _psycopg(ok) == (True, "app")
    # A certificate from another CA is refused too.
    foreign_cert, foreign_key = pki.other.issue("app", client=True)
    with pytest.raises(psycopg.OperationalError):
        _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=root, sslcert=str(foreign_cert),
                      sslkey=str(foreign_key)))


def test_require_mode_refuses_plaintext_after_startup(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki, mode="require")
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(startup_packet({"user": "app", "database": "app"}))
        err = raw.read_error()
        assert (err["S"], err["C"], err["M"]) == ("FATAL", "28000", "TLS is required")
        assert raw.closed_within(2.0)
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        _psycopg(_dsn(proxy, sslmode="disable"))
    assert _psycopg(_dsn(proxy, sslmode="require")) == (True, "app")


def test_gssenc_request_answered_n_and_ssl_request_negotiation(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(special_request(GSSENC_REQUEST))
        assert raw.read_bytes(1) == b"N"
        raw.send(special_request(SSL_REQUEST))
        assert raw.read_bytes(1) == b"S"
    # Plaintext after the SSLRequest in the same packet: refused like PostgreSQL does (no injection).
    with RawPg(proxy.host, proxy.port) as raw:
        raw.send(special_request(SSL_REQUEST) + startup_packet({"user": "app", "database": "app"}))
        err = raw.read_error()
        assert (err["C"], err["M"]) == ("08P01", "received unencrypted data after SSL request")
        assert raw.closed_within(2.0)
    # TLS off: SSLRequest is answered N (and libpq's sslmode=require reports it).
    plain = proxy_factory({"routing": {"read_write_split": False}})
    with RawPg(plain.host, plain.port) as raw:
        raw.send(special_request(SSL_REQUEST))
        assert raw.read_bytes(1) == b"N"


def test_direct_tls_without_alpn_is_refused(proxy_factory: ProxyFactory, pki: Pki) -> None:
    proxy = _tls_proxy(proxy_factory, pki)
    ctx = ssl.create_default_context(cafile=str(pki.ca.ca_path))
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(startup_packet({"user": "app", "database": "app"}))
        data = tls.recv(4096)
        assert data[:1] == b"E" and b"28000" not in data
        assert b"08P01" in data and b"without ALPN" in data


def test_certificates_reread_on_reload_existing_connections_keep_theirs(
    proxy_factory: ProxyFactory, pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    proxy = proxy_factory({"routing": {"read_write_split": False}},
                          tls={"mode": "require", "cert": str(cert), "key": str(key)})
    old_root = str(pki.ca.ca_path)
    before = psycopg.connect(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=old_root),
                             autocommit=True)
    try:
        new_ca = TestCA(tmp_path / "rotated", "Rotated CA")
        new_cert, new_key = new_ca.issue("proxy2", ("localhost", "127.0.0.1"))
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        proxy.signal(signal.SIGHUP)
        proxy.wait_output("SIGHUP reload: reloaded")
        new_root = str(new_ca.ca_path)
        assert _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=new_root)) == (True, "app")
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=old_root))
        row = before.execute("SELECT 7").fetchone()  # the connection opened before the reload goes on
        assert row == (7,)
    finally:
        before.close()
    # A bad certificate file fails the reload and keeps the running one.
    cert.write_text("not a certificate\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_output("tls: cannot load tls.cert")
    assert _psycopg(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(new_ca.ca_path)))[0]


def test_show_clients_tls_column(proxy_factory: ProxyFactory, pki: Pki) -> None:
    """SHOW CLIENTS' `tls` (PgBouncer's column) names the protocol and cipher of a TLS client; '' in clear."""
    proxy = proxy_factory({"routing": {"read_write_split": False}, "admin": {"users": ["app"]}},
                          tls={"mode": "allow", "cert": str(pki.server_cert), "key": str(pki.server_key)})
    with psycopg.connect(_dsn(proxy, host="localhost", sslmode="verify-full", sslrootcert=str(pki.ca.ca_path),
                              application_name="secure"), autocommit=True), \
            psycopg.connect(_dsn(proxy, sslmode="disable", application_name="clear"), autocommit=True), \
            psycopg.connect(_dsn(proxy, sslmode="disable", dbname="pgbouncer"), autocommit=True,
                            prepare_threshold=None) as adm:
        cur = adm.execute("SHOW CLIENTS")
        cols = [d.name for d in cur.description or []]
        rows = {r[cols.index("application_name")]: r[cols.index("tls")] for r in cur.fetchall()}
    assert rows["secure"].startswith("TLSv1.") and "/" in rows["secure"], rows
    assert rows["clear"] == ""
