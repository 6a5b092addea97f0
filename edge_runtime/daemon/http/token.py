"""The API token of mutating routes: from a file, the environment, or generated once."""

from __future__ import annotations

import logging
import os
import secrets

from edgessl.edge_runtime.daemon.config import DaemonConfig
from edgessl.edge_runtime.daemon.errors import DaemonError

log = logging.getLogger(__name__)


def resolve_token(config: DaemonConfig) -> str:
    """The API token: api.token_file, else $EDGESSL_API_TOKEN, else state_dir/api-token (created, mode 0600)."""
    api = config.api
    if api.token_file is not None:
        try:
            token = api.token_file.read_text().strip()
        except OSError as exc:
            raise DaemonError(f"{api.token_file}: cannot read the API token: {exc.strerror or exc}") from exc
        if len(token) < 16:
            raise DaemonError(f"{api.token_file}: the API token must have at least 16 characters")
        return token
    if os.environ.get("EDGESSL_API_TOKEN"):
        return os.environ["EDGESSL_API_TOKEN"].strip()
    path = config.state_dir / "api-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        log.info("generated an API token in %s", path)
    return path.read_text().strip()
