"""Who may do what: the API token, and the `Host` a request may name.

Every route but the page's files, /health (its short form) and the OpenAPI document
needs `Authorization: Bearer <token>` (the table in the README; tests/daemon/test_access.py
checks it route by route): snapshots, crops, classes, events and tracks show what the cameras
see, which the token protects as much as the right to change things.

`Host`: a web page on another site that gets its name to resolve to this device (DNS
rebinding) sends its own name as `Host`. Only names the device answers to pass: IP literals,
`localhost`, the device's and the machine's names, and `api.allowed_hosts`; anything else is 421.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import HTTPException, Request

from edgessl.edge_runtime.daemon.http.token import MIN_CHARS

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Auth:
    def __init__(self, token: str) -> None:
        if len(token) < MIN_CHARS:  # resolve_token refuses these; a second line, never an empty compare
            raise ValueError(f"the API token must have at least {MIN_CHARS} characters")
        self._token = token.encode()

    def valid(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        value = value.strip()
        return scheme.lower() == "bearer" and bool(value) and hmac.compare_digest(value.encode(), self._token)

    def require(self, request: Request) -> None:
        """A FastAPI dependency: 401 without the token."""
        if not self.valid(request):
            raise HTTPException(401, "this route needs the daemon's API token: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})


def default_hosts(device: str, extra: Iterable[str]) -> set[str]:
    name = socket.gethostname().lower()
    return {"localhost", device.lower(), name, name.split(".")[0], f"{name.split('.')[0]}.local",
            *(h.lower() for h in extra)}


_PORT = re.compile(r"(:\d{1,5})?")


def _host_name(header: str) -> str | None:
    """The name in a Host header without its port; None when it is not `name[:port]` or `[v6][:port]`."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8080
        end = header.find("]")
        return header[1:end] if end > 0 and _PORT.fullmatch(header[end + 1:]) else None
    if header.count(":") == 1:
        name, port = header.split(":")
        return name if port.isdigit() and len(port) <= 5 else None
    return header


def is_allowed(header: str | None, names: set[str]) -> bool:
    if not header:
        return False
    host = _host_name(header)
    if not host:
        return False
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True  # an address names this device itself, never another site
    except ValueError:
        return host in names


class HostCheck:
    """ASGI middleware: 421 for a `Host` this device does not answer to."""

    def __init__(self, app: ASGIApp, names: set[str]) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not is_allowed(host, self.names):
                body = json.dumps({"ok": False, "detail": f"this device does not answer to the host name {host!r}; "
                                   "add it to api.allowed_hosts if it is one of its names"}).encode()
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# What the page needs and nothing more: its own scripts, styles and images (snapshots arrive as
# blob: URLs), no frames, no third-party code that could read the token the page keeps.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """ASGI middleware: every answer tells the browser to run only the device's own code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
