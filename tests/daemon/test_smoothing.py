"""Smoothing over time: EMA of scores, hysteresis and N-in-a-row keep labels from flickering."""

from __future__ import annotations

import pytest

from edgessl.edge_runtime.daemon.smoothing import Smoother
from edgessl.edge_runtime.fewshot.labels import UNKNOWN

RED = {"red": 0.9, "blue": 0.1}
BLUE = {"red": 0.1, "blue": 0.9}


def labels(smoother: Smoother, frames: list[dict[str, float]]) -> list[str | None]:
    return [smoother.update(f).label for f in frames]


def test_flickering_input_does_not_flicker_the_output():
    s = Smoother(threshold=0.5, alpha=0.5, hysteresis=0.05, consecutive=3)
    out = labels(s, [RED] * 5 + [RED, BLUE] * 20)
    assert out[:2] == [None, None]  # nothing settled before 3 frames agree
    assert set(out[2:]) == {"red"}  # the alternation never settles on blue


def test_a_real_change_is_followed_after_n_frames_with_one_event():
    s = Smoother(threshold=0.5, alpha=1.0, hysteresis=0.0, consecutive=3)
    decisions = [s.update(f) for f in [RED] * 4 + [BLUE] * 4]
    assert [d.label for d in decisions] == [None, None, "red", "red", "red", "red", "blue", "blue"]
    changes = [(d.previous, d.label) for d in decisions if d.changed]
    assert changes == [(None, "red"), ("red", "blue")]


def test_single_outliers_are_ignored():
    s = Smoother(threshold=0.5, alpha=1.0, hysteresis=0.0, consecutive=2)
    out = labels(s, [RED, RED, BLUE, RED, BLUE, RED, RED])
    assert out == [None, "red", "red", "red", "red", "red", "red"]


def test_ema_needs_a_sustained_change():
    # With consecutive=1 the EMA alone holds: one strong blue frame after many red ones is not enough.
    s = Smoother(threshold=0.5, alpha=0.3, hysteresis=0.0, consecutive=1)
    labels(s, [RED] * 10)
    assert s.update(BLUE).label == "red"
    assert labels(s, [BLUE] * 5)[-1] == "blue"


def test_hysteresis_band_around_the_threshold():
    s = Smoother(threshold=0.5, alpha=1.0, hysteresis=0.1, consecutive=1)
    assert s.update({"red": 0.55}).label == "red"  # enters at >= threshold
    assert s.update({"red": 0.45}).label == "red"  # stays above threshold - hysteresis
    assert s.update({"red": 0.52}).label == "red"
    assert s.update({"red": 0.39}).label == UNKNOWN  # leaves below threshold - hysteresis
    assert s.update({"red": 0.45}).label == UNKNOWN  # comes back only at >= threshold
    assert s.update({"red": 0.50}).label == "red"


def test_hysteresis_between_classes():
    s = Smoother(threshold=0.3, alpha=1.0, hysteresis=0.1, consecutive=1)
    assert s.update({"red": 0.8, "blue": 0.5}).label == "red"
    assert s.update({"red": 0.7, "blue": 0.75}).label == "red"  # blue ahead by less than the margin
    assert s.update({"red": 0.6, "blue": 0.75}).label == "blue"  # ahead by more


def test_forgotten_class_and_reset():
    s = Smoother(threshold=0.5, alpha=0.5, hysteresis=0.0, consecutive=1)
    assert s.update(RED).label == "red"
    d = s.update({"blue": 0.9})  # red was forgotten: it has no score any more
    assert (d.label, d.changed, d.previous) == ("blue", True, "red")
    s.reset()
    assert s.ema == {}
    assert s.update({}).label == UNKNOWN  # no classes at all


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"consecutive": 0}, {"hysteresis": -0.1}])
def test_parameters_are_checked(kwargs):
    with pytest.raises(ValueError):
        Smoother(threshold=0.5, **kwargs)
