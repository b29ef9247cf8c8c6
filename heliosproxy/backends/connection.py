"""One connection to a PostgreSQL backend: log in (trust/cleartext/md5/SCRAM), then relay bytes to its owner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from typing import Final, Protocol, cast

from heliosproxy.backends.tls import BackendTls, open_connection
from heliosproxy.errors import BackendAuthError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import (
    SCRAM_MECHANISM,
    Credential,
    ScramClient,
    ScramError,
    md5_password,
    md5_response,
    parse_sasl_mechanisms,
)

log = logging.getLogger("heliosproxy.backend")
_I: Final = struct.Struct("!I")
_II: Final = struct.Struct("!II")


class BackendOwner(Protocol):
    """Whoever currently holds the connection receives its bytes."""

    def on_backend_data(self, conn: BackendConnection, data: bytes) -> None: ...
    def on_backend_lost(self, conn: BackendConnection, exc: Exception | None) -> None: ...
    def on_backend_drained(self, conn: BackendConnection) -> None: ...


class BackendConnection(asyncio.Protocol):
    """A backend socket. Before `attach()` it reads whole messages for login and simple queries;
    after, every received chunk goes straight to the owner (headers are scanned by the owner)."""

    def __init__(self, node: str, host: str, port: int, user: str, database: str):
        self.node = node
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.transport: asyncio.Transport | None = None
        self.owner: BackendOwner | None = None
        self.pid = 0
        self.secret_key = 0
        self.params: dict[str, str] = {}
        self.closed = False
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.tx_status = codes.TX_IDLE
        # Session state the proxy applied on this backend (transaction pooling).
        self.applied: dict[str, str] = {}
        # Proxy-named prepared statements present on this backend (LRU order: least recently used first).
        self.prepared: dict[str, None] = {}
        self.pinned_by: object | None = None
        # A client ran something here that may have dropped statements other clients rely on:
        # close it when that client is done instead of pooling it.
        self.poisoned = False
        self.doomed = False  # an error arrived while nobody owned it: never hand it out again
        self.dropped_in_use = False  # the server side closed it while a client held it (circuit breakers)
        self.on_lost: Callable[[BackendConnection], None] | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._lost_exc: Exception | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.on_backend_data(self, data)
            return
        self._buf += data
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        elif self.pid and not self.closed and _has_error(self._buf):
            self.doomed = True  # idle in the pool and the server sent an error (it is ending the session)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dropped_in_use = not self.closed and self.owner is not None  # not closed by the proxy
        self.closed = True
        self._lost_exc = exc or ConnectionResetError("backend closed the connection")
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        owner = self.owner
        if owner is not None:
            owner.on_backend_lost(self, exc)
        if self.on_lost is not None:
            self.on_lost(self)

    def resume_writing(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.on_backend_drained(self)  # the owner may read its client again (bounded memory)

    # ------------------------------------------------------------------ ownership
    def attach(self, owner: BackendOwner) -> None:
        self.owner = owner
        if self._buf:
            data = self._drop_async(bytes(self._buf))
            self._buf.clear()
            if data:
                owner.on_backend_data(self, data)

    def _drop_async(self, data: bytes) -> bytes:
        """What arrived while nobody owned this connection, less notices, notifications and
        parameter reports: they belonged to an earlier session, never to the next client."""
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while n - pos >= 5:
            t = data[pos]
            end = pos + 1 + _I.unpack_from(data, pos + 1)[0]
            if end > n:
                break
            if t == codes.B_PARAMETER_STATUS:
                name, p = messages.read_cstr(data, pos + 5)
                self.params[name] = messages.read_cstr(data, p)[0]
            elif t == codes.B_NOTIFICATION or t == codes.B_NOTICE:
                log.debug("dropped a message for an earlier session on %s (type %r)", self.node, chr(t))
            else:
                out.append(data[pos:end])
            pos = end
        out.append(data[pos:])
        return b"".join(out)

    def detach(self, now: float = 0.0) -> None:
        """No owner any more; `now` is the caller's clock reading (time.monotonic), if it has one."""
        self.owner = None
        self.last_used = now or time.monotonic()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):  # closing anyway
                self.transport.write(messages.TERMINATE)
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    # ------------------------------------------------------------------ message reads (login / queries)
    async def _read(self) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 5:
                length = _I.unpack_from(self._buf, 1)[0]
                if len(self._buf) >= length + 1:
                    t = self._buf[0]
                    body = bytes(self._buf[5 : length + 1])
                    del self._buf[: length + 1]
                    return t, body
            if self.closed:
                raise ConnectionResetError(str(self._lost_exc or "backend closed the connection"))
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def login(self, password: str | Credential | None, startup: dict[str, str]) -> None:
        """Send the StartupMessage and answer whatever authentication the server asks for, with a
        plaintext password, an md5 hash or a SCRAM verifier plus a client's ClientKey (pass-through)."""
        self.write(messages.startup_message(startup))
        scram: ScramClient | None = None
        cred = Credential(password=password) if isinstance(password, str) else password
        while True:
            t, body = await self._read()
            if t == codes.B_ERROR:
                f = messages.parse_error_fields(body)
                raise BackendAuthError(f.get("M", "backend refused the login"), f.get("C", "08006"))
            if t == codes.B_AUTH:
                code = _I.unpack_from(body, 0)[0]
                if code == codes.AUTH_OK:
                    continue
                if cred is None and code in (codes.AUTH_CLEARTEXT, codes.AUTH_MD5, codes.AUTH_SASL):
                    raise BackendAuthError(
                        f"backend {self.node} asks for a password for user {self.user!r} and none is configured",
                        "28P01",
                    )
                if code == codes.AUTH_CLEARTEXT:
                    if cred is None or cred.password is None:
                        raise BackendAuthError(self._cannot("a cleartext password", cred), "28P01")
                    self.write(messages.password_message(messages.cstr(cred.password)))
                elif code == codes.AUTH_MD5:
                    if cred is not None and cred.password is not None:
                        reply = md5_password(self.user, cred.password, body[4:8])
                    elif cred is not None and cred.md5 is not None:
                        reply = md5_response(cred.md5, body[4:8])
                    else:
                        raise BackendAuthError(self._cannot("md5", cred), "28P01")
                    self.write(messages.password_message(reply + b"\x00"))
                elif code == codes.AUTH_SASL:
                    mechs = parse_sasl_mechanisms(body[4:])
                    if SCRAM_MECHANISM not in mechs:
                        raise BackendAuthError(f"backend offers no supported SASL mechanism: {mechs}")
                    if cred is not None and cred.password is not None:
                        scram = ScramClient(cred.password)
                    elif cred is not None and cred.scram is not None and cred.client_key is not None:
                        scram = ScramClient(None, secret=cred.scram, client_key=cred.client_key)
                    else:
                        raise BackendAuthError(self._cannot("SCRAM-SHA-256", cred), "28P01")
                    self.write(messages.sasl_initial_response(SCRAM_MECHANISM, scram.first_message()))
                elif code == codes.AUTH_SASL_CONTINUE and scram is not None:
                    try:
                        self.write(messages.password_message(scram.final_message(body[4:])))
                    except ScramError as exc:
                        raise BackendAuthError(str(exc)) from exc
                elif code == codes.AUTH_SASL_FINAL and scram is not None:
                    try:
                        scram.verify_final(body[4:])
                    except ScramError as exc:
                        raise BackendAuthError(str(exc)) from exc
                else:
                    raise BackendAuthError(f"unsupported authentication request {code} from backend")
            elif t == codes.B_PARAMETER_STATUS:
                name, pos = messages.read_cstr(body, 0)
                value, _ = messages.read_cstr(body, pos)
                self.params[name] = value
            elif t == codes.B_BACKEND_KEY_DATA:
                self.pid, self.secret_key = _II.unpack_from(body, 0)
            elif t == codes.B_READY_FOR_QUERY:
                self.tx_status = body[0]
                return
            # NoticeResponse and NegotiateProtocolVersion during login are ignored.

    def _cannot(self, asked: str, cred: Credential | None) -> str:
        """Why the proxy cannot answer the server's password request (never shows the secret)."""
        has = "no password" if cred is None else {"plaintext": "a password", "md5": "only an md5 hash"}.get(
            cred.kind, "only a SCRAM verifier"
        )
        if cred is not None and cred.scram is not None and asked == "SCRAM-SHA-256":
            return (
                f"backend {self.node} asks user {self.user!r} for SCRAM-SHA-256 and the proxy has only the"
                " verifier: SCRAM pass-through needs a client of this user to have logged in to the proxy first"
            )
        return f"backend {self.node} asks user {self.user!r} for {asked} and the proxy has {has} for this user"

    async def query(self, sql: str, params: tuple[str, ...] | None = None) -> list[list[str | None]]:
        """Run a query while not attached (simple protocol; extended with text `params` for $1…);
        returns the rows of the last result as text. Raises QueryError on ErrorResponse."""
        assert self.owner is None
        if params is None:
            self.write(messages.query(sql))
        else:
            values = [b"\x00\x00", struct.pack("!H", len(params))]
            for p in params:
                raw = p.encode()
                values.append(_I.pack(len(raw)) + raw)
            values.append(b"\x00\x00")
            self.write(
                messages.parse("", sql)
                + messages.msg(ord("B"), b"\x00\x00" + b"".join(values))
                + messages.msg(ord("E"), b"\x00" + _I.pack(0))
                + messages.SYNC
            )
        rows, error = await self.read_answer()
        if error is not None:
            raise QueryError(error.get("M", "query failed"), error.get("C", "XX000"))
        return rows

    async def read_answer(self) -> tuple[list[list[str | None]], dict[str, str] | None]:
        """Read one request's answer while not attached, up to its ReadyForQuery: the rows of its last result
        (as text) and its first ErrorResponse's fields (None: none). ParameterStatus values are recorded."""
        rows: list[list[str | None]] = []
        error: dict[str, str] | None = None
        while True:
            t, body = await self._read()
            if t == codes.B_ROW_DESCRIPTION:
                rows = []
            elif t == codes.B_DATA_ROW:
                n = struct.unpack_from("!H", body, 0)[0]
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
            elif t == codes.B_ERROR:
                if error is None:
                    error = messages.parse_error_fields(body)
            elif t == codes.B_PARAMETER_STATUS:
                name, pos = messages.read_cstr(body, 0)
                self.params[name] = messages.read_cstr(body, pos)[0]
            elif t == codes.B_READY_FOR_QUERY:
                self.tx_status = body[0]
                return rows, error


def _has_error(buf: bytearray) -> bool:
    """Does this buffer of whole (or partial) backend messages hold an ErrorResponse?"""
    pos = 0
    n = len(buf)
    while n - pos >= 5:
        if buf[pos] == codes.B_ERROR:
            return True
        pos += 1 + _I.unpack_from(buf, pos + 1)[0]
    return False


class QueryError(Exception):
    def __init__(self, message: str, sqlstate: str):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


async def connect(
    node: str,
    host: str,
    port: int,
    user: str,
    password: str | Credential | None,
    database: str,
    *,
    timeout: float = 5.0,
    params: dict[str, str] | None = None,
    tls: BackendTls | None = None,
) -> BackendConnection:
    """Open and log in a backend connection; raises OSError/TimeoutError/BackendAuthError."""
    loop = asyncio.get_running_loop()
    startup = {"user": user, "database": database}
    if params:
        startup.update(params)

    async def _go() -> BackendConnection:
        _, conn = await open_connection(
            loop, lambda: BackendConnection(node, host, port, user, database), host, port, tls
        )
        try:
            sock = conn.transport.get_extra_info("socket") if conn.transport else None
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await conn.login(password, startup)
        except BaseException:
            conn.abort()
            raise
        return conn

    return await asyncio.wait_for(_go(), timeout)


async def send_cancel(host: str, port: int, pid: int, key: int, timeout: float = 2.0) -> None:
    """Send a CancelRequest for (pid, key) to a backend over a fresh connection."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        log.warning("cancel: cannot reach %s:%s: %s", host, port, exc)
        return
    try:
        writer.write(messages.cancel_request(pid, key))
        await writer.drain()
    finally:
        writer.close()
