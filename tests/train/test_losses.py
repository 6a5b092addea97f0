import math

import pytest
import torch
import torch.nn.functional as F

from edgessl.train.losses import nt_xent


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR paper's definition, one anchor at a time."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / (2 * n)


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    for t in (0.1, 0.5):
        assert math.isclose(nt_xent(z1, z2, t).item(), nt_xent_reference(z1, z2, t), rel_tol=1e-5)


def test_nt_xent_prefers_matching_views():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g)) < nt_xent(z, torch.randn(8, 16, generator=g))


def test_few_steps_lower_the_simclr_loss():
    from edgessl.train.backbones import create_backbone
    from edgessl.train.methods import create_method
    from edgessl.train.views import ViewConfig

    torch.manual_seed(0)
    method = create_method("simclr", create_backbone("resnet_tiny"), ViewConfig(size=16))
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)

    def loss_at(seed: int) -> torch.Tensor:
        return method.training_step(images, torch.Generator().manual_seed(seed))

    before = loss_at(123).item()
    for step in range(15):
        opt.zero_grad()
        loss_at(step).backward()
        opt.step()
    assert loss_at(123).item() < before


# ---------------------------------------------------------------- the other losses, each against loops

def _normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_infonce_matches_reference():
    from edgessl.train.losses import infonce

    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    t = 0.2
    qn, kn = _normalized(q), _normalized(k)
    ref = 0.0
    for i in range(5):
        denom = sum(math.exp(float(qn[i] @ kn[j]) / t) for j in range(5))
        ref += -math.log(math.exp(float(qn[i] @ kn[i]) / t) / denom)
    assert math.isclose(infonce(q, k, t).item(), ref / 5 * 2 * t, rel_tol=1e-5)


def test_byol_loss_matches_reference():
    from edgessl.train.losses import byol_loss

    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    ref = sum(2 - 2 * float(_normalized(p[i]) @ _normalized(z[i])) for i in range(4)) / 4
    assert math.isclose(byol_loss(p, z).item(), ref, rel_tol=1e-5)
    assert byol_loss(z, z).item() < 1e-6


def test_dino_loss_matches_reference():
    from edgessl.train.losses import dino_loss, dino_teacher_probs

    g = torch.Generator().manual_seed(4)
    student = [torch.randn(3, 5, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [torch.randn(3, 5, generator=g) for _ in range(2)]
    center, ts, tt = torch.randn(1, 5, generator=g), 0.1, 0.04
    probs = [dino_teacher_probs(t, center, tt) for t in teacher]
    for t, p in zip(teacher, probs, strict=True):  # centred, sharpened softmax
        for n in range(3):
            e = [math.exp((float(t[n, k]) - float(center[0, k])) / tt) for k in range(5)]
            assert [v / sum(e) for v in e] == pytest.approx(p[n].tolist(), abs=1e-5)
    ref, pairs = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i == j:
                continue
            for n in range(3):
                e = [math.exp(float(student[j][n, k]) / ts) for k in range(5)]
                ref += -sum(float(probs[i][n, k]) * math.log(e[k] / sum(e)) for k in range(5)) / 3
            pairs += 1
    assert math.isclose(dino_loss(student, probs, ts).item(), ref / pairs, rel_tol=1e-5)


def sinkhorn_reference(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn (single process), written with explicit loops."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / eps) for i in range(b)] for j in range(k)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / cols[i] / b for i in range(b)] for j in range(k)]
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)])


def test_sinkhorn_matches_reference_and_equipartitions():
    from edgessl.train.losses import sinkhorn_knopp

    g = torch.Generator().manual_seed(5)
    scores = _normalized(torch.randn(6, 4, generator=g)) * 0.9
    codes = sinkhorn_knopp(scores, epsilon=0.3, iterations=3)
    assert torch.allclose(codes, sinkhorn_reference(scores, 0.3, 3), atol=1e-5)
    assert torch.allclose(codes.sum(1), torch.ones(6), atol=1e-5)  # each sample: a distribution
    many = sinkhorn_knopp(scores, epsilon=0.3, iterations=50)
    assert torch.allclose(many.sum(0), torch.full((4,), 6 / 4), atol=1e-3)  # equal-sized clusters


def test_swav_loss_matches_reference():
    from edgessl.train.losses import swav_loss

    g = torch.Generator().manual_seed(6)
    scores = [torch.randn(3, 4, generator=g) for _ in range(3)]
    codes = [torch.softmax(torch.randn(3, 4, generator=g), 1) for _ in range(2)]
    t, ref, pairs = 0.1, 0.0, 0
    for i in range(2):
        for j in range(3):
            if i == j:
                continue
            for n in range(3):
                e = [math.exp(float(scores[j][n, k]) / t) for k in range(4)]
                ref += -sum(float(codes[i][n, k]) * math.log(e[k] / sum(e)) for k in range(4)) / 3
            pairs += 1
    assert math.isclose(swav_loss(scores, codes, t).item(), ref / pairs, rel_tol=1e-5)


def test_masked_mse_matches_reference():
    from edgessl.train.losses import masked_mse

    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float32)
    for norm_pix in (False, True):
        errs = []
        for n in range(2):
            for i in range(5):
                if mask[n, i]:
                    t = target[n, i]
                    if norm_pix:
                        t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                    errs.append(float(((pred[n, i] - t) ** 2).mean()))
        assert math.isclose(masked_mse(pred, target, mask, norm_pix).item(), sum(errs) / len(errs), rel_tol=1e-5)


def test_infomax_jsd_matches_reference():
    from edgessl.train.losses import infomax_jsd

    g = torch.Generator().manual_seed(8)
    glob, local = torch.randn(3, 4, generator=g), torch.randn(3, 4, 5, generator=g)
    pos, neg = [], []
    for i in range(3):
        for j in range(3):
            for p in range(5):
                s = float(glob[i] @ local[j, :, p])
                (pos if i == j else neg).append(s)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    ref = sum(softplus(-s) for s in pos) / len(pos) + sum(softplus(s) for s in neg) / len(neg)
    assert math.isclose(infomax_jsd(glob, local).item(), ref, rel_tol=1e-5)


def test_temporal_infonce_matches_reference():
    from edgessl.train.losses import temporal_infonce

    g = torch.Generator().manual_seed(9)
    z = torch.randn(3, 4, 6, generator=g)  # 3 clips of 4 frames
    t, window = 0.3, 1
    f = _normalized(z)
    terms = []
    for n in range(3):
        for a in range(4):
            negs = [math.exp(float(f[n, a] @ f[m, b]) / t) for m in range(3) if m != n for b in range(4)]
            for p in range(4):
                if 0 < abs(a - p) <= window:
                    pos = math.exp(float(f[n, a] @ f[n, p]) / t)
                    terms.append(-math.log(pos / (pos + sum(negs))))
    assert math.isclose(temporal_infonce(z, t, window).item(), sum(terms) / len(terms), rel_tol=1e-5)


def test_cpc_infonce_matches_reference():
    from edgessl.train.losses import cpc_infonce

    g = torch.Generator().manual_seed(10)
    pred, tgt = torch.randn(3, 2, 2, 5, generator=g), torch.randn(3, 2, 2, 5, generator=g)
    terms = []
    for s in range(2):
        for k in range(2):
            for n in range(3):
                e = [math.exp(float(pred[n, s, k] @ tgt[m, s, k])) for m in range(3)]
                terms.append(-math.log(e[n] / sum(e)))
    assert math.isclose(cpc_infonce(pred, tgt).item(), sum(terms) / len(terms), rel_tol=1e-5)


def test_rotation_patchify_and_chroma_helpers():
    from edgessl.train.methods.colorization import luma_chroma
    from edgessl.train.methods.mae import patchify
    from edgessl.train.methods.rotation import rotate

    x = torch.rand(4, 3, 6, 6)
    turns = torch.tensor([0, 1, 2, 3])
    out = rotate(x, turns)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(1, 2)))
    p = patchify(x, 3)  # (4, 4 patches, 27)
    assert p.shape == (4, 4, 27)
    assert torch.equal(p[1, 2].reshape(3, 3, 3), x[1, :, 3:6, 0:3].permute(1, 2, 0))  # row 1, col 0
    y, iq = luma_chroma(x)
    r, g_, b = x[2, :, 1, 4].tolist()
    assert y[2, 0, 1, 4].item() == pytest.approx(0.299 * r + 0.587 * g_ + 0.114 * b, abs=1e-6)
    assert iq[2, :, 1, 4].tolist() == pytest.approx([0.596 * r - 0.274 * g_ - 0.322 * b,
                                                     0.211 * r - 0.523 * g_ + 0.312 * b], abs=1e-6)
