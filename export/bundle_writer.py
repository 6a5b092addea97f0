"""Checkpoint -> bundle directory: ONNX fp32 model, centre, golden set, manifest."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgessl.edge_runtime.bundle import (
    Artifact,
    Manifest,
    ModelInfo,
    PreprocessSpec,
    file_entry,
    load_bundle,
    now_iso,
    write_manifest,
)
from edgessl.errors import EdgesslError
from edgessl.export.onnx_export import export_onnx
from edgessl.export.parity import check_parity, device_inputs
from edgessl.train.checkpoint import load_backbone, load_checkpoint
from edgessl.train.data import list_images, load_rgb

log = logging.getLogger(__name__)

GOLDEN_IMAGES = 8


def real_images(ckpt: dict, data: Path | None, size: int, limit: int = 64) -> torch.Tensor:
    """Real images for parity: from --data when given, else the samples stored in the checkpoint."""
    if data is None:
        if "samples" not in ckpt:
            raise EdgesslError("the checkpoint holds no sample images (unfinished run?); pass --data DIR")
        return ckpt["samples"]
    files = list_images(data)
    step = max(1, len(files) // limit)
    images = [img for p in files[::step][:limit] if (img := load_rgb(p, size)) is not None]
    if not images:
        raise EdgesslError(f"{data}: no readable images for the parity check")
    return torch.from_numpy(np.stack(images))


def export_bundle(checkpoint: Path, out: Path, *, data: Path | None = None, name: str | None = None,
                  version: int = 1, min_cosine: float = 0.9999, force: bool = False) -> Path:
    ckpt = load_checkpoint(checkpoint)
    if "center" not in ckpt:
        raise EdgesslError(f"{checkpoint}: training did not finish (no centring vector); finish or resume it")
    cfg = ckpt["config"]
    pre = ckpt["preprocess"]
    spec = PreprocessSpec(input_size=tuple(pre["input_size"]), resize=pre["resize"], mean=tuple(pre["mean"]),
                          std=tuple(pre["std"]), channel_order=pre["channel_order"])
    model = load_backbone(ckpt)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgesslError(f"{out}: already exists and is not empty; choose another --out or pass --force")

    # Build in a temporary folder next to the target and move it into place only when it passed.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        export_onnx(model, tmp / "model.onnx", spec.input_size)
        inputs = device_inputs(real_images(ckpt, data, spec.input_size[0]), spec)
        parity = check_parity(model, tmp / "model.onnx", "onnxruntime", inputs)
        log.info("onnx fp32 vs torch on %d real images: min cosine %.6f", parity.images, parity.cosine_min)
        if not parity.cosine_min >= min_cosine:
            raise EdgesslError(f"ONNX model disagrees with torch: min cosine {parity.cosine_min:.6f} < "
                               f"{min_cosine} on {parity.images} real images; bundle not written")

        np.save(tmp / "center.npy", ckpt["center"].numpy().astype(np.float32))
        with torch.no_grad():
            golden = model(torch.from_numpy(inputs[:GOLDEN_IMAGES])).numpy()
        np.savez(tmp / "golden.npz", inputs=inputs[:GOLDEN_IMAGES], embeddings=golden)

        artifact = Artifact(format="onnx", precision="fp32", file="model.onnx", parity=parity.as_dict())
        files = {f: file_entry(tmp / f) for f in ("model.onnx", "center.npy", "golden.npz")}
        manifest = Manifest(
            created_at=now_iso(),
            model=ModelInfo(name=name or Path(cfg["out"]).name, version=version, backbone=cfg["backbone"],
                            method=cfg["method"]),
            preprocess=spec, embedding_dim=int(ckpt["embedding_dim"]), center="center.npy",
            golden="golden.npz", artifacts=[artifact], files=files,
        )
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # the device's own check, before the bundle is handed out
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved into place
    return out
