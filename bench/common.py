"""Shared by the benchmarks: machine description and writing sections of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
HEADER = "# Benchmarks\n\nEvery section is written by the script named in it; rerun it to refresh the figures.\n"
# The reference edge CPU (AVX2 without VNNI, AVX-512 or AMX) on a CPU that has more: oneDNN (torch's
# CPU convolutions and matmuls) and OpenVINO's CPU plugin use AVX2 code only. Read at start-up,
# so set it in the environment of a child process (or before torch is imported). OpenVINO's plugin
# needs its own variable with the same value: with ONEDNN_MAX_CPU_ISA alone, OpenVINO 2026.4 fails
# to compile on an AVX-512 CPU ("object is not initialized"). torch reads only the oneDNN one.
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}


# Times one model file in a child process, so that an ISA variable is read before oneDNN starts.
# The input is random data of the model's own type (uint8 crops or float NCHW).
TIMER = r"""
import json, sys, time, numpy as np
engine, path, batch, seconds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
def data(shape, uint8):
    return rng.integers(0, 256, shape, dtype=np.uint8) if uint8 else rng.standard_normal(shape).astype(np.float32)
if engine == "onnxruntime":
    import onnxruntime as ort
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    x = data(shape, inp.type == "tensor(uint8)")
    run = lambda: s.run(None, {inp.name: x})
else:
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    shape = [batch] + [d.get_length() for d in model.inputs[0].get_partial_shape()[1:]]
    model.reshape({model.inputs[0]: shape})
    c = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                          "INFERENCE_PRECISION_HINT": "f32"})
    x = data(shape, model.inputs[0].get_element_type() == ov.Type.u8)
    req = c.create_infer_request()
    run = lambda: req.infer({0: x})
for _ in range(5):
    run()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    run(); n += 1
print(json.dumps({"img_s": n * batch / (time.perf_counter() - t0)}))
"""


def infer(engine: str, path: Path, env: dict[str, str], seconds: float, batch: int = 8, threads: int = 2) -> float:
    """Images per second of the model file `path` (ONNX or IR) in `engine` ("onnxruntime" or
    "openvino"), batch `batch`, `threads` threads, in a child process with `env` added."""
    proc = subprocess.run([sys.executable, "-c", TIMER, engine, str(path), str(batch), str(seconds), str(threads)],
                          check=True, env={**os.environ, **env}, capture_output=True, text=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["img_s"])


def cifar10() -> Path:
    """The shared CIFAR-10 folders (train/, test/); exits with a clear message when they are absent."""
    cifar = SHARED_DATA / "cifar10"
    if not cifar.is_dir():
        sys.exit(f"{cifar} not found: this benchmark needs the shared CIFAR-10 folders")
    return cifar


def edgessl(*args: str, quiet: bool = False) -> str:
    """Run `edgessl ARGS` with this Python; return its stdout (stderr shows, unless quiet)."""
    print("$ edgessl", " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "edgessl", *args], check=True, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL if quiet else None).stdout


def simclr_and_evaluate(run: Path, data: Path, minutes: float, episodes: int,
                        *flags: str) -> tuple[int, dict, dict]:
    """`edgessl pretrain` SimCLR on DATA/train for `minutes` into a fresh RUN, then 5-way 5-shot
    (supports DATA/train, queries DATA/test) and k-NN; returns (steps, fewshot json, knn json)."""
    import json
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    edgessl("pretrain", "--data", str(data / "train"), "--out", str(run), "--minutes", str(minutes),
            "--method", "simclr", "--no-tensorboard", *flags, quiet=True)
    steps = len((run / "log.jsonl").read_text().splitlines())
    few = json.loads(edgessl("eval", "fewshot", str(run), "--support", str(data / "train"), "--query",
                             str(data / "test"), "--episodes", str(episodes), "--json", quiet=True))
    knn = json.loads(edgessl("eval", "knn", str(run), "--train", str(data / "train"), "--test",
                             str(data / "test"), "--json", quiet=True))
    return steps, few, knn


def machine() -> str:
    cpu = "unknown CPU"
    flags: set[str] = set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info).group(1)  # type: ignore[union-attr]
        flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return (f"{os.cpu_count()} cores ({cpu}), {' '.join(simd) or 'no AVX2'}, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}")


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- bench:{name} -->\n{body.rstrip()}\n\n"
               f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {stamp}\n<!-- /bench:{name} -->")
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    print(f"wrote section '{name}' of {DOC}")
