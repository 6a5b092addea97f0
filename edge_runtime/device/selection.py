"""What runs on this device: one decision for backend, artifact, precision, threads and options.

Every place that has to know what a bundle runs as on a device asks `candidates` or `choose`:
export (the manifest's default artifact per profile), the health check, `edgessl device
status`, the daemon and `edgessl classify --root`. The order of preference:

1. an explicit choice (the daemon's `model.backend` / `model.precision`, a CLI flag) wins;
2. else, for each backend of the profile in its order that is installed here: the artifact
   export chose for this profile (manifest `defaults`, the fastest one that passed this
   profile's parity threshold where export measured it), then that backend's other artifacts
   in the profile's precision order;
3. with no profile (a plain bundle folder): ONNX Runtime on the fp32 ONNX model.

The installer health-checks the candidates in this order and records the first that passes
in the device state; the daemon then runs exactly that one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgessl.edge_runtime.bundle.manifest import Artifact, Manifest
from edgessl.edge_runtime.device.profiles import DeviceProfile
from edgessl.edge_runtime.inference.backends import BACKENDS, backend_class, backend_unavailable
from edgessl.errors import EdgesslError

DEFAULT_BACKEND = "onnxruntime"
DEFAULT_PRECISION = "fp32"


class SelectionError(EdgesslError):
    """No artifact of the bundle can run here with what was asked for."""


@dataclass(frozen=True)
class RunPlan:
    """How to run a bundle: `load_backend(backend, bundle.path(artifact.file), threads=threads, **options)`."""

    backend: str
    artifact: Artifact
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why this artifact, for logs, /v1/model and `device status`
    skipped: tuple[str, ...] = ()  # why earlier preferences were not used

    @property
    def precision(self) -> str:
        return self.artifact.precision

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "artifact": self.artifact.label, "file": self.artifact.file,
                "precision": self.precision, "threads": self.threads, "options": dict(self.options),
                "reason": self.reason, "skipped": list(self.skipped)}


Availability = Callable[[str], str | None]  # backend name -> why it cannot run here, or None


def _format_of(backend: str) -> str:
    return backend_class(backend).artifact_format


def _rank(profile: DeviceProfile, precision: str) -> int:
    order: list[str] = list(profile.precisions)
    return order.index(precision) if precision in order else len(order)


def candidates(manifest: Manifest, profile: DeviceProfile, *,
               available: Availability = backend_unavailable) -> tuple[list[RunPlan], list[str]]:
    """Every artifact of the bundle that `profile` can run here, best first, and why the
    profile's other preferences were skipped."""
    skipped: list[str] = []
    plans: list[RunPlan] = []
    have = ", ".join(f"{a.format}/{a.precision}" for a in manifest.artifacts)
    default = manifest.defaults.get(profile.name)
    for name in profile.backends:
        why = available(name)
        if why is not None:
            skipped.append(f"{name}: {why}")
            continue
        fmt = _format_of(name)
        mine = [a for a in manifest.artifacts
                if a.format == fmt and (a.precision in profile.precisions or a.label == default)]
        mine.sort(key=lambda a: (a.label != default, _rank(profile, a.precision)))
        if not mine:
            skipped.append(f"{name}: the bundle has no {fmt} artifact in {'/'.join(profile.precisions)} (it has {have})")
        options = dict(profile.backend_options.get(name, {}))
        for a in mine:
            reason = (f"export's choice for {profile.name}" if a.label == default
                      else f"{profile.name} prefers {name} {'/'.join(profile.precisions)}")
            plans.append(RunPlan(name, a, profile.threads, options, reason, tuple(skipped)))
    return plans, skipped


def choose(manifest: Manifest, profile: DeviceProfile | None = None, *, backend: str | None = None,
           precision: str | None = None, threads: int | None = None, exclude: Sequence[str] = (),
           available: Availability = backend_unavailable) -> RunPlan:
    """The one artifact to run (see the module docstring); `exclude` names artifacts (labels)
    that already failed here. Raises SelectionError saying what the bundle has."""
    have = ", ".join(a.label for a in manifest.artifacts)
    if backend is not None or precision is not None or profile is None:
        name = backend or (profile.backends[0] if profile is not None else DEFAULT_BACKEND)
        if name not in BACKENDS:
            raise SelectionError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}")
        fmt = _format_of(name)
        wanted = precision or (DEFAULT_PRECISION if profile is None else None)
        pool = [a for a in manifest.artifacts if a.format == fmt and (wanted is None or a.precision == wanted)
                and a.label not in exclude]
        if profile is not None and wanted is None:
            pool.sort(key=lambda a: _rank(profile, a.precision))
        if not pool:
            raise SelectionError(f"the bundle has no {fmt} artifact{f' in {wanted}' if wanted else ''} for backend "
                                 f"{name}; it has: {have}")
        options = dict(profile.backend_options.get(name, {})) if profile is not None else {}
        threads = threads if threads is not None else (profile.threads if profile is not None else None)
        how = "set explicitly" if backend is not None or precision is not None else "no device profile: the default"
        return RunPlan(name, pool[0], threads, options, how)
    plans, skipped = candidates(manifest, profile, available=available)
    plans = [p for p in plans if p.artifact.label not in exclude]
    if not plans:
        failed = f"; already failed here: {', '.join(exclude)}" if exclude else ""
        raise SelectionError(f"no usable backend for profile {profile.name!r}: "
                             + ("; ".join(skipped) or f"the bundle has {have}") + failed)
    plan = plans[0]
    return plan if threads is None else replace(plan, threads=threads)
