"""Torch -> ONNX (fp32, dynamic batch axis) with the torch.export-based exporter."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

log = logging.getLogger(__name__)
for _noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):  # pass-by-pass INFO chatter
    logging.getLogger(_noisy).setLevel(logging.WARNING)

INPUT, OUTPUT = "input", "embedding"
OPSET = 18


def export_onnx(model: torch.nn.Module, path: Path, input_size: tuple[int, int], opset: int = OPSET) -> Path:
    """Write a single-file ONNX model: input NCHW float32 with a dynamic batch, output (N, D)."""
    model = model.eval()
    example = torch.zeros(2, 3, *input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
            dynamo=True, external_data=False, optimize=True, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
        )
    assert program is not None
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path
