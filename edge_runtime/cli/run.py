"""`edgessl run`: the camera inference daemon (until SIGTERM or Ctrl-C)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the camera inference daemon: read the cameras, classify their regions against the enrolled "
        "classes, smooth the labels over time, publish label changes to the sinks (MQTT, JSON lines, "
        "webhooks) and serve the HTTP API and web page. Stops cleanly on SIGTERM. With --root and no "
        "--config, the daemon runs the device root's model on the --camera sources and keeps its state "
        "(gallery, API token) in ROOT/state; ROOT/edge.yaml is used as the config when it exists.")
    parser.add_argument("--config", metavar="FILE", type=Path, default=None,
                        help="YAML config file (`edgessl config schema` prints its schema)")
    parser.add_argument("--root", metavar="DIR", type=Path, default=None,
                        help="device root: run what its health check verified and install uploads through the "
                             "A/B installer (overrides the config's model section)")
    parser.add_argument("--camera", action="append", default=[], metavar="[ID=]URL",
                        help="a video source (rtsp://, http://, /dev/videoN or a file; files loop); repeatable; "
                             "adds to the config's cameras")
    parser.add_argument("--port", type=int, default=None, metavar="N", help="HTTP port (overrides api.port)")
    parser.add_argument("--host", default=None, metavar="ADDR", help="listen address (overrides api.host)")


def _camera(text: str, index: int) -> dict[str, Any]:
    cid, sep, url = text.partition("=")
    if not sep or "://" in cid or "/" in cid:
        cid, url = f"cam{index}", text
    camera: dict[str, Any] = {"id": cid, "url": url}
    if "://" not in url and not url.startswith("/dev/video"):
        camera["loop"] = True  # a file stands in for a camera: keep it playing
    return camera


def build_config(args: argparse.Namespace) -> Any:
    from edgessl.edge_runtime.daemon.config import ConfigError, DaemonConfig
    from edgessl.edge_runtime.daemon.config_file import load_config

    config_file = args.config
    if config_file is None and args.root is not None and (args.root / "edge.yaml").is_file():
        config_file = args.root / "edge.yaml"
    cameras = [_camera(text, i) for i, text in enumerate(args.camera, start=1)]
    if config_file is not None:
        config = load_config(config_file)
        data = config.model_dump(mode="json", exclude_unset=True)
        data["cameras"] = [*data.get("cameras", []), *cameras]
    elif args.root is not None:
        if not cameras:
            raise ConfigError("nothing to watch: give --camera URL (repeatable) or --config FILE")
        data = {"state_dir": str((args.root / "state").resolve()), "model": {"root": str(args.root.resolve())},
                "cameras": cameras}
    else:
        raise ConfigError("give --config FILE, or --root DEVICE_ROOT with --camera URL")
    if args.root is not None:
        data["model"] = {**{k: v for k, v in data.get("model", {}).items() if k != "bundle"},
                         "root": str(args.root.resolve())}
    api = data.setdefault("api", {})
    if args.port is not None:
        api["port"] = args.port
    if args.host is not None:
        api["host"] = args.host
    try:
        return DaemonConfig.model_validate(data)
    except Exception as exc:  # pydantic's ValidationError: one line per problem
        raise ConfigError(f"invalid daemon settings: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.memory import tune_malloc

    tune_malloc()  # before any thread allocates: fewer malloc arenas, freed batches go back to the system

    from edgessl.edge_runtime.daemon.core import Daemon
    from edgessl.edge_runtime.daemon.logs import bound_logging

    config = build_config(args)
    logging.getLogger().setLevel(config.log_level)
    bound_logging()  # secrets redacted, floods of one kind of line cut (a hostile client cannot fill the disk)
    return Daemon(config).run_forever()
