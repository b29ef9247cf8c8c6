"""Ed25519 signatures: keygen/sign/verify and the manager refusing unsigned or tampered plugins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from heliosproxy.plugins import signing
from heliosproxy.plugins.hooks import Block
from heliosproxy.plugins.manager import PluginManager
from heliosproxy.plugins.wasm import wat2wasm
from tests.unit.plugins.helpers import Events, install, query, respond_wat

Make = Callable[..., PluginManager]
BLOCK = {"pre_query": {"action": "block", "reason": "signed plugin ran"}}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, trust root holding its public key)."""
    key, pub = signing.keygen(tmp_path / "keys", "release")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "release.pub").write_bytes(pub.read_bytes())
    return key, trust


def test_keygen_sign_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, trust = keys
    assert key.stat().st_mode & 0o777 == 0o600
    wasm = install(tmp_path, "p", wat2wasm(respond_wat(BLOCK)))
    sig = signing.sign(wasm, key)
    assert sig == tmp_path / "p.sig"
    assert signing.verify(wasm, trust) == "release"
    with pytest.raises(signing.SignatureError, match="already exists"):
        signing.keygen(tmp_path / "keys", "release")


def test_pem_public_key_accepted(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    from cryptography.hazmat.primitives import serialization

    key, _trust = keys
    priv = serialization.load_pem_private_key(key.read_bytes(), None)
    pem = priv.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    trust = tmp_path / "pem-trust"
    trust.mkdir()
    (trust / "ops.pub").write_bytes(pem)
    wasm = install(tmp_path, "p", wat2wasm(respond_wat(BLOCK)))
    signing.sign(wasm, key)
    assert signing.verify(wasm, trust) == "ops"


def run_case(pdir: Path, manager: Make, trust: Path, caplog: pytest.LogCaptureFixture) -> PluginManager:
    with caplog.at_level(logging.ERROR, "heliosproxy.plugins"):
        return manager(trust_root=str(trust))


def test_signed_plugin_loads(
    pdir: Path, manager: Make, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    key, trust = keys
    signing.sign(install(pdir, "p", wat2wasm(respond_wat(BLOCK))), key)
    m = run_case(pdir, manager, trust, caplog)
    assert m.pre_query(query()) == Block("signed plugin ran")
    assert m.stats()[0]["signed_by"] == "release"


@pytest.mark.parametrize("case", ["unsigned", "tampered_wasm", "tampered_manifest", "unknown_key"])
def test_refused(
    pdir: Path,
    tmp_path: Path,
    manager: Make,
    events: Events,
    keys: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    key, trust = keys
    wasm = install(pdir, "p", wat2wasm(respond_wat(BLOCK)))
    if case != "unsigned":
        signing.sign(wasm, key)
    if case == "tampered_wasm":
        wasm.write_bytes(wat2wasm(respond_wat({"pre_query": None})))
    elif case == "tampered_manifest":
        manifest = pdir / "p.yaml"
        manifest.write_text(manifest.read_text() + "# edited\n")
    elif case == "unknown_key":
        other, _ = signing.keygen(tmp_path / "other", "mallory")
        signing.sign(wasm, other)
    m = run_case(pdir, manager, trust, caplog)
    assert m.plugins == {}
    refused = events.named("plugin_signature_refused")
    assert len(refused) == 1 and refused[0]["plugin"] == "p"
    expected = "unsigned: p.sig not found" if case == "unsigned" else "does not match any trusted key"
    assert expected in refused[0]["reason"]
    assert "plugin p refused: signature:" in caplog.text


def test_no_trust_root_ignores_signatures(pdir: Path, manager: Make) -> None:
    install(pdir, "p", wat2wasm(respond_wat(BLOCK)))
    (pdir / "p.sig").write_text("garbage")
    assert sorted(manager().plugins) == ["p"]


_OPENED: list[str] = []
_AUDITING: list[bool] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _AUDITING and event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


def test_manifest_verified_and_parsed_from_one_read(
    pdir: Path, manager: Make, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The signature is checked over the bytes the manifest is parsed from: NAME.yaml is opened once."""
    import sys

    key, trust = keys
    signing.sign(install(pdir, "p", wat2wasm(respond_wat(BLOCK))), key)
    if not getattr(sys, "_helios_audit_installed", False):  # audit hooks cannot be removed: install once
        sys.addaudithook(_audit)
        sys._helios_audit_installed = True  # type: ignore[attr-defined]
    _OPENED.clear()
    _AUDITING.append(True)
    try:
        m = run_case(pdir, manager, trust, caplog)
    finally:
        _AUDITING.clear()
    assert m.stats()[0]["signed_by"] == "release"
    manifest = str(pdir / "p.yaml")
    assert [p for p in _OPENED if p == manifest] == [manifest], _OPENED
    assert _OPENED.count(str(pdir / "p.wasm")) == 1 and _OPENED.count(str(pdir / "p.sig")) == 1
