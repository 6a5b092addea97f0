"""The sampler (which crops are worth sending to the server) and the drift monitor, on a real
sample store, with an injected clock: rate limits per hour and per day that survive a restart,
the least interval per region, near-duplicates refused whatever the reason, the reasons a crop
is kept (unknown, low margin, novel), a reset on a model change; a shifted distribution gives
one drift event, a new model starts a new reference."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from edgessl.edge_runtime.samples.config import DriftConfig, SamplingConfig
from edgessl.edge_runtime.samples.drift import DriftMonitor
from edgessl.edge_runtime.samples.sampler import Candidate, Sampler
from edgessl.edge_runtime.samples.store import SampleStore

T0 = 1_700_000_000.0
DIM = 32
CROP = np.full((40, 30, 3), 120, np.uint8)


def unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    x = rng.standard_normal((n or 1, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x if n else x[0]


def cand(emb: np.ndarray, t: float, *, ref: str = "full", label: str | None = "unknown",
         scores: tuple[float, ...] = (0.9, 0.1), model: str = "m1", camera: str = "cam",
         source: str = "region") -> Candidate:
    return Candidate(camera, source, ref, emb, ("cat", "dog")[:len(scores)], np.array(scores, np.float32), label,
                     model, t, crop=CROP)


@pytest.fixture
def store(tmp_path):
    with SampleStore(tmp_path / "samples.db", 10**8) as s:
        yield s


def test_rate_limits_per_hour_and_per_day_survive_a_restart(store):
    rng = np.random.default_rng(0)
    config = {"cam": SamplingConfig(per_hour=3, per_day=5, min_interval_s=0)}
    sampler = Sampler(store, config, now=T0)
    reasons = [sampler.offer(cand(unit(rng), T0 + i, ref=f"r{i}")).reason for i in range(4)]
    assert reasons == ["unknown", "unknown", "unknown", "rate_hour"]
    later = T0 + 3601  # the first hour is over
    reasons = [sampler.offer(cand(unit(rng), later + i, ref=f"s{i}")).reason for i in range(3)]
    assert reasons == ["unknown", "unknown", "rate_day"]
    assert sampler.kept_last("cam", 86_400, now=later + 3) == 5
    # A restart (a new sampler on the same store) counts what was kept, harvested ones included.
    store.delete_acked({s.id: s.sha256 for s in store.page(0, 100)})
    again = Sampler(store, config, now=later + 10)
    assert again.offer(cand(unit(rng), later + 10, ref="t")).reason == "rate_day"
    # A day after the first, there is room again.
    assert again.offer(cand(unit(rng), T0 + 86_401, ref="u")).reason == "unknown"


def test_least_interval_per_region_and_cameras_without_sampling(store):
    rng = np.random.default_rng(1)
    sampler = Sampler(store, {"cam": SamplingConfig(min_interval_s=2.0), "quiet": None,
                              "tracks-only": SamplingConfig(regions=False)})
    assert sampler.offer(cand(unit(rng), T0)).reason == "unknown"
    assert sampler.offer(cand(unit(rng), T0 + 1.0)).reason == "interval"  # the same region, too soon
    assert sampler.offer(cand(unit(rng), T0 + 1.0, ref="door")).reason == "unknown"  # another region
    assert sampler.offer(cand(unit(rng), T0 + 2.5)).reason == "unknown"
    assert sampler.offer(cand(unit(rng), T0, camera="quiet")).reason == "off"
    assert sampler.offer(cand(unit(rng), T0, camera="tracks-only")).reason == "off"
    assert sampler.offer(cand(unit(rng), T0, camera="tracks-only", source="track", ref="7")).kept


def test_the_reasons_and_near_duplicates(store):
    rng = np.random.default_rng(2)
    cfg = SamplingConfig(min_interval_s=0, novelty=0.35, duplicate=0.04, low_margin=0.05)
    sampler = Sampler(store, {"cam": cfg})
    exemplar = unit(rng)
    sampler.reset("m1", exemplar[None] * 3.0)  # gallery rows are normalised by the sampler
    first = unit(rng)
    kept = sampler.offer(cand(first, T0, label=None))
    assert kept.kept and kept.reason == "unknown" and kept.novelty > 0.35
    # Near copies of a kept sample or of a gallery exemplar: refused whatever the reason.
    near = first + 0.01 * unit(rng)
    assert sampler.offer(cand(near, T0 + 1, label="unknown")).reason == "duplicate"
    assert sampler.offer(cand(exemplar + 0.01 * unit(rng), T0 + 2, label="cat", scores=(0.5, 0.49))).reason \
        == "duplicate"
    # A class decided with a small margin between the two best classes.
    verdict = sampler.offer(cand(unit(rng), T0 + 3, label="cat", scores=(0.61, 0.58)))
    assert (verdict.kept, verdict.reason) == (True, "low_margin")
    # A confident decision: kept only when far from everything kept (novel) ...
    verdict = sampler.offer(cand(unit(rng), T0 + 4, label="cat", scores=(0.9, 0.2)))
    assert (verdict.kept, verdict.reason) == (True, "novel")
    # ... not when it is between a duplicate and novel.
    between = first + 0.5 * unit(rng)
    between /= np.linalg.norm(between)
    assert 0.04 < 1 - float(between @ first) < 0.35
    verdict = sampler.offer(cand(between, T0 + 5, label="cat", scores=(0.9, 0.2)))
    assert (verdict.kept, verdict.reason) == (False, "not_worth")
    # One class only: no margin; unknown is not kept when keep_unknown is off.
    strict = Sampler(store, {"cam": SamplingConfig(min_interval_s=0, keep_unknown=False, novelty=1.5,
                                                  duplicate=0.0)})
    assert strict.offer(cand(unit(rng), T0 + 6, label="unknown", scores=(0.3,))).reason == "not_worth"
    # What was kept is in the store: a decodable JPEG, its sha256, the figures.
    rows = store.page(0, 100)
    assert [r.reason for r in rows] == ["unknown", "low_margin", "novel"]
    low = rows[1]
    assert (low.label, low.nearest, low.score, low.margin) == ("cat", "cat", pytest.approx(0.61),
                                                               pytest.approx(0.03, abs=1e-6))
    assert rows[0].label is None and rows[0].source == "region" and rows[0].model == "m1"
    jpeg = store.jpeg(low.id)
    assert hashlib.sha256(jpeg).hexdigest() == low.sha256 and low.bytes == len(jpeg)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == CROP.shape


def test_a_new_model_compares_with_its_own_samples(store):
    rng = np.random.default_rng(3)
    sampler = Sampler(store, {"cam": SamplingConfig(min_interval_s=0)})
    e = unit(rng)
    assert sampler.offer(cand(e, T0, model="m1")).kept
    assert sampler.offer(cand(e, T0 + 1, model="m1")).reason == "duplicate"
    # Another model's embedding space: the same vector is not a copy of anything there.
    sampler.reset("m2", None)
    assert sampler.offer(cand(e, T0 + 2, model="m2")).kept
    # Back to m1 (a rollback): its kept samples come from the store.
    fresh = Sampler(store, {"cam": SamplingConfig(min_interval_s=0)})
    fresh.reset("m1", None)
    assert fresh.offer(cand(e, T0 + 3, model="m1")).reason == "duplicate"
    assert [r.model for r in store.page(0, 10)] == ["m1", "m2"]


def test_a_shifted_distribution_gives_one_drift_event_and_a_new_model_resets(tmp_path):
    rng = np.random.default_rng(4)
    config = DriftConfig(reference_crops=50, alpha=0.05, threshold=0.25, hysteresis=0.05)
    a, b = unit(rng), unit(rng)

    def crops(mean: np.ndarray, n: int) -> np.ndarray:
        x = mean + 0.4 * unit(rng, n)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    path = tmp_path / "drift.json"
    drift = DriftMonitor(path, config)
    drift.reset("m1")
    assert drift.update("cam", crops(a, 49)) is None and drift.score("cam") is None  # no reference yet
    assert drift.update("cam", crops(a, 1)) is None and drift.score("cam") == pytest.approx(0.0, abs=1e-6)
    events = [drift.update("cam", x[None], now=T0) for x in crops(a, 200)]
    assert not any(events) and drift.score("cam") < 0.1
    events = [e for x in crops(b, 200) if (e := drift.update("cam", x[None], now=T0))]
    assert len(events) == 1 and drift.score("cam") > 0.25
    assert events[0] == {"type": "drift", "camera": "cam", "score": events[0]["score"], "threshold": 0.25,
                         "model": "m1", "time": "2023-11-14T22:13:20.000Z"}
    assert events[0]["score"] >= 0.25
    # Back near the reference re-arms it; drifting again is a second event.
    assert not [e for x in crops(a, 300) if (e := drift.update("cam", x[None]))]
    assert drift.score("cam") < 0.2
    assert len([e for x in crops(b, 300) if (e := drift.update("cam", x[None]))]) == 1
    # A restart keeps the reference (and that the camera is in drift); a new model starts again.
    drift.save()
    again = DriftMonitor(path, config)
    again.reset("m1")
    assert again.status()["cam"]["ready"] and again.status()["cam"]["drift"]
    assert again.score("cam") == pytest.approx(drift.score("cam"), abs=1e-5)
    again.reset("m2")
    assert again.status() == {} and again.update("cam", crops(b, 10)) is None
    assert again.status()["cam"] == {"score": None, "reference_crops": 10, "ready": False, "drift": False}
    # Another camera has its own reference.
    assert drift.status().keys() == {"cam"}
