"""OpenVINO IR (fp16-compressed weights) and NNCF INT8 post-training quantization."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def convert_ir(onnx_path: Path, xml: Path) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=True)
    return xml


def quantize_ir(onnx_path: Path, xml: Path, calib: np.ndarray, *,
                validate: Callable[[object], float] | None = None, max_drop: float = 0.01,
                validation_items: np.ndarray | None = None) -> Path:
    """NNCF post-training quantization; with `validate` (a metric on a compiled model, higher is
    better) NNCF's accuracy-controlled variant keeps the drop below `max_drop`."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    if validate is None:
        quantized = nncf.quantize(model, dataset, subset_size=len(calib))
    else:
        items = validation_items if validation_items is not None else calib
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset([items]), validation_fn=lambda compiled, data: validate(compiled),
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib))
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return xml
