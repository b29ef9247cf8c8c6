"""The admin console's binary result encoding (asyncpg asks for binary int4/int8/numeric)."""

from __future__ import annotations

import struct
from decimal import Decimal

from heliosproxy.session.adminproto import _numeric


def _decode(data: bytes) -> Decimal:
    """PostgreSQL's numeric_recv, for integers."""
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHh", data)
    digits = struct.unpack_from(f"!{ndigits}h", data, 8)
    value = 0
    for i, d in enumerate(digits):
        value += d * 10000 ** (weight - i)
    return Decimal(-value if sign == 0x4000 else value)


def test_numeric_binary_round_trips() -> None:
    for v in (0, 1, 9999, 10000, 12345, 100000000, 123456789012345678, -42):
        assert _decode(_numeric(v)) == v, v
    assert _numeric(12345) == struct.pack("!hhHhhh", 2, 1, 0, 0, 1, 2345)
