"""The recorded recipe sweep: SimCLR on CIFAR-10 at a fixed budget, one setting at a time.

    flock /tmp/edgessl-bench.lock python bench/recipes.py --minutes 5

Each variant changes one setting of `edgessl pretrain`'s SimCLR recipe (train/methods/simclr.py
`defaults` and its constructor: LARS lr 0.6 per 256 images, temperature 0.2, batch 128, crops of
at least 20% of the image) and trains for the same wall-clock budget, one after the other on this
machine, the defaults among them so that every row compares within one invocation. Each run is
then evaluated by `edgessl eval fewshot` (5-way 5-shot, supports from train/, queries from test/)
and `edgessl eval knn` (k=200, T=0.1, all of train/ -> test/). The table goes to
docs/benchmarks.md, section `recipes-<minutes>min` (`-avx2` with --avx2, as `make bench` runs it); a
default only changes when a row beats it by more than the interval.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import AVX2_ENV, cifar10, simclr_and_evaluate, write_section  # noqa: E402

# One row each: what differs from the defaults, as `edgessl pretrain` arguments.
VARIANTS: dict[str, list[str]] = {
    "defaults (lr 0.6, temperature 0.2, batch 128, crops >= 0.2, views 24 px)": [],
    "views 32 px (the input size)": ["--view-size", "32"],
    "views 20 px": ["--view-size", "20"],
    "lr 0.3": ["--lr", "0.3"],
    "lr 1.2": ["--lr", "1.2"],
    "temperature 0.1": ["--temperature", "0.1"],
    "temperature 0.5": ["--temperature", "0.5"],
    "batch 64": ["--batch-size", "64"],
    "batch 256": ["--batch-size", "256"],
    "crops >= 0.35": ["--crop-min-scale", "0.35"],
    "multi-crop: 2 small crops": ["--method-opt", "n_local=2"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5, help="training budget of every variant (default: 5)")
    p.add_argument("--episodes", type=int, default=2000, help="few-shot episodes per evaluation (default: 2000)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this variant (repeatable; the defaults always run); names: "
                        + "; ".join(VARIANTS))
    p.add_argument("--avx2", action="store_true",
                   help="hold oneDNN to AVX2 (the reference edge CPU; `auto` precision is then fp32), its own section")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-recipes")
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = p.parse_args()
    names = list(VARIANTS)
    if args.only:
        unknown = [n for n in args.only if n not in VARIANTS]
        if unknown:
            sys.exit(f"unknown variant(s) {unknown}; valid: {names}")
        names = [names[0], *[n for n in names[1:] if n in args.only]]
    cifar = cifar10()
    if args.avx2:
        os.environ.update(AVX2_ENV)  # every `edgessl` child reads it at start

    rows = []
    for i, name in enumerate(names):
        steps, few, knn = simclr_and_evaluate(args.out / f"v{i}", cifar, args.minutes, args.episodes,
                                              *VARIANTS[name])
        rows.append((name, steps, few["accuracy"], few["ci95"], knn["top1"]))
        print(f"{name}: {steps} steps, 5-way 5-shot {100 * few['accuracy']:.2f}% ± {100 * few['ci95']:.2f}, "
              f"k-NN {100 * knn['top1']:.2f}%", flush=True)

    base = rows[0]
    table = "\n".join(
        f"| {name} | {steps} | {100 * acc:.2f}% ± {100 * ci:.2f} | {100 * (acc - base[2]):+.2f} | "
        f"{100 * top1:.2f}% | {100 * (top1 - base[4]):+.2f} |"
        for name, steps, acc, ci, top1 in rows)
    where = ", oneDNN held to AVX2" if args.avx2 else ""
    body = (f"## SimCLR recipe sweep, {args.minutes:g} min per variant{where}\n\n"
            f"One setting at a time around the SimCLR defaults, `resnet_tiny` at 32x32 on CIFAR-10 `train/` "
            f"(labels ignored), {args.minutes:g} minutes each, one after the other. 5-way 5-shot over "
            f"{args.episodes} episodes (supports from `train/`, queries from `test/`); k-NN k=200, T=0.1.\n\n"
            "| variant | steps | 5-way 5-shot | vs defaults | k-NN top-1 | vs defaults |\n"
            "|---|---|---|---|---|---|\n" + table + "\n")
    print(body)
    if not args.no_write:
        write_section(f"recipes-{args.minutes:g}min" + ("-avx2" if args.avx2 else ""), body)


if __name__ == "__main__":
    main()
