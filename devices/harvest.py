"""Harvest: pull what a device collected (samples) and what its people enrolled (the gallery's
exemplars, the site's evaluation set) onto the server, for `edgessl adapt`.

    device                                   server: OUT/<device>/
    GET /v1/samples/archive?after=N  ──tar──►  incoming/<id>.jpg + .json   (each checked: sha256)
                                               samples/shard-NNNNNN.tar     (WebDataset: <id>.jpg, <id>.json)
    POST /v1/samples/ack {id: sha256} ◄──────  only once the shard holding them is on disk
    GET /v1/gallery/archive          ──tar──►  eval/<label>/<exemplar>.jpg (replaced whole each time)
                                               harvest.json                 (where to resume, what is un-acked)

Nothing is deleted on the device until the server has it checksummed in a shard; a broken
transfer keeps every complete sample (incoming/) and the next run resumes after the last one. A
device is a daemon URL (the token's API) or a local state folder (the same store, read directly).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

PAGE = 500  # samples per archive request
ACK_CHUNK = 5000  # samples acknowledged per request
STATE = "harvest.json"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
_SAMPLE_NAME = re.compile(r"^(\d{10})\.(jpg|json)$")
_EXEMPLAR_NAME = re.compile(r"^exemplars/(\d{10})\.(jpg|json)$")
_DRIFT_LINE = re.compile(r'^edgessl_drift\{camera="([^"]*)"\} (\S+)$', re.MULTILINE)


class HarvestError(EdgesslError):
    pass


@dataclass
class HarvestResult:
    """What one device gave."""

    device: str
    target: str
    status: str = "ok"  # ok | partial (the transfer broke; run again to resume) | failed
    reason: str = ""
    samples: int = 0  # new samples this run
    by_camera: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    acked: int = 0
    shards: list[str] = field(default_factory=list)
    eval_images: int = 0
    eval_classes: dict[str, int] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)  # per camera, the device's drift score at harvest
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- where samples come from -----------------------------------------------------------------


class Source(Protocol):
    def samples(self, after: int, limit: int) -> Iterator[tuple[dict[str, Any], bytes]]: ...
    def ack(self, checksums: dict[int, str]) -> int: ...
    def exemplars(self) -> Iterator[tuple[dict[str, Any], bytes]]: ...
    def drift(self) -> dict[str, float]: ...


def _pairs(members: Iterator[tuple[str, bytes]], pattern: re.Pattern[str]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(info, jpeg) of each `<key>.jpg` followed by its `<key>.json`; anything else is refused."""
    jpeg: tuple[str, bytes] | None = None
    for name, data in members:
        m = pattern.match(name)
        if m is None:
            raise HarvestError(f"unexpected member {name!r} in the device's archive")
        key, ext = m.group(1), m.group(2)
        if ext == "jpg":
            jpeg = (key, data)
            continue
        if jpeg is None or jpeg[0] != key:
            raise HarvestError(f"archive member {name!r} has no image before it")
        info = json.loads(data)
        yield info, jpeg[1]
        jpeg = None


def _tar_members(stream: io.RawIOBase | io.BufferedIOBase) -> Iterator[tuple[str, bytes]]:
    """Regular files of a streamed tar, in order; links, folders and devices are refused."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                raise HarvestError(f"archive member {member.name!r} is not a regular file")
            f = tar.extractfile(member)
            yield member.name, f.read() if f is not None else b""


class _Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks (an HTTP response body, read as it arrives)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._left = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n], self._left = self._left[:n], self._left[n:]
        return n


class HttpSource:
    """A running daemon: the token's API (routes/samples.py)."""

    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise HarvestError(f"harvesting from {url} needs the daemon's token: --token T or $EDGESSL_TOKEN")
        self.url, self._headers = url.rstrip("/"), {"Authorization": f"Bearer {token}"}

    def _stream(self, path: str, params: dict[str, Any] | None = None) -> Iterator[tuple[str, bytes]]:
        import httpx

        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            with httpx.stream("GET", self.url + path, params=params, headers=self._headers, timeout=timeout) as r:
                if r.status_code != 200:
                    r.read()
                    raise HarvestError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:300]}")
                yield from _tar_members(_Chunks(r.iter_raw()))
        except httpx.ConnectError as exc:
            raise HarvestError(f"cannot reach the daemon at {self.url}: {exc}") from exc
        except (httpx.HTTPError, tarfile.TarError, EOFError) as exc:
            raise HarvestError(f"{self.url}{path}: the transfer broke: {exc}") from exc

    def samples(self, after: int, limit: int) -> Iterator[tuple[dict[str, Any], bytes]]:
        return _pairs(self._stream("/v1/samples/archive", {"after": after, "limit": limit}), _SAMPLE_NAME)

    def exemplars(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        return _pairs(self._stream("/v1/gallery/archive"), _EXEMPLAR_NAME)

    def drift(self) -> dict[str, float]:
        """The cameras' drift scores from /metrics; {} when they cannot be read (not a failure)."""
        import httpx

        try:
            r = httpx.get(self.url + "/metrics", headers=self._headers, timeout=READ_TIMEOUT_S)
        except httpx.HTTPError:
            return {}
        if r.status_code != 200:
            return {}
        return {m.group(1): round(float(m.group(2)), 4) for m in _DRIFT_LINE.finditer(r.text)}

    def ack(self, checksums: dict[int, str]) -> int:
        import httpx

        try:
            r = httpx.post(self.url + "/v1/samples/ack", headers=self._headers, timeout=READ_TIMEOUT_S,
                           json={"samples": {str(k): v for k, v in checksums.items()}})
        except httpx.HTTPError as exc:
            raise HarvestError(f"{self.url}: acknowledging {len(checksums)} samples failed: {exc}") from exc
        if r.status_code != 200:
            raise HarvestError(f"{self.url}/v1/samples/ack: HTTP {r.status_code}: {r.text[:300]}")
        answer = r.json()
        if answer.get("mismatched"):
            log.warning("%s: %d samples changed on the device since they were sent; kept there",
                        self.url, len(answer["mismatched"]))
        return int(answer.get("deleted", 0))


class LocalSource:
    """A device's state folder on this machine (samples.db and gallery.db), read directly."""

    def __init__(self, state_dir: Path) -> None:
        if (state_dir / "state" / "samples.db").is_file() and not (state_dir / "samples.db").is_file():
            state_dir = state_dir / "state"  # a device root with the daemon's state beside the slots
        if not (state_dir / "samples.db").is_file():
            raise HarvestError(f"{state_dir}: no samples.db there (the daemon's state_dir, with sampling on "
                               f"for a camera, holds one)")
        self.state_dir = state_dir

    def samples(self, after: int, limit: int) -> Iterator[tuple[dict[str, Any], bytes]]:
        from edgessl.edge_runtime.samples.store import SampleStore

        with SampleStore(self.state_dir / "samples.db") as store:
            yield from ((info.as_dict(), jpeg) for info, jpeg in store.iter_with_jpeg(after, limit))

    def ack(self, checksums: dict[int, str]) -> int:
        from edgessl.edge_runtime.samples.store import SampleStore

        with SampleStore(self.state_dir / "samples.db") as store:
            deleted, _, _ = store.delete_acked(checksums)
        return len(deleted)

    def drift(self) -> dict[str, float]:
        from edgessl.edge_runtime.samples.drift import read_scores

        return read_scores(self.state_dir / "drift.json")

    def exemplars(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        from edgessl.edge_runtime.fewshot.gallery import Gallery

        path = self.state_dir / "gallery.db"
        if not path.is_file():
            return
        with Gallery(path, create=False) as gallery:
            for ex in gallery.exemplars():
                yield {"id": ex.id, "label": ex.label, "negative": ex.negative}, gallery.crop(ex.id)


def open_source(target: str, token: str | None) -> Source:
    if target.startswith(("http://", "https://")):
        return HttpSource(target, token)
    return LocalSource(Path(target))


# -- one device ------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def safe_label(label: str) -> str:
    """A class name as a folder name (labels may hold anything a person typed)."""
    name = re.sub(r"[^\w.-]+", "_", label, flags=re.UNICODE).strip("._") or "class"
    return name[:64]


class DeviceHarvest:
    """The server-side folder of one device and the steps of a harvest."""

    def __init__(self, out: Path, name: str) -> None:
        self.root = out / name
        self.incoming, self.shards = self.root / "incoming", self.root / "samples"
        for d in (self.incoming, self.shards):
            d.mkdir(parents=True, exist_ok=True)
        state_file = self.root / STATE
        self.state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self.state.setdefault("last_id", 0)
        self.state.setdefault("unacked", {})  # id -> sha256, in a shard but not yet deleted on the device

    def save(self) -> None:
        _write_synced(self.root / STATE, json.dumps(self.state, indent=1, sort_keys=True).encode())

    def receive(self, info: dict[str, Any], jpeg: bytes) -> None:
        """One sample, checked, on disk (before it counts as received)."""
        sid = int(info["id"])
        if hashlib.sha256(jpeg).hexdigest() != info.get("sha256"):
            raise HarvestError(f"sample {sid}: its checksum does not match its image (damaged in transfer)")
        key = f"{sid:010d}"
        _write_synced(self.incoming / f"{key}.jpg", jpeg)
        _write_synced(self.incoming / f"{key}.json", json.dumps(info, sort_keys=True).encode())
        self.state["last_id"] = max(int(self.state["last_id"]), sid)

    def seal(self) -> Path | None:
        """Pack incoming/ into the next shard (atomic), mark its samples un-acked, empty incoming/."""
        keys = sorted(p.stem for p in self.incoming.glob("*.json"))
        if not keys:
            return None
        number = len(list(self.shards.glob("shard-*.tar")))
        path = self.shards / f"shard-{number:06d}.tar"
        tmp = path.with_name(path.name + ".part")
        checksums = {}
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for key in keys:
                info = json.loads((self.incoming / f"{key}.json").read_text())
                checksums[str(int(key))] = info["sha256"]
                for ext in ("jpg", "json"):
                    tar.add(self.incoming / f"{key}.{ext}", arcname=f"{key}.{ext}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.state["unacked"].update(checksums)
        self.save()
        for key in keys:
            for ext in ("jpg", "json"):
                (self.incoming / f"{key}.{ext}").unlink(missing_ok=True)
        return path

    def replace_eval(self, exemplars: Iterator[tuple[dict[str, Any], bytes]]) -> Counter[str]:
        """The gallery's positive exemplars as `eval/<label>/<id>.jpg`, swapped in whole."""
        tmp = self.root / "eval.part"
        shutil.rmtree(tmp, ignore_errors=True)
        counts: Counter[str] = Counter()
        labels: dict[str, str] = {}
        for info, jpeg in exemplars:
            if info.get("negative"):
                continue  # "not Rex" crops are not examples of any class
            folder = safe_label(str(info["label"]))
            labels[folder] = str(info["label"])
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            (tmp / folder / f"{int(info['id']):010d}.jpg").write_bytes(jpeg)
            counts[str(info["label"])] += 1
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
        old = self.root / "eval"
        if old.exists():
            shutil.rmtree(old)
        os.replace(tmp, old)
        return counts


def harvest(target: str, out: Path, *, name: str, token: str | None = None, page: int = PAGE,
            on_progress: Callable[[str, int], None] | None = None) -> HarvestResult:
    """Harvest one device into OUT/<name>/; never raises for the device's faults (the result says)."""
    start = time.monotonic()
    result = HarvestResult(name, target)
    dev = DeviceHarvest(out, name)
    try:
        source = open_source(target, token)
        dev.seal()  # what an interrupted run received
        _ack(dev, source, result)
        while True:
            got = 0
            try:
                for info, jpeg in source.samples(int(dev.state["last_id"]), page):
                    dev.receive(info, jpeg)
                    got += 1
                    result.samples += 1
                    result.bytes += len(jpeg)
                    result.by_camera[str(info.get("camera"))] = result.by_camera.get(str(info.get("camera")), 0) + 1
                    result.by_reason[str(info.get("reason"))] = result.by_reason.get(str(info.get("reason")), 0) + 1
                    if on_progress is not None:
                        on_progress(name, result.samples)
            finally:
                shard = dev.seal()  # what arrived is kept, even when the transfer broke
                if shard is not None:
                    result.shards.append(str(shard))
            _ack(dev, source, result)
            if got < page:
                break
        counts = dev.replace_eval(source.exemplars())
        result.eval_images, result.eval_classes = sum(counts.values()), dict(sorted(counts.items()))
        result.drift = dict(sorted(source.drift().items()))
    except HarvestError as exc:
        result.status = "partial" if result.samples else "failed"
        result.reason = str(exc) + (" (run again to resume)" if result.samples else "")
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _ack(dev: DeviceHarvest, source: Source, result: HarvestResult) -> None:
    """Tell the device which samples the server holds (checksummed, in a shard); it deletes them."""
    unacked = {int(k): v for k, v in dev.state["unacked"].items()}
    ids = sorted(unacked)
    for start in range(0, len(ids), ACK_CHUNK):  # the route takes at most 10000 at a time
        chunk = {i: unacked[i] for i in ids[start:start + ACK_CHUNK]}
        result.acked += source.ack(chunk)
        for i in chunk:
            del dev.state["unacked"][str(i)]
        dev.save()


def harvest_fleet(fleet_path: str | Path, out: Path, *, token: str | None = None,
                  on_result: Callable[[HarvestResult], None] | None = None) -> list[HarvestResult]:
    """Every device of a fleet file (devices.flash's format), one after the other."""
    from edgessl.devices.flash import FlashError, load_fleet

    results = []
    for device in load_fleet(fleet_path).devices:
        try:
            device_token = device.resolved_token(token)
        except FlashError as exc:
            result = HarvestResult(device.name, device.target, "failed", str(exc))
        else:
            result = harvest(device.target, out, name=device.name, token=device_token)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def render_harvest(results: list[HarvestResult]) -> str:
    from edgessl.devices.table import format_table

    rows = [(r.device, r.status, r.samples, ", ".join(f"{c} {n}" for c, n in sorted(r.by_camera.items())) or None,
             f"{r.bytes / 1e6:.2f}", r.acked, f"{r.eval_images} in {len(r.eval_classes)}",
             ", ".join(f"{c} {v:.3f}" for c, v in r.drift.items()) or None, f"{r.seconds:.1f}",
             r.reason or None) for r in results]
    return format_table(["device", "status", "samples", "per camera", "MB", "deleted on device",
                         "eval images/classes", "drift", "seconds", "reason"], rows)
