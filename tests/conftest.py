"""Shared fixtures. `make_bundle` builds a tiny but real edge bundle without torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

TINY_SIZE = (32, 32)


TINY_DIM = 16


def tiny_onnx_model(dim: int = TINY_DIM, seed: int = 0) -> bytes:
    """Conv 3x3 (3 -> dim, fixed random weights) + Relu + GlobalAveragePool + Flatten.

    Input "input" float32 [batch, 3, H, W] with a dynamic batch axis; output "embedding"
    float32 [batch, dim]. Colours and textures give different embeddings."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((dim, 3, 3, 3)).astype(np.float32) / 3
    bias = rng.standard_normal(dim).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "W", "B"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["embedding"], axis=1),
        ],
        "tiny_embedder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *TINY_SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_tiny_bundle(root: Path, *, seed: int = 0, version: int = 1, cohort: bool = False) -> Path:
    """Write model.onnx, center.npy, golden.npz (and with `cohort`, cohort.npy: the embeddings of
    the "pretraining" images) and manifest.json into `root`."""
    import onnxruntime as ort

    from edgessl.edge_runtime.bundle.manifest import (
        Artifact,
        Manifest,
        ModelInfo,
        PreprocessSpec,
        file_entry,
        now_iso,
        write_manifest,
    )

    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(tiny_onnx_model(seed=seed))
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    # Centre: the mean embedding of random "pretraining" images.
    base = rng.standard_normal((64, 3, *TINY_SIZE)).astype(np.float32)
    base_emb = session.run(None, {"input": base})[0]
    np.save(root / "center.npy", base_emb.mean(axis=0))
    golden_inputs = rng.standard_normal((2, 3, *TINY_SIZE)).astype(np.float32)
    np.savez(root / "golden.npz", inputs=golden_inputs, embeddings=session.run(None, {"input": golden_inputs})[0])
    files = ["model.onnx", "center.npy", "golden.npz"]
    if cohort:
        np.save(root / "cohort.npy", base_emb)
        files.append("cohort.npy")
    manifest = Manifest(
        created_at=now_iso(),
        model=ModelInfo(name="tiny", version=version, backbone="conv3x3", method="none"),
        preprocess=PreprocessSpec(input_size=TINY_SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        embedding_dim=TINY_DIM,
        center="center.npy",
        golden="golden.npz",
        cohort="cohort.npy" if cohort else None,
        artifacts=[Artifact(format="onnx", precision="fp32", file="model.onnx")],
        files={name: file_entry(root / name) for name in files},
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_bundle(name="bundle", seed=0, version=1, cohort=False) -> a fresh bundle directory."""
    def make(name: str = "bundle", **kwargs: int | bool) -> Path:
        return build_tiny_bundle(tmp_path / name, **kwargs)
    return make


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shared tiny bundle (read-only: tests that modify a bundle use make_bundle)."""
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


def _nvidia_gpu() -> str | None:
    """None when TensorRT can run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT needs an NVIDIA GPU (tensorrt is not installed and no GPU was found)"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError:
            return "TensorRT needs an NVIDIA GPU and cuda-python (not installed)"
    err, count = cudart.cudaGetDeviceCount()
    return None if int(err) == 0 and count > 0 else "TensorRT needs an NVIDIA GPU (none found)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where there is an NVIDIA GPU and skip, saying so, elsewhere."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _nvidia_gpu()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
