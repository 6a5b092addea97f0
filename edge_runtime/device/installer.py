"""A/B installs on a device root: verify, extract, health-check, switch, roll back.

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
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edgessl.edge_runtime.bundle.manifest import (
    MANIFEST,
    Bundle,
    Manifest,
    load_bundle,
    now_iso,
    read_manifest,
)
from edgessl.edge_runtime.bundle.safe_extract import (
    Member,
    atomic_write,
    extract_member,
    fsync_dir,
    fsync_tree,
    open_archive,
    read_member,
    scan,
    write_stream,
)
from edgessl.edge_runtime.bundle.signing import (
    PUBLIC_SUFFIX,
    SIGNATURE,
    key_id,
    load_public_key,
    load_trusted_keys,
    verify_bundle_dir,
    verify_manifest,
)
from edgessl.edge_runtime.device.health import HealthReport, choose_artifact, run_health_check
from edgessl.edge_runtime.device.profiles import load_profile, resolve_profile
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import BundleError, EdgesslError, InstallError

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

    @property
    def active_version(self) -> int | None:
        return next((s.version for s in self.slots if s.name == self.active), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["active_version"] = self.active_version
        return data


# -- paths, state, pointer -----------------------------------------------------------------


def _slot_dir(root: Path, slot: str) -> Path:
    return root / SLOTS_DIR / slot


def _check_root(root: Path) -> None:
    missing = [n for n in (PROFILE_FILE, KEYS_DIR, SLOTS_DIR) if not (root / n).exists()]
    if missing:
        raise InstallError(f"{root}: not a device root (missing {', '.join(missing)}); provision it with "
                           f"`edgessl device init --root {root} --profile NAME --trust KEY.pub`")


def _read_state(root: Path) -> DeviceState:
    path = root / STATE_FILE
    if not path.exists():
        return DeviceState()
    try:
        return DeviceState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise InstallError(f"{path}: unreadable device state: {exc}") from exc


def _write_state(root: Path, state: DeviceState) -> None:
    state = state.model_copy(update={"history": state.history[-HISTORY_KEEP:]})
    atomic_write(root / STATE_FILE, (state.model_dump_json(indent=2) + "\n").encode())


def _with_event(state: DeviceState, action: str, ok: bool, version: int | None, reason: str,
                **changes: Any) -> DeviceState:
    slot = changes.get("active", state.active)
    entry = HistoryEntry(at=now_iso(), action=action, ok=ok, version=version, slot=slot, reason=reason)  # type: ignore[arg-type]
    return state.model_copy(update={**changes, "history": [*state.history, entry]})


def _current_slot(root: Path) -> SlotName | None:
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


def _switch(root: Path, slot: SlotName | None) -> None:
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
    _check_root(root)
    return root / PROFILE_FILE


def active_bundle(root: str | Path) -> Path:
    """The bundle directory `current` points at; InstallError if none is installed."""
    root = Path(root)
    _check_root(root)
    slot = _current_slot(root)
    if slot is None:
        raise InstallError(f"{root}: no bundle installed yet; flash one with `edgessl flash BUNDLE --to {root}`")
    path = _slot_dir(root, slot)
    if not path.is_dir():
        raise InstallError(f"{root / CURRENT} points to slot {slot}, which does not exist (device root damaged)")
    return path


@dataclass(frozen=True)
class ActiveModel:
    """How to run the active bundle: the backend and artifact its health check chose.

    FeatureExtractor.from_bundle(load_bundle(m.bundle_dir), m.backend, threads=m.threads,
    precision=m.precision, **m.options)"""

    bundle_dir: Path
    backend: str
    precision: str
    artifact: str
    threads: int | None
    options: dict[str, Any]


def active_model(root: str | Path) -> ActiveModel:
    """The active bundle and the backend/artifact the device profile picks for it (the same
    choice as the health check made, for the same installed runtimes)."""
    path = active_bundle(root)
    profile = load_profile(Path(root) / PROFILE_FILE)
    backend, artifact, _ = choose_artifact(Bundle(root=path, manifest=read_manifest(path)), profile)
    return ActiveModel(path, backend, artifact.precision, artifact.file, profile.threads,
                       dict(profile.backend_options.get(backend, {})))


def _slot_version(root: Path, slot: str | None) -> int | None:
    if slot is None:
        return None
    try:
        return read_manifest(_slot_dir(root, slot)).model.version
    except EdgesslError:
        return None


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"{root}: another install or rollback is running; try again when it is done") from None
        yield  # the kernel drops the lock if this process dies, so a crash leaves no stale lock
    finally:
        os.close(fd)


def _verify_slot(root: Path, slot: SlotName) -> Manifest:
    """Hashes and signature of a slot's bundle; raises an EdgesslError naming the problem."""
    path = _slot_dir(root, slot)
    bundle = load_bundle(path)
    verify_bundle_dir(path, load_trusted_keys(root / KEYS_DIR))
    return bundle.manifest


def _recover(root: Path) -> DeviceState:
    """Clean what an interrupted install left and make the state agree with `current`."""
    slots = root / SLOTS_DIR
    for leftover in [*slots.glob(f"{STAGING}*"), *slots.glob(f"{TRASH_PREFIX}*")]:
        log.info("removing %s, left by an interrupted install", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    (root / f".{CURRENT}.tmp").unlink(missing_ok=True)
    try:
        state = _read_state(root)
    except InstallError as exc:
        log.warning("%s; rebuilding the state from %s", exc, CURRENT)
        state = DeviceState()
    current = _current_slot(root)
    repaired = state
    if state.active != current and current is not None:
        # A switch happened but its state write did not (crash in between): the slot passed its
        # health check before the switch; check its files again before accepting it.
        try:
            manifest = _verify_slot(root, current)
            reason = f"an interrupted update had switched to slot {current} (v{manifest.model.version}); kept it"
            repaired = _with_event(state, "recover", True, manifest.model.version, reason,
                                   active=current, previous=state.active)
        except EdgesslError as exc:
            back = state.active if state.active and _slot_dir(root, state.active).is_dir() else None
            _switch(root, back)
            reason = f"slot {current} failed verification after an interrupted update ({exc}); back to slot {back}"
            current = back
            repaired = _with_event(state, "recover", True, None, reason, active=back, previous=None)
        log.warning("%s", reason)
    elif state.active != current:
        repaired = _with_event(state, "recover", True, None, f"{CURRENT} is missing: no bundle is active",
                               active=None, previous=None)
    if repaired.previous is not None and (repaired.previous == current
                                          or not _slot_dir(root, repaired.previous).is_dir()):
        repaired = repaired.model_copy(update={"previous": None})
    if repaired != state or not (root / STATE_FILE).exists():
        _write_state(root, repaired)
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
    _write_state(root, _with_event(DeviceState(), "init", True, None,
                                   f"profile {load_profile(root / PROFILE_FILE).name}, keys {', '.join(sorted(keys))}"))
    log.info("provisioned %s (profile %s, %d trusted keys)", root, profile_path.stem, len(keys))
    return status(root)


def status(root: str | Path) -> DeviceStatus:
    """What is installed, read-only (an interrupted install is reported in `notes`, and
    repaired by the next install or rollback)."""
    root = Path(root)
    _check_root(root)
    state = _read_state(root)
    current = _current_slot(root)
    notes = []
    if state.active != current:
        notes.append(f"state says slot {state.active} is active but {CURRENT} points to {current}: an update was "
                     f"interrupted; the next install or rollback repairs this")
    if any((root / SLOTS_DIR).glob(f"{STAGING}*")) or any((root / SLOTS_DIR).glob(f"{TRASH_PREFIX}*")):
        notes.append("leftovers of an interrupted install in slots/ (removed by the next install)")
    slots = []
    for name in SLOT_NAMES:
        path = _slot_dir(root, name)
        try:
            m = read_manifest(path)
            slots.append(SlotStatus(name, True, m.model.version, m.model.name, m.created_at))
        except EdgesslError:
            slots.append(SlotStatus(name, path.is_dir(), None, None, None))
    keys = tuple(sorted(p.stem for p in (root / KEYS_DIR).glob(f"*{PUBLIC_SUFFIX}")))
    return DeviceStatus(root=str(root), profile=load_profile(root / PROFILE_FILE).name, trusted_keys=keys,
                        active=current, previous=state.previous, last_good_version=state.last_good_version,
                        slots=tuple(slots), history=tuple(h.model_dump() for h in state.history[-10:]),
                        notes=tuple(notes))


# -- bundle sources: a directory or a tar ---------------------------------------------------


class _Source:
    manifest_bytes: bytes
    signature: bytes | None

    def check_files(self, manifest: Manifest) -> None:
        """Refuse files that are missing (and, for archives, unlisted)."""

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _check_written(name: str, sha: str, size: int, manifest: Manifest) -> None:
    entry = manifest.files[name]
    if size != entry.bytes:
        raise BundleError(f"{name}: {size} bytes, the signed manifest says {entry.bytes} (corrupted or tampered with)")
    if sha != entry.sha256:
        raise BundleError(f"{name}: sha256 does not match the signed manifest (corrupted or tampered with)")


class _DirSource(_Source):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.manifest_bytes = self._read_small(MANIFEST, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})") from None
        try:
            self.signature = self._read_small(SIGNATURE, 1 << 16)
        except FileNotFoundError:
            self.signature = None

    def _read_small(self, name: str, limit: int) -> bytes:
        fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"{self.path / name}: larger than {limit} bytes")
        return data

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        for name, entry in manifest.files.items():
            src = self.path / name
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                raise BundleError(f"{name}: listed in the manifest but missing from {self.path}") from None
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{name}: not a plain file (links are not allowed in a bundle)")
            target = dest.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                sha, size = write_stream(f, target, entry.bytes)
            _check_written(name, sha, size, manifest)


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        self.tar = open_archive(path)
        try:
            members = scan(self.tar)
            names = {m.name for m in members}
            prefix = ""
            if MANIFEST not in names:
                tops = {n.split("/", 1)[0] for n in names}
                if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
                    prefix = next(iter(tops)) + "/"
                else:
                    raise BundleError(f"{path}: no {MANIFEST} at the top of the archive (or in its one top folder)")
            self.members: dict[str, Member] = {m.name.removeprefix(prefix): m for m in members}
            self.manifest_bytes = read_member(self.tar, self.members[MANIFEST], MAX_MANIFEST_BYTES)
            sig = self.members.get(SIGNATURE)
            self.signature = read_member(self.tar, sig, 1 << 16) if sig else None
        except BaseException:
            self.tar.close()
            raise

    def check_files(self, manifest: Manifest) -> None:
        unlisted = sorted(set(self.members) - set(manifest.files) - {MANIFEST, SIGNATURE})
        if unlisted:
            raise BundleError(f"archive holds files the signed manifest does not list: {', '.join(unlisted[:5])}")
        missing = sorted(set(manifest.files) - set(self.members))
        if missing:
            raise BundleError(f"archive lacks files listed in the manifest: {', '.join(missing[:5])}")
        for name, entry in manifest.files.items():
            if self.members[name].size != entry.bytes:
                raise BundleError(f"{name}: {self.members[name].size} bytes in the archive, the signed manifest "
                                  f"says {entry.bytes} (corrupted or tampered with)")

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        for name in manifest.files:
            member = self.members[name]
            relocated = Member(name, member.size, member.info)  # without the archive's top folder
            _check_written(name, extract_member(self.tar, relocated, dest), member.size, manifest)

    def close(self) -> None:
        self.tar.close()


def _open_source(bundle: Path) -> _Source:
    if bundle.is_dir():
        return _DirSource(bundle)
    if bundle.is_file():
        return _TarSource(bundle)
    raise BundleError(f"{bundle}: no such bundle (give a bundle directory or a .tar of one)")


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
        slot = _current_slot(self.root)
        log.warning("%s: %s refused: %s", self.root, self.action, reason)
        try:
            state = _read_state(self.root)
            _write_state(self.root, _with_event(state, self.action, False, self.version, reason))
        except (OSError, InstallError) as exc:  # the refusal matters more than its history entry
            log.warning("could not record the failure in %s: %s", STATE_FILE, exc)
        return InstallError(reason, self.result(False, reason, slot))


def _go_live(root: Path, run: _Run, state: DeviceState, target: SlotName, version: int,
             on_switch: Callable[[Path], None] | None) -> DeviceState:
    """Switch to `target`, reload the daemon, check again; on any failure switch back."""
    old = state.active
    _switch(root, target)
    run.step(f"switched {CURRENT} to slot {target}")
    state = state.model_copy(update={"active": target, "previous": old})
    _write_state(root, state)
    stage = "to load in the running daemon"
    try:
        if on_switch is not None:
            on_switch(_slot_dir(root, target))
            run.step("running daemon reloaded the new model")
        # Post-switch check: through the pointer again, every hash and the signature.
        stage = "the post-switch check"
        live = active_bundle(root)
        if live != _slot_dir(root, target):
            raise InstallError(f"{CURRENT} points to {live}, not slot {target}")
        if _verify_slot(root, target).model.version != version:
            raise InstallError(f"slot {target} does not hold version {version}")
        run.step(f"post-switch check passed (slot {target}: hashes and signature)")
    except BaseException as exc:
        _switch(root, old)
        state = state.model_copy(update={"active": old, "previous": None})
        _write_state(root, state)
        run.step(f"switched {CURRENT} back to slot {old}" if old else f"removed {CURRENT}")
        if on_switch is not None and old is not None:
            try:
                on_switch(_slot_dir(root, old))
                run.step("running daemon reloaded the previous model")
            except Exception as reload_exc:
                log.error("the daemon could not reload the previous model either: %s", reload_exc)
        if isinstance(exc, Exception):
            back = f"slot {old} (v{run.previous_version}) is active again" if old else "no model is active"
            raise run.fail(f"v{version} in slot {target} failed {stage}: {exc}; {back}") from exc
        raise
    return state


def install(root: str | Path, bundle: str | Path, *, allow_downgrade: bool = False,
            on_switch: Callable[[Path], None] | None = None) -> InstallResult:
    """Install `bundle` (a bundle directory or a .tar of one) into the inactive slot of the
    device root and make it active; see the module docstring for the steps. Refusals and
    failures raise InstallError (its `result` holds the steps); the previous slot stays, or
    becomes again, the active one."""
    root, bundle = Path(root), Path(bundle)
    _check_root(root)
    run = _Run(root, "install")
    staging = root / SLOTS_DIR / STAGING
    with _locked(root):
        state = _recover(root)
        run.previous_version = _slot_version(root, state.active)
        target: SlotName = "b" if state.active == "a" else "a"
        source: _Source | None = None
        try:
            # 1. Signature over the exact manifest bytes, before anything is written.
            source = _open_source(bundle)
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

            # 2. Anti-rollback against the active bundle (its manifest; the state if unreadable).
            floor = run.previous_version if run.previous_version is not None else (
                state.last_good_version if state.active else None)
            if floor is not None and run.version <= floor:
                if not allow_downgrade:
                    raise InstallError(f"version {run.version} is not newer than the installed version "
                                       f"{floor}; refusing a downgrade (pass --allow-downgrade "
                                       f"to install it anyway)")
                run.step(f"downgrade from v{floor} allowed")

            # 3. Extract into staging, checking every file against the signed manifest.
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

            # 4. Health check in a separate process (a TensorRT backend builds its engine here).
            profile = load_profile(root / PROFILE_FILE)
            report: HealthReport = run_health_check(staging, root / PROFILE_FILE, profile.health_timeout_s)
            for skipped in report.skipped:
                run.step(f"backend skipped: {skipped}")
            if not report.ok:
                raise InstallError(f"health check failed: {report.reason}")
            run.step(f"health check passed: {report.reason}")

            # 5. The checked staging folder becomes the inactive slot.
            slot_dir = _slot_dir(root, target)
            trash = root / SLOTS_DIR / f"{TRASH_PREFIX}{target}"
            if slot_dir.exists():
                os.rename(slot_dir, trash)
            os.rename(staging, slot_dir)
            fsync_dir(root / SLOTS_DIR)
            shutil.rmtree(trash, ignore_errors=True)
            if state.previous == target:
                state = state.model_copy(update={"previous": None})
            run.step(f"installed into slot {target}")
        except (EdgesslError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = EdgesslError(f"I/O error: {exc}")
            active = _current_slot(root)
            raise run.fail(f"{exc}; {f'slot {active} stays active' if active else 'nothing installed'}") from exc
        finally:
            if source is not None:
                source.close()
            shutil.rmtree(staging, ignore_errors=True)

        # 6. Switch, reload, post-switch check (rolled back on any failure).
        state = _go_live(root, run, state, target, run.version, on_switch)
        reason = (f"installed {manifest.model.name} v{run.version} in slot {target}"
                  + (f" (was v{run.previous_version})" if run.previous_version is not None else ""))
        _write_state(root, _with_event(state, "install", True, run.version, reason, last_good_version=run.version))
        log.info("%s: %s", root, reason)
        return run.result(True, reason, target)


def rollback(root: str | Path, *, on_switch: Callable[[Path], None] | None = None) -> InstallResult:
    """Make the previous slot active again (after verifying its hashes and signature)."""
    root = Path(root)
    _check_root(root)
    run = _Run(root, "rollback")
    with _locked(root):
        state = _recover(root)
        run.previous_version = _slot_version(root, state.active)
        previous = state.previous
        if previous is None:
            raise run.fail("nothing to roll back to: no previous good bundle is kept on this device")
        try:
            manifest = _verify_slot(root, previous)
        except EdgesslError as exc:
            raise run.fail(f"the previous bundle in slot {previous} fails verification: {exc}") from exc
        run.version = manifest.model.version
        run.step(f"slot {previous} (v{run.version}): hashes and signature verified")
        state = _go_live(root, run, state, previous, run.version, on_switch)
        reason = f"rolled back to {manifest.model.name} v{run.version} in slot {previous} (was v{run.previous_version})"
        _write_state(root, _with_event(state, "rollback", True, run.version, reason))
        return run.result(True, reason, previous)
