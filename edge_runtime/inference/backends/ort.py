"""ONNX Runtime backend (CPU by default; any installed execution provider by name).

`providers` takes ONNX Runtime's own names, in preference order, e.g.
("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") on a Jetson,
or ("OpenVINOExecutionProvider", "CPUExecutionProvider") with onnxruntime-openvino.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgessl.edge_runtime.bundle.manifest import check_external_data
from edgessl.edge_runtime.inference.backends import Backend, check_batch, input_kind_of
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BackendError, BundleError

log = logging.getLogger(__name__)


class OnnxRuntimeOptions(StrictModel):
    type: Literal["onnxruntime"] = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    artifact_format: ClassVar[str] = "onnx"
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    Options: ClassVar[type[StrictModel]] = OnnxRuntimeOptions

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise BackendError(f"ONNX Runtime providers not available: {', '.join(unknown)}; "
                               f"available here: {', '.join(available)}")
        if not Path(model_path).is_file():
            raise BackendError(f"{model_path}: model file not found")
        try:
            check_external_data(Path(model_path))  # before ONNX Runtime opens any external-data file
        except BundleError as exc:
            raise BackendError(f"{model_path}: ONNX Runtime cannot load the model: {exc}") from exc
        options = ort.SessionOptions()
        # The daemon's batch sizes vary from pass to pass; ORT would keep a memory plan per shape.
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self._session: Any = ort.InferenceSession(
                str(model_path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BackendError(f"{model_path}: ONNX Runtime cannot load the model: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise BackendError(f"{model_path}: expected a model with one input (the image batch), "
                               f"it has {[i.name for i in inputs]}")
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        dtype = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}.get(inputs[0].type)
        if dtype is None:
            raise BackendError(f"{model_path}: the model's input is {inputs[0].type}; expected uint8 or float")
        self.input_kind = input_kind_of(dtype, inputs[0].shape)
        log.debug("loaded %s with %s (%s -> %s)", model_path, providers, self.input_name, self.output_name)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BackendError("the ONNX Runtime backend is closed")
        batch = check_batch(batch, self.input_kind)
        (out,) = self._session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, np.float32).reshape(len(batch), -1)

    def close(self) -> None:
        self._session = None
