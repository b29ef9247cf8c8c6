"""The `heliosproxy` command line: run, check-config and the plugin keygen/sign/verify tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from heliosproxy import __version__
from heliosproxy.config.load import load_config
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

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE")

    plugin = sub.add_parser("plugin", help="plugin signing tools")
    psub = plugin.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    keygen = psub.add_parser("keygen", help="create an Ed25519 key pair")
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR")
    keygen.add_argument("--name", required=True, metavar="NAME")
    sign = psub.add_parser("sign", help="sign NAME.wasm and its NAME.yaml manifest into NAME.sig")
    sign.add_argument("--key", required=True, type=Path, metavar="PRIVATE_KEY")
    sign.add_argument("wasm", type=Path, metavar="NAME.wasm")
    verify = psub.add_parser("verify", help="verify NAME.sig against a directory of public keys")
    verify.add_argument("--trust-root", required=True, type=Path, metavar="DIR")
    verify.add_argument("wasm", type=Path, metavar="NAME.wasm")
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


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _error(str(exc))
    print(f"{path}: ok ({len(config.nodes)} nodes, {len(config.users)} users)")
    return 0


def _plugin(args: argparse.Namespace) -> int:
    from heliosproxy.plugins import signing

    try:
        if args.plugin_command == "keygen":
            private, public = signing.keygen(args.out, args.name)
            print(f"private key: {private}")
            print(f"public key:  {public} (copy it into the plugins.trust_root directory)")
        elif args.plugin_command == "sign":
            sig = signing.sign(args.wasm, args.key)
            print(f"signed {args.wasm} and its manifest: {sig}")
        else:
            key_name = signing.verify(args.wasm, args.trust_root)
            print(f"{args.wasm}: signature ok (key {key_name})")
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
        return _check_config(args.file)
    if args.command == "plugin":
        return _plugin(args)
    parser.print_help(sys.stderr)
    return 2
