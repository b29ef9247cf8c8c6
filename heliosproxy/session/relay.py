"""Reply relay, sans-IO: walks a server's replies against what each request expects and says what the client sees."""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from heliosproxy.protocol import codes, messages

if TYPE_CHECKING:
    from heliosproxy.session.prepared import Statement

_I: Final = struct.Struct("!I")
_H: Final = struct.Struct("!H")
_i: Final = struct.Struct("!i")

# What happens to the answer of one request.
PASS: Final = 0  # relayed
HIDE: Final = 1  # a hidden request of the proxy's: not shown (its ParameterStatus pass; a hidden Parse's error shows)
SYNTH: Final = 2  # no request was sent: Expect.data is the answer, emitted in its place
HOLD: Final = 3  # kept until its ReadyForQuery, then relayed or retried (Host.hold_done)
REPLACE: Final = 4  # the server's ErrorResponse to this request is replaced by Expect.data (the proxy's error)

COMPLETES: Final = {
    codes.F_PARSE: frozenset((codes.B_PARSE_COMPLETE,)),
    codes.F_BIND: frozenset((codes.B_BIND_COMPLETE,)),
    codes.F_CLOSE: frozenset((codes.B_CLOSE_COMPLETE,)),
    codes.F_DESCRIBE: frozenset((codes.B_ROW_DESCRIPTION, codes.B_NO_DATA)),
    codes.F_EXECUTE: frozenset((codes.B_COMMAND_COMPLETE, codes.B_EMPTY_QUERY, codes.B_PORTAL_SUSPENDED)),
    codes.F_SYNC: frozenset((codes.B_READY_FOR_QUERY,)),
    codes.F_QUERY: frozenset((codes.B_READY_FOR_QUERY,)),
    codes.F_FUNCTION_CALL: frozenset((codes.B_READY_FOR_QUERY,)),
}
ASYNC: Final = frozenset((codes.B_NOTICE, codes.B_NOTIFICATION, codes.B_PARAMETER_STATUS))
FATAL_SEVERITY: Final = frozenset((b"SFATAL", b"SPANIC"))
_SYNC_KINDS: Final = (codes.F_SYNC, codes.F_QUERY, codes.F_FUNCTION_CALL)
ABORTED: Final = "current transaction is aborted, commands ignored until end of transaction block"


class Expect:
    """One request the server will answer, and what to do with its answer."""

    __slots__ = ("action", "capture", "client", "data", "failed", "gate", "kind", "rows", "stmt")

    def __init__(
        self,
        kind: int,
        action: int = PASS,
        data: bytes = b"",
        capture: Callable[[list[list[str | None]] | None], None] | None = None,
        client: str | None = None,
    ):
        self.kind = kind  # the frontend message type (0: nothing was sent, SYNTH)
        self.action = action
        self.data = data  # PARSE: the server's statement name; SYNTH/REPLACE: the bytes to emit
        self.capture = capture  # a hidden query whose rows are handed to this at its ReadyForQuery
        self.client = client  # a client's own Parse: its statement name
        self.rows: list[list[str | None]] = []
        self.failed = False
        self.stmt: Statement | None = None  # a synthesized ParseComplete: the client's statement
        # A hidden Sync after a batch the client ended with Flush: what the client is sent before it is
        # held until its ReadyForQuery, so that the client's next request finds the server free.
        self.gate = False


class Host(Protocol):
    """What the relay tells the session (the only effects it has besides its output)."""

    def refuses_parse(self, st: Statement, index: int) -> bool:
        """A ParseComplete would be synthesized while the server's transaction is aborted: True if the
        server would refuse that Parse (then the session forgets the statement; the relay answers 25P02).
        `index`: how many ReadyForQuery this feed has passed before it (which request fails)."""
        ...

    def reply_error(self, m: bytes, head: Expect | None, index: int) -> None:
        """An ErrorResponse answered `head` (None: a request relayed without expectations); `index`: how
        many ReadyForQuery this feed has passed before it (the failed request is the session's index-th
        still waiting: its earlier ones get their ReadyForQuery from this same feed)."""
        ...

    def statement_dropped(self, server: str) -> None:
        """The server skipped a Parse after an error: it does not hold that statement."""
        ...

    def statement_prepared(self, server: str) -> None:
        """The server answered a Parse of that shared name with ParseComplete."""
        ...

    def hold_done(self, held: list[bytes]) -> bool:
        """A HOLD request got its ReadyForQuery: True if the session retries it (the replies are dropped)."""
        ...


def row_texts(m: bytes, codec: str) -> list[str | None]:
    """The text values of one DataRow message."""
    n = _H.unpack_from(m, 5)[0]
    pos = 7
    row: list[str | None] = []
    for _ in range(n):
        ln = _i.unpack_from(m, pos)[0]
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(m[pos : pos + ln].decode(codec, "replace"))
            pos += ln
    return row


class ReplyRelay:
    """Server bytes in, client bytes and ReadyForQuery statuses out, for one session.

    `expect` is the session's queue of expectations, in the order the requests were sent. Bytes may
    arrive split anywhere; a message is acted on once complete. No sockets, no event loop."""

    __slots__ = (
        "buf", "codec", "expect", "fatal", "gated", "gating", "held", "host", "listen_as", "listen_from", "mute",
        "params", "status",
    )

    def __init__(self, host: Host, expect: collections.deque[Expect]):
        self.host = host
        self.expect = expect
        self.buf = bytearray()  # the start of a message not complete yet
        self.status = codes.TX_IDLE  # the server's transaction status as of the replies walked so far
        self.mute = False  # drop the server's answers until its next ReadyForQuery (a refused pipeline)
        self.held: list[bytes] = []  # HOLD: replies kept back until the ReadyForQuery
        self.codec = "utf-8"  # the client's encoding, for captured rows
        self.listen_from = 0  # notifications from this server PID ...
        self.listen_as = 0  # ... are shown with this PID (0: unchanged)
        self.params = False  # a ParameterStatus was relayed (the session decides whether it pins)
        self.fatal = False  # a FATAL was relayed: the server is ending the session
        self.gating = False  # output is held until a gate's ReadyForQuery (Expect.gate) ...
        self.gated: list[bytes] = []  # ... here

    def reset(self) -> None:
        self.buf.clear()
        self.mute = False
        self.held = []
        self.gating = False
        self.gated = []

    @property
    def idle(self) -> bool:
        """Nothing expected and no partial message: the replies can be relayed unparsed again."""
        return not self.expect and not self.buf

    def feed(self, data: bytes) -> tuple[list[bytes], list[int]]:
        """Take server bytes: what to write to the client, and the statuses of the ReadyForQuery it passes.

        Only headers are read for what passes unchanged: a run of such messages goes out as one slice of the
        bytes it arrived in (all of `data` itself when everything in it passes), never copied message by message.
        Only a message split across reads is copied, once, to be walked whole."""
        out: list[bytes] = []
        readies: list[int] = []
        buf = self.buf
        start = 0
        if buf:
            # The message begun in an earlier read: complete it from `data` and walk it alone.
            n = len(data)
            if len(buf) < 5:
                start = min(5 - len(buf), n)
                buf += data[:start]
            if len(buf) >= 5:
                take = min(1 + _I.unpack_from(buf, 1)[0] - len(buf), n - start)
                buf += data[start : start + take]
                start += take
                if len(buf) == 1 + _I.unpack_from(buf, 1)[0]:
                    piece = bytes(buf)
                    buf.clear()
                    self._walk(piece, 0, out, readies)
            if buf:
                self._walk(b"", 0, out, readies)  # still incomplete: only what needs no server reply
        if start < len(data) or not buf:
            self._walk(data, start, out, readies)
        expect = self.expect
        if self.gating or (expect and expect[-1].gate):
            self.gating = True
            self.gated.extend(out)
            return [], readies
        return out, readies

    def _walk(self, src: bytes, pos: int, out: list[bytes], readies: list[int]) -> None:
        """Walk the complete messages of `src` from `pos`; a partial one at the end goes to `buf`."""
        expect = self.expect
        host = self.host
        run = -1  # start of the run of messages passed unchanged (not yet in `out`)
        n = len(src)
        while True:
            while expect and expect[0].action == SYNTH:
                if run >= 0:
                    out.append(src[run:pos])
                    run = -1
                e = expect.popleft()
                if e.stmt is not None and self.status == codes.TX_FAILED and host.refuses_parse(e.stmt, len(readies)):
                    # The server would refuse this Parse in its aborted transaction, and skip to the
                    # Sync: the rest of its answers to this batch are not shown.
                    out.append(messages.error_response("ERROR", "25P02", ABORTED))
                    self._skip_to_sync(None)
                    self.mute = True
                    continue
                out.append(e.data)
            if n - pos < 5:
                break
            t = src[pos]
            start = pos
            end = pos + 1 + _I.unpack_from(src, pos + 1)[0]
            if end > n:
                break
            pos = end
            head = expect[0] if expect else None
            if t == codes.B_READY_FOR_QUERY:
                self.status = src[start + 5]
                self.mute = False
                if head is None or (head.action == PASS and head.capture is None):
                    # The common end of a reply: passed unchanged.
                    if run < 0:
                        run = start
                    readies.append(src[start + 5])
                    if head is not None and head.kind in _SYNC_KINDS:
                        expect.popleft()
                        if head.gate and self.gating:
                            if run >= 0:
                                out.append(src[run:pos])
                                run = -1
                            out[:0] = self.gated  # held since an earlier feed: it goes first
                            self.gated = []
                            self.gating = False
                    continue
            elif self.mute and t not in ASYNC:
                if run >= 0:
                    out.append(src[run:start])
                    run = -1
                continue
            elif head is not None and head.action == PASS and head.capture is None and t != codes.B_ERROR and (
                t not in ASYNC or (t == codes.B_NOTICE)
            ):
                # A reply (or notice) of a request the client sees as the server answers it.
                if run < 0:
                    run = start
                if t in COMPLETES.get(head.kind, ()):
                    expect.popleft()
                    if t == codes.B_PARSE_COMPLETE and head.data:
                        host.statement_prepared(head.data.decode())
                continue
            elif head is None and t != codes.B_ERROR and t != codes.B_NOTIFICATION and t != codes.B_PARAMETER_STATUS:
                if run < 0:
                    run = start
                continue
            # Everything else is looked at whole: flush the run first (order is kept).
            if run >= 0:
                out.append(src[run:start])
                run = -1
            m = bytes(src[start:end])
            if head is not None and head.action == HOLD:
                self.held.append(m)
                if t == codes.B_READY_FOR_QUERY:
                    expect.popleft()
                    held, self.held = self.held, []
                    if not host.hold_done(held):
                        out.extend(held)
                        readies.append(m[5])
                continue
            if t in ASYNC:
                # Notices of the proxy's hidden requests stay hidden. Their parameter reports pass:
                # a hidden request only ever sets the client's own values.
                if t == codes.B_NOTIFICATION and self.listen_as and _I.unpack_from(m, 5)[0] == self.listen_from:
                    m = m[:5] + _I.pack(self.listen_as) + m[9:]
                if head is None or head.action != HIDE:
                    out.append(m)
                    if t == codes.B_PARAMETER_STATUS:
                        self.params = True
                elif t != codes.B_NOTICE:
                    out.append(m)
                continue
            if head is not None and head.capture is not None:
                # A hidden query whose answer the proxy reads (settings read back).
                if t == codes.B_DATA_ROW:
                    head.rows.append(row_texts(m, self.codec))
                elif t == codes.B_ERROR:
                    head.failed = True
                    head.data = m  # its error, for a caller that shows it (replay's hidden COMMIT)
                elif t == codes.B_READY_FOR_QUERY:
                    expect.popleft()
                    head.capture(None if head.failed else head.rows)
                continue
            if t == codes.B_ERROR:
                hidden = head is not None and head.action == HIDE
                if m[5:11] in FATAL_SEVERITY and not hidden:
                    self.fatal = True
                host.reply_error(m, head, len(readies))
                if head is not None and head.action == REPLACE:
                    out.append(head.data)
                elif not (hidden and head is not None and head.kind == codes.F_QUERY):
                    out.append(m)  # a hidden Parse's error: the client's own request fails with it
                self._skip_to_sync(head)
                continue
            if head is None:
                out.append(m)
                if t == codes.B_READY_FOR_QUERY:
                    readies.append(m[5])
                continue
            if head.action != HIDE:
                out.append(m)
                if t == codes.B_READY_FOR_QUERY:
                    readies.append(m[5])
            if t in COMPLETES.get(head.kind, ()):
                expect.popleft()
                if t == codes.B_PARSE_COMPLETE and head.data:
                    host.statement_prepared(head.data.decode())
                elif head.gate and self.gating:
                    out[:0] = self.gated  # held since an earlier feed: it goes first
                    self.gated = []
                    self.gating = False
        if run >= 0:
            out.append(src[run:pos] if run or pos < n else src)
        if pos < n:
            self.buf += src[pos:]  # the start of a message not complete yet

    def _skip_to_sync(self, head: Expect | None) -> None:
        """After an error the server skips to the Sync: drop what it will not answer. A Parse it skips
        was never prepared there, whatever was recorded when it was sent."""
        expect = self.expect
        while expect and expect[0].kind not in _SYNC_KINDS:
            skipped = expect.popleft()
            if skipped is not head and skipped.kind == codes.F_PARSE and skipped.data:
                self.host.statement_dropped(skipped.data.decode())
