"""The client-facing listening socket: accepts connections and gives each its ClientProtocol (session glue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat

from heliosproxy.logsetup import hostport
from heliosproxy.session.client import ClientProtocol
from heliosproxy.session.context import ProxyContext

log = logging.getLogger("heliosproxy.listener")


# ClientProtocol is used as is (no subclass: it may be a compiled class, see heliosproxy/_compiled.py).
# Accepted TCP sockets get TCP_NODELAY from the event loop itself (uvloop and asyncio both set it).


async def start_listener(ctx: ProxyContext, *, reuse_port: bool = False) -> asyncio.Server:
    cfg = ctx.config
    server = await asyncio.get_running_loop().create_server(
        lambda: ClientProtocol(ctx),
        cfg.listen_host,
        cfg.listen_port,
        reuse_port=reuse_port or None,
        backlog=4096,
    )
    for s in server.sockets:
        log.info("listening on %s", hostport(s.getsockname()))
    return server


async def start_unix_listener(ctx: ProxyContext, path: str) -> asyncio.Server:
    """listen_unix: the same sessions on a Unix socket (psql -h DIR -p PORT for DIR/.s.PGSQL.PORT)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a socket left by an earlier run
    server = await asyncio.get_running_loop().create_unix_server(lambda: ClientProtocol(ctx), path, backlog=4096)
    os.chmod(path, 0o777)  # like PostgreSQL's default unix_socket_permissions
    log.info("listening on %s", path)
    return server
