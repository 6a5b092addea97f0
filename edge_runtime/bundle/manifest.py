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

from pydantic import Field, ValidationError, field_validator

from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BundleError

SCHEMA_VERSION: Final = 1
MANIFEST = "manifest.json"


def _safe_relpath(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"file path {value!r} must be relative, inside the bundle, without '..'")
    return value



# What an artifact's input is; see Artifact.input and inference.preprocess.model_inputs.
InputKind = Literal["uint8-nhwc-bgr", "float32-nchw"]


class PreprocessSpec(StrictModel):
    """How a frame becomes the model's input; written by export, followed by the device."""

    input_size: tuple[int, int] = Field(description="model input (height, width) in pixels")
    resize: Literal["stretch", "shorter_side_crop"] = Field(
        "shorter_side_crop", description="stretch to input_size, or resize the shorter side and centre-crop")
    interpolation: Literal["area", "linear", "cubic"] = Field("area", description="OpenCV interpolation")
    mean: tuple[float, float, float] = Field(description="per-channel mean, on 0..1 pixel values")
    std: tuple[float, float, float] = Field(description="per-channel std, on 0..1 pixel values")
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="channel order the model expects")


class FileEntry(StrictModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Artifact(StrictModel):
    """One runnable form of the model (format + precision) and how it compared to fp32 torch."""

    format: str = Field(description="artifact format a backend runs: onnx, openvino or tensorrt")
    precision: str = Field(description="fp32, fp16 or int8")
    file: str = Field(description="main file; for tensorrt the ONNX model the engine is built from")
    name: str = Field("", description="export format name, e.g. onnx-int8 (default: format-precision)")
    input: InputKind = Field("float32-nchw", description=(
        "what the model takes: uint8-nhwc-bgr (the resized crops as the camera gives them; channel order, "
        "scaling and mean/std are in the graph) or float32-nchw (normalised by the device, as `preprocess` "
        "says; bundles written before the preprocessing moved into the graph)"))
    parity: dict[str, float] = Field(default_factory=dict, description="cosine figures against fp32 torch")

    @property
    def label(self) -> str:
        return self.name or f"{self.format}-{self.precision}"

    @field_validator("file")
    @classmethod
    def _path(cls, v: str) -> str:
        return _safe_relpath(v)


class ReportRow(StrictModel):
    """One line of the export report: a format, whether it made it into the bundle, and its figures."""

    name: str = Field(description="export format name, e.g. openvino-int8")
    status: Literal["ok", "failed-parity", "failed-export", "skipped", "unchecked"] = Field(description=(
        "ok: passed the parity gate with the backend that runs it; unchecked: could not be run with its "
        "own backend here (TensorRT without a GPU), checked through a stand-in, the device checks it"))
    reason: str = ""
    backend: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    centred_min: float | None = Field(None, description=(
        "the parity gate (edge_runtime.inference.parity): lowest centred cosine to fp32 over the golden inputs"))
    cosine_median: float | None = Field(None, description="raw embedding cosine to fp32 torch, median over images")
    cosine_p1: float | None = Field(None, description="1st percentile of the same")
    fewshot: float | None = Field(None, description="5-way 5-shot accuracy with --eval data (fixed episodes)")
    fewshot_ci95: float | None = None
    latency_ms_b1: float | None = Field(None, description="ms per image at batch 1")
    throughput_b8: float | None = Field(None, description="images per second at batch 8")
    in_bundle: bool = False


class ModelInfo(StrictModel):
    name: str
    version: int = Field(ge=1, description="monotonic; a device refuses to go back without being told")
    backbone: str
    method: str
    source: str | None = Field(None, description="the checkpoint it was exported from, as a path on the server "
                               "that exported it (what `edgessl adapt --from BUNDLE` continues)")


class GateClassRow(StrictModel):
    """One class of the site's evaluation set: leave-one-out accuracy before (running model) and after (candidate)."""

    label: str
    n: int = Field(ge=0, description="images of the class in the evaluation set (both models see the same ones)")
    before: float | None = Field(None, description="the running model's accuracy on them; None: class skipped")
    after: float | None = Field(None, description="the candidate's accuracy on them; None: class skipped")


class GateScore(StrictModel):
    """One model on the site's evaluation set (leave-one-out nearest centred prototype)."""

    model: str = Field(description="model name")
    version: int = Field(ge=1)
    artifact: str = Field(description="the artifact that was run (label), as the device would choose it")
    backend: str
    accuracy: float = Field(ge=0, le=1, description="mean over images: the figure the gate compares")
    class_accuracy: float = Field(ge=0, le=1, description="mean over classes (each class counts once)")
    ci95: tuple[float, float] = Field(description="95% Wilson score interval of `accuracy` over the images")
    margin: float = Field(description="mean over images of own-class cosine minus the best other class's cosine")


class GateCheck(StrictModel):
    """One parity row or health check of the candidate, as the gate judged it."""

    name: str = Field(description="artifact label (parity) or device profile (health)")
    ok: bool
    detail: str = ""


class GateReport(StrictModel):
    """The site gate (export.site_gate): is a candidate bundle at least as good as the running
    model on the site's own evaluation set, and does it pass parity and its health check."""

    verdict: Literal["pass", "refused"]
    reasons: list[str] = Field(default_factory=list, description="why it was refused, in plain language")
    candidate: str = Field(description="the candidate model, 'name vN'")
    running: str = Field(description="the running model it was compared with, 'name vN'")
    eval_dir: str = Field(description="the site's evaluation set (EVAL_DIR/<label>/<image>)")
    images: int = Field(ge=0, description="images the comparison used (classes of one image left out)")
    classes: list[GateClassRow] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="skipped classes and unreadable images")
    before: GateScore | None = Field(None, description="the running model; None when it could not be evaluated")
    after: GateScore | None = Field(None, description="the candidate; None when it could not be evaluated")
    margin: float = Field(ge=0, description="accepted accuracy drop (fraction: 0.02 = 2 points)")
    min_images: int = Field(ge=0, description="fewest evaluation images the gate accepts to judge")
    parity: list[GateCheck] = Field(default_factory=list, description="one row per artifact of the candidate")
    health: list[GateCheck] = Field(default_factory=list, description="health check per device profile")
    created_at: str
    seconds: float = Field(ge=0, description="how long the gate took")


class Manifest(StrictModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: str
    model: ModelInfo
    preprocess: PreprocessSpec
    embedding_dim: int = Field(ge=1)
    center: str = Field(description="npy file: mean embedding of the pretraining data")
    golden: str = Field(description="npz file: inputs and their fp32 embeddings (health check)")
    cohort: str | None = Field(None, description=(
        "npy file (M, D): fp32 embeddings of unlabelled pretraining images that normalise the scores of "
        "calibrated classification (edge_runtime.fewshot.cohort); absent: scores are plain cosines"))
    artifacts: list[Artifact] = Field(min_length=1)
    files: dict[str, FileEntry] = Field(description="every file of the bundle but the manifest")
    profiles: list[str] = Field(default_factory=list, description="device profiles it was built for")
    defaults: dict[str, str] = Field(default_factory=dict,
                                     description="device profile -> name of the artifact to run there")
    report: list[ReportRow] = Field(default_factory=list, description="the export's parity and speed report")
    report_machine: str = Field("", description="where the report's speed figures were measured")
    gate: GateReport | None = Field(None, description=(
        "the site gate's report: before/after per class on the site's evaluation set, parity, health, verdict"))

    @field_validator("center", "golden", "cohort")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else _safe_relpath(v)

    @field_validator("files")
    @classmethod
    def _file_keys(cls, v: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for key in v:
            _safe_relpath(key)
        return v

    def artifact_named(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.label == name:
                return a
        raise BundleError(f"bundle has no artifact {name!r}; it has: {', '.join(a.label for a in self.artifacts)}")

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
    body = manifest.model_dump(mode="json")
    # Fields added after schema 1 shipped are left out while empty, so a device running an older
    # edge runtime (which refuses unknown fields) still installs bundles that do not use them.
    for owner, key in ((body, "gate"), (body["model"], "source")):
        if owner.get(key) is None:
            owner.pop(key, None)
    data = json.dumps(body, indent=2, sort_keys=True) + "\n"
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
    if manifest.cohort is not None:
        referenced.add(manifest.cohort)
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
    for artifact in manifest.artifacts:
        if artifact.file.endswith(".onnx"):
            check_external_data(root / artifact.file, root, allowed=set(manifest.files))
    return Bundle(root=root, manifest=manifest)


def check_external_data(model: Path, root: Path | None = None, allowed: set[str] | None = None) -> None:
    """Refuse an ONNX model whose external-data paths leave `root` (default: the model's folder)
    through `..`, an absolute path or a link, or name a file outside `allowed` (the manifest's
    checksummed files). Reads only the graph: nothing outside the bundle is opened."""
    from edgessl.edge_runtime.bundle.onnx_wire import WireError, external_tensors

    root = (root or model.parent).resolve()
    try:
        tensors = external_tensors(model.read_bytes())  # large blocks are freed back to the system (memory.py)
    except (OSError, WireError) as exc:  # an empty, truncated or foreign file
        raise BundleError(f"{model}: not a valid ONNX model: {exc}") from exc
    for tensor in tensors:
        location = tensor.location
        try:
            _safe_relpath(location)
        except ValueError as exc:
            raise BundleError(f"{model}: tensor {tensor.name!r} has external data at an unsafe path: {exc}") from None
        target = model.parent / location
        if target.is_symlink() or not target.resolve().is_relative_to(root):
            raise BundleError(f"{model}: tensor {tensor.name!r}: external data {location!r} is a link or "
                              "lies outside the bundle")
        if allowed is not None and target.resolve().relative_to(root).as_posix() not in allowed:
            raise BundleError(f"{model}: external data {location!r} is not listed (with a checksum) in the manifest")
