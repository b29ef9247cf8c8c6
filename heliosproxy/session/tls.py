"""Client-side TLS negotiation of a session: SSLRequest, direct TLS (ALPN postgresql), `tls.mode: require`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heliosproxy.config.schema import TlsMode
from heliosproxy.protocol import messages
from heliosproxy.protocol.tls import ALPN, TLS_HANDSHAKE, TlsTransport

if TYPE_CHECKING:
    from heliosproxy.session.client import ClientSession


def on_ssl_request(session: ClientSession) -> bool:
    """An SSLRequest arrived: True when it was handled (answered S and TLS started, or refused),
    False when the caller answers N (TLS off, or already inside TLS)."""
    context = session.ctx.tls_context
    if context is None or session.tls or session.transport is None:
        return False
    if session.buf:
        # Bytes after the SSLRequest, before the handshake: someone injected plaintext (CVE-2021-23222).
        session._violation("received unencrypted data after SSL request")
        return True
    session.transport.write(b"S")
    _start(session, direct=False, initial=b"")
    return True


def on_direct_tls(session: ClientSession) -> bool:
    """The connection opened with a TLS record (direct TLS): True when TLS started."""
    context = session.ctx.tls_context
    buf = session.buf
    if context is None or session.tls or not buf or buf[0] != TLS_HANDSHAKE or session.transport is None:
        return False
    initial = bytes(buf)
    buf.clear()
    _start(session, direct=True, initial=initial)
    return True


def refuse_plaintext(session: ClientSession) -> bool:
    """`tls.mode: require` and this client did not negotiate TLS: FATAL 28000 (True when refused)."""
    if session.tls or session.ctx.config.tls.mode is not TlsMode.REQUIRE:
        return False
    session._fatal("28000", "TLS is required")
    return True


def _start(session: ClientSession, *, direct: bool, initial: bytes) -> None:
    raw = session.transport
    context = session.ctx.tls_context
    assert raw is not None and context is not None
    session.tls = True

    def ready(t: TlsTransport) -> None:
        if direct and t.ssl_object.selected_alpn_protocol() != ALPN:
            # As PostgreSQL 17: direct TLS needs the ALPN extension with "postgresql".
            session.ctx.counters.protocol_errors += 1
            msg = "received direct SSL connection request without ALPN protocol negotiation extension"
            t.write(messages.error_response("FATAL", "08P01", msg))
            t.close()

    tls = TlsTransport(raw, session, context, ready, session.peer, initial)
    session.transport = tls
