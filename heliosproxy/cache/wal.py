"""`cache.invalidation: wal`: a logical replication stream from the primary drops what other writers change.

The reader logs in to the primary as cache.wal_user with `replication=database`, creates a
TEMPORARY logical slot (dropped by the server when the connection ends) and runs START_REPLICATION:
the server streams every committed change as it is decoded, no polling. At each COMMIT the tables
the transaction changed get new generations (heliosproxy/cache/gens.py), in every worker at once.
While the stream is down nothing is known about writes: every entry is dropped when it breaks and
again when it is back (writes may have been missed in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Final

from heliosproxy.backends.connection import BackendConnection, connect
from heliosproxy.backends.registry import Registry
from heliosproxy.backends.tls import node_tls
from heliosproxy.cache.gens import GLOBAL_SLOT, table_slot
from heliosproxy.config.schema import Config
from heliosproxy.protocol import codes, messages

__all__ = ["WalReader", "parse_table"]

log = logging.getLogger("heliosproxy.cache.wal")
_I = struct.Struct("!I")
_Q = struct.Struct("!Q")
_PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_STATUS_EVERY: Final = 5.0  # seconds between standby status updates (wal_sender_timeout is 60s by default)


def parse_table(line: str) -> str | None:
    """`table public."My T": INSERT: ...` (test_decoding) -> `public.My T` (parts unquoted and joined by
    dots, as the classifier names tables); other lines -> None."""
    if not line.startswith("table "):
        return None
    rest = line[6:]
    out: list[str] = []
    i = 0
    n = len(rest)
    in_quote = False
    while i < n:  # up to the ":" that ends the (possibly quoted) qualified name
        c = rest[i]
        if c == '"':
            if in_quote and rest.startswith('""', i):
                out.append('"')
                i += 2
                continue
            in_quote = not in_quote
        elif c == ":" and not in_quote:
            return "".join(out)
        else:
            out.append(c)
        i += 1
    return None


class WalReader:
    """One replication connection of this worker; `on_write(slots)` is called for each COMMIT."""

    def __init__(self, config: Config, registry: Registry, on_write: Callable[[set[int]], None]):
        self.config = config
        self.registry = registry
        self.on_write = on_write
        self.connected = False
        self.commits = 0
        self.last_commit_at = 0.0  # wall-clock time of the last COMMIT decoded (its server timestamp)
        self.delay_ms: float | None = None  # server commit time -> here, of the last transaction seen
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: BackendConnection | None = None
        self._buf = bytearray()
        self._tables: set[int] = set()
        self._lsn = 0
        self._lost: asyncio.Event | None = None
        self._last_status = 0.0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def configure(self, config: Config) -> None:
        self.config = config

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: drop everything, log, try again
                self.errors += 1
                self.last_error = str(exc) or type(exc).__name__
                log.warning("cache WAL reader: %s (retrying)", self.last_error)
            if self.connected:
                self.connected = False
                failures = 0
            failures += 1
            self.on_write({GLOBAL_SLOT})
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))  # 1 s, 2 s, ... 30 s between attempts

    async def _stream(self) -> None:
        cfg = self.config
        user = cfg.cache.wal_user
        primary = self.registry.primary_node()
        if user is None or primary is None:
            raise RuntimeError("no primary known (or cache.wal_user is missing)")
        nc = primary.cfg
        conn = await connect(
            nc.name, nc.host, nc.port, user.name, user.password, cfg.cache.wal_database,
            timeout=cfg.pool.connect_timeout, params={"replication": "database"}, tls=node_tls(cfg, nc),
        )
        self._conn = conn
        try:
            slot = f"helios_cache_{os.getpid()}_{os.urandom(3).hex()}"
            await conn.query(f"CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL test_decoding")
            self._lost = asyncio.Event()
            self._buf.clear()
            self._tables.clear()
            conn.attach(self)
            conn.write(messages.query(f"START_REPLICATION SLOT {slot} LOGICAL 0/0"))
            await self._lost.wait()
            raise ConnectionError(self.last_error or "the replication connection was closed")
        finally:
            self._conn = None
            conn.close()

    # ------------------------------------------------------------------ BackendOwner
    def on_backend_data(self, conn: BackendConnection, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 5:
                end = pos + 1 + _I.unpack_from(buf, pos + 1)[0]
                if end > n:
                    break
                t = buf[pos]
                body = bytes(buf[pos + 5 : end])
                pos = end
                if t == codes.B_COPY_DATA:
                    self._copy_data(conn, body)
                elif t == codes.B_COPY_BOTH:
                    self.connected = True
                    self.on_write({GLOBAL_SLOT})  # writes made while it was down were not seen
                    log.info("cache WAL reader: streaming from %s", conn.node)
                elif t == codes.B_ERROR:
                    self.last_error = messages.parse_error_fields(body).get("M", "replication error")
                    self._fail()
        finally:
            del buf[:pos]

    def on_backend_lost(self, conn: BackendConnection, exc: Exception | None) -> None:
        if exc is not None:
            self.last_error = str(exc)
        self._fail()

    def on_backend_drained(self, conn: BackendConnection) -> None:
        pass

    def _fail(self) -> None:
        if self._lost is not None:
            self._lost.set()

    def _copy_data(self, conn: BackendConnection, body: bytes) -> None:
        kind = body[:1]
        if kind == b"w":  # XLogData: start, end, send time, then the plugin's text
            start = _Q.unpack_from(body, 1)[0]
            self._lsn = max(self._lsn, start)
            self._change(body[25:].decode("utf-8", "replace"))
        elif kind == b"k":  # keepalive: wal end, send time, reply requested
            self._lsn = max(self._lsn, _Q.unpack_from(body, 1)[0])
            if body[17:18] == b"\x01" or time.monotonic() - self._last_status > _STATUS_EVERY:
                self._status(conn)

    def _change(self, text: str) -> None:
        if text.startswith("table "):
            name = parse_table(text)
            self._tables.add(GLOBAL_SLOT if name is None else table_slot(name))
        elif text.startswith("COMMIT"):
            tables, self._tables = self._tables, set()
            self.commits += 1
            if tables:
                self.on_write(tables)
            self.last_commit_at = time.time()
        elif text.startswith("BEGIN"):
            self._tables = set()

    def _status(self, conn: BackendConnection) -> None:
        """Standby status update: everything received is written, flushed and applied (nothing to keep)."""
        self._last_status = time.monotonic()
        now_us = int(time.time() * 1_000_000) - _PG_EPOCH_US
        lsn = self._lsn
        payload = b"r" + _Q.pack(lsn) + _Q.pack(lsn) + _Q.pack(lsn) + _Q.pack(now_us & 0xFFFFFFFFFFFFFFFF) + b"\x00"
        conn.write(messages.msg(codes.F_COPY_DATA, payload))
