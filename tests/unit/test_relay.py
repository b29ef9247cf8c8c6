"""The reply relay without sockets: server bytes and expectations in, the client's bytes and statuses out."""

from __future__ import annotations

import collections
import random

import pytest

from heliosproxy.protocol import codes, messages
from heliosproxy.session.prepared import Statement
from heliosproxy.session.relay import HIDE, HOLD, PASS, REPLACE, SYNTH, Expect, ReplyRelay
from heliosproxy.sql.classify import classify_uncached

Z_IDLE = messages.ready_for_query(codes.TX_IDLE)
Z_FAILED = messages.ready_for_query(codes.TX_FAILED)
PARSE_OK = messages.PARSE_COMPLETE
BIND_OK = messages.BIND_COMPLETE
ROW = messages.result_set(["x"], [["1"]])  # RowDescription + DataRow + CommandComplete
ERR = messages.error_response("ERROR", "23505", "duplicate key")
NOTICE = messages.error_response("NOTICE", "00000", "hint", notice=True)
PS_TZ = messages.parameter_status("TimeZone", "UTC")


class Host:
    """Records what the relay tells the session."""

    def __init__(self, refuse: bool = True, retry: bool = False):
        self.calls: list[tuple[str, object]] = []
        self.refuse = refuse
        self.retry = retry

    def refuses_parse(self, st: Statement, index: int) -> bool:
        self.calls.append(("refuses_parse", st.name))
        return self.refuse

    def reply_error(self, m: bytes, head: Expect | None, index: int) -> None:
        self.calls.append(("reply_error", head.kind if head is not None else None))

    def statement_dropped(self, server: str) -> None:
        self.calls.append(("dropped", server))

    def statement_prepared(self, server: str) -> None:
        self.calls.append(("prepared", server))

    def hold_done(self, held: list[bytes]) -> bool:
        self.calls.append(("hold_done", len(held)))
        return self.retry


def relay(*expects: Expect, host: Host | None = None) -> tuple[ReplyRelay, Host]:
    h = host or Host()
    return ReplyRelay(h, collections.deque(expects)), h


def feed_all(r: ReplyRelay, data: bytes, chunk: int | None = None) -> tuple[bytes, list[int]]:
    """Feed `data` whole or in chunks of `chunk` bytes; everything written and every status."""
    out: list[bytes] = []
    readies: list[int] = []
    step = chunk or max(1, len(data))
    for i in range(0, max(1, len(data)), step):
        o, z = r.feed(data[i : i + step])
        out.extend(o)
        readies.extend(z)
    return b"".join(out), readies


def stmt(name: str, sql: str = "SELECT 1") -> Statement:
    return Statement(name, sql, b"\x00\x00", classify_uncached(sql), "hp_x")


def synth_parse(st: Statement) -> Expect:
    e = Expect(0, SYNTH, PARSE_OK)
    e.stmt = st
    return e


# Each case: expectations, the server's bytes, what the client must get, its statuses, the host calls.
CASES = {
    "pass-through extended": (
        lambda: [Expect(codes.F_PARSE), Expect(codes.F_BIND), Expect(codes.F_EXECUTE), Expect(codes.F_SYNC)],
        PARSE_OK + BIND_OK + ROW + Z_IDLE,
        PARSE_OK + BIND_OK + ROW + Z_IDLE,
        [codes.TX_IDLE],
        [],
    ),
    "hidden settings query before the client's": (
        lambda: [Expect(codes.F_QUERY, HIDE), Expect(codes.F_QUERY)],
        NOTICE + PS_TZ + ROW + Z_IDLE + ROW + Z_IDLE,
        PS_TZ + ROW + Z_IDLE,  # the hidden query's notice and answer are not shown, its report is
        [codes.TX_IDLE],
        [],
    ),
    "renamed statement prepared elsewhere (synthesized ParseComplete)": (
        lambda: [Expect(0, SYNTH, PARSE_OK), Expect(codes.F_BIND), Expect(codes.F_EXECUTE), Expect(codes.F_SYNC)],
        BIND_OK + ROW + Z_IDLE,
        PARSE_OK + BIND_OK + ROW + Z_IDLE,
        [codes.TX_IDLE],
        [],
    ),
    "hidden Parse then the client's Bind": (
        lambda: [Expect(codes.F_PARSE, HIDE, b"hp_a"), Expect(codes.F_BIND), Expect(codes.F_EXECUTE),
                 Expect(codes.F_SYNC)],
        PARSE_OK + BIND_OK + ROW + Z_IDLE,
        BIND_OK + ROW + Z_IDLE,
        [codes.TX_IDLE],
        [("prepared", "hp_a")],
    ),
    "error skips to Sync, a skipped Parse is dropped": (
        lambda: [Expect(codes.F_BIND), Expect(codes.F_EXECUTE), Expect(codes.F_PARSE, PASS, b"hp_b"),
                 Expect(codes.F_SYNC)],
        ERR + Z_IDLE,
        ERR + Z_IDLE,
        [codes.TX_IDLE],
        [("reply_error", codes.F_BIND), ("dropped", "hp_b")],
    ),
    "a failed hidden Parse fails the client's request": (
        lambda: [Expect(codes.F_PARSE, HIDE, b"hp_c"), Expect(codes.F_BIND), Expect(codes.F_SYNC)],
        ERR + Z_IDLE,
        ERR + Z_IDLE,
        [codes.TX_IDLE],
        [("reply_error", codes.F_PARSE)],
    ),
    "a failed hidden query stays hidden": (
        lambda: [Expect(codes.F_QUERY, HIDE), Expect(codes.F_QUERY)],
        ERR + Z_IDLE + ROW + Z_IDLE,
        ROW + Z_IDLE,
        [codes.TX_IDLE],
        [("reply_error", codes.F_QUERY)],
    ),
    "the proxy's error in place of the server's (REPLACE)": (
        lambda: [Expect(codes.F_BIND, REPLACE, messages.error_response("ERROR", "42000", "blocked")),
                 Expect(codes.F_SYNC)],
        messages.error_response("ERROR", "26000", "no such statement") + Z_IDLE,
        messages.error_response("ERROR", "42000", "blocked") + Z_IDLE,
        [codes.TX_IDLE],
        [("reply_error", codes.F_BIND)],
    ),
    "held answer relayed at its ReadyForQuery": (
        lambda: [Expect(codes.F_QUERY, HOLD)],
        ROW + Z_IDLE,
        ROW + Z_IDLE,
        [codes.TX_IDLE],
        [("hold_done", 4)],
    ),
    "captured read-back rows are not shown": (
        lambda: [Expect(codes.F_QUERY), Expect(codes.F_QUERY, HIDE, capture=lambda rows: None)],
        ROW + Z_IDLE + messages.result_set(["s"], [["Europe/Paris"]]) + Z_IDLE,
        ROW + Z_IDLE,
        [codes.TX_IDLE],
        [],
    ),
    "no expectations: relayed as is": (
        lambda: [],
        NOTICE + ROW + Z_IDLE,
        NOTICE + ROW + Z_IDLE,
        [codes.TX_IDLE],
        [],
    ),
}


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_relay_table(case: str, chunk: int | None) -> None:
    expects, server, client, statuses, calls = CASES[case]
    r, host = relay(*expects())
    out, readies = feed_all(r, server, chunk)
    assert out == client
    assert readies == statuses
    assert host.calls == calls
    assert r.idle


def test_held_answer_retried_is_dropped() -> None:
    r, host = relay(Expect(codes.F_QUERY, HOLD), host=Host(retry=True))
    out, readies = feed_all(r, messages.error_response("ERROR", "55006", "in use") + Z_IDLE)
    assert (out, readies) == (b"", [])
    assert host.calls == [("hold_done", 2)]


def test_captured_rows_reach_the_callback() -> None:
    got: list[object] = []
    r, _ = relay(Expect(codes.F_QUERY, HIDE, capture=got.append))
    feed_all(r, messages.result_set(["a", "b"], [["x", None]]) + Z_IDLE)
    assert got == [[["x", None]]]
    r, _ = relay(Expect(codes.F_QUERY, HIDE, capture=got.append))
    feed_all(r, ERR + Z_IDLE)
    assert got[-1] is None  # a failed read-back reports nothing


def test_shared_parse_refused_in_an_aborted_transaction() -> None:
    """A synthesized ParseComplete becomes 25P02 when the server's transaction failed earlier in the
    stream; the server's answers to the rest of that batch are not shown, up to its ReadyForQuery."""
    st = stmt("s1")
    r, host = relay(Expect(codes.F_QUERY), synth_parse(st), Expect(codes.F_BIND), Expect(codes.F_EXECUTE),
                    Expect(codes.F_SYNC))
    server = ERR + Z_FAILED + messages.error_response("ERROR", "25P02", "aborted") + Z_FAILED
    out, readies = feed_all(r, server, 2)
    refused = messages.error_response("ERROR", "25P02",
                                      "current transaction is aborted, commands ignored until end of transaction block")
    assert out == ERR + Z_FAILED + refused + Z_FAILED
    assert readies == [codes.TX_FAILED, codes.TX_FAILED]
    assert ("refuses_parse", "s1") in host.calls
    assert r.status == codes.TX_FAILED and not r.mute


def test_shared_parse_of_a_transaction_exit_is_answered() -> None:
    r, _host = relay(Expect(codes.F_QUERY), synth_parse(stmt("s2", "ROLLBACK")), Expect(codes.F_SYNC),
                    host=Host(refuse=False))
    out, _ = feed_all(r, ERR + Z_FAILED + Z_IDLE)
    assert out == ERR + Z_FAILED + PARSE_OK + Z_IDLE


def test_own_notifications_get_the_clients_pid() -> None:
    r, _ = relay()
    r.listen_from, r.listen_as = 4242, 0x40000001
    note = messages.msg(codes.B_NOTIFICATION, (4242).to_bytes(4, "big") + b"ch\x00pay\x00")
    other = messages.msg(codes.B_NOTIFICATION, (777).to_bytes(4, "big") + b"ch\x00pay\x00")
    out, _ = feed_all(r, note + other, 3)
    assert out == messages.msg(codes.B_NOTIFICATION, (0x40000001).to_bytes(4, "big") + b"ch\x00pay\x00") + other


def test_parameter_status_and_fatal_flags() -> None:
    r, _ = relay(Expect(codes.F_QUERY))
    feed_all(r, PS_TZ + messages.error_response("FATAL", "57P01", "terminating connection"))
    assert r.params and r.fatal


def test_random_chunking_never_changes_the_output() -> None:
    rng = random.Random(5)
    server = PARSE_OK + BIND_OK + NOTICE + ROW + Z_IDLE + ERR + Z_IDLE
    want: bytes | None = None
    for _ in range(200):
        r, _h = relay(Expect(codes.F_PARSE, HIDE, b"hp_q"), Expect(codes.F_BIND), Expect(codes.F_EXECUTE),
                      Expect(codes.F_SYNC), Expect(codes.F_BIND), Expect(codes.F_SYNC))
        out: list[bytes] = []
        pos = 0
        while pos < len(server):
            k = rng.randint(1, 40)
            o, _z = r.feed(server[pos : pos + k])
            out.extend(o)
            pos += k
        got = b"".join(out)
        want = want or got
        assert got == want == BIND_OK + NOTICE + ROW + Z_IDLE + ERR + Z_IDLE


def _gate() -> Expect:
    e = Expect(codes.F_SYNC, HIDE)
    e.gate = True
    return e


PARAMS = messages.parameter_description([23])
ROWDESC = messages.row_description(["x"])


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_answers_before_a_hidden_sync_wait_for_its_ready_for_query(chunk: int | None) -> None:
    """asyncpg's Parse/Describe/Flush gets a hidden Sync: the client sees the answers only once the server
    is done with it, so its next request never finds the server still owing the hidden ReadyForQuery."""
    r, _h = relay(Expect(codes.F_PARSE), Expect(codes.F_DESCRIBE), _gate())
    before = PARSE_OK + PARAMS + ROWDESC
    out, readies = feed_all(r, before, chunk)
    assert out == b"" and readies == [] and r.gating
    out, readies = feed_all(r, Z_IDLE, chunk)
    assert out == before and readies == [] and not r.gating and r.idle


def test_a_failed_batch_before_a_hidden_sync_is_shown_at_its_ready_for_query() -> None:
    r, h = relay(Expect(codes.F_PARSE), Expect(codes.F_DESCRIBE), _gate())
    out, _ = r.feed(ERR)
    assert out == []
    out2, readies = r.feed(Z_IDLE)
    assert b"".join(out2) == ERR and readies == [] and r.idle
    assert h.calls == [("reply_error", codes.F_PARSE)]


def test_reset_drops_what_a_gate_held() -> None:
    r, _h = relay(Expect(codes.F_PARSE), _gate())
    r.feed(PARSE_OK)
    assert r.gating
    r.reset()
    assert not r.gating and r.gated == []


def test_what_passes_unchanged_is_not_copied() -> None:
    """A read whose messages all pass goes out as the very bytes object it arrived in; a read that ends mid-message
    goes out as one slice up to that message, and the split message whole once it is complete."""
    rows = messages.result_set(["x"], [[str(i)] for i in range(200)])
    data = BIND_OK + rows + Z_IDLE
    r, _ = relay(Expect(codes.F_BIND), Expect(codes.F_EXECUTE), Expect(codes.F_SYNC))
    out, readies = r.feed(data)
    assert len(out) == 1 and out[0] is data and readies == [codes.TX_IDLE]
    assert r.idle
    r, _ = relay(Expect(codes.F_BIND), Expect(codes.F_EXECUTE), Expect(codes.F_SYNC))
    cut = len(BIND_OK) + len(rows) - 3  # inside CommandComplete
    first, _ = r.feed(data[:cut])
    second, readies = r.feed(data[cut:])
    assert len(first) == 1 and b"".join(first + second) == data and readies == [codes.TX_IDLE]
    assert r.idle
