"""`edgessl pretrain`: self-supervised pretraining on unlabeled images, videos or shards.

Multi-GPU / multi-node: launch the same command with torchrun, e.g.
`torchrun --nproc_per_node 4 -m edgessl pretrain --data ... --out ...`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def _names() -> tuple[str, str]:
    try:
        from edgessl.train.backbones import backbone_names
        from edgessl.train.methods import method_names

        return ", ".join(method_names()), ", ".join(backbone_names())
    except ModuleNotFoundError:  # no torch: --help still works
        return "see the README", "see the README"


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (numbers, true/false), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if not isinstance(parsed, bool | int | float | str):
        raise argparse.ArgumentTypeError(f"{key}: value must be a number, true/false or a string")
    return key.strip().replace("-", "_"), parsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    methods, backbones = _names()
    p.description = ("Pretrain a backbone with self-supervised learning on unlabeled data (folder names are "
                     "ignored). Writes RUN/checkpoints/last.pt, RUN/config.json, RUN/log.jsonl, RUN/tensorboard/. "
                     "Under torchrun, one process per GPU (or CPU slot) trains with DDP.")
    p.add_argument("--data", required=True,
                   help="image folder (recursive; jpg/png/webp/bmp), video file or folder of videos, or "
                   "WebDataset-style .tar shards (a .tar, a folder of them, a glob, or shard-{000..099}.tar)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--method", default="simclr", help=f"SSL method: {methods} (default: simclr)")
    p.add_argument("--backbone", default="resnet_tiny", help=f"backbone: {backbones} (default: resnet_tiny)")
    p.add_argument("--method-opt", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. n_local=4, momentum=0.996, clip_length=8)")
    p.add_argument("--backbone-opt", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. small_stem=true, patch_size=4)")
    p.add_argument("--image-size", type=int, default=32,
                   help="the model's input resolution, what the device feeds it (default: 32)")
    p.add_argument("--view-size", type=int,
                   help="resolution of the training views, at most --image-size (default: --image-size); lower "
                        "makes more steps per minute and, with random-resized crops, shows objects at the size "
                        "whole images show them (FixRes)")
    p.add_argument("--batch-size", type=int,
                   help="global images (or clips) per optimiser step, over all processes (default: the method's, "
                        "else 256)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="training length in epochs (default: 10)")
    length.add_argument("--minutes", type=float, help="wall-clock budget; the lr schedule is fitted to it")
    p.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], help="(default: the method's)")
    p.add_argument("--lr", type=float, help="base learning rate per 256 images (default: the method's)")
    p.add_argument("--weight-decay", type=float, help="(default: the method's; never on norms and biases)")
    p.add_argument("--warmup-fraction", type=float, help="share of steps (or of the time budget) with linear warmup "
                   "(default: the method's, else 0.05)")
    p.add_argument("--temperature", type=float, help="loss temperature, for methods that have one")
    p.add_argument("--crop-min-scale", type=float,
                   help="smallest random crop as a share of the image area (default: the augmentation "
                        "policy's, else the method's, else 0.2)")
    p.add_argument("--augment", choices=["auto", "natural", "grey", "document", "thermal"],
                   help="augmentation policy; auto looks at a sample of the data: grey data gets no colour "
                        "jitter but solarisation, near-binary drawings/documents and low-contrast thermal-like "
                        "images get geometric augmentation, images smaller than --image-size larger crops "
                        "(default: auto)")
    p.add_argument("--augment-opt", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                   help="one augmentation setting over the policy, repeatable: jitter_p, brightness, contrast, "
                        "saturation, hue, gamma (largest |log gamma|), gray_p, equalize_p, solarize_p, invert_p, "
                        "blur_p, blur_sigma (pixels), noise (largest std), flip_p, rotate (degrees), shear, "
                        "min_scale")
    p.add_argument("--data-kind", choices=["auto", "images", "video", "shards"], help="(default: auto)")
    p.add_argument("--video-stride", type=int, help="use every n-th video frame (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="fp32, bf16 autocast (CPU/GPU), fp16 autocast + grad scaler (CUDA); auto: bf16 on a CPU "
                        "with native bf16 (AVX512_BF16, AMX), else fp32 (default: auto)")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="decode images every epoch instead of once into a uint8 memory map ($EDGESSL_CACHE, "
                        "default ~/.cache/edgessl)")
    p.add_argument("--accumulate", type=int, help="gradient accumulation micro-batches per step (default: 1)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                   help="under DDP, keep BatchNorm statistics per process")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint every this many minutes")
    p.add_argument("--keep-checkpoints", type=int, help="numbered step checkpoints kept (default: 3)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="do not write RUN/tensorboard")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoints/last.pt exactly")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (run folder or .pt) with a fresh optimiser and "
                        "schedule: the whole method when it fits, else the backbone (what `edgessl adapt` does)")


def _with_allocator() -> None:
    """Re-execute this `edgessl pretrain` process with a caching allocator (tcmalloc, else
    jemalloc) preloaded, or with glibc malloc tunables when neither is installed; see
    `hardware.ALLOCATORS` for why. Only when the process was started as the command (never when
    `main()` is called from Python, e.g. in tests), once (EDGESSL_ALLOCATOR_SET), and not when
    EDGESSL_ALLOCATOR=system. EDGESSL_ALLOCATOR=tcmalloc|jemalloc|glibc picks one."""
    import sys

    from edgessl.train import hardware

    if os.environ.get("EDGESSL_ALLOCATOR_SET") or sys.argv[1:2] != ["pretrain"]:
        return
    main_file = os.path.basename(sys.argv[0])
    if main_file not in ("edgessl", "__main__.py"):
        return
    wanted = os.environ.get("EDGESSL_ALLOCATOR", "auto")
    if wanted == "system":
        return
    env = dict(os.environ, EDGESSL_ALLOCATOR_SET="1")
    for name in (["tcmalloc", "jemalloc"] if wanted == "auto" else [wanted] if wanted != "glibc" else []):
        if name not in hardware.ALLOCATORS:
            raise SystemExit(f"EDGESSL_ALLOCATOR={wanted!r}: valid are auto, tcmalloc, jemalloc, glibc, system")
        lib = hardware.find_allocator(name)
        if lib:
            env["LD_PRELOAD"] = ":".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
            if name == "jemalloc":  # keep freed pages instead of returning them after 10 s
                env.setdefault("MALLOC_CONF", "dirty_decay_ms:-1,muzzy_decay_ms:-1")
            break
    else:
        env["GLIBC_TUNABLES"] = ":".join(x for x in (os.environ.get("GLIBC_TUNABLES", ""),
                                                     hardware.GLIBC_TUNABLES) if x)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "edgessl", *sys.argv[1:]], env)


def run(args: argparse.Namespace) -> int:
    _with_allocator()
    from edgessl.train.pretrain import PretrainConfig, pretrain

    fields = PretrainConfig.model_fields
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["method_options"] = dict(args.method_opt)
    values["backbone_options"] = dict(args.backbone_opt)
    values["augment_options"] = dict(args.augment_opt)
    cfg = PretrainConfig(**values)
    path = pretrain(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only the first process reports
        print(f"checkpoint: {path}")
    return 0
