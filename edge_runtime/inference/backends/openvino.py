"""OpenVINO backend: runs an IR (`model.xml` + `.bin`) on CPU (or GPU/NPU by device name)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from edgessl.edge_runtime.inference.backends import Backend, check_batch, input_kind_of
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BackendError

log = logging.getLogger(__name__)


class OpenVinoOptions(StrictModel):
    type: Literal["openvino"] = "openvino"
    device: str = "CPU"
    hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] = "LATENCY"
    inference_precision: Literal["f32", "bf16", "f16"] = "f32"


class OpenVinoBackend(Backend):
    name: ClassVar[str] = "openvino"
    artifact_format: ClassVar[str] = "openvino"
    requires: ClassVar[tuple[str, ...]] = ("openvino",)
    Options: ClassVar[type[StrictModel]] = OpenVinoOptions

    def __init__(self, model_path: Path, *, threads: int | None = None, device: str = "CPU",
                 hint: str = "LATENCY", inference_precision: str = "f32") -> None:
        """inference_precision: OpenVINO picks bf16 on CPUs that have it unless told otherwise; f32
        (the default here) computes what export checked. A profile may choose "bf16" for speed."""
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError("the openvino backend needs the openvino package: pip install 'edgessl[openvino]'") from exc
        model_path = Path(model_path)
        if not model_path.is_file() or not model_path.with_suffix(".bin").is_file():
            raise BackendError(f"{model_path}: OpenVINO IR needs both {model_path.name} and "
                               f"{model_path.with_suffix('.bin').name}")
        core = ov.Core()
        if device.split(":")[0] not in {d.split(".")[0] for d in core.available_devices} | {"AUTO", "MULTI", "HETERO"}:
            raise BackendError(f"OpenVINO device {device!r} not available; available: {', '.join(core.available_devices)}")
        config: dict[str, object] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": inference_precision}
        if threads is not None and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(core.read_model(str(model_path)), device, config)
        except RuntimeError as exc:
            raise BackendError(f"{model_path}: OpenVINO cannot compile the model for {device}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)
        port = self._compiled.input(0)
        dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        self.input_kind = input_kind_of(port.get_element_type().to_dtype(), dims)
        log.debug("loaded %s on OpenVINO %s", model_path, device)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is None:
            raise BackendError("the OpenVINO backend is closed")
        batch = check_batch(batch, self.input_kind)
        out = self._request.infer({0: batch})[self._output]
        return np.asarray(out, np.float32).reshape(len(batch), -1)

    def close(self) -> None:
        self._compiled = None
        self._request = None
