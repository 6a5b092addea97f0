"""The time-budget schedule: warmup + cosine on the share of the budget spent, so the lr stays
continuous and non-increasing after warmup however the machine's speed changes."""

import json
import math

import pytest

from edgessl.synthetic import write_image_set
from edgessl.train import pretrain as P
from edgessl.train.optim import warmup_cosine, warmup_cosine_progress


def test_progress_schedule_has_the_step_schedules_shape():
    assert warmup_cosine_progress(0.0, 0.1) == pytest.approx(1e-3)
    assert warmup_cosine_progress(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine_progress(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_progress(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_cosine_progress(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_progress(2.0, 0.1) == pytest.approx(0.0, abs=1e-12)  # past the budget: stays at 0
    # Same curve as the step schedule at the same fraction.
    assert warmup_cosine_progress(0.6, 0.0) == pytest.approx(warmup_cosine(60, 100, 0))
    ps = [i / 1000 for i in range(1001)]
    values = [warmup_cosine_progress(p, 0.1) for p in ps]
    assert all(b <= a + 1e-12 for a, b in zip(values[100:], values[101:], strict=False))
    assert max(abs(b - a) for a, b in zip(values, values[1:], strict=False)) < 0.011  # no jump anywhere


class SimulatedClock:
    """Time advances only when a training step runs, by a duration that depends on the step:
    normal, then three times slower (another job on the machine), then four times faster."""

    def __init__(self) -> None:
        self.now, self.calls = 1000.0, 0

    def __call__(self) -> float:
        return self.now

    def step_done(self) -> None:
        self.calls += 1
        self.now += 1.0 if self.calls <= 10 else 3.0 if self.calls <= 18 else 0.25


@pytest.fixture()
def images(tmp_path):
    write_image_set(tmp_path / "img", per_class=8, size=16, seed=0)
    return tmp_path / "img"


def test_time_budget_lr_is_continuous_and_non_increasing_under_changing_speed(images, tmp_path, monkeypatch):
    clock = SimulatedClock()
    monkeypatch.setattr(P, "_clock", clock)
    real_create = P.create_method

    def slow_method(*args, **kwargs):
        method = real_create(*args, **kwargs)
        step = method.training_step

        def timed(*a, **k):
            out = step(*a, **k)
            clock.step_done()
            return out

        method.training_step = timed  # type: ignore[method-assign]
        return method

    monkeypatch.setattr(P, "create_method", slow_method)
    cfg = P.PretrainConfig(data=str(images), out=str(tmp_path / "run"), image_size=16, batch_size=8, minutes=1.0,
                           warmup_fraction=0.1, lr=0.5, threads=1, tensorboard=False, checkpoint_every=1000,
                           precision="fp32")
    P.pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    base = 0.5 * 8 / 256
    lrs = [r["lr"] for r in rows]
    progress = [r["progress"] for r in rows]
    schedule_s = 60 * 0.97

    # The run spans the slow and the fast phase, and ends when the budget is spent.
    assert len(rows) > 40
    assert progress[-2] < 1 <= progress[-1]
    assert rows[-1]["elapsed_s"] == pytest.approx(schedule_s, abs=3.5)
    # Each step's lr is the schedule at the share of the budget spent before it.
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["lr"] == pytest.approx(base * warmup_cosine_progress(prev["progress"], 0.1), rel=1e-5)
    # Warmup rises; after it the lr never goes up, and no step changes it by more than the share of
    # the budget that step took (3 s of 58 s at the slowest) allows: pi/2 x 0.052 / 0.9 of the base lr
    # (a jump like the old refit's, 0.048 -> 0.0008 in one step, is 60 times that).
    after = [lr for lr, p in zip(lrs[1:], progress, strict=False) if p >= 0.1]
    during = [lr for lr, p in zip(lrs[1:], progress, strict=False) if p < 0.1]
    assert during == sorted(during) and len(during) >= 3
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))
    assert len(after) > 30
    assert max(a - b for a, b in zip(after, after[1:], strict=False)) <= base * math.pi / 2 * (3 / schedule_s) / 0.9
    assert max(b - a for a, b in zip(during, during[1:], strict=False)) <= base * (3 / schedule_s) / 0.1
    assert lrs[-1] < 0.01 * base
    # The bar's total is estimated at step 5, settled at step 20, and then left alone.
    estimates = {r["steps_estimate"] for r in rows if r["step"] >= 20}
    assert len(estimates) == 1
