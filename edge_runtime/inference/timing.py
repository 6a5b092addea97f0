"""Speed and parity figures measured through the edge runtime's own backends.

Used by export (the report stored in the manifest) and by `edgessl bench BUNDLE` on a device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np

from edgessl.edge_runtime.bundle.manifest import PreprocessSpec, ReportRow
from edgessl.edge_runtime.inference.backends import Backend
from edgessl.edge_runtime.inference.preprocess import input_shape


def time_batches(backend: Backend, batch: np.ndarray, seconds: float = 1.0, warmup: int = 2,
                 min_runs: int = 5) -> float:
    """Median seconds per call of `backend.embed(batch)` after warm-up."""
    for _ in range(warmup):
        backend.embed(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        backend.embed(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_inputs(backend: Backend, spec: PreprocessSpec, n: int, seed: int = 0) -> np.ndarray:
    """A batch of `n` random images as the backend's model takes them (uint8 crops or floats)."""
    rng = np.random.default_rng(seed)
    kind = getattr(backend, "input_kind", "float32-nchw")
    shape = (n, *input_shape(kind, spec))
    if kind == "uint8-nhwc-bgr":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


def speed(backend: Backend, spec: PreprocessSpec, seconds: float = 1.0) -> tuple[float, float]:
    """(ms per image at batch 1, images per second at batch 8) on random inputs."""
    b1, b8 = random_inputs(backend, spec, 1), random_inputs(backend, spec, 8)
    return 1000 * time_batches(backend, b1, seconds), 8 / time_batches(backend, b8, seconds)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_report(rows: Sequence[ReportRow], title: str = "") -> str:
    """A fixed-width table like Ultralytics' benchmark output. "centred min" is the parity gate
    (lowest centred cosine to fp32 over the golden inputs); the raw cosines are for reference."""
    header = ("format", "status", "size MB", "centred min", "cos median", "cos p1", "5w5s %", "ms/img b1",
              "img/s b8", "in bundle")
    lines = [[r.name, r.status, _fmt(None if r.size_bytes is None else r.size_bytes / 1e6, ".2f"),
              _fmt(r.centred_min, ".4f"), _fmt(r.cosine_median, ".5f"), _fmt(r.cosine_p1, ".5f"),
              _fmt(None if r.fewshot is None else 100 * r.fewshot, ".2f"),
              _fmt(r.latency_ms_b1, ".2f"), _fmt(r.throughput_b8, ".0f"), "yes" if r.in_bundle else "no"]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)] if lines else \
        [len(h) for h in header]
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    notes = [f"  {r.name}: {r.reason}" for r in rows if r.reason]
    return "\n".join(out + (["notes:", *notes] if notes else []))
