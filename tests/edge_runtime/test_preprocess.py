"""preprocess follows the bundle's PreprocessSpec exactly; read_image names bad files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import PreprocessSpec
from edgessl.edge_runtime.inference.preprocess import preprocess, read_image
from edgessl.errors import ImageError

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)


def spec(**kw) -> PreprocessSpec:
    return PreprocessSpec(**{"input_size": (2, 3), "mean": MEAN, "std": STD, **kw})


IMAGE = np.array(  # 2 x 3 BGR
    [[[10, 20, 30], [40, 50, 60], [70, 80, 90]],
     [[100, 110, 120], [130, 140, 150], [255, 0, 128]]], np.uint8)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_values_follow_the_spec_by_hand(order):
    out = preprocess([IMAGE, IMAGE[::-1]], spec(channel_order=order, resize="stretch"))
    assert out.shape == (2, 3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    for n, image in enumerate([IMAGE, IMAGE[::-1]]):
        for c in range(3):
            src = 2 - c if order == "RGB" else c  # RGB: model channel 0 is the image's red (BGR index 2)
            for y in range(2):
                for x in range(3):
                    expected = (image[y, x, src] / 255 - MEAN[c]) / STD[c]
                    assert out[n, c, y, x] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_shorter_side_crop_keeps_the_centre():
    # 40 x 80: blue | green (middle half) | red. Shorter side 40 -> 20, width 80 -> 40, crop 20.
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :20] = (255, 0, 0)
    image[:, 20:60] = (0, 255, 0)
    image[:, 60:] = (0, 0, 255)
    s = spec(input_size=(20, 20), resize="shorter_side_crop", mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess([image], s)[0]
    assert out.shape == (3, 20, 20)
    np.testing.assert_allclose(out[1], 1.0)  # all green (RGB order: channel 1)
    np.testing.assert_allclose(out[[0, 2]], 0.0)


def test_shorter_side_crop_of_a_tall_image_to_a_wide_target():
    image = np.zeros((90, 30, 3), np.uint8)
    image[30:60] = 255  # white band in the middle third
    s = spec(input_size=(10, 20), resize="shorter_side_crop", mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess([image], s)
    assert out.shape == (1, 3, 10, 20)  # covered (scale 2/3 -> 60 x 20) and centre-cropped
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_stretch_keeps_the_whole_image():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = (0, 0, 255)
    out = preprocess([image], spec(input_size=(10, 10), resize="stretch", mean=(0, 0, 0), std=(1, 1, 1)))[0]
    np.testing.assert_allclose(out[0, :, :5], 1.0)  # red left half
    np.testing.assert_allclose(out[0, :, 5:], 0.0)


@pytest.mark.parametrize("interpolation", ["area", "linear", "cubic"])
def test_interpolation_is_the_one_named(interpolation):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
    s = spec(input_size=(16, 16), resize="stretch", interpolation=interpolation, channel_order="BGR",
             mean=(0, 0, 0), std=(1, 1, 1))
    expected = cv2.resize(image, (16, 16), interpolation=flags[interpolation]).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(preprocess([image], s)[0], expected, atol=1e-6)


def test_gray_and_bgra_are_converted_to_bgr():
    s = spec(input_size=(4, 4))
    gray = np.full((8, 8), 77, np.uint8)
    bgr = np.full((8, 8, 3), 77, np.uint8)
    bgra = np.dstack([IMAGE, np.full((2, 3), 9, np.uint8)])
    np.testing.assert_array_equal(preprocess([gray], s), preprocess([bgr], s))
    np.testing.assert_array_equal(preprocess([gray[..., None]], s), preprocess([bgr], s))
    np.testing.assert_array_equal(preprocess([bgra], s), preprocess([IMAGE], s))


def test_bad_arrays_are_refused():
    with pytest.raises(ImageError, match="uint8"):
        preprocess([np.zeros((4, 4, 3), np.float32)], spec())
    with pytest.raises(ImageError, match=r"shape \(4, 4, 2\)"):
        preprocess([np.zeros((4, 4, 2), np.uint8)], spec())
    assert preprocess([], spec()).shape == (0, 3, 2, 3)


def test_read_image_round_trip_and_errors(tmp_path):
    path = tmp_path / "ok.png"
    assert cv2.imwrite(str(path), IMAGE)
    np.testing.assert_array_equal(read_image(path), IMAGE)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: not a readable image"):
        read_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        read_image(empty)
    with pytest.raises(ImageError, match="missing.png: cannot read"):
        read_image(tmp_path / "missing.png")
