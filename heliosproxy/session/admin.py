"""The admin console session: a client logged in to the console database, its messages answered by the console."""

from __future__ import annotations

import inspect
import logging
import struct
from typing import TYPE_CHECKING, Any

from heliosproxy.errors import HeliosError
from heliosproxy.protocol import codes, frontend, messages
from heliosproxy.protocol.frontend import Msg, header_error
from heliosproxy.session import adminproto

if TYPE_CHECKING:
    from heliosproxy.session.core import ClientSession

log = logging.getLogger("heliosproxy.session")

_I = struct.Struct("!I")
_COPY = frozenset((codes.F_COPY_DATA, codes.F_COPY_DONE, codes.F_COPY_FAIL))
_READY = 3  # ClientSession's READY phase
_CLOSED = 4  # ClientSession's CLOSED phase


def _login_params(app_name: str) -> dict[str, str]:
    return {
        "server_version": "15.0 (heliosproxy)",
        "client_encoding": "UTF8",
        "server_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "application_name": app_name,
    }


class AdminSession:
    """Serves a ClientSession that logged in to the admin console database (chosen at login): frontend
    messages from its buffer are answered by the console (heliosproxy/admin/console.py), the extended
    protocol by adminproto; no server connection is ever bound. One request runs at a time: while the
    console gathers an answer (from every worker), further messages wait in the buffer."""

    __slots__ = ("batch", "busy", "s")

    def __init__(self, session: ClientSession):
        self.s = session
        self.batch: list[Msg] = []  # extended-protocol messages up to Sync/Flush
        self.busy = False  # an answer is being gathered: hold further messages

    @staticmethod
    def login_params(app_name: str) -> dict[str, str]:
        """The ParameterStatus values an admin client gets at login."""
        return _login_params(app_name)

    def process(self) -> None:
        """Consume complete frontend messages from the session's buffer until one has to wait."""
        s = self.s
        buf = s.buf
        pos = 0
        n = len(buf)
        max_size = s.ctx.config.max_message_size
        unpack = _I.unpack_from
        try:
            while n - pos >= 5 and not self.busy and s.phase == _READY:
                t = buf[pos]
                length = unpack(buf, pos + 1)[0]
                err = header_error(t, length, max_size)
                if err:
                    s._violation(err)
                    return
                end = pos + 1 + length
                if end > n:
                    break
                msg = bytes(buf[pos:end])
                pos = end
                if t == codes.F_QUERY:
                    self._query(msg)
                elif t == codes.F_TERMINATE:
                    s.phase = _CLOSED
                    s.io.close()
                    return
                elif t in _COPY:
                    continue  # no COPY runs here: nothing to forward it to
                elif s.skip_to_sync:
                    if t == codes.F_SYNC:
                        s.skip_to_sync = False
                        self.batch.clear()
                        s._write(messages.READY_IDLE)
                elif t == codes.F_SYNC or t == codes.F_FLUSH:
                    self.batch.append(Msg(t, msg))
                    self._batch_end()
                elif t == codes.F_FUNCTION_CALL:
                    self._error("0A000", "the admin console does not run function calls")
                else:
                    try:
                        decoded = frontend.decode(t, msg, s._codec)
                    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
                        log.warning("client %s user=%s: malformed %r message: %s", s.peer, s.user, chr(t), exc)
                        s._violation("invalid frontend message format")
                        return
                    self.batch.append(decoded)
                    if len(self.batch) > 10_000:
                        s._violation("too many extended-protocol messages without Sync")
                        return
        finally:
            if pos:
                del buf[:pos]
        if self.busy and len(buf) > max_size:
            s._pause_reading()

    def _error(self, sqlstate: str, message: str) -> None:
        self.s._write(messages.error_response("ERROR", sqlstate, message) + messages.READY_IDLE)

    def _query(self, msg: bytes) -> None:
        s = self.s
        s.query_count += 1
        if msg.find(b"\x00", 5) != len(msg) - 1:
            s._violation("invalid string in message")
            return
        try:
            sql = msg[5:-1].decode(s._codec)
        except UnicodeDecodeError:
            sql = msg[5:-1].decode(s._codec, "replace")
        console = s.ctx.admin
        if console is None:
            self._error("0A000", "the admin console is not available")
            return
        try:
            body = console.execute(sql, s)
        except HeliosError as exc:
            self._error(exc.sqlstate, exc.message)
            return
        if inspect.isawaitable(body):
            # Gathered from every worker: hold the client's next messages until it is written.
            self.busy = True
            s._pause_reading()
            s._spawn(self._query_async(body))
            return
        if body is not None:
            s._write(body + messages.READY_IDLE)

    async def _query_async(self, pending: Any) -> None:
        try:
            body = await pending
        except HeliosError as exc:
            body = messages.error_response("ERROR", exc.sqlstate, exc.message)
        self._resume(body + messages.READY_IDLE)

    def _batch_end(self) -> None:
        """Sync or Flush: the batch is answered once every worker's part is in (held messages wait)."""
        batch = self.batch
        self.batch = []
        self.busy = True
        self.s._pause_reading()
        self.s._spawn(self._batch_async(batch))

    async def _batch_async(self, batch: list[Msg]) -> None:
        self._resume(await adminproto.answer(self.s, batch))

    def _resume(self, body: bytes) -> None:
        self.busy = False
        self.s._write(body)
        self.s._continue()
