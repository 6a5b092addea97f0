"""The `edgessl` command.

Sub-commands are imported only when they are used, so `edgessl --help` and the edge
sub-commands start on a device that has no torch. Each command module exposes
`add_arguments(parser)` and `run(args) -> int`, and imports its heavy dependencies inside
`run`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from edgessl import __version__
from edgessl.errors import EdgesslError


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    extra: str  # the pip extra that provides what the command imports


COMMANDS: dict[str, Command] = {
    "pretrain": Command("edgessl.train.cli", "self-supervised pretraining on unlabeled images", "train"),
    "distill": Command("edgessl.train.distill_cli", "distill a teacher into a small student for the edge", "train"),
    "eval": Command("edgessl.train.eval_cli", "evaluate a checkpoint: k-NN, linear probe, few-shot episodes", "train"),
    "adapt": Command("edgessl.export.adapt_cli", "continue SSL on a site's harvested footage, distil, export v+1", "export"),
    "loop": Command("edgessl.loop", "the closed loop once: collect -> adapt -> gate -> sign -> flash a fleet", "all"),
    "export": Command("edgessl.export.cli", "export a checkpoint to a verified bundle: ONNX, INT8, OpenVINO, TensorRT", "export"),
    "enroll": Command("edgessl.edge_runtime.cli.enroll", "enroll a class from a few images (on device)", "edge"),
    "classify": Command("edgessl.edge_runtime.cli.classify", "classify images, folders or videos (on device)", "edge"),
    "gallery": Command("edgessl.edge_runtime.cli.gallery", "list or forget enrolled classes (on device)", "edge"),
    "bench": Command("edgessl.edge_runtime.cli.bench", "show a bundle's parity/speed report, re-measured here", "edge"),
    "demo": Command("edgessl.demo", "the whole pipeline end to end on generated data", "all"),
    # The camera daemon (device side).
    "run": Command("edgessl.edge_runtime.cli.run", "run the camera inference daemon (on device)", "edge"),
    "config": Command("edgessl.edge_runtime.cli.config", "print the daemon config schema or check a config file", "edge"),
    # Flashing: device side (device root, A/B slots) and operator side (profiles, keys, fleets).
    "device": Command("edgessl.edge_runtime.cli.device", "provision a device root, show status, roll back", "edge"),
    "devices": Command("edgessl.devices.cli_devices", "list or show device profiles", "edge"),
    "keys": Command("edgessl.devices.cli_keys", "generate an ed25519 signing key pair", "edge"),
    "sign": Command("edgessl.devices.cli_sign", "sign a bundle's manifest", "edge"),
    "collect": Command("edgessl.devices.cli_collect", "harvest collected samples and eval sets from devices", "edge"),
    "flash": Command("edgessl.devices.cli_flash", "install a bundle on a device root, a daemon or a fleet", "edge"),
}

# Import names that belong to an optional extra; a missing one gets an install hint.
_EXTRA_MODULES = {"torch", "onnx", "onnxscript", "onnxruntime", "cv2", "cryptography", "openvino", "nncf", "tensorrt"}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgessl",
        description="Pretrain self-supervised vision models, export them to signed edge bundles, "
        "and enroll/classify new classes on device with a few examples.",
        epilog="Run `edgessl COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"edgessl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=f"{cmd.help} [needs edgessl[{cmd.extra}]]")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # prints help/version or a "invalid choice" error and exits
        return 2
    name, cmd = argv[0], COMMANDS[argv[0]]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        module = importlib.import_module(cmd.module)
        parser = argparse.ArgumentParser(prog=f"edgessl {name}", description=cmd.help)
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in _EXTRA_MODULES:
            print(f"edgessl {name}: needs the Python package '{missing}'; "
                  f"install it with: pip install 'edgessl[{cmd.extra}]'", file=sys.stderr)
            return 3
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EdgesslError as exc:
        print(f"edgessl {name}: error: {exc}", file=sys.stderr)
        return 1
