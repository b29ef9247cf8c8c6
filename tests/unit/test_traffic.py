"""The reply meter (rows per statement, one reply captured across any chunking) and the analytics histogram."""

from __future__ import annotations

import collections
import random

from heliosproxy.protocol import messages
from heliosproxy.traffic.analytics import bucket_ms, bucket_of, percentile_ms
from heliosproxy.traffic.meter import ReplyMeter, summarize, tag_rows

Z = b"Z\x00\x00\x00\x05I"


def test_tag_rows() -> None:
    assert tag_rows(b"SELECT 3\x00") == 3
    assert tag_rows(b"INSERT 0 12\x00") == 12
    assert tag_rows(b"UPDATE 0\x00") == 0
    assert tag_rows(b"CREATE TABLE\x00") == 0
    assert tag_rows(b"COPY 7\x00") == 7


def test_meter_under_any_chunking() -> None:
    notice = messages.error_response("NOTICE", "00000", "hello", notice=True)
    r1 = messages.result_set(["a"], [["1"], ["2"]]) + Z
    r2 = notice + messages.result_set(["a"], [["x" * 300]] * 5) + Z
    r3 = messages.command_complete("UPDATE 4") + Z
    rng = random.Random(7)
    for _ in range(300):
        inflight: collections.deque[int] = collections.deque([1, 2, 3])
        meter = ReplyMeter(inflight, True)
        got: list[tuple[bytes | None, int]] = []

        def keep(b: bytes | None, rows: int, _at: float, got: list[tuple[bytes | None, int]] = got) -> None:
            got.append((b, rows))

        assert meter.arm(keep, 1 << 20)
        for part in (r1, r2 + r3):
            pos = 0
            while pos < len(part):
                k = rng.randint(1, 64)
                meter.feed(part[pos : pos + k])
                pos += k
            if part is r1:  # between two statements (nothing in flight): capture the next one
                assert meter.at_boundary and not meter.capturing
                assert meter.arm(keep, 100)  # r2 is over this limit
        assert got[0] == (r1, 2)
        assert got[1] == (None, 5)
        assert [meter.take(), meter.take(), meter.take(), meter.take()] == [2, 5, 4, None]


def test_meter_records_only_statements_in_flight() -> None:
    inflight: collections.deque[int] = collections.deque()
    meter = ReplyMeter(inflight, True)
    meter.feed(messages.command_complete("SELECT 9") + Z)  # the proxy's own answer: no statement of the client
    inflight.append(1)
    meter.feed(messages.result_set(["a"], [["1"]]) + Z)
    assert meter.take() == 1 and meter.take() is None


def test_summary_ignores_row_order_but_not_duplicates() -> None:
    a = summarize(messages.result_set(["a"], [["1"], ["2"], ["2"]]) + Z, 3)
    b = summarize(messages.result_set(["a"], [["2"], ["1"], ["2"]]) + Z, 3)
    c = summarize(messages.result_set(["a"], [["1"], ["1"], ["2"]]) + Z, 3)
    assert a.row_hash == b.row_hash != c.row_hash
    err = summarize(messages.error_response("ERROR", "42P01", "no such table") + Z, 0)
    assert (err.sqlstate, err.message) == ("42P01", "no such table")


def test_histogram_percentiles() -> None:
    buckets: dict[int, int] = {}
    for ms in [1.0] * 98 + [100.0, 100.0]:
        i = bucket_of(ms / 1000)
        buckets[i] = buckets.get(i, 0) + 1
    p50, p99 = percentile_ms(buckets, 0.5), percentile_ms(buckets, 0.99)
    assert 0.84 <= p50 <= 1.19 and 84 <= p99 <= 119
    assert bucket_of(0) == 0 and bucket_of(1e9) == 127 and bucket_ms(0) > 0.01
    assert percentile_ms({}, 0.5) == 0.0
