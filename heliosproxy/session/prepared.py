"""Client prepared statements under transaction pooling: each gets a proxy-wide name shared by all backends."""

from __future__ import annotations

import hashlib
import re
import struct
from typing import final

from heliosproxy.plugins.hooks import Cached
from heliosproxy.sql.classify import StatementInfo
from heliosproxy.sql.hints import Hints

_PARAM = re.compile(r"\$(\d+)")


@final
class Statement:
    """A client's prepared statement as the proxy judged it (never changed after: judged again, it is replaced)."""

    __slots__ = (
        "cached", "generation", "hints", "info", "name", "original", "raw", "readable", "server", "server_c", "sql",
        "tail",
    )

    def __init__(
        self,
        name: str,
        sql: str,
        tail: bytes,
        info: StatementInfo,
        server: str,
        hints: Hints | None = None,
        cached: Cached | None = None,
        raw: bytes = b"",
        original: str = "",
        generation: int = 0,
        readable: bool = True,
    ) -> None:
        self.name = name  # the client's name ("" = the unnamed statement)
        self.sql = sql
        self.tail = tail  # parameter-type section of the Parse message, as the client sent it
        self.info = info
        self.server = server  # name on backends: same text + types → same name, so backends share it
        self.server_c = server.encode() + b"\x00" if server else b""  # as a C string, for the messages renamed
        self.hints = hints  # routing hints from its comments, applied to every execution
        self.cached = cached  # a pre_query plugin answered it: executions are answered from this
        self.raw = raw  # the text as sent to servers (the client's encoding)
        self.original = original  # the client's text before any plugin rewrite ("" = same as sql)
        self.generation = generation  # plugin-set generation whose verdicts this statement carries
        self.readable = readable  # False: not text in the client's encoding (the server will refuse it)

    def __repr__(self) -> str:
        return f"Statement(name={self.name!r}, server={self.server!r}, sql={self.sql[:60]!r})"

    def param_count(self) -> int:
        declared = struct.unpack_from("!H", self.tail, 0)[0] if len(self.tail) >= 2 else 0
        used = max((int(m) for m in _PARAM.findall(self.sql)), default=0)
        return max(declared, used)


def server_name(sql: str, tail: bytes, epoch: int = 0) -> str:
    """Same text, types and schema epoch -> same name on every backend (so backends share it).
    The epoch moves on after DDL: statements prepared from then on are planned afresh."""
    h = hashlib.blake2b(sql.encode() + b"\x00" + tail + epoch.to_bytes(4, "big"), digest_size=10).hexdigest()
    return f"hp_{h}"
