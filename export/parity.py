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

from edgessl.edge_runtime.backends import load_backend
from edgessl.edge_runtime.bundle import PreprocessSpec
from edgessl.edge_runtime.preprocess import preprocess


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


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def device_inputs(images_rgb_chw: torch.Tensor, spec: PreprocessSpec) -> np.ndarray:
    """Real images (uint8 RGB CHW) as the device sees them: BGR frames through its preprocessing."""
    frames = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()[:, :, ::-1]) for img in images_rgb_chw]
    return preprocess(frames, spec)


def check_parity(model: torch.nn.Module, artifact: Path, backend: str, inputs: np.ndarray) -> Parity:
    with torch.no_grad():
        reference = model.eval()(torch.from_numpy(inputs)).numpy()
    with load_backend(backend, artifact, threads=None) as b:
        got = np.concatenate([b.embed(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
    if not np.isfinite(got).all():
        return Parity(float("nan"), float("nan"), float("nan"), float("inf"), len(inputs))
    cos = cosine_rows(reference, got)
    return Parity(float(cos.min()), float(np.median(cos)), float(np.percentile(cos, 1)),
                  float(np.abs(reference - got).max()), len(inputs))
