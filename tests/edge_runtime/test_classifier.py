"""Enroll synthetic colour classes and classify held-out images with the tiny bundle's model."""

from __future__ import annotations

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.fewshot.classifier import UNKNOWN, FewShotClassifier
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.errors import GalleryError

RED, BLUE, GREEN = (30, 30, 200), (200, 30, 30), (30, 200, 30)  # BGR


@pytest.fixture
def extractor(tiny_bundle):
    with FeatureExtractor.from_bundle(load_bundle(tiny_bundle), threads=1) as ex:
        yield ex


@pytest.fixture
def gallery(tmp_path):
    with Gallery(tmp_path / "gallery.db") as g:
        yield g


def test_empty_gallery_answers_unknown(extractor, gallery, color_images):
    predictions = FewShotClassifier(extractor, gallery).classify(color_images(RED, 2))
    assert [(p.label, p.score, p.nearest) for p in predictions] == [(UNKNOWN, 0.0, None)] * 2


def test_enroll_then_classify_held_out(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery, threshold=0.5)
    assert clf.enroll("red", color_images(RED, 4, seed=0)) == 4
    assert clf.enroll("blue", color_images(BLUE, 4, seed=0)) == 4
    held_out = color_images(RED, 5, seed=1) + color_images(BLUE, 5, seed=1)
    predictions = clf.classify(held_out)
    assert [p.label for p in predictions] == ["red"] * 5 + ["blue"] * 5
    assert all(p.score > 0.5 and p.nearest == p.label for p in predictions)

    # Without calibration the global threshold decides: just above a score -> unknown (nearest
    # still named), just below -> the class.
    query = held_out[:1]
    score = predictions[0].score
    above = FewShotClassifier(extractor, gallery, threshold=min(1.0, score + 1e-4), calibrated=False).classify(query)[0]
    below = FewShotClassifier(extractor, gallery, threshold=score - 1e-4, calibrated=False).classify(query)[0]
    assert (above.label, above.nearest) == (UNKNOWN, "red")
    assert below.label == "red"


def test_forget_and_cache_follow_the_gallery(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery)
    clf.enroll("red", color_images(RED, 3))
    clf.enroll("blue", color_images(BLUE, 3))
    red_query = color_images(RED, 1, seed=5)
    assert clf.classify(red_query)[0].label == "red"
    assert clf.forget("red") == 3
    after = clf.classify(red_query)[0]
    assert after.nearest == "blue"  # the cached prototypes were dropped
    # Another connection (say, `edgessl enroll` while a daemon runs) enrolls: the cache notices.
    with Gallery(gallery.path) as other:
        other.add("red", color_images(RED, 3), extractor.embed(color_images(RED, 3)), extractor.fingerprint)
    assert clf.classify(red_query)[0].label == "red"


def test_exemplars_of_an_older_model_are_reembedded(extractor, gallery, color_images):
    crops = color_images(GREEN, 3)
    gallery.add("green", crops, np.zeros((3, 16), np.float32), "an-older-model")
    clf = FewShotClassifier(extractor, gallery)
    assert gallery.stale(extractor.fingerprint) == 0
    labels, emb = gallery.embeddings(extractor.fingerprint)
    assert labels == ["green"] * 3
    np.testing.assert_allclose(emb, extractor.embed(crops), rtol=0.05, atol=0.05)  # from the JPEG crops
    assert clf.classify(color_images(GREEN, 1, seed=9))[0].label == "green"


def test_threshold_and_empty_enroll_are_checked(extractor, gallery):
    with pytest.raises(GalleryError, match=r"\[-1, 1\]"):
        FewShotClassifier(extractor, gallery, threshold=1.5)
    with pytest.raises(GalleryError, match="no images to enroll"):
        FewShotClassifier(extractor, gallery).enroll("red", [])
