"""Signing keys and bundle signatures, operator side (the device verifies: edge_runtime.signing).

`generate_keypair` writes NAME.key (PKCS#8 PEM, unencrypted, mode 0600: keep it off the
devices, e.g. on the build server or in a secrets store) and NAME.pub (SubjectPublicKeyInfo
PEM: copy it to each device's trusted_keys with `edgessl device init --trust NAME.pub`).
`sign_bundle` writes manifest.sig over the exact bytes of manifest.json, which lists the
sha256 of every other file of the bundle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgessl.edge_runtime.bundle.manifest import MANIFEST, load_bundle
from edgessl.edge_runtime.bundle.safe_extract import atomic_write, fsync_dir
from edgessl.edge_runtime.bundle.signing import (
    PUBLIC_SUFFIX,
    SIGNATURE,
    key_id,
    signature_document,
    verify_manifest,
)
from edgessl.errors import SignatureError

log = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def generate_keypair(out: str | Path, name: str = "signing") -> KeyPair:
    """Write a new ed25519 key pair as OUT/NAME.key (0600) and OUT/NAME.pub; never overwrites."""
    out = Path(out)
    private_path, public_path = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing:
        raise SignatureError(f"{', '.join(existing)} already exist; choose another --out or --name "
                             f"(a signing key is never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    # Created with 0600 from the start (O_EXCL), so the key is never readable by others.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(private_path, 0o600)  # whatever the umask
    atomic_write(public_path, public_pem)
    fsync_dir(out)
    kid = key_id(key.public_key())
    log.info("generated ed25519 key %s: %s, %s", kid, private_path, public_path)
    return KeyPair(private_path, public_path, kid)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read private key: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}; bundles are signed with ed25519 keys "
                             f"(`edgessl keys generate`)")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; `chmod 600 %s`", path, path)
    return key


def sign_bundle(bundle: str | Path, key_path: str | Path) -> str:
    """Check the bundle's files against its manifest, then write manifest.sig; return the key id."""
    bundle = Path(bundle)
    load_bundle(bundle)  # never sign a bundle whose files do not match its manifest
    key = load_private_key(key_path)
    manifest = (bundle / MANIFEST).read_bytes()
    kid = key_id(key.public_key())
    document = signature_document(kid, key.sign(manifest))
    verify_manifest(manifest, document, {kid: key.public_key()})  # round trip before writing
    atomic_write(bundle / SIGNATURE, document)
    log.info("signed %s with key %s", bundle, kid)
    return kid
