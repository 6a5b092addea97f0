"""Enroll synthetic colour classes and classify held-out images with the tiny bundle's model."""

from __future__ import annotations

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.fewshot.classifier import UNKNOWN, FewShotClassifier, Prediction
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
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


def test_calibrated_thresholds_decide_per_class(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery, threshold=0.5, calibrated=True)
    clf.enroll("red", color_images(RED, 5, seed=0))
    clf.enroll("blue", color_images(BLUE, 5, seed=0))
    clf.enroll("green", color_images(GREEN, 2, seed=0))  # too few to calibrate
    thresholds = {t.label: t for t in clf.thresholds()}
    assert list(thresholds) == ["blue", "green", "red"]
    assert thresholds["red"].calibrated and thresholds["blue"].calibrated
    assert not thresholds["green"].calibrated and thresholds["green"].threshold == 0.5
    queries = color_images(RED, 3, seed=4) + color_images(BLUE, 3, seed=4) + color_images(GREEN, 3, seed=4)
    table = clf.scores(queries)
    np.testing.assert_allclose(table.thresholds, [thresholds[c].threshold for c in table.labels])
    for p, row, chosen in zip(clf.classify(queries), table.scores, table.chosen, strict=True):
        t = thresholds[p.nearest].threshold
        assert p.threshold == pytest.approx(t) and p.score == pytest.approx(row[chosen])
        assert p.label == (p.nearest if p.score >= t else UNKNOWN)
    assert [p.nearest for p in clf.classify(queries)] == ["red"] * 3 + ["blue"] * 3 + ["green"] * 3


def test_background_embeddings_recalibrate(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery, calibrated=True)
    clf.enroll("red", color_images(RED, 5, seed=0))
    alone = clf.thresholds()[0]
    assert alone.impostor_source is None and "no other class or background" in alone.reason
    clf.set_background(extractor.embed(color_images(BLUE, 8, seed=1)))  # unlike red
    far = clf.thresholds()[0]
    clf.set_background(extractor.embed(color_images((90, 30, 200), 8, seed=1)))  # reddish
    near = clf.thresholds()[0]
    assert far.impostor_source == near.impostor_source == "background"
    assert near.impostor_mean > far.impostor_mean and near.threshold > far.threshold
    assert near.threshold <= alone.threshold  # never rejects more than ~5% of genuine views
    with pytest.raises(GalleryError, match=r"background embeddings must be \(M, "):
        clf.set_background(np.zeros((3, extractor.embedding_dim + 1), np.float32))


def test_batch_size_reaches_the_extractor(extractor, gallery, color_images):
    seen = []
    real = extractor.embed

    def spy(images, batch_size=32):
        seen.append(batch_size)
        return real(images, batch_size=batch_size)

    clf = FewShotClassifier(extractor, gallery)
    clf.enroll("red", color_images(RED, 3))
    extractor.embed = spy
    clf.scores(color_images(RED, 4), batch_size=3)
    clf.classify(color_images(RED, 2), batch_size=7)
    assert seen == [3, 7]


def test_head_grows_with_the_examples(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery, head="auto")
    clf.enroll("red", color_images(RED, 4))
    clf.enroll("blue", color_images(BLUE, 4))
    head = clf.head()
    assert head.kind == "prototype" and "needs 10" in head.reason
    fitted = FewShotClassifier(extractor, gallery, head="fitted")
    assert fitted.head().kind == "fitted"
    held_out = color_images(RED, 3, seed=2) + color_images(BLUE, 3, seed=2)
    assert [p.nearest for p in fitted.classify(held_out)] == ["red"] * 3 + ["blue"] * 3
    assert FewShotClassifier(extractor, FakeEmptyGallery(gallery)).head() is None
    with pytest.raises(GalleryError, match="valid heads"):
        FewShotClassifier(extractor, gallery, head="svm")


class FakeEmptyGallery:
    """A gallery with no classes (the classifier's empty case) without touching the real one."""

    def __init__(self, real):
        self.real = real
        self.revision = (0, 0)

    def stale(self, fingerprint):
        return 0

    def embeddings(self, fingerprint, negative=False):
        return [], np.zeros((0, 16), np.float32)

    def sources(self, fingerprint):
        return [], np.zeros((0, 16), np.float32), []


def test_class_scores_decisions_match_classify(extractor, gallery, color_images):
    clf = FewShotClassifier(extractor, gallery, threshold=0.3)
    clf.enroll("red", color_images(RED, 3))
    clf.enroll("blue", color_images(BLUE, 3))
    queries = color_images(RED, 2, seed=3) + color_images(BLUE, 2, seed=3)
    assert clf.scores(queries).decisions(0.3) == clf.classify(queries)
    empty = FewShotClassifier(extractor, FakeEmptyGallery(gallery)).scores(queries)
    assert empty.labels == [] and empty.scores.shape == (4, 0) and empty.decisions() == [Prediction(UNKNOWN, 0.0, None)] * 4
