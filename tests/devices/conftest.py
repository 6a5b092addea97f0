"""Helpers for the device tests: keys, a test profile, provisioned device roots, signed
bundles (good, with other weights, producing NaN), archives with hostile members.

Bundles come from the torch-free factory in tests/conftest.py (`build_tiny_bundle`)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from edgessl.devices.keys import KeyPair, generate_keypair, sign_bundle
from edgessl.edge_runtime.bundle.manifest import file_entry, read_manifest, write_manifest
from edgessl.edge_runtime.device.slots import init_device

_spec = importlib.util.spec_from_file_location("_edgessl_tests_root_conftest", Path(__file__).parents[1] / "conftest.py")
assert _spec is not None and _spec.loader is not None
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
build_tiny_bundle: Callable[..., Path] = _root.build_tiny_bundle
tiny_onnx_model: Callable[..., bytes] = _root.tiny_onnx_model

# Test modules reach these helpers through the `helpers` fixture: several conftest.py files
# share the module name "conftest", so importing it by name is unreliable.
_THIS = sys.modules[__name__]


@pytest.fixture(scope="session")
def helpers():  # -> this module
    return _THIS


from profile_text import TEST_PROFILE  # noqa: E402


def write_profile(path: Path, **overrides: object) -> Path:
    """TEST_PROFILE with some top-level values replaced (TOML literals, e.g. backends='["x"]')."""
    lines = []
    for line in TEST_PROFILE.splitlines():
        key = line.split(" = ")[0]
        lines.append(f"{key} = {overrides.pop(key)}" if key in overrides else line)
    lines.extend(f"{k} = {v}" for k, v in overrides.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The operator's signing key; device roots made by `device_root` trust it."""
    return generate_keypair(tmp_path_factory.mktemp("keys"), "trusted")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A valid key that no test device trusts."""
    return generate_keypair(tmp_path_factory.mktemp("other-keys"), "stranger")


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    return write_profile(tmp_path / "test-cpu.toml")


@pytest.fixture
def device_root(tmp_path: Path, keypair: KeyPair, profile_file: Path) -> Callable[..., Path]:
    """device_root(name="device", profile=None) -> a provisioned, empty device root."""
    def make(name: str = "device", profile: Path | None = None) -> Path:
        root = tmp_path / name
        init_device(root, profile or profile_file, [keypair.public])
        return root
    return make


def replace_file(bundle: Path, name: str, data: bytes) -> None:
    """Put new content in a bundle file and update its manifest entry (unsigned afterwards)."""
    (bundle / name).write_bytes(data)
    manifest = read_manifest(bundle)
    files = {**manifest.files, name: file_entry(bundle / name)}
    write_manifest(bundle, manifest.model_copy(update={"files": files}))
    (bundle / "manifest.sig").unlink(missing_ok=True)


def nan_onnx_model(seed: int = 0) -> bytes:
    """The tiny model with a NaN bias: a valid ONNX model whose every embedding is NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(tiny_onnx_model(seed=seed))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "B":
            bias = numpy_helper.to_array(init).copy()
            bias[:] = np.nan
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(bias, "B"))
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def signed_bundle(tmp_path: Path, keypair: KeyPair) -> Callable[..., Path]:
    """signed_bundle(name, version=1, seed=0, model=None, key=None, sign=True) -> a bundle dir.

    `model` replaces model.onnx after the golden set was computed (other weights: golden
    cosine fails); `key` signs with another key pair."""
    def make(name: str, version: int = 1, seed: int = 0, model: bytes | None = None,
             key: KeyPair | None = None, sign: bool = True) -> Path:
        bundle = build_tiny_bundle(tmp_path / "bundles" / name, seed=seed, version=version)
        if model is not None:
            replace_file(bundle, "model.onnx", model)
        if sign:
            sign_bundle(bundle, (key or keypair).private)
        return bundle
    return make


def restamp(bundle: Path, out: Path, version: int, key: KeyPair) -> Path:
    """A copy of `bundle` with another model version, signed again."""
    shutil.copytree(bundle, out)
    manifest = read_manifest(out)
    write_manifest(out, manifest.model_copy(update={"model": manifest.model.model_copy(update={"version": version})}))
    sign_bundle(out, key.private)
    return out


def make_tar(bundle: Path, out: Path, extra: Iterable[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = (),
             prefix: str = "") -> Path:
    """A tar of `bundle` (every file, names under `prefix`) plus `extra` hand-made members."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=prefix + path.relative_to(bundle).as_posix())
        for item in extra:
            info, data = item if isinstance(item, tuple) else (item, b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o644
    return info, data


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 (files) / 'dir' / 'link:target', for every entry under root."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
