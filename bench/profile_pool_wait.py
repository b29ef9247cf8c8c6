"""Micro-benchmark of the pool's slow path: N sessions waiting on a full pool, each release hands off.

Compares `Pool.wait(callback)` (no Task, no Future) with the async `Pool.acquire()` a session runs
inside a Task, and, with `--old REV`, the `acquire()` of `heliosproxy/pool/pool.py` at git revision
REV. Prints µs per hand-off (waiter queued → connection delivered), on uvloop.

    .venv/bin/python bench/profile_pool_wait.py [--old 7ab33c4] [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from heliosproxy.backends.connection import BackendConnection  # noqa: E402
from heliosproxy.config.schema import PoolConfig, PoolMode  # noqa: E402
from heliosproxy.pool import pool as pool_mod  # noqa: E402

WAITERS = 44  # 64 clients over a pool of 20


def make(mod: Any) -> tuple[Any, list[BackendConnection]]:
    p = mod.Pool(mod.PoolKey("n", "d", "u"), "127.0.0.1", 1, None, 20, PoolMode.TRANSACTION, PoolConfig())
    conns = [BackendConnection("n", "127.0.0.1", 1, "u", "d") for _ in range(20)]
    p.active.update(conns)
    return p, conns


async def bench_wait(n: int) -> float:
    pool, conns = make(pool_mod)
    done = 0
    free: list[BackendConnection] = []

    def cb(conn: BackendConnection | None, exc: Exception | None) -> None:
        nonlocal done
        if conn is not None:  # (None, error) when the pool closes at the end
            done += 1
            free.append(conn)

    for _ in range(WAITERS):
        pool.wait(cb)
    t0 = time.perf_counter()
    c = conns[0]
    for _ in range(n):
        pool.release(c)  # hands to the first waiter, synchronously
        c = free.pop()
        pool.wait(cb)  # that session queues again for its next statement
    dt = time.perf_counter() - t0
    assert done == n
    pool.close()
    return dt / n * 1e6


async def bench_acquire(mod: Any, n: int) -> float:
    pool, conns = make(mod)
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[BackendConnection] = asyncio.Queue()

    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        with contextlib.suppress(Exception):  # the pool closes at the end of the run
            got.put_nowait(await pool.acquire())

    def spawn() -> None:
        t = loop.create_task(one())
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    for _ in range(WAITERS):
        spawn()
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    c = conns[0]
    for _ in range(n):
        pool.release(c)
        c = await got.get()  # the loop runs the woken Task
        spawn()
    dt = time.perf_counter() - t0
    pool.close()
    await asyncio.sleep(0.01)
    return dt / n * 1e6


def old_module(rev: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:heliosproxy/pool/pool.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("old_pool")
    sys.modules["old_pool"] = mod
    exec(compile(src, f"{rev}:pool.py", "exec"), mod.__dict__)
    return mod


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old", default=None, help="git revision whose Pool.acquire to compare")
    a = ap.parse_args()
    rows: dict[str, list[float]] = {"wait(callback)": [], "acquire() now": []}
    old = old_module(a.old) if a.old else None
    if old is not None:
        rows[f"acquire() @{a.old}"] = []
    for _ in range(a.rounds):
        rows["wait(callback)"].append(await bench_wait(a.n))
        rows["acquire() now"].append(await bench_acquire(pool_mod, a.n))
        if old is not None:
            rows[f"acquire() @{a.old}"].append(await bench_acquire(old, a.n))
    for k, v in rows.items():
        each = ", ".join(f"{x:.2f}" for x in v)
        print(f"{k:24s} median {statistics.median(v):6.2f} us per hand-off  (rounds: {each})")


if __name__ == "__main__":
    uvloop.run(main())
