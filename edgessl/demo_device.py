"""The device side of `edgessl demo`: the real `edgessl` command in a child process, and its HTTP API.

The demo runs every device step as a user would type it, so it proves the CLI and the daemon,
not a library call.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "edgessl", *map(str, args)]


def edgessl(*args: object) -> str:
    """Run one `edgessl` command (shown as a user would type it); its stdout, or an error with its stderr."""
    print("$ edgessl " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd(*args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`edgessl {' '.join(map(str, args))}` failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


# ---------------------------------------------------------------- the daemon, as a child process

class DaemonProcess:
    """`edgessl run --root ROOT` in a subprocess; its log is kept, its API URL read from it."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root, self.log_path = root, log_path
        self.url: str | None = None
        self._ready = threading.Event()
        args = ["run", "--root", root, "--port", "0"]
        print("$ edgessl " + " ".join(map(str, args)), flush=True)
        self.proc = subprocess.Popen(cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                found = re.search(r"API listening on (http://\S+)", line)
                if found:
                    self.url = found.group(1)
                    self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> str:
        self._ready.wait(timeout)
        if self.url is None:
            self.stop()
            tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"the daemon did not start its API (exit code {self.proc.poll()}); its log:\n{tail}")
        return self.url

    def token(self) -> str:
        """The API token the daemon uses: the environment's, or the one it generated at first start."""
        return (os.environ.get("EDGESSL_API_TOKEN") or (self.root / "state" / "api-token").read_text()).strip()

    def serve(self, url: str) -> None:
        """`--serve`: leave the daemon running for the page until Ctrl-C."""
        print(f"\nthe daemon keeps running at {url}/ ; Ctrl-C stops it", flush=True)
        try:
            self.proc.wait()
        except KeyboardInterrupt:
            print("stopping the daemon")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)


def http(method: str, url: str, token: str | None = None, body: bytes | None = None,
          content_type: str | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc


def enroll(url: str, token: str, label: str, images: Sequence[Path]) -> Any:
    """POST /v1/classes as multipart/form-data: a `label` field and the `images` files."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\n{label}\r\n'.encode()]
    for path in images:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return http("POST", f"{url}/v1/classes", token, b"".join(parts), f"multipart/form-data; boundary={boundary}")
