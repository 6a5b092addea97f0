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
device is a daemon URL (the token's API) or a local state folder (the same store, read directly):
devices/harvest_sources.py.
"""

from __future__ import annotations

import hashlib
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
from typing import Any

from edgessl.devices.harvest_sources import HarvestError, Source, open_source

log = logging.getLogger(__name__)

PAGE = 500  # samples per archive request
ACK_CHUNK = 5000  # samples acknowledged per request
STATE = "harvest.json"


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
