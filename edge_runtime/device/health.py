"""The health check of an installed bundle, run in its own process before a slot goes live.

    python -m edgessl.edge_runtime.device.health BUNDLE_DIR --profile NAME_OR_TOML [--json]

It verifies the file hashes, takes the artifact that `device.selection` chooses for the
profile (or the one named with --artifact: the installer tries the candidates in turn), loads the
model (a TensorRT backend builds its engine here, at flash time), embeds the golden inputs
and checks: no NaN/inf, centred cosine to the golden fp32 embeddings at least the profile's
threshold for that precision, median latency per image within the profile's budget, and
peak resident memory within its memory budget. A separate process, because a broken model
may crash or hang the runtime: the installer survives that and rolls back.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.device.profiles import DeviceProfile, resolve_profile
from edgessl.edge_runtime.device.selection import choose
from edgessl.edge_runtime.inference.backends import load_backend
from edgessl.edge_runtime.inference.parity import golden_agreement, passes
from edgessl.edge_runtime.inference.preprocess import check_model_inputs
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

LATENCY_RUNS = 5  # timed batch-of-1 runs (after one warm-up) for the median latency


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    reason: str  # what failed, or a one-line summary when ok
    backend: str | None = None
    precision: str | None = None
    artifact: str | None = None  # the artifact's file
    label: str | None = None  # the artifact's name, e.g. onnx-int8
    min_cosine: float | None = None  # lowest cosine to the golden embeddings over the golden inputs
    threshold: float | None = None
    latency_ms: float | None = None  # median per image, batch of 1
    latency_budget_ms: float | None = None
    peak_rss_mb: float | None = None  # None when measured in-process (meaningless there)
    memory_budget_mb: int | None = None
    skipped: tuple[str, ...] = field(default=())  # why preferred backends/precisions were not used

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HealthReport:
        data: dict[str, Any] = json.loads(text)
        data["skipped"] = tuple(data.get("skipped", ()))
        return cls(**data)


class HealthError(EdgesslError):
    """The bundle cannot run on this device, or runs badly."""


def _fail(reason: str, **known: Any) -> HealthReport:
    return HealthReport(ok=False, reason=reason, **known)


def check_bundle(bundle_dir: str | Path, profile: DeviceProfile, *, measure_memory: bool = False,
                 artifact_label: str | None = None) -> HealthReport:
    """Run the health check in this process and return its report (model problems are
    reported, not raised). `measure_memory` only makes sense in a process of its own.
    `artifact_label`: check this artifact (one of the profile's candidates) instead of the first."""
    try:
        bundle = load_bundle(bundle_dir)
        plan = choose(bundle.manifest, profile)
        if artifact_label is not None and plan.artifact.label != artifact_label:
            others = [a.label for a in bundle.manifest.artifacts if a.label != artifact_label]
            plan = choose(bundle.manifest, profile, exclude=others)
    except EdgesslError as exc:
        return _fail(str(exc))
    manifest = bundle.manifest
    backend_name, artifact = plan.backend, plan.artifact
    threshold = profile.min_cosine.for_precision(artifact.precision)
    known: dict[str, Any] = dict(backend=backend_name, precision=artifact.precision, artifact=artifact.file,
                                 label=artifact.label, threshold=threshold,
                                 latency_budget_ms=profile.latency_budget_ms,
                                 memory_budget_mb=profile.memory_budget_mb, skipped=plan.skipped)
    try:
        golden = np.load(bundle.path(manifest.golden), allow_pickle=False)
        inputs = np.asarray(golden["inputs"])
        expected = np.asarray(golden["embeddings"], np.float32)
        center = np.load(bundle.path(manifest.center), allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        return _fail(f"cannot read the golden set or centre vector: {exc}", **known)
    dim = manifest.embedding_dim
    wrong = check_model_inputs(inputs, manifest.preprocess, artifact.input)
    if wrong is not None or expected.shape != (len(inputs), dim):
        return _fail(f"golden set: {wrong or f'embeddings are {expected.shape}, expected ({len(inputs)}, {dim})'}",
                     **known)
    if center.shape != (dim,):
        return _fail(f"centre vector has shape {center.shape}; expected ({dim},)", **known)

    try:
        model = load_backend(backend_name, bundle.path(artifact.file), threads=plan.threads, **plan.options)
        try:
            batched = model.embed(inputs)
            single = [model.embed(inputs[i:i + 1]) for i in range(len(inputs))]
            times = []
            for run in range(LATENCY_RUNS + 1):
                x = inputs[run % len(inputs)][None]
                start = time.perf_counter()
                model.embed(x)
                if run:  # the first run is a warm-up
                    times.append((time.perf_counter() - start) * 1000)
        finally:
            model.close()
    except EdgesslError as exc:
        return _fail(f"{backend_name} cannot run the model: {exc}", **known)
    except Exception as exc:  # a runtime's own exception types (bad model, out of memory, ...)
        return _fail(f"{backend_name} failed while running the model: {type(exc).__name__}: {exc}", **known)

    outputs = [batched, np.concatenate(single)]
    if any(o.shape != expected.shape for o in outputs):
        return _fail(f"model outputs embeddings of shape {batched.shape}; the manifest says ({len(inputs)}, {dim})",
                     **known)
    if not all(np.isfinite(o).all() for o in outputs):
        return _fail("model produced NaN or infinite embeddings on the golden inputs", **known)
    # The one parity definition (inference/parity.py): lowest centred cosine over the golden set.
    min_cos = min(golden_agreement(expected, o, center) for o in outputs)
    latency = float(np.median(times))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if measure_memory else None  # KiB on Linux
    known.update(min_cosine=min_cos, latency_ms=latency, peak_rss_mb=peak)
    if not passes(min_cos, threshold):
        return _fail(f"golden embeddings do not match: min cosine {min_cos:.4f} < {threshold} "
                     f"({artifact.precision} threshold) with {backend_name}", **known)
    if latency > profile.latency_budget_ms:
        return _fail(f"too slow: {latency:.1f} ms per image > budget {profile.latency_budget_ms} ms "
                     f"({profile.name}, {backend_name}/{artifact.precision})", **known)
    if peak is not None and peak > profile.memory_budget_mb:
        return _fail(f"too much memory: peak {peak:.0f} MiB > budget {profile.memory_budget_mb} MiB", **known)
    summary = (f"{backend_name}/{artifact.precision}: min cosine {min_cos:.4f} >= {threshold}, "
               f"{latency:.2f} ms/image <= {profile.latency_budget_ms} ms"
               + (f", peak {peak:.0f} MiB <= {profile.memory_budget_mb} MiB" if peak is not None else ""))
    return HealthReport(ok=True, reason=summary, **known)


def run_health_check(bundle_dir: str | Path, profile: str | Path, timeout_s: float,
                     artifact_label: str | None = None) -> HealthReport:
    """Run the health check in a child process (this module's `main`) and return its report.
    A crash, a hang past `timeout_s` or garbage output is a failed check, never an exception."""
    # Isolated (-I: neither the working folder nor PYTHON* variables nor the user's site packages
    # on the import path) and run from an empty folder: nothing but installed code is imported,
    # whatever folder the operator flashed from.
    cmd = [sys.executable, "-I", "-m", "edgessl.edge_runtime.device.health", str(Path(bundle_dir).resolve()),
           "--profile", str(Path(profile).resolve()) if Path(profile).exists() else str(profile), "--json",
           *(["--artifact", artifact_label] if artifact_label else [])]
    with tempfile.TemporaryDirectory(prefix="edgessl-health-") as empty:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=empty)
        except subprocess.TimeoutExpired:
            return _fail(f"health check did not finish within {timeout_s:g} s (killed)")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return _fail(f"health check process died from {name} (the model crashed the runtime?)")
    lines = proc.stdout.strip().splitlines()
    try:
        return HealthReport.from_json(lines[-1])
    except (IndexError, ValueError, TypeError):
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return _fail(f"health check exited with status {proc.returncode}: {tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgessl.edge_runtime.device.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="bundle directory (e.g. a device slot)")
    parser.add_argument("--profile", required=True, help="device profile: a built-in name or a .toml file")
    parser.add_argument("--artifact", default=None, metavar="LABEL",
                        help="check this artifact (e.g. onnx-int8) instead of the profile's first choice")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        profile, _ = resolve_profile(args.profile)
        report = check_bundle(args.bundle, profile, measure_memory=True, artifact_label=args.artifact)
    except EdgesslError as exc:
        report = _fail(str(exc))
    except Exception as exc:  # report anything else too: the installer shows the reason
        report = _fail(f"unexpected error in the health check: {type(exc).__name__}: {exc}")
    print(report.to_json() if args.json else ("ok: " if report.ok else "FAILED: ") + report.reason, flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
