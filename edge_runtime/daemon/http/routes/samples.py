"""The harvest: a server collects the samples the device kept (the closed loop, edge_runtime/samples)
and the gallery's exemplars as the site's evaluation set.

    GET  /v1/samples?after=0&limit=100          metadata, ascending id
    GET  /v1/samples/{id}.jpg                   one sample's JPEG (the page's strip)
    GET  /v1/samples/archive?after=0&limit=500  a tar streamed as it is read: {id:010d}.jpg then
                                                {id:010d}.json per sample; X-Edgessl-Last-Id
    POST /v1/samples/ack                        {"samples": {"<id>": "<sha256>"}}: deleted only
                                                where the sha256 matches what is stored
    GET  /v1/gallery/archive                    exemplars/{id:010d}.jpg and .json per exemplar

`edgessl collect` is written against exactly this: do not change it without changing both.
Nothing is deleted on the device until the server has it checksummed; a sample evicted (quota)
while an archive streams is left out of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse

from edgessl.edge_runtime.daemon.errors import StorageUnavailable
from edgessl.edge_runtime.daemon.http.auth import Auth
from edgessl.edge_runtime.daemon.http.responses import SamplePage, SamplesAcked
from edgessl.edge_runtime.daemon.http.schemas import AckRequest, errors, json_safe
from edgessl.edge_runtime.daemon.http.tarstream import members
from edgessl.edge_runtime.fewshot.gallery import ExemplarInfo, Gallery, GalleryStorageError
from edgessl.edge_runtime.samples.store import Acked, SampleStorageError
from edgessl.errors import GalleryError

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon

MAX_ID = 2**63 - 1  # SQLite's largest integer
_GALLERY_CHUNK = 16  # exemplar crops read per gallery connection while the archive streams
JPEG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}


def _tar(description: str, last_id: bool = False) -> dict[int | str, dict[str, Any]]:
    answer: dict[str, Any] = {"description": description,
                              "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}
    if last_id:
        answer["headers"] = {"X-Edgessl-Last-Id": {"description": "the last sample id in this archive (the `after` "
                                                   "given when it holds none): the next archive's `after`",
                                                   "schema": {"type": "integer"}}}
    return {200: answer}


def router(daemon: Daemon, auth: Auth) -> APIRouter:
    r = APIRouter(tags=["samples"], dependencies=[Depends(auth.require)])
    collection = daemon.collection

    @r.get("/v1/samples", response_model=SamplePage, responses=errors(401, 422),
           summary="the samples kept for the server (metadata, ascending id), after id `after`")
    def samples(after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=1000)) -> Any:
        return json_safe(collection.page(after, limit))

    @r.get("/v1/samples/archive", response_class=Response,
           responses={**_tar("uncompressed tar, streamed: per sample {id:010d}.jpg then {id:010d}.json (its "
                             "metadata and embedding_dim), ascending id", last_id=True), **errors(401, 422)},
           summary="the samples after id `after` as a tar (JPEG + JSON each), to harvest; then POST /v1/samples/ack")
    def archive(after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(500, ge=1, le=5000)) -> Response:
        last, rows = collection.archive_rows(after, limit)

        def files() -> Iterator[tuple[str, bytes, float]]:
            for info, jpeg in rows:
                meta = json.dumps(json_safe({**info.as_dict(), "embedding_dim": info.dim})).encode()
                yield f"{info.id:010d}.jpg", jpeg, info.time
                yield f"{info.id:010d}.json", meta, info.time

        return StreamingResponse(members(files()), media_type="application/x-tar", headers={
            "X-Edgessl-Last-Id": str(last), "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="samples-{after}-{last}.tar"'})

    @r.get("/v1/samples/{sample_id:int}.jpg", response_class=Response,
           responses={**JPEG, **errors(401, 404, 422)}, summary="the JPEG of one sample")
    def sample_jpeg(sample_id: int = Path(ge=0, le=MAX_ID)) -> Response:
        return Response(collection.jpeg(sample_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})  # ids are never reused

    @r.post("/v1/samples/ack", response_model=SamplesAcked, responses=errors(400, 401, 413, 422, 503, 507),
            summary="the server has these samples: delete each whose sha256 matches the stored one",
            description="Send the sha256 (hex) of each JPEG as received. A sample whose stored sha256 differs "
            "is kept (`mismatched`); ids not stored are `missing`. Works on a full disk (the storage reserve "
            "is given up for it).")
    def ack(body: AckRequest) -> Any:
        result = _ack(daemon, {int(k): v.lower() for k, v in body.samples.items()})
        return {"deleted": len(result.deleted), "mismatched": result.mismatched, "missing": result.missing}

    @r.get("/v1/gallery/archive", response_class=Response,
           responses={**_tar("uncompressed tar, streamed: per exemplar exemplars/{id:010d}.jpg and "
                             "exemplars/{id:010d}.json ({id, label, negative, source})"), **errors(401, 503)},
           summary="the gallery's exemplar crops with their labels: the site's evaluation set")
    def gallery_archive() -> Response:
        path = daemon.gallery_path
        listed = _exemplars(daemon, path)
        return StreamingResponse(members(_gallery_files(path, listed)), media_type="application/x-tar",
                                 headers={"Cache-Control": "no-store",
                                          "Content-Disposition": 'attachment; filename="gallery.tar"'})

    return r


def _ack(daemon: Daemon, acks: dict[int, str]) -> Acked:
    """Delete what the server acknowledged; on a full disk give up the storage reserve and try once more."""
    try:
        return daemon.collection.ack(acks)
    except SampleStorageError as exc:
        error = exc
        if exc.full and daemon.storage.release_reserve():
            try:
                return daemon.collection.ack(acks)
            except SampleStorageError as again:
                error = again
        translate = daemon.storage.full if error.full else daemon.storage.read_only
        raise translate("cannot delete the acknowledged samples", daemon.collection.store_path, error) from error


def _exemplars(daemon: Daemon, path: FsPath) -> list[ExemplarInfo]:
    """Every exemplar, read before the answer starts (so a gallery that cannot be read is an error
    answer, not a cut-off archive)."""
    if not path.exists():
        return []
    try:
        with Gallery(path, create=False) as gallery:
            return gallery.exemplars()
    except (GalleryStorageError, OSError) as exc:
        raise daemon.storage.translate(exc, "cannot read the gallery") or exc from exc
    except GalleryError as exc:
        raise StorageUnavailable(f"cannot read the gallery: {exc}") from exc


def _gallery_files(path: FsPath, exemplars: list[ExemplarInfo]) -> Iterator[tuple[str, bytes, float]]:
    """(name, bytes, mtime) of each exemplar's crop and metadata, a few crops per gallery connection
    (each opened and closed between two members: a streamed answer moves between worker threads,
    a SQLite connection may not). An exemplar removed meanwhile is left out."""
    for start in range(0, len(exemplars), _GALLERY_CHUNK):
        chunk = exemplars[start:start + _GALLERY_CHUNK]
        crops: dict[int, bytes] = {}
        with Gallery(path, create=False) as gallery:
            for e in chunk:
                try:
                    crops[e.id] = gallery.crop(e.id)
                except GalleryError:
                    continue
        for e in chunk:
            if e.id not in crops:
                continue
            mtime = datetime.fromisoformat(e.created_at).timestamp()
            meta = {"id": e.id, "label": e.label, "negative": e.negative, "source": e.source}
            yield f"exemplars/{e.id:010d}.jpg", crops[e.id], mtime
            yield f"exemplars/{e.id:010d}.json", json.dumps(json_safe(meta)).encode(), mtime
