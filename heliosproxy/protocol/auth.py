"""Pure password-auth computations: SASLprep, MD5, SCRAM-SHA-256 (RFC 5802/7677) and pg_authid secrets, both sides."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stringprep
import struct
import unicodedata
from dataclasses import dataclass, field, replace

from heliosproxy.protocol import codes, messages

SCRAM_MECHANISM = "SCRAM-SHA-256"
SCRAM_ITERATIONS = 4096

_MD5_HASH = re.compile(r"^md5[0-9a-f]{32}$")
_VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


# --------------------------------------------------------------------------- SASLprep (RFC 4013)
def _prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(password: str | bytes) -> bytes:
    """The bytes SCRAM hashes for a password, as PostgreSQL computes them (src/common/saslprep.c and
    its callers): pure ASCII is used as is; otherwise RFC 4013 map/NFKC/prohibit/bidi, and when the
    input is not UTF-8 or preparation fails, the raw bytes."""
    raw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return raw
    prepped = unicodedata.normalize("NFKC", mapped)
    if any(_prohibited(ch) for ch in prepped):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in prepped):
        if any(stringprep.in_table_d2(ch) for ch in prepped):
            return raw
        if not (stringprep.in_table_d1(prepped[0]) and stringprep.in_table_d1(prepped[-1])):
            return raw
    return prepped.encode("utf-8")


# --------------------------------------------------------------------------- MD5
def md5_hash(user: str, password: str) -> str:
    """What pg_authid stores for an md5 password, without the 'md5' prefix: md5(password + user)."""
    return hashlib.md5(password.encode() + user.encode()).hexdigest()


def md5_response(hash_hex: str, salt: bytes) -> bytes:
    """The PasswordMessage payload for AuthenticationMD5Password given the stored hash (sans 'md5')."""
    return b"md5" + hashlib.md5(hash_hex.encode() + salt).hexdigest().encode()


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The PasswordMessage payload for AuthenticationMD5Password: 'md5' + md5(md5(pw+user) + salt)."""
    return md5_response(md5_hash(user, password), salt)


# --------------------------------------------------------------------------- SCRAM primitives
def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _attrs(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) >= 2 and part[1] == "=":
            out[part[0]] = part[2:]
    return out


def parse_sasl_mechanisms(payload: bytes) -> list[str]:
    """The mechanism list of AuthenticationSASL: NUL-terminated names ending with an empty one."""
    return [m.decode() for m in payload.split(b"\x00") if m]


class ScramError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What a server keeps for a user: salt, iterations, StoredKey, ServerKey."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def from_password(
        cls, password: str, iterations: int = SCRAM_ITERATIONS, salt: bytes | None = None
    ) -> ScramSecret:
        salt = os.urandom(16) if salt is None else salt
        salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))

    @classmethod
    def parse(cls, text: str) -> ScramSecret | None:
        """A verifier as stored in pg_authid (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`), else None."""
        m = _VERIFIER.match(text)
        if m is None:
            return None
        try:
            salt, stored, server = (base64.b64decode(g, validate=True) for g in m.group(2, 3, 4))
        except (binascii.Error, ValueError):
            return None
        iterations = int(m.group(1))
        if iterations < 1 or len(stored) != 32 or len(server) != 32 or not salt:
            return None
        return cls(salt, iterations, stored, server)

    @classmethod
    def mock(cls, key: bytes, user: str, iterations: int = SCRAM_ITERATIONS) -> ScramSecret:
        """A stable fake secret for a user that does not exist: salt and keys derived from a per-proxy
        key and the name, so every attempt sees the same salt, like a real user's (no user oracle)."""
        name = user.encode("utf-8", "surrogateescape")
        return cls(
            _hmac(key, b"salt\x00" + name)[:16],
            iterations,
            _hmac(key, b"stored\x00" + name),
            _hmac(key, b"server\x00" + name),
        )

    def client_key_from_password(self, password: str) -> bytes | None:
        """The ClientKey when `password` matches this secret, else None (costs one PBKDF2)."""
        salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), self.salt, self.iterations)
        client_key = _hmac(salted, b"Client Key")
        if hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key):
            return client_key
        return None


@dataclass(frozen=True, slots=True)
class Credential:
    """How the proxy can prove a user's identity: a plaintext password, an md5 hash (as in pg_authid,
    sans 'md5'), a SCRAM verifier, and the ClientKey a client proved against that verifier
    (SCRAM pass-through). repr never shows a secret."""

    password: str | None = field(default=None, repr=False)
    md5: str | None = field(default=None, repr=False)
    scram: ScramSecret | None = None
    client_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> Credential:
        """A users[].password value: an md5 hash, a SCRAM verifier, or else a plaintext password."""
        if _MD5_HASH.match(text):
            return cls(md5=text[3:])
        scram = ScramSecret.parse(text)
        if scram is not None:
            return cls(scram=scram)
        if text.startswith("SCRAM-SHA-256$"):
            raise ValueError("looks like a SCRAM-SHA-256 verifier but is malformed")
        return cls(password=text)

    @property
    def kind(self) -> str:
        return "plaintext" if self.password is not None else "md5" if self.md5 is not None else "scram"

    def with_client_key(self, client_key: bytes) -> Credential:
        return replace(self, client_key=client_key)

    def check_cleartext(self, user: str, password: str) -> bytes | None:
        """A cleartext password a client sent: b"" (or the ClientKey for a verifier) when it matches, else None."""
        if self.password is not None:
            return b"" if hmac.compare_digest(password.encode(), self.password.encode()) else None
        if self.md5 is not None:
            return b"" if hmac.compare_digest(md5_hash(user, password), self.md5) else None
        if self.scram is not None:
            return self.scram.client_key_from_password(password)
        return None


# --------------------------------------------------------------------------- SCRAM client (proxy → server)
class ScramClient:
    """Client side of SCRAM-SHA-256 without channel binding (the proxy logging in to a backend), with a
    password, or by pass-through: a verifier plus the ClientKey a client proved against it."""

    def __init__(
        self,
        password: str | None,
        nonce: str | None = None,
        *,
        secret: ScramSecret | None = None,
        client_key: bytes | None = None,
    ):
        self.password = password
        self.secret = secret
        self.client_key = client_key
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self._auth_message = b""
        self._server_key = b""

    def first_message(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final_message(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        a = _attrs(text)
        try:
            rnonce, salt, iterations = a["r"], base64.b64decode(a["s"]), int(a["i"])
        except (KeyError, ValueError) as exc:
            raise ScramError(f"malformed SCRAM server-first-message: {exc}") from exc
        if not rnonce.startswith(self.nonce) or iterations < 1:
            raise ScramError("SCRAM server nonce or iteration count is invalid")
        if self.password is not None:
            salted = hashlib.pbkdf2_hmac("sha256", saslprep(self.password), salt, iterations)
            client_key = _hmac(salted, b"Client Key")
            self._server_key = _hmac(salted, b"Server Key")
        elif self.secret is not None and self.client_key is not None:
            if (salt, iterations) != (self.secret.salt, self.secret.iterations):
                raise ScramError(
                    "the server's SCRAM verifier differs from the proxy's (salt or iteration count);"
                    " SCRAM pass-through needs the same verifier on the proxy and every server"
                )
            client_key = self.client_key
            self._server_key = self.secret.server_key
        else:
            raise ScramError("no password and no client key to answer SCRAM with")
        without_proof = f"c=biws,r={rnonce}"
        self._auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        stored_key = hashlib.sha256(client_key).digest()
        proof = _xor(client_key, _hmac(stored_key, self._auth_message))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        a = _attrs(server_final.decode())
        if "e" in a:
            raise ScramError(f"SCRAM error from server: {a['e']}")
        expected = _hmac(self._server_key, self._auth_message)
        if not hmac.compare_digest(base64.b64decode(a.get("v", "")), expected):
            raise ScramError("SCRAM server signature does not match")


# --------------------------------------------------------------------------- SCRAM server (client → proxy)
class ScramServer:
    """Server side of SCRAM-SHA-256 (the proxy authenticating a client)."""

    def __init__(self, secret: ScramSecret | None, mock: ScramSecret | None = None):
        # secret None = unknown user: run the exchange with a mock secret (stable per user name when
        # given) and fail at the end, with the same work as for a real user (no user oracle).
        self.known = secret is not None
        self.secret = secret or mock or ScramSecret.mock(os.urandom(32), "")
        self.client_key: bytes | None = None  # set when the client's proof was right
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2 = ""

    def handle_first(self, data: bytes) -> bytes:
        """Client-first-message → server-first-message. Raises ScramError if malformed."""
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise ScramError("SCRAM client-first-message is not UTF-8") from exc
        if text.startswith("p="):
            raise ScramError("channel binding is not supported")
        if not (text.startswith("n,") or text.startswith("y,")):
            raise ScramError("malformed SCRAM client-first-message")
        gs2_end = text.find(",", 2)
        if gs2_end < 0:
            raise ScramError("malformed SCRAM client-first-message")
        self._gs2 = text[: gs2_end + 1]
        self._first_bare = text[gs2_end + 1 :]
        cnonce = _attrs(self._first_bare).get("r")
        if not cnonce:
            raise ScramError("SCRAM client nonce missing")
        self._nonce = cnonce + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self.secret.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.secret.iterations}"
        return self._server_first.encode()

    def handle_final(self, data: bytes) -> bytes | None:
        """Client-final-message → server-final-message, or None when the proof is wrong."""
        text = data.decode(errors="replace")
        a = _attrs(text)
        proof_at = text.rfind(",p=")
        if proof_at < 0 or "p" not in a or "r" not in a or "c" not in a:
            raise ScramError("malformed SCRAM client-final-message")
        if a["r"] != self._nonce:
            raise ScramError("SCRAM nonce mismatch")
        try:
            if base64.b64decode(a["c"]).decode() != self._gs2:
                raise ScramError("SCRAM channel binding mismatch")
            proof = base64.b64decode(a["p"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise ScramError("malformed SCRAM client-final-message") from exc
        auth_message = f"{self._first_bare},{self._server_first},{text[:proof_at]}".encode()
        signature = _hmac(self.secret.stored_key, auth_message)
        if len(proof) != len(signature):
            return None
        # ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage): kept for pass-through when right.
        client_key = _xor(proof, signature)
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self.secret.stored_key)
        server_sig = _hmac(self.secret.server_key, auth_message)  # computed either way: same work
        if not ok or not self.known:
            return None
        self.client_key = client_key
        return f"v={base64.b64encode(server_sig).decode()}".encode()


# --------------------------------------------------------------------------- the client-auth exchange
@dataclass(slots=True)
class AuthStep:
    """What the session does after one password message: write `reply`, then continue, succeed or fail."""

    reply: bytes = b""
    done: bool = False  # authenticated
    failed: bool = False  # wrong password or unknown user: 28P01
    fatal: tuple[str, str] | None = None  # (SQLSTATE, message): protocol violation or the like


class ClientAuth:
    """Sans-IO authentication of one client by md5 or SCRAM-SHA-256 against a Credential (None = no
    such user), choosing like PostgreSQL: md5 requested but only a SCRAM verifier known → SCRAM;
    SCRAM requested but only an md5 hash known → a mock SCRAM exchange that fails."""

    def __init__(
        self, method: str, user: str, cred: Credential | None, mock_key: bytes, mock_iterations: int = SCRAM_ITERATIONS
    ):
        self.user = user
        self.cred = cred
        self.client_key: bytes | None = None  # the proven ClientKey (verifier users) after success
        self._scram: ScramServer | None = None
        self._md5_salt = b""
        if method == "md5" and (cred is None or cred.scram is None):
            self.kind = "md5"
        else:
            self.kind = "scram1"
            secret: ScramSecret | None = None
            if cred is not None and cred.scram is not None:
                secret = cred.scram
            elif cred is not None and cred.password is not None:
                # derived once per credential by the caller's cache; see plaintext_scram()
                secret = plaintext_scram(cred.password, mock_key, user)
            self._scram = ScramServer(secret, ScramSecret.mock(mock_key, user, mock_iterations))

    def start(self) -> bytes:
        """The first authentication request to send."""
        if self.kind == "md5":
            self._md5_salt = os.urandom(4)
            return messages.auth_request(codes.AUTH_MD5, self._md5_salt)
        return messages.auth_request(codes.AUTH_SASL, messages.cstr(SCRAM_MECHANISM) + b"\x00")

    def step(self, body: bytes) -> AuthStep:
        """One PasswordMessage/SASLInitialResponse/SASLResponse body."""
        if self.kind == "md5":
            cred = self.cred
            expected = b""
            if cred is not None and cred.password is not None:
                expected = md5_password(self.user, cred.password, self._md5_salt)
            elif cred is not None and cred.md5 is not None:
                expected = md5_response(cred.md5, self._md5_salt)
            else:
                md5_response("0" * 32, self._md5_salt)  # same work for an unknown user
            ok = hmac.compare_digest(body.rstrip(b"\x00"), expected) and bool(expected)
            self.kind = "done"
            return AuthStep(done=ok, failed=not ok)
        scram = self._scram
        if self.kind == "scram1" and scram is not None:
            try:
                end = body.index(b"\x00")
                mech = body[:end].decode()
                if mech != SCRAM_MECHANISM:
                    return AuthStep(
                        fatal=("28000", f"client selected an invalid SASL authentication mechanism {mech!r}")
                    )
                dlen = struct.unpack_from("!i", body, end + 1)[0]
                data = body[end + 5 : end + 5 + dlen] if dlen >= 0 else b""
                reply = scram.handle_first(data)
            except (ValueError, struct.error):
                return AuthStep(fatal=("08P01", "malformed SCRAM message"))
            except ScramError as exc:
                return AuthStep(fatal=("08P01", str(exc)))
            self.kind = "scram2"
            return AuthStep(reply=messages.auth_request(codes.AUTH_SASL_CONTINUE, reply))
        if self.kind == "scram2" and scram is not None:
            try:
                final = scram.handle_final(body)
            except ScramError as exc:
                return AuthStep(fatal=("08P01", str(exc)))
            self.kind = "done"
            if final is None:
                return AuthStep(failed=True)
            if self.cred is not None and self.cred.scram is not None:
                self.client_key = scram.client_key
            return AuthStep(reply=messages.auth_request(codes.AUTH_SASL_FINAL, final), done=True)
        return AuthStep(fatal=("08P01", "unexpected password message"))


_PLAINTEXT_SCRAM: dict[tuple[str, bytes, str], ScramSecret] = {}


def plaintext_scram(password: str, key: bytes, user: str) -> ScramSecret:
    """The SCRAM secret of a plaintext password, with the salt a mock of that user would get (so that
    salts never tell configured users from unknown ones), computed once per process."""
    k = (password, key, user)
    secret = _PLAINTEXT_SCRAM.get(k)
    if secret is None:
        if len(_PLAINTEXT_SCRAM) >= 10_000:
            _PLAINTEXT_SCRAM.clear()
        salt = ScramSecret.mock(key, user).salt
        secret = _PLAINTEXT_SCRAM[k] = ScramSecret.from_password(password, salt=salt)
    return secret
