"""Where a harvest reads a device from: a running daemon's token API (a streamed tar, read as it
arrives) or a local state folder (the same stores, read directly). Both give (info, jpeg) pairs
of samples and exemplars, acknowledge what the server holds, and say each camera's drift score.
Every archive member must be a regular file named as expected; anything else is refused.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
_SAMPLE_NAME = re.compile(r"^(\d{10})\.(jpg|json)$")
_EXEMPLAR_NAME = re.compile(r"^exemplars/(\d{10})\.(jpg|json)$")
_DRIFT_LINE = re.compile(r'^edgessl_drift\{camera="([^"]*)"\} (\S+)$', re.MULTILINE)


class HarvestError(EdgesslError):
    pass


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


