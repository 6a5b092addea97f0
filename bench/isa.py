"""Training and inference speed on this CPU and with oneDNN held to AVX2 (the reference edge CPU).

The reference CPU has AVX2 without VNNI, AVX-512 or AMX; this machine may have more, and then
bf16 training and int8 inference run faster here than there. `ONEDNN_MAX_CPU_ISA=AVX2` (with
`OV_CPU_MAX_ISA=AVX2` for OpenVINO) makes oneDNN (torch's CPU convolutions, OpenVINO's CPU
plugin) use AVX2 code only, so both figures come from one run. ONNX Runtime's own kernels (MLAS) do not read that variable: its rows show
this CPU either way, and say so.

    python bench/isa.py [--minutes 1] [--bundle runs/demo/bundle]

Training: `edgessl pretrain` on CIFAR-10 train/ (defaults: SimCLR, resnet_tiny, --precision auto),
as is, with --precision fp32, and with ONEDNN_MAX_CPU_ISA=AVX2 (where `auto` resolves to fp32).
Inference: the bundle's ONNX files (fp32 and int8) in ONNX Runtime and OpenVINO, batch 8, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AVX2_ENV, cifar10, infer, write_section  # noqa: E402


def train_row(data: Path, minutes: float, name: str, flags: list[str], env: dict[str, str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "edgessl", "pretrain", "--data", str(data), "--out", out,
               "--minutes", str(minutes), "--no-tensorboard", *flags]
        print("$", " ".join(f"{k}={v}" for k, v in env.items()), "edgessl pretrain ...", *flags, flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines = Path(out, "log.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        config = json.loads(Path(out, "config.json").read_text())
    row = {"variant": name, "precision": config["precision"], "steps": last["step"], "img_s": last["img_per_s"],
           "gflops": last.get("gflops")}
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="pretraining budget per variant (default: 1)")
    p.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"),
                   help="a bundle with model.onnx and model.int8.onnx (default: runs/demo/bundle, from `make demo`)")
    p.add_argument("--seconds", type=float, default=5.0, help="timing per inference figure (default: 5)")
    args = p.parse_args()
    files = {"fp32": args.bundle / "model.onnx", "int8": args.bundle / "model.int8.onnx"}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: run `make demo` first or pass --bundle")

    train = cifar10() / "train"
    rows = [train_row(train, args.minutes, "this CPU, --precision auto", [], {}),
            train_row(train, args.minutes, "this CPU, --precision fp32", ["--precision", "fp32"], {}),
            train_row(train, args.minutes, "oneDNN held to AVX2, --precision auto", [], AVX2_ENV)]
    base = float(rows[1]["img_s"])  # type: ignore[arg-type]
    lines = [f"**Training** (`edgessl pretrain --data cifar10/train --minutes {args.minutes:g}`, SimCLR, "
             "`resnet_tiny` 32x32, batch 128; img/s at the end of the run, one run after the other):", "",
             "| variant | precision | steps | img/s | GFLOP/s | vs fp32 on this CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['precision']} | {r['steps']} | {r['img_s']:.0f} | {r['gflops']} | "
                     f"{float(r['img_s']) / base:.2f}x |")  # type: ignore[arg-type]

    lines += ["", f"On the AVX2 reference `--precision auto` trains in fp32: {float(rows[2]['img_s']):.0f} img/s, "
              f"{float(rows[2]['img_s']) / float(rows[0]['img_s']):.2f}x of this CPU's default."]  # type: ignore[arg-type]
    lines += ["", f"**Inference** (`{args.bundle}`: model.onnx and model.int8.onnx, batch 8, 2 threads, "
              f"{args.seconds:g} s each; OpenVINO reads the same ONNX files):", "",
              "| engine | precision | this CPU img/s | oneDNN held to AVX2 img/s | AVX2 / this CPU |", "|---|---|---|---|---|"]
    for engine in ("onnxruntime", "openvino"):
        for precision, path in files.items():
            here, avx2 = infer(engine, path, {}, args.seconds), infer(engine, path, AVX2_ENV, args.seconds)
            print(f"{engine} {precision}: {here:.0f} img/s here, {avx2:.0f} with AVX2 held", flush=True)
            lines.append(f"| {engine} | {precision} | {here:.0f} | {avx2:.0f} | {avx2 / here:.2f}x |")
    lines += ["", "ONNX Runtime's CPU kernels (MLAS) choose their instructions themselves and ignore "
              "both variables: its two columns are both this CPU (with VNNI, int8 runs faster here than "
              "on an AVX2-only CPU). OpenVINO's and torch's oneDNN kernels honour it."]
    body = "\n".join(lines)
    print(body)
    write_section("isa", "## This CPU against the AVX2 reference (oneDNN held to AVX2)\n\n" + body)


if __name__ == "__main__":
    main()
