"""`edgessl run`: the camera inference daemon (until SIGTERM or Ctrl-C)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the camera inference daemon: read the cameras of the config file, classify their regions "
        "against the enrolled classes, smooth the labels over time, publish label changes to the sinks "
        "(MQTT, JSON lines, webhooks) and serve the HTTP API and web page. Stops cleanly on SIGTERM.")
    parser.add_argument("--config", required=True, metavar="FILE", type=Path,
                        help="YAML config file (`edgessl config schema` prints its schema)")
    parser.add_argument("--root", metavar="DIR", type=Path, default=None,
                        help="device root: run its active bundle and install uploads through the A/B "
                             "installer (overrides the config's model section)")
    parser.add_argument("--port", type=int, default=None, metavar="N", help="HTTP port (overrides api.port)")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.daemon.config import load_config
    from edgessl.edge_runtime.daemon.core import Daemon

    config = load_config(args.config)
    if args.root is not None:
        model = config.model.model_copy(update={"root": args.root.resolve(), "bundle": None})
        config = config.model_copy(update={"model": model})
    if args.port is not None:
        config = config.model_copy(update={"api": config.api.model_copy(update={"port": args.port})})
    logging.getLogger().setLevel(config.log_level)
    return Daemon(config).run_forever()
