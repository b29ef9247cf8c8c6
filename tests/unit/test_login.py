"""The login state machine without sockets: startup and password packets in (whole and in 1/3/7-byte chunks),
the exact bytes and actions out."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

import pytest

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import ClientAuth, Credential, ScramClient, ScramSecret, md5_password
from heliosproxy.session import login
from heliosproxy.session.login import (
    AUTH_FAILED,
    FATAL,
    VIOLATION,
    Action,
    Authenticated,
    Cancel,
    CheckPassword,
    Drop,
    Fail,
    Login,
    Lookup,
    Send,
    StartTls,
    Startup,
)

CHUNKS = [None, 1, 3, 7]
MOCK_KEY = b"k" * 32
# users[] of the proxy the Glue plays: a plaintext password, an md5 hash, a SCRAM verifier.
USERS = {
    "alice": Credential(password="secret"),
    "bob": Credential.parse("md5" + hashlib.md5(b"hunter2bob").hexdigest()),
    "carol": Credential(scram=ScramSecret.from_password("s3cr3t", salt=b"0123456789abcdef", iterations=4096)),
}


def packet(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


def startup(**params: str) -> bytes:
    return messages.startup_message(params)


def startup_v(major: int, minor: int, params: dict[str, str]) -> bytes:
    body = struct.pack("!I", major << 16 | minor)
    body += b"".join(messages.cstr(k) + messages.cstr(v) for k, v in params.items()) + b"\x00"
    return packet(body)


SSL_REQUEST = packet(struct.pack("!I", codes.SSL_REQUEST))
GSSENC_REQUEST = packet(struct.pack("!I", codes.GSSENC_REQUEST))


def cancel_request(pid: int, key: int) -> bytes:
    return packet(struct.pack("!III", codes.CANCEL_REQUEST, pid, key))


def password(body: bytes) -> bytes:
    return messages.msg(codes.F_PASSWORD, body)


def sasl_initial(data: bytes, mech: str = "SCRAM-SHA-256") -> bytes:
    return password(messages.cstr(mech) + struct.pack("!i", len(data)) + data)


CLEARTEXT_REQUEST = messages.auth_request(codes.AUTH_CLEARTEXT)
SASL_REQUEST = messages.auth_request(codes.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")


class Glue:
    """Plays ClientSession: answers Lookup and CheckPassword as a proxy with USERS and this method would."""

    def __init__(self, method: str = "trust", plugin: Callable[[str], tuple[bool | None, str]] | None = None):
        self.method = method
        self.plugin = plugin
        self.auth: ClientAuth | None = None

    def run(self, m: Login, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            out.append(a)
            if isinstance(a, Lookup):
                if self.method == "trust":
                    out.extend(self.run(m, m.accept() if a.user in USERS else m.reject()))
                else:
                    self.auth = ClientAuth(self.method, a.user, USERS.get(a.user), MOCK_KEY)
                    out.extend(self.run(m, m.begin(self.auth)))
            elif isinstance(a, CheckPassword):
                assert self.plugin is not None
                verdict, reason = self.plugin(a.password)
                if verdict is True:
                    out.extend(self.run(m, m.accept()))
                elif verdict is False:
                    out.extend(self.run(m, m.reject("28000", reason)))
                else:
                    cred = USERS.get(m.user)
                    ok = cred is not None and cred.check_cleartext(m.user, a.password) is not None
                    out.extend(self.run(m, m.accept() if ok else m.reject()))
        return out


def feed(m: Login, glue: Glue, data: bytes, chunk: int | None) -> list[Action]:
    """`data` into the machine whole or in `chunk`-byte pieces; every action, the glue's answers expanded."""
    out: list[Action] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        out.extend(glue.run(m, m.receive(data[i : i + step])))
    return out


def started(user: str, database: str | None = None, params: dict[str, str] | None = None,
            settings: dict[str, str] | None = None, attrs: dict[str, str] | None = None) -> Startup:
    p = params if params is not None else {"user": user}
    return Startup(user, database or user, p.get("application_name", ""), p, settings or {}, attrs or {})


def failed(user: str) -> Fail:
    return Fail("28P01", f'password authentication failed for user "{user}"', AUTH_FAILED)


OPTIONS = "-c search_path=a\\ b --work-mem=4MB -c helios.tenant=acme -cstatement_timeout=5s junk -c noequals"
OPTIONS_PARAMS = {"user": "alice", "database": "app", "application_name": "psql", "TimeZone": "UTC",
                  "helios.Route": "standby", "options": OPTIONS}


def plugin_ok(pw: str) -> tuple[bool | None, str]:
    """A plugin that knows one password and denies the rest."""
    return (True, "") if pw == "letmein" else (False, "nope")


# Each case: the machine's settings, the glue, the client's bytes, the actions out, the state at the end.
CASES: dict[str, tuple[dict[str, bool], Glue, bytes, list[Action], int]] = {
    "trust, known user": (
        {}, Glue(), startup(user="alice", database="app"),
        [started("alice", "app", {"user": "alice", "database": "app"}), Lookup("alice"), Authenticated()],
        login.DONE,
    ),
    "trust, unknown user: 28P01": (
        {}, Glue(), startup(user="mallory"),
        [started("mallory"), Lookup("mallory"), failed("mallory")], login.CLOSED,
    ),
    "options, startup settings and helios.* attributes": (
        {}, Glue(), startup(**OPTIONS_PARAMS),
        [started("alice", "app", OPTIONS_PARAMS,
                 {"application_name": "psql", "timezone": "UTC", "search_path": "a b", "work_mem": "4MB",
                  "statement_timeout": "5s"},
                 {"route": "standby", "tenant": "acme"}),
         Lookup("alice"), Authenticated()],
        login.DONE,
    ),
    "SSLRequest without TLS: N, then the startup": (
        {}, Glue(), SSL_REQUEST + startup(user="alice"),
        [Send(b"N"), started("alice"), Lookup("alice"), Authenticated()], login.DONE,
    ),
    "GSSENCRequest: N, then the startup": (
        {"tls_available": True}, Glue(), GSSENC_REQUEST + startup(user="alice"),
        [Send(b"N"), started("alice"), Lookup("alice"), Authenticated()], login.DONE,
    ),
    "SSLRequest with TLS: start TLS": (
        {"tls_available": True}, Glue(), SSL_REQUEST, [StartTls(False, b"")], login.STARTUP,
    ),
    "TLS required, plaintext startup: 28000": (
        {"tls_required": True}, Glue(), startup(user="alice"), [Fail("28000", "TLS is required")], login.CLOSED,
    ),
    "cancel request": (
        {}, Glue(), cancel_request(1234, 0xDEADBEEF), [Cancel(1234, 0xDEADBEEF)], login.CLOSED,
    ),
    "cancel request too short": (
        {}, Glue(), packet(struct.pack("!II", codes.CANCEL_REQUEST, 1)),
        [Fail("08P01", "invalid cancel request", VIOLATION)], login.CLOSED,
    ),
    "protocol 2.0: 0A000": (
        {}, Glue(), startup_v(2, 0, {"user": "alice"}),
        [Fail("0A000", "unsupported frontend protocol 2.0: server supports 3.0 to 3.0")], login.CLOSED,
    ),
    "protocol 3.2 and _pq_ options: NegotiateProtocolVersion, then the login": (
        {}, Glue(), startup_v(3, 2, {"user": "alice", "_pq_.x": "1"}),
        [Send(messages.msg(codes.B_NEGOTIATE_VERSION, struct.pack("!II", codes.PROTOCOL_3_0, 1) + b"_pq_.x\x00")),
         started("alice"), Lookup("alice"), Authenticated()],
        login.DONE,
    ),
    "oversized startup packet: closed without a word": (
        {}, Glue(), struct.pack("!I", codes.MAX_STARTUP_PACKET + 1) + b"\x00" * 16,
        [Drop("invalid length of startup packet")], login.CLOSED,
    ),
    "startup packet shorter than 8: closed without a word": (
        {}, Glue(), struct.pack("!I", 4) + b"\x00" * 8, [Drop("invalid length of startup packet")], login.CLOSED,
    ),
    "startup packet not NUL-terminated": (
        {}, Glue(), packet(struct.pack("!I", codes.PROTOCOL_3_0) + b"user\x00alice"),
        [Fail("08P01", "invalid startup packet layout: expected terminator as last byte", VIOLATION)], login.CLOSED,
    ),
    "no user: 28000": (
        {}, Glue(), startup(database="app"),
        [Fail("28000", "no PostgreSQL user name specified in startup packet")], login.CLOSED,
    ),
    "replication: 08P01": (
        {}, Glue(), startup(user="alice", replication="database"),
        [Fail("08P01", "replication connections are not supported by the proxy")], login.CLOSED,
    ),
    "plugin auth, password pipelined after the startup": (
        {"plugin_auth": True}, Glue(plugin=plugin_ok), startup(user="zed") + password(b"letmein\x00"),
        [started("zed"), Send(CLEARTEXT_REQUEST), CheckPassword("letmein"), Authenticated()], login.DONE,
    ),
    "plugin auth denied: 28000 with the plugin's reason": (
        {"plugin_auth": True}, Glue(plugin=plugin_ok), startup(user="zed") + password(b"bad\x00"),
        [started("zed"), Send(CLEARTEXT_REQUEST), CheckPassword("bad"), Fail("28000", "nope", AUTH_FAILED)],
        login.CLOSED,
    ),
    "plugin without a verdict: the proxy's users decide": (
        {"plugin_auth": True}, Glue(plugin=lambda pw: (None, "")), startup(user="alice") + password(b"secret\x00"),
        [started("alice"), Send(CLEARTEXT_REQUEST), CheckPassword("secret"), Authenticated()], login.DONE,
    ),
    "not a password message: 08P01": (
        {"plugin_auth": True}, Glue(plugin=plugin_ok), startup(user="zed") + messages.query("SELECT 1"),
        [started("zed"), Send(CLEARTEXT_REQUEST), Fail("08P01", "expected password response, got message type 'Q'",
                                                        VIOLATION)],
        login.CLOSED,
    ),
    "oversized password message: 08P01": (
        {"plugin_auth": True}, Glue(plugin=plugin_ok),
        startup(user="zed") + b"p" + struct.pack("!I", codes.MAX_STARTUP_PACKET + 1),
        [started("zed"), Send(CLEARTEXT_REQUEST), Fail("08P01", "invalid password packet size", VIOLATION)],
        login.CLOSED,
    ),
}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", list(CASES))
def test_login_table(case: str, chunk: int | None) -> None:
    settings, glue, data, expected, state = CASES[case]
    m = Login(bytearray(), **settings)
    assert feed(m, glue, data, chunk) == expected
    assert m.state == state


def test_bytes_after_login_stay_for_the_session() -> None:
    for chunk in CHUNKS:
        buf = bytearray()
        m = Login(buf)
        q = messages.query("SELECT 1")
        assert feed(m, Glue(), startup(user="alice") + q, chunk)[-1] == Authenticated()
        assert bytes(buf) == q


def test_sslrequest_then_startup_over_tls() -> None:
    for chunk in CHUNKS:
        m = Login(bytearray(), tls_available=True, tls_required=True)
        assert feed(m, Glue(), SSL_REQUEST, chunk) == [StartTls(False, b"")]
        # The TLS layer now feeds the decrypted bytes: a second SSLRequest inside TLS gets N.
        out = feed(m, Glue(), SSL_REQUEST + startup(user="alice"), chunk)
        assert out == [Send(b"N"), started("alice"), Lookup("alice"), Authenticated()]


def test_plaintext_injected_after_sslrequest_is_refused() -> None:
    """CVE-2021-23222: bytes behind the SSLRequest, before the handshake."""
    m = Login(bytearray(), tls_available=True)
    out = feed(m, Glue(), SSL_REQUEST + startup(user="alice"), None)
    assert out == [Fail("08P01", "received unencrypted data after SSL request", VIOLATION)]


def test_direct_tls_client_hello() -> None:
    hello = b"\x16\x03\x01\x00\x05hello"
    m = Login(bytearray(), tls_available=True)
    assert feed(m, Glue(), hello, None) == [StartTls(True, hello)]
    m = Login(bytearray())  # no TLS configured: not a startup packet of a sane length
    assert feed(m, Glue(), hello, None) == [Drop("invalid length of startup packet")]


# ---------------------------------------------------------------------- md5
def _md5_login(user: str, pw: str, chunk: int | None) -> tuple[list[Action], list[Action], Glue]:
    m = Login(bytearray())
    glue = Glue("md5")
    first = feed(m, glue, startup(user=user), chunk)
    request = first[-1]
    assert isinstance(request, Send) and len(request.data) == 13
    salt = request.data[9:13]
    assert request == Send(messages.auth_request(codes.AUTH_MD5, salt))
    return first, feed(m, glue, password(md5_password(user, pw, salt) + b"\x00"), chunk), glue


@pytest.mark.parametrize("chunk", CHUNKS)
def test_md5_right_password(chunk: int | None) -> None:
    first, out, glue = _md5_login("alice", "secret", chunk)
    assert first[:2] == [started("alice"), Lookup("alice")]
    assert out == [Authenticated(glue.auth)] and glue.auth is not None


@pytest.mark.parametrize("chunk", CHUNKS)
def test_md5_hash_in_users(chunk: int | None) -> None:
    _, out, glue = _md5_login("bob", "hunter2", chunk)
    assert out == [Authenticated(glue.auth)]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("user", ["alice", "mallory"])  # wrong password; unknown user (same answer)
def test_md5_wrong_password(chunk: int | None, user: str) -> None:
    _, out, _ = _md5_login(user, "wrong", chunk)
    assert out == [failed(user)]


# ---------------------------------------------------------------------- SCRAM-SHA-256
def _scram_first(user: str, chunk: int | None, method: str = "scram-sha-256") -> tuple[Login, Glue]:
    m = Login(bytearray())
    glue = Glue(method)
    assert feed(m, glue, startup(user=user), chunk) == [started(user), Lookup(user), Send(SASL_REQUEST)]
    return m, glue


def _sasl_payload(action: Action, code: int) -> bytes:
    assert isinstance(action, Send) and action.data[0] == codes.B_AUTH
    assert struct.unpack_from("!I", action.data, 5)[0] == code
    return action.data[9:]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("user", "pw", "method"), [
    ("alice", "secret", "scram-sha-256"),  # plaintext password in users
    ("carol", "s3cr3t", "scram-sha-256"),  # SCRAM verifier in users
    ("carol", "s3cr3t", "md5"),  # md5 asked for, only a verifier known: SCRAM, as PostgreSQL does
])
def test_scram_right_password(chunk: int | None, user: str, pw: str, method: str) -> None:
    m, glue = _scram_first(user, chunk, method)
    client = ScramClient(pw)
    out = feed(m, glue, sasl_initial(client.first_message()), chunk)
    assert len(out) == 1
    server_first = _sasl_payload(out[0], codes.AUTH_SASL_CONTINUE)
    assert server_first.startswith(b"r=" + client.nonce.encode())
    out = feed(m, glue, password(client.final_message(server_first)), chunk)
    assert len(out) == 2 and out[1] == Authenticated(glue.auth)
    client.verify_final(_sasl_payload(out[0], codes.AUTH_SASL_FINAL))  # the proxy proved it knows the secret
    assert m.state == login.DONE


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("user", ["alice", "carol", "mallory"])
def test_scram_wrong_password(chunk: int | None, user: str) -> None:
    m, glue = _scram_first(user, chunk)
    client = ScramClient("wrong")
    out = feed(m, glue, sasl_initial(client.first_message()), chunk)
    server_first = _sasl_payload(out[0], codes.AUTH_SASL_CONTINUE)
    assert feed(m, glue, password(client.final_message(server_first)), chunk) == [failed(user)]
    assert m.state == login.CLOSED


SCRAM_FIRST_ERRORS = {
    "not n or y": (sasl_initial(b"x,,n=,r=abc"), Fail("08P01", "malformed SCRAM client-first-message", VIOLATION)),
    "no nonce": (sasl_initial(b"n,,n="), Fail("08P01", "SCRAM client nonce missing", VIOLATION)),
    "channel binding": (sasl_initial(b"p=tls-server-end-point,,n=,r=abc"),
                        Fail("08P01", "channel binding is not supported", VIOLATION)),
    "no mechanism terminator": (password(b"SCRAM-SHA-256"), Fail("08P01", "malformed SCRAM message", VIOLATION)),
    "other mechanism": (sasl_initial(b"n,,n=,r=abc", mech="PLAIN"),
                        Fail("28000", "client selected an invalid SASL authentication mechanism 'PLAIN'", FATAL)),
}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", list(SCRAM_FIRST_ERRORS))
def test_scram_malformed_client_first(chunk: int | None, case: str) -> None:
    m, glue = _scram_first("alice", chunk)
    data, fail = SCRAM_FIRST_ERRORS[case]
    assert feed(m, glue, data, chunk) == [fail]
    assert m.state == login.CLOSED


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", ["no proof", "nonce mismatch", "channel binding mismatch"])
def test_scram_malformed_client_final(chunk: int | None, case: str) -> None:
    m, glue = _scram_first("alice", chunk)
    client = ScramClient("secret")
    out = feed(m, glue, sasl_initial(client.first_message()), chunk)
    server_first = _sasl_payload(out[0], codes.AUTH_SASL_CONTINUE)
    final = client.final_message(server_first)
    rnonce = server_first.split(b",")[0][2:]
    data, message = {
        "no proof": (final[: final.rindex(b",p=")], "malformed SCRAM client-final-message"),
        "nonce mismatch": (final.replace(rnonce, rnonce[:-2] + b"xx"), "SCRAM nonce mismatch"),
        "channel binding mismatch": (final.replace(b"c=biws", b"c=" + base64.b64encode(b"y,,")),
                                     "SCRAM channel binding mismatch"),
    }[case]
    assert feed(m, glue, password(data), chunk) == [Fail("08P01", message, VIOLATION)]


def test_password_waits_for_the_credential_lookup() -> None:
    """auth_query: a password message that arrives before the lookup ends stays buffered until begin()."""
    buf = bytearray()
    m = Login(buf)
    out = m.receive(startup(user="alice") + password(b"early\x00"))
    assert out == [started("alice"), Lookup("alice")]
    assert m.state == login.WAIT and bytes(buf) == password(b"early\x00")
    auth = ClientAuth("md5", "alice", USERS["alice"], MOCK_KEY)
    out = m.begin(auth)
    assert isinstance(out[0], Send) and out[1:] == [failed("alice")]  # read, and wrong for this salt


def test_parse_options() -> None:
    assert login.parse_options("-c a=1 -cb=2 --c-d=x\\ y -c e --f") == [("a", "1"), ("b", "2"), ("c_d", "x y")]


def test_welcome() -> None:
    """AuthenticationOk, ParameterStatus in the given order, BackendKeyData, ReadyForQuery idle."""
    out = login.welcome({"server_version": "15.0", "TimeZone": "UTC"}, 7, 0xFFFFFFFF)
    assert out == (b"R\x00\x00\x00\x08\x00\x00\x00\x00"
                   + b"S\x00\x00\x00\x18server_version\x0015.0\x00"
                   + b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
                   + b"K\x00\x00\x00\x0c\x00\x00\x00\x07\xff\xff\xff\xff"
                   + b"Z\x00\x00\x00\x05I")
