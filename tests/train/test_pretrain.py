import json
import math
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



def test_views_smaller_than_the_input_size_train_at_their_size_and_ship_the_input_size(images, tmp_path):
    from edgessl.train.config import resolve_config

    cfg = PretrainConfig(data=str(images), out=str(tmp_path / "small"), image_size=16, view_size=12,
                         batch_size=8, epochs=1, threads=1)
    assert cfg.views().size == 12
    ckpt = load_checkpoint(pretrain(cfg))
    # The device feeds the model image_size, the centring vector is taken there, the views were smaller.
    assert ckpt["preprocess"]["input_size"] == [16, 16] and ckpt["samples"].shape[1:] == (3, 16, 16)
    info = json.loads((tmp_path / "small" / "run_info.json").read_text())
    same = PretrainConfig(data=str(images), out=str(tmp_path / "same"), image_size=16, view_size=16, batch_size=8,
                          epochs=1, threads=1)
    pretrain(same)
    # Fewer pixels per view, fewer FLOPs per step (counted by torch on the real step).
    assert info["gflop_per_sample_step"] < json.loads((tmp_path / "same" / "run_info.json").read_text())[
        "gflop_per_sample_step"]
    # SimCLR's recipe trains views at 3/4 of the input size unless told otherwise; other methods at the input size.
    assert resolve_config(PretrainConfig(data="d", out="o", image_size=32)).view_size == 24
    assert resolve_config(PretrainConfig(data="d", out="o", image_size=32, view_size=32)).view_size == 32
    assert resolve_config(PretrainConfig(data="d", out="o", image_size=32, method="vicreg")).view_size is None
    with pytest.raises(ValueError, match="larger than image_size"):
        PretrainConfig(data=str(images), out="x", image_size=16, view_size=20)
    with pytest.raises(ValueError, match="fixed input size"):
        resolve_config(PretrainConfig(data=str(images), out="x", backbone="vit_tiny", image_size=16, view_size=12))

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


# ---------------------------------------------------------------- data kinds, loop features

def tiny(images, out, **kw):
    base = dict(data=str(images), out=str(out), image_size=16, batch_size=8, epochs=1, threads=1,
                tensorboard=False)
    return PretrainConfig(**{**base, **kw})


def test_clip_method_trains_on_videos(tmp_path):
    from edgessl.synthetic import write_video

    (tmp_path / "videos").mkdir()
    for i in range(2):
        write_video(tmp_path / "videos" / f"v{i}.mp4", seconds_per_class=0.8, fps=10, size=32, seed=i)
    cfg = tiny(tmp_path / "videos", tmp_path / "run", method="temporal", batch_size=4,
               method_options={"clip_length": 3}, video_stride=2)
    ckpt = load_checkpoint(pretrain(cfg))
    assert ckpt["step"] == 3  # 2 videos x 20 frames / stride 2 = 2 x 3 clips of 3, batches of 4 clips
    assert ckpt["center"].shape == (256,) and ckpt["samples"].shape[1:] == (3, 16, 16)


def test_image_method_trains_on_video_frames(tmp_path):
    from edgessl.synthetic import write_video

    write_video(tmp_path / "v.mp4", seconds_per_class=0.8, fps=10, size=32, seed=0)
    ckpt = load_checkpoint(pretrain(tiny(tmp_path / "v.mp4", tmp_path / "run", method="rotation", epochs=0.5)))
    assert ckpt["step"] == 2  # 40 frames // 8 = 5 steps per epoch


def test_shards_train_and_resume_exactly(images, tmp_path):
    from edgessl.train.shards import write_shards

    write_shards(sorted(images.rglob("*.png")), str(tmp_path / "shards" / "s-{}.tar"), per_shard=16)
    cfg = tiny(tmp_path / "shards" / "s-{000000..000002}.tar", tmp_path / "full", epochs=2,
               checkpoint_every=1, keep_checkpoints=10)
    pretrain(cfg)
    full = losses(tmp_path / "full")
    assert sorted(full) == list(range(1, 11))
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_00000007.pt",
                tmp_path / "resumed" / "checkpoints" / "last.pt")
    pretrain(cfg.model_copy(update={"out": str(tmp_path / "resumed")}), resume=True)
    resumed = losses(tmp_path / "resumed")
    assert sorted(resumed) == [8, 9, 10]
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5)


def test_gradient_accumulation_matches_one_batch(images, tmp_path):
    """MAE on a ViT: a per-sample loss and no BatchNorm, so 2 micro-batches of 4 are 1 batch of 8."""
    vit = {"depth": 1, "patch_size": 4}
    # fp32: under bf16 autocast (--precision auto on a CPU with native bf16) the two orders of
    # summation round differently, by more than this comparison allows.
    one = tiny(images, tmp_path / "one", method="mae", backbone="vit_tiny", backbone_options=vit, epochs=0.6,
               precision="fp32")
    two = one.model_copy(update={"out": str(tmp_path / "two"), "accumulate": 2})
    pretrain(one)
    pretrain(two)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    # The checkpoint records the resolved backbone options, so export rebuilds the same ViT.
    from edgessl.train.checkpoint import load_backbone

    ckpt = load_checkpoint(tmp_path / "two")
    assert ckpt["config"]["backbone_options"] == {"depth": 1, "patch_size": 4, "img_size": 16}
    assert ckpt["config"]["optimizer"] == "adamw"  # the method's default
    assert load_backbone(ckpt)(torch.zeros(1, 3, 16, 16)).shape == (1, 192)


def test_bf16_tensorboard_and_config_next_to_checkpoints(images, tmp_path):
    cfg = tiny(images, tmp_path / "run", method="rotation", precision="bf16", tensorboard=True,
               method_options={"hidden_dim": 32}, epochs=0.4, checkpoint_every=100, checkpoint_minutes=1e-6,
               keep_checkpoints=5)
    pretrain(cfg)
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "checkpoints" / "config.json").read_text())["precision"] == "bf16"
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 2  # by the clock, every step
    assert all(math.isfinite(v) for v in losses(run).values())


def test_fp16_needs_cuda_and_temperature_needs_a_method_that_has_one(images, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16"):
            pretrain(tiny(images, tmp_path / "a", precision="fp16", device="cpu"))
    with pytest.raises(ValueError, match="no temperature"):
        pretrain(tiny(images, tmp_path / "b", method="byol", temperature=0.1))


def test_pretrain_command_flags(images, tmp_path, capsys):
    from edgessl.cli import main

    rc = main(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--method", "byol",
               "--method-opt", "momentum=0.9", "--method-opt", "hidden_dim=64", "--backbone-opt", "small_stem=true",
               "--image-size", "16", "--batch-size", "8", "--epochs", "0.2", "--threads", "1", "--no-tensorboard",
               "--accumulate", "2", "--precision", "bf16", "--keep-checkpoints", "0"])
    assert rc == 0 and "checkpoint:" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["method_options"] == {"momentum": 0.9, "hidden_dim": 64}
    assert cfg["backbone_options"] == {"small_stem": True}
    assert (cfg["optimizer"], cfg["lr"], cfg["accumulate"], cfg["tensorboard"]) == ("lars", 1.0, 2, False)
