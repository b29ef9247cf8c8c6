"""Hashed secrets (pg_authid SCRAM verifiers, md5 hashes), SCRAM pass-through, auth_query, SASLprep, no user oracle."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from heliosproxy.protocol.auth import ScramSecret
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess
from tests.helpers.rawpg import RawPg, _scram_client_proof, cstr, msg, startup_packet

NINE = "IX-\u2168"  # 'IX-Ⅸ': SASLprep (NFKC) makes it 'IX-IX'
BAD = "pw-\ue000-\u00e4"  # a private-use character: SASLprep fails, PostgreSQL hashes the raw bytes
EXTRA_SQL = [
    "CREATE ROLE authq LOGIN SUPERUSER PASSWORD 'authqpass'",
    f"CREATE ROLE nine LOGIN PASSWORD '{NINE}'",
    f"CREATE ROLE bad LOGIN PASSWORD '{BAD}'",
    "GRANT ALL ON DATABASE app TO nine, bad",
]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """A cluster of this module's own (roles are added): a primary and one standby."""
    with PgCluster(standbys=1) as c:
        for sql in EXTRA_SQL:
            c.sql(c.primary, sql)
        c.wait_replay()
        yield c


def verifier(pg: PgCluster, role: str) -> str:
    return pg.sql(pg.primary, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


def _users(pg: PgCluster, *roles: str) -> list[dict[str, str]]:
    return [{"name": r, "password": verifier(pg, r)} for r in roles]


def _connect(proxy: ProxyProcess, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(user=user, password=password), autocommit=True, connect_timeout=5)


def _psql(proxy: ProxyProcess, user: str, password: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="5")
    dsn = f"host={proxy.host} port={proxy.port} user={user} dbname=app"
    return subprocess.run(["psql", "-X", "-At", "-d", dsn, "-c", sql], env=env, text=True,
                          capture_output=True, timeout=30)


def _asyncpg_user(proxy: ProxyProcess, user: str, password: str) -> str:
    async def go() -> str:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=user, password=password,
                                     database="app", timeout=5)
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    return asyncio.run(go())


def _direct_ok(pg: PgCluster, user: str, password: str) -> None:
    with psycopg.connect(pg.dsn(pg.primary, user=user, password=password, dbname="app"), connect_timeout=5) as c:
        assert c.execute("SELECT current_user").fetchone() == (user,)


# ====================================================================== verifiers in users
@pytest.fixture(scope="module", params=["transaction", "session"])
def verifier_proxy(request: pytest.FixtureRequest, pg: PgCluster) -> Iterator[ProxyProcess]:
    # Every user is a verifier copied from pg_authid; the health checks have their own password.
    config = {
        "nodes": pg.node_config(),
        "users": _users(pg, "app", "nine", "bad"),
        "auth": {"method": "scram-sha-256"},
        "health": {"user": "authq", "password": "${HEALTH_PW}"},
        "pool": {"mode": request.param},
    }
    with ProxyProcess(config, env={"HEALTH_PW": "authqpass"}) as p:
        yield p


def test_verifier_logs_in_with_real_clients(verifier_proxy: ProxyProcess, pg: PgCluster) -> None:
    proxy = verifier_proxy
    with _connect(proxy, "app", "apppass") as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")
        # Transaction mode sends reads to the standby: pass-through works there too (same pg_authid).
        on_standby = proxy.config["pool"]["mode"] == "transaction"
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (on_standby,)
    res = _psql(proxy, "app", "apppass", "SELECT current_user")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "app"
    assert _asyncpg_user(proxy, "app", "apppass") == "app"
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        _connect(proxy, "app", "wrong-pass-123")
    out = proxy.output()
    assert "apppass" not in out and "wrong-pass-123" not in out
    assert verifier(pg, "app").split("$")[2] not in out, "the proxy logged a StoredKey"


def test_pass_through_opens_new_server_connections(verifier_proxy: ProxyProcess, pg: PgCluster) -> None:
    # Two clients logged in; the first holds a transaction, so the second needs a server connection
    # of its own, opened with the ClientKey remembered from a login that is already over.
    proxy = verifier_proxy
    with _connect(proxy, "app", "apppass") as c1, _connect(proxy, "app", "apppass") as c2:
        c1.execute("BEGIN")
        c1.execute("SELECT pg_backend_pid()")
        pids = set()
        for _ in range(3):
            row = c2.execute("SELECT pg_backend_pid(), current_user").fetchone()
            assert row is not None and row[1] == "app"
            pids.add(row[0])
        c1_pid = c1.execute("SELECT pg_backend_pid()").fetchone()
        assert c1_pid is not None and c1_pid[0] not in pids
        c1.execute("COMMIT")
    if proxy.config["pool"]["mode"] != "transaction":
        return
    # The server ends every pooled connection of app; a logged-in client's next statements make the
    # pool log in again, long after any client's login.
    with _connect(proxy, "app", "apppass") as c3:
        assert c3.execute("SELECT 1").fetchone() == (1,)
        pg.sql(pg.primary, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert c3.execute("SELECT current_user").fetchone() == ("app",)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "the pool did not log in again"
                time.sleep(0.1)


def test_saslprep_with_verifiers(verifier_proxy: ProxyProcess, pg: PgCluster) -> None:
    proxy = verifier_proxy
    for user, password in (("nine", NINE), ("nine", "IX-IX"), ("bad", BAD)):
        _direct_ok(pg, user, password)  # what PostgreSQL itself accepts
        with _connect(proxy, user, password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)
    res = _psql(proxy, "nine", NINE, "SELECT current_user")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "nine"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(proxy, "bad", "pw-\ue001-\u00e4")


def test_verifier_that_differs_from_the_servers(proxy_factory: ProxyFactory, pg: PgCluster) -> None:
    # Same password, another salt: the client is verified, but the server cannot be answered.
    s = ScramSecret.from_password("apppass")
    mine = (f"SCRAM-SHA-256${s.iterations}:{base64.b64encode(s.salt).decode()}$"
            f"{base64.b64encode(s.stored_key).decode()}:{base64.b64encode(s.server_key).decode()}")
    proxy = proxy_factory({"users": [{"name": "app", "password": mine}],
                           "health": {"user": "authq", "password": "authqpass"}}, cluster=pg)
    with pytest.raises(psycopg.OperationalError, match="same verifier"):
        _connect(proxy, "app", "apppass")


# ====================================================================== md5 hashes
def test_md5_hash_users(proxy_factory: ProxyFactory, pg: PgCluster) -> None:
    md5 = verifier(pg, "md5user")
    assert md5.startswith("md5")
    proxy = proxy_factory(
        {
            "users": [{"name": "md5user", "password": md5}, *_users(pg, "app")],
            "auth": {"method": "md5"},
            "health": {"user": "authq", "password": "authqpass"},
        },
        cluster=pg,
    )
    # md5user: md5 against the hash on the client side, md5 with the hash on the server side.
    with psycopg.connect(proxy.dsn(user="md5user", password="md5pass", require_auth="md5"),
                         autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5user",)
    res = _psql(proxy, "md5user", "md5pass", "SELECT current_user")
    assert res.returncode == 0, res.stderr
    # app has a SCRAM verifier: like PostgreSQL, md5 requested means SCRAM for it.
    with psycopg.connect(proxy.dsn(require_auth="scram-sha-256"), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "md5user"'):
        _connect(proxy, "md5user", "wrong")


# ====================================================================== auth_query
def test_auth_query(proxy_factory: ProxyFactory, pg: PgCluster) -> None:
    proxy = proxy_factory(
        {
            "users": [],
            "auth": {"method": "scram-sha-256", "auth_user": {"name": "authq", "password": "authqpass"},
                     "auth_query_ttl": "1s"},
            "health": {"user": "authq", "password": "authqpass"},
        },
        cluster=pg,
    )
    with _connect(proxy, "app", "apppass") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    assert _asyncpg_user(proxy, "app", "apppass") == "app"
    with _connect(proxy, "nine", NINE) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("nine",)
    res = _psql(proxy, "bad", BAD, "SELECT current_user")
    assert res.returncode == 0, res.stderr
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        _connect(proxy, "app", "wrong")
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "nosuch"'):
        _connect(proxy, "nosuch", "wrong")
    # On the wire an unknown name looks like a real one: same exchange, a stable salt of the same size.
    for user in ("app", "nosuch"):
        firsts = [_scram_attempt(proxy, user) for _ in range(2)]
        salts = {f[0].split(",")[1] for f in firsts}
        assert len(salts) == 1 and len(base64.b64decode(salts.pop()[2:])) == 16, user
        assert all(f[2]["M"] == f'password authentication failed for user "{user}"' for f in firsts)
    # A role created later: refused while its negative cache entry lives, accepted once it expired.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(proxy, "late", "latepass")
    pg.sql(pg.primary, "CREATE ROLE late LOGIN PASSWORD 'latepass'")
    try:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(proxy, "late", "latepass")
        assert time.monotonic() - started < 0.9, "too slow to test the cache"
        deadline = time.monotonic() + 10
        while True:
            try:
                with _connect(proxy, "late", "latepass") as conn:
                    assert conn.execute("SELECT current_user").fetchone() == ("late",)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "auth_query_ttl did not expire the cached refusal"
                time.sleep(0.2)
    finally:
        pg.sql(pg.primary, "DROP ROLE late")
    # The lookups ran on the auth user's own connection.
    rows = pg.sql(pg.primary, "SELECT usename FROM pg_stat_activity WHERE application_name = 'heliosproxy-auth'")
    assert rows.split() == ["authq"]


def test_auth_query_md5(proxy_factory: ProxyFactory, pg: PgCluster) -> None:
    proxy = proxy_factory(
        {
            "users": [],
            "auth": {"method": "md5", "auth_user": {"name": "authq", "password": "authqpass"}},
            "health": {"user": "authq", "password": "authqpass"},
        },
        cluster=pg,
    )
    with psycopg.connect(proxy.dsn(user="md5user", password="md5pass", require_auth="md5"),
                         autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("md5user",)
    with _connect(proxy, "app", "apppass") as conn:  # a verifier: SCRAM, like PostgreSQL
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


# ====================================================================== plaintext + SASLprep
def test_saslprep_with_plaintext_config(proxy_factory: ProxyFactory, pg: PgCluster) -> None:
    proxy = proxy_factory(
        {"users": [{"name": "nine", "password": NINE}, {"name": "bad", "password": BAD},
                   {"name": "app", "password": "apppass"}]},
        cluster=pg,
    )
    for user, password in (("nine", NINE), ("nine", "IX-IX"), ("bad", BAD)):
        with _connect(proxy, user, password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)
    res = _psql(proxy, "nine", NINE, "SELECT current_user")
    assert res.returncode == 0, res.stderr
    assert _asyncpg_user(proxy, "bad", BAD) == "bad"


# ====================================================================== no user oracle
def _scram_attempt(proxy: ProxyProcess, user: str) -> tuple[str, float, dict[str, str], float]:
    """A SCRAM login with a wrong password: (server-first-message, seconds from the proof to the refusal,
    error fields, seconds of the whole exchange)."""
    with RawPg(proxy.host, proxy.port) as raw:
        begun = time.perf_counter()
        raw.send(startup_packet({"user": user, "database": "app"}))
        kind, body = raw.read_message()
        assert (kind, struct.unpack_from("!I", body)[0]) == ("R", 10)
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n=,r={nonce}".encode()
        first = b"n,," + bare
        raw.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
        kind, body = raw.read_message()
        assert (kind, struct.unpack_from("!I", body)[0]) == ("R", 11)
        server_first = body[4:].decode()
        attrs = dict(p.split("=", 1) for p in server_first.split(","))
        without_proof = f"c=biws,r={attrs['r']}".encode()
        auth_message = bare + b"," + body[4:] + b"," + without_proof
        proof, _ = _scram_client_proof("wrong-password", base64.b64decode(attrs["s"]), int(attrs["i"]), auth_message)
        started = time.perf_counter()
        raw.send(msg(b"p", without_proof + b",p=" + base64.b64encode(proof)))
        fields = raw.read_error()
        done = time.perf_counter()
        return server_first, done - started, fields, done - begun


@pytest.mark.parametrize("workers", [1, 2])
def test_unknown_user_looks_like_a_real_one(proxy_factory: ProxyFactory, pg: PgCluster, workers: int) -> None:
    # With 2 workers, attempts land on either: the salts must not tell them apart either.
    proxy = proxy_factory(
        {"users": [*_users(pg, "app"), {"name": "plain", "password": "plainpass"}],
         "health": {"user": "authq", "password": "authqpass"}},
        cluster=pg,
        workers=workers,
    )
    seen: dict[str, list[tuple[str, float, dict[str, str], float]]] = {}
    for _ in range(15):
        for user in ("app", "plain", "nosuchuser"):
            seen.setdefault(user, []).append(_scram_attempt(proxy, user))
    shapes = {}
    for user, attempts in seen.items():
        firsts = [dict(p.split("=", 1) for p in a[0].split(",")) for a in attempts]
        assert [list(f) for f in firsts] == [["r", "s", "i"]] * len(firsts), user
        salts = {f["s"] for f in firsts}
        assert len(salts) == 1, f"{user}: the salt changes between attempts"
        assert {f["i"] for f in firsts} == {"4096"}, user
        assert {len(f["r"]) for f in firsts} == {len(firsts[0]["r"])}
        shapes[user] = (len(base64.b64decode(salts.pop())), len(firsts[0]["r"]))
        for _, _, fields, _ in attempts:
            assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
            assert fields["M"] == f'password authentication failed for user "{user}"'
    assert shapes["app"] == shapes["plain"] == shapes["nosuchuser"], shapes
    # Salts differ between users (derived from the name), and between unknown names.
    other = _scram_attempt(proxy, "nosuchuser2")[0]
    assert other.split(",")[1] != seen["nosuchuser"][0][0].split(",")[1]
    # Same work: the refusal, and the whole exchange, take about as long for each user (the quickest
    # of 15 attempts within 5 ms or a factor 2; a PBKDF2 per attempt for unknown users would show in
    # every attempt). The quickest, not the median: a loaded machine only ever adds time.
    for which in (1, 3):
        quickest = {u: min(float(a[which]) for a in attempts) for u, attempts in seen.items()}
        fastest, slowest = min(quickest.values()), max(quickest.values())
        assert slowest - fastest < 0.005 or slowest < 2 * fastest, quickest
