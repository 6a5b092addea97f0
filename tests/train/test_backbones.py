import pytest
import torch

from edgessl.train.backbones import BACKBONES, create_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_maps_images_to_vectors(name):
    model = create_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.dim)
    assert torch.isfinite(out).all()


def test_resnet_tiny_is_the_specified_network():
    m = create_backbone("resnet_tiny")
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].out_channels == 32 and convs[0].stride == (1, 1)
    assert not any(isinstance(mod, torch.nn.MaxPool2d) for mod in m.modules())
    assert [len(m.stages)] == [4] and m.dim == 256
    assert [b.conv1.stride[0] for b in m.stages] == [1, 2, 2, 2]
    assert [b.conv2.out_channels for b in m.stages] == [32, 64, 128, 256]


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="resnet_tiny"):
        create_backbone("nope")
