"""The site gate of the closed loop: real exported bundles, real ONNX Runtime sessions, a small
labelled evaluation set rendered here.

The evaluation set's classes differ by colour: the objects' colours are permutations of one
RGB triple, so every class has the same brightness and only a model that sees colour tells
them apart. The deliberately worse candidate is the trained model made colour-blind (its first
convolution sees only the sum of the channels, as a model adapted with grey-only views might):
a real checkpoint, a real export, at chance on this set."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgessl.edge_runtime.bundle.manifest import (
    GateReport,
    Manifest,
    file_entry,
    load_bundle,
    read_manifest,
    write_manifest,
)
from edgessl.edge_runtime.fewshot.prototypes import center_normalize, class_prototypes, nearest
from edgessl.errors import EdgesslError
from edgessl.export.bundle_writer import export_bundle
from edgessl.export.site_gate import (
    EvalSetError,
    gate,
    leave_one_out,
    load_eval_set,
    main,
    site_eval,
    wilson_interval,
    write_gate,
)
from edgessl.synthetic import CLASSES, paint

# RGB permutations of one triple: equal channel sums, different colours.
COLOURS = {"orange": (230, 120, 30), "rose": (230, 30, 120), "lime": (120, 230, 30), "teal": (30, 230, 120),
           "violet": (120, 30, 230)}
PER_CLASS = 6
SIZE = 24


def write_eval_set(root: Path, per_class: int = PER_CLASS, seed: int = 3) -> Path:
    """root/<colour>/NNNN.jpg: shapes of every kind, turned and placed at random, one colour per class."""
    rng = np.random.default_rng(seed)
    for label, rgb in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            canvas = np.clip(128 + rng.integers(-6, 7, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            centre = (SIZE / 2 + rng.uniform(-2, 2), SIZE / 2 + rng.uniform(-2, 2))
            paint(canvas, CLASSES[int(rng.integers(len(CLASSES)))], centre, SIZE * rng.uniform(0.28, 0.36),
                  rng.uniform(0, 2 * np.pi), np.array(rgb[::-1], np.int64))
            cv2.imwrite(str(root / label / f"{i:04d}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    return write_eval_set(tmp_path_factory.mktemp("site-eval") / "eval")


@pytest.fixture(scope="module")
def running(checkpoint, tmp_path_factory) -> Path:
    """The model the site runs: the package's briefly trained checkpoint, version 1."""
    return export_bundle(checkpoint, tmp_path_factory.mktemp("running") / "b", name="site", version=1, threads=1)


@pytest.fixture(scope="module")
def colour_blind(checkpoint, tmp_path_factory) -> Path:
    """The same checkpoint with a first convolution that sees only R+G+B, exported as version 2.

    The graph computes conv(W, (x_c - mean_c) / std_c); with W[:, c] = A * std_c that is
    conv(A, sum_c x_c) minus a constant, so two images whose colours are permutations of each
    other look alike to it."""
    import torch

    from edgessl.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    std = torch.tensor(ckpt["preprocess"]["std"]).view(1, 3, 1, 1)
    state = dict(ckpt["method_state"])
    w = state["backbone.stem.0.weight"]
    state["backbone.stem.0.weight"] = (w / std).mean(dim=1, keepdim=True) * std
    folder = tmp_path_factory.mktemp("colour-blind")
    path = save_checkpoint(folder / "blind.pt", {**{k: v for k, v in ckpt.items() if k != "format"},
                                                 "method_state": state})
    return export_bundle(path, folder / "b", name="site", version=2, threads=1)


def relabel(src: Path, dst: Path, **model: object) -> Path:
    """A copy of bundle `src` whose manifest says another model name/version."""
    shutil.copytree(src, dst)
    m = read_manifest(dst)
    write_manifest(dst, m.model_copy(update={"model": m.model.model_copy(update=model)}))
    return dst


# --- leave-one-out, on known embeddings ----------------------------------------------------

def reference_loo(emb: np.ndarray, labels: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward: per image, prototypes from everything else with the device's code."""
    predicted, margins = [], []
    for i in range(len(emb)):
        keep = np.arange(len(emb)) != i
        classes, protos = class_prototypes(emb[keep], labels[keep], center)
        q = center_normalize(emb[i:i + 1], center)
        idx, _ = nearest(q, protos)
        scores = (q @ protos.T)[0]
        own = scores[classes == labels[i]][0]
        predicted.append(classes[idx[0]])
        margins.append(own - scores[classes != labels[i]].max())
    return np.array(predicted), np.array(margins)


def test_leave_one_out_matches_a_straightforward_reference():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 8)) * 0.8
    labels = np.repeat([0, 1, 2], [4, 3, 5])
    emb = (means[labels] + rng.normal(size=(len(labels), 8))).astype(np.float32)
    center = rng.normal(size=8).astype(np.float32) * 0.3
    result = leave_one_out(emb, labels, center)
    predicted, margins = reference_loo(emb, labels, center)
    np.testing.assert_array_equal(result.predicted, predicted)
    np.testing.assert_allclose(result.margin, margins, atol=1e-5)
    assert 0 < result.correct.mean() < 1  # a case with both hits and misses
    per_class = [(predicted[labels == c] == c).mean() for c in range(3)]
    np.testing.assert_allclose(result.class_accuracy(), per_class)


def test_leaving_the_image_out_is_what_makes_an_outlier_a_miss():
    # Class 0: two points at +x, one at -x; class 1 at -x. The -x point of class 0 is nearest to
    # class 1 once it no longer pulls its own prototype (with it, the prototype would still be +x,
    # but an image must not vote for itself).
    emb = np.array([[1, 0.1], [1, -0.1], [-1, 0.05], [-1, 0.0], [-1, 0.1]], np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    result = leave_one_out(emb, labels)
    assert result.correct.tolist() == [True, True, False, True, True]
    assert result.margin[2] < 0 < result.margin[0]


def test_leave_one_out_refuses_a_class_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out(np.eye(3, dtype=np.float32), np.array([0, 0, 1]))


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)  # the textbook example
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- the gate on real bundles --------------------------------------------------------------

def test_a_model_against_itself_at_the_next_version_passes(running, eval_dir, tmp_path):
    candidate = relabel(running, tmp_path / "v2", version=2)
    report = gate(candidate, running, eval_dir, margin=0.0, threads=1)
    assert report.verdict == "pass", report.reasons
    assert report.reasons == [] and report.candidate == "site v2" and report.running == "site v1"
    assert report.before is not None and report.after is not None
    assert report.after.accuracy == report.before.accuracy
    # The set is meaningful: the running model tells the colours apart well above chance (20%).
    assert report.before.accuracy >= 0.8, report.before
    lo, hi = report.before.ci95
    assert lo < report.before.accuracy <= hi
    assert [c.label for c in report.classes] == sorted(COLOURS) and all(c.n == PER_CLASS for c in report.classes)
    assert report.images == len(COLOURS) * PER_CLASS
    assert [c.ok for c in report.parity] == [True] and all(c.ok for c in report.health)


def test_site_eval_embeds_as_the_device_does(running, eval_dir):
    from edgessl.edge_runtime.inference.extractor import FeatureExtractor
    from edgessl.edge_runtime.inference.preprocess import read_image

    result = site_eval(running, eval_dir, threads=1)
    files = sorted(eval_dir.glob("*/*.jpg"))
    labels = np.array([sorted(COLOURS).index(f.parent.name) for f in files])
    with FeatureExtractor.from_bundle(load_bundle(running), threads=1) as ex:
        emb = ex.embed([read_image(f) for f in files])
    expected = leave_one_out(emb, labels, np.load(running / "center.npy"))
    assert result.accuracy == pytest.approx(expected.correct.mean())
    assert result.margin == pytest.approx(expected.margin.mean(), abs=1e-5)
    assert result.artifact == "onnx" and result.backend == "onnxruntime"
    assert result.counts == dict.fromkeys(sorted(COLOURS), PER_CLASS)


def test_a_worse_candidate_is_refused_stored_and_shown_by_bench(running, colour_blind, eval_dir, tmp_path,
                                                                capsys, caplog):
    from edgessl.cli import main as edgessl
    from edgessl.devices.keys import generate_keypair, sign_bundle

    candidate = tmp_path / "candidate"
    shutil.copytree(colour_blind, candidate)
    report = gate(candidate, running, eval_dir, threads=1)
    assert report.verdict == "refused"
    assert report.after is not None and report.before is not None
    assert report.after.accuracy < report.before.accuracy - 0.3, (report.before, report.after)
    assert len(report.reasons) == 1 and report.reasons[0].startswith("accuracy dropped on the site's evaluation set")
    # Everything else about it is fine: this is a refusal on accuracy alone.
    assert all(c.ok for c in report.parity) and all(c.ok for c in report.health)

    # Stored in the manifest before signing: a stale signature goes, with a warning.
    sign_bundle(candidate, generate_keypair(tmp_path / "keys", "k").private)
    with caplog.at_level(logging.WARNING, logger="edgessl.export.site_gate"):
        write_gate(candidate, report)
    assert not (candidate / "manifest.sig").exists()
    assert any("sign the bundle again" in r.getMessage() for r in caplog.records)
    assert load_bundle(candidate).manifest.gate == report

    capsys.readouterr()
    assert edgessl(["bench", str(candidate), "--seconds", "0.05", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "site gate: site v2 (after) vs site v1 (before)" in printed
    assert "verdict: REFUSED" in printed and "accuracy dropped" in printed
    for label in COLOURS:
        assert any(line.startswith(label) for line in printed.splitlines())
    assert edgessl(["bench", str(candidate), "--stored-only", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert GateReport.model_validate(data["gate"]) == report


def test_the_debugging_command_exits_1_on_a_refusal(running, colour_blind, eval_dir, capsys):
    assert main([str(colour_blind), str(running), str(eval_dir), "--threads", "1", "--json"]) == 1
    assert GateReport.model_validate_json(capsys.readouterr().out).verdict == "refused"
    assert main([str(colour_blind), str(running), str(eval_dir / "nowhere")]) == 2
    assert "evaluation set not found" in capsys.readouterr().err


def test_a_margin_can_accept_a_small_drop(running, colour_blind, eval_dir):
    report = gate(colour_blind, running, eval_dir, margin=0.99, threads=1)
    assert report.verdict == "pass", report.reasons
    with pytest.raises(EdgesslError, match="margin is an accuracy fraction"):
        gate(colour_blind, running, eval_dir, margin=2.0)


def test_a_candidate_with_a_failed_parity_artifact_is_refused(running, eval_dir, tmp_path):
    candidate = relabel(running, tmp_path / "v2", version=2)
    m = read_manifest(candidate)
    rows = [r.model_copy(update={"status": "failed-parity", "reason": "min centred cosine 0.9 < 0.999"})
            for r in m.report]
    write_manifest(candidate, m.model_copy(update={"report": rows}))  # as `export --keep-failed` ships it
    report = gate(candidate, running, eval_dir, threads=1)
    assert report.verdict == "refused"
    assert report.reasons == ["artifact onnx did not pass parity (failed-parity; centred min 1.0000; "
                              "min centred cosine 0.9 < 0.999)"]
    assert [c.ok for c in report.parity] == [False]


def test_a_candidate_that_fails_its_health_check_is_refused(running, eval_dir, tmp_path):
    candidate = relabel(running, tmp_path / "v2", version=2)
    golden = dict(np.load(candidate / "golden.npz"))
    np.savez(candidate / "golden.npz", inputs=golden["inputs"], embeddings=-golden["embeddings"])
    m = read_manifest(candidate)
    write_manifest(candidate, m.model_copy(update={"files": {**m.files,
                                                             "golden.npz": file_entry(candidate / "golden.npz")}}))
    report = gate(candidate, running, eval_dir, threads=1)
    assert report.verdict == "refused"
    assert len(report.reasons) == 1 and report.reasons[0].startswith("health check failed for gate-server")
    assert "golden embeddings do not match" in report.reasons[0]


@pytest.mark.parametrize(("update", "why"), [
    ({"version": 1}, "not higher than the running version 1"),
    ({"name": "other", "version": 2}, "a candidate must be the same model"),
])
def test_a_candidate_must_be_the_same_model_at_a_higher_version(running, eval_dir, tmp_path, update, why):
    report = gate(relabel(running, tmp_path / "c", **update), running, eval_dir, threads=1)
    assert report.verdict == "refused"
    assert len(report.reasons) == 1 and why in report.reasons[0]


def test_a_lower_version_is_refused(running, eval_dir, tmp_path):
    newer = relabel(running, tmp_path / "v3", version=3)
    report = gate(running, newer, eval_dir, threads=1)
    assert report.verdict == "refused" and "version 1 is not higher than the running version 3" in report.reasons[0]


def test_an_invalid_candidate_bundle_is_refused_not_raised(running, eval_dir, tmp_path):
    candidate = relabel(running, tmp_path / "v2", version=2)
    (candidate / "center.npy").write_bytes(b"tampered")
    report = gate(candidate, running, eval_dir, threads=1)
    assert report.verdict == "refused" and report.after is None
    assert "the candidate bundle is not valid" in report.reasons[0] and "center.npy" in report.reasons[0]


# --- the evaluation set --------------------------------------------------------------------

def test_a_class_of_one_image_is_skipped_with_a_note(running, eval_dir, tmp_path):
    site = tmp_path / "eval"
    shutil.copytree(eval_dir, site)
    (site / "lonely").mkdir()
    shutil.copy(site / "teal" / "0000.jpg", site / "lonely" / "0000.jpg")
    (site / "lime" / "broken.jpg").write_bytes(b"not an image")
    result = site_eval(running, site, threads=1)
    assert "lonely" not in result.classes and result.images == len(COLOURS) * PER_CLASS
    assert any("class 'lonely' skipped: 1 image(s)" in note for note in result.notes)
    assert any("unreadable image skipped" in note and "broken.jpg" in note for note in result.notes)
    report = gate(relabel(running, tmp_path / "v2", version=2), running, site, threads=1)
    assert report.verdict == "pass" and any("lonely" in note for note in report.notes)


def test_too_few_images_to_judge_is_a_refusal(running, eval_dir, tmp_path):
    report = gate(relabel(running, tmp_path / "v2", version=2), running, eval_dir, min_images=100, threads=1)
    assert report.verdict == "refused"
    assert report.reasons == [f"the site's evaluation set has only {len(COLOURS) * PER_CLASS} usable images, "
                              "fewer than 100: too few to judge; enroll more examples"]


def test_a_missing_or_empty_evaluation_set_is_a_clear_error(running, tmp_path):
    with pytest.raises(EvalSetError, match="evaluation set not found"):
        load_eval_set(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalSetError, match="needs at least 2 classes"):
        site_eval(running, tmp_path / "empty")
    one = write_eval_set(tmp_path / "one", per_class=3)
    for folder in list(one.iterdir())[1:]:
        shutil.rmtree(folder)
    with pytest.raises(EvalSetError, match="usable: "):
        gate(running, running, one)
    assert issubclass(EvalSetError, EdgesslError)


def test_a_manifest_without_a_gate_report_still_loads(running):
    data = json.loads((running / "manifest.json").read_text())
    data.pop("gate", None)
    assert Manifest.model_validate(data).gate is None


def test_the_sites_device_profile_chooses_the_artifact_and_the_health_check(running, eval_dir, tmp_path):
    profile = tmp_path / "site-box.toml"
    profile.write_text('name = "site-box"\ndescription = "test"\narch = "x86_64"\nbackends = ["onnxruntime"]\n'
                       'precisions = ["fp32"]\ninput_size = [16, 16]\nlatency_budget_ms = 500.0\n'
                       'memory_budget_mb = 4096\n')
    report = gate(relabel(running, tmp_path / "v2", version=2), running, eval_dir, profile=profile, threads=1)
    assert report.verdict == "pass", report.reasons
    assert [c.name for c in report.health] == ["site-box"] and report.health[0].ok
    assert report.after is not None and report.after.artifact == "onnx"
    with pytest.raises(EdgesslError, match="unknown device profile"):
        gate(running, running, eval_dir, profile="no-such-box")
