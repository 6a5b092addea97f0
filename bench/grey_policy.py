"""The augmentation policy on grey data: `--augment auto` against the natural-image defaults.

    flock /tmp/edgessl-bench.lock python bench/grey_policy.py --minutes 5 [--avx2]

CIFAR-10 is converted to grey once (`cv2.COLOR_BGR2GRAY`, written back as 3 equal channels,
JPEG quality 95) under runs/cifar10-grey, `train/` and `test/` alike, so supports and queries are
grey too. SimCLR is trained twice on grey `train/` with the same budget, one run after the other:
with `--augment auto`, which measures the data and picks the `grey` policy, and with
`--augment natural`, SimCLR's recipe for photographs. With `--colour-control`, two more runs on
the colour images ask whether the grey policy's gain is about grey data: the natural recipe
alone and with the grey policy's extra operation added. Each run is evaluated by `edgessl eval
fewshot` (5-way 5-shot, 2000 episodes) and `edgessl eval knn` (k=200, T=0.1). The table goes to
docs/benchmarks.md, section `augment-grey-<minutes>min` (`-avx2` with --avx2, `-seedN` with --seed N).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import AVX2_ENV, cifar10, simclr_and_evaluate, write_section  # noqa: E402

GREY = ROOT / "runs" / "cifar10-grey"


def grey_copy(colour: Path, out: Path = GREY) -> Path:
    """CIFAR-10 in grey, made once (about 10 s); a finished copy is reused."""
    import cv2

    done = out / ".complete"
    if done.exists():
        return out
    files = sorted(colour.rglob("*.jpg"))
    for i, f in enumerate(files):
        target = out / f.relative_to(colour)
        target.parent.mkdir(parents=True, exist_ok=True)
        grey = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(target), cv2.merge([grey, grey, grey]), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if i % 10000 == 0:
            print(f"grey copy: {i}/{len(files)}", flush=True)
    done.touch()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5, help="training budget of every run (default: 5)")
    p.add_argument("--episodes", type=int, default=2000, help="few-shot episodes per evaluation (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run (default: 0)")
    p.add_argument("--colour-control", action="store_true",
                   help="also train on the colour images: natural, and natural + the grey policy's extra operations")
    p.add_argument("--avx2", action="store_true",
                   help="hold oneDNN to AVX2 (the reference edge CPU; `auto` precision is then fp32), its own section")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-grey")
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = p.parse_args()
    colour = cifar10()
    grey = grey_copy(colour)
    if args.avx2:
        os.environ.update(AVX2_ENV)  # every `edgessl` child reads it at start

    from edgessl.train.augment import POLICIES

    extra = {k: v for k, v in POLICIES["grey"].items() if k not in POLICIES["natural"] and v}
    runs = [("grey", "`auto` (picks `grey`)", grey, ["--augment", "auto"]),
            ("grey", "`natural` (SimCLR's recipe)", grey, ["--augment", "natural"])]
    if args.colour_control:
        extra_args = [a for k, v in extra.items() for a in ("--augment-opt", f"{k}={v}")]
        runs += [("colour", "`natural`", colour, ["--augment", "natural"]),
                 ("colour", "`natural` + " + ", ".join(f"{k}={v}" for k, v in extra.items()), colour,
                  ["--augment", "natural", *extra_args])]

    rows = []
    for i, (kind, name, data, flags) in enumerate(runs):
        run = args.out / f"r{i}"
        steps, few, knn = simclr_and_evaluate(run, data, args.minutes, args.episodes, "--seed", str(args.seed), *flags)
        config = json.loads((run / "config.json").read_text())
        rows.append((kind, name, config["augment"], steps, few["accuracy"], few["ci95"], knn["top1"]))
        print(f"{kind} {name} -> {config['augment']}: {steps} steps, 5-way 5-shot {100 * few['accuracy']:.2f}% "
              f"± {100 * few['ci95']:.2f}, k-NN {100 * knn['top1']:.2f}%", flush=True)

    def gain(a: tuple, b: tuple) -> str:
        return f"{100 * (a[4] - b[4]):+.2f} points 5-way 5-shot, {100 * (a[6] - b[6]):+.2f} k-NN"

    table = "\n".join(f"| {kind} | {name} | {policy} | {steps} | {100 * acc:.2f}% ± {100 * ci:.2f} | {100 * top1:.2f}% |"
                      for kind, name, policy, steps, acc, ci, top1 in rows)
    where = ", oneDNN held to AVX2" if args.avx2 else ""
    summary = f"Grey data, `auto` against `natural`: **{gain(rows[0], rows[1])}**."
    if args.colour_control:
        summary += f" Colour data, the grey policy's extra operations added to `natural`: {gain(rows[3], rows[2])}."
    body = (f"## Augmentation policy on grey data, {args.minutes:g} min per run{where}\n\n"
            f"SimCLR, `resnet_tiny` at 32x32, {args.minutes:g} minutes per run, seed {args.seed}, one run after the "
            "other. Grey data: CIFAR-10 converted to grey (3 equal channels), `train/` for training and supports, "
            f"`test/` for queries. 5-way 5-shot over {args.episodes} episodes; k-NN k=200, T=0.1, all of `train/` "
            "-> `test/`.\n\n"
            "| data | `--augment` | policy used | steps | 5-way 5-shot | k-NN top-1 |\n"
            "|---|---|---|---|---|---|\n" + table + "\n\n" + summary + "\n")
    print(body)
    if not args.no_write:
        write_section(f"augment-grey-{args.minutes:g}min" + ("-avx2" if args.avx2 else "")
                      + (f"-seed{args.seed}" if args.seed else ""), body)


if __name__ == "__main__":
    main()
