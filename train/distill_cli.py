"""`edgessl distill`: train a small student to reproduce a teacher's embedding space.

Distillation is the `distill` method of the pretraining loop, so every pretraining flag
(data, length, batch, optimiser, checkpoints, --resume, torchrun) works the same here.
"""

from __future__ import annotations

import argparse

from edgessl.train import cli as pretrain_cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    pretrain_cli.add_arguments(p)
    p.description = (
        "Distill a teacher (an edgessl checkpoint, or a torch.export-ed .pt2 module such as a DINOv2 backbone "
        "you exported yourself; nothing is downloaded) into a small student on unlabeled images: cosine loss "
        "between a projection of the student's embedding and the teacher's centred embedding, plus a loss on "
        "the batch's similarity structure. Writes a checkpoint that `edgessl export` takes like any other.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (run folder or .pt) or .pt2 program")
    p.add_argument("--student", dest="backbone", required=True,
                   help="student backbone, e.g. mobilenetv3_small, resnet18, vit_tiny (see --backbone)")
    p.add_argument("--relation-weight", type=float, default=1.0,
                   help="weight of the similarity-structure loss (default: 1.0)")
    p.add_argument("--qat-fraction", type=float, default=0.0,
                   help="share of training, at the end, with 8-bit fake-quantized activations (default: 0)")
    p.add_argument("--init-from-teacher", action="store_true",
                   help="start a student of the teacher's own architecture from the teacher's weights: a "
                   "fine-tune towards the device (e.g. with --qat-fraction) that loses nothing to a short budget")
    p.set_defaults(method="distill")


def run(args: argparse.Namespace) -> int:
    args.method = "distill"
    args.method_opt = [*args.method_opt, ("teacher", str(args.teacher)),
                       ("relation_weight", args.relation_weight), ("qat_fraction", args.qat_fraction),
                       ("init_from_teacher", args.init_from_teacher)]
    return pretrain_cli.run(args)
