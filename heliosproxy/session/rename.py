"""Statement renaming, sans-IO: a client's batch in, the bytes for one server and what each reply means out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from heliosproxy.protocol import codes, messages
from heliosproxy.protocol.frontend import FAIL_BIND, STATEMENT, Msg
from heliosproxy.session.relay import HIDE, PASS, REPLACE, SYNTH, Expect

if TYPE_CHECKING:
    from heliosproxy.session.prepared import Statement


def parse_msg(st: Statement) -> bytes:
    """Parse of a client's statement under its proxy-wide name, with the client's own bytes."""
    return messages.msg(codes.F_PARSE, st.server_c + st.raw + b"\x00" + st.tail)


def bind_msg(data: bytes, at: int, st: Statement) -> bytes:
    """The client's Bind (`data`, its parameters from `at`) of the statement under its proxy-wide name."""
    end = 5
    while data[end] != 0:  # the portal's NUL (the Bind was checked when decoded)
        end += 1
    name = st.server_c
    size = len(data) + len(name) - (at - end - 1) - 1  # the length field: the message less its type byte
    # One allocation (mypyc builds %b formatting of bytes in place): type, length, portal, name, the rest.
    return b"B%b%b%b%b" % (size.to_bytes(4, "big"), data[5 : end + 1], name, data[at:])


# The relay's expectation of a request answered as sent (by type byte): never changed once made (only a
# capture's, a gate's or a synthesized one is), so one per type serves every batch.
_PASS: Final = [Expect(t) for t in range(256)]


def _touch(prepared: dict[str, None], name: str) -> None:
    """Mark a statement used: to the end of the LRU order (a plain dict keeps insertion order; compiled, its
    delete and insert are cheaper than an OrderedDict's generic move_to_end call)."""
    del prepared[name]
    prepared[name] = None


class Renamer:
    """Rewrites one batch for one server connection under transaction pooling.

    A client's named statement lives on servers under a proxy-wide name (same text and types, same
    name: `Statement.server`), prepared lazily on the server a Bind or Describe lands on, with an LRU
    of at most `limit` per server (`prepared`, the server connection's own record). Which statement a
    message names was resolved when the batch was judged (`Msg.st`). Output: `out`, the
    messages to write, and `fix`, one `Expect` per reply the relay must pass, hide, synthesize or replace
    (session/relay.py); `hidden` is True when some reply must not reach the client as the server sends it.
    """

    __slots__ = ("fix", "hidden", "limit", "out", "prepared")

    def __init__(
        self,
        prepared: dict[str, None],
        limit: int,
        out: list[bytes],
        fix: list[Expect],
    ) -> None:
        self.prepared = prepared
        self.limit = limit
        self.out = out
        self.fix = fix
        self.hidden = False

    def batch(self, batch: list[Msg], rename: bool, inject: bytes | None) -> None:
        """Add the batch: renamed when `rename` (transaction pooling), else as sent. `inject` replaces the
        server's error to the proxy's FAIL_BIND (an error of the proxy's in mid-pipeline)."""
        out = self.out
        fix = self.fix
        for m in batch:
            t = m.t
            if inject is not None and m.data is FAIL_BIND:
                out.append(m.data)
                fix.append(Expect(t, REPLACE, inject))
                self.hidden = True
            elif not rename or not m.names_statement():
                out.append(m.data)
                if t != codes.F_FLUSH:
                    fix.append(_PASS[t])
            elif t == codes.F_PARSE:
                st: Statement | None = m.st
                if st is None:
                    out.append(m.data)
                    fix.append(_PASS[t])
                    continue
                if st.server in self.prepared:
                    _touch(self.prepared, st.server)
                    synth = Expect(0, SYNTH, messages.PARSE_COMPLETE)
                    synth.stmt = st  # refused instead if the server's transaction has failed by then
                    fix.append(synth)
                else:
                    out.append(parse_msg(st))
                    fix.append(Expect(t, PASS, st.server.encode(), client=st.name))
                    self._remember(st.server)
                self.hidden = True
            elif t == codes.F_BIND:
                st = m.st
                if st is None:
                    out.append(m.data)  # the server reports the unknown statement itself
                    fix.append(_PASS[t])
                    continue
                self.ensure(st)
                out.append(bind_msg(m.data, m.at, st))
                fix.append(_PASS[t])
            elif t == codes.F_DESCRIBE:
                st = m.st
                if st is None:
                    out.append(m.data)
                    fix.append(_PASS[t])
                    continue
                self.ensure(st)
                out.append(messages.msg(codes.F_DESCRIBE, b"S" + st.server_c))
                fix.append(_PASS[t])
            else:  # Close of a named statement (forgotten when judged): it stays on the server, shared
                assert t == codes.F_CLOSE and m.sub == STATEMENT
                fix.append(Expect(0, SYNTH, messages.CLOSE_COMPLETE))
                self.hidden = True

    def ensure(self, st: Statement) -> None:
        """Prepare the statement on this server if it lacks it, with a hidden Parse."""
        prepared = self.prepared
        name = st.server
        if name in prepared:
            _touch(prepared, name)
            return
        self.out.append(parse_msg(st))
        self.fix.append(Expect(codes.F_PARSE, HIDE, st.server.encode()))
        self._remember(st.server)
        self.hidden = True

    def _remember(self, name: str) -> None:
        prepared = self.prepared
        prepared[name] = None
        while len(prepared) > self.limit:
            old = next(iter(prepared))  # the least recently used
            del prepared[old]
            self.out.append(messages.close_statement(old))
            self.fix.append(Expect(codes.F_CLOSE, HIDE))
            self.hidden = True
