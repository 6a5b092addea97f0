"""Inference backends: one file each, chosen by name from one explicit table.

A backend turns a batch into (N, D) float32 embeddings. The batch is what the model takes,
which the backend reads from the model itself (`input_kind`): uint8 NHWC BGR crops for
artifacts with the preprocessing in the graph, float32 NCHW for older ones. Each file declares its
`name`, the artifact format it runs, the Python packages its runtime needs (`requires`) and a
pydantic `Options` model (with a `type` discriminator) for its keyword options. A backend's
module imports its runtime only when a model is loaded, so listing the registry is cheap and
a device needs only the runtime of the backend it runs.

Adding a backend: one file in this folder and one line in `BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from edgessl.edge_runtime.bundle.manifest import InputKind
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BackendError

# name -> "module:Class". A new backend is one file in this folder and one line here.
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgessl.edge_runtime.inference.backends.ort:OnnxRuntimeBackend",
    "openvino": "edgessl.edge_runtime.inference.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgessl.edge_runtime.inference.backends.tensorrt:TensorRtBackend",
}


@runtime_checkable
class Backend(Protocol):
    """What the feature extractor needs from a backend. Subclass it to get the context manager.

    Constructor: `Backend(model_path: Path, *, threads: int | None, **options)`."""

    name: ClassVar[str]  # the key in BACKENDS
    artifact_format: ClassVar[str]  # the bundle artifact format it runs, e.g. "onnx"
    requires: ClassVar[tuple[str, ...]]  # Python packages (import names) its runtime needs
    Options: ClassVar[type[StrictModel]]  # its keyword options, with `type: Literal[name]`
    input_kind: InputKind  # what the loaded model takes, read from the model

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) or float32 (N, 3, H, W), as `input_kind` says -> float32 (N, D)."""
        ...

    def close(self) -> None:
        """Release the model; the backend cannot be used afterwards."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend_class(name: str) -> type[Backend]:
    """The class registered under `name`, importing its module now."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}") from None
    module_name, class_name = target.split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls


def backend_unavailable(name: str) -> str | None:
    """Why backend `name` cannot run here (unregistered, runtime not installed), or None."""
    if name not in BACKENDS:
        return f"not a registered backend (registered: {', '.join(sorted(BACKENDS))})"
    cls = backend_class(name)
    for module in cls.requires:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"not installed (no Python package {module!r})"
    probe = getattr(cls, "unavailable", None)  # e.g. TensorRT: is there a GPU?
    return probe() if callable(probe) else None


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` validated by the backend's Options model (BackendError naming the bad key)."""
    from pydantic import ValidationError

    cls = backend_class(name)
    try:
        parsed = cls.Options.model_validate({"type": name, **options})
    except ValidationError as exc:
        raise BackendError(f"options of backend {name!r}: {exc.errors(include_url=False)[0]['msg']} "
                           f"({', '.join(str(p) for p in exc.errors()[0]['loc'])}); valid options: "
                           f"{', '.join(k for k in cls.Options.model_fields if k != 'type') or '(none)'}") from None
    return parsed.model_dump(exclude={"type"}, exclude_unset=True)


def backend_for(artifact_format: str) -> str:
    """The name of the backend that runs artifacts of `artifact_format` (onnx, openvino, tensorrt)."""
    for name in BACKENDS:
        if backend_class(name).artifact_format == artifact_format:
            return name
    raise BackendError(f"no backend runs {artifact_format!r} artifacts; backends: {', '.join(sorted(BACKENDS))}")


def load_backend(name: str, model_path: str | Path, *, threads: int | None = None, **options: Any) -> Backend:
    """Load `model_path` with the backend called `name` (see BACKENDS for the valid names)."""
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be a positive number (or None for the backend's default), got {threads}")
    return backend_class(name)(Path(model_path), threads=threads, **check_options(name, options))  # type: ignore[call-arg]


def input_kind_of(dtype: Any, shape: Sequence[object]) -> InputKind:
    """What a model takes, from its input's element type and shape (uint8 NHWC or float NCHW)."""
    if np.dtype(dtype) == np.uint8 and len(shape) == 4 and shape[-1] == 3:
        return "uint8-nhwc-bgr"
    if np.dtype(dtype) == np.float32 and len(shape) == 4 and shape[1] == 3:
        return "float32-nchw"
    raise BackendError(f"the model's input ({np.dtype(dtype)}, shape {tuple(shape)}) is neither uint8 "
                       f"(N, H, W, 3) nor float32 (N, 3, H, W)")


def check_batch(batch: np.ndarray, kind: InputKind = "float32-nchw") -> np.ndarray:
    """The batch as the contiguous array a model of `kind` takes, or a BackendError saying why not."""
    if kind == "uint8-nhwc-bgr":
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise BackendError(f"this model takes uint8 crops of shape (N, H, W, 3) (BGR, the preprocessing is "
                               f"in the graph), got {getattr(batch, 'dtype', type(batch).__name__)} "
                               f"{getattr(batch, 'shape', '')}")
        return np.ascontiguousarray(batch)
    if isinstance(batch, np.ndarray) and batch.dtype == np.uint8:
        raise BackendError("this model takes float32 (N, 3, H, W) batches normalised by the device "
                           "(inference.preprocess), got uint8 crops")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise BackendError(f"expected a float32 batch of shape (N, 3, H, W), got {batch.shape}")
    return batch
