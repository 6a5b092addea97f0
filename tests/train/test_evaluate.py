import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgessl.synthetic import write_image_set
from edgessl.train.evaluate import knn_predict, linear_probe
from edgessl.train.pretrain import PretrainConfig, pretrain
from edgessl.train.report import pca_2d

CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def test_knn_matches_reference():
    rng = np.random.default_rng(0)
    train, labels, test = rng.normal(size=(12, 4)), rng.integers(0, 3, 12), rng.normal(size=(3, 4))
    k, t = 5, 0.1
    scores = knn_predict(train.astype(np.float32), labels, test.astype(np.float32), 3, k=k, temperature=t)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    for i, q in enumerate(test):
        sims = sorted(((float(unit(q) @ unit(x)), int(y)) for x, y in zip(train, labels, strict=True)),
                      reverse=True)[:k]
        ref = [sum(math.exp(s / t) for s, y in sims if y == c) for c in range(3)]
        assert scores[i] == pytest.approx(ref, rel=1e-4)


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 30)
    x = (centers[y] + rng.normal(size=(120, 16))).astype(np.float32)
    scores = linear_probe(x[::2], y[::2], x[1::2], 4)
    assert (scores.argmax(1) == y[1::2]).mean() > 0.95


def test_pca_projection_keeps_the_main_direction():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5)) * np.array([0.1, 0.1, 0.1, 0.1, 0.1])
    x[:100, 0] += 3
    xy = pca_2d(x + 5)
    assert xy.shape == (200, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    write_image_set(root / "train", per_class=8, size=24, seed=0)
    write_image_set(root / "test", per_class=6, size=24, seed=1)
    pretrain(PretrainConfig(data=str(root / "train"), out=str(root / "run"), image_size=16, batch_size=8, epochs=2,
                            threads=1, checkpoint_every=4, keep_checkpoints=3, tensorboard=False))
    return root


def eval_json(capsys, *args):
    from edgessl.cli import main

    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_knn_linear_fewshot_with_reports(run, capsys):
    rep = run / "report"
    r = eval_json(capsys, "knn", str(run / "run"), "--train", str(run / "train"), "--test", str(run / "test"),
                  "--report", str(rep))
    assert r["k"] == 200 and r["temperature"] == 0.1 and r["train"] == 40 and r["test"] == 30
    assert 0 <= r["top1"] <= 1 and r["top5"] is None  # 5 classes: top-5 is trivial, not reported
    assert list((run / "run" / "features").glob("features-*.npz"))  # cached per checkpoint
    r = eval_json(capsys, "linear", str(run / "run"), "--train", str(run / "train"), "--test", str(run / "test"))
    assert 0 <= r["top1"] <= 1
    r = eval_json(capsys, "fewshot", str(run / "run"), "--support", str(run / "train"), "--query",
                  str(run / "test"), "--way", "3", "--shot", "2", "--queries", "3", "--episodes", "20",
                  "--report", str(rep))
    assert r["way"] == 3 and 0 <= r["accuracy"] <= 1
    for name in ("loss.png", "embedding_pca.png", "knn_over_checkpoints.png", "fewshot_confusion.png",
                 "augmented_views.png"):
        png = rep / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_eval_random_weights_baseline(run, capsys):
    r = eval_json(capsys, "knn", str(run / "run"), "--train", str(run / "train"), "--test", str(run / "test"),
                  "--random-weights", "--k", "10")
    assert r["random_weights"] is True and r["k"] == 10


@pytest.mark.data
@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10 not present")
def test_knn_on_real_cifar_beats_chance_with_random_weights(run, capsys):
    r = eval_json(capsys, "knn", str(run / "run"), "--train", str(CIFAR / "train"), "--test", str(CIFAR / "test"),
                  "--per-class", "30", "--random-weights")
    assert r["train"] == 300 and r["top1"] > 0.12  # 10 classes: chance is 0.10


def test_eval_fewshot_heads_and_openset(run, capsys):
    r = eval_json(capsys, "fewshot", str(run / "run"), "--support", str(run / "train"), "--query",
                  str(run / "test"), "--way", "3", "--queries", "3", "--episodes", "6", "--head", "all",
                  "--shots", "2,5")
    got = {(x["shot"], x["head"]) for x in r["results"]}
    assert got == {(k, h) for k in (2, 5) for h in ("prototype", "fitted", "auto")}
    by = {(x["shot"], x["head"]): x["accuracy"] for x in r["results"]}
    assert by[(2, "auto")] == by[(2, "prototype")]  # below 10 shots auto is the prototype
    r = eval_json(capsys, "fewshot", str(run / "run"), "--support", str(run / "train"), "--query",
                  str(run / "test"), "--way", "3", "--shot", "3", "--queries", "3", "--episodes", "6",
                  "--head", "fitted")
    assert [x["head"] for x in r["results"]] == ["fitted"] and 0 <= r["results"][0]["accuracy"] <= 1

    r = eval_json(capsys, "openset", str(run / "run"), "--support", str(run / "train"), "--query",
                  str(run / "test"), "--known", "3", "--shot", "3", "--splits", "4")
    assert r["known"] == 3 and r["splits"] == 4 and r["queries"] == 30
    for name in ("auroc_global", "auroc_calibrated", "far95_global", "far95_calibrated", "tar_fixed",
                 "far_calibrated"):
        assert 0 <= r[name]["mean"] <= 1 and r[name]["ci95"] >= 0
    from edgessl.cli import main

    assert main(["eval", "openset", str(run / "run"), "--support", str(run / "train"), "--query",
                 str(run / "test"), "--known", "3", "--shot", "3", "--splits", "2"]) == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "FAR @ 95% TAR" in text and "calibrated" in text
