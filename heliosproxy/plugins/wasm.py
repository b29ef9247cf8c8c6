"""The wasmtime runtime (the only wasmtime importer): engine, epoch ticker, instances, fast calls.

ABI v1, host side. A module must export `memory`, `alloc(len i32) -> i32`,
`dealloc(ptr i32, len i32)`, `helios_abi_version() -> i32` (== 1), one `(ptr i32, len i32) -> i64`
export per hook (observers may also be `(i32, i32) -> ()`), and optionally
`init(ptr i32, len i32) -> i64`. The host writes the input JSON into a buffer from `alloc`, calls
the export, reads the answer at `(ret >> 32, ret & 0xffffffff)` (0 = default), then calls
`dealloc` on the answer and on the input. Every call runs under the plugin's fuel budget, an
epoch deadline (wall clock) and the store's memory cap.

Host imports (module "helios"; each needs the manifest permission in brackets):
  log(level i32, ptr i32, len i32)                               [log]  (0 debug .. 3 error)
  metric_add(name_ptr i32, name_len i32, value f64)              [metrics]  counter += value
  metric_set(name_ptr i32, name_len i32, value f64)              [metrics]  gauge = value
  metric_add_labels(name_ptr i32, name_len i32, labels_ptr i32, labels_len i32, value f64)  [metrics]
  metric_set_labels(name_ptr i32, name_len i32, labels_ptr i32, labels_len i32, value f64)  [metrics]
      labels are `k=v,k2=v2` (at most 4; bounded series per plugin: see plugins/metrics.py)
  kv_get(key_ptr i32, key_len i32) -> i64                        [kv]
      0 = missing; else (ptr << 32) | len of a copy of the value in a buffer the host got from the
      guest's alloc(max(len, 1)); the guest owns it (dealloc(ptr, len) when done).
  kv_set(key_ptr i32, key_len i32, val_ptr i32, val_len i32) -> i32   [kv]  0 ok, -1 over a limit
  kv_delete(key_ptr i32, key_len i32) -> i32                     [kv]     0 (also when absent)
  now_ms() -> i64                                                [clock]  Unix time in milliseconds
  emit_event(ptr i32, len i32) -> i32                            [events]  an anomaly/security event:
      JSON {"kind", "severity", "tenant", "detail"}; 0 recorded, -1 refused (bad shape; logged once)
A pointer/length outside linear memory in an import traps the call.
Module "env", no permission needed:
  abort(msg i32, file i32, line i32, col i32)   AssemblyScript's abort: traps the call with its
      message ("abort: MSG at FILE:LINE:COL"; strings read as AssemblyScript UTF-16 strings).

Fast path: wasmtime-py's Func.__call__ costs 25-45 us (it rebuilds the type and converts values);
we call the C API `wasmtime_func_call_unchecked` through wasmtime-py's bundled ctypes library with
a preallocated ValRaw array, and copy the input with one memmove into linear memory (the engine is
configured with memory_may_move = False, so the base address is stable). These internals are
pinned (wasmtime==50.0.1) and checked by tests/unit/test_wasm_internals.py.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func as wasmtime_func

from heliosproxy.plugins.hooks import PluginError, PluginLoadError
from heliosproxy.plugins.kv import KvNamespace

ABI_VERSION = 1

# ---------------------------------------------------------------------------------------------
# C API entry points. Calls that may run guest code release the GIL (CDLL), so the epoch ticker
# thread can interrupt a runaway guest; pure bookkeeping calls keep it (PyDLL: cheaper).

_LIB_PATH = str(ffi.filename)
_cdll = ctypes.CDLL(_LIB_PATH)
_pydll = ctypes.PyDLL(_LIB_PATH)
_vp = ctypes.c_void_p


def _fn(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    f = lib[name]  # a fresh function object: our argtypes never touch wasmtime-py's own
    f.restype = restype
    f.argtypes = argtypes
    return f


_CALL = _fn(_cdll, "wasmtime_func_call_unchecked", _vp, [_vp, _vp, _vp, ctypes.c_size_t, _vp])
_SET_FUEL = _fn(_pydll, "wasmtime_context_set_fuel", _vp, [_vp, ctypes.c_uint64])
_SET_DEADLINE = _fn(_pydll, "wasmtime_context_set_epoch_deadline", None, [_vp, ctypes.c_uint64])
_MEM_DATA = _fn(_pydll, "wasmtime_memory_data", _vp, [_vp, _vp])
_MEM_SIZE = _fn(_pydll, "wasmtime_memory_data_size", ctypes.c_size_t, [_vp, _vp])
_ValRaw = ffi.wasmtime_val_raw
_memmove = ctypes.memmove
_string_at = ctypes.string_at

# name -> (permission, params, results)
HOST_IMPORTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "log": ("log", ("i32", "i32", "i32"), ()),
    "metric_add": ("metrics", ("i32", "i32", "f64"), ()),
    "metric_set": ("metrics", ("i32", "i32", "f64"), ()),
    "metric_add_labels": ("metrics", ("i32", "i32", "i32", "i32", "f64"), ()),
    "metric_set_labels": ("metrics", ("i32", "i32", "i32", "i32", "f64"), ()),
    "kv_get": ("kv", ("i32", "i32"), ("i64",)),
    "kv_set": ("kv", ("i32", "i32", "i32", "i32"), ("i32",)),
    "kv_delete": ("kv", ("i32", "i32"), ("i32",)),
    "now_ms": ("clock", (), ("i64",)),
    "emit_event": ("events", ("i32", "i32"), ("i32",)),
}
# module "env": imports compilers emit on their own, allowed without a permission
ENV_IMPORTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "abort": (("i32", "i32", "i32", "i32"), ()),
}
HOOK_SIG = (("i32", "i32"), ("i64",))
OBSERVER_SIG = (("i32", "i32"), ())
_REQUIRED_EXPORTS = {
    "alloc": (("i32",), ("i32",)),
    "dealloc": (("i32", "i32"), ()),
    "helios_abi_version": ((), ("i32",)),
}
MAX_LOG_BYTES = 4096
MAX_EVENT_BYTES = 4096


def wat2wasm(text: str) -> bytes:
    """Compile WebAssembly text to binary (tests and examples)."""
    return bytes(wasmtime.wat2wasm(text))


def _sig(ft: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ft.params), tuple(str(r) for r in ft.results)


def _fmt(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = sig
    return f"({', '.join(params)}) -> ({', '.join(results)})"


@dataclass(slots=True)
class HostBindings:
    """What the host imports do for one plugin."""

    log: Callable[[int, str], None]
    metric_add: Callable[[str, float], None]
    kv: KvNamespace | None = None
    # (kind "add" | "set", name, labels "k=v,...", value); None: only unlabelled counters (metric_add)
    metric_record: Callable[[str, str, str, float], None] | None = None
    # an emit_event document -> 0 recorded / -1 refused; None: every event refused
    event: Callable[[bytes], int] | None = None


class CompiledModule:
    """A compiled, validated module (compile once; instantiate once per plugin load)."""

    def __init__(self, module: wasmtime.Module):
        self.module = module
        self.imports: list[tuple[str, str, tuple[tuple[str, ...], tuple[str, ...]] | None]] = []
        for imp in module.imports:
            ty = imp.type
            sig = _sig(ty) if isinstance(ty, wasmtime.FuncType) else None
            self.imports.append((imp.module, imp.name or "", sig))
        self.exports: dict[str, Any] = {e.name: e.type for e in module.exports}

    def export_sig(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        ty = self.exports.get(name)
        return _sig(ty) if isinstance(ty, wasmtime.FuncType) else None

    def check_imports(self, permissions: frozenset[str]) -> None:
        """Refuse imports the host does not provide, of the wrong type, or not granted."""
        for module, name, sig in self.imports:
            env = ENV_IMPORTS.get(name) if module == "env" else None
            if env is not None:
                if sig != env:
                    got = _fmt(sig) if sig else "a non-function"
                    raise PluginLoadError(f"import env.{name} must be {_fmt(env)}, module declares {got}")
                continue
            spec = HOST_IMPORTS.get(name) if module == "helios" else None
            if spec is None:
                raise PluginLoadError(f"import {module}.{name} is not provided by the host (ABI v1)")
            perm, params, results = spec
            if sig != (params, results):
                got = _fmt(sig) if sig else "a non-function"
                raise PluginLoadError(f"import helios.{name} must be {_fmt((params, results))}, module declares {got}")
            if perm not in permissions:
                raise PluginLoadError(f"import helios.{name} needs permission {perm!r}, not granted by the manifest")

    def check_exports(self, hooks: list[str]) -> None:
        if not isinstance(self.exports.get("memory"), wasmtime.MemoryType):
            raise PluginLoadError('module does not export its linear memory as "memory" (ABI v1)')
        for name, want in _REQUIRED_EXPORTS.items():
            got = self.export_sig(name)
            if got is None:
                raise PluginLoadError(f"module does not export {name!r} (ABI v1)")
            if got != want:
                raise PluginLoadError(f"export {name} must be {_fmt(want)}, is {_fmt(got)}")
        init = self.export_sig("init")
        if "init" in self.exports and init != HOOK_SIG:
            raise PluginLoadError(f"export init must be {_fmt(HOOK_SIG)}, is {init and _fmt(init)}")
        for hook in hooks:
            got = self.export_sig(hook)
            if got is None:
                raise PluginLoadError(f"manifest declares hook {hook!r} but the module does not export it")
            if got != HOOK_SIG and got != OBSERVER_SIG:
                raise PluginLoadError(f"export {hook} must be {_fmt(HOOK_SIG)}, is {_fmt(got)}")


class WasmRuntime:
    """One engine (fuel + epoch interruption) and the epoch ticker thread shared by all plugins."""

    def __init__(self, tick_ms: float = 2.0):
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.memory_may_move = False  # stable memory base address for the fast path
        cfg.cranelift_opt_level = "speed"
        self.engine = wasmtime.Engine(cfg)
        self.tick_ms = tick_ms
        self.epoch = 0  # ticks seen by Python (lets calls skip re-arming an unchanged deadline)
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def compile(self, wasm: bytes) -> CompiledModule:
        if len(wasm) < 8 or wasm[:4] != b"\0asm":
            raise PluginLoadError("not a WebAssembly module (bad magic bytes)")
        try:
            return CompiledModule(wasmtime.Module(self.engine, wasm))
        except wasmtime.WasmtimeError as e:
            raise PluginLoadError(f"invalid WebAssembly module: {_first_line(str(e))}") from None

    def deadline_ticks(self, timeout_ms: float) -> int:
        return math.ceil(timeout_ms / self.tick_ms) + 1

    def ensure_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None and self._ticker.is_alive():
                return
            self._stop.clear()
            t = threading.Thread(target=self._tick, name="helios-wasm-epoch", daemon=True)
            self._ticker = t
            t.start()

    def _tick(self) -> None:
        interval = self.tick_ms / 1000.0
        engine, stop = self.engine, self._stop
        while not stop.wait(interval):
            engine.increment_epoch()
            self.epoch += 1  # after the engine: a reader may see a deadline 1 tick short

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            t, self._ticker = self._ticker, None
        if t is not None:
            t.join(timeout=1.0)

    def instantiate(
        self,
        compiled: CompiledModule,
        *,
        fuel: int,
        timeout_ms: float,
        memory: int,
        permissions: frozenset[str],
        host: HostBindings,
        hooks: list[str],
    ) -> WasmInstance:
        compiled.check_imports(permissions)
        compiled.check_exports(hooks)
        self.ensure_ticker()
        return WasmInstance(self, compiled, fuel, timeout_ms, memory, host, hooks)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _cause(text: str) -> str:
    """The useful line of a wasmtime trap message (its last line: "wasm trap: ...")."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _trap_kind(code: Any, message: str) -> str:
    if code == wasmtime.TrapCode.INTERRUPT or "interrupt" in message:
        return "timeout"
    if code == wasmtime.TrapCode.OUT_OF_FUEL or "fuel" in message:
        return "out_of_fuel"
    return "trap"


class _HostTrap(Exception):
    """Raised inside a host import to trap the calling guest."""


class WasmInstance:
    """One plugin's Store + Instance, created at load and kept: guest state persists."""

    def __init__(
        self,
        runtime: WasmRuntime,
        compiled: CompiledModule,
        fuel: int,
        timeout_ms: float,
        memory: int,
        host: HostBindings,
        hooks: list[str],
    ):
        self.runtime = runtime
        self.fuel = fuel
        self.ticks = runtime.deadline_ticks(timeout_ms)
        self.host = host
        store = wasmtime.Store(runtime.engine)
        store.set_limits(memory_size=memory)
        store.set_fuel(fuel)
        store.set_epoch_deadline(self.ticks)
        self.store = store
        self._memory_obj: wasmtime.Memory | None = None
        self._alloc_obj: wasmtime.Func | None = None
        imports = [self._make_import(module, name) for module, name, _s in compiled.imports]
        try:
            instance = wasmtime.Instance(store, compiled.module, imports)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            wasmtime_func.LAST_EXCEPTION = None
            raise PluginLoadError(f"instantiation failed: {_first_line(str(e))}") from None
        self.instance = instance
        exports = instance.exports(store)
        mem = exports["memory"]
        alloc = exports["alloc"]
        dealloc = exports["dealloc"]
        abi = exports["helios_abi_version"]
        assert isinstance(mem, wasmtime.Memory)
        assert isinstance(alloc, wasmtime.Func) and isinstance(dealloc, wasmtime.Func)
        assert isinstance(abi, wasmtime.Func)
        self._memory_obj, self._alloc_obj = mem, alloc
        self._keep: list[Any] = [imports, mem, alloc, dealloc, abi]
        # Raw addresses for the fast path.
        self._ctx: int = ctypes.cast(store._context(), _vp).value or 0
        self._mem_addr = ctypes.addressof(mem._memory)
        self._alloc = ctypes.addressof(alloc._func)
        self._dealloc = ctypes.addressof(dealloc._func)
        self._args = (_ValRaw * 2)()
        self._argp = ctypes.addressof(self._args)
        # The same two slots as four 64-bit words: slot k is words[2 * k] (cheaper than union fields).
        self._words = (ctypes.c_uint64 * 4).from_buffer(self._args)
        self._trap = ctypes.c_void_p()
        self._trapp = ctypes.addressof(self._trap)
        self._base = 0
        self._size = 0
        self._armed_epoch = -1
        self._refresh()
        self.exports: dict[str, tuple[int, bool]] = {}  # name -> (func address, returns i64)
        self._generic: dict[str, wasmtime.Func] = {}
        for name in [*hooks, "init"]:
            f = exports.get(name) if name in compiled.exports else None
            if isinstance(f, wasmtime.Func):
                self._keep.append(f)
                self._generic[name] = f
                sig = compiled.export_sig(name)
                self.exports[name] = (ctypes.addressof(f._func), bool(sig and sig[1]))
        self.callers: dict[str, Callable[[bytes], bytes | None]] = {name: self._bind(name) for name in self.exports}
        version = self._call_abi_version(abi)
        if version != ABI_VERSION:
            raise PluginLoadError(f"unsupported plugin ABI version {version} (this host speaks ABI v{ABI_VERSION})")

    # -- host imports ---------------------------------------------------------------------

    def _make_import(self, module: str, name: str) -> wasmtime.Func:
        if module == "env":
            params, results = ENV_IMPORTS[name]
            prefix = "_env_"
        else:
            _perm, params, results = HOST_IMPORTS[name]
            prefix = "_imp_"
        vt = {
            "i32": wasmtime.ValType.i32(),
            "i64": wasmtime.ValType.i64(),
            "f64": wasmtime.ValType.f64(),
        }
        ft = wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])
        impl = getattr(self, f"{prefix}{name}")
        return wasmtime.Func(self.store, ft, impl, access_caller=True)

    def _read(self, caller: Any, ptr: int, length: int) -> bytes:
        ptr &= 0xFFFFFFFF
        length &= 0xFFFFFFFF
        mem = self._memory_obj
        if mem is None:
            raise _HostTrap("memory not available")
        if ptr + length > mem.data_len(caller):
            raise _HostTrap(f"pointer {ptr}+{length} outside linear memory")
        return bytes(mem.read(caller, ptr, ptr + length))

    def _imp_log(self, caller: Any, level: int, ptr: int, length: int) -> None:
        msg = self._read(caller, ptr, min(length & 0xFFFFFFFF, MAX_LOG_BYTES))
        self.host.log(level, msg.decode("utf-8", "replace"))

    def _imp_metric_add(self, caller: Any, ptr: int, length: int, value: float) -> None:
        name = self._read(caller, ptr, length).decode("utf-8", "replace")
        self.host.metric_add(name, value)

    def _as_string(self, caller: Any, ptr: int) -> str:
        """An AssemblyScript string (UTF-16LE, byte length at ptr - 4); '' when unreadable."""
        ptr &= 0xFFFFFFFF
        mem = self._memory_obj
        if ptr < 4 or mem is None or ptr > mem.data_len(caller):
            return ""
        size = int.from_bytes(bytes(mem.read(caller, ptr - 4, ptr)), "little")
        if ptr + size > mem.data_len(caller):
            return ""
        return bytes(mem.read(caller, ptr, ptr + min(size, 2 * MAX_LOG_BYTES))).decode("utf-16-le", "replace")

    def _env_abort(self, caller: Any, msg: int, file: int, line: int, col: int) -> None:
        text = self._as_string(caller, msg) or "abort"
        where = self._as_string(caller, file)
        raise _HostTrap(f"abort: {text}" + (f" at {where}:{line}:{col}" if where else ""))

    def _record(self, kind: str, name: str, labels: str, value: float) -> None:
        rec = self.host.metric_record
        if rec is not None:
            rec(kind, name, labels, value)
        elif kind == "add" and not labels:
            self.host.metric_add(name, value)

    def _imp_metric_set(self, caller: Any, ptr: int, length: int, value: float) -> None:
        self._record("set", self._read(caller, ptr, length).decode("utf-8", "replace"), "", value)

    def _imp_metric_add_labels(self, caller: Any, np: int, nl: int, lp: int, ll: int, value: float) -> None:
        name = self._read(caller, np, nl).decode("utf-8", "replace")
        self._record("add", name, self._read(caller, lp, ll).decode("utf-8", "replace"), value)

    def _imp_metric_set_labels(self, caller: Any, np: int, nl: int, lp: int, ll: int, value: float) -> None:
        name = self._read(caller, np, nl).decode("utf-8", "replace")
        self._record("set", name, self._read(caller, lp, ll).decode("utf-8", "replace"), value)

    def _imp_kv_get(self, caller: Any, ptr: int, length: int) -> int:
        kv = self.host.kv
        value = kv.get(self._read(caller, ptr, length)) if kv is not None else None
        if value is None:
            return 0
        n = len(value)
        assert self._alloc_obj is not None and self._memory_obj is not None
        out = self._alloc_obj(caller, max(n, 1))
        out &= 0xFFFFFFFF
        if out == 0 or out + n > self._memory_obj.data_len(caller):
            raise _HostTrap(f"alloc({n}) returned an invalid pointer {out}")
        if n:
            self._memory_obj.write(caller, value, out)
        return int((out << 32) | n)

    def _imp_kv_set(self, caller: Any, kp: int, kl: int, vp: int, vl: int) -> int:
        kv = self.host.kv
        if kv is None:
            return -1
        ok = kv.set(self._read(caller, kp, kl), self._read(caller, vp, vl))
        return 0 if ok else -1

    def _imp_kv_delete(self, caller: Any, kp: int, kl: int) -> int:
        if self.host.kv is not None:
            self.host.kv.delete(self._read(caller, kp, kl))
        return 0

    def _imp_now_ms(self, caller: Any) -> int:
        return int(time.time() * 1000)

    def _imp_emit_event(self, caller: Any, ptr: int, length: int) -> int:
        sink = self.host.event
        if sink is None or (length & 0xFFFFFFFF) > MAX_EVENT_BYTES:
            return -1
        return sink(self._read(caller, ptr, length))

    # -- calls ----------------------------------------------------------------------------

    def _refresh(self) -> None:
        self._base = _MEM_DATA(self._ctx, self._mem_addr) or 0
        self._size = _MEM_SIZE(self._ctx, self._mem_addr)

    def _fail(self, err: int | None, what: str) -> PluginError:
        """Turn the trap out-param / error return of a raw call into a PluginError."""
        exc = wasmtime_func.LAST_EXCEPTION
        wasmtime_func.LAST_EXCEPTION = None
        trap_ptr = self._trap.value
        self._trap.value = None
        if trap_ptr:
            trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
            msg = _cause(trap.message)
            kind = _trap_kind(trap.trap_code, msg)
        else:
            error = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err or 0, ctypes.POINTER(ffi.wasmtime_error_t)))
            msg = _cause(str(error))
            kind = _trap_kind(None, msg)
        if exc is not None:
            msg = f"{msg} ({exc})"
        return PluginError(kind, f"{what}: {msg}")

    def call(self, name: str, data: bytes) -> bytes | None:
        """Fast path: JSON bytes in, JSON bytes out (None = the hook's default)."""
        return self.callers[name](data)

    def _bind(self, name: str) -> Callable[[bytes], bytes | None]:
        """The fast round trip of export `name` as a closure over everything it touches.

        Per call: set the fuel, re-arm the deadline when an epoch tick passed, alloc(len), one
        memmove into linear memory, the export, (copy out and dealloc the answer,) dealloc the input.
        The arguments and results go through one 16-byte ValRaw slot each, written and read as
        unsigned 64-bit words (an i32 argument is the low half: wasm ignores the rest)."""
        addr, returns = self.exports[name]
        ctx, fuel, ticks, runtime = self._ctx, self.fuel, self.ticks, self.runtime
        alloc, dealloc = self._alloc, self._dealloc
        call, set_fuel, set_deadline = _CALL, _SET_FUEL, _SET_DEADLINE
        memmove, string_at = _memmove, _string_at
        argp, trapp, trap = self._argp, self._trapp, self._trap
        words = self._words
        inst = self

        def fast(data: bytes) -> bytes | None:
            set_fuel(ctx, fuel)
            epoch = runtime.epoch
            if epoch != inst._armed_epoch:  # the deadline (ticks + 1 of slack) is still current
                set_deadline(ctx, ticks)
                inst._armed_epoch = epoch
            n = len(data)
            words[0] = n
            err = call(ctx, alloc, argp, 1, trapp)
            if err or trap.value:
                raise inst._fail(err, "alloc")
            p = words[0] & 0xFFFFFFFF
            if p + n > inst._size:
                inst._refresh()
                if p + n > inst._size or p == 0:
                    raise PluginError("bad_pointer", f"alloc({n}) returned {p}, outside linear memory")
            memmove(inst._base + p, data, n)
            words[0] = p
            words[2] = n
            err = call(ctx, addr, argp, 2, trapp)
            if err or trap.value:
                raise inst._fail(err, name)
            out = None
            if returns:
                r = words[0]
                if r:
                    op, ol = r >> 32, r & 0xFFFFFFFF
                    if op + ol > inst._size:
                        inst._refresh()
                        if op + ol > inst._size:
                            raise PluginError(
                                "bad_pointer",
                                f"{name} returned ptr={op} len={ol}, outside linear memory",
                            )
                    out = string_at(inst._base + op, ol)
                    words[0] = op
                    words[2] = ol
                    err = call(ctx, dealloc, argp, 2, trapp)
                    if err or trap.value:
                        raise inst._fail(err, "dealloc")
            words[0] = p
            words[2] = n
            err = call(ctx, dealloc, argp, 2, trapp)
            if err or trap.value:
                raise inst._fail(err, "dealloc")
            return out

        return fast

    def call_generic(self, name: str, data: bytes) -> bytes | None:
        """The same round trip through wasmtime-py's public API (slow; for comparison)."""
        store = self.store
        store.set_fuel(self.fuel)
        store.set_epoch_deadline(self.ticks)
        self._armed_epoch = -1
        mem, alloc = self._memory_obj, self._alloc_obj
        assert mem is not None and alloc is not None
        dealloc = self._keep[3]
        try:
            p = alloc(store, len(data)) & 0xFFFFFFFF
            mem.write(store, data, p)
            r = self._generic[name](store, p, len(data))
            out = None
            if r:
                r &= 0xFFFFFFFFFFFFFFFF
                op, ol = r >> 32, r & 0xFFFFFFFF
                out = bytes(mem.read(store, op, op + ol))
                dealloc(store, op, ol)
            dealloc(store, p, len(data))
            return out
        except wasmtime.Trap as e:
            msg = _cause(e.message)
            raise PluginError(_trap_kind(e.trap_code, msg), f"{name}: {msg}") from None
        except (wasmtime.WasmtimeError, IndexError, ValueError) as e:
            raise PluginError("trap", f"{name}: {_first_line(str(e))}") from None

    def _call_abi_version(self, abi: wasmtime.Func) -> int:
        self.store.set_fuel(self.fuel)
        self.store.set_epoch_deadline(self.ticks)
        try:
            v = abi(self.store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise PluginLoadError(f"helios_abi_version() failed: {_first_line(str(e))}") from None
        return int(v)

    def memory_size(self) -> int:
        self._refresh()
        return int(self._size)

    def fuel_left(self) -> int:
        return int(self.store.get_fuel())
