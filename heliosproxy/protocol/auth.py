"""Pure password-auth computations: MD5 and SCRAM-SHA-256 (RFC 5802/7677) for both client and server side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

SCRAM_MECHANISM = "SCRAM-SHA-256"
SCRAM_ITERATIONS = 4096


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The PasswordMessage payload for AuthenticationMD5Password: 'md5' + md5(md5(pw+user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


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


class ScramClient:
    """Client side of SCRAM-SHA-256 without channel binding (the proxy logging in to a backend)."""

    def __init__(self, password: str, nonce: str | None = None):
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self._auth_message = b""
        self._salted = b""

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
        self._salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        without_proof = f"c=biws,r={rnonce}"
        self._auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        client_key = _hmac(self._salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        proof = _xor(client_key, _hmac(stored_key, self._auth_message))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        a = _attrs(server_final.decode())
        if "e" in a:
            raise ScramError(f"SCRAM error from server: {a['e']}")
        expected = _hmac(_hmac(self._salted, b"Server Key"), self._auth_message)
        if not hmac.compare_digest(base64.b64decode(a.get("v", "")), expected):
            raise ScramError("SCRAM server signature does not match")


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What a server keeps for a user: salt, iterations, StoredKey, ServerKey."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(cls, password: str, iterations: int = SCRAM_ITERATIONS) -> ScramSecret:
        salt = os.urandom(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key"))


class ScramServer:
    """Server side of SCRAM-SHA-256 (the proxy authenticating a client)."""

    def __init__(self, secret: ScramSecret | None):
        # secret None = unknown user: run the exchange with a dummy secret and fail at the end
        # (no user oracle).
        self.secret = secret or ScramSecret.from_password(secrets.token_hex(8))
        self.known = secret is not None
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
        client_key = _xor(proof, signature)
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self.secret.stored_key)
        if not ok or not self.known:
            return None
        server_sig = _hmac(self.secret.server_key, auth_message)
        return f"v={base64.b64encode(server_sig).decode()}".encode()
