"""Arguments shared by the on-device commands (imports nothing heavy: `--help` stays instant)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgessl.edge_runtime.inference.extractor import FeatureExtractor


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--bundle or --root, --gallery, --backend, --precision, --threads."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", metavar="DIR", help="model bundle directory (with manifest.json)")
    source.add_argument("--root", metavar="DIR", help="device root: run its active bundle as the device's "
                        "health check verified it (backend and artifact)")
    parser.add_argument("--gallery", required=True, metavar="FILE", help="gallery database (SQLite)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="inference backend: onnxruntime, openvino, tensorrt (default: with --root what the "
                             "device verified, else onnxruntime)")
    parser.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"),
                        help="which artifact to run (default: with --root what the device verified, else fp32)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="inference threads (default: the device profile's, else the backend's choice)")


def open_extractor(args: argparse.Namespace) -> FeatureExtractor:
    """The feature extractor that --bundle/--root and the backend flags ask for (device.selection)."""
    from dataclasses import replace
    from pathlib import Path

    from edgessl.edge_runtime.bundle.manifest import load_bundle
    from edgessl.edge_runtime.device.selection import choose
    from edgessl.edge_runtime.inference.extractor import FeatureExtractor

    explicit = {"backend": args.backend, "precision": args.precision, "threads": args.threads}
    if args.root is not None:
        from edgessl.edge_runtime.device.profiles import load_profile
        from edgessl.edge_runtime.device.slots import PROFILE_FILE, active_model

        active = active_model(args.root)
        bundle = load_bundle(active.bundle_dir)
        if args.backend is None and args.precision is None:
            plan = active.plan if args.threads is None else replace(active.plan, threads=args.threads)
        else:
            plan = choose(bundle.manifest, load_profile(Path(args.root) / PROFILE_FILE), **explicit)
    else:
        bundle = load_bundle(args.bundle)
        plan = choose(bundle.manifest, None, **explicit)
    return FeatureExtractor.from_plan(bundle, plan)
