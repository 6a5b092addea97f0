"""SimCLR on CIFAR-10 within a wall-clock budget, then 5-way 5-shot against random weights.

    python bench/fewshot_cifar.py --minutes 20

Pretrains `resnet_tiny` on ../shared/data/cifar10/train (labels ignored), then runs
`edgessl eval fewshot` (supports from train/, queries from test/, 1000 episodes) for the
trained and for the randomly initialised backbone, and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import cifar10, edgessl, write_section


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.6)
    p.add_argument("--out", type=Path, default=Path("runs/bench-fewshot-cifar"))
    p.add_argument("--skip-train", action="store_true", help="evaluate an existing run in --out")
    args = p.parse_args()
    cifar = cifar10()

    t0 = time.monotonic()
    if not args.skip_train:
        edgessl("pretrain", "--data", str(cifar / "train"), "--out", str(args.out), "--minutes", str(args.minutes),
                "--batch-size", str(args.batch_size), "--lr", str(args.lr))
    wall = (time.monotonic() - t0) / 60
    log = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    images = sum(args.batch_size for _ in log)
    rate = images / log[-1]["elapsed_s"]
    evals = {}
    for kind in ("trained", "random"):
        extra = ["--random-weights"] if kind == "random" else []
        out = edgessl("eval", "fewshot", str(args.out), "--support", str(cifar / "train"), "--query",
                      str(cifar / "test"), "--episodes", "1000", "--json", *extra)
        evals[kind] = json.loads(out)
    t, r = evals["trained"], evals["random"]
    table = (
        "## SimCLR on CIFAR-10, few-shot\n\n"
        f"`resnet_tiny`, 32x32, batch {args.batch_size}, LARS base lr {args.lr}, temperature 0.2, "
        f"{len(log)} steps = {images / 50000:.1f} epochs in {log[-1]['elapsed_s'] / 60:.1f} min of training "
        f"({rate:.0f} img/s, data loading included; {wall:.1f} min wall for the command).\n"
        "5-way 5-shot, nearest centred prototype (the device's gallery code), supports from `train/`, "
        "queries from `test/` (15 per class), 1000 episodes, mean ± 95% interval:\n\n"
        "| backbone weights | 5-way 5-shot |\n|---|---|\n"
        f"| random (same architecture) | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f} |\n"
        f"| SimCLR, {log[-1]['elapsed_s'] / 60:.0f} min | {100 * t['accuracy']:.2f}% ± {100 * t['ci95']:.2f} |\n"
        f"| difference | **{100 * (t['accuracy'] - r['accuracy']):+.2f} points** |\n"
    )
    print(table)
    write_section("fewshot-cifar", table)


if __name__ == "__main__":
    main()
