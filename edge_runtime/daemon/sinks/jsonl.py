"""JSON lines: each event appended to a file as one line; the file rotates at a size."""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field

from edgessl.edge_runtime.daemon.sinks import SinkContext, SinkEvent, SinkOptions
from edgessl.edge_runtime.schema import ConfigPath

NAME = "jsonl"
REQUIRES: tuple[str, ...] = ()


class JsonlOptions(SinkOptions):
    """Append events to a rotating JSON-lines file."""

    type: Literal["jsonl"] = Field(description="append events to a rotating JSON-lines file")
    path: ConfigPath = Field(description="events are appended here, one JSON object per line")
    max_bytes: int = Field(default=10_000_000, ge=1024, description="rotate the file when it grows past this size")
    backups: int = Field(default=5, ge=0, le=1000, description="rotated files kept (path.1 is the newest)")


Options = JsonlOptions


class JsonlSink:
    """Append each event as one JSON line; rotate at max_bytes (path.1 is the newest old file)."""

    def __init__(self, options: JsonlOptions) -> None:
        self.path = options.path
        self.max_bytes = options.max_bytes
        self.backups = options.backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: SinkEvent) -> None:
        line = json.dumps(event.as_dict(), ensure_ascii=False) + "\n"
        if self._file.tell() and self._file.tell() + len(line.encode()) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def create(options: JsonlOptions, context: SinkContext) -> JsonlSink:
    return JsonlSink(options)
