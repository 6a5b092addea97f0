"""Export formats, one registry: name -> how to build the artifact and which backend runs it.

Every format starts from the verified fp32 ONNX model (by default with the preprocessing in
its graph: export.graph_input), so every artifact takes the same input. TensorRT formats ship an ONNX file
(fp16, or QDQ INT8 with symmetric activations for explicit quantization); the engine is built
on the device, or here when an NVIDIA GPU is present.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgessl.edge_runtime.bundle.manifest import InputKind

log = logging.getLogger(__name__)


@dataclass
class ExportContext:
    workdir: Path  # the bundle being built
    fp32_onnx: Path
    calib: np.ndarray  # calibration images, normalised float NCHW as fp32_onnx takes them
    check: np.ndarray  # real images (not the calibration images) as fp32_onnx takes them, for the parity target
    input_kind: InputKind = "float32-nchw"  # what the shipped artifacts take (graph_input puts it in front)
    check_inputs: np.ndarray | None = None  # `check` as the shipped artifacts take it (default: check)
    calib_method: str = "minmax"
    center: np.ndarray | None = None  # the bundle's centring vector: parity is measured after centring
    int8_median: float = 0.99  # INT8 also aims at a median raw cosine to fp32 this high
    gate_targets: dict[str, float] = field(default_factory=dict)  # format name -> min centred cosine to aim at
    accuracy_metric: Callable[[Callable[[np.ndarray], np.ndarray]], float] | None = None  # for NNCF's control
    notes: dict[str, str] = field(default_factory=dict)  # format name -> what was done, for the report

    def __post_init__(self) -> None:
        if self.check_inputs is None:
            self.check_inputs = self.check


@dataclass(frozen=True)
class Format:
    name: str
    backend: str  # the edge runtime backend that runs it
    artifact_format: str  # Artifact.format in the manifest
    precision: str
    build: Callable[[ExportContext], str]  # writes the files, returns the main file (relative)
    # Parity is not a property of the format: every artifact is judged by the one definition in
    # edge_runtime.inference.parity (min centred cosine, threshold per precision and profile).


def _onnx(ctx: ExportContext) -> str:
    out = ctx.workdir / "model.onnx"
    if out.resolve() != ctx.fp32_onnx.resolve():
        shutil.copyfile(ctx.fp32_onnx, out)  # the float-input base stays as it is: the other formats start there
    return out.name


def _onnx_fp16(ctx: ExportContext) -> str:
    out = ctx.workdir / "model.fp16.onnx"
    if not out.exists():
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(ctx.fp32_onnx)), keep_io_types=True)
        onnx.save(model, str(out))
    return out.name


def _int8(ctx: ExportContext, name: str, file: str, symmetric: bool) -> str:
    from edgessl.export.quantize_ort import quantize_int8

    result = quantize_int8(ctx.fp32_onnx, ctx.workdir / file, ctx.calib, ctx.check, method=ctx.calib_method,
                           symmetric_activations=symmetric, target_median=ctx.int8_median, center=ctx.center,
                           target_min_centred=ctx.gate_targets.get(name))
    ctx.notes[name] = (f"{ctx.calib_method} calibration on {len(ctx.calib)} images"
                       + ("; weight layers only (elementwise ops in fp32)" if result.weight_layers_only else "")
                       + (f"; kept in fp32: {', '.join(result.excluded)}" if result.excluded else "")
                       + ("" if result.target_met else "; quantization target not reached"))
    return file


def _onnx_int8(ctx: ExportContext) -> str:
    return _int8(ctx, "onnx-int8", "model.int8.onnx", symmetric=False)


def _openvino(ctx: ExportContext) -> str:
    from edgessl.export.quantize_ov import convert_ir

    return convert_ir(ctx.fp32_onnx, ctx.workdir / "openvino" / "model.xml").relative_to(ctx.workdir).as_posix()


def _openvino_int8(ctx: ExportContext) -> str:
    from edgessl.edge_runtime.inference.parity import golden_agreement
    from edgessl.export.parity import backend_embeddings
    from edgessl.export.quantize_ov import quantize_ir

    xml = ctx.workdir / "openvino" / "model.int8.xml"
    validate: Callable[[object], float] | None = None
    if ctx.accuracy_metric is not None:
        metric = ctx.accuracy_metric
        validate = lambda compiled: metric(lambda batch: np.asarray(compiled(batch)[0]))  # type: ignore[operator]  # noqa: E731

    quantize_ir(ctx.fp32_onnx, xml, ctx.calib, validate=validate)
    note = (f"NNCF {'accuracy-controlled (max drop 1 point) ' if validate is not None else ''}"
            f"post-training quantization, {len(ctx.calib)} calibration images")
    target = ctx.gate_targets.get("openvino-int8")
    if target is not None and ctx.center is not None:
        # Aim at the export gate too: if the plain result misses it, NNCF's accuracy control keeps
        # the layers in fp32 that it needs to keep the min centred cosine to fp32 above the target.
        center, check = ctx.center, ctx.check
        reference = backend_embeddings("onnxruntime", ctx.fp32_onnx, check)
        got = golden_agreement(reference, backend_embeddings("openvino", xml, check), center)
        if not got >= target:
            def agreement(compiled: object) -> float:
                out = np.concatenate([np.asarray(compiled(check[i:i + 16])[0])  # type: ignore[operator]
                                      for i in range(0, len(check), 16)])
                value = golden_agreement(reference, out, center)
                return value if value == value else -1.0

            quantize_ir(ctx.fp32_onnx, xml, ctx.calib, validate=agreement, max_drop=max(1.0 - target, 1e-4),
                        validation_items=check[:1])
            after = golden_agreement(reference, backend_embeddings("openvino", xml, check), center)
            log.info("openvino-int8: min centred cosine %.4f < %.4f; accuracy-controlled: %.4f", got, target, after)
            note += f"; min centred cosine {got:.4f} < {target:.4f}: redone with NNCF accuracy control on it"
    ctx.notes["openvino-int8"] = note
    return xml.relative_to(ctx.workdir).as_posix()


def _tensorrt_fp16(ctx: ExportContext) -> str:
    return _onnx_fp16(ctx)


def _tensorrt_int8(ctx: ExportContext) -> str:
    return _int8(ctx, "tensorrt-int8", "model.int8-sym.onnx", symmetric=True)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "onnxruntime", "onnx", "fp32", _onnx),
    Format("onnx-fp16", "onnxruntime", "onnx", "fp16", _onnx_fp16),
    Format("onnx-int8", "onnxruntime", "onnx", "int8", _onnx_int8),
    Format("openvino", "openvino", "openvino", "fp16", _openvino),
    Format("openvino-int8", "openvino", "openvino", "int8", _openvino_int8),
    Format("tensorrt-fp16", "tensorrt", "tensorrt", "fp16", _tensorrt_fp16),
    Format("tensorrt-int8", "tensorrt", "tensorrt", "int8", _tensorrt_int8),
)}


def parse_formats(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {', '.join(unknown) or '(none given)'}; "
                         f"valid: {', '.join(FORMATS)}")
    return list(dict.fromkeys(["onnx", *names]))  # fp32 ONNX is the base of every other format


def nvidia_gpu() -> bool:
    """Whether TensorRT can build engines here."""
    from edgessl.edge_runtime.inference.backends.tensorrt import gpu_available

    return gpu_available()


# (backend, precision) -> format name; what a device profile's preferences mean for export.
_BY_BACKEND_PRECISION = {(f.backend, f.precision): f.name for f in FORMATS.values()}
_BY_BACKEND_PRECISION[("openvino", "fp32")] = "openvino"  # IR with fp16-compressed weights, computed in fp32 on CPU


def formats_for_profile(backends: list[str], precisions: list[str]) -> list[str]:
    """Formats a device profile can run, in its order of preference."""
    return [_BY_BACKEND_PRECISION[(b, p)] for b in backends for p in precisions if (b, p) in _BY_BACKEND_PRECISION]
