"""Static INT8 post-training quantization with ONNX Runtime (QDQ, per-channel weights).

Calibration runs once (its tensor ranges are cached); then, if the quantized model's embeddings
drift too far from fp32, elementwise ops are left in fp32 (only Conv/Gemm/MatMul quantized), and
if that is not enough, the layers that hurt the embedding most are measured one at a time (only
that layer quantized, embedding cosine against fp32) and left in fp32, worst first, until the
target is met.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgessl.export.parity import backend_embeddings, compare

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
QUANTIZABLE = ("Conv", "Gemm", "MatMul")


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray, name: str, batch: int = 16) -> None:
        self._batches = iter([{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    cosine_median: float
    excluded: tuple[str, ...]
    weight_layers_only: bool = False  # elementwise ops were left in fp32


def quantize_int8(fp32: Path, out: Path, calib: np.ndarray, check: np.ndarray, *, method: str = "minmax",
                  symmetric_activations: bool = False, target_median: float = 0.99,
                  max_excluded: int = 8) -> QuantResult:
    """Quantize `fp32` into `out`; `check` are real inputs for the embedding-cosine target.

    symmetric_activations: int8 activations with zero point 0 (what TensorRT's explicit
    quantization needs); otherwise uint8 activations, which x86 CPU kernels prefer."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    reference = backend_embeddings("onnxruntime", fp32, check)
    with tempfile.TemporaryDirectory(prefix="edgessl-quant-") as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation; quantize the plain model without it
            log.warning("quantization pre-processing failed (%s); quantizing the model as exported", exc)
            pre = fp32
        model = onnx.load(str(pre))
        input_name = model.graph.input[0].name
        nodes = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE]
        cache = tmp / "calibration.json"

        op_types: list[str] | None = None  # first every op ORT quantizes; then weight layers only

        def quantize(path: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> float:
            quantize_static(
                str(pre), str(path), _Reader(calib, input_name) if not cache.exists() else None,
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_quantize=include, nodes_to_exclude=exclude or [], calibration_cache_path=cache,
                op_types_to_quantize=op_types,
                extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
            )
            return compare(reference, backend_embeddings("onnxruntime", path, check)).cosine_median

        cos = quantize(out)
        excluded: list[str] = []
        if cos < target_median and nodes:
            # Elementwise ops between layers (Add, Mul, HardSwish in squeeze-excite blocks) lose
            # most on INT8 and gain least: keep them in fp32 and quantize the weight layers.
            op_types = list(QUANTIZABLE)
            cos = quantize(out)
            log.info("int8 with every op quantized misses the target; weight layers only: median cosine %.5f", cos)
        if cos < target_median and nodes:
            # One layer at a time: how far does quantizing just this layer move the embedding?
            damage = {n: 1 - quantize(tmp / "one.onnx", include=[n]) for n in nodes}
            ranked = sorted(nodes, key=lambda n: -damage[n])
            log.info("int8 median cosine %.5f < %.3f; most sensitive layers: %s", cos, target_median,
                     ", ".join(f"{n} ({damage[n]:.2e})" for n in ranked[:5]))
            for node in ranked[:max_excluded]:
                excluded.append(node)
                cos = quantize(out, exclude=excluded)
                if cos >= target_median:
                    break
        return QuantResult(out, cos, tuple(excluded), weight_layers_only=op_types is not None)
