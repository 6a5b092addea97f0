"""TensorRT backend: builds (once) and runs an engine from the bundle's ONNX model on an NVIDIA GPU.

Engines depend on the GPU and the TensorRT version, so bundles ship the ONNX model (fp16, or
QDQ INT8 for explicit quantization) and the engine is built on the device and cached next to
it, in a file named after the model's hash, the GPU and the TensorRT version. The network is
strongly typed: precision comes from the ONNX graph itself (TensorRT 11 has no FP16/INT8
builder flags and no calibrator; TensorRT 10.x, as on Jetson, takes the STRONGLY_TYPED flag).
Buffers live on the GPU (cuda-python), and inference runs asynchronously on a CUDA stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgessl.edge_runtime.bundle.manifest import check_external_data
from edgessl.edge_runtime.inference.backends import Backend, check_batch, input_kind_of
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BackendError

log = logging.getLogger(__name__)


def _imports() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("the tensorrt backend needs TensorRT and an NVIDIA GPU: "
                           "pip install 'edgessl[tensorrt]' (on Jetson use the JetPack TensorRT)") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendError("the tensorrt backend needs cuda-python: pip install cuda-python") from exc
    return trt, cudart


def gpu_available() -> bool:
    """Whether TensorRT and a CUDA GPU are usable here (engines can be built and run)."""
    try:
        _, cudart = _imports()
        err, count = cudart.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:  # no runtime, no driver, no GPU: all mean "not here"
        return False


def _check(result: tuple[Any, ...]) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_name(cudart: Any) -> str:
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00")[0]


def engine_path(onnx_path: Path, cache_dir: Path, max_batch: int, trt: Any, cudart: Any) -> Path:
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu_name(cudart)}-trt{trt.__version__}-b{max_batch}")
    return cache_dir / f"{onnx_path.stem}.{digest}.{tag}.engine"


def build_engine(onnx_path: Path, max_batch: int = 8, workspace_mb: int = 1024) -> bytes:
    """Serialise a strongly typed engine for `onnx_path` with a batch profile 1..max_batch."""
    trt, _ = _imports()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    major = int(trt.__version__.split(".")[0])
    network = builder.create_network(1 << int(flag) if flag is not None and major < 11 else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    inp = network.get_input(0)
    per_image = tuple(inp.shape)[1:]  # (3, H, W) float, or (H, W, 3) uint8 with the preprocessing in the graph
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, *per_image), (max(1, max_batch // 2), *per_image), (max_batch, *per_image))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    return bytes(serialized)


def _write_atomically(path: Path, data: bytes) -> None:
    """A power cut leaves the old cache or the whole new engine, never a truncated one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TensorRtOptions(StrictModel):
    type: Literal["tensorrt"] = "tensorrt"
    max_batch: int = 8
    cache_dir: Path | None = None


class TensorRtBackend(Backend):
    name: ClassVar[str] = "tensorrt"
    artifact_format: ClassVar[str] = "tensorrt"
    requires: ClassVar[tuple[str, ...]] = ("tensorrt", "cuda")
    Options: ClassVar[type[StrictModel]] = TensorRtOptions

    def __init__(self, model_path: Path, *, threads: int | None = None, max_batch: int = 8,
                 cache_dir: Path | None = None) -> None:
        trt, cudart = self._trt, self._cudart = _imports()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise BackendError(f"{model_path}: model file not found")
        self.max_batch = max_batch
        if model_path.suffix == ".engine":
            plan = model_path.read_bytes()
        else:
            check_external_data(model_path)
            cached = engine_path(model_path, Path(cache_dir or model_path.parent), max_batch, trt, cudart)
            if cached.is_file():
                plan = cached.read_bytes()
            else:
                log.info("building a TensorRT engine for %s (first run on this GPU)", model_path.name)
                plan = build_engine(model_path, max_batch)
                _write_atomically(cached, plan)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(f"{model_path}: TensorRT cannot deserialise the engine (other GPU or version?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendError(f"{model_path}: expected one input and an output, got {inputs} -> {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        self._in_shape = tuple(self._engine.get_tensor_shape(self._input))[1:]
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self.input_kind = input_kind_of(self._in_dtype, (-1, *self._in_shape))
        self._stream = _check(cudart.cudaStreamCreate())
        self._d_in = _check(cudart.cudaMalloc(max_batch * int(np.prod(self._in_shape)) * self._in_dtype.itemsize))
        self._context.set_input_shape(self._input, (max_batch, *self._in_shape))
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        self._out_per_image = int(np.prod(out_shape[1:]))
        self._d_out = _check(cudart.cudaMalloc(max_batch * self._out_per_image * self._out_dtype.itemsize))
        self._context.set_tensor_address(self._input, int(self._d_in))
        self._context.set_tensor_address(self._output, int(self._d_out))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        n = len(batch)
        host_in = np.ascontiguousarray(batch, dtype=self._in_dtype)
        host_out = np.empty((n, self._out_per_image), self._out_dtype)
        kind_h2d, kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._context.set_input_shape(self._input, (n, *self._in_shape))
        _check(cudart.cudaMemcpyAsync(self._d_in, host_in.ctypes.data, host_in.nbytes, kind_h2d, self._stream))
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(host_out.ctypes.data, self._d_out, host_out.nbytes, kind_d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return host_out.astype(np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self._context is None:
            raise BackendError("the TensorRT backend is closed")
        batch = check_batch(batch, self.input_kind)
        if tuple(batch.shape[1:]) != self._in_shape:
            raise BackendError(f"the engine takes inputs of shape (N, {', '.join(map(str, self._in_shape))}), "
                               f"got {batch.shape}")
        return np.concatenate([self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])

    def close(self) -> None:
        if getattr(self, "_context", None) is None:
            return
        self._context = None
        self._engine = None
        for ptr in (self._d_in, self._d_out):
            self._cudart.cudaFree(ptr)
        self._cudart.cudaStreamDestroy(self._stream)
