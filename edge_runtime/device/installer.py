"""Install a bundle into a device root's inactive slot, and roll back (see `device.slots` for
the root's layout and why a crash at any point leaves a complete, verified slot active).

Steps: signature over the exact manifest bytes, anti-downgrade, extract into staging with
every file checked against the signed manifest, the health check in another process (trying
the profile's candidate artifacts in order, so a bundle whose preferred artifact fails on this
CPU installs with its next passing one, and says so), then the staging folder becomes the
inactive slot, `current` is switched, the daemon reloads, and a post-switch check runs; any
failure switches back.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from edgessl.edge_runtime.bundle.manifest import MANIFEST, Manifest, load_bundle, read_manifest
from edgessl.edge_runtime.bundle.safe_extract import atomic_write, fsync_dir, fsync_tree
from edgessl.edge_runtime.bundle.signing import SIGNATURE, load_trusted_keys, verify_manifest
from edgessl.edge_runtime.device.health import HealthReport, run_health_check
from edgessl.edge_runtime.device.profiles import load_profile
from edgessl.edge_runtime.device.selection import RunPlan, candidates
from edgessl.edge_runtime.device.slots import (
    CURRENT,
    KEYS_DIR,
    PROFILE_FILE,
    SLOTS_DIR,
    SPACE_MARGIN,
    STAGING,
    TRASH_PREFIX,
    DeviceState,
    SlotName,
    active_bundle,
    check_root,
    current_slot,
    locked,
    read_state,
    recover,
    slot_dir,
    slot_version,
    switch,
    verify_slot,
    with_event,
    write_state,
)
from edgessl.edge_runtime.device.sources import Source, open_source
from edgessl.errors import BundleError, EdgesslError, InstallError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallResult:
    """What happened, for the CLI output and the daemon's HTTP answer.

    ok: True when the new bundle is active and passed every check. version: the version of
    the bundle that was installed (or refused; None when it could not be read). slot: the
    slot active now. previous_version: the version that was active before (None: none).
    reason: one line for people. steps: what was done, in order."""

    ok: bool
    version: int | None
    slot: str | None
    previous_version: int | None
    reason: str
    steps: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data



# -- install and rollback ------------------------------------------------------------------


class _Run:
    """Steps of one install or rollback, and how to report its failure."""

    def __init__(self, root: Path, action: Literal["install", "rollback"]) -> None:
        self.root, self.action = root, action
        self.steps: list[str] = []
        self.version: int | None = None
        self.previous_version: int | None = None

    def step(self, text: str) -> None:
        log.info("%s: %s", self.root, text)
        self.steps.append(text)

    def result(self, ok: bool, reason: str, slot: str | None) -> InstallResult:
        return InstallResult(ok=ok, version=self.version, slot=slot, previous_version=self.previous_version,
                             reason=reason, steps=tuple(self.steps))

    def fail(self, reason: str) -> InstallError:
        slot = current_slot(self.root)
        log.warning("%s: %s refused: %s", self.root, self.action, reason)
        try:
            state = read_state(self.root)
            write_state(self.root, with_event(state, self.action, False, self.version, reason))
        except (OSError, InstallError) as exc:  # the refusal matters more than its history entry
            log.warning("could not record the failure in the device state: %s", exc)
        return InstallError(reason, self.result(False, reason, slot))


def _go_live(root: Path, run: _Run, state: DeviceState, target: SlotName, version: int,
             on_switch: Callable[[Path], None] | None) -> DeviceState:
    """Switch to `target`, reload the daemon, check again; on any failure switch back."""
    old = state.active
    switch(root, target)
    run.step(f"switched {CURRENT} to slot {target}")
    state = state.model_copy(update={"active": target, "previous": old})
    write_state(root, state)
    stage = "to load in the running daemon"
    try:
        if on_switch is not None:
            on_switch(slot_dir(root, target))
            run.step("running daemon reloaded the new model")
        # Post-switch check: through the pointer again, every hash and the signature.
        stage = "the post-switch check"
        live = active_bundle(root)
        if live != slot_dir(root, target):
            raise InstallError(f"{CURRENT} points to {live}, not slot {target}")
        if verify_slot(root, target).model.version != version:
            raise InstallError(f"slot {target} does not hold version {version}")
        run.step(f"post-switch check passed (slot {target}: hashes and signature)")
    except BaseException as exc:
        switch(root, old)
        state = state.model_copy(update={"active": old, "previous": None})
        write_state(root, state)
        run.step(f"switched {CURRENT} back to slot {old}" if old else f"removed {CURRENT}")
        if on_switch is not None and old is not None:
            try:
                on_switch(slot_dir(root, old))
                run.step("running daemon reloaded the previous model")
            except Exception as reload_exc:
                log.error("the daemon could not reload the previous model either: %s", reload_exc)
        if isinstance(exc, Exception):
            back = f"slot {old} (v{run.previous_version}) is active again" if old else "no model is active"
            raise run.fail(f"v{version} in slot {target} failed {stage}: {exc}; {back}") from exc
        raise
    return state


def _health_check(root: Path, staging: Path, manifest: Manifest, run: _Run) -> HealthReport:
    """Health-check the profile's candidate artifacts in order (`device.selection`); the first
    that passes is what the daemon will run. InstallError when none passes."""
    profile = load_profile(root / PROFILE_FILE)
    plans, skipped = candidates(manifest, profile)
    for why in skipped:
        run.step(f"backend skipped: {why}")
    if not plans:
        raise InstallError(f"health check failed: no artifact of the bundle runs here for profile {profile.name} "
                           f"({'; '.join(skipped) or 'no candidates'})")
    failures: list[tuple[RunPlan, str]] = []
    for plan in plans:
        report = run_health_check(staging, root / PROFILE_FILE, profile.health_timeout_s, plan.artifact.label)
        if report.ok:
            if failures:
                run.step(f"fallback: {plan.artifact.label} installed because "
                         + "; ".join(f"{p.artifact.label} failed its health check ({why})" for p, why in failures))
            run.step(f"health check passed: {plan.artifact.label} ({plan.reason}): {report.reason}")
            return report
        failures.append((plan, report.reason))
        run.step(f"{plan.artifact.label} failed its health check: {report.reason}")
    if len(failures) == 1:
        reason = failures[0][1]
    else:
        reason = "every candidate failed: " + "; ".join(f"{p.artifact.label}: {why}" for p, why in failures)
    if any(p.precision == "int8" for p, _ in failures) and all(p.precision == "int8" for p, _ in failures):
        reason += (" (re-export with less INT8 drift, e.g. --calib-method entropy or more --calib images, "
                   "or with an fp32 artifact as a fallback for this profile)")
    raise InstallError(f"health check failed: {reason}")


def _check_binding(root: Path, manifest: Manifest, active: SlotName | None, allow_model_change: bool,
                   run: _Run) -> None:
    """A signature says who made a bundle, not that it is meant for this device: the signed
    manifest's target profiles must include the device's, and its model name must be the one the
    device runs (a fleet key signs every model of a fleet; a bundle of another model, replayed to
    this device with a higher version, must not replace its model unless an operator says so)."""
    profile = load_profile(root / PROFILE_FILE).name
    if manifest.profiles and profile not in manifest.profiles:
        raise InstallError(f"{manifest.model.name} v{manifest.model.version} was built for the device profiles "
                           f"{', '.join(manifest.profiles)}, not for this device's {profile}; re-export it with "
                           f"--device {profile}")
    running = None
    if active is not None:
        try:
            running = read_manifest(slot_dir(root, active)).model.name
        except EdgesslError:
            running = None
    if running is not None and running != manifest.model.name:
        if not allow_model_change:
            raise InstallError(f"this device runs the model {running!r}; the bundle is the model "
                               f"{manifest.model.name!r}; pass --allow-model-change (API: allow_model_change) to "
                               "replace one model by another")
        log.warning("%s: replacing the model %r by %r (allow_model_change)", root, running, manifest.model.name)
        run.step(f"model {running!r} replaced by {manifest.model.name!r} (allowed by the operator)")


def install(root: str | Path, bundle: str | Path, *, allow_downgrade: bool = False, allow_model_change: bool = False,
            on_switch: Callable[[Path], None] | None = None) -> InstallResult:
    """Install `bundle` (a bundle directory or a .tar of one) into the inactive slot of the
    device root and make it active; see the module docstring for the steps. Refusals and
    failures raise InstallError (its `result` holds the steps); the previous slot stays, or
    becomes again, the active one."""
    root, bundle = Path(root), Path(bundle)
    check_root(root)
    run = _Run(root, "install")
    staging = root / SLOTS_DIR / STAGING
    with locked(root):
        state = recover(root)
        run.previous_version = slot_version(root, state.active)
        target: SlotName = "b" if state.active == "a" else "a"
        source: Source | None = None
        try:
            source = open_source(bundle)
            manifest = _verify(root, source, state, run, allow_downgrade, allow_model_change)
            _extract(root, source, manifest, staging, run)

            # 4. Health check in a separate process (a TensorRT backend builds its engine here).
            report = _health_check(root, staging, manifest, run)

            # 5. The checked staging folder becomes the inactive slot.
            target_dir = slot_dir(root, target)
            trash = root / SLOTS_DIR / f"{TRASH_PREFIX}{target}"
            if target_dir.exists():
                os.rename(target_dir, trash)
            os.rename(staging, target_dir)
            fsync_dir(root / SLOTS_DIR)
            shutil.rmtree(trash, ignore_errors=True)
            if state.previous == target:
                state = state.model_copy(update={"previous": None})
            run.step(f"installed into slot {target}")
        except (EdgesslError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = EdgesslError(f"I/O error: {exc}")
            active = current_slot(root)
            raise run.fail(f"{exc}; {f'slot {active} stays active' if active else 'nothing installed'}") from exc
        finally:
            if source is not None:
                source.close()
            shutil.rmtree(staging, ignore_errors=True)

        # 6. Switch, reload, post-switch check (rolled back on any failure).
        state = state.model_copy(update={"verified": {**state.verified, target: report.label}})
        version = manifest.model.version
        state = _go_live(root, run, state, target, version, on_switch)
        reason = (f"installed {manifest.model.name} v{version} in slot {target}"
                  + (f" (was v{run.previous_version})" if run.previous_version is not None else ""))
        write_state(root, with_event(state, "install", True, version, reason, last_good_version=version))
        log.info("%s: %s", root, reason)
        return run.result(True, reason, target)


def _verify(root: Path, source: Source, state: DeviceState, run: _Run, allow_downgrade: bool,
            allow_model_change: bool) -> Manifest:
    """Steps 1-2, before anything is written: the signature over the exact manifest bytes, every
    referenced file listed with a checksum, the binding to this device, and anti-rollback against
    the active bundle (its manifest; the state if unreadable)."""
    signer = verify_manifest(source.manifest_bytes, source.signature, load_trusted_keys(root / KEYS_DIR))
    try:
        manifest = Manifest.model_validate_json(source.manifest_bytes)
    except ValidationError as exc:
        raise BundleError(f"invalid manifest: {exc}") from exc
    run.version = manifest.model.version
    run.step(f"signature of {manifest.model.name} v{run.version} verified (key {signer})")
    referenced = {manifest.center, manifest.golden, *(a.file for a in manifest.artifacts)}
    unlisted = sorted(referenced - manifest.files.keys())
    if unlisted:
        raise BundleError(f"manifest references files without a checksum: {', '.join(unlisted)}")
    source.check_files(manifest)
    _check_binding(root, manifest, state.active, allow_model_change, run)

    floor = run.previous_version if run.previous_version is not None else (
        state.last_good_version if state.active else None)
    if floor is not None and run.version <= floor:
        if not allow_downgrade:
            raise InstallError(f"version {run.version} is not newer than the installed version "
                               f"{floor}; refusing a downgrade (pass --allow-downgrade "
                               f"to install it anyway)")
        run.step(f"downgrade from v{floor} allowed")
    return manifest


def _extract(root: Path, source: Source, manifest: Manifest, staging: Path, run: _Run) -> None:
    """Step 3: into staging, every file checked against the signed manifest, then read back."""
    need = sum(e.bytes for e in manifest.files.values())
    free = shutil.disk_usage(root / SLOTS_DIR).free
    if need + SPACE_MARGIN > free:
        raise InstallError(f"not enough disk space in {root}: the bundle needs {need >> 20} MiB "
                           f"(+{SPACE_MARGIN >> 20} MiB margin), {free >> 20} MiB free")
    staging.mkdir()
    source.write_into(manifest, staging)
    atomic_write(staging / MANIFEST, source.manifest_bytes)
    atomic_write(staging / SIGNATURE, source.signature or b"")
    fsync_tree(staging)
    source.close()
    load_bundle(staging)  # what landed on disk, read back
    run.step(f"extracted {len(manifest.files)} files ({need} bytes), every sha256 matches")


def rollback(root: str | Path, *, on_switch: Callable[[Path], None] | None = None) -> InstallResult:
    """Make the previous slot active again (after verifying its hashes and signature)."""
    root = Path(root)
    check_root(root)
    run = _Run(root, "rollback")
    with locked(root):
        state = recover(root)
        run.previous_version = slot_version(root, state.active)
        previous = state.previous
        if previous is None:
            raise run.fail("nothing to roll back to: no previous good bundle is kept on this device")
        try:
            manifest = verify_slot(root, previous)
        except EdgesslError as exc:
            raise run.fail(f"the previous bundle in slot {previous} fails verification: {exc}") from exc
        run.version = manifest.model.version
        run.step(f"slot {previous} (v{run.version}): hashes and signature verified")
        state = _go_live(root, run, state, previous, run.version, on_switch)
        reason = f"rolled back to {manifest.model.name} v{run.version} in slot {previous} (was v{run.previous_version})"
        write_state(root, with_event(state, "rollback", True, run.version, reason))
        return run.result(True, reason, previous)
