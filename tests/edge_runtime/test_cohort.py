"""Cohort score normalisation: the offset's arithmetic, the classifier and calibration using it, the
bundle carrying it, and the open-set evaluation reporting it."""

from __future__ import annotations

import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import load_bundle, read_manifest, write_manifest
from edgessl.edge_runtime.fewshot.calibration import calibrate_thresholds
from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
from edgessl.edge_runtime.fewshot.cohort import MIN_COHORT, Cohort
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.fewshot.openset import evaluate_openset
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.errors import BundleError, GalleryError

RED, BLUE = (30, 30, 200), (200, 30, 30)  # BGR


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    return center_normalize(rng.standard_normal((n, d)).astype(np.float32))


def test_offset_is_the_mean_of_the_top_k_cosines_less_the_typical_one():
    rng = np.random.default_rng(0)
    bank = _unit(rng, 50)
    cohort = Cohort.from_embeddings(bank, None, fraction=0.1)
    assert cohort.k == 5
    q = _unit(rng, 7)
    expected = np.sort(q @ cohort.bank.T, axis=1)[:, -5:].mean(axis=1) - cohort.typical
    np.testing.assert_allclose(cohort.offsets(q), expected, atol=1e-6)
    # The typical offset is that of the bank's own images, each without itself: half lie above it.
    sims = cohort.bank @ cohort.bank.T
    np.fill_diagonal(sims, -np.inf)
    assert cohort.typical == pytest.approx(float(np.median(np.sort(sims, axis=1)[:, -5:].mean(axis=1))), abs=1e-6)


def test_a_query_like_the_cohort_is_lowered_and_the_nearest_class_never_changes():
    rng = np.random.default_rng(1)
    crowd = center_normalize(np.ones(16, np.float32) + 0.3 * rng.standard_normal((40, 16)).astype(np.float32))
    cohort = Cohort.from_embeddings(np.concatenate([crowd, _unit(rng, 40)]), None)
    hub = center_normalize(np.ones((1, 16), np.float32))  # in the middle of the crowd
    loner = center_normalize(-np.ones((1, 16), np.float32))  # far from every cohort image
    off = cohort.offsets(np.concatenate([hub, loner]))
    assert off[0] > 0.2 and off[1] < 0
    scores = rng.uniform(-1, 1, (2, 5)).astype(np.float32)
    normalised = cohort.normalise(scores, np.concatenate([hub, loner]))
    np.testing.assert_allclose(scores - normalised, np.repeat(off[:, None], 5, axis=1), atol=1e-6)
    assert (normalised.argmax(axis=1) == scores.argmax(axis=1)).all()


def test_a_cohort_needs_enough_images_and_a_fraction():
    rng = np.random.default_rng(2)
    with pytest.raises(GalleryError, match=f"at least {MIN_COHORT}"):
        Cohort.from_embeddings(_unit(rng, MIN_COHORT - 1), None)
    with pytest.raises(GalleryError, match="fraction"):
        Cohort.from_embeddings(_unit(rng, 30), None, fraction=0)
    with pytest.raises(GalleryError, match=r"\(N, 16\)"):
        Cohort.from_embeddings(_unit(rng, 30), None).offsets(np.zeros((2, 8), np.float32))


def test_calibration_with_a_cohort_holds_thresholds_on_normalised_scores():
    rng = np.random.default_rng(3)
    centres = _unit(rng, 3)
    emb = np.concatenate([centres[c] + 0.4 * rng.standard_normal((6, 16)) for c in range(3)]).astype(np.float32)
    labels = [c for c in "abc" for _ in range(6)]
    cohort = Cohort.from_embeddings(_unit(rng, 60), None)
    plain = calibrate_thresholds(labels, emb, None, fallback=-1.0)
    normed = calibrate_thresholds(labels, emb, None, fallback=-1.0, cohort=cohort)
    # Every sample the thresholds are fitted on is shifted by its own row's offset, so the
    # genuine means move by the mean offset of each class's exemplars.
    x = center_normalize(emb)
    off = cohort.offsets(x)
    for c, (p, n) in enumerate(zip(plain, normed, strict=True)):
        assert n.genuine_mean == pytest.approx(p.genuine_mean - off[6 * c:6 * c + 6].mean(), abs=1e-5)
        assert n.threshold != p.threshold


@pytest.fixture
def cohort_bundle(make_bundle):
    return make_bundle("with-cohort", cohort=True)


def test_the_classifier_normalises_by_the_bundles_cohort_only_when_calibrated(cohort_bundle, tmp_path,
                                                                              color_images):
    with FeatureExtractor.from_bundle(load_bundle(cohort_bundle), threads=1) as ex, \
            Gallery(tmp_path / "g.db") as gallery:
        assert ex.cohort is not None and ex.cohort.shape[1] == ex.embedding_dim
        plain = FewShotClassifier(ex, gallery, threshold=0.0, calibrated=False)
        calibrated = FewShotClassifier(ex, gallery, threshold=0.0, calibrated=True)
        assert plain.cohort is None and calibrated.cohort is not None
        calibrated.enroll("red", color_images(RED, 4))
        calibrated.enroll("blue", color_images(BLUE, 4))
        queries = color_images(RED, 3, seed=7) + color_images(BLUE, 3, seed=7)
        a, b = plain.scores(queries), calibrated.scores(queries)
        q = center_normalize(ex.embed(queries), ex.center)
        np.testing.assert_allclose(a.scores - b.scores, np.repeat(calibrated.cohort.offsets(q)[:, None], 2, 1),
                                   atol=1e-5)
        assert [p.label for p in calibrated.classify(queries)] == ["red"] * 3 + ["blue"] * 3


def test_a_bundle_with_a_broken_cohort_is_refused(cohort_bundle):
    manifest = read_manifest(cohort_bundle)
    np.save(cohort_bundle / "cohort.npy", np.zeros((30, 3), np.float32))  # wrong width
    with pytest.raises(BundleError, match="cohort.npy: (size|sha256)"):
        load_bundle(cohort_bundle)
    from edgessl.edge_runtime.bundle.manifest import file_entry

    # Even with a matching checksum (a bundle built wrong, not tampered with), the width is checked.
    write_manifest(cohort_bundle, manifest.model_copy(update={
        "files": {**manifest.files, "cohort.npy": file_entry(cohort_bundle / "cohort.npy")}}))
    with pytest.raises(BundleError, match=r"cohort must be finite embeddings \(M, 16\)"):
        FeatureExtractor.from_bundle(load_bundle(cohort_bundle), threads=1)


def test_openset_reports_the_cohort_alone_and_leaves_half_the_support_to_enroll_from():
    rng = np.random.default_rng(4)
    centres = _unit(rng, 6)
    labels = np.repeat(np.arange(6), 40)
    feats = (centres[labels] + 0.8 * rng.standard_normal((len(labels), 16))).astype(np.float32)
    q_labels = np.repeat(np.arange(6), 20)
    queries = (centres[q_labels] + 0.8 * rng.standard_normal((len(q_labels), 16))).astype(np.float32)
    without = evaluate_openset(feats, labels, queries, q_labels, known=3, shot=5, splits=4, cohort=0)
    assert all(r.auroc_cohort == r.auroc_global for r in without)
    with_cohort = evaluate_openset(feats, labels, queries, q_labels, known=3, shot=5, splits=4, cohort=60)
    assert any(r.auroc_cohort != r.auroc_global for r in with_cohort)
    assert {r.cohort_size for r in with_cohort} == {60} and {r.cohort_size for r in without} == {0}
    # The cohort takes at most half of the support images: the rest is enrolled from.
    assert {r.cohort_size for r in evaluate_openset(feats, labels, queries, q_labels, known=3, shot=5, splits=1,
                                                    cohort=10_000)} == {len(feats) // 2}
    # Too few for a cohort: none, rather than one that is mostly noise.
    few = evaluate_openset(feats[::8], labels[::8], queries, q_labels, known=3, shot=2, splits=1, cohort=300)
    assert few[0].cohort_size == 0 and few[0].auroc_cohort == few[0].auroc_global
