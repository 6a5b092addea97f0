"""VICReg and Barlow Twins: losses against element-by-element references, collapse is penalised,
and a trained backbone exports to ONNX like the others."""

import math

import numpy as np
import pytest
import torch

from edgessl.train.losses import barlow_twins_loss, vicreg_loss


def vicreg_reference(z1: torch.Tensor, z2: torch.Tensor, s: float, v: float, c: float, eps: float = 1e-4) -> float:
    """The paper's definitions, one dimension and one pair of dimensions at a time."""
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])
    inv = sum((a[i][k] - b[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def column(x, k):
        return [x[i][k] for i in range(n)]

    def cov(x, j, k):
        xj, xk = column(x, j), column(x, k)
        mj, mk = sum(xj) / n, sum(xk) / n
        return sum((xj[i] - mj) * (xk[i] - mk) for i in range(n)) / (n - 1)

    var = 0.0
    for x in (a, b):
        var += sum(max(0.0, 1 - math.sqrt(cov(x, k, k) + eps)) for k in range(d)) / d / 2
    covariance = sum(cov(x, j, k) ** 2 for x in (a, b) for j in range(d) for k in range(d) if j != k) / d
    return s * inv + v * var + c * covariance


def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lam: float) -> float:
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])

    def standardised(x, k):
        col = [x[i][k] for i in range(n)]
        m = sum(col) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in col) / n)
        return [(v - m) / sd for v in col]

    sa = [standardised(a, k) for k in range(d)]
    sb = [standardised(b, k) for k in range(d)]
    total = 0.0
    for j in range(d):
        for k in range(d):
            c = sum(sa[j][i] * sb[k][i] for i in range(n)) / n
            total += (1 - c) ** 2 if j == k else lam * c ** 2
    return total


def test_vicreg_loss_matches_reference():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(7, 5, generator=g) * 0.7, torch.randn(7, 5, generator=g) * 1.3
    for weights in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        assert math.isclose(vicreg_loss(z1, z2, *weights).item(), vicreg_reference(z1, z2, *weights), rel_tol=1e-5)


def test_barlow_loss_matches_reference():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    for lam in (5e-3, 0.5):
        assert math.isclose(barlow_twins_loss(z1, z2, lam).item(), barlow_reference(z1, z2, lam), rel_tol=1e-5)


def test_collapse_costs_more_than_matching_spread_out_views():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(32, 8, generator=g) * 2
    good = z + 0.01 * torch.randn(32, 8, generator=g)
    collapsed = torch.ones(32, 8) + 1e-3 * torch.randn(32, 8, generator=g)
    assert vicreg_loss(z, good) < vicreg_loss(collapsed, collapsed.clone())
    assert barlow_twins_loss(z, good) < barlow_twins_loss(z, torch.randn(32, 8, generator=g))


@pytest.mark.parametrize("method", ["vicreg", "barlow"])
def test_trained_backbone_exports_to_onnx(method, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from edgessl.export.onnx_export import export_onnx
    from edgessl.synthetic import write_image_set
    from edgessl.train.checkpoint import load_backbone, load_checkpoint
    from edgessl.train.pretrain import PretrainConfig, pretrain

    write_image_set(tmp_path / "img", per_class=4, size=16, seed=0)
    ckpt = load_checkpoint(pretrain(PretrainConfig(
        data=str(tmp_path / "img"), out=str(tmp_path / "run"), method=method, image_size=16, batch_size=8,
        epochs=1, threads=1, tensorboard=False, method_options={"hidden_dim": 64, "out_dim": 64})))
    assert ckpt["config"]["method"] == method and ckpt["step"] == 2
    backbone = load_backbone(ckpt)
    path = export_onnx(backbone, tmp_path / "model.onnx", (16, 16))
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = backbone(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 256) and np.allclose(got, want, atol=1e-4)
