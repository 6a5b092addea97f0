"""Static INT8 post-training quantization with ONNX Runtime (QDQ, per-channel weights).

Calibration runs once (its tensor ranges are cached); then, if the quantized model misses the
target, elementwise ops are left in fp32 (only Conv/Gemm/MatMul quantized), and if that is not
enough, the layers that hurt the embedding most are measured one at a time (only that layer
quantized) and left in fp32, worst first, until the target is met. The target is the export
gate's: the lowest *centred* cosine to fp32 over the check images (edge_runtime.inference.parity,
the statistic the device's health check uses) at least `target_min_centred`, and the median raw
cosine at least `target_median`.

Calibration runs here, not inside `quantize_static`, for two reasons: ONNX Runtime's histogram
calibrators (entropy, percentile) stack each tensor's outputs of all batches with `np.asarray`,
which fails on a shorter last batch ("inhomogeneous shape") with numpy >= 1.24, so every batch
has the same size; and `quantize_static` does not pass the histogram sizes on, so its entropy
calibrator searches 128 bins for 128 quantized bins, a single candidate, and returns the min/max
ranges. Here entropy uses 2048 bins (TensorRT's choice) and percentile 2048 bins at 99.999%.
"""

from __future__ import annotations

import contextlib
import io
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
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgessl.edge_runtime.inference.parity import golden_agreement
from edgessl.export.parity import backend_embeddings, compare

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
# Options of ONNX Runtime's calibrators (create_calibrator's extra_options) per method.
CALIBRATOR_OPTIONS: dict[str, dict[str, object]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}
QUANTIZABLE = ("Conv", "Gemm", "MatMul")


def even_batch(count: int, largest: int = 16) -> int:
    """The largest batch size <= `largest` that divides `count`: every calibration batch has the
    same shape, which the histogram calibrators need, and no image is left out."""
    return next(b for b in range(min(largest, max(count, 1)), 0, -1) if count % b == 0)


def calibrate(model: Path, calib: np.ndarray, method: str, cache: Path) -> None:
    """Tensor ranges of `model` on `calib` with `method`, written to `cache` (quantize_static's
    calibration cache format)."""
    input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    calibrator = create_calibrator(model, [], augmented_model_path=str(cache.with_name("augmented.onnx")),
                                   calibrate_method=CALIBRATION_METHODS[method],
                                   extra_options=CALIBRATOR_OPTIONS[method])
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their settings
        calibrator.collect_data(_Reader(calib, input_name))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache)


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray, name: str, batch: int = 16) -> None:
        batch = even_batch(len(inputs), batch)
        self._batches = iter([{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class QuantResult:
    path: Path
    cosine_median: float
    excluded: tuple[str, ...]
    weight_layers_only: bool = False  # elementwise ops were left in fp32
    centred_min: float | None = None  # lowest centred cosine on the check images (with a centre vector)
    target_met: bool = True


def quantize_int8(fp32: Path, out: Path, calib: np.ndarray, check: np.ndarray, *, method: str = "minmax",
                  symmetric_activations: bool = False, target_median: float = 0.99,
                  center: np.ndarray | None = None, target_min_centred: float | None = None,
                  max_excluded: int = 8) -> QuantResult:
    """Quantize `fp32` into `out`; `check` are real inputs for the target.

    center/target_min_centred: the export gate (lowest centred cosine to fp32 over `check`);
    without a centre vector only the median raw cosine counts.
    symmetric_activations: int8 activations with zero point 0 (what TensorRT's explicit
    quantization needs); otherwise uint8 activations, which x86 CPU kernels prefer."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    if len(calib) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    reference = backend_embeddings("onnxruntime", fp32, check)
    gated = center is not None and target_min_centred is not None
    floor = target_min_centred if target_min_centred is not None else -1.0

    def score(path: Path) -> tuple[float, float | None]:
        got = backend_embeddings("onnxruntime", path, check)
        return compare(reference, got).cosine_median, golden_agreement(reference, got, center) if gated else None

    def met(s: tuple[float, float | None]) -> bool:
        median, centred = s
        return median >= target_median and (not gated or (centred is not None and centred >= floor))

    def damage(s: tuple[float, float | None]) -> float:  # 1 - what the target measures; NaN is the worst
        value = s[1] if gated else s[0]
        return 2.0 if value is None or np.isnan(value) else 1.0 - value

    with tempfile.TemporaryDirectory(prefix="edgessl-quant-") as tmp_name:
        tmp = Path(tmp_name)
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation; quantize the plain model without it
            log.warning("quantization pre-processing failed (%s); quantizing the model as exported", exc)
            pre = fp32
        model = onnx.load(str(pre))
        nodes = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE]
        cache = tmp / "calibration.json"
        calibrate(pre, calib, method, cache)  # once; every quantize_static below reads the cache

        op_types: list[str] | None = None  # first every op ORT quantizes; then weight layers only

        def quantize(path: Path, include: list[str] | None = None,
                     exclude: list[str] | None = None) -> tuple[float, float | None]:
            quantize_static(
                str(pre), str(path), None, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_quantize=include, nodes_to_exclude=exclude or [], calibration_cache_path=cache,
                op_types_to_quantize=op_types,
                extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
            )
            return score(path)

        def show(s: tuple[float, float | None]) -> str:
            return f"median cosine {s[0]:.5f}" + (f", min centred cosine {s[1]:.5f}" if s[1] is not None else "")

        target = f"median >= {target_median}" + (f", min centred >= {target_min_centred}" if gated else "")
        got = quantize(out)
        excluded: list[str] = []
        if not met(got) and nodes:
            # Elementwise ops between layers (Add, Mul, HardSwish in squeeze-excite blocks) lose
            # most on INT8 and gain least: keep them in fp32 and quantize the weight layers.
            op_types = list(QUANTIZABLE)
            got = quantize(out)
            log.info("int8 with every op quantized misses the target (%s); weight layers only: %s", target, show(got))
        if not met(got) and nodes:
            # One layer at a time: how far does quantizing just this layer move the embedding?
            harm = {n: damage(quantize(tmp / "one.onnx", include=[n])) for n in nodes}
            ranked = sorted(nodes, key=lambda n: -harm[n])
            log.info("int8 %s misses the target (%s); most sensitive layers: %s", show(got), target,
                     ", ".join(f"{n} ({harm[n]:.2e})" for n in ranked[:5]))
            for node in ranked[:max_excluded]:
                excluded.append(node)
                got = quantize(out, exclude=excluded)
                if met(got):
                    break
            log.info("int8 with %d layers in fp32: %s", len(excluded), show(got))
        return QuantResult(out, got[0], tuple(excluded), weight_layers_only=op_types is not None,
                           centred_min=got[1], target_met=met(got))
