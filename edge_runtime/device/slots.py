"""A device root: its layout, state and `current` pointer; provisioning, status, recovery.

Installing and rolling back live in `device.installer`.

A device root (made by `init_device`) looks like this:

    ROOT/
      profile.toml        the device profile (copied at init; the health check reads it)
      trusted_keys/       <key id>.pub: the keys whose signatures this device accepts
      slots/a/  slots/b/  two bundle directories; one is active, the other holds the previous one
      current -> slots/a  a relative symlink: the one source of truth for the active slot
      state.json          active slot, previous slot, last good version, recent history
      .lock               flock: one install or rollback at a time

`current` is a symlink replaced by rename(2): a new link is made under a temporary name and
renamed over `current`, which POSIX makes atomic, so a reader (or a crash) sees the old
target or the new one, never neither. A pointer file would be just as atomic, but every
tool (`ls -l`, a systemd unit, `edgessl classify --bundle ROOT/current`) can follow a link.
The installer never writes into the active slot: a new bundle is written into
`slots/.staging`, every file is fsynced and checked against the signed manifest, the health
check runs there in another process, and only then is the staging folder renamed into the
inactive slot and `current` switched. A crash at any point leaves `current` on a complete,
verified slot: the old one, or the new one after its health check passed. The state file is
written with temp + fsync + rename + fsync(dir); when a crash falls between the switch and
the state write, the next install or rollback notices the mismatch, re-verifies the active
slot and repairs the state.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edgessl.edge_runtime.bundle.manifest import Manifest, load_bundle, now_iso, read_manifest
from edgessl.edge_runtime.bundle.safe_extract import atomic_write, fsync_dir
from edgessl.edge_runtime.bundle.signing import (
    PUBLIC_SUFFIX,
    key_id,
    load_public_key,
    load_trusted_keys,
    verify_bundle_dir,
)
from edgessl.edge_runtime.device.profiles import load_profile, resolve_profile
from edgessl.edge_runtime.device.selection import RunPlan, choose
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import EdgesslError, InstallError

log = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
PROFILE_FILE = "profile.toml"
KEYS_DIR = "trusted_keys"
SLOTS_DIR = "slots"
CURRENT = "current"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
STAGING = ".staging"
TRASH_PREFIX = ".old-"
MAX_MANIFEST_BYTES = 8 << 20
HISTORY_KEEP = 50
SPACE_MARGIN = 16 << 20  # bytes kept free beyond the bundle itself


# -- results and state -------------------------------------------------------------------


class HistoryEntry(StrictModel):
    at: str = Field(description="UTC time, ISO 8601")
    action: Literal["init", "install", "rollback", "recover"]
    ok: bool
    version: int | None = Field(default=None, description="the bundle version the action was about")
    slot: SlotName | None = Field(default=None, description="the active slot after the action")
    reason: str


class DeviceState(StrictModel):
    schema_version: Literal[1] = 1
    active: SlotName | None = Field(default=None, description="the slot `current` points to (the link is authoritative)")
    previous: SlotName | None = Field(default=None, description="the slot holding the previously active, good bundle")
    last_good_version: int | None = Field(default=None, description="version of the last bundle that passed every check")
    verified: dict[SlotName, str] = Field(default_factory=dict, description=(
        "per slot, the artifact (e.g. onnx-int8) whose health check passed: what the daemon runs"))
    history: list[HistoryEntry] = Field(default_factory=list, description="most recent last")


@dataclass(frozen=True)
class SlotStatus:
    name: str
    present: bool
    version: int | None
    model: str | None
    created_at: str | None


@dataclass(frozen=True)
class DeviceStatus:
    root: str
    profile: str
    trusted_keys: tuple[str, ...]
    active: str | None
    previous: str | None
    last_good_version: int | None
    slots: tuple[SlotStatus, ...]
    history: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]  # interrupted installs and other things an operator should know
    runs: dict[str, Any] | None = None  # what the daemon runs from the active slot (RunPlan.as_dict())

    @property
    def active_version(self) -> int | None:
        return next((s.version for s in self.slots if s.name == self.active), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["active_version"] = self.active_version
        return data

# -- paths, state, pointer -----------------------------------------------------------------


def slot_dir(root: Path, slot: str) -> Path:
    return root / SLOTS_DIR / slot


def check_root(root: Path) -> None:
    missing = [n for n in (PROFILE_FILE, KEYS_DIR, SLOTS_DIR) if not (root / n).exists()]
    if missing:
        raise InstallError(f"{root}: not a device root (missing {', '.join(missing)}); provision it with "
                           f"`edgessl device init --root {root} --profile NAME --trust KEY.pub`")


def read_state(root: Path) -> DeviceState:
    path = root / STATE_FILE
    if not path.exists():
        return DeviceState()
    try:
        return DeviceState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise InstallError(f"{path}: unreadable device state: {exc}") from exc


def kept_history(history: list[HistoryEntry]) -> list[HistoryEntry]:
    """The newest HISTORY_KEEP entries that succeeded and the newest HISTORY_KEEP that failed, in
    order: a run of refused uploads must not push the installs that happened out of the record."""
    ok = {id(e) for e in [e for e in history if e.ok][-HISTORY_KEEP:]}
    failed = {id(e) for e in [e for e in history if not e.ok][-HISTORY_KEEP:]}
    return [e for e in history if id(e) in ok or id(e) in failed]


def _recent(history: list[HistoryEntry], n: int = 10) -> list[HistoryEntry]:
    """The last `n` entries, always with the newest one that succeeded (the install that runs)."""
    shown = history[-n:]
    good = next((e for e in reversed(history) if e.ok and e.action != "recover"), None)
    return shown if good is None or any(e is good for e in shown) else [good, *shown[-(n - 1):]]


def write_state(root: Path, state: DeviceState) -> None:
    state = state.model_copy(update={"history": kept_history(state.history)})
    atomic_write(root / STATE_FILE, (state.model_dump_json(indent=2) + "\n").encode())


def with_event(state: DeviceState, action: str, ok: bool, version: int | None, reason: str,
                **changes: Any) -> DeviceState:
    slot = changes.get("active", state.active)
    entry = HistoryEntry(at=now_iso(), action=action, ok=ok, version=version, slot=slot, reason=reason)
    return state.model_copy(update={**changes, "history": [*state.history, entry]})


def current_slot(root: Path) -> SlotName | None:
    """The slot `current` points to, None when nothing is installed."""
    link = root / CURRENT
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise InstallError(f"{link}: is not a symlink (device root damaged); expected a link to "
                               f"{SLOTS_DIR}/a or {SLOTS_DIR}/b") from None
        raise
    for slot in SLOT_NAMES:
        if target == f"{SLOTS_DIR}/{slot}":
            return slot
    raise InstallError(f"{link} points to {target!r}; expected {SLOTS_DIR}/a or {SLOTS_DIR}/b (device root damaged)")


def switch(root: Path, slot: SlotName | None) -> None:
    """Point `current` at `slot` atomically (None removes it)."""
    link, tmp = root / CURRENT, root / f".{CURRENT}.tmp"
    if slot is None:
        link.unlink(missing_ok=True)
    else:
        tmp.unlink(missing_ok=True)
        os.symlink(f"{SLOTS_DIR}/{slot}", tmp)
        os.replace(tmp, link)
    fsync_dir(root)


def profile_path(root: str | Path) -> Path:
    """The device profile file of a device root."""
    root = Path(root)
    check_root(root)
    return root / PROFILE_FILE


def active_bundle(root: str | Path) -> Path:
    """The bundle directory `current` points at; InstallError if none is installed."""
    root = Path(root)
    check_root(root)
    slot = current_slot(root)
    if slot is None:
        raise InstallError(f"{root}: no bundle installed yet; flash one with `edgessl flash BUNDLE --to {root}`")
    path = slot_dir(root, slot)
    if not path.is_dir():
        raise InstallError(f"{root / CURRENT} points to slot {slot}, which does not exist (device root damaged)")
    return path


@dataclass(frozen=True)
class ActiveModel:
    """The active bundle and how to run it: the artifact its health check verified.

    FeatureExtractor.from_plan(load_bundle(m.bundle_dir), m.plan)"""

    bundle_dir: Path
    plan: RunPlan


def active_model(root: str | Path) -> ActiveModel:
    """The active bundle and the backend/artifact the health check verified for it at install
    (recorded in the state); for roots installed before that was recorded, the selection's
    first choice for the device profile. The bundle's signature is checked against the keys the
    device trusts *now*: removing a key from trusted_keys stops what it signed from running."""
    root = Path(root)
    path = active_bundle(root)
    try:
        verify_bundle_dir(path, load_trusted_keys(root / KEYS_DIR))
    except EdgesslError as exc:
        raise InstallError(f"the active bundle in {path} is not signed by a key this device trusts now ({exc}); "
                           f"flash a bundle signed by a trusted key, or roll back with `edgessl device rollback "
                           f"--root {root}` if the previous one is") from exc
    profile = load_profile(root / PROFILE_FILE)
    manifest = read_manifest(path)
    slot = current_slot(root)
    verified = read_state(root).verified.get(slot) if slot else None
    if verified is not None and any(a.label == verified for a in manifest.artifacts):
        others = [a.label for a in manifest.artifacts if a.label != verified]
        plan = choose(manifest, profile, exclude=others)
        plan = replace(plan, reason=f"verified by the health check at install ({plan.reason})")
    else:
        plan = choose(manifest, profile)
    return ActiveModel(path, plan)


def slot_version(root: Path, slot: str | None) -> int | None:
    if slot is None:
        return None
    try:
        return read_manifest(slot_dir(root, slot)).model.version
    except EdgesslError:
        return None


@contextmanager
def locked(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"{root}: another install or rollback is running; try again when it is done") from None
        yield  # the kernel drops the lock if this process dies, so a crash leaves no stale lock
    finally:
        os.close(fd)


def verify_slot(root: Path, slot: SlotName) -> Manifest:
    """Hashes and signature of a slot's bundle; raises an EdgesslError naming the problem."""
    path = slot_dir(root, slot)
    bundle = load_bundle(path)
    verify_bundle_dir(path, load_trusted_keys(root / KEYS_DIR))
    return bundle.manifest


def recover(root: Path) -> DeviceState:
    """Clean what an interrupted install left and make the state agree with `current`."""
    slots = root / SLOTS_DIR
    for leftover in [*slots.glob(f"{STAGING}*"), *slots.glob(f"{TRASH_PREFIX}*")]:
        log.info("removing %s, left by an interrupted install", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    (root / f".{CURRENT}.tmp").unlink(missing_ok=True)
    try:
        state = read_state(root)
    except InstallError as exc:
        log.warning("%s; rebuilding the state from %s", exc, CURRENT)
        state = DeviceState()
    current = current_slot(root)
    repaired = state
    if state.active != current and current is not None:
        # A switch happened but its state write did not (crash in between): the slot passed its
        # health check before the switch; check its files again before accepting it.
        try:
            manifest = verify_slot(root, current)
            reason = f"an interrupted update had switched to slot {current} (v{manifest.model.version}); kept it"
            repaired = with_event(state, "recover", True, manifest.model.version, reason,
                                   active=current, previous=state.active,
                                   last_good_version=manifest.model.version)
        except EdgesslError as exc:
            back = state.active if state.active and slot_dir(root, state.active).is_dir() else None
            switch(root, back)
            reason = f"slot {current} failed verification after an interrupted update ({exc}); back to slot {back}"
            current = back
            repaired = with_event(state, "recover", True, None, reason, active=back, previous=None)
        log.warning("%s", reason)
    elif state.active != current:
        repaired = with_event(state, "recover", True, None, f"{CURRENT} is missing: no bundle is active",
                               active=None, previous=None)
    if repaired.previous is not None and (repaired.previous == current
                                          or not slot_dir(root, repaired.previous).is_dir()):
        repaired = repaired.model_copy(update={"previous": None})
    if repaired != state or not (root / STATE_FILE).exists():
        write_state(root, repaired)
    return repaired


# -- provisioning and status ---------------------------------------------------------------


def init_device(root: str | Path, profile_name_or_path: str | Path, trusted_keys: Sequence[str | Path]) -> DeviceStatus:
    """Provision a device root: the profile (a built-in name or a .toml path), the trusted
    public keys (.pub, ed25519), an empty slots folder and the state file."""
    root = Path(root)
    if (root / STATE_FILE).exists() or (root / PROFILE_FILE).exists():
        raise InstallError(f"{root}: already a device root; use `edgessl device status --root {root}`")
    if not trusted_keys:
        raise InstallError("a device needs at least one trusted public key (--trust KEY.pub), or it accepts nothing")
    _, profile_path = resolve_profile(profile_name_or_path)
    keys = {}
    for path in trusted_keys:
        key = load_public_key(path)  # refuses anything but an ed25519 PEM public key
        keys[key_id(key)] = Path(path).read_bytes()
    for sub in (KEYS_DIR, SLOTS_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for kid, data in keys.items():
        atomic_write(root / KEYS_DIR / f"{kid}{PUBLIC_SUFFIX}", data)
    atomic_write(root / PROFILE_FILE, profile_path.read_bytes())
    fsync_dir(root)
    write_state(root, with_event(DeviceState(), "init", True, None,
                                   f"profile {load_profile(root / PROFILE_FILE).name}, keys {', '.join(sorted(keys))}"))
    log.info("provisioned %s (profile %s, %d trusted keys)", root, profile_path.stem, len(keys))
    return status(root)


def status(root: str | Path) -> DeviceStatus:
    """What is installed, read-only (an interrupted install is reported in `notes`, and
    repaired by the next install or rollback)."""
    root = Path(root)
    check_root(root)
    state = read_state(root)
    current = current_slot(root)
    notes = []
    if state.active != current:
        notes.append(f"state says slot {state.active} is active but {CURRENT} points to {current}: an update was "
                     f"interrupted; the next install or rollback repairs this")
    if any((root / SLOTS_DIR).glob(f"{STAGING}*")) or any((root / SLOTS_DIR).glob(f"{TRASH_PREFIX}*")):
        notes.append("leftovers of an interrupted install in slots/ (removed by the next install)")
    slots = []
    for name in SLOT_NAMES:
        path = slot_dir(root, name)
        try:
            m = read_manifest(path)
            slots.append(SlotStatus(name, True, m.model.version, m.model.name, m.created_at))
        except EdgesslError:
            slots.append(SlotStatus(name, path.is_dir(), None, None, None))
    keys = tuple(sorted(p.stem for p in (root / KEYS_DIR).glob(f"*{PUBLIC_SUFFIX}")))
    runs = None
    if current is not None:
        try:
            runs = active_model(root).plan.as_dict()
        except EdgesslError as exc:
            notes.append(f"the active bundle cannot run here: {exc}")
    return DeviceStatus(root=str(root), profile=load_profile(root / PROFILE_FILE).name, trusted_keys=keys,
                        active=current, previous=state.previous, last_good_version=state.last_good_version,
                        slots=tuple(slots), history=tuple(h.model_dump() for h in _recent(state.history)),
                        notes=tuple(notes), runs=runs)

