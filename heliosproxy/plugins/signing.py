"""Ed25519 plugin signatures: keygen, sign and verify over the wasm bytes and the manifest bytes.

Signed message (ABI v1):  b"heliosproxy-plugin-v1\\0" || u64be(len(wasm)) || wasm
                          || u64be(len(manifest)) || manifest
NAME.sig holds the base64 of the raw 64-byte signature. A trust root is a directory of `*.pub`
files, each the base64 of a raw 32-byte public key or a PEM SubjectPublicKeyInfo; the key's
name is the file stem. NAME.key (written by keygen) is an unencrypted PKCS#8 PEM private key.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_DOMAIN = b"heliosproxy-plugin-v1\x00"


class SignatureError(Exception):
    """A missing, malformed or untrusted signature, or an unusable key."""


def manifest_path(wasm_path: Path) -> Path:
    return wasm_path.with_suffix(".yaml")


def signature_path(wasm_path: Path) -> Path:
    return wasm_path.with_suffix(".sig")


def signed_message(wasm: bytes, manifest: bytes) -> bytes:
    return b"".join((_DOMAIN, struct.pack(">Q", len(wasm)), wasm, struct.pack(">Q", len(manifest)), manifest))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{what} {path} not found") from None
    except OSError as e:
        raise SignatureError(f"cannot read {what} {path}: {e.strerror or e}") from None


def keygen(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write out_dir/NAME.key (private, mode 0600) and out_dir/NAME.pub; return (key, pub)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise SignatureError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_path.write_text(base64.b64encode(raw).decode() + "\n")
    return key_path, pub_path


def _load_private(key_path: Path) -> Ed25519PrivateKey:
    data = _read(key_path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{key_path}: not an Ed25519 key")
    return key


def sign(wasm_path: Path, key_path: Path) -> Path:
    """Sign NAME.wasm together with NAME.yaml; write and return NAME.sig."""
    wasm_path = Path(wasm_path)
    key = _load_private(Path(key_path))
    msg = signed_message(_read(wasm_path, "plugin"), _read(manifest_path(wasm_path), "manifest"))
    out = signature_path(wasm_path)
    out.write_text(base64.b64encode(key.sign(msg)).decode() + "\n")
    return out


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "public key")
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError(f"{path}: not an Ed25519 public key")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except SignatureError:
        raise
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"{path}: malformed public key ({e})") from None


def trusted_keys(trust_root: Path) -> list[tuple[str, Ed25519PublicKey]]:
    root = Path(trust_root)
    if not root.is_dir():
        raise SignatureError(f"trust root {root} is not a directory")
    keys = [(p.stem, load_public_key(p)) for p in sorted(root.glob("*.pub"))]
    if not keys:
        raise SignatureError(f"trust root {root} holds no *.pub keys")
    return keys


def verify_bytes(wasm: bytes, manifest: bytes, sig_text: bytes, trust_root: Path) -> str:
    """Name of the trusted key that signed (wasm, manifest); SignatureError otherwise."""
    try:
        sig = base64.b64decode(sig_text.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise SignatureError("signature file is not base64") from None
    if len(sig) != 64:
        raise SignatureError(f"signature must be 64 bytes, got {len(sig)}")
    msg = signed_message(wasm, manifest)
    for name, key in trusted_keys(trust_root):
        try:
            key.verify(sig, msg)
            return name
        except InvalidSignature:
            continue
    raise SignatureError("signature does not match any trusted key (tampered or unknown signer)")


def verify(wasm_path: Path, trust_root: Path) -> str:
    """Check NAME.sig over NAME.wasm + NAME.yaml against trust_root; return the signer's name."""
    wasm_path = Path(wasm_path)
    sig_file = signature_path(wasm_path)
    if not sig_file.exists():
        raise SignatureError(f"unsigned: {sig_file.name} not found")
    return verify_bytes(
        _read(wasm_path, "plugin"),
        _read(manifest_path(wasm_path), "manifest"),
        _read(sig_file, "signature"),
        Path(trust_root),
    )
