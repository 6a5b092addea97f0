"""The bundle contract between export and the device.

A bundle is a directory with `manifest.json` and the files it lists. Export writes it with
`write_manifest`; the device opens it with `load_bundle`, which checks the sha256 of every
listed file before anything is loaded and names the file that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgessl.errors import BundleError

SCHEMA_VERSION: Final = 1
MANIFEST = "manifest.json"


def _safe_relpath(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"file path {value!r} must be relative, inside the bundle, without '..'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Strict):
    """How a frame becomes the model's input; written by export, followed by the device."""

    input_size: tuple[int, int] = Field(description="model input (height, width) in pixels")
    resize: Literal["stretch", "shorter_side_crop"] = Field(
        "shorter_side_crop", description="stretch to input_size, or resize the shorter side and centre-crop")
    interpolation: Literal["area", "linear", "cubic"] = Field("area", description="OpenCV interpolation")
    mean: tuple[float, float, float] = Field(description="per-channel mean, on 0..1 pixel values")
    std: tuple[float, float, float] = Field(description="per-channel std, on 0..1 pixel values")
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="channel order the model expects")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Artifact(_Strict):
    """One runnable form of the model (format + precision) and how it compared to fp32 torch."""

    format: str = Field(description="backend format, e.g. onnx")
    precision: str = Field(description="fp32, fp16 or int8")
    file: str
    parity: dict[str, float] = Field(default_factory=dict, description="cosine figures against fp32 torch")

    @field_validator("file")
    @classmethod
    def _path(cls, v: str) -> str:
        return _safe_relpath(v)


class ModelInfo(_Strict):
    name: str
    version: int = Field(ge=1, description="monotonic; a device refuses to go back without being told")
    backbone: str
    method: str


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: str
    model: ModelInfo
    preprocess: PreprocessSpec
    embedding_dim: int = Field(ge=1)
    center: str = Field(description="npy file: mean embedding of the pretraining data")
    golden: str = Field(description="npz file: inputs and their fp32 embeddings (health check)")
    artifacts: list[Artifact] = Field(min_length=1)
    files: dict[str, FileEntry] = Field(description="every file of the bundle but the manifest")
    profiles: list[str] = Field(default_factory=list, description="device profiles it was built for")

    @field_validator("center", "golden")
    @classmethod
    def _paths(cls, v: str) -> str:
        return _safe_relpath(v)

    @field_validator("files")
    @classmethod
    def _file_keys(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for key in v:
            _safe_relpath(key)
        return v

    def artifact(self, format: str, precision: str | None = None) -> Artifact:
        for a in self.artifacts:
            if a.format == format and (precision is None or a.precision == precision):
                return a
        have = ", ".join(f"{a.format}/{a.precision}" for a in self.artifacts)
        raise BundleError(f"bundle has no {format}{'/' + precision if precision else ''} artifact; it has: {have}")


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, name: str) -> Path:
        return self.root / name

    def fingerprint(self, artifact: Artifact) -> str:
        """Identifies the model that made an embedding (stored with gallery embeddings)."""
        return self.manifest.files[artifact.file].sha256


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file, fsync, rename)."""
    tmp = root / (MANIFEST + ".tmp")
    data = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    with open(tmp, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    return root / MANIFEST


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST})")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {exc}") from exc


def load_bundle(root: str | Path) -> Bundle:
    """Open a bundle directory, verifying the size and sha256 of every listed file."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    manifest = read_manifest(root)
    referenced = {manifest.center, manifest.golden, *(a.file for a in manifest.artifacts)}
    unlisted = sorted(referenced - manifest.files.keys())
    if unlisted:
        raise BundleError(f"{root}: manifest references files without a checksum: {', '.join(unlisted)}")
    resolved_root = root.resolve()
    for name, entry in manifest.files.items():
        path = root / name
        if path.is_symlink() or not path.resolve().is_relative_to(resolved_root):
            raise BundleError(f"{path}: links are not allowed in a bundle")
        if not path.is_file():
            raise BundleError(f"{path}: file listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: size {size} does not match the manifest ({entry.bytes} bytes)")
        if sha256_file(path) != entry.sha256:
            raise BundleError(f"{path}: sha256 does not match the manifest (file corrupted or tampered with)")
    return Bundle(root=root, manifest=manifest)
