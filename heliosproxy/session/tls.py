"""Client-side TLS of a session: starts TLS on its transport (after SSLRequest or direct TLS, ALPN postgresql)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from heliosproxy.protocol import messages
from heliosproxy.protocol.tls import ALPN, TlsTransport

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession


def start(
    app: asyncio.Protocol, session: ClientSession, raw: asyncio.Transport, *, direct: bool, initial: bytes
) -> TlsTransport:
    """Start TLS as the login machine decided (session/login.py): after an SSLRequest (answered b"S"
    here, unencrypted), or on a direct TLS ClientHello (`initial`: the bytes read so far). Returns the
    transport the protocol `app` uses from now on; the session writes through it."""
    if not direct:
        raw.write(b"S")
    context = session.ctx.tls_context
    assert context is not None
    session.tls = True

    def ready(t: TlsTransport) -> None:
        if direct and t.ssl_object.selected_alpn_protocol() != ALPN:
            # As PostgreSQL 17: direct TLS needs the ALPN extension with "postgresql".
            session.ctx.counters.protocol_errors += 1
            msg = "received direct SSL connection request without ALPN protocol negotiation extension"
            t.write(messages.error_response("FATAL", "08P01", msg))
            t.close()

    tls = TlsTransport(raw, app, context, ready, session.peer, initial)
    session.emit = tls.write
    return tls
