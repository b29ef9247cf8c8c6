"""Client prepared statements under transaction pooling: each gets a proxy-wide name shared by all backends."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from heliosproxy.sql.classify import StatementInfo


@dataclass(frozen=True, slots=True)
class Statement:
    name: str  # the client's name
    sql: str
    tail: bytes  # parameter-type section of the Parse message, as the client sent it
    info: StatementInfo
    server: str  # name on backends: same text + types → same name, so backends share it


def server_name(sql: str, tail: bytes) -> str:
    h = hashlib.blake2b(sql.encode() + b"\x00" + tail, digest_size=10).hexdigest()
    return f"hp_{h}"
