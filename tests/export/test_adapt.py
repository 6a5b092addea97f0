"""`edgessl adapt`: SSL continued on harvested site shards (+ base images), distilled into the
deployed student, exported at version + 1 with the running bundle's formats; `--init-from`
really starts from the given weights."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.export.adapt import MIX_RATIO, AdaptError, adapt, deployed
from edgessl.export.bundle_writer import export_bundle
from edgessl.synthetic import write_image_set
from edgessl.train.checkpoint import backbone_state, load_checkpoint
from edgessl.train.pretrain import PretrainConfig, pretrain


def _shard(path: Path, images: list[Path]) -> None:
    """A harvest shard as `edgessl collect` writes it: <id>.jpg + <id>.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(images, 1):
            tar.add(image, arcname=f"{i:010d}.jpg")
            meta = json.dumps({"id": i, "camera": "door"}).encode()
            info = tarfile.TarInfo(f"{i:010d}.json")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A teacher, a student distilled from it, and the student's bundle v1 (onnx + onnx-int8)."""
    root = tmp_path_factory.mktemp("adapt")
    write_image_set(root / "base", per_class=12, size=24, seed=0)
    teacher = pretrain(PretrainConfig(data=str(root / "base"), out=str(root / "teacher"), image_size=16,
                                      batch_size=10, epochs=1, threads=1))
    student = pretrain(PretrainConfig(data=str(root / "base"), out=str(root / "student"), method="distill",
                                      image_size=16, batch_size=10, epochs=1, threads=1,
                                      method_options={"teacher": str(teacher)}))
    bundle = export_bundle(student, root / "v1", formats=["onnx", "onnx-int8"], calib=root / "base",
                           name="door-model", version=1)
    write_image_set(root / "site-images", per_class=10, size=40, seed=5)
    images = sorted((root / "site-images").rglob("*.png"))
    for i, image in enumerate(images):  # the harvest writes JPEGs
        import cv2

        cv2.imwrite(str(root / "site-images" / f"{i:04d}.jpg"), cv2.imread(str(image)))
    jpgs = sorted((root / "site-images").glob("*.jpg"))
    _shard(root / "harvest" / "door" / "samples" / "shard-000000.tar", jpgs[:36])
    for label, picks in (("rex", jpgs[36:40]), ("tom", jpgs[40:44])):
        (root / "harvest" / "door" / "eval" / label).mkdir(parents=True)
        for p in picks:
            (root / "harvest" / "door" / "eval" / label / p.name).write_bytes(p.read_bytes())
    return root, teacher, student, bundle


def test_adapt_a_distilled_student_gives_version_plus_one_with_the_same_formats(deployment, tmp_path):
    root, teacher, student, bundle = deployment
    dep = deployed(bundle)  # the bundle names its run; the run names its teacher
    assert dep.checkpoint == Path(student).resolve() and dep.teacher is not None and dep.version == 1
    result = adapt(bundle, root / "harvest", tmp_path / "adapt", minutes=0.15, mix=root / "base", threads=1)
    # MIX_RATIO base images per site sample, as many as the base folder has (60)
    mixed = min(60, round(36 * MIX_RATIO))
    assert (result.version, result.site_samples, result.mix_samples, result.eval_images) == (2, 36, mixed, 8)
    m = load_bundle(result.bundle).manifest
    old = load_bundle(bundle).manifest
    assert (m.model.name, m.model.version, m.model.backbone) == ("door-model", 2, old.model.backbone)
    assert sorted(a.name for a in m.artifacts) == sorted(a.name for a in old.artifacts)
    assert {a.input for a in m.artifacts} == {a.input for a in old.artifacts}
    # The teacher went on training on the site data, and the student was distilled from it.
    new_teacher = load_checkpoint(result.teacher)
    assert new_teacher["config"]["init_from"] == str(Path(teacher).resolve()) or \
        Path(new_teacher["config"]["init_from"]).resolve() == Path(teacher).resolve()
    assert "shard-000000.tar" in new_teacher["config"]["data"] and "mix-000000.tar" in new_teacher["config"]["data"]
    new_student = load_checkpoint(result.checkpoint)
    assert Path(new_student["config"]["method_options"]["teacher"]) == Path(result.teacher)
    assert Path(m.model.source) == Path(result.checkpoint).resolve()
    assert sorted(p.name for p in (Path(result.eval_dir)).iterdir()) == ["rex", "tom"]


def test_adapt_refuses_an_empty_harvest_and_a_bundle_without_its_run(deployment, tmp_path):
    root, _, _, bundle = deployment
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdaptError, match="no sample shards"):
        adapt(bundle, tmp_path / "empty", tmp_path / "out", minutes=0.1)
    with pytest.raises(AdaptError, match="pass --bundle"):
        deployed(root / "student")


def test_init_from_starts_from_the_given_weights(deployment, tmp_path):
    root, teacher, _, _ = deployment
    # A learning rate of ~0 for one step: the weights stay those of the checkpoint it started from.
    run = pretrain(PretrainConfig(data=str(root / "base"), out=str(tmp_path / "run"), image_size=16, batch_size=10,
                                  epochs=0.2, threads=1, lr=1e-12, init_from=str(teacher)))
    before, after = backbone_state(load_checkpoint(teacher)), backbone_state(load_checkpoint(run))
    weights = [k for k, v in before.items() if v.dtype.is_floating_point and "running" not in k]
    assert weights and all(torch.allclose(before[k], after[k], atol=1e-5) for k in weights)
    fresh = pretrain(PretrainConfig(data=str(root / "base"), out=str(tmp_path / "fresh"), image_size=16,
                                    batch_size=10, epochs=0.2, threads=1, lr=1e-12))
    other = backbone_state(load_checkpoint(fresh))
    assert not all(np.allclose(before[k].numpy(), other[k].numpy(), atol=1e-5) for k in weights)
