import math

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
