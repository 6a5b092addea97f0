import pytest

from edgessl.synthetic import write_image_set
from edgessl.train.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="package")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-images")
    write_image_set(root, per_class=12, size=24, seed=0)
    return root


@pytest.fixture(scope="package")
def checkpoint(images, tmp_path_factory):
    """A briefly trained resnet_tiny checkpoint at 16x16 (real weights, so parity figures mean something)."""
    cfg = PretrainConfig(data=str(images), out=str(tmp_path_factory.mktemp("export-run") / "run"), image_size=16,
                         batch_size=10, epochs=1, threads=1)
    return pretrain(cfg)
