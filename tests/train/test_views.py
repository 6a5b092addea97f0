import cv2
import numpy as np
import torch

from edgessl.train.views import (
    ViewConfig,
    ViewGenerator,
    color_jitter,
    equalize,
    gaussian_blur,
    intensity_ops,
    random_resized_crop,
)


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


def test_intensity_operations_are_off_by_default_and_draw_nothing_then():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    plain = ViewGenerator(ViewConfig(size=16))(images, torch.Generator().manual_seed(2))
    zero = ViewGenerator(ViewConfig(size=16, gamma=0.0, equalize_p=0.0, solarize_p=0.0, invert_p=0.0, blur_p=0.0,
                                    noise=0.0))(images, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))


def test_solarize_and_invert_against_their_definitions():
    x = torch.rand(4, 3, 8, 8)
    solar = intensity_ops(x, ViewConfig(solarize_p=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(solar, torch.where(x >= 0.5, 1 - x, x))
    assert torch.equal(intensity_ops(x, ViewConfig(invert_p=1.0), torch.Generator().manual_seed(0)), 1 - x)
    # With p = 0.5 some images are solarised and the others are left exactly as they were.
    half = intensity_ops(x, ViewConfig(solarize_p=0.5), torch.Generator().manual_seed(1))
    changed = [not torch.equal(half[i], x[i]) for i in range(4)]
    assert any(changed) and not all(changed)
    assert all(torch.equal(half[i], solar[i]) for i in range(4) if changed[i])


def test_gamma_is_a_per_image_power_that_keeps_order_and_range():
    x = torch.rand(8, 3, 6, 6) * 0.8 + 0.1  # away from 0 and 1, where log x / log y is ill-conditioned
    y = color_jitter(x, ViewConfig(jitter_p=1.0, brightness=0, contrast=0, saturation=0, hue=0, gamma=0.7),
                     torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x, atol=1e-3)
    # Each image is x ** e for one exponent e: log y / log x is constant within the image.
    ratio = (y.clamp(min=1e-6).log() / x.clamp(min=1e-6).log()).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-3)
    assert float(ratio[:, 0].log().abs().max()) <= 0.7 + 1e-4


def test_equalize_maps_each_channel_to_its_ranks():
    x = torch.rand(2, 3, 5, 5) ** 3  # a skewed histogram
    y = equalize(x)
    flat_x, flat_y = x.flatten(2), y.flatten(2)
    assert torch.equal(flat_x.argsort(-1), flat_y.argsort(-1))  # order kept
    assert torch.allclose(flat_y.sort(-1).values, torch.linspace(0, 1, 25).expand(2, 3, 25))  # flat histogram


def test_gaussian_blur_matches_opencv():
    x = torch.rand(2, 3, 12, 12)
    sigma = torch.tensor([0.6, 1.2])
    y = gaussian_blur(x, sigma)
    radius = 3  # ceil(2 * the largest sigma): one kernel size for the batch
    for i, s in enumerate(sigma.tolist()):
        img = x[i].permute(1, 2, 0).numpy()
        ref = cv2.GaussianBlur(img, (2 * radius + 1, 2 * radius + 1), s, borderType=cv2.BORDER_REFLECT_101)
        assert np.allclose(y[i].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 6, 6), 0.3), torch.tensor([1.0])), torch.tensor(0.3))


def test_grey_views_stay_grey_under_every_intensity_operation():
    grey = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8).expand(6, 3, 16, 16)
    cfg = ViewConfig(size=12, saturation=0, hue=0, gray_p=0, gamma=0.5, equalize_p=0.5, solarize_p=0.5,
                     invert_p=0.5, blur_p=0.5, noise=0.1)
    view = ViewGenerator(cfg)(grey, torch.Generator().manual_seed(0))[0]
    raw = view * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
