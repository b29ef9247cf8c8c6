"""Pool waiting without Tasks: FIFO hand-off on release, 53300 timeouts, cancel, connect failure, acquire()."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from heliosproxy.backends.connection import BackendConnection
from heliosproxy.config.schema import PoolConfig, PoolMode
from heliosproxy.errors import BackendUnavailable, PoolTimeout
from heliosproxy.pool.pool import Pool, PoolKey

Delivery = tuple[str, BackendConnection | None, Exception | None]


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def full_pool(size: int, timeout: float = 5.0, port: int = 1) -> tuple[Pool, list[BackendConnection]]:
    """A pool whose `size` connections are all in use (unconnected sockets stand in for backends)."""
    pool = Pool(PoolKey("n1", "db", "u"), "127.0.0.1", port, None, size, PoolMode.TRANSACTION,
                PoolConfig(acquire_timeout=timeout, connect_timeout=1.0))
    conns = [BackendConnection("n1", "127.0.0.1", port, "u", "db") for _ in range(size)]
    pool.active.update(conns)
    return pool, conns


def recorder(out: list[Delivery], name: str):  # type: ignore[no-untyped-def]
    def cb(conn: BackendConnection | None, exc: Exception | None) -> None:
        out.append((name, conn, exc))
    return cb


async def test_release_hands_the_connection_to_the_first_waiter_synchronously() -> None:
    pool, conns = full_pool(2)
    got: list[Delivery] = []
    pool.wait(recorder(got, "a"))
    pool.wait(recorder(got, "b"))
    pool.wait(recorder(got, "c"))
    assert got == [] and len(pool.waiters) == 3
    pool.release(conns[1])
    assert got == [("a", conns[1], None)]  # no loop turn needed
    pool.release(conns[0])
    assert got[1] == ("b", conns[0], None)
    assert len(pool.waiters) == 1 and pool.idle == [] and pool.active == set(conns)
    assert pool.snapshot()["waiting"] == 1
    pool.release(conns[0])
    assert got[2] == ("c", conns[0], None)
    pool.release(conns[1])
    assert pool.idle == [conns[1]]  # nobody waits any more: it goes idle
    assert pool._timer is not None
    await asyncio.sleep(0)
    pool.close()


async def _until(got: list[Delivery], n: int) -> None:
    """Wait (on the event loop's timers, not a fixed sleep) until `n` deliveries were made."""
    deadline = time.monotonic() + 5.0
    while len(got) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def test_waiters_time_out_with_53300_and_the_exact_message() -> None:
    pool, conns = full_pool(1, timeout=0.1)
    got: list[Delivery] = []
    t0 = time.monotonic()
    pool.wait(recorder(got, "a"))
    pool.wait(recorder(got, "b"), timeout=0.05)  # shorter than a's: must expire first
    pool.wait(recorder(got, "c"), timeout=30.0)
    await _until(got, 1)
    assert [g[0] for g in got] == ["b"]
    exc = got[0][2]
    assert isinstance(exc, PoolTimeout) and exc.sqlstate == "53300"
    assert exc.message == "no server connection available for node n1 within 0.05s (pool size 1)"
    await _until(got, 2)
    assert [g[0] for g in got] == ["b", "a"]
    assert time.monotonic() - t0 >= 0.095  # a waited its whole acquire_timeout
    pool.release(conns[0])  # c is still waiting: it gets the connection
    assert [g[0] for g in got] == ["b", "a", "c"] and got[2][1] is conns[0]
    assert pool.timeouts == 2 and len(pool.waiters) == 0
    pool.close()


async def test_cancelled_wait_is_skipped_and_never_called() -> None:
    pool, conns = full_pool(1, timeout=0.05)
    got: list[Delivery] = []
    h = pool.wait(recorder(got, "a"))
    pool.wait(recorder(got, "b"))
    h.cancel()
    h.cancel()  # idempotent
    assert len(pool.waiters) == 1
    pool.release(conns[0])
    assert got == [("b", conns[0], None)]
    await asyncio.sleep(0.1)
    assert len(got) == 1 and pool.timeouts == 0


async def test_acquire_waits_fifo_and_raises_pool_timeout() -> None:
    pool, conns = full_pool(1, timeout=0.05)
    with pytest.raises(PoolTimeout, match=r"^no server connection available for node n1 within 0.05s \(pool size 1\)$"):
        await pool.acquire()
    task = asyncio.get_running_loop().create_task(pool.acquire(timeout=1.0))
    await asyncio.sleep(0.01)
    pool.release(conns[0])
    assert await task is conns[0]
    # A cancelled acquire leaves no waiter behind and loses no connection.
    task = asyncio.get_running_loop().create_task(pool.acquire(timeout=1.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pool.waiters) == 0
    pool.release(conns[0])
    assert pool.idle == [conns[0]]


async def test_a_free_slot_opens_a_connection_for_the_waiter_and_reports_its_failure() -> None:
    port = free_closed_port()  # nothing listens: the connect is refused
    pool, conns = full_pool(2, port=port)
    pool.active.discard(conns[1])  # one slot free
    got: list[Delivery] = []
    pool.wait(recorder(got, "a"))
    pool.wait(recorder(got, "b"))
    assert pool.connecting == 1  # reserved at once: two waiters in one tick open one connection
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert len(got) == 1 and got[0][0] == "a" and isinstance(got[0][2], BackendUnavailable)
    assert f"cannot connect to node n1 (127.0.0.1:{port})" in got[0][2].message
    assert pool.connecting == 0 and pool.connect_errors == 1
    pool.close()  # b learns that the pool closed
    assert got[1][0] == "b" and isinstance(got[1][2], BackendUnavailable)


async def test_wait_on_a_closed_pool_reports_through_the_loop() -> None:
    pool, _ = full_pool(1)
    pool.close()
    got: list[Delivery] = []
    pool.wait(recorder(got, "a"))
    assert got == []  # never before wait() returns
    await asyncio.sleep(0)
    assert isinstance(got[0][2], BackendUnavailable) and got[0][2].message == "pool for node n1 is closed"


async def test_wait_with_an_idle_connection_delivers_it_on_the_next_loop_turn() -> None:
    pool, conns = full_pool(1)
    pool.release(conns[0])
    got: list[Delivery] = []
    pool.wait(recorder(got, "a"))
    assert got == []
    await asyncio.sleep(0)
    assert got == [("a", conns[0], None)] and pool.active == {conns[0]} and pool.idle == []
