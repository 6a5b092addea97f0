"""Self-supervised losses, each checked against a plain reference computation in the tests.

They take whole-batch tensors; under DDP the methods pass tensors gathered from all
processes (see `distributed`), so a loss never needs to know about processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent: for each of the 2N views, the other view of the same image is the
    positive among the 2N-1 others (cross-entropy over cosine similarities / temperature)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def infonce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives (MoCo v3): query i's positive is key i, the other keys are
    negatives. Scaled by 2 * temperature as in MoCo v3 (keeps the gradient scale independent of it)."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = q @ k.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device)) * 2 * temperature


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: 2 - 2 cos(prediction, target projection), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1)).mean()


def dino_teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's teacher targets: centred (against collapse to one dimension) and sharpened
    (low temperature, against collapse to uniform)."""
    return F.softmax((teacher_logits.float() - center) / temperature, dim=-1)


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor],
              student_temperature: float) -> torch.Tensor:
    """Cross-entropy between each teacher view (global crops) and every student view of a
    different crop, averaged over those pairs and the batch."""
    total, pairs = torch.zeros((), device=student_logits[0].device), 0
    log_p = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student_logits]
    for i, t in enumerate(teacher_probs):
        for j, lp in enumerate(log_p):
            if i == j:
                continue
            total = total + (-t * lp).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """SwAV's equipartitioned soft assignment of B samples to K prototypes: (B, K) codes whose
    rows sum to 1 and whose columns each hold B/K of the mass. `all_reduce` sums over
    processes, so the B samples are those of the global batch."""
    reduce = all_reduce or (lambda x: x)
    q = torch.exp(scores.float() / epsilon).T  # (K, B); scores are cosines, so exp stays finite
    k, b_local = q.shape
    b = reduce(torch.tensor(float(b_local), device=q.device))
    q = q / reduce(q.sum())
    for _ in range(iterations):
        q = q / reduce(q.sum(dim=1, keepdim=True)) / k  # each prototype gets 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample gets 1/B
    return (q * b).T


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Swapped prediction: the codes of view i are predicted from the prototype scores of every
    other view j (cross-entropy of softmax(scores_j / temperature)), averaged over pairs."""
    total, pairs = torch.zeros((), device=scores[0].device), 0
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    for i, q in enumerate(codes):
        for j, lp in enumerate(log_p):
            if i == j:
                continue
            total = total + (-q * lp).sum(dim=1).mean()
            pairs += 1
    return total / pairs


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               norm_pix: bool = True) -> torch.Tensor:
    """MAE: mean squared error over masked patches only. pred/target (N, L, P), mask (N, L) with
    1 = masked. `norm_pix` normalises each target patch by its own mean and std."""
    target = target.float()
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def infomax_jsd(global_feats: torch.Tensor, local_feats: torch.Tensor) -> torch.Tensor:
    """Deep InfoMax (Hjelm et al. 2019), Jensen-Shannon estimator between an image's global
    vector (N, D) and its own local features (N, D, P) (positives) versus the local features of
    other images (negatives): E_pos[softplus(-s)] + E_neg[softplus(s)], s = dot product."""
    n = global_feats.shape[0]
    scores = torch.einsum("nd,mdp->nmp", global_feats.float(), local_feats.float())  # (N, N, P)
    pos = torch.eye(n, device=scores.device, dtype=torch.bool)
    e_pos = F.softplus(-scores[pos]).mean()
    e_neg = F.softplus(scores[~pos]).mean()
    return e_pos + e_neg


def temporal_infonce(z: torch.Tensor, temperature: float, window: int = 1) -> torch.Tensor:
    """Time-contrastive loss on clips z (N, T, D): for frame t of clip n, each frame t' of the same
    clip with 0 < |t - t'| <= window is a positive; frames of other clips are the negatives (same-
    clip frames further away are left out). One InfoNCE term per (anchor, positive) pair."""
    n, t, _ = z.shape
    f = F.normalize(z.float().reshape(n * t, -1), dim=1)
    sim = f @ f.T / temperature
    clip = torch.arange(n, device=z.device).repeat_interleave(t)
    time = torch.arange(t, device=z.device).repeat(n)
    same = clip[:, None] == clip[None, :]
    dt = (time[:, None] - time[None, :]).abs()
    positive = same & (dt > 0) & (dt <= window)
    negative = ~same
    neg_lse = torch.logsumexp(sim.masked_fill(~negative, float("-inf")), dim=1)  # (NT,)
    a, p = positive.nonzero(as_tuple=True)
    s = sim[a, p]
    # -log( e^s / (e^s + sum_neg e^s_neg) )
    return (torch.logaddexp(s, neg_lse[a]) - s).mean()


def cpc_infonce(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Contrastive predictive coding: predictions (N, S, K, D) of the embeddings k+1 steps after
    context step s, targets (N, S, K, D) the true future embeddings. For each (s, k) the positive
    of clip n is its own future; the futures of the other clips at the same step are negatives."""
    n, s, k, _ = predictions.shape
    pred = predictions.float().permute(1, 2, 0, 3)  # (S, K, N, D)
    tgt = targets.float().permute(1, 2, 3, 0)  # (S, K, D, N)
    logits = (pred @ tgt).reshape(s * k * n, n)  # rows: (s, k, query clip), columns: candidate clip
    labels = torch.arange(n, device=predictions.device).repeat(s * k)
    return F.cross_entropy(logits, labels)


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m - torch.diag_embed(torch.diagonal(m))


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al. 2022): invariance (MSE between the views' embeddings), variance (a hinge
    keeping each dimension's batch std above 1, against collapse) and covariance (off-diagonal
    covariances pushed to 0, against redundant dimensions), as in the paper's code."""
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    z1c, z2c = z1 - z1.mean(0), z2 - z2.mean(0)
    variance = (F.relu(1 - torch.sqrt(z1c.var(0) + eps)).mean() + F.relu(1 - torch.sqrt(z2c.var(0) + eps)).mean()) / 2
    cov1, cov2 = z1c.T @ z1c / (n - 1), z2c.T @ z2c / (n - 1)
    covariance = _off_diagonal(cov1).pow(2).sum() / d + _off_diagonal(cov2).pow(2).sum() / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' embeddings,
    each standardised over the batch, is pushed to the identity: diagonal to 1 (invariance),
    off-diagonal to 0 (redundancy reduction), weighted by `lambda_offdiag`."""
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).clamp_min(1e-6)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).clamp_min(1e-6)
    c = a.T @ b / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = _off_diagonal(c).pow(2).sum()
    return on + lambda_offdiag * off
