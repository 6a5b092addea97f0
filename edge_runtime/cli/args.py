"""Arguments shared by the on-device commands (imports nothing heavy: `--help` stays instant)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--bundle, --gallery, --backend, --threads."""
    parser.add_argument("--bundle", required=True, metavar="DIR", help="model bundle directory (with manifest.json)")
    parser.add_argument("--gallery", required=True, metavar="FILE", help="gallery database (SQLite)")
    parser.add_argument("--backend", default="onnxruntime", metavar="NAME",
                        help="inference backend (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="inference threads (default: the backend's choice)")
