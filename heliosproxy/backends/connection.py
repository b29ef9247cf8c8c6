"""One connection to a PostgreSQL backend: log in (trust/cleartext/md5/SCRAM), then relay bytes to its owner."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from typing import Protocol, cast

from heliosproxy.backends.tls import BackendTls, open_connection
from heliosproxy.errors import BackendAuthError
from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.auth import (
    SCRAM_MECHANISM,
    ScramClient,
    ScramError,
    md5_password,
    parse_sasl_mechanisms,
)

log = logging.getLogger("heliosproxy.backend")
_I = struct.Struct("!I")
_II = struct.Struct("!II")


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
        # Proxy-named prepared statements present on this backend (LRU order).
        self.prepared: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.pinned_by: object | None = None
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

    def connection_lost(self, exc: Exception | None) -> None:
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
            data = bytes(self._buf)
            self._buf.clear()
            owner.on_backend_data(self, data)

    def detach(self) -> None:
        self.owner = None
        self.last_used = time.monotonic()

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

    async def login(self, password: str | None, startup: dict[str, str]) -> None:
        """Send the StartupMessage and answer whatever authentication the server asks for."""
        self.write(messages.startup_message(startup))
        scram: ScramClient | None = None
        while True:
            t, body = await self._read()
            if t == codes.B_ERROR:
                f = messages.parse_error_fields(body)
                raise BackendAuthError(f.get("M", "backend refused the login"), f.get("C", "08006"))
            if t == codes.B_AUTH:
                code = _I.unpack_from(body, 0)[0]
                if code == codes.AUTH_OK:
                    continue
                if password is None and code in (codes.AUTH_CLEARTEXT, codes.AUTH_MD5, codes.AUTH_SASL):
                    raise BackendAuthError(
                        f"backend {self.node} asks for a password for user {self.user!r} and none is configured",
                        "28P01",
                    )
                if code == codes.AUTH_CLEARTEXT:
                    self.write(messages.password_message(messages.cstr(password or "")))
                elif code == codes.AUTH_MD5:
                    self.write(messages.password_message(md5_password(self.user, password or "", body[4:8]) + b"\x00"))
                elif code == codes.AUTH_SASL:
                    mechs = parse_sasl_mechanisms(body[4:])
                    if SCRAM_MECHANISM not in mechs:
                        raise BackendAuthError(f"backend offers no supported SASL mechanism: {mechs}")
                    scram = ScramClient(password or "")
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

    async def query(self, sql: str) -> list[list[str | None]]:
        """Run a simple query while not attached; returns the rows of the last result as text.
        Raises BackendAuthError-like RuntimeError with the server's message on ErrorResponse."""
        assert self.owner is None
        self.write(messages.query(sql))
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
                error = messages.parse_error_fields(body)
            elif t == codes.B_PARAMETER_STATUS:
                name, pos = messages.read_cstr(body, 0)
                self.params[name] = messages.read_cstr(body, pos)[0]
            elif t == codes.B_READY_FOR_QUERY:
                self.tx_status = body[0]
                if error is not None:
                    raise QueryError(error.get("M", "query failed"), error.get("C", "XX000"))
                return rows


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
    password: str | None,
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
