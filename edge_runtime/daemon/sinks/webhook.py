"""Webhook: each event POSTed as JSON, retried with a doubling delay."""

from __future__ import annotations

import threading
from typing import Literal

from pydantic import Field

from edgessl.edge_runtime.daemon.sinks import SinkContext, SinkEvent, SinkOptions

NAME = "webhook"
REQUIRES: tuple[str, ...] = ("httpx",)


class WebhookOptions(SinkOptions):
    """POST events to an HTTP endpoint."""

    type: Literal["webhook"] = Field(description="POST each event as JSON to an HTTP endpoint")
    url: str = Field(pattern=r"^https?://", description="every event is POSTed here as JSON")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers, e.g. Authorization")
    timeout_s: float = Field(default=5.0, gt=0, le=300, description="timeout of one request")
    retries: int = Field(default=3, ge=0, le=100, description="further attempts after a failed request")
    backoff_s: float = Field(default=1.0, ge=0, le=300, description="delay before the first retry; doubles after each")


Options = WebhookOptions


class WebhookSink:
    """POST each event as JSON; retry with a doubling delay; raise when every attempt failed."""

    def __init__(self, options: WebhookOptions, stop: threading.Event | None = None) -> None:
        import httpx

        self.options = options
        self._stop = stop or threading.Event()  # the daemon's: its stop cuts a retry delay short
        self._own_stop = stop is None
        self._client = httpx.Client(timeout=options.timeout_s, headers=options.headers)

    def __call__(self, event: SinkEvent) -> None:
        import httpx

        delay = self.options.backoff_s
        error: Exception | None = None
        for attempt in range(self.options.retries + 1):
            if attempt:
                if self._stop.wait(delay):
                    break
                delay *= 2
            try:
                response = self._client.post(self.options.url, json=event.as_dict())
                if response.status_code < 400:
                    return
                error = RuntimeError(f"{self.options.url} answered {response.status_code}")
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the request is wrong: retrying will not help
            except httpx.HTTPError as exc:
                error = exc
        raise RuntimeError(f"webhook {self.options.url}: not delivered: {error}")

    def close(self) -> None:
        if self._own_stop:
            self._stop.set()
        self._client.close()


def create(options: WebhookOptions, context: SinkContext) -> WebhookSink:
    return WebhookSink(options, context.stop)
