"""The gate of the closed loop: may a candidate bundle replace the model running at a site?

A server adapts a model on footage harvested from a site and exports a candidate (same model
name, version + 1). It is flashed only when, on the site's own evaluation set (the crops
people enrolled there, harvested as `EVAL_DIR/<label>/<image>`):

1. it classifies at least as well as the running model (within `margin`), judged by
   leave-one-out nearest centred prototype: the gallery's own rule, each image classified by
   its class's prototype built without it and the other classes' prototypes;
2. every artifact it ships passed the export's parity gate (`Manifest.report`);
3. its health check (`edge_runtime.device.health.check_bundle`) passes.

Both bundles are run through the device's code path (device.selection picks the artifact and
backend, inference.extractor embeds, fewshot.prototypes centres and normalises), so the figures
are those of the code that runs on the device. No torch.

    python -m edgessl.export.site_gate CANDIDATE RUNNING EVAL_DIR [--margin M] [--json] [--write]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgessl.edge_runtime.bundle.gate_report import render_gate
from edgessl.edge_runtime.bundle.manifest import (
    GateCheck,
    GateClassRow,
    GateReport,
    Manifest,
    load_bundle,
    now_iso,
    read_manifest,
    write_manifest,
)
from edgessl.edge_runtime.bundle.signing import SIGNATURE
from edgessl.edge_runtime.device.health import check_bundle
from edgessl.edge_runtime.device.profiles import DeviceProfile, resolve_profile
from edgessl.errors import EdgesslError
from edgessl.export.site_eval import (  # noqa: F401  (re-exported: the gate's API)
    _EPS,
    DEFAULT_MIN_IMAGES,
    STANDIN_LATENCY_MS,
    STANDIN_MEMORY_MB,
    STANDIN_PROFILE,
    EvalSet,
    EvalSetError,
    LooResult,
    ProfileArg,
    SiteEval,
    _profile,
    eval_plan,
    leave_one_out,
    load_eval_set,
    site_eval,
    wilson_interval,
)

log = logging.getLogger(__name__)


def _version_reasons(candidate: Manifest, running: Manifest) -> list[str]:
    c, r = candidate.model, running.model
    if c.name != r.name:
        return [f"the candidate is model {c.name!r}, the site runs {r.name!r}: a candidate must be the same model"]
    if c.version <= r.version:
        return [f"the candidate's version {c.version} is not higher than the running version {r.version}: "
                f"devices refuse to go back, and the loop exports version {r.version + 1}"]
    return []


def parity_checks(manifest: Manifest, *, allow_unchecked: bool = False) -> list[GateCheck]:
    """One row per artifact the candidate ships: did it pass the export's parity gate?
    `unchecked` (TensorRT without a GPU here) passes only with `allow_unchecked`."""
    rows = {r.name: r for r in manifest.report}
    checks = []
    for a in manifest.artifacts:
        row = rows.get(a.label)
        if row is None:
            checks.append(GateCheck(name=a.label, ok=False, detail="no row in the export report: parity never checked"))
            continue
        figure = f"centred min {row.centred_min:.4f}" if row.centred_min is not None else ""
        ok = row.status == "ok" or (row.status == "unchecked" and allow_unchecked)
        detail = "; ".join(filter(None, [row.status, figure, row.reason if not ok else ""]))
        if not row.in_bundle:
            ok, detail = False, f"{detail}; the export report does not mark it as shipped"
        checks.append(GateCheck(name=a.label, ok=ok, detail=detail[:300]))
    return checks


def standin_profile(manifest: Manifest) -> DeviceProfile:
    """ONNX Runtime on this server with budgets no model misses: runs, finite, matches its golden set."""
    arch = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "x86_64"
    return DeviceProfile(name=STANDIN_PROFILE, description="the site gate's stand-in: ONNX Runtime on the server",
                         arch=arch, backends=["onnxruntime"], precisions=["fp32", "int8"],
                         input_size=manifest.preprocess.input_size, latency_budget_ms=STANDIN_LATENCY_MS,
                         memory_budget_mb=STANDIN_MEMORY_MB)


def health_checks(bundle_dir: Path, manifest: Manifest, profile: ProfileArg = None) -> list[GateCheck]:
    """The device health check, in this process: for `profile`; else for each of the bundle's
    profiles known here; else for the stand-in profile (speed and memory not judged)."""
    profiles: list[DeviceProfile] = []
    for name in [profile] if profile is not None else manifest.profiles:
        try:
            profiles.append(name if isinstance(name, DeviceProfile) else resolve_profile(name)[0])
        except EdgesslError:
            if profile is not None:
                raise  # the profile the caller named must exist
            log.info("device profile %s is not known here: not health-checked for it", name)
    checks = []
    for p in profiles or [standin_profile(manifest)]:
        report = check_bundle(bundle_dir, p)
        where = f"{report.label} on {report.backend}: " if report.label else ""
        checks.append(GateCheck(name=p.name, ok=report.ok, detail=f"{where}{report.reason}"[:300]))
    return checks


def _class_rows(before: SiteEval | None, after: SiteEval | None, data: EvalSet) -> list[GateClassRow]:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    return [GateClassRow(label=c, n=int(n), before=None if before is None else before.per_class[c],
                         after=None if after is None else after.per_class[c])
            for c, n in zip(data.classes, counts, strict=True)]


def _accuracy_reasons(before: SiteEval, after: SiteEval, margin: float) -> list[str]:
    if after.accuracy >= before.accuracy - margin - _EPS:
        return []
    worst = min(after.classes, key=lambda c: after.per_class[c] - before.per_class[c])
    allowed = f" minus the accepted drop of {100 * margin:.1f} points" if margin else ""
    return [f"accuracy dropped on the site's evaluation set: {100 * after.accuracy:.1f}% "
            f"(candidate v{after.version}) < {100 * before.accuracy:.1f}% (running v{before.version}){allowed}; "
            f"largest drop: {worst!r} {100 * before.per_class[worst]:.1f}% -> {100 * after.per_class[worst]:.1f}%"]


def gate(candidate: str | Path, running: str | Path, eval_dir: str | Path, *, margin: float = 0.0,
         min_images: int = DEFAULT_MIN_IMAGES, profile: ProfileArg = None, threads: int | None = None,
         allow_unchecked: bool = False) -> GateReport:
    """Judge `candidate` (a bundle folder) against the `running` bundle on the site's evaluation
    set. The verdict is "pass" only when every check passes; otherwise "refused" with reasons.
    Problems of the candidate are reasons; a missing evaluation set or running bundle raise."""
    if not 0 <= margin < 1:
        raise EdgesslError(f"margin is an accuracy fraction in [0, 1) (0.02 = 2 points), got {margin}")
    start = time.perf_counter()
    data = load_eval_set(eval_dir)
    dev = _profile(profile)
    old = load_bundle(running)
    before = site_eval(old, data, profile=dev, threads=threads)
    reasons: list[str] = []
    after, parity, health = None, [], []
    try:
        new = load_bundle(candidate)
    except EdgesslError as exc:
        new = None
        reasons.append(f"the candidate bundle is not valid: {exc}")
    if new is not None:
        reasons += _version_reasons(new.manifest, old.manifest)
        try:
            after = site_eval(new, data, profile=dev, threads=threads)
        except Exception as exc:  # a runtime's own errors too: a candidate that cannot run is refused
            log.debug("candidate evaluation failed", exc_info=True)
            reasons.append(f"the candidate could not be evaluated: {type(exc).__name__}: {exc}")
        parity = parity_checks(new.manifest, allow_unchecked=allow_unchecked)
        reasons += [f"artifact {c.name} did not pass parity ({c.detail})" for c in parity if not c.ok]
        health = health_checks(new.root, new.manifest, dev)
        reasons += [f"health check failed for {c.name}: {c.detail}" for c in health if not c.ok]
    if len(data.labels) < min_images:
        reasons.append(f"the site's evaluation set has only {len(data.labels)} usable images, fewer than "
                       f"{min_images}: too few to judge; enroll more examples")
    if after is not None:
        reasons += _accuracy_reasons(before, after, margin)
    name = f"{new.manifest.model.name} v{new.manifest.model.version}" if new is not None else str(candidate)
    report = GateReport(
        verdict="refused" if reasons else "pass", reasons=reasons, candidate=name,
        running=f"{old.manifest.model.name} v{old.manifest.model.version}", eval_dir=str(data.root),
        images=len(data.labels), classes=_class_rows(before, after, data), notes=list(data.notes),
        before=before.score(), after=None if after is None else after.score(), margin=margin,
        min_images=min_images, parity=parity, health=health, created_at=now_iso(),
        seconds=time.perf_counter() - start)
    log.info("site gate %s vs %s: %s%s", report.candidate, report.running, report.verdict,
             "".join(f"; {r}" for r in reasons))
    return report


def write_gate(bundle_dir: str | Path, report: GateReport) -> Path:
    """Store `report` in the bundle's manifest (`Manifest.gate`). The loop signs after the gate;
    an existing signature no longer matches the manifest, so it is removed (with a warning)."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    path = write_manifest(root, manifest.model_copy(update={"gate": report}))
    sig = root / SIGNATURE
    if sig.exists():
        sig.unlink()
        log.warning("%s: removed %s: the manifest changed (gate report added); sign the bundle again", root,
                    SIGNATURE)
    return path


# --- command line (for debugging; the loop calls gate()) ------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 pass, 1 refused, 2 error."""
    p = argparse.ArgumentParser(prog="python -m edgessl.export.site_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("candidate", type=Path, help="candidate bundle folder")
    p.add_argument("running", type=Path, help="the bundle the site runs now")
    p.add_argument("eval_dir", type=Path, help="the site's evaluation set: EVAL_DIR/<label>/<image>")
    p.add_argument("--margin", type=float, default=0.0, help="accepted accuracy drop as a fraction (default 0)")
    p.add_argument("--min-images", type=int, default=DEFAULT_MIN_IMAGES, help="fewest images to judge on")
    p.add_argument("--profile", help="the site's device profile (a built-in name or a .toml file)")
    p.add_argument("--threads", type=int, help="inference threads")
    p.add_argument("--allow-unchecked", action="store_true", help="accept artifacts the device checks itself")
    p.add_argument("--write", action="store_true", help="store the report in the candidate's manifest")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        report = gate(args.candidate, args.running, args.eval_dir, margin=args.margin, min_images=args.min_images,
                      profile=args.profile, threads=args.threads, allow_unchecked=args.allow_unchecked)
        if args.write:
            write_gate(args.candidate, report)
    except EdgesslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=2) if args.json else render_gate(report))
    return 0 if report.verdict == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
