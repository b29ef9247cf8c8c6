"""RawPg: a tiny raw-socket PostgreSQL v3 client for protocol tests (arbitrary bytes, raw messages)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import socket
import struct
import time
from types import TracebackType

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF or reset) before the expected bytes arrived."""


class ServerError(Exception):
    """An ErrorResponse arrived where the caller expected something else; `fields` has its fields."""

    def __init__(self, fields: dict[str, str]):
        super().__init__(f"{fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}")
        self.fields = fields


def msg(kind: bytes, body: bytes = b"") -> bytes:
    """A typed frontend message: type byte, Int32 length (counting itself), body."""
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    """A StartupMessage with `params` (user, database, ...) and the given protocol version."""
    body = struct.pack("!I", version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def special_request(code: int, *extra: int) -> bytes:
    """SSLRequest / GSSENCRequest / CancelRequest (with pid, key as `extra`)."""
    body = struct.pack("!I", code) + b"".join(struct.pack("!I", x) for x in extra)
    return struct.pack("!I", len(body) + 4) + body


def query_msg(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body: {'S': 'FATAL', 'C': '08P01', 'M': ...}."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.index(b"\x00", pos + 1)
        out[code] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


def _scram_client_proof(password: str, salt: bytes, iterations: int, auth_message: bytes) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return proof, server_signature


class RawPg:
    """A blocking socket to a PostgreSQL server or the proxy; every read has a timeout."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, rcvbuf: int | None = None):
        """Connect; `rcvbuf` shrinks the socket's receive buffer (a slow reader applies backpressure sooner)."""
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.params: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_key = 0
        self.auth_requests: list[int] = []  # authentication request codes seen during login

    # ------------------------------------------------------------------ bytes
    def send(self, data: bytes) -> None:
        """Send raw bytes (a reset by the peer surfaces as ConnectionClosed)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(str(exc)) from exc

    def _fill(self, n: int, deadline: float) -> None:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no data from the server within {self.timeout}s (have {bytes(self._buf)!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as exc:
                raise ConnectionClosed(f"connection reset ({bytes(self._buf)!r} pending)") from exc
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionClosed(f"EOF ({bytes(self._buf)!r} pending)")
            self._buf += chunk

    def read_bytes(self, n: int, timeout: float | None = None) -> bytes:
        self._fill(n, time.monotonic() + (self.timeout if timeout is None else timeout))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_message(self, timeout: float | None = None) -> tuple[str, bytes]:
        """The next backend message as (type char, body)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(5, deadline)
        kind = chr(self._buf[0])
        length = struct.unpack_from("!I", self._buf, 1)[0]
        self._fill(1 + length, deadline)
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return kind, body

    def read_error(self, timeout: float | None = None) -> dict[str, str]:
        """Read messages until an ErrorResponse (skipping notices/NegotiateProtocolVersion); its fields."""
        while True:
            kind, body = self.read_message(timeout)
            if kind == "E":
                return error_fields(body)
            if kind not in ("N", "v", "S"):
                raise AssertionError(f"expected an ErrorResponse, got {kind!r} {body[:200]!r}")

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout` s (pending bytes are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True
            self._buf += chunk

    @property
    def pending(self) -> bytes:
        """Bytes received but not consumed yet."""
        return bytes(self._buf)

    # ------------------------------------------------------------------ protocol
    def startup(self, user: str, database: str, *, version: int = PROTOCOL_3_0, **params: str) -> None:
        self.send(startup_packet({"user": user, "database": database, **params}, version))

    def login(self, user: str, password: str | None, database: str, **params: str) -> None:
        """Startup plus authentication (trust, cleartext, md5, SCRAM-SHA-256) up to ReadyForQuery.

        Raises ServerError with the server's fields if it sends an ErrorResponse.
        """
        self.send(startup_packet({"user": user, "database": database, **params}))
        self.authenticate(user, password)

    def authenticate(self, user: str, password: str | None) -> None:
        scram_state: tuple[str, bytes] | None = None  # (client nonce, client-first-bare)
        server_signature = b""
        while True:
            kind, body = self.read_message()
            if kind == "E":
                raise ServerError(error_fields(body))
            if kind == "R":
                code = struct.unpack_from("!I", body)[0]
                self.auth_requests.append(code)
                if code == 0:
                    continue
                if password is None:
                    raise AssertionError(f"the server asked for a password (auth request {code})")
                if code == 3:
                    self.send(msg(b"p", cstr(password)))
                elif code == 5:
                    salt = body[4:8]
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.send(msg(b"p", cstr("md5" + outer)))
                elif code == 10:
                    mechanisms = [m.decode() for m in body[4:].split(b"\x00") if m]
                    if "SCRAM-SHA-256" not in mechanisms:
                        raise AssertionError(f"no SCRAM-SHA-256 in {mechanisms}")
                    nonce = base64.b64encode(os.urandom(18)).decode()
                    bare = f"n=,r={nonce}".encode()
                    first = b"n,," + bare
                    self.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
                    scram_state = (nonce, bare)
                elif code == 11:
                    if scram_state is None:
                        raise AssertionError("SASLContinue before SASL")
                    nonce, bare = scram_state
                    server_first = body[4:]
                    attrs = dict(p.split("=", 1) for p in server_first.decode().split(","))
                    if not attrs["r"].startswith(nonce):
                        raise AssertionError("server nonce does not extend the client nonce")
                    without_proof = f"c=biws,r={attrs['r']}".encode()
                    auth_message = bare + b"," + server_first + b"," + without_proof
                    proof, server_signature = _scram_client_proof(
                        password, base64.b64decode(attrs["s"]), int(attrs["i"]), auth_message
                    )
                    self.send(msg(b"p", without_proof + b",p=" + base64.b64encode(proof)))
                elif code == 12:
                    final = dict(p.split("=", 1) for p in body[4:].decode().split(","))
                    if base64.b64decode(final["v"]) != server_signature:
                        raise AssertionError("bad SCRAM server signature")
                else:
                    raise AssertionError(f"unsupported auth request {code}")
            elif kind == "S":
                name, value, _ = body.split(b"\x00", 2)
                self.params[name.decode()] = value.decode()
            elif kind == "K":
                self.backend_pid, self.backend_key = struct.unpack("!II", body)
            elif kind == "Z":
                return

    def query(self, sql: str) -> list[tuple[str, bytes]]:
        """Send a simple Query; every message up to and including ReadyForQuery."""
        self.send(query_msg(sql))
        return self.read_until_ready()

    def read_until_ready(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while True:
            kind, body = self.read_message()
            out.append((kind, body))
            if kind == "Z":
                return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawPg:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def data_rows(messages: list[tuple[str, bytes]]) -> list[list[str | None]]:
    """The text columns of every DataRow in `messages`."""
    rows: list[list[str | None]] = []
    for kind, body in messages:
        if kind != "D":
            continue
        n = struct.unpack_from("!H", body)[0]
        pos = 2
        row: list[str | None] = []
        for _ in range(n):
            ln = struct.unpack_from("!i", body, pos)[0]
            pos += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(body[pos : pos + ln].decode())
                pos += ln
        rows.append(row)
    return rows
