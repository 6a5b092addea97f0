"""`edgessl eval fewshot`: N-way K-shot accuracy of a checkpoint's frozen features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    f = sub.add_parser("fewshot", help="N-way K-shot episodes, nearest centred prototype (the device's code)",
                       description="Supports are drawn from --support, queries from --query (one sub-folder "
                       "per class in both). Prints mean accuracy and its 95%% interval; features are cached "
                       "in RUN/features/.")
    f.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    f.add_argument("--support", type=Path, required=True, help="labelled folder for supports (e.g. train/)")
    f.add_argument("--query", type=Path, required=True, help="labelled folder for queries (e.g. test/)")
    f.add_argument("--way", type=int, default=5, help="classes per episode (default: 5)")
    f.add_argument("--shot", type=int, default=5, help="supports per class (default: 5)")
    f.add_argument("--queries", type=int, default=15, help="queries per class and episode (default: 15)")
    f.add_argument("--episodes", type=int, default=1000, help="number of episodes (default: 1000)")
    f.add_argument("--per-class", type=int, default=500,
                   help="images per class whose features are extracted (default: 500)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--random-weights", action="store_true",
                   help="evaluate the same architecture with untrained weights (the baseline)")
    f.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from edgessl.train.evaluate import fewshot

    r = fewshot(args.checkpoint, args.support, args.query, way=args.way, shot=args.shot, queries=args.queries,
                episodes=args.episodes, per_class=args.per_class, seed=args.seed,
                random_weights=args.random_weights)
    if args.json:
        print(json.dumps(r))
    else:
        kind = "random weights" if r["random_weights"] else "trained"
        print(f"{r['way']}-way {r['shot']}-shot ({kind}, {r['episodes']} episodes): "
              f"{100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}")
    return 0
