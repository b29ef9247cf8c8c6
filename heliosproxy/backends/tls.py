"""TLS to servers: each node's settings and context (built once per reload), and the SSLRequest before the handshake."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from heliosproxy.config.schema import Config, NodeConfig, ServerTlsMode
from heliosproxy.protocol import codes
from heliosproxy.protocol.tls import server_tls_context

P = TypeVar("P", bound=asyncio.BaseProtocol)
_SSL_REQUEST = (8).to_bytes(4, "big") + codes.SSL_REQUEST.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class BackendTls:
    mode: ServerTlsMode
    context: ssl.SSLContext | None


_cache: dict[tuple[ServerTlsMode, str | None, str | None, str | None], BackendTls] = {}


def node_tls(config: Config, node: NodeConfig) -> BackendTls:
    """The node's TLS settings (its own keys over `server_tls:`), with its context loaded from disk once."""
    st = config.server_tls
    key = (
        node.tls or st.tls,
        node.tls_ca or st.tls_ca,
        node.tls_cert or st.tls_cert,
        node.tls_key or st.tls_key,
    )
    tls = _cache.get(key)
    if tls is None:
        tls = _cache[key] = BackendTls(key[0], server_tls_context(*key))
    return tls


def reload_certificates() -> None:
    """Forget loaded contexts: new connections read the files again (existing ones keep theirs)."""
    _cache.clear()


async def _tcp_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"cannot resolve {host}")


async def open_connection(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], P], host: str, port: int, tls: BackendTls | None
) -> tuple[asyncio.Transport, P]:
    """A connected transport to host:port, with TLS negotiated as `tls.mode` says (SSLRequest first)."""
    if tls is None or tls.mode is ServerTlsMode.DISABLE or tls.context is None:
        transport, protocol = await loop.create_connection(factory, host, port)
        return transport, protocol
    sock = await _tcp_socket(loop, host, port)
    try:
        await loop.sock_sendall(sock, _SSL_REQUEST)
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            transport, protocol = await loop.create_connection(
                factory, sock=sock, ssl=tls.context, server_hostname=host
            )
            return transport, protocol
        if answer == b"N":
            if tls.mode is ServerTlsMode.PREFER:
                transport, protocol = await loop.create_connection(factory, sock=sock)
                return transport, protocol
            raise ConnectionRefusedError(f"server does not support SSL, but SSL was required (tls: {tls.mode.value})")
        if not answer:
            raise ConnectionResetError("server closed the connection after SSLRequest")
        raise ConnectionError(f"server answered SSLRequest with {answer!r}")
    except BaseException:
        sock.close()
        raise
