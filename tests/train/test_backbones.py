import importlib.util
import logging
import warnings

import numpy as np
import pytest
import torch

from edgessl.train.backbones import BACKBONES, create_backbone, feature_shape, output_dim

# One small instance per family (same layer types as the full networks) keeps the default run quick.
FAMILIES = {
    "resnet_tiny": {},
    "resnet50": {"width": 8},  # bottleneck blocks, 7x7 stem and max-pool
    "mobilenetv3_small": {"width_mult": 0.5},
    "efficientnet_b0": {"width_mult": 0.25, "depth_mult": 0.25},
    "vit_tiny": {"depth": 1, "patch_size": 8, "img_size": 32},
}
# Operators that would make a graph data-dependent.
DYNAMIC_OPS = {"Loop", "If", "NonZero", "Scan", "Unique", "TopK"}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_maps_images_to_vectors(name):
    model = create_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        fmap = model.forward_features(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.dim) and output_dim(model) == model.dim
    assert torch.isfinite(out).all()
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, model.dim)
    assert feature_shape(model, 32) == tuple(fmap.shape[1:])


def test_resnet_tiny_is_the_specified_network():
    m = create_backbone("resnet_tiny")
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].out_channels == 32 and convs[0].stride == (1, 1)
    assert not any(isinstance(mod, torch.nn.MaxPool2d) for mod in m.modules())
    assert [len(m.stages)] == [4] and m.dim == 256
    assert [b.conv1.stride[0] for b in m.stages] == [1, 2, 2, 2]
    assert [b.conv2.out_channels for b in m.stages] == [32, 64, 128, 256]


def test_small_stem_and_patch_size_options():
    assert feature_shape(create_backbone("resnet18", small_stem=True), 32) == (512, 4, 4)
    assert feature_shape(create_backbone("resnet18"), 32) == (512, 1, 1)
    vit = create_backbone("vit_small", patch_size=4, img_size=32, depth=1)
    assert vit.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 384, 8, 8)
    assert vit(torch.zeros(1, 3, 16, 16)).shape == (1, 384)  # other sizes: interpolated positions
    assert create_backbone("resnet50").dim == 2048


def test_unknown_backbone_and_option_list_valid_names():
    with pytest.raises(ValueError, match="resnet_tiny"):
        create_backbone("nope")
    with pytest.raises(ValueError, match="small_stem"):
        create_backbone("resnet18", smal_stem=True)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_backbone_without_timm_says_how_to_get_it():
    with pytest.raises(ValueError, match="pip install timm"):
        create_backbone("timm:resnet18")


def _export_and_compare(model: torch.nn.Module, size: int = 32) -> None:
    import onnxruntime as ort

    model = model.eval()
    x = torch.randn(2, 3, size, size)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    finally:
        logging.disable(logging.NOTSET)
    proto = program.model_proto
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & DYNAMIC_OPS, f"data-dependent operators: {ops & DYNAMIC_OPS}"
    dims = [d for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert [d.dim_value for d in dims] == [2, 3, size, size]  # static input shape
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_onnx_export_one_per_family(name):
    _export_and_compare(create_backbone(name, **FAMILIES[name]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_onnx_export_every_registered_backbone_full_size(name):
    _export_and_compare(create_backbone(name))
