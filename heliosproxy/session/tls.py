"""Client-side TLS of a session: starts TLS on its transport (after SSLRequest or direct TLS, ALPN postgresql)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heliosproxy.protocol import messages
from heliosproxy.protocol.tls import ALPN, TlsTransport

if TYPE_CHECKING:
    from heliosproxy.session.client import ClientProtocol


def start(glue: ClientProtocol, *, direct: bool, initial: bytes) -> None:
    """Start TLS as the login machine decided (session/login.py): after an SSLRequest (answered b"S"
    here, unencrypted), or on a direct TLS ClientHello (`initial`: the bytes read so far)."""
    if not direct:
        assert glue.transport is not None
        glue.transport.write(b"S")
    _start(glue, direct=direct, initial=initial)


def _start(glue: ClientProtocol, *, direct: bool, initial: bytes) -> None:
    raw = glue.transport
    session = glue.s
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

    tls = TlsTransport(raw, glue, context, ready, session.peer, initial)
    glue.transport = tls
    session.emit = tls.write
