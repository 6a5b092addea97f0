"""Augmentation policies: measured on a sample of the data, printed, stored in config.json,
overridable by preset and per operation; new geometric operations leave old views untouched."""

import json

import cv2
import numpy as np
import pytest
import torch

from edgessl.train import augment as A
from edgessl.train.pretrain import PretrainConfig, pretrain
from edgessl.train.views import ViewConfig, ViewGenerator


def batch(kind: str, n: int = 32, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if kind == "colour":
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    if kind == "grey":
        return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g).expand(n, 3, size, size)
    if kind == "binary":
        return (torch.rand(n, 1, size, size, generator=g) < 0.1).to(torch.uint8).mul(255).expand(n, 3, size, size)
    if kind == "thermal":  # grey, a narrow band of values around each scene's mean
        base = torch.randint(60, 190, (n, 1, 1, 1), generator=g)
        return (base + torch.randint(-12, 13, (n, 1, size, size), generator=g)).to(torch.uint8).expand(n, 3, size, size)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, policy", [("colour", "natural"), ("grey", "grey"), ("binary", "document"),
                                          ("thermal", "thermal")])
def test_measured_statistics_pick_the_policy(kind, policy):
    chosen = A.choose(A.measure(batch(kind)), image_size=32)
    assert chosen.name == policy
    assert chosen.options == A.POLICIES[policy]
    assert policy in chosen.describe()


def test_grey_policy_has_no_colour_jitter_and_tiny_images_get_larger_crops():
    grey = A.POLICIES["grey"]
    assert grey["saturation"] == grey["hue"] == grey["gray_p"] == 0
    # In their place, solarisation folds the intensity histogram; photographs keep SimCLR's recipe.
    assert grey["solarize_p"] > 0 and A.view_config(32, 0.2, A.POLICIES["natural"]).solarize_p == 0
    # Views of grey images stay grey (channels equal once un-normalised), and still differ from each other.
    cfg = A.view_config(32, 0.2, grey)
    v1, v2 = ViewGenerator(cfg)(batch("grey", n=4), torch.Generator().manual_seed(1))
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    raw = v1 * std + mean
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)
    assert not torch.allclose(v1, v2, atol=1e-2)
    tiny = A.choose(A.measure(batch("colour"), short_sides=[16] * 10), image_size=32)
    assert tiny.name == "natural" and tiny.options["min_scale"] == A.TINY_MIN_SCALE and "tiny" in tiny.reason
    same = A.choose(A.measure(batch("colour"), short_sides=[32] * 10), image_size=32)
    assert "min_scale" not in same.options


def test_presets_and_per_op_overrides_and_clear_errors():
    p = A.resolve("document", None, 32, {"rotate": 3.0})
    assert p.name == "document" and p.options["rotate"] == 3.0 and p.options["flip_p"] == 0.0
    with pytest.raises(ValueError, match="valid: auto, natural"):
        A.resolve("sepia", None, 32, {})
    with pytest.raises(ValueError, match="rotate"):
        A.resolve("natural", None, 32, {"rotation": 5})
    cfg = A.view_config(32, 0.2, {"min_scale": 0.5, "hue": 0.0})
    assert cfg.scale == (0.5, 1.0) and cfg.hue == 0.0


def test_geometry_changes_views_and_is_off_by_default():
    images = batch("colour", n=6)
    plain = ViewGenerator(ViewConfig(size=16))(images, torch.Generator().manual_seed(3))
    zero = ViewGenerator(ViewConfig(size=16, rotate=0.0, shear=0.0))(images, torch.Generator().manual_seed(3))
    geo = ViewGenerator(ViewConfig(size=16, rotate=30.0, shear=0.3))(images, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert not torch.allclose(plain[0], geo[0], atol=1e-3)
    assert all(torch.isfinite(v).all() for v in geo)
    # A (nearly) zero rotation and shear, drawn after the crop's numbers, compose to the same crop.
    identity = ViewGenerator(ViewConfig(size=16, rotate=1e-9, jitter_p=0, gray_p=0))(
        images, torch.Generator().manual_seed(3))
    reference = ViewGenerator(ViewConfig(size=16, jitter_p=0, gray_p=0))(images, torch.Generator().manual_seed(3))
    assert torch.allclose(identity[0], reference[0], atol=1e-4)


def write_grey_images(root, n=40, size=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        img = (rng.random((size, size)) * 255).astype(np.uint8)
        cv2.rectangle(img, (4, 4), (4 + i % 12, 10 + i % 9), int(255 - i * 3), -1)
        cv2.imwrite(str(d / f"{i}.png"), img)
    return root


def test_pretrain_picks_prints_and_stores_the_policy(tmp_path, capsys):
    data = write_grey_images(tmp_path / "grey")
    base = dict(data=str(data), image_size=16, batch_size=8, epochs=0.4, threads=1, tensorboard=False,
                precision="fp32")
    pretrain(PretrainConfig(out=str(tmp_path / "auto"), **base))
    assert "augmentation policy 'grey'" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert cfg["augment"] == "grey" and cfg["augment_options"]["saturation"] == 0.0
    assert PretrainConfig(**cfg).views().solarize_p == A.POLICIES["grey"]["solarize_p"]
    assert "grey" in cfg["augment_reason"] and cfg["crop_min_scale"] == cfg["augment_options"]["min_scale"]

    from edgessl.cli import main

    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "forced"), "--image-size", "16",
                 "--batch-size", "8", "--epochs", "0.4", "--threads", "1", "--no-tensorboard", "--augment", "natural",
                 "--augment-opt", "jitter_p=0.5", "--crop-min-scale", "0.4"]) == 0
    cfg = json.loads((tmp_path / "forced" / "config.json").read_text())
    assert cfg["augment"] == "natural" and cfg["augment_options"] == {"jitter_p": 0.5, "min_scale": 0.4}
    assert PretrainConfig(**cfg).views().jitter_p == 0.5 and PretrainConfig(**cfg).views().scale == (0.4, 1.0)
