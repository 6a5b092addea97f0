"""Flashing: one device root, one running daemon, or a fleet (canary first).

- A device root on this machine: the edge runtime's installer (`edge_runtime.installer`).
- A running daemon: the bundle goes as a .tar to `POST {url}/v1/model` (multipart field
  `bundle`, form field `allow_downgrade`, header `Authorization: Bearer TOKEN`); the daemon
  runs the same install on the device and answers with the installer's result as JSON.
- A fleet (`fleet.toml`): the canary first; when it succeeds, the others concurrently; the
  first failure stops the rollout (devices not started yet are skipped).

fleet.toml:

    workers = 4                      # optional: devices flashed at the same time

    [[devices]]
    name = "lobby"
    target = "http://10.0.0.11:8080"  # a daemon URL, or a device root path
    token_env = "LOBBY_TOKEN"         # or token = "..." (prefer the environment)
    canary = true                     # optional: else the first device is the canary
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from edgessl.edge_runtime.bundle.manifest import MANIFEST, Manifest, load_bundle, read_manifest
from edgessl.edge_runtime.bundle.signing import SIGNATURE
from edgessl.edge_runtime.daemon.http.responses import InstallAnswer
from edgessl.edge_runtime.device.installer import InstallResult, install
from edgessl.edge_runtime.device.profiles import load_profile
from edgessl.edge_runtime.device.slots import profile_path
from edgessl.edge_runtime.schema import StrictModel
from edgessl.errors import EdgesslError, InstallError

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGESSL_TOKEN"
CONNECT_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 1800.0  # the daemon answers when its install is done (a TensorRT build takes minutes)


class FlashError(EdgesslError):
    """A bundle could not be sent to a device, or the device refused it."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer


Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class FlashResult:
    name: str
    target: str
    status: Status
    version: int | None
    slot: str | None
    reason: str
    seconds: float


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


# -- one device ----------------------------------------------------------------------------


def pack_bundle(bundle: str | Path, out: str | Path) -> Path:
    """Write a signed bundle directory as a plain tar (manifest, signature and listed files only)."""
    bundle, out = Path(bundle), Path(out)
    manifest = load_bundle(bundle).manifest  # the files match the manifest
    if not (bundle / SIGNATURE).is_file():
        raise FlashError(f"{bundle}: not signed (no {SIGNATURE}); sign it first: edgessl sign {bundle} --key KEY")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in [MANIFEST, SIGNATURE, *sorted(manifest.files)]:
            info = tar.gettarinfo(str(bundle / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(bundle / name, "rb") as f:
                tar.addfile(info, f)
    return out


def push(bundle: str | Path, url: str, token: str | None, *, allow_downgrade: bool = False,
         allow_model_change: bool = False, timeout_s: float = INSTALL_TIMEOUT_S) -> InstallAnswer:
    """Upload a bundle (directory or .tar) to a running daemon and return its answer (the type
    the route answers with) when the install succeeded; FlashError (with `answer`) when it did not."""
    import httpx

    bundle = Path(bundle)
    if not token:
        raise FlashError(f"pushing to {url} needs the daemon's token: --token T or ${TOKEN_ENV}")
    endpoint = url.rstrip("/") + "/v1/model"
    with tempfile.TemporaryDirectory(prefix="edgessl-flash-") as tmp:
        archive = pack_bundle(bundle, Path(tmp) / "bundle.tar") if bundle.is_dir() else bundle
        if not archive.is_file():
            raise FlashError(f"{bundle}: no such bundle (give a bundle directory or a .tar of one)")
        try:
            with open(archive, "rb") as f:
                response = httpx.post(
                    endpoint,
                    headers={"Authorization": f"Bearer {token}"},
                    files={"bundle": ("bundle.tar", f, "application/x-tar")},
                    data={"allow_downgrade": "true" if allow_downgrade else "false",
                          "allow_model_change": "true" if allow_model_change else "false"},
                    timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
                )
        except httpx.ConnectError as exc:
            raise FlashError(f"cannot reach the daemon at {url}: {exc} (is `edgessl run` running there, "
                             f"and the address and port right?)") from exc
        except httpx.TimeoutException as exc:
            raise FlashError(f"no answer from {endpoint} within the time limit ({exc}); the install may still "
                             f"be running: check with GET {url.rstrip('/')}/v1/model") from exc
        except httpx.HTTPError as exc:
            raise FlashError(f"upload to {endpoint} failed: {exc}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {"detail": response.text[:500]}
    if not isinstance(answer, dict):
        answer = {"detail": answer}
    if response.status_code == 401:
        raise FlashError(f"{url} refused the token (HTTP 401): {_reason(answer)}", answer)
    if response.is_success and answer.get("ok", True) is not False:
        try:
            return InstallAnswer.model_validate(answer)
        except ValidationError as exc:
            raise FlashError(f"{url} answered the upload with something that is not an install answer "
                             f"({exc.error_count()} problems; an older daemon?): {str(answer)[:300]}", answer) from exc
    raise FlashError(f"{url} refused the bundle (HTTP {response.status_code}): {_reason(answer)}", answer)


def _reason(answer: dict[str, Any]) -> str:
    for key in ("reason", "detail", "error", "message"):
        value = answer.get(key)
        if isinstance(value, dict):
            value = value.get("reason") or value.get("detail") or value
        if value:
            return str(value)
    return str(answer)[:300]


def _bundle_manifest(bundle: Path) -> Manifest | None:
    """The manifest of a bundle directory or .tar, without checking anything (the installer does)."""
    try:
        if bundle.is_dir():
            return read_manifest(bundle)
        with tarfile.open(bundle) as tar:
            member = tar.extractfile(MANIFEST)
            return Manifest.model_validate_json(member.read()) if member is not None else None
    except (EdgesslError, OSError, KeyError, tarfile.TarError, ValidationError):
        return None


def input_size_warning(bundle: str | Path, root: str | Path) -> str | None:
    """A warning when the bundle's input size is not the device profile's `input_size`, else None."""
    manifest = _bundle_manifest(Path(bundle))
    try:
        profile = load_profile(profile_path(root))
    except EdgesslError:
        return None  # not provisioned: the installer says so
    if manifest is None or tuple(manifest.preprocess.input_size) == tuple(profile.input_size):
        return None
    (h, w), (ph, pw) = manifest.preprocess.input_size, profile.input_size
    return (f"the bundle's input size {h}x{w} differs from the input_size {ph}x{pw} of this device's profile "
            f"{profile.name}: the device will run {h}x{w} as the bundle says (its latency budget was set for "
            f"{ph}x{pw}); export a model trained or distilled at {ph}x{pw} for this device")


def flash(bundle: str | Path, target: str, *, token: str | None = None, allow_downgrade: bool = False,
          allow_model_change: bool = False) -> InstallResult | InstallAnswer:
    """Flash one device: a device root path (local install) or a daemon URL (push)."""
    if is_url(target):
        return push(bundle, target, token, allow_downgrade=allow_downgrade, allow_model_change=allow_model_change)
    warning = input_size_warning(bundle, target)
    if warning is not None:
        log.warning("%s", warning)
    return install(Path(target), Path(bundle), allow_downgrade=allow_downgrade, allow_model_change=allow_model_change)


def flash_one(bundle: str | Path, name: str, target: str, *, token: str | None = None,
              allow_downgrade: bool = False, allow_model_change: bool = False) -> FlashResult:
    """Flash one device and report, never raise (a fleet goes on reporting)."""
    start = time.monotonic()

    def done(status: Status, version: int | None, slot: str | None, reason: str) -> FlashResult:
        return FlashResult(name, target, status, version, slot, reason, round(time.monotonic() - start, 2))

    try:
        outcome = flash(bundle, target, token=token, allow_downgrade=allow_downgrade,
                        allow_model_change=allow_model_change)
    except InstallError as exc:
        result = exc.result if isinstance(exc.result, InstallResult) else None
        return done("failed", result.version if result else None, result.slot if result else None, str(exc))
    except FlashError as exc:
        steps = (exc.answer or {}).get("install") or {}  # a refusal's answer carries the installer's steps
        return done("failed", steps.get("version"), steps.get("slot"), str(exc))
    except EdgesslError as exc:
        return done("failed", None, None, str(exc))
    except Exception as exc:  # one device's surprise must not hide the others' results
        log.exception("flashing %s failed unexpectedly", name)
        return done("failed", None, None, f"{type(exc).__name__}: {exc}")
    if isinstance(outcome, InstallResult):
        return done("ok", outcome.version, outcome.slot, outcome.reason)
    return done("ok", outcome.install.version, outcome.install.slot, outcome.install.reason)


# -- fleets --------------------------------------------------------------------------------



class FleetDevice(StrictModel):
    name: str = Field(min_length=1, max_length=64, description="device name for the result table")
    target: str = Field(min_length=1, description="device root path, or the daemon's URL (http://HOST:PORT)")
    token: str | None = Field(default=None, description="bearer token of the daemon (prefer token_env)")
    token_env: str | None = Field(default=None, description="environment variable that holds the token")
    canary: bool = Field(default=False, description="flash this one first, alone (default: the first device)")

    def resolved_token(self, default: str | None) -> str | None:
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise FlashError(f"device {self.name!r}: environment variable {self.token_env} is not set")
            return value
        return self.token or default


class Fleet(StrictModel):
    workers: int = Field(default=4, ge=1, le=256, description="devices flashed at the same time after the canary")
    devices: list[FleetDevice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Fleet:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {', '.join(dupes)}")
        if sum(d.canary for d in self.devices) > 1:
            raise ValueError("at most one device can be the canary")
        return self

    @property
    def canary(self) -> FleetDevice:
        return next((d for d in self.devices if d.canary), self.devices[0])


def load_fleet(path: str | Path) -> Fleet:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Fleet.model_validate(data)
    except OSError as exc:
        raise FlashError(f"{path}: cannot read the fleet file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FlashError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise FlashError(f"{path}: invalid fleet file: {problems}") from exc


def flash_fleet(bundle: str | Path, fleet: Fleet, *, allow_downgrade: bool = False, allow_model_change: bool = False,
                token: str | None = None, on_result: Callable[[FlashResult], None] | None = None
                ) -> list[FlashResult]:
    """Canary first, then the rest `fleet.workers` at a time; the first failure stops the
    rollout (devices not started yet are skipped). Results in the fleet file's order."""
    canary = fleet.canary
    results: dict[str, FlashResult] = {}
    lock = threading.Lock()
    stop = threading.Event()
    stopped_by: list[str] = []

    def run(device: FleetDevice) -> FlashResult:
        if stop.is_set():
            result = FlashResult(device.name, device.target, "skipped", None, None,
                                 f"rollout stopped: {stopped_by[0]} failed", 0.0)
        else:
            try:
                device_token = device.resolved_token(token)
            except FlashError as exc:
                result = FlashResult(device.name, device.target, "failed", None, None, str(exc), 0.0)
            else:
                log.info("flashing %s (%s)", device.name, device.target)
                result = flash_one(bundle, device.name, device.target, token=device_token,
                                   allow_downgrade=allow_downgrade, allow_model_change=allow_model_change)
            if result.status == "failed":
                with lock:
                    if not stopped_by:
                        stopped_by.append(f"{'canary ' if device is canary else ''}{device.name}")
                stop.set()
        with lock:
            results[device.name] = result
        if on_result is not None:
            on_result(result)
        return result

    run(canary)
    rest = [d for d in fleet.devices if d is not canary]
    if rest:
        with ThreadPoolExecutor(max_workers=fleet.workers, thread_name_prefix="flash") as pool:
            list(pool.map(run, rest))
    return [results[d.name] for d in fleet.devices]


def summarize(results: Sequence[FlashResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    return f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
