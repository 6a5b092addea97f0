"""Every SSL method on CIFAR-10 for the same CPU time, then the best three for longer.

    python bench/ssl_methods.py                       # 5 min per method, then the top 3 at 20 min (~2.5 h)
    python bench/ssl_methods.py --methods simclr,byol --minutes 0.2 --long-minutes 0 --eval-per-class 100

Image methods pretrain `resnet_tiny` (MAE: `vit_tiny`, patch 4 — it needs a ViT) on
../shared/data/cifar10/train (labels ignored). Video methods (temporal, cpc) pretrain on a
video folder: the real clips of ../shared/data/video plus videos this script renders from
CIFAR-10 training images (a slow camera pan and zoom over each image, 20 frames a scene).
Every checkpoint is evaluated on CIFAR-10 the same way: k-NN top-1 (k=200, T=0.1, train ->
test), 5-way 1-shot and 5-shot episodes (supports from train/, queries from test/, nearest
centred prototype with the device's code), against the same architecture with random weights.
Results accumulate in OUT/results.json (reruns of some methods keep the others) and the table
goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import SHARED_DATA, cifar10, edgessl, write_section

METHODS = ["simclr", "moco", "byol", "dino", "swav", "mae", "dae", "rotation", "colorization", "infomax",
           "temporal", "cpc"]
FAMILY = {"simclr": "contrastive", "moco": "contrastive", "byol": "self-distillation",
          "dino": "self-distillation", "swav": "clustering", "mae": "autoencoding", "dae": "autoencoding",
          "rotation": "pretext", "colorization": "pretext", "infomax": "mutual information",
          "temporal": "video", "cpc": "video"}
VIDEO = {"temporal", "cpc"}
CLIP_LENGTH = {"temporal": 4, "cpc": 5}
# Per-method settings for this benchmark (everything else: the method's defaults).
EXTRA: dict[str, list[str]] = {
    "simclr": ["--lr", "0.6"],  # the foundation benchmark's tuned value at batch 128
    "mae": ["--backbone", "vit_tiny", "--backbone-opt", "patch_size=4"],
}




def render_pan_videos(cifar_train: Path, out: Path, videos: int, scenes: int, frames: int = 20,
                      seed: int = 0) -> Path:
    """Videos of slow pans and zooms over CIFAR-10 training images (32x32, mp4v), plus links to
    the real videos of ../shared/data/video. Returns the folder."""
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    for real in sorted((SHARED_DATA / "video").glob("*.mp4")):
        link = out / f"real_{real.name}"
        if not link.exists():
            link.symlink_to(real.resolve())
    done = out / ".rendered"
    if done.is_file() and done.read_text() == f"{videos} {scenes} {frames} {seed}":
        return out
    files = sorted(cifar_train.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(files), videos * scenes, replace=False)
    for v in range(videos):
        writer = cv2.VideoWriter(str(out / f"pan_{v:04d}.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 10, (32, 32))
        for s in range(scenes):
            img = cv2.imread(str(files[picks[v * scenes + s]]))
            big = cv2.resize(img, (64, 64), interpolation=cv2.INTER_CUBIC)
            z0, z1 = rng.uniform(0.6, 1.0, 2)  # the window covers 60-100% of the image
            (x0, y0), (x1, y1) = rng.uniform(0, 1, (2, 2))
            for t in range(frames):
                u = t / (frames - 1)
                side = int(round(64 * (z0 + (z1 - z0) * u)))
                x = int(round((64 - side) * (x0 + (x1 - x0) * u)))
                y = int(round((64 - side) * (y0 + (y1 - y0) * u)))
                writer.write(cv2.resize(big[y:y + side, x:x + side], (32, 32), interpolation=cv2.INTER_AREA))
        writer.release()
    done.write_text(f"{videos} {scenes} {frames} {seed}")
    return out


def train(method: str, minutes: float, run: Path, data: Path, batch: int) -> dict[str, Any]:
    if not (run / "checkpoints" / "last.pt").is_file():
        args = ["pretrain", "--data", str(data), "--out", str(run), "--method", method, "--minutes", str(minutes),
                "--batch-size", str(batch), "--checkpoint-every", "1000000", "--keep-checkpoints", "0",
                *EXTRA.get(method, [])]
        if method in VIDEO:
            args += ["--method-opt", f"clip_length={CLIP_LENGTH[method]}"]
        edgessl(*args)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    frames = CLIP_LENGTH.get(method, 1)
    # Throughput after the first 5 steps (start-up), data loading included; one image = one frame.
    if len(log) > 10:
        rate = (len(log) - 5) * batch * frames / (log[-1]["elapsed_s"] - log[4]["elapsed_s"])
    else:
        rate = len(log) * batch * frames / max(1e-9, log[-1]["elapsed_s"])
    return {"steps": len(log), "minutes": log[-1]["elapsed_s"] / 60, "img_per_s": rate,
            "samples": len(log) * batch}


def evaluate(run: Path, cifar: Path, per_class: int, episodes: int, random: bool = False) -> dict[str, float]:
    extra = ["--random-weights"] if random else []
    knn = json.loads(edgessl("eval", "knn", str(run), "--train", str(cifar / "train"), "--test",
                             str(cifar / "test"), "--per-class", str(per_class), "--json", *extra, quiet=True))
    out = {"knn": knn["top1"]}
    for shot in (1, 5):
        r = json.loads(edgessl("eval", "fewshot", str(run), "--support", str(cifar / "train"), "--query",
                               str(cifar / "test"), "--shot", str(shot), "--episodes", str(episodes),
                               "--per-class", str(per_class), "--json", *extra, quiet=True))
        out[f"shot{shot}"], out[f"ci{shot}"] = r["accuracy"], r["ci95"]
    return out


def throughput(cifar: Path, out: Path, minutes: float) -> float:
    """SimCLR, resnet_tiny, 32x32, batch 256: img/s (one image = its two views) after start-up."""
    run = out / "throughput-simclr-b256"
    if not (run / "log.jsonl").is_file():
        edgessl("pretrain", "--data", str(cifar / "train"), "--out", str(run), "--minutes", str(minutes),
                "--batch-size", "256", "--checkpoint-every", "1000000", "--keep-checkpoints", "0",
                "--no-tensorboard")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    if len(log) <= 6:
        return len(log) * 256 / log[-1]["elapsed_s"]
    return (len(log) - 5) * 256 / (log[-1]["elapsed_s"] - log[4]["elapsed_s"])


def pct(x: float | None, ci: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    header = ("| method | family | trained on | backbone | budget | steps (epochs) | img/s | k-NN top-1 | "
              "5-way 1-shot | 5-way 5-shot |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for key in ("random:resnet_tiny", "random:vit_tiny"):
        if key in results and results[key].get("per_class") == args.eval_per_class:
            r = results[key]
            rows.append(f"| random weights | baseline | – | `{key.split(':')[1]}` | – | – | – | {pct(r['knn'])} | "
                        f"{pct(r['shot1'], r['ci1'])} | {pct(r['shot5'], r['ci5'])} |")
    same_eval = {"per_class": args.eval_per_class, "episodes": args.episodes}
    runs = [(k, v) for k, v in results.items() if isinstance(v, dict) and not k.startswith("random:")
            and "knn" in v and all(v.get(f) == x for f, x in same_eval.items())]
    runs.sort(key=lambda kv: (kv[1]["budget"], -kv[1]["shot5"]))
    for _, r in runs:
        m = r["method"]
        data = "video frames" if m in VIDEO else "CIFAR-10 train"
        epochs = "" if m in VIDEO else f" ({r['samples'] / 50000:.1f})"
        rows.append(f"| {m} | {FAMILY[m]} | {data} | `{r['backbone']}` | {r['budget']:g} min | {r['steps']}{epochs} | "
                    f"{r['img_per_s']:.0f} | {pct(r['knn'])} | {pct(r['shot1'], r['ci1'])} | "
                    f"{pct(r['shot5'], r['ci5'])} |")
    text = ("## Self-supervised methods on CIFAR-10\n\n"
            f"Each method pretrains for the same wall-clock budget on this machine's CPU, batch {args.batch_size}, "
            "32x32, its default optimiser settings (SimCLR: LARS lr 0.6), then its frozen backbone is evaluated on "
            "CIFAR-10: k-NN top-1 (k=200, T=0.1, weighted votes; "
            f"{args.eval_per_class} train images per class as the bank, {args.eval_per_class} test images per class), "
            f"and N-way K-shot episodes ({args.episodes} episodes, 15 queries per class, nearest centred prototype "
            "with the device's gallery code; supports from train/, queries from test/; mean ± 95% interval). "
            "Image methods train on `cifar10/train` (labels ignored); video methods on a folder of videos: the real "
            "clips of `shared/data/video` plus pans/zooms over CIFAR-10 training images rendered by the script. "
            "MAE needs a ViT, so it uses `vit_tiny` (patch 4) and has its own random baseline. img/s counts "
            "images (video: frames) per second of training, data loading included.\n\n"
            + header + "\n".join(rows) + "\n")
    failed = sorted(f"{v['method']} ({v['budget']:g} min)" for v in results.values()
                    if isinstance(v, dict) and "failed" in v)
    if failed:
        text += f"\nFailed to train or evaluate (see the run's log): {', '.join(failed)}.\n"
    if "throughput" in results:
        text += (f"\nSimCLR training throughput, `resnet_tiny`, 32x32, batch 256 (one image = its two views): "
                 f"**{results['throughput']:.0f} img/s** (bar: 135).\n")
    long = [r for _, r in runs if r["budget"] == args.long_minutes]
    if long:
        best = max(long, key=lambda r: r["shot5"])
        best_knn = max(long, key=lambda r: r["knn"])
        text += (f"\nBest at {args.long_minutes:g} min: 5-way 5-shot {pct(best['shot5'])} ({best['method']}; bar 48%), "
                 f"k-NN top-1 {pct(best_knn['knn'])} ({best_knn['method']}; bar 49%).\n")
    base = {b: results.get(f"random:{b}", {}).get("shot5") for b in ("resnet_tiny", "vit_tiny")}
    below = [f"{r['method']} ({r['budget']:g} min)" for _, r in runs
             if base.get(r["backbone"]) is not None and r["shot5"] <= base[r["backbone"]]]
    text += ("\nEvery method beats its random-weights baseline on 5-way 5-shot.\n" if not below else
             f"\nNot above the random-weights baseline on 5-way 5-shot: {', '.join(below)}.\n")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--minutes", type=float, default=5, help="budget per method (default: 5)")
    p.add_argument("--long-minutes", type=float, default=20, help="budget of the second round, 0: skip (default: 20)")
    p.add_argument("--top", type=int, default=3, help="methods in the second round (default: 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-per-class", type=int, default=1000, help="images per class for evaluation (default: 1000)")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--throughput-minutes", type=float, default=1.5, help="SimCLR batch-256 timing run, 0: skip")
    p.add_argument("--videos", type=int, default=100, help="rendered pan videos (default: 100)")
    p.add_argument("--scenes", type=int, default=20, help="scenes (CIFAR images) per rendered video (default: 20)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ssl"))
    p.add_argument("--no-doc", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = p.parse_args()
    cifar = cifar10()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    t0 = time.monotonic()
    videos = None
    if VIDEO & set(methods):
        videos = render_pan_videos(cifar / "train", args.out / "videos", args.videos, args.scenes)

    def run_one(method: str, minutes: float) -> None:
        backbone = "vit_tiny" if method == "mae" else "resnet_tiny"
        run = args.out / f"{method}-{minutes:g}min"
        data = videos if method in VIDEO else cifar / "train"
        assert data is not None
        r = {"method": method, "budget": minutes, "backbone": backbone, "per_class": args.eval_per_class,
             "episodes": args.episodes, **train(method, minutes, run, data, args.batch_size)}
        r.update(evaluate(run, cifar, args.eval_per_class, args.episodes))
        results[f"{method}@{minutes:g}"] = r
        base_key = f"random:{backbone}"
        if any(results.get(base_key, {}).get(f) != r[f] for f in ("per_class", "episodes")):
            results[base_key] = {**evaluate(run, cifar, args.eval_per_class, args.episodes, random=True),
                                 "per_class": args.eval_per_class, "episodes": args.episodes}
        save()
        print(f"{method} {minutes:g} min: k-NN {pct(r['knn'])}, 5w1s {pct(r['shot1'])}, 5w5s {pct(r['shot5'])}, "
              f"{r['img_per_s']:.0f} img/s", flush=True)

    def run_safely(method: str, minutes: float) -> None:
        # One broken method must not cost the rest of a 2.5-hour run: record it and go on.
        try:
            run_one(method, minutes)
        except subprocess.CalledProcessError as e:
            results[f"{method}@{minutes:g}"] = {"method": method, "budget": minutes, "failed": str(e)}
            save()
            print(f"{method} {minutes:g} min FAILED: {e}", flush=True)

    for m in methods:
        run_safely(m, args.minutes)
    if args.long_minutes > 0:
        first = sorted((r for r in results.values() if isinstance(r, dict) and r.get("budget") == args.minutes
                        and r.get("method") in methods and r.get("per_class") == args.eval_per_class
                        and "shot5" in r),
                       key=lambda r: -r["shot5"])
        for r in first[:args.top]:
            run_safely(r["method"], args.long_minutes)
    if args.throughput_minutes > 0:
        results["throughput"] = throughput(cifar, args.out, args.throughput_minutes)
        save()
    text = table(results, args)
    text += f"\nWall time of this invocation: {(time.monotonic() - t0) / 60:.0f} min.\n"
    print(text)
    if not args.no_doc:
        write_section("ssl", text)


if __name__ == "__main__":
    main()
