"""The one plugin check: read, verify the signature, parse the manifest, compile, instantiate, init.

The proxy's loader (PluginManager.load_plugin), `heliosproxy plugin verify`, `plugin test` and
`check-config --connect` all call `check_plugin`, so they accept and refuse exactly the same plugins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from heliosproxy.config.schema import PluginsConfig
from heliosproxy.plugins import signing
from heliosproxy.plugins.hooks import PluginError, PluginLoadError
from heliosproxy.plugins.manifest import Manifest, manifest_from_bytes
from heliosproxy.plugins.wasm import HostBindings, WasmInstance, WasmRuntime


@dataclass(slots=True)
class CheckedPlugin:
    """A plugin that passed every check: its manifest, its live instance and its signer."""

    name: str
    manifest: Manifest
    instance: WasmInstance
    signed_by: str | None


def check_plugin(
    wasm_path: Path,
    cfg: PluginsConfig,
    runtime: WasmRuntime,
    host_for: Callable[[Manifest], HostBindings],
) -> CheckedPlugin:
    """Every check the proxy runs before it loads NAME.wasm, in the proxy's order.

    1. NAME.wasm and NAME.yaml are readable;
    2. with `cfg.trust_root`: NAME.sig is a valid signature over both by a trusted key;
    3. the manifest is valid, its name matches the file name, its limits fit `cfg.limits`;
    4. the module compiles; its imports are host functions the manifest's permissions grant;
       it exports memory, alloc, dealloc, helios_abi_version and every hook the manifest names;
    5. helios_abi_version() returns the host's ABI version;
    6. init(config) (when exported) accepts the manifest's config.

    Raises signing.SignatureError (step 2) or PluginLoadError (any other step).
    """
    name = wasm_path.stem
    manifest_path = wasm_path.with_suffix(".yaml")
    try:
        wasm = wasm_path.read_bytes()
        manifest_bytes = manifest_path.read_bytes()
    except FileNotFoundError as e:
        raise PluginLoadError(f"{e.filename} not found") from None
    except OSError as e:
        raise PluginLoadError(f"cannot read {e.filename}: {e.strerror}") from None
    signed_by = None
    if cfg.trust_root:
        sig_path = wasm_path.with_suffix(".sig")
        if not sig_path.exists():
            raise signing.SignatureError(f"unsigned: {sig_path.name} not found")
        signed_by = signing.verify_bytes(wasm, manifest_bytes, sig_path.read_bytes(), Path(cfg.trust_root))
    # Parsed from the bytes just verified: no second read, no window to swap the file.
    manifest = manifest_from_bytes(manifest_bytes, manifest_path, cfg.limits, expect_name=name)
    compiled = runtime.compile(wasm)
    limits = manifest.limits
    instance = runtime.instantiate(
        compiled,
        fuel=limits.fuel,
        timeout_ms=limits.timeout_ms,
        memory=limits.memory,
        permissions=manifest.permissions,
        host=host_for(manifest),
        hooks=[h.export_name() for h in manifest.hooks],
    )
    if "init" in instance.exports:
        config = json.dumps(manifest.config or {}, separators=(",", ":")).encode()
        try:
            out = instance.call("init", config)
        except PluginError as e:
            raise PluginLoadError(f"init failed: {e}") from None
        if out:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("error"):
                raise PluginLoadError(f"init refused its config: {doc['error']}")
    return CheckedPlugin(name, manifest, instance, signed_by)
