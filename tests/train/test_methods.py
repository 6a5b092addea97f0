import pytest
import torch

from edgessl.train import methods as M
from edgessl.train.backbones import create_backbone
from edgessl.train.methods import Method, create_method, method_class, method_names
from edgessl.train.rng import BatchGenerator
from edgessl.train.views import MultiCropViews, ViewConfig, ViewGenerator

SIZE = 16


def tiny_backbone(method: str) -> torch.nn.Module:
    if method == "mae":  # MAE needs a ViT; two blocks keep it quick
        return create_backbone("vit_tiny", patch_size=4, img_size=SIZE, depth=2)
    return create_backbone("resnet_tiny")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained resnet_tiny checkpoint: enough of a teacher for `distill`."""
    from edgessl.train.checkpoint import save_checkpoint
    from edgessl.train.views import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(1)
    state = {f"backbone.{k}": v for k, v in create_backbone("resnet_tiny").state_dict().items()}
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_checkpoint(path, {"config": {"backbone": "resnet_tiny", "seed": 1}, "method_state": state,
                                  "preprocess": {"input_size": [SIZE, SIZE], "mean": list(IMAGENET_MEAN),
                                                 "std": list(IMAGENET_STD)},
                                  "center": torch.zeros(256)})


def options_for(name: str, teacher) -> dict:
    if name == "dino":  # its targets move by design (EMA teacher, running centre): hold them still here
        return {"momentum": 1.0, "center_momentum": 1.0}
    if name == "distill":
        return {"teacher": str(teacher)}
    return {}


def tiny_batch(method: Method, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (n, method.clip_length, 3, SIZE, SIZE) if method.input == "clips" else (n, 3, SIZE, SIZE)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", method_names())
def test_few_steps_lower_the_loss(name, teacher):
    torch.manual_seed(0)
    method = create_method(name, tiny_backbone(name), ViewConfig(size=SIZE), **options_for(name, teacher))
    batch = tiny_batch(method)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        return method.training_step(batch, torch.Generator().manual_seed(123))

    before = loss().item()
    for step in range(5):
        opt.zero_grad()
        value = loss()
        assert torch.isfinite(value)
        value.backward()
        opt.step()
        method.on_step_end((step + 1) / 5)
    assert loss().item() < before


def test_registry_entries_are_methods_and_one_line_adds_one(monkeypatch):
    for name in method_names():
        cls = method_class(name)
        assert issubclass(cls, Method) and cls.input in ("images", "clips")
    assert {method_class(n).input for n in ("temporal", "cpc")} == {"clips"}
    monkeypatch.setitem(M.METHODS, "simclr_copy", "edgessl.train.methods.simclr:SimCLR")
    m = create_method("simclr_copy", create_backbone("resnet_tiny"), ViewConfig(size=SIZE))
    assert torch.isfinite(m(tiny_batch(m), torch.Generator().manual_seed(0)))  # forward() runs the step


def test_unknown_method_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="simclr"):
        create_method("nope", create_backbone("resnet_tiny"), ViewConfig())
    with pytest.raises(ValueError, match="temperature"):
        create_method("simclr", create_backbone("resnet_tiny"), ViewConfig(), temprature=0.1)


def test_mae_needs_a_vit():
    with pytest.raises(ValueError, match="dae"):
        create_method("mae", create_backbone("resnet_tiny"), ViewConfig(size=SIZE))


def test_ema_and_momentum_schedule():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    M.ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, expected)
    assert M.momentum_at(0.99, 0.0) == pytest.approx(0.99)
    assert M.momentum_at(0.99, 1.0) == pytest.approx(1.0)
    assert M.frozen_copy(a).weight.requires_grad is False


def test_views_do_not_depend_on_how_the_batch_is_split():
    """Rows of a global batch get the same augmentation in one piece or in parts (DDP, accumulation)."""
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    for gen in (ViewGenerator(ViewConfig(size=SIZE)), MultiCropViews(ViewConfig(size=SIZE), n_local=2)):
        whole = gen(images, BatchGenerator(7, 0, 6, 6))
        parts = [gen(images[s:s + 3], BatchGenerator(7, s, 3, 6)) for s in (0, 3)]
        for v, view in enumerate(whole):
            assert torch.allclose(view, torch.cat([parts[0][v], parts[1][v]]), atol=1e-6)
    assert torch.equal(ViewGenerator(ViewConfig(size=SIZE))(images, BatchGenerator(7, 0, 6, 6))[0],
                       ViewGenerator(ViewConfig(size=SIZE))(images, torch.Generator().manual_seed(7))[0])


def test_distill_can_start_from_the_teachers_weights(teacher):
    # Same architecture: the student starts as the teacher, so the cosine term starts at zero.
    torch.manual_seed(5)
    method = create_method("distill", create_backbone("resnet_tiny"), ViewConfig(size=SIZE), teacher=str(teacher),
                           relation_weight=0.0, init_from_teacher=True)
    method.eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        t = torch.nn.functional.normalize(method.teacher(x) - method.teacher_center, dim=1)
        s = torch.nn.functional.normalize(method.project(method.backbone(x)), dim=1)
    assert torch.allclose((s * t).sum(1), torch.ones(4), atol=1e-5)
    # Without it, a fresh student does not point where the teacher does.
    fresh = create_method("distill", create_backbone("resnet_tiny"), ViewConfig(size=SIZE), teacher=str(teacher))
    with torch.no_grad():
        s = torch.nn.functional.normalize(fresh.eval().project(fresh.backbone(x)), dim=1)
    assert (s * t).sum(1).mean() < 0.9
    # Another architecture is a clear error.
    with pytest.raises(ValueError, match="teacher's architecture"):
        create_method("distill", create_backbone("mobilenetv3_small"), ViewConfig(size=SIZE), teacher=str(teacher),
                      init_from_teacher=True)


def test_distill_cli_passes_init_from_teacher(monkeypatch):
    import argparse

    from edgessl.train import cli as pretrain_cli
    from edgessl.train import distill_cli

    seen = {}
    monkeypatch.setattr(pretrain_cli, "run", lambda args: seen.update(dict(args.method_opt)) or 0)
    p = argparse.ArgumentParser()
    distill_cli.add_arguments(p)
    for flags, expected in (([], False), (["--init-from-teacher"], True)):
        args = p.parse_args(["--teacher", "t.pt", "--student", "resnet_tiny", "--data", "d", "--out", "o", *flags])
        assert distill_cli.run(args) == 0
        assert seen["init_from_teacher"] is expected and seen["teacher"] == "t.pt"


def test_simclr_multi_crop_pairs_every_small_crop_with_both_large_views():
    from edgessl.train.losses import nt_xent

    torch.manual_seed(0)
    method = create_method("simclr", create_backbone("resnet_tiny"), ViewConfig(size=SIZE), n_local=2)
    batch = tiny_batch(method)
    loss = method.training_step(batch, torch.Generator().manual_seed(5))
    # The same views again, from the same generator state, paired by hand: 1 + 2 x 2 pairs, equal weights.
    g = torch.Generator().manual_seed(5)
    v1, v2 = method.views(batch, g)
    small = method.local_views(batch, g)
    assert [v.shape[-1] for v in small] == [SIZE // 2] * 2
    z1, z2 = method.head(method.backbone(torch.cat([v1, v2]))).chunk(2)
    zl = method.head(method.backbone(torch.cat(small))).chunk(2)
    pairs = [nt_xent(z1, z2, 0.2)] + [nt_xent(a, b, 0.2) for a in zl for b in (z1, z2)]
    assert torch.allclose(loss, sum(pairs) / 5, atol=1e-5)

    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    before = loss.item()
    for _ in range(5):
        opt.zero_grad()
        method.training_step(batch, torch.Generator().manual_seed(5)).backward()
        opt.step()
    assert method.training_step(batch, torch.Generator().manual_seed(5)).item() < before
    with pytest.raises(ValueError, match="n_local"):
        create_method("simclr", create_backbone("resnet_tiny"), ViewConfig(size=SIZE), n_local=-1)
