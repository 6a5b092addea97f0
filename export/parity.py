"""Check an exported artifact against the fp32 torch model, through the device's own code.

The inputs are real images run through the edge runtime's preprocessing and backend, so a
mismatch anywhere between export and device (preprocessing drift, a bad graph, a backend
bug) shows up here, not on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgessl.edge_runtime.bundle.manifest import InputKind, PreprocessSpec
from edgessl.edge_runtime.inference.backends import load_backend
from edgessl.edge_runtime.inference.parity import cosine_rows
from edgessl.edge_runtime.inference.preprocess import model_inputs


@dataclass(frozen=True)
class Parity:
    cosine_min: float
    cosine_median: float
    cosine_p1: float
    max_abs: float
    images: int

    def as_dict(self) -> dict[str, float]:
        return {"cosine_min": self.cosine_min, "cosine_median": self.cosine_median, "cosine_p1": self.cosine_p1,
                "max_abs": self.max_abs, "images": float(self.images)}


def device_inputs(images_rgb_chw: torch.Tensor, spec: PreprocessSpec,
                  kind: InputKind = "float32-nchw") -> np.ndarray:
    """Real images (uint8 RGB CHW) as the device sees them: BGR frames through its preprocessing,
    as the input of an artifact that takes `kind`."""
    frames = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()[:, :, ::-1]) for img in images_rgb_chw]
    return model_inputs(frames, spec, kind)


def torch_embeddings(model: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    """fp32 torch embeddings of normalised float NCHW inputs."""
    with torch.no_grad():
        return np.concatenate([model.eval()(torch.from_numpy(inputs[i:i + 64])).numpy()
                               for i in range(0, len(inputs), 64)])


def compare(reference: np.ndarray, got: np.ndarray) -> Parity:
    if not np.isfinite(got).all():
        return Parity(float("nan"), float("nan"), float("nan"), float("inf"), len(got))
    cos = cosine_rows(reference, got)
    return Parity(float(cos.min()), float(np.median(cos)), float(np.percentile(cos, 1)),
                  float(np.abs(reference - got).max()), len(got))


def backend_embeddings(backend: str, artifact: Path, inputs: np.ndarray, **options: object) -> np.ndarray:
    with load_backend(backend, artifact, threads=None, **options) as b:
        return np.concatenate([b.embed(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
