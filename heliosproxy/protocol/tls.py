"""TLS: SSL contexts built from the config, and the TLS layer put over an accepted client connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from heliosproxy.config.schema import ClientCerts, ServerTlsMode, TlsConfig, TlsMode

log = logging.getLogger("heliosproxy.tls")

ALPN = "postgresql"  # PostgreSQL 17's protocol name; required for direct TLS (sslnegotiation=direct)
TLS_HANDSHAKE = 0x16  # first byte of a TLS record carrying a ClientHello
_VERIFY = {
    ClientCerts.NONE: ssl.CERT_NONE,
    ClientCerts.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientCerts.VERIFY: ssl.CERT_REQUIRED,
}
_READ = 256 * 1024


def client_tls_context(cfg: TlsConfig) -> ssl.SSLContext | None:
    """The server-side context for clients (`tls:`), read from disk now; None when mode is disable.

    Raises OSError naming the file that cannot be loaded (ssl.SSLError is an OSError).
    """
    if cfg.mode is TlsMode.DISABLE or cfg.cert is None or cfg.key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    except OSError as exc:
        raise OSError(exc.errno, f"tls: cannot load tls.cert {cfg.cert!r} / tls.key {cfg.key!r}: {exc}") from None
    if cfg.ca is not None:
        try:
            ctx.load_verify_locations(cfg.ca)
        except OSError as exc:
            raise OSError(exc.errno, f"tls: cannot load tls.ca {cfg.ca!r}: {exc}") from None
    ctx.verify_mode = _VERIFY[cfg.client_certs]
    ctx.set_alpn_protocols([ALPN])
    return ctx


def server_tls_context(mode: ServerTlsMode, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The client-side context for connections to a server; None when mode is disable."""
    if mode is ServerTlsMode.DISABLE:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in (ServerTlsMode.VERIFY_CA, ServerTlsMode.VERIFY_FULL):
        ctx.check_hostname = mode is ServerTlsMode.VERIFY_FULL
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca is not None:
                ctx.load_verify_locations(ca)
            else:
                ctx.load_default_certs()
        except OSError as exc:
            raise OSError(exc.errno, f"tls: cannot load tls_ca {ca!r}: {exc}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except OSError as exc:
            raise OSError(exc.errno, f"tls: cannot load tls_cert {cert!r} / tls_key {key!r}: {exc}") from None
    ctx.set_alpn_protocols([ALPN])
    return ctx


class _RawSide(asyncio.Protocol):
    """The protocol of the socket under a TlsTransport: ciphertext in, events up to the TLS layer."""

    def __init__(self, tls: TlsTransport):
        self.tls = tls

    def data_received(self, data: bytes) -> None:
        self.tls._feed(data)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self.tls._app.pause_writing()

    def resume_writing(self) -> None:
        self.tls._app.resume_writing()


class TlsTransport(asyncio.Transport):
    """TLS over an established transport (server side), with the app protocol kept as it is.

    Bytes already read from the socket (a direct-TLS ClientHello) are passed as `initial`.
    `on_ready` runs once the handshake completed (before any plaintext reaches the app);
    a failed handshake closes the socket, and the app sees connection_lost.
    """

    def __init__(
        self,
        raw: asyncio.Transport,
        app: asyncio.Protocol,
        context: ssl.SSLContext,
        on_ready: Callable[[TlsTransport], None],
        peer: str,
        initial: bytes = b"",
    ):
        super().__init__()
        self._raw = raw
        self._app = app
        self._context = context
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._on_ready = on_ready
        self._peer = peer
        self._handshaking = True
        self._closing = False
        raw.set_protocol(_RawSide(self))
        if initial:
            self._feed(initial)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl

    # ------------------------------------------------------------------ ciphertext in
    def _flush(self) -> None:
        data = self._out.read()
        if data and not self._raw.is_closing():
            self._raw.write(data)

    def _fail(self, what: str, exc: Exception) -> None:
        log.info("client %s: TLS %s failed: %s", self._peer, what, getattr(exc, "reason", None) or exc)
        self._flush()  # the alert, if any
        self._closing = True
        self._raw.close()

    def _feed(self, data: bytes) -> None:
        if self._closing:
            return
        self._in.write(data)
        if self._handshaking:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._fail("handshake", exc)
                return
            self._handshaking = False
            self._flush()
            self._on_ready(self)
            if self._closing:
                return
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                chunk = self._ssl.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                eof = True
                break
            except (ssl.SSLError, OSError) as exc:
                self._fail("read", exc)
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._flush()  # post-handshake messages (TLS 1.3 tickets, key updates)
        if chunks:
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            self.close()

    # ------------------------------------------------------------------ asyncio.Transport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._handshaking:
            return
        try:
            self._ssl.write(data)
        except (ssl.SSLError, OSError) as exc:
            self._fail("write", exc)
            return
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._handshaking:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._ssl.unwrap()  # close_notify; the peer's answer is not awaited
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() + self._out.pending

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._raw.get_extra_info(name, default)
