"""Enrollment quality: shot gates (blur, darkness, near-duplicates), per-class figures, negatives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from daemon_helpers import BLUE, GREEN, RED, textured

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.daemon.config import EnrollmentConfig
from edgessl.edge_runtime.fewshot.classifier import VETOED, FewShotClassifier
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.fewshot.labels import UNKNOWN
from edgessl.edge_runtime.fewshot.quality import check_shot, class_quality
from edgessl.edge_runtime.inference.extractor import FeatureExtractor

GATES = EnrollmentConfig()


def test_sharp_bright_distinct_shots_pass():
    kept = []
    for i in range(3):
        check = check_shot(textured(RED, i * 3), GATES, kept)
        assert check.ok, check.reason
        kept.append(check.thumbnail)


def test_blurry_dark_washed_out_and_duplicate_shots_are_rejected_with_the_reason():
    sharp = textured(GREEN, 0)
    blurry = cv2.GaussianBlur(sharp, (0, 0), 6)
    dark = (sharp * 0.1).astype(np.uint8)
    bright = np.full_like(sharp, 250)
    first = check_shot(sharp, GATES)
    assert first.ok
    checks = {
        "blurry": check_shot(blurry, GATES),
        "too dark": check_shot(dark, GATES),
        "washed out": check_shot(bright, GATES),
        "near-duplicate": check_shot(sharp.copy(), GATES, [first.thumbnail]),
    }
    for reason, check in checks.items():
        assert not check.ok and check.reason.startswith(reason), (reason, check.reason)
    assert "sharpness" in checks["blurry"].reason and f"< {GATES.min_sharpness:g}" in checks["blurry"].reason
    assert checks["near-duplicate"].difference == pytest.approx(0.0)


def test_class_quality_figures():
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0, 0], 0.3, (5, 4))
    b = rng.normal([0, 5, 0, 0], 0.3, (4, 4))
    c = rng.normal([0, 4.5, 1.5, 0], 0.3, (1, 4))  # close to b, a single example
    emb = np.concatenate([a, b, c]).astype(np.float32)
    labels = ["a"] * 5 + ["b"] * 4 + ["c"]
    report = {q.label: q for q in class_quality(labels, emb, None, {"a": (5, 0), "b": (4, 1), "c": (1, 0),
                                                                     "only-neg": (0, 2)})}
    assert report["a"].loo_accuracy == 1.0 and report["a"].advice == "good"
    assert report["a"].nearest_class in ("b", "c")
    assert (report["b"].nearest_class, report["c"].nearest_class) == ("c", "b")
    assert report["b"].negatives == 1
    assert report["c"].loo_accuracy is None and "enroll at least 3" in report["c"].advice
    assert report["only-neg"].exemplars == 0 and "only negative" in report["only-neg"].advice


def test_leave_one_out_finds_confused_classes():
    rng = np.random.default_rng(1)
    # Two classes drawn from the same distribution: leave-one-out accuracy near chance.
    emb = rng.normal(0, 1, (20, 8)).astype(np.float32)
    labels = ["x", "y"] * 10
    report = class_quality(labels, emb, None)
    assert all(q.loo_accuracy is not None and q.loo_accuracy < 0.8 for q in report)
    assert all("often mistaken" in q.advice for q in report)


@pytest.fixture
def extractor(tiny_bundle):
    with FeatureExtractor.from_bundle(load_bundle(tiny_bundle), threads=1) as ex:
        yield ex


def test_negative_examples_veto_their_class(extractor, tmp_path):
    with Gallery(tmp_path / "g.db") as gallery:
        clf = FewShotClassifier(extractor, gallery, threshold=0.0)
        clf.enroll("red", [textured(RED, i) for i in range(4)])
        purple = [textured((150, 30, 180), i) for i in range(4)]  # reddish: the red class's nearest miss
        before = clf.classify(purple[:1])[0]
        assert before.label == "red"
        assert clf.enroll("red", purple[1:], negative=True) == 3
        after = clf.classify(purple[:1])[0]
        assert after.label == UNKNOWN and after.score == VETOED  # closer to "not red" than to red
        assert clf.classify([textured(RED, 9)])[0].label == "red"  # red itself still is red
        scores = clf.scores([textured(RED, 9), purple[0]])
        assert scores.labels == ["red"] and scores.scores[1, 0] == VETOED
        assert [(c.label, c.exemplars, c.negatives) for c in gallery.classes()] == [("red", 4, 3)]
        assert [e.negative for e in gallery.exemplars("red")] == [False] * 4 + [True] * 3


def test_exemplar_listing_crops_and_removal(extractor, tmp_path):
    with Gallery(tmp_path / "g.db") as gallery:
        clf = FewShotClassifier(extractor, gallery)
        clf.enroll("blue", [textured(BLUE, i) for i in range(2)])
        first, second = gallery.exemplars()
        assert cv2.imdecode(np.frombuffer(gallery.crop(first.id), np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        gallery.remove_exemplar(first.id)
        assert [c.exemplars for c in gallery.classes()] == [1]
        gallery.remove_exemplar(second.id)
        assert gallery.classes() == []  # the last exemplar took the class with it
        with pytest.raises(Exception, match="no exemplar"):
            gallery.crop(first.id)
