"""Bundle signatures, device side: ed25519 over the exact bytes of manifest.json.

The manifest holds the sha256 of every other file, so one signature covers the bundle.
`manifest.sig` is a small JSON document:

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

`key_id` only says which trusted key to try (and names it in errors); the signature check
itself is what decides. Keys are PEM files: SubjectPublicKeyInfo for public keys (`.pub`),
unencrypted PKCS#8 for private keys. A device trusts the `.pub` files in its
`trusted_keys/` folder. Signing lives in `edgessl.devices.keys` (the operator's side).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgessl.errors import SignatureError

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
MAX_SIGNATURE_BYTES = 4096


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_from_pem(data: bytes, source: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{source}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source}: a {type(key).__name__}, but bundles are signed with ed25519 keys")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read public key: {exc.strerror or exc}") from exc
    return public_key_from_pem(data, str(path))


def load_trusted_keys(folder: str | Path) -> dict[str, Ed25519PublicKey]:
    """key id -> key, for every `.pub` file in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SignatureError(f"{folder}: no trusted keys folder (provision the device with "
                             f"`edgessl device init --trust KEY.pub`)")
    keys = {}
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def signature_document(key: str, signature: bytes) -> bytes:
    doc = {"algorithm": ALGORITHM, "key_id": key, "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def verify_manifest(manifest: bytes, signature: bytes | None, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Check `signature` (the bytes of manifest.sig, None when absent) over `manifest` (the
    exact bytes of manifest.json) with the trusted keys; return the id of the key that signed."""
    if signature is None:
        raise SignatureError(f"bundle is not signed (no {SIGNATURE}); sign it with `edgessl sign BUNDLE --key KEY`")
    if not trusted:
        raise SignatureError("the device trusts no signing key (its trusted_keys folder is empty)")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE} is {len(signature)} bytes; a signature file is under {MAX_SIGNATURE_BYTES}")
    try:
        doc = json.loads(signature)
        algorithm, signer, sig = doc["algorithm"], doc["key_id"], base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"{SIGNATURE} is not a valid signature document ({exc!r}); re-sign the bundle") from exc
    if algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE} uses algorithm {algorithm!r}; only {ALGORITHM!r} is accepted")
    key = trusted.get(signer) if isinstance(signer, str) else None
    if key is None:
        raise SignatureError(f"bundle is signed with key {signer!r}, which this device does not trust; "
                             f"trusted keys: {', '.join(sorted(trusted))}")
    try:
        key.verify(sig, manifest)
    except InvalidSignature:
        raise SignatureError(f"signature by key {signer} does not match manifest.json: the manifest was "
                             f"changed after signing (or the signature is corrupted)") from None
    return signer


def verify_bundle_dir(bundle: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Verify the signature of a bundle directory's manifest (not the file hashes: see load_bundle)."""
    bundle = Path(bundle)
    try:
        manifest = (bundle / "manifest.json").read_bytes()
    except OSError as exc:
        raise SignatureError(f"{bundle}: cannot read manifest.json: {exc.strerror or exc}") from exc
    sig_path = bundle / SIGNATURE
    return verify_manifest(manifest, sig_path.read_bytes() if sig_path.is_file() else None, trusted)
