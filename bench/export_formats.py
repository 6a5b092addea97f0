"""Distillation and export formats on CIFAR-10 .

    python bench/export_formats.py              # about 25 min on 2 cores

1. Distills the CIFAR-10 SimCLR teacher (bench/fewshot_cifar.py's run) into a MobileNetV3-small
   student at 32x32 (>= 4x fewer FLOPs), and compares 5-way 5-shot accuracy (supports from
   train/, queries from test/, 1000 episodes).
2. Exports the student to onnx, onnx-int8, openvino, openvino-int8 with calibration on train/
   and few-shot evaluation on test/: parity, accuracy, size and speed (2 threads) per format.
3. Speed side by side at 224x224, batch 8, 2 threads: a ResNet-18 (weights from two training
   steps; only speed is meaningful there) and a MobileNetV3-small student distilled briefly
   from the teacher on upscaled images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import cifar10, edgessl, write_section


def mmacs(run: Path) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgessl.train.checkpoint import load_backbone, load_checkpoint

    ckpt = load_checkpoint(run)
    model = load_backbone(ckpt)
    size = ckpt["preprocess"]["input_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 2 / 1e6


def fewshot(run: Path, cifar: Path) -> dict:
    return json.loads(edgessl("eval", "fewshot", str(run), "--support", str(cifar / "train"), "--query",
                              str(cifar / "test"), "--episodes", "1000", "--json"))


def export(run: Path, out: Path, cifar: Path, size_note: str, evaluate: bool) -> list[dict]:
    args = ["export", str(run), "--out", str(out), "--force", "--formats", "onnx,onnx-int8,openvino,openvino-int8",
            "--calib", str(cifar / "train"), "--calib-size", "300", "--threads", "2", "--device", "x86-cpu",
            "--device", "raspberry-pi-5", "--device", "intel-nuc"]
    if evaluate:
        args += ["--eval", str(cifar / "test"), "--eval-support", str(cifar / "train"), "--eval-per-class", "100"]
    print(edgessl(*args))
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"{size_note}: defaults {manifest['defaults']}")
    return manifest


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(manifest: dict, with_acc: bool) -> str:
    rows = {r["name"]: r for r in manifest["report"]}
    fp32 = rows["onnx"]
    lines = ["| format | status | size MB | centred min | cos median | cos p1 |" + (" 5w5s % |" if with_acc else "")
             + " ms/img b1 | img/s b8 | b8 speed vs fp32 ORT |",
             "|---|---|---|---|---|---|" + ("---|" if with_acc else "") + "---|---|---|"]
    for name, r in rows.items():
        acc = f" {_num(None if r.get('fewshot') is None else 100 * r['fewshot'], '.2f')} |" if with_acc else ""
        ratio = r["throughput_b8"] / fp32["throughput_b8"] if r.get("throughput_b8") else None
        size = None if r.get("size_bytes") is None else r["size_bytes"] / 1e6
        lines.append(f"| {name} | {r['status']} | {_num(size, '.2f')} | {_num(r.get('centred_min'), '.4f')} | "
                     f"{_num(r.get('cosine_median'), '.5f')} | {_num(r.get('cosine_p1'), '.5f')} |{acc} "
                     f"{_num(r.get('latency_ms_b1'), '.2f')} | {_num(r.get('throughput_b8'), '.0f')} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    defaults = ", ".join(f"{k}: `{v}`" for k, v in manifest["defaults"].items())
    return "\n".join(lines) + ("\n\nParity gate: `centred min`, the lowest centred cosine to fp32 (the device "
                               "health check's figure; int8 threshold 0.95). Defaults written to the manifest "
                               f"(fastest measured that passes the profile's threshold): {defaults}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, default=Path("runs/bench-fewshot-cifar"))
    p.add_argument("--minutes", type=float, default=8, help="distillation budget at 32x32")
    p.add_argument("--minutes-224", type=float, default=3, help="distillation budget at 224x224")
    p.add_argument("--out", type=Path, default=Path("runs/bench-export"))
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    cifar = cifar10()
    if not (args.teacher / "checkpoints" / "last.pt").is_file():
        sys.exit(f"needs a teacher run at {args.teacher} (python bench/fewshot_cifar.py)")
    out = args.out
    student, student224, r18 = out / "student32", out / "student224", out / "resnet18-224"
    common = ["--data", str(cifar / "train"), "--threads", "2"]
    if not args.skip_train:
        edgessl("distill", "--teacher", str(args.teacher), "--student", "mobilenetv3_small", "--backbone-opt",
                "small_stem=true", "--out", str(student), "--image-size", "32", "--batch-size", "128",
                "--minutes", str(args.minutes), "--qat-fraction", "0.2", *common)
        edgessl("distill", "--teacher", str(args.teacher), "--student", "mobilenetv3_small", "--out", str(student224),
                "--image-size", "224", "--batch-size", "32", "--minutes", str(args.minutes_224), *common)
        edgessl("pretrain", "--backbone", "resnet18", "--out", str(r18), "--image-size", "224", "--batch-size", "8",
                "--epochs", str(16 / 50000), *common)

    teacher_acc, student_acc = fewshot(args.teacher, cifar), fewshot(student, cifar)
    t_mac, s_mac = mmacs(args.teacher), mmacs(student)
    m32 = export(student, out / "bundle-student32", cifar, "student 32", evaluate=True)
    m224 = export(student224, out / "bundle-student224", cifar, "student 224", evaluate=False)
    mr18 = export(r18, out / "bundle-resnet18-224", cifar, "resnet18 224", evaluate=False)

    keep = student_acc["accuracy"] / teacher_acc["accuracy"]
    rows32 = {r["name"]: r for r in m32["report"]}
    body = (
        "## Distillation and export formats\n\n"
        f"Teacher: SimCLR `resnet_tiny` from `bench/fewshot_cifar.py` ({t_mac:.1f} MMACs at 32x32). Student: "
        f"`mobilenetv3_small` (small-image stem, {s_mac:.1f} MMACs, **{t_mac / s_mac:.1f}x fewer**), distilled for "
        f"{args.minutes:g} min on CIFAR-10 `train/` (unlabeled; cosine + similarity-structure loss, 8-bit fake-quant "
        "noise in the last 20%).\n\n"
        "| model | 5-way 5-shot (train supports, test queries, 1000 episodes) |\n|---|---|\n"
        f"| teacher | {100 * teacher_acc['accuracy']:.2f}% ± {100 * teacher_acc['ci95']:.2f} |\n"
        f"| student | {100 * student_acc['accuracy']:.2f}% ± {100 * student_acc['ci95']:.2f} |\n"
        f"| student / teacher | **{100 * keep:.1f}%** (goal: at least 95%) |\n\n"
        "### The student's formats at 32x32 (2 threads; 5w5s on 100 images per class, 600 fixed episodes)\n\n"
        + table(m32, with_acc=True)
        + f"\nINT8 accuracy change against fp32 ONNX: onnx-int8 "
        f"{100 * (rows32['onnx-int8']['fewshot'] - rows32['onnx']['fewshot']):+.2f} points, openvino-int8 "
        f"{100 * (rows32['openvino-int8']['fewshot'] - rows32['onnx']['fewshot']):+.2f} points (limit: -1.0).\n\n"
        "### Speed at 224x224, batch 8, 2 threads, side by side in one run\n\n"
        "ResNet-18 (random weights after two training steps: only the speed figures mean something):\n\n"
        + table(mr18, with_acc=False)
        + f"\nMobileNetV3-small student distilled for {args.minutes_224:g} min at 224x224 on upscaled CIFAR-10:\n\n"
        + table(m224, with_acc=False)
    )
    print(body)
    write_section("export-formats", body)


if __name__ == "__main__":
    main()
