"""Request bodies of the daemon's API: size limits per route, image headers read before
decoding, and multipart uploads streamed to disk."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import cv2
import numpy as np
from fastapi import HTTPException, Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- body size limits ---------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: cap the request body per (method, path); answer 413 past the cap."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body too large: the limit of this route is {limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False
            if too_large:
                await self._reject(send, limit)  # without reading any of the body
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to the cut-off body is replaced by the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(send, limit)


# -- images -------------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, WebP or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    return None


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """BGR image from uploaded bytes; 400 when it is not a JPEG/PNG/WebP/BMP image, 413 when too large."""
    size = image_size(data)
    if size is None:
        raise HTTPException(400, f"{name}: not a JPEG, PNG, WebP or BMP image")
    if size[0] * size[1] > max_pixels:
        raise HTTPException(413, f"{name}: {size[0]}x{size[1]} pixels; the limit is {max_pixels} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HTTPException(400, f"{name}: the image data is damaged or truncated (cannot decode it)")
    return image


def decode_scaled(data: bytes, name: str, size: tuple[int, int], max_side: int) -> np.ndarray:
    """BGR image from uploaded bytes whose header said `size` (w, h), scaled down (INTER_AREA) so
    that its longest side is at most `max_side`. An image much larger than that is decoded at
    1/2, 1/4 or 1/8 scale (IMREAD_REDUCED_*): JPEG decoders scale while decoding; for PNG it
    still halves the peak memory (OpenCV 5 decodes a full-size PNG through a second buffer:
    228 MB for 6300x6300, 115 MB reduced)."""
    flags = cv2.IMREAD_COLOR
    for denom, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                        (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if max(size) // denom >= max_side:
            flags = flag
            break
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise HTTPException(400, f"{name}: the image data is damaged or truncated (cannot decode it)")
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image


# -- streamed uploads ---------------------------------------------------------------------------


def _multipart() -> tuple[Any, Any]:
    try:  # python-multipart >= 0.0.13
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # older releases
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]
    return MultipartParser, parse_options_header


async def receive_upload(request: Request, out: Any, file_field: str) -> tuple[int, dict[str, str]]:
    """Write an upload to the open binary file `out` as it arrives: the whole body, or the
    file field `file_field` of a multipart form. Returns (bytes written, the form's small text
    fields). The body's size is capped by BodyLimit."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        size = 0
        async for chunk in request.stream():
            out.write(chunk)
            size += len(chunk)
        return size, {}
    parser_class, parse_options_header = _multipart()
    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary")
    part: dict[str, Any] = {}
    fields: dict[str, bytearray] = {}
    written = 0

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", name=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal written
        if part["name"] == file_field:
            out.write(data[start:end])
            written += end - start
            return
        value = fields.setdefault(part["name"], bytearray())
        if len(value) + end - start > 4096:
            raise HTTPException(400, f"form field {part['name']!r} is too long (text fields: 4096 bytes)")
        value += data[start:end]

    parser = parser_class(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except HTTPException:
            raise
        except Exception as exc:  # python-multipart's own errors
            raise HTTPException(400, f"malformed multipart upload: {exc}") from exc
    parser.finalize()
    return written, {k: v.decode("utf-8", "replace") for k, v in fields.items()}
