"""The figures `edgessl demo` prints: the label shown at every frame, which frames count, the
random-weights baseline and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))] if s else float("nan")


def labels_per_frame(events: list[dict[str, Any]], camera: str, region: str, first: int, last: int) -> dict[int, str]:
    """The label the daemon showed at every frame seq in [first, last]: the newest label change
    (from the JSON-lines sink) at or before that frame; frames before the first label are absent."""
    changes = sorted((e["frame"], e["label"]) for e in events if e["camera"] == camera and e["region"] == region)
    out, label, i = {}, None, 0
    for seq in range(first, last + 1):
        while i < len(changes) and changes[i][0] <= seq:
            label = changes[i][1]
            i += 1
        if label is not None:
            out[seq] = label
    return out


def random_weights_accuracy(student_ckpt: Path, support: dict[str, list[Path]], query: dict[str, list[Path]],
                            seed: int) -> dict[str, float]:
    """Held-out accuracy of the student's architecture with random weights, through the same
    preprocessing and prototype code (centred on the support set's mean: no training data)."""
    import cv2
    import numpy as np
    import torch

    from edgessl.edge_runtime.fewshot.prototypes import center_normalize, class_prototypes, nearest
    from edgessl.train.checkpoint import load_backbone, load_checkpoint
    from edgessl.train.data import resize_crop
    from edgessl.train.views import eval_transform

    ckpt = load_checkpoint(student_ckpt)
    pre = ckpt["preprocess"]
    size = pre["input_size"][0]
    torch.manual_seed(seed)
    backbone = load_backbone(ckpt, random_weights=True)
    classes = list(support)

    def embed(paths: list[Path]) -> np.ndarray:
        x = torch.from_numpy(np.stack([resize_crop(cv2.imread(str(p)), size) for p in paths]))
        with torch.no_grad():
            return backbone(eval_transform(x, size, pre["mean"], pre["std"])).numpy()

    s_feat = [embed(support[c]) for c in classes]
    center = np.concatenate(s_feat).mean(0)
    labels = np.concatenate([np.full(len(f), i) for i, f in enumerate(s_feat)])
    _, protos = class_prototypes(np.concatenate(s_feat), labels, center)
    out = {}
    for i, c in enumerate(classes):
        pred, _ = nearest(center_normalize(embed(query[c]), center), protos)
        out[c] = float((np.asarray(pred) == i).mean())
    return out


def settle_frames(consecutive: int) -> int:
    """Frames after a change of the object that are transitions of the smoothing."""
    return consecutive + 3


def steady(truth: list[str], pos: int, settle: int) -> bool:
    """The object at `pos` has been in view for at least `settle` frames (the loop wraps around)."""
    n = len(truth)
    return all(truth[(pos - d) % n] == truth[pos] for d in range(1, settle + 1))
