"""The API token: from a file, the environment, or generated once into the state folder.

Every source must give at least MIN_CHARS characters, and a short or empty one stops the
start with a message that says how to fix it: an empty token must never let an empty
`Authorization: Bearer` in. The generated one is written atomically (temp file, fsync,
rename, fsync of the folder), so a first start that dies while writing it (a full disk, a
power cut) leaves no file, or a whole one, never an empty one.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from edgessl.edge_runtime.bundle.safe_extract import fsync_dir
from edgessl.edge_runtime.daemon.config import DaemonConfig
from edgessl.edge_runtime.daemon.errors import DaemonError

log = logging.getLogger(__name__)

MIN_CHARS = 16
ENV = "EDGESSL_API_TOKEN"
FILE = "api-token"


class TokenError(DaemonError):
    """No usable API token: the daemon does not start."""


def _checked(token: str, source: str, fix: str) -> str:
    if len(token) < MIN_CHARS:
        what = "is empty" if not token else f"has {len(token)} characters"
        raise TokenError(f"the API token from {source} {what}; at least {MIN_CHARS} are needed ({fix})")
    return token


def generate(path: Path) -> str:
    """A new token in `path` (mode 0600), written atomically."""
    token = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("generated an API token in %s", path)
    return token


def resolve_token(config: DaemonConfig) -> str:
    """api.token_file, else $EDGESSL_API_TOKEN, else state_dir/api-token (generated on first start)."""
    api = config.api
    if api.token_file is not None:
        try:
            token = api.token_file.read_text().strip()
        except OSError as exc:
            raise TokenError(f"{api.token_file}: cannot read the API token: {exc.strerror or exc}") from exc
        return _checked(token, str(api.token_file), f"write a longer one into {api.token_file}, e.g. "
                        "`head -c 24 /dev/urandom | base64`")
    if ENV in os.environ:
        return _checked(os.environ[ENV].strip(), f"${ENV}", f"set ${ENV} to a longer one, or unset it to use a "
                        "generated one")
    path = config.state_dir / FILE
    try:
        token = path.read_text().strip() if path.exists() else generate(path)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read or write the API token: {exc.strerror or exc}") from exc
    return _checked(token, str(path), f"delete {path} to have a new one generated at the next start, or write "
                    f"one of {MIN_CHARS}+ characters into it")
