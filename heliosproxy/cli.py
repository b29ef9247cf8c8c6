"""The `heliosproxy` command line: run, check-config and the plugin tools (new/build/test/verify/sign)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from heliosproxy import __version__
from heliosproxy.config.load import load_config
from heliosproxy.config.schema import PluginsConfig
from heliosproxy.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heliosproxy",
        description="PostgreSQL proxy with pooling, read/write routing, failover and WASM plugins.",
    )
    parser.add_argument("--version", action="version", version=f"heliosproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="start the proxy")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")

    check = sub.add_parser("check-config", help="validate a config file (every error in it) and exit")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--connect", action="store_true",
                       help="also log in to every node and load every plugin as the proxy would")

    plugin = sub.add_parser("plugin", help="plugin tools: new, build, test, verify, keygen, sign")
    psub = plugin.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    new = psub.add_parser("new", help="scaffold DIR/NAME/ (source, SDK, manifest, ctx.json)")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--lang", required=True, choices=("zig", "c", "assemblyscript"))
    new.add_argument("--dir", type=Path, default=Path("."), metavar="DIR", help="parent directory (default .)")
    build = psub.add_parser("build", help="compile DIR's plugin into DIR/build/NAME.wasm (+ NAME.yaml)")
    build.add_argument("dir", type=Path, metavar="DIR")
    test = psub.add_parser("test", help="run one hook in the proxy's sandbox and print the answer as JSON")
    test.add_argument("target", type=Path, metavar="DIR|NAME.wasm")
    test.add_argument("--hook", required=True, metavar="HOOK")
    test.add_argument("--context", required=True, type=Path, metavar="CTX.json", help="the hook's input ('-': stdin)")
    test.add_argument("--config", metavar="FILE", help="take plugins.limits / trust_root from this proxy config")
    keygen = psub.add_parser("keygen", help="create an Ed25519 key pair")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR")
    keygen.add_argument("--name", required=True, metavar="NAME")
    sign = psub.add_parser("sign", help="sign NAME.wasm and its NAME.yaml manifest into NAME.sig")
    sign.add_argument("--key", required=True, type=Path, metavar="PRIVATE_KEY")
    sign.add_argument("wasm", type=Path, metavar="NAME.wasm")
    verify = psub.add_parser("verify", help="run every check the proxy's loader runs (exit 1 where it would refuse)")
    verify.add_argument("--trust-root", type=Path, metavar="DIR", help="require NAME.sig by one of these keys")
    verify.add_argument("--config", metavar="FILE", help="take plugins.limits / trust_root from this proxy config")
    verify.add_argument("wasm", type=Path, metavar="DIR|NAME.wasm")
    return parser


def _error(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return _error(str(exc))
    from heliosproxy.server import run  # the server stack is loaded only when it is needed

    return run(config)


def _check_config(path: str, connect: bool = False) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _error(str(exc))
    if connect:
        from heliosproxy.checkconfig import check_connect

        results = check_connect(config)
        for ok, line in results:
            print(f"  {'ok  ' if ok else 'FAIL'} {line}")
        failed = sum(1 for ok, _ in results if not ok)
        if failed:
            return _error(f"{path}: {failed} check(s) failed")
    print(f"{path}: ok ({len(config.nodes)} nodes, {len(config.users)} users)")
    return 0


def _plugins_config(args: argparse.Namespace) -> PluginsConfig:
    cfg = load_config(args.config).plugins if getattr(args, "config", None) else PluginsConfig()
    trust = getattr(args, "trust_root", None)
    if trust is not None:
        cfg = dataclasses.replace(cfg, trust_root=str(trust))
    return cfg


def _plugin_tool(args: argparse.Namespace) -> int:
    from heliosproxy.plugins import signing, toolchain

    try:
        if args.plugin_command == "new":
            target = toolchain.scaffold(args.name, args.lang, args.dir)
            print(f"created {target}: build it with `heliosproxy plugin build {target}`")
            return 0
        if args.plugin_command == "build":
            wasm = toolchain.build(args.dir)
            print(f"built {wasm} (+ {wasm.with_suffix('.yaml').name})")
            return 0
        cfg = _plugins_config(args)
        wasm = toolchain.resolve_wasm(args.wasm if args.plugin_command == "verify" else args.target)
        context = b""
        if args.plugin_command == "test":
            context = sys.stdin.buffer.read() if str(args.context) == "-" else args.context.read_bytes()
        try:
            sandbox = toolchain.load(wasm, cfg, quiet=args.plugin_command == "verify")
        except signing.SignatureError as exc:
            return _error(f"{wasm}: refused: signature: {exc}")
        except toolchain.PluginLoadError as exc:
            return _error(f"{wasm}: refused: {exc}")
        try:
            if args.plugin_command == "verify":
                p = sandbox.plugin
                signed = f", signed by {p.signed_by}" if p.signed_by else ", signature not checked (no trust root)"
                print(f"{wasm}: ok (plugin {p.name} {p.manifest.version}, ABI v1, hooks "
                      f"{','.join(h.value for h in p.manifest.hooks) or '-'}{signed})")
                return 0
            out, ok = toolchain.run_hook(sandbox, args.hook, context)
            print(json.dumps(out))
            return 0 if ok else 1
        finally:
            sandbox.close()
    except toolchain.ToolError as exc:
        return _error(str(exc))
    except ConfigError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc))


def _plugin(args: argparse.Namespace) -> int:
    from heliosproxy.plugins import signing

    if args.plugin_command in ("new", "build", "test", "verify"):
        return _plugin_tool(args)
    try:
        if args.plugin_command == "keygen":
            private, public = signing.keygen(args.out, args.name)
            print(f"private key: {private}")
            print(f"public key:  {public} (copy it into the plugins.trust_root directory)")
        else:
            sig = signing.sign(args.wasm, args.key)
            print(f"signed {args.wasm} and its manifest: {sig}")
    except signing.SignatureError as exc:
        return _error(str(exc) if args.plugin_command == "keygen" else f"{args.wasm}: {exc}")
    except OSError as exc:
        target = exc.filename if exc.filename is not None else ""
        return _error(f"{target}: {exc.strerror or exc}" if target else str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `heliosproxy` console script and `python -m heliosproxy`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        return _check_config(args.file, args.connect)
    if args.command == "plugin":
        return _plugin(args)
    parser.print_help(sys.stderr)
    return 2
