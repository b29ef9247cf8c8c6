"""Client prepared statements under transaction pooling: each gets a proxy-wide name shared by all backends."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from heliosproxy.plugins.hooks import Cached
from heliosproxy.sql.classify import StatementInfo
from heliosproxy.sql.hints import Hints

_PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Statement:
    name: str  # the client's name ("" = the unnamed statement)
    sql: str
    tail: bytes  # parameter-type section of the Parse message, as the client sent it
    info: StatementInfo
    server: str  # name on backends: same text + types → same name, so backends share it
    hints: Hints | None = None  # routing hints from its comments, applied to every execution
    cached: Cached | None = None  # a pre_query plugin answered it: executions are answered from this
    raw: bytes = b""  # the text as sent to servers (the client's encoding)
    original: str = ""  # the client's text before any plugin rewrite ("" = same as sql)
    generation: int = 0  # plugin-set generation whose verdicts this statement carries
    readable: bool = True  # False: not text in the client's encoding (the server will refuse it)

    def param_count(self) -> int:
        declared = struct.unpack_from("!H", self.tail, 0)[0] if len(self.tail) >= 2 else 0
        used = max((int(m) for m in _PARAM.findall(self.sql)), default=0)
        return max(declared, used)


def server_name(sql: str, tail: bytes, epoch: int = 0) -> str:
    """Same text, types and schema epoch -> same name on every backend (so backends share it).
    The epoch moves on after DDL: statements prepared from then on are planned afresh."""
    h = hashlib.blake2b(sql.encode() + b"\x00" + tail + epoch.to_bytes(4, "big"), digest_size=10).hexdigest()
    return f"hp_{h}"
