"""edgessl against a peer library, side by side in one invocation: lightly's SimCLR.

    flock /tmp/edgessl-bench.lock python bench/ssl_peer.py --minutes 5

Both train the same `resnet_tiny` (lightly's run imports train/backbones.py by file path: the
same module, not a copy) on the same folder (../shared/data/cifar10/train, labels ignored) for
the same wall-clock budget, on this machine, one after the other. lightly runs in its own
virtual environment, `runs/peer-venv` (created on first use: `pip install torch==2.14.1
torchvision==0.29.1 lightly==1.6.0`), set up as its CIFAR-10 example does: `SimCLRTransform
(input_size=32, gaussian_blur=0.0)`, `SimCLRProjectionHead(256, 512, 128)`, `NTXentLoss()`,
SGD lr 0.06, momentum 0.9, weight decay 5e-4, a torch DataLoader with `--peer-workers`
workers. edgessl runs `edgessl pretrain --data DATA --minutes M` with its defaults (SimCLR's views
are 24 px, 3/4 of the input: pass `--edgessl-args "--view-size 32"` for the same work per image as
lightly's 32-px views).

Both backbones are then evaluated by the same code: `edgessl eval fewshot` (5-way 5-shot,
supports from train/, queries from test/, 2000 episodes) and `edgessl eval knn` (k=200,
T=0.1, all of train/ -> all of test/). The ratios (edgessl / lightly) go to docs/benchmarks.md
with the command, the machine and the date. Throughput is images per second of training-loop
time (data loading and augmentation included, start-up and evaluation excluded); kernel share
is system / (user + system) CPU time of the whole training process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "runs" / "peer-venv"
PEER_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "lightly==1.6.0"]


# ---------------------------------------------------------------- the peer, run inside runs/peer-venv

def peer_worker(data: Path, out: Path, minutes: float, batch_size: int, workers: int, seed: int) -> None:
    """lightly's SimCLR, as its CIFAR-10 example sets it up; writes out/backbone.pt and out/stats.json."""
    import importlib.util

    import torch
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.simclr_transform import SimCLRTransform

    spec = importlib.util.spec_from_file_location("edgessl_backbones", ROOT / "train" / "backbones.py")
    assert spec is not None and spec.loader is not None
    backbones = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backbones)

    torch.manual_seed(seed)
    backbone = backbones.resnet_tiny()
    head = SimCLRProjectionHead(backbone.dim, 512, 128)
    model = torch.nn.Sequential(backbone, head)
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    dataset = torchvision.datasets.ImageFolder(str(data), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    t0 = time.monotonic()
    images = steps = 0
    loss_value = float("nan")
    done = False
    while not done:
        for (x0, x1), _ in loader:
            z = model(torch.cat([x0, x1]))
            loss = criterion(*z.chunk(2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(x0)
            steps += 1
            loss_value = float(loss.detach())
            if steps % 20 == 0:
                print(f"lightly step {steps}: loss {loss_value:.3f}, {images / (time.monotonic() - t0):.0f} img/s",
                      flush=True)
            if time.monotonic() - t0 > minutes * 60:
                done = True
                break
    train_s = time.monotonic() - t0
    out.mkdir(parents=True, exist_ok=True)
    torch.save(backbone.state_dict(), out / "backbone.pt")
    (out / "stats.json").write_text(json.dumps({"images": images, "steps": steps, "train_s": train_s,
                                                "loss": loss_value, "torch": torch.__version__}))


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import lightly, torchvision"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES, "opencv-python-headless"],
                       check=True)
    return python


# ---------------------------------------------------------------- the benchmark (edgessl's venv)

def timed_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a command; its wall time and CPU time split into user and system (kernel)."""
    print("$", " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall_s": time.monotonic() - t0, "user_s": user, "system_s": system,
            "kernel_share": system / max(1e-9, user + system),
            "minor_faults": after.ru_minflt - before.ru_minflt}


def peer_checkpoint(peer_dir: Path, data: Path, seed: int) -> Path:
    """An edgessl checkpoint of lightly's backbone, so that both are evaluated by the same code."""
    import torch

    from edgessl.train.backbones import create_backbone
    from edgessl.train.checkpoint import save_checkpoint
    from edgessl.train.data import ImageFolder, collate
    from edgessl.train.views import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    state = torch.load(peer_dir / "backbone.pt", map_location="cpu", weights_only=True)
    backbone = create_backbone("resnet_tiny")
    backbone.load_state_dict(state)
    backbone.eval()
    # The centring vector, as edgessl computes it: the mean feature of 2000 training images.
    ds = ImageFolder(data, 32)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:2000].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=256, collate_fn=collate)
    with torch.no_grad():
        feats = torch.cat([backbone(eval_transform(x, 32, IMAGENET_MEAN, IMAGENET_STD)) for x, _, _ in loader])
    stats = json.loads((peer_dir / "stats.json").read_text())
    return save_checkpoint(peer_dir / "checkpoints" / "last.pt", {
        "config": {"backbone": "resnet_tiny", "backbone_options": {}, "seed": seed, "method": "lightly-simclr"},
        "method_state": {f"backbone.{k}": v for k, v in state.items()},
        "step": stats["steps"], "embedding_dim": backbone.dim, "center": feats.mean(0),
        "preprocess": {"input_size": [32, 32], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                       "channel_order": "RGB", "resize": "shorter_side_crop"}})


def evaluate(run: Path, cifar: Path, episodes: int) -> dict[str, float]:
    from common import edgessl

    few = json.loads(edgessl("eval", "fewshot", str(run), "--support", str(cifar / "train"), "--query",
                             str(cifar / "test"), "--episodes", str(episodes), "--json"))
    knn = json.loads(edgessl("eval", "knn", str(run), "--train", str(cifar / "train"), "--test",
                             str(cifar / "test"), "--json"))
    return {"fewshot": few["accuracy"], "fewshot_ci95": few["ci95"], "knn": knn["top1"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5, help="training budget of each library (default: 5)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step, both libraries (default: 128)")
    p.add_argument("--peer-workers", type=int, default=2, help="lightly's DataLoader workers (default: 2)")
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ssl-peer")
    p.add_argument("--edgessl-args", default="", help="extra `edgessl pretrain` arguments, space separated")
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    p.add_argument("--avx2", action="store_true",
                   help="hold oneDNN to AVX2 for both libraries (bench/common.py AVX2_ENV), the reference edge CPU; "
                        "written to its own section")
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)  # inside runs/peer-venv
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer_worker:
        peer_worker(args.data, args.out, args.minutes, args.batch_size, args.peer_workers, args.seed)
        return

    sys.path.insert(0, str(ROOT / "bench"))
    from common import AVX2_ENV, cifar10, write_section

    cifar = cifar10()
    python = ensure_peer_venv()
    if args.avx2:
        # Both children inherit it: torch's oneDNN kernels (convolutions, matmuls) stop at AVX2, and
        # edgessl's `--precision auto` then resolves to fp32, as on a CPU without native bf16.
        os.environ.update(AVX2_ENV)
        if args.out == p.get_default("out"):
            args.out = args.out.with_name(args.out.name + "-avx2")
    peer_dir, ours_dir = args.out / "lightly", args.out / "edgessl"
    runs: dict[str, dict[str, Any]] = {}

    # lightly first, then edgessl: the same machine, one at a time.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH")}
    runs["lightly"] = timed_child([str(python), __file__, "--peer-worker", "--data", str(cifar / "train"),
                                   "--out", str(peer_dir), "--minutes", str(args.minutes), "--batch-size",
                                   str(args.batch_size), "--peer-workers", str(args.peer_workers),
                                   "--seed", str(args.seed)], env=env)
    stats = json.loads((peer_dir / "stats.json").read_text())
    runs["lightly"].update(img_per_s=stats["images"] / stats["train_s"], steps=stats["steps"])
    peer_checkpoint(peer_dir, cifar / "train", args.seed)

    if ours_dir.exists():
        import shutil

        shutil.rmtree(ours_dir)
    cmd = [sys.executable, "-m", "edgessl", "pretrain", "--data", str(cifar / "train"), "--out", str(ours_dir),
           "--minutes", str(args.minutes), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
           *args.edgessl_args.split()]
    runs["edgessl"] = timed_child(cmd)
    log = [json.loads(line) for line in (ours_dir / "log.jsonl").read_text().splitlines()]
    info = json.loads((ours_dir / "run_info.json").read_text())
    runs["edgessl"].update(img_per_s=len(log) * args.batch_size / log[-1]["elapsed_s"], steps=len(log),
                           allocator=info["allocator"], precision=info["precision"],
                           peak_gflops=info["peak_gflops"] or 0.0)
    # Achieved over the whole run (not a mean of per-step shares, which over-weights fast steps).
    runs["edgessl"]["peak_share"] = (runs["edgessl"]["img_per_s"] * info["gflop_per_sample_step"]
                                     / runs["edgessl"]["peak_gflops"]) if runs["edgessl"]["peak_gflops"] else 0.0

    for name, run in (("lightly", peer_dir), ("edgessl", ours_dir)):
        runs[name].update(evaluate(run, cifar, args.episodes))
    (args.out / "results.json").write_text(json.dumps(runs, indent=2))

    a, b = runs["edgessl"], runs["lightly"]
    # Throughput is only the same work per image when both train on views of the same size.
    views = json.loads((ours_dir / "config.json").read_text()).get("view_size") or 32
    body = (
        f"## edgessl against lightly (SimCLR, {args.minutes:g} min each"
        f"{', oneDNN held to AVX2' if args.avx2 else ''})\n\n"
        f"Same `resnet_tiny`, same data (CIFAR-10 `train/`, labels ignored), batch {args.batch_size}, "
        f"{args.minutes:g} minutes of training each, one after the other on this machine. lightly 1.6.0 "
        f"(torch {stats['torch']}) as in its CIFAR-10 example ({args.peer_workers} loader workers); edgessl "
        f"with its defaults ({a['precision']}, allocator {a['allocator']}"
        f"{', ' + args.edgessl_args if args.edgessl_args else ''}). 5-way 5-shot: supports from `train/`, "
        f"queries from `test/`, {args.episodes} episodes; k-NN: k=200, T=0.1, all of `train/` -> `test/`; "
        "both with edgessl's evaluation code. Other processes (tests of other engineers) may have run on the "
        "machine at the same time.\n\n"
        "| | lightly | edgessl | ratio |\n|---|---|---|---|\n"
        f"| training throughput (img/s; views: lightly 32 px, edgessl {views} px) | {b['img_per_s']:.0f} | "
        f"{a['img_per_s']:.0f} | "
        f"**{a['img_per_s'] / b['img_per_s']:.2f}x** |\n"
        f"| steps | {b['steps']} | {a['steps']} | |\n"
        f"| 5-way 5-shot | {100 * b['fewshot']:.2f}% ± {100 * b['fewshot_ci95']:.2f} | "
        f"{100 * a['fewshot']:.2f}% ± {100 * a['fewshot_ci95']:.2f} | "
        f"{a['fewshot'] / b['fewshot']:.3f} ({100 * (a['fewshot'] - b['fewshot']):+.2f} points) |\n"
        f"| k-NN top-1 | {100 * b['knn']:.2f}% | {100 * a['knn']:.2f}% | "
        f"{a['knn'] / b['knn']:.3f} ({100 * (a['knn'] - b['knn']):+.2f} points) |\n"
        f"| kernel share of CPU time | {100 * b['kernel_share']:.1f}% | {100 * a['kernel_share']:.1f}% | |\n"
        f"| minor page faults | {b['minor_faults']:,} | {a['minor_faults']:,} | |\n"
        f"| edgessl achieved GFLOP/s, share of nominal {a['precision']} peak ({a['peak_gflops']:.0f}) | | "
        f"{a['peak_share'] * a['peak_gflops']:.0f}, "
        f"{100 * a['peak_share']:.0f}% | |\n"
    )
    print(body)
    if not args.no_write:
        write_section("ssl-peer-avx2" if args.avx2 else "ssl-peer", body)


if __name__ == "__main__":
    main()
