"""INT8 on the student: where a depthwise MobileNetV3-small loses its INT8 speed-up on an AVX2
CPU, which quantization variants help, and a plain-convolution student that quantizes well.

    python bench/int8_student.py                 # about 25 min on 2 cores
    python bench/int8_student.py --skip-train    # reuse runs/bench-int8/*

1. Pretrains each student (SimCLR on CIFAR-10 train/, upscaled to 224x224) for --minutes:
   `mobilenetv3_small` (depthwise, squeeze-excite, hard-swish) and `resnet_tiny` with the
   ImageNet stem (one basic block of plain 3x3 convolutions per stage).
2. Exports each with `edgessl export` (onnx, onnx-int8, openvino, openvino-int8; 300 calibration
   images; 5-way 5-shot with supports from train/, queries from test/, 100 images per class).
3. For MobileNetV3-small, more INT8 variants from the same fp32 model, side by side: ONNX Runtime
   with only the weight layers quantized, and with the depthwise convolutions in fp32 too;
   NNCF with squeeze-excite and hard-swish (Multiply, HSigmoid, HSwish) in fp32.
4. Speed of every artifact (batch 8, 2 threads) on this CPU and with oneDNN held to AVX2
   (OpenVINO honours it; ONNX Runtime's MLAS kernels do not, so its rows are this CPU).
5. The per-layer profile (OpenVINO performance counters, AVX2): time per layer type, fp32 vs int8.
6. `edgessl bench`'s figures for the OpenVINO artifacts beside OpenVINO's `benchmark_app`, same
   model, threads (2), batch (1 and 8), one stream, synchronous requests, the tools taking turns
   (`--crosscheck-only` runs just this on the bundles in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import AVX2_ENV, cifar10, edgessl, infer, write_section

STUDENTS = {"mobilenetv3_small": [], "resnet_tiny": ["--backbone-opt", "small_stem=false"]}
SIZE = 224

PROFILE = r"""
import json, sys, collections, numpy as np, openvino as ov
path, batch, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
core = ov.Core()
model = core.read_model(path)
shape = [batch] + [d.get_length() for d in model.inputs[0].get_partial_shape()[1:]]
model.reshape({model.inputs[0]: shape})
c = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
                                      "INFERENCE_PRECISION_HINT": "f32"})
req = c.create_infer_request()
x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
totals = collections.defaultdict(float)
kinds = collections.defaultdict(set)
for i in range(runs + 2):
    req.infer({0: x})
    if i < 2:
        continue
    for p in req.profiling_info:
        if p.status == p.Status.EXECUTED:
            totals[p.node_type] += p.real_time.total_seconds() * 1000 / runs
            kinds[p.node_type].add(p.exec_type)
print(json.dumps({k: [v, sorted(kinds[k])] for k, v in totals.items()}))
"""


def pretrain(run: Path, backbone: str, flags: list[str], minutes: float, data: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    edgessl("pretrain", "--data", str(data / "train"), "--out", str(run), "--backbone", backbone, *flags,
            "--image-size", str(SIZE), "--view-size", "64", "--batch-size", "64", "--minutes", str(minutes),
            "--threads", "2", "--no-tensorboard", quiet=True)


def export(run: Path, out: Path, data: Path) -> dict:
    edgessl("export", str(run), "--out", str(out), "--force", "--formats", "onnx,onnx-int8,openvino,openvino-int8",
            "--calib", str(data / "train"), "--calib-size", "300", "--threads", "2", "--eval", str(data / "test"),
            "--eval-support", str(data / "train"), "--eval-per-class", "100", quiet=True)
    return json.loads((out / "manifest.json").read_text())


class Variants:
    """More INT8 forms of one checkpoint, built like export builds its formats (from the float
    fp32 model, calibrated on the same images, then the preprocessing put in the graph), and
    judged on the same 5-way 5-shot episodes."""

    def __init__(self, run: Path, work: Path, data: Path) -> None:
        from edgessl.export.bundle_writer import EvalSet, labelled_images, preprocess_spec, sample_images
        from edgessl.export.onnx_export import export_onnx
        from edgessl.export.parity import device_inputs
        from edgessl.train.checkpoint import load_backbone, load_checkpoint

        ckpt = load_checkpoint(run)
        self.spec = preprocess_spec(ckpt)
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.fp32 = export_onnx(load_backbone(ckpt), work / "float.onnx", self.spec.input_size)
        self.calib = device_inputs(sample_images(data / "train", SIZE, 300), self.spec)
        q, ql = labelled_images(data / "test", SIZE, 100)
        s, sl = labelled_images(data / "train", SIZE, 100)
        kind = "uint8-nhwc-bgr"
        self.eval = EvalSet(device_inputs(s, self.spec, kind), sl, device_inputs(q, self.spec, kind), ql)

    def finish(self, path: Path) -> Path:
        from edgessl.export.graph_input import put_preprocessing_in_graph

        put_preprocessing_in_graph(path, self.spec)
        return path

    def ort(self, name: str, *, exclude_depthwise: bool) -> Path:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        from edgessl.export.quantize_ort import QUANTIZABLE, calibrate

        cache = self.work / "calibration.json"
        if not cache.exists():
            calibrate(self.fp32, self.calib, "minmax", cache)
        graph = onnx.load(str(self.fp32)).graph
        depthwise = [n.name for n in graph.node if n.op_type == "Conv"
                     and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
        out = self.work / f"{name}.onnx"
        quantize_static(str(self.fp32), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibration_cache_path=cache,
                        op_types_to_quantize=list(QUANTIZABLE), nodes_to_exclude=depthwise if exclude_depthwise else [],
                        extra_options={"WeightSymmetric": True})
        return self.finish(out)

    def nncf(self, name: str, ignored_types: list[str]) -> Path:
        import nncf
        import openvino as ov

        model = ov.convert_model(str(self.fp32))
        present = {op.get_type_name() for op in model.get_ops()}
        scope = nncf.IgnoredScope(types=[t for t in ignored_types if t in present])
        quantized = nncf.quantize(model, nncf.Dataset([self.calib[i:i + 1] for i in range(len(self.calib))]),
                                  subset_size=len(self.calib), ignored_scope=scope)
        out = self.work / name / "model.xml"
        out.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        return self.finish(out)

    def accuracy(self, engine: str, path: Path) -> float:
        from edgessl.edge_runtime.inference.backends import load_backend

        with load_backend(engine, path, threads=2) as b:
            embed: Callable[[np.ndarray], np.ndarray] = lambda x: np.concatenate(  # noqa: E731
                [b.embed(x[i:i + 64]) for i in range(0, len(x), 64)])
            return self.eval.accuracy(embed)[0]


def profile(path: Path, runs: int = 30) -> dict[str, tuple[float, list[str]]]:
    proc = subprocess.run([sys.executable, "-c", PROFILE, str(path), "8", str(runs)], check=True,
                          env={**os.environ, **AVX2_ENV}, capture_output=True, text=True)
    return {k: (v[0], v[1]) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def benchmark_app(xml: Path, batch: int, seconds: int) -> tuple[float, float]:
    """OpenVINO's own tool on the same model, threads and batch: (median ms per call, images/s)."""
    tool = Path(sys.executable).with_name("benchmark_app")
    out = subprocess.run([str(tool), "-m", str(xml), "-d", "CPU", "-api", "sync", "-nireq", "1", "-nstreams", "1",
                          "-nthreads", "2", "-hint", "none", "-infer_precision", "f32",
                          "-shape", f"[{batch},{SIZE},{SIZE},3]", "-t", str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    median = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", out)
    if median is None:
        raise RuntimeError(f"benchmark_app printed no median latency:\n{out[-2000:]}")
    ms = float(median.group(1)) / (1000 if median.group(2) == "us" else 1)
    return ms, 1000 * batch / ms


def edgessl_bench(bundle: Path, seconds: float) -> dict[str, tuple[float, float]]:
    """(ms per image at batch 1, images/s at batch 8) per artifact, as `edgessl bench BUNDLE
    --threads 2` measures them."""
    rows = json.loads(edgessl("bench", str(bundle), "--threads", "2", "--seconds", str(seconds), "--json", quiet=True))
    return {r["name"]: (r["latency_ms_b1"], r["throughput_b8"]) for r in rows["measured"] if r.get("throughput_b8")}


def crosscheck(bundles: dict[str, Path], rounds: int, seconds: int) -> str:
    """`edgessl bench` and benchmark_app taken in turns, `rounds` times (the machine is shared:
    one pair of runs can differ by 30%); the medians side by side."""
    figures: dict[tuple[str, str], dict[str, list[float]]] = {}
    for i in range(rounds):
        for student, bundle in bundles.items():
            ours = edgessl_bench(bundle, seconds)
            for name, stem in (("openvino", "model"), ("openvino-int8", "model.int8")):
                xml = bundle / "openvino" / f"{stem}.xml"
                f = figures.setdefault((student, name), {k: [] for k in ("ms", "img_s", "vendor_ms", "vendor_img_s")})
                f["ms"].append(ours[name][0])
                f["img_s"].append(ours[name][1])
                f["vendor_ms"].append(benchmark_app(xml, 1, seconds)[0])
                f["vendor_img_s"].append(benchmark_app(xml, 8, seconds)[1])
        print(f"cross-check round {i + 1}/{rounds} done", flush=True)
    lines = ["## `edgessl bench` against OpenVINO's benchmark_app", "",
             f"Same IR, 2 threads, one stream, synchronous requests; ms per image at batch 1 and images/s at batch 8. "
             f"The two tools took turns {rounds} times ({seconds} s per figure); medians. benchmark_app: `-api sync "
             f"-nireq 1 -nstreams 1 -nthreads 2 -hint none -infer_precision f32 -shape [B,{SIZE},{SIZE},3]`; "
             "`edgessl bench BUNDLE --threads 2` (LATENCY hint, one request, random uint8 crops). Goal: within 10%.", "",
             "| student | artifact | edgessl ms b1 | benchmark_app ms b1 | diff | edgessl img/s b8 | benchmark_app img/s b8 "
             "| diff | spread of the rounds (b8, both tools) |", "|---|---|---|---|---|---|---|---|---|"]
    for (student, name), f in figures.items():
        med = {k: float(np.median(v)) for k, v in f.items()}
        spread = max(np.ptp(f["img_s"]) / med["img_s"], np.ptp(f["vendor_img_s"]) / med["vendor_img_s"])
        lines.append(f"| {student} | {name} | {med['ms']:.2f} | {med['vendor_ms']:.2f} | "
                     f"{100 * (med['ms'] - med['vendor_ms']) / med['vendor_ms']:+.1f}% | {med['img_s']:.0f} | "
                     f"{med['vendor_img_s']:.0f} | {100 * (med['img_s'] - med['vendor_img_s']) / med['vendor_img_s']:+.1f}% "
                     f"| {100 * spread:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining budget per student (default: 3)")
    p.add_argument("--seconds", type=float, default=5.0, help="timing per speed figure (default: 5)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-int8"))
    p.add_argument("--skip-train", action="store_true", help="reuse the students in --out")
    p.add_argument("--rounds", type=int, default=5, help="turns of the benchmark_app cross-check (default: 5)")
    p.add_argument("--crosscheck-only", action="store_true",
                   help="only the benchmark_app cross-check, on the bundles in --out")
    args = p.parse_args()
    bundles = {s: args.out / f"bundle-{s}" for s in STUDENTS}
    if args.crosscheck_only:
        write_section("openvino-crosscheck", crosscheck(bundles, args.rounds, int(args.seconds)))
        return
    data = cifar10()
    manifests = {}
    for student, flags in STUDENTS.items():
        run = args.out / student
        if not args.skip_train:
            pretrain(run, student, flags, args.minutes, data)
        manifests[student] = export(run, args.out / f"bundle-{student}", data)

    # -- every artifact: accuracy from the export report, speed here and with AVX2 held -----------
    rows: list[dict] = []
    for student, m in manifests.items():
        bundle = args.out / f"bundle-{student}"
        for r in m["report"]:
            if not r["in_bundle"]:
                continue
            artifact = next(a for a in m["artifacts"] if a["name"] == r["name"])
            engine = "openvino" if artifact["format"] == "openvino" else "onnxruntime"
            rows.append({"student": student, "name": r["name"], "how": "export (`edgessl export`)", "engine": engine,
                         "path": bundle / artifact["file"], "fewshot": r["fewshot"], "status": r["status"]})
    variants = Variants(args.out / "mobilenetv3_small", args.out / "variants", data)
    extra = [("onnx-int8 weight layers", "ONNX Runtime: Conv/Gemm/MatMul only (SE, hard-swish, adds in fp32)",
              "onnxruntime", lambda: variants.ort("weights-only", exclude_depthwise=False)),
             ("onnx-int8 no depthwise", "ONNX Runtime: weight layers but the depthwise convs",
              "onnxruntime", lambda: variants.ort("no-depthwise", exclude_depthwise=True)),
             ("openvino-int8 SE/h-swish fp32", "NNCF, Multiply/HSigmoid/HSwish/Sigmoid ignored (fp32)",
              "openvino", lambda: variants.nncf("ov-no-se", ["Multiply", "HSigmoid", "HSwish", "Sigmoid"]))]
    for name, how, engine, build in extra:
        path = build()
        rows.append({"student": "mobilenetv3_small", "name": name, "how": how, "engine": engine, "path": path,
                     "fewshot": variants.accuracy(engine, path), "status": "variant"})
    for row in rows:
        row["here"] = infer(row["engine"], row["path"], {}, args.seconds)
        row["avx2"] = infer(row["engine"], row["path"], AVX2_ENV, args.seconds) if row["engine"] == "openvino" \
            else None
        print(f"{row['student']} {row['name']}: {row['here']:.0f} img/s here"
              + (f", {row['avx2']:.0f} AVX2" if row["avx2"] else "") + f", 5w5s {100 * row['fewshot']:.2f}%", flush=True)

    # -- the per-layer profile and the vendor tool ---------------------------------------------
    mb = args.out / "bundle-mobilenetv3_small"
    layers = {name: profile(xml) for name, xml in (
        ("fp32", mb / "openvino" / "model.xml"), ("int8", mb / "openvino" / "model.int8.xml"),
        ("int8 SE/h-swish fp32", args.out / "variants" / "ov-no-se" / "model.xml"))}
    body = report(rows, layers, args.minutes)
    print(body)
    write_section("int8-student", body)
    check = crosscheck(bundles, args.rounds, int(args.seconds))
    print(check)
    write_section("openvino-crosscheck", check)


def report(rows: list[dict], layers: dict, minutes: float) -> str:
    fp32 = {(r["student"], r["engine"]): r for r in rows if r["name"] in ("onnx", "openvino")}
    base = {s: r for (s, e), r in fp32.items() if e == "onnxruntime"}
    lines = ["## INT8 on the student at 224x224 (AVX2 without VNNI is the reference)", "",
             f"Students pretrained {minutes:g} min each (SimCLR, CIFAR-10 train/ upscaled to 224x224), exported with "
             "`edgessl export` (preprocessing in the graph, 300 calibration images); 5-way 5-shot on 100 test queries "
             "and 100 train supports per class, 600 fixed episodes. Speed: batch 8, 2 threads, uint8 crops in; "
             "`vs fp32` divides by the same student's fp32 artifact on the same engine and CPU setting.", "",
             "| student | artifact | how | 5w5s % | vs fp32 ONNX | img/s this CPU | vs fp32 | img/s AVX2 held | "
             "vs fp32 (AVX2) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = fp32[(r["student"], r["engine"])]
        loss = 100 * (r["fewshot"] - base[r["student"]]["fewshot"])
        avx2 = "-" if r["avx2"] is None else f"{r['avx2']:.0f}"
        avx2_ratio = "-" if r["avx2"] is None else f"{r['avx2'] / ref['avx2']:.2f}x"
        lines.append(f"| {r['student']} | {r['name']} | {r['how']} | {100 * r['fewshot']:.2f} | {loss:+.2f} pt | "
                     f"{r['here']:.0f} | {r['here'] / ref['here']:.2f}x | {avx2} | {avx2_ratio} |")
    lines += ["", "ONNX Runtime's kernels (MLAS) ignore the oneDNN ISA cap, so its rows are this CPU only (it has "
              "AVX-512 VNNI and AMX: INT8 runs faster here than on the AVX2 reference).", "",
              "### Where the time goes: OpenVINO per-layer profile of mobilenetv3_small (AVX2 held, batch 8)", "",
              "| layer type | fp32 ms | int8 (export) ms | int8 / fp32 | int8, SE/h-swish fp32 ms | its / fp32 | "
              "int8 kernels |", "|---|---|---|---|---|---|---|"]
    f, q, v = layers["fp32"], layers["int8"], layers["int8 SE/h-swish fp32"]
    ms = lambda table, kind: table.get(kind, (0.0, []))[0]  # noqa: E731
    for kind in sorted(set(f) | set(q) | set(v), key=lambda k: -(ms(f, k) + ms(q, k) + ms(v, k))):
        a, b, c = ms(f, kind), ms(q, kind), ms(v, kind)
        if a + b + c < 0.05:
            continue
        lines.append(f"| {kind} | {a:.2f} | {b:.2f} | {'-' if a == 0 else f'{b / a:.2f}x'} | {c:.2f} | "
                     f"{'-' if a == 0 else f'{c / a:.2f}x'} | {', '.join(sorted(set(q.get(kind, (0.0, []))[1]) | set(v.get(kind, (0.0, []))[1]))) or '-'} |")
    tf, tq, tv = (sum(x[0] for x in t.values()) for t in (f, q, v))
    lines += [f"| **total** | {tf:.2f} | {tq:.2f} | {tq / tf:.2f}x | {tv:.2f} | {tv / tf:.2f}x | |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
