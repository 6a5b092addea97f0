"""`edgessl config`: print the daemon config's JSON schema, or check a config file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print the JSON schema of the daemon's config file, or check a config file."
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("schema", help="print the JSON schema of edge.yaml",
                       description="Print the JSON schema of the daemon's config file (every field described).")
    check = actions.add_parser("check", help="validate a config file; errors give the line of the offending key",
                               description="Validate a config file. Each error is printed as FILE:LINE:COLUMN: "
                               "key.path: message; the model's files must exist (errors), camera files and devices should "
                               "(warnings). Exit status 0 when valid, 1 otherwise.")
    check.add_argument("file", type=Path, metavar="FILE", help="the YAML config file")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.daemon.config import json_schema
    from edgessl.edge_runtime.daemon.config_file import check_paths, check_text

    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    path: Path = args.file
    try:
        text = path.read_text()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    config, errors = check_text(text, str(path), path.resolve().parent)
    if config is None:
        print("\n".join(errors), file=sys.stderr)
        print(f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}", file=sys.stderr)
        return 1
    missing, warnings = check_paths(config)
    for line in warnings:
        print(f"{path}: warning: {line}", file=sys.stderr)
    if missing:
        print("\n".join(f"{path}: {line}" for line in missing), file=sys.stderr)
        print(f"{path}: {len(missing)} error{'s' if len(missing) != 1 else ''}", file=sys.stderr)
        return 1
    model = f"bundle {config.model.bundle}" if config.model.bundle else f"device root {config.model.root}"
    sinks = [f"{name} ({options.type})" for name, options in config.sinks.items()]
    print(f"{path}: valid — device {config.device}, {len(config.cameras)} cameras "
          f"({', '.join(c.id for c in config.cameras)}), {model}, sinks: {', '.join(sinks) or 'none'}")
    return 0
