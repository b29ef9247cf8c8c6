"""Median cost of one pre_query WASM hook round trip (JSON in, call, JSON out), 200-byte context.

Run: .venv/bin/python bench/hook_bench.py [--n 20000] [--json]
Rows: the wasm call alone through wasmtime-py's public API (generic) and through the C API fast
path, then PluginManager.pre_query end to end (context JSON encoded per statement, answer parsed
with json.loads), and the same with the compact `{"action":"continue"}` answer most plugins give
(matched by its exact text, no json.loads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heliosproxy.config.schema import PluginsConfig
from heliosproxy.plugins.hooks import Continue, HookContext, QueryContext
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.wasm import wat2wasm

ANSWER = b'{"action":"continue","via":"bench"}'  # not the fast-matched answer: parsed
FAST_ANSWER = b'{"action":"continue"}'


def wat(answer: bytes) -> str:
    """A plugin whose pre_query always returns `answer` (a static string in its memory)."""
    text = answer.decode().replace('"', '\\"')
    return f"""
(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 65536))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p)
      (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "dealloc") (param $p i32) (param $n i32)
    (if (i32.eq (i32.add (local.get $p)
                  (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8)))
                (global.get $bump))
      (then (global.set $bump (local.get $p)))))
  (func (export "helios_abi_version") (result i32) (i32.const 1))
  (data (i32.const 1024) "{text}")
  (func (export "pre_query") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const {len(answer)})))
)
"""


WAT = wat(ANSWER)


def context() -> QueryContext:
    """A statement context whose JSON is 200 bytes."""
    base = QueryContext(
        query="SELECT 1",
        normalized="SELECT 1",
        tables=["t"],
        is_read_only=True,
        hook_context=HookContext(request_id="r", client_id="c", database="app"),
    )
    pad = 200 - len(base.to_json())
    base.hook_context.request_id += "x" * pad
    base.invalidate()
    assert len(base.to_json()) == 200, len(base.to_json())
    return base


def median_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(1000, n)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000.0


def manager(d: str, answer: bytes) -> PluginManager:
    (Path(d) / "bench.wasm").write_bytes(wat2wasm(wat(answer)))
    (Path(d) / "bench.yaml").write_text("name: bench\nversion: 1.0.0\nhooks: [pre_query]\n")
    m = PluginManager(PluginsConfig(dir=d))
    m.load_all()
    return m


def run(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as d2:
        m = manager(d, ANSWER)
        mf = manager(d2, FAST_ANSWER)
        try:
            inst = m.plugins["bench"].instance
            ctx = context()
            data = ctx.to_json()
            assert inst.call("pre_query", data) == ANSWER
            assert inst.call_generic("pre_query", data) == ANSWER
            assert m.pre_query(ctx) == Continue()
            assert mf.pre_query(ctx) == Continue()
            q, hc = ctx.query, ctx.hook_context

            def end_to_end(m: PluginManager = m) -> object:
                # a new statement: its context is encoded once, then the chain runs
                return m.pre_query(QueryContext(q, ctx.normalized, ctx.tables, True, hc))

            return {
                "generic_call_us": median_us(lambda: inst.call_generic("pre_query", data), n),
                "fast_call_us": median_us(lambda: inst.call("pre_query", data), n),
                "pre_query_round_trip_us": median_us(end_to_end, n),
                "pre_query_round_trip_compact_answer_us": median_us(lambda: end_to_end(mf), n),
            }
        finally:
            m.runtime.close()
            mf.runtime.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.n)
    if args.json:
        print(json.dumps(res))
        return
    print("WASM pre_query hook, 200-byte JSON context, median of", args.n)
    print(f"  generic wasmtime-py call (JSON in/out)  {res['generic_call_us']:8.2f} us")
    print(f"  fast path call (JSON in/out)            {res['fast_call_us']:8.2f} us")
    print(f"  PluginManager.pre_query round trip      {res['pre_query_round_trip_us']:8.2f} us")
    print(f"  ... with the answer {{\"action\":\"continue\"}}  {res['pre_query_round_trip_compact_answer_us']:8.2f} us")


if __name__ == "__main__":
    main()
