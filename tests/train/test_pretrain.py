import json
import shutil

import pytest
import torch

from edgessl.synthetic import write_image_set
from edgessl.train.checkpoint import load_checkpoint
from edgessl.train.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_image_set(root, per_class=8, size=24, seed=0)
    (root / "circle" / "broken.jpg").write_bytes(b"not a jpeg")  # reported and skipped, not fatal
    return root


def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


def test_pretrain_writes_a_checkpoint_export_can_use(images, tmp_path):
    cfg = PretrainConfig(data=str(images), out=str(tmp_path / "run"), image_size=16, batch_size=8,
                         epochs=1, checkpoint_every=2, threads=1)
    path = pretrain(cfg)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 5  # 40 readable images // 8, the broken file skipped
    assert ckpt["center"].shape == (256,) and torch.isfinite(ckpt["center"]).all()
    assert ckpt["samples"].dtype == torch.uint8 and ckpt["samples"].shape[1:] == (3, 16, 16)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 8
    assert len(losses(tmp_path / "run")) == 5


def test_resume_continues_exactly(images, tmp_path):
    cfg = PretrainConfig(data=str(images), out=str(tmp_path / "full"), image_size=16, batch_size=8,
                         epochs=2, checkpoint_every=3, keep_checkpoints=5, threads=1)
    pretrain(cfg)
    full = losses(tmp_path / "full")
    # A second run that starts from the step-3 checkpoint of the first.
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_00000003.pt",
                tmp_path / "resumed" / "checkpoints" / "last.pt")
    pretrain(cfg.model_copy(update={"out": str(tmp_path / "resumed")}), resume=True)
    resumed = losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(4, 11))
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5)


def test_too_few_images_is_a_clear_error(images, tmp_path):
    cfg = PretrainConfig(data=str(images), out=str(tmp_path / "r"), batch_size=1000, epochs=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pretrain(cfg)
