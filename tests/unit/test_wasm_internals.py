"""Fails when the wasmtime-py internals the plugin fast path relies on change (pinned 50.0.1)."""

from __future__ import annotations

import ctypes
import importlib.metadata

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func as wasmtime_func

from heliosproxy.plugins import wasm


def test_pinned_version() -> None:
    assert importlib.metadata.version("wasmtime") == "50.0.1"


def test_ctypes_library_and_symbols() -> None:
    lib = ctypes.CDLL(str(ffi.filename))
    for name in (
        "wasmtime_func_call_unchecked",
        "wasmtime_context_set_fuel",
        "wasmtime_context_set_epoch_deadline",
        "wasmtime_memory_data",
        "wasmtime_memory_data_size",
    ):
        assert hasattr(lib, name), name
    # ValRaw is a 16-byte union with i32/i64/f64 views (one slot per argument or result).
    assert ctypes.sizeof(ffi.wasmtime_val_raw) == 16
    assert {"i32", "i64", "f64"} <= {f[0] for f in ffi.wasmtime_val_raw._fields_}


def test_private_attributes_used_by_the_fast_path() -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(
        engine,
        '(module (memory (export "memory") 1) (func (export "f") (param i32 i32) (result i64) (i64.const 7)))',
    )
    inst = wasmtime.Instance(store, module, [])
    f = inst.exports(store)["f"]
    mem = inst.exports(store)["memory"]
    assert isinstance(f._func, ffi.wasmtime_func_t)  # type: ignore[union-attr]
    assert isinstance(mem._memory, ffi.wasmtime_memory_t)  # type: ignore[union-attr]
    assert store._context() is not None
    assert hasattr(wasmtime_func, "LAST_EXCEPTION")
    assert hasattr(wasmtime.Trap, "_from_ptr") and hasattr(wasmtime.WasmtimeError, "_from_ptr")
    cfg = wasmtime.Config()
    cfg.memory_may_move = False  # a setter the runtime relies on


def test_fast_call_round_trip_and_trap_out_param() -> None:
    rt = wasm.WasmRuntime()
    try:
        compiled = rt.compile(
            wasm.wat2wasm(
                """(module
                  (memory (export "memory") 1)
                  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
                  (func (export "dealloc") (param i32 i32))
                  (func (export "helios_abi_version") (result i32) (i32.const 1))
                  (func (export "pre_query") (param $p i32) (param $n i32) (result i64)
                    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                            (i64.extend_i32_u (local.get $n))))
                  (func (export "route") (param i32 i32) (result i64) unreachable))"""
            )
        )
        inst = rt.instantiate(
            compiled,
            fuel=1_000_000,
            timeout_ms=50,
            memory=1 << 20,
            permissions=frozenset(),
            host=wasm.HostBindings(log=lambda lv, m: None, metric_add=lambda n, v: None),
            hooks=["pre_query", "route"],
        )
        # pre_query echoes its input: proves the memmove in and the read out.
        assert inst.call("pre_query", b'{"x":1}') == b'{"x":1}'
        assert inst.call_generic("pre_query", b'{"y":2}') == b'{"y":2}'
        try:
            inst.call("route", b"{}")
        except wasm.PluginError as e:
            assert e.kind == "trap" and "unreachable" in e.message
        else:
            raise AssertionError("a trap in the fast path was not reported")
        assert inst.call("pre_query", b"{}") == b"{}"  # still usable after a trap
    finally:
        rt.close()
