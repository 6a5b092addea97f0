import torch

from edgessl.train.views import ViewConfig, ViewGenerator, color_jitter, random_resized_crop


def test_views_shape_and_determinism():
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    gen = ViewGenerator(ViewConfig(size=24), n_views=2)
    a = gen(images, torch.Generator().manual_seed(0))
    b = gen(images, torch.Generator().manual_seed(0))
    c = gen(images, torch.Generator().manual_seed(1))
    assert [v.shape for v in a] == [(4, 3, 24, 24)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # two different views of the same images


def test_full_crop_without_flip_is_identity():
    x = torch.rand(2, 3, 16, 16)
    cfg = ViewConfig(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(random_resized_crop(x, cfg), x, atol=1e-5)


def test_flip_mirrors():
    x = torch.rand(1, 3, 8, 8)
    cfg = ViewConfig(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(random_resized_crop(x, cfg), x.flip(-1), atol=1e-5)


def test_jitter_off_keeps_pixels_and_on_changes_them():
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(color_jitter(x, ViewConfig(jitter_p=0.0)), x, atol=1e-5)
    y = color_jitter(x, ViewConfig(jitter_p=1.0), torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x, atol=1e-3)
