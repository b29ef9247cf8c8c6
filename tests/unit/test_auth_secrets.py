"""SASLprep as PostgreSQL does it, pg_authid secrets, SCRAM pass-through and the config keys that carry them."""

from __future__ import annotations

import base64
import hashlib

import pytest

from heliosproxy.backends.credentials import CredentialStore
from heliosproxy.config.load import parse_config
from heliosproxy.errors import ConfigError
from heliosproxy.protocol.auth import (
    ClientAuth,
    Credential,
    ScramClient,
    ScramSecret,
    ScramServer,
    md5_hash,
    md5_response,
    saslprep,
)

NODES = """\
nodes:
  - {name: primary, host: 127.0.0.1, port: 5432, role: primary}
"""


def verifier_text(s: ScramSecret) -> str:
    b = base64.b64encode
    return f"SCRAM-SHA-256${s.iterations}:{b(s.salt).decode()}${b(s.stored_key).decode()}:{b(s.server_key).decode()}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("apppass", b"apppass"),  # pure ASCII: as is (even control characters)
        ("a\x07b", b"a\x07b"),
        ("IX-\u2168", b"IX-IX"),  # NFKC
        ("I\u00adX", b"IX"),  # soft hyphen: mapped to nothing
        ("a\u00a0b\u00e9", "a b\u00e9".encode()),  # non-ASCII space: mapped to SPACE
        ("\u00ad", "\u00ad".encode()),  # empty after mapping: prohibited, raw bytes
        ("pw-\ue000-\u00e4", "pw-\ue000-\u00e4".encode()),  # private use: prohibited, raw bytes
        ("\u05d0a\u05d1", "\u05d0a\u05d1".encode()),  # RandAL mixed with L: raw bytes
        ("\u05d0\u05d1", "\u05d0\u05d1".encode()),  # RandAL only: fine
        (b"\xff\xfe-\xc3", b"\xff\xfe-\xc3"),  # not UTF-8: raw bytes
    ],
)
def test_saslprep_like_postgresql(given: str | bytes, expected: bytes) -> None:
    assert saslprep(given) == expected


def test_verifier_and_md5_parsing() -> None:
    s = ScramSecret.from_password("pw", salt=b"0123456789abcdef")
    cred = Credential.parse(verifier_text(s))
    assert cred.scram == s and cred.kind == "scram" and cred.password is None
    assert Credential.parse("md5" + md5_hash("bob", "pw")).md5 == md5_hash("bob", "pw")
    assert Credential.parse("plain text").password == "plain text"
    with pytest.raises(ValueError):
        Credential.parse("SCRAM-SHA-256$4096:abc$def")
    assert "pw" not in repr(Credential(password="pw")) and "secret" not in repr(Credential.parse("md5" + "0" * 32))


def test_pass_through_answers_a_server_with_the_clients_key() -> None:
    # The proxy verifies a client against a verifier, then logs in to a server holding the same one.
    secret = ScramSecret.from_password("IX-\u2168")
    proxy = ScramServer(secret)
    client = ScramClient("IX-\u2168")
    final = proxy.handle_final(client.final_message(proxy.handle_first(client.first_message())))
    assert final is not None and proxy.client_key is not None
    client.verify_final(final)
    server = ScramServer(secret)
    through = ScramClient(None, secret=secret, client_key=proxy.client_key)
    server_final = server.handle_final(through.final_message(server.handle_first(through.first_message())))
    assert server_final is not None
    through.verify_final(server_final)
    # Another verifier on the server (other salt): a clear error, not a wrong proof.
    other = ScramServer(ScramSecret.from_password("IX-\u2168"))
    through = ScramClient(None, secret=secret, client_key=proxy.client_key)
    with pytest.raises(Exception, match="same verifier"):
        through.final_message(other.handle_first(through.first_message()))


def test_client_auth_mock_salt_is_stable_per_name() -> None:
    key = b"k" * 32

    def salt_of(user: str, cred: Credential | None) -> str:
        auth = ClientAuth("scram-sha-256", user, cred, key)
        auth.start()
        first = b"n,,n=,r=abcdef"
        step = auth.step(b"SCRAM-SHA-256\x00" + len(first).to_bytes(4, "big") + first)
        return step.reply[9:].decode().split(",")[1]

    assert salt_of("ghost", None) == salt_of("ghost", None)
    assert salt_of("ghost", None) != salt_of("ghost2", None)
    assert salt_of("bob", Credential(password="pw")) == salt_of("bob", None)


def test_md5_client_auth_against_a_hash() -> None:
    cred = Credential.parse("md5" + md5_hash("bob", "pw"))
    auth = ClientAuth("md5", "bob", cred, b"k" * 32)
    request = auth.start()
    salt = request[-4:]
    inner = hashlib.md5(b"pwbob").hexdigest()
    assert auth.step(md5_response(inner, salt) + b"\x00").done
    auth = ClientAuth("md5", "bob", cred, b"k" * 32)
    auth.start()
    assert auth.step(b"md5" + b"0" * 32 + b"\x00").failed


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        (
            "users:\n  - {name: app, password: 'SCRAM-SHA-256$4096:abc'}\n",
            "users[0].password: looks like a SCRAM-SHA-256 verifier but is malformed",
        ),
        (
            "users:\n  - {name: app, password: md5" + "0" * 32 + "}\n",
            "users[0].password: user 'app' has an md5 hash, which cannot verify SCRAM-SHA-256 clients",
        ),
        ("health: {password: x}\n", "health.password: needs health.user"),
        (
            "auth: {auth_user: {name: a, password: '" + verifier_text(ScramSecret.from_password("x")) + "'}}\n",
            "auth.auth_user.password: must be a plaintext password or an md5 hash",
        ),
        (
            "users:\n  - {name: app, password: '" + verifier_text(ScramSecret.from_password("x")) + "'}\n"
            "health: {user: app}\n",
            "health.user: user 'app' has only a SCRAM verifier",
        ),
    ],
)
def test_config_refuses_secrets_that_cannot_work(tail: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(NODES + tail, "bad.yaml")
    assert error in str(info.value)
    assert "4096:abc" not in str(info.value)  # never echo a secret


def test_auth_query_keys_and_users_without_passwords() -> None:
    config = parse_config(
        NODES + "auth:\n  auth_user: {name: pgbouncer, password: pw}\n  auth_query_ttl: 30s\n"
        "users:\n  - {name: app, pool_size: 3}\nhealth: {user: monitor, password: mpw}\n",
        "ok.yaml",
    )
    assert config.auth.auth_user is not None and config.auth.auth_user.name == "pgbouncer"
    assert config.auth.auth_query == "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"
    assert config.auth.auth_query_ttl == 30.0
    assert config.health.password == "mpw"


def test_unknown_users_get_the_iteration_count_of_the_real_verifiers() -> None:
    real = ScramSecret.from_password("pw", iterations=8192)
    config = parse_config(NODES + f"users:\n  - {{name: app, password: '{verifier_text(real)}'}}\n", "ok.yaml")
    store = CredentialStore(config)
    first = b"n,,n=,r=abcdef"
    for user in ("app", "ghost"):
        auth = store.client_auth(user, store.cached(user)[1])
        auth.start()
        reply = auth.step(b"SCRAM-SHA-256\x00" + len(first).to_bytes(4, "big") + first).reply
        assert reply[9:].decode().endswith(",i=8192"), user
