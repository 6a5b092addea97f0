"""`edgessl pretrain`: self-supervised pretraining on a folder of unlabeled images."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Pretrain a backbone with self-supervised learning on unlabeled images "
                     "(folder names are ignored). Writes RUN/checkpoints/last.pt, RUN/config.json, RUN/log.jsonl.")
    p.add_argument("--data", required=True, help="folder of images (recursive; jpg/png/webp/bmp)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--method", default="simclr", help="SSL method (default: simclr)")
    p.add_argument("--backbone", default="resnet_tiny", help="backbone (default: resnet_tiny)")
    p.add_argument("--image-size", type=int, default=32, help="training resolution (default: 32)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default: 256)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="training length in epochs (default: 10)")
    length.add_argument("--minutes", type=float, help="wall-clock budget; the lr schedule is fitted to it")
    p.add_argument("--optimizer", choices=["lars", "sgd", "adamw"], default="lars", help="(default: lars)")
    p.add_argument("--lr", type=float, help="base learning rate per 256 images (default: by optimizer)")
    p.add_argument("--temperature", type=float, default=0.2, help="contrastive temperature (default: 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoints/last.pt exactly")


def run(args: argparse.Namespace) -> int:
    from edgessl.train.pretrain import PretrainConfig, pretrain

    fields = PretrainConfig.model_fields
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    path = pretrain(cfg, resume=args.resume)
    print(f"checkpoint: {path}")
    return 0
