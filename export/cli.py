"""`edgessl export`: checkpoint -> verified bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Export a pretrained checkpoint into a bundle: model.onnx (fp32, dynamic batch), "
                     "manifest.json, center.npy and golden.npz. The ONNX model is run through the device's "
                     "preprocessing and backend on real images and compared to torch; a bundle whose outputs "
                     "disagree is not written.")
    p.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--data", type=Path, help="real images for the parity check (default: samples in the checkpoint)")
    p.add_argument("--name", help="model name in the manifest (default: the run folder's name)")
    p.add_argument("--version", type=int, default=1, help="model version, monotonic (default: 1)")
    p.add_argument("--min-cosine", type=float, default=0.9999,
                   help="least cosine between ONNX and torch embeddings on any image (default: 0.9999)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.bundle import load_bundle
    from edgessl.export.bundle_writer import export_bundle

    out = export_bundle(args.checkpoint, args.out, data=args.data, name=args.name, version=args.version,
                        min_cosine=args.min_cosine, force=args.force)
    m = load_bundle(out).manifest
    p = m.artifacts[0].parity
    print(f"bundle: {out}  ({m.model.name} v{m.model.version}, {m.embedding_dim}-d, "
          f"onnx fp32 min cosine {p['cosine_min']:.6f} on {int(p['images'])} real images)")
    return 0
