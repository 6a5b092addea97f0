"""The camera daemon under load: 4 cameras playing video files in real time at 25 fps.

Latest-frame mode, at a load the machine sustains and at twice that load (not pipelined, the
default, and pipelined, side by side; optionally other backend thread counts), then the memory of `edgessl run` itself: VmRSS after
a minute of streaming with one camera (resnet_tiny at 32x32) and with four (the --bundle). The load is the
number of regions classified per frame (each region is one crop through the model): short
runs of the daemon find the most regions per camera it processes without dropping frames;
the second run doubles them. For each run it reports
the capture->decision latency (p50/p99), the processed frames per second of each camera,
the frames dropped (replaced by a newer one before the inference took them), the RSS over
time, and the daemon's throughput as a ratio of the raw backend's on batches of the same
sizes (measured with the four readers decoding, as during the run, and on an idle machine).

    python bench/daemon.py --minutes 10            # each load level runs 10 minutes
    python bench/daemon.py --minutes 2 --minutes-2x 10 --bundle runs/bench-int8/bundle-mobilenetv3_small
    python bench/daemon.py --minutes 1 --no-write  # a quick check

The video is ../shared/data/video/bikes.mp4 (640x272, 25 fps) when it is there, else a
rendered clip of the same size. The model is --bundle, else a stand-in made here: a 5-layer
CNN at 96x96 input (about 0.1 GFLOP per image, in the range of a small distilled edge model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import SHARED_DATA, write_section  # noqa: E402

from edgessl.edge_runtime.bundle.manifest import load_bundle  # noqa: E402
from edgessl.edge_runtime.daemon.config import DaemonConfig  # noqa: E402
from edgessl.edge_runtime.daemon.core import Daemon
from edgessl.edge_runtime.daemon.pipeline import Batch  # noqa: E402
from edgessl.edge_runtime.daemon.streams import CameraStream  # noqa: E402
from edgessl.edge_runtime.fewshot.gallery import Gallery  # noqa: E402
from edgessl.edge_runtime.inference.extractor import FeatureExtractor  # noqa: E402
from edgessl.edge_runtime.inference.preprocess import model_inputs  # noqa: E402

log = logging.getLogger("bench.daemon")
CAMERAS = 4
FPS = 25.0
WARMUP_S = 10.0  # excluded from the figures: model warm-up, first connections


# -- inputs ------------------------------------------------------------------------------------


def video(tmp: Path) -> tuple[Path, str]:
    bikes = SHARED_DATA / "video" / "bikes.mp4"
    if bikes.is_file():
        return bikes, "bikes.mp4 (640x272, 25 fps, real street footage)"
    path = tmp / "rendered.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (640, 272))
    rng = np.random.default_rng(0)
    for i in range(250):
        frame = np.clip(rng.normal(110, 30, (272, 640, 3)), 0, 255).astype(np.uint8)
        for k in range(5):
            cv2.circle(frame, ((i * (3 + k) + 120 * k) % 640, 60 + 40 * k), 25, (40 * k, 255 - 40 * k, 128), -1)
        writer.write(frame)
    writer.release()
    return path, "a rendered clip (640x272, 25 fps; ../shared/data/video/bikes.mp4 not found)"


def standin_bundle(root: Path) -> Path:
    """A bundle with a small CNN (fixed random weights) at 96x96: realistic cost, no torch."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgessl.edge_runtime.bundle.manifest import (
        Artifact,
        Manifest,
        ModelInfo,
        PreprocessSpec,
        file_entry,
        now_iso,
        write_manifest,
    )
    from edgessl.export.graph_input import fold_preprocessing

    rng = np.random.default_rng(0)
    size, widths, strides = 96, [32, 64, 128, 256, 256], [2, 2, 2, 2, 1]
    nodes, inits, cin, x = [], [], 3, "input"
    for i, (cout, stride) in enumerate(zip(widths, strides, strict=True)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"B{i}")]
        nodes += [helper.make_node("Conv", [x, f"W{i}", f"B{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        cin, x = cout, f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["embedding"], axis=1)]
    graph = helper.make_graph(nodes, "standin", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", cin])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(model.SerializeToString())
    spec = PreprocessSpec(input_size=(size, size), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    fold_preprocessing(root / "model.onnx", root / "model.onnx", spec)  # uint8 crops in, as export writes it
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    base = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    np.save(root / "center.npy", session.run(None, {"input": base})[0].mean(axis=0))
    np.savez(root / "golden.npz", inputs=base[:2], embeddings=session.run(None, {"input": base[:2]})[0])
    files = ["model.onnx", "center.npy", "golden.npz"]
    write_manifest(root, Manifest(
        created_at=now_iso(), model=ModelInfo(name="standin-cnn", version=1, backbone="cnn5", method="none"),
        preprocess=spec, embedding_dim=cin, center="center.npy", golden="golden.npz",
        artifacts=[Artifact(format="onnx", precision="fp32", file="model.onnx", input="uint8-nhwc-bgr")],
        files={f: file_entry(root / f) for f in files}))
    return root


def frames_of(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def grid(r: int, w: int, h: int) -> tuple[int, int]:
    """(columns, rows) of a grid with at least r cells that are as square as the frame allows."""
    cols = max(1, min(r, round(np.sqrt(r * w / h))))
    return cols, -(-r // cols)


def regions(r: int, w: int, h: int) -> list[dict[str, object]]:
    """r regions per frame: the first r cells of a grid over the frame."""
    cols, rows = grid(r, w, h)
    return [{"name": f"r{i}", "x": (i % cols) / cols, "y": (i // cols) / rows, "width": 1 / cols, "height": 1 / rows}
            for i in range(r)]


def region_crops(frames: list[np.ndarray], r: int) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    cols, rows = grid(r, w, h)
    ch, cw = h // rows, w // cols
    return [f[(i // cols) * ch:(i // cols + 1) * ch, (i % cols) * cw:(i % cols + 1) * cw]
            for f in frames for i in range(r)]


# -- raw backend -------------------------------------------------------------------------------


def raw_throughput(extractor: FeatureExtractor, crops: list[np.ndarray], batch: int, seconds: float,
                   with_preprocess: bool = False) -> float:
    """Crops per second of backend.embed alone on batches of `batch` crops as the model takes them
    (or of the device's preprocessing + embedding, as FeatureExtractor.embed does)."""
    crops = (crops * (batch // len(crops) + 1))[:batch]
    x = model_inputs(crops, extractor.spec, extractor.input_kind)
    extractor.backend.embed(x)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if with_preprocess:
            extractor.embed(crops, batch_size=batch)
        else:
            extractor.backend.embed(x)
        n += batch
    return n / (time.perf_counter() - start)


def with_readers(clip: Path, seconds: float, fn) -> object:  # type: ignore[no-untyped-def]
    """Run fn() while 4 camera readers decode the clip in real time (the run's background load)."""
    from edgessl.edge_runtime.daemon.config import CameraConfig

    streams = [CameraStream(CameraConfig(id=f"cam{i}", url=str(clip), loop=True, fps=FPS)) for i in range(CAMERAS)]
    for s in streams:
        s.start()
    try:
        time.sleep(1.0)
        return fn()
    finally:
        for s in streams:
            s.stop()
        for s in streams:
            s.join(5)


# -- one run -----------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_daemon(bundle: Path, clip: Path, gallery: Path, state: Path, r: int, minutes: float, threads: int,
               size: tuple[int, int], warmup_s: float = WARMUP_S, pipelined: bool = False) -> dict[str, Any]:
    config = DaemonConfig.model_validate({
        "device": "bench", "state_dir": str(state), "gallery": str(gallery),
        "model": {"bundle": str(bundle), "threads": threads},
        "cameras": [{"id": f"cam{i}", "url": str(clip), "loop": True, "fps": FPS, "regions": regions(r, *size)}
                    for i in range(CAMERAS)],
        "inference": {"max_batch": CAMERAS * r, "pipelined": pipelined},
        "api": {"enabled": False}, "log_level": "WARNING"})
    lock = threading.Lock()
    latencies: dict[str, list[float]] = defaultdict(list)
    batches: list[tuple[int, float]] = []
    measuring = threading.Event()

    def observe(stats: Batch) -> None:
        if not measuring.is_set():
            return
        with lock:
            for cam, lat in zip(stats.cameras, stats.latencies, strict=True):
                latencies[cam].append(lat)
            batches.append((stats.crops, stats.inference_s))

    rss: list[tuple[float, float]] = []
    with Daemon(config, observer=observe) as daemon:
        time.sleep(warmup_s)
        before = {cid: s.status() for cid, s in daemon.streams.items()}
        measuring.set()
        start = time.monotonic()
        end = start + minutes * 60
        while (now := time.monotonic()) < end:
            rss.append((now - start, rss_mb()))
            time.sleep(min(5.0, max(0.0, end - now)))
        measuring.clear()
        wall = time.monotonic() - start
        rss.append((wall, rss_mb()))
        after = {cid: s.status() for cid, s in daemon.streams.items()}
    with lock:
        all_lat = sorted(x for v in latencies.values() for x in v)
        infer = sorted(s for _, s in batches)
        crops = sum(c for c, _ in batches)
        sizes = [c for c, _ in batches]
    cams = {}
    captured = dropped = 0
    for cid in before:
        b, a = before[cid], after[cid]
        cams[cid] = {"processed_fps": (a.processed - b.processed) / wall, "captured_fps": (a.captured - b.captured) / wall,
                     "dropped": (a.dropped - b.dropped) / max(1, a.captured - b.captured)}
        captured += a.captured - b.captured
        dropped += a.dropped - b.dropped
    t = np.array([p[0] for p in rss])
    m = np.array([p[1] for p in rss])
    half = len(m) // 2
    return {
        "regions": r, "wall": wall, "crops_per_s": crops / wall, "offered": CAMERAS * FPS * r,
        "p50": pct(all_lat, 50), "p99": pct(all_lat, 99), "max": all_lat[-1] if all_lat else float("nan"),
        "infer_p50": pct(infer, 50), "infer_p99": pct(infer, 99), "busy": sum(infer) / wall,
        "batch_sizes": sizes, "cams": cams, "dropped": dropped / max(1, captured),
        "rss_start": float(m[0]), "rss_end": float(m[-1]), "rss_max": float(m.max()),
        "rss_first_half": float(m[:max(1, half)].mean()), "rss_second_half": float(m[half:].mean()),
        "rss_slope": float(np.polyfit(t / 60, m, 1)[0]) if len(m) > 2 else 0.0,
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- the daemon process's memory -----------------------------------------------------------------


def tiny_bundle(tmp: Path) -> Path:
    """resnet_tiny at 32x32 (the demo's size), briefly trained on a synthetic image set."""
    from edgessl.synthetic import write_image_set

    write_image_set(tmp / "images", per_class=20, size=32)
    run, out = tmp / "tiny-run", tmp / "tiny-bundle"
    subprocess.run([sys.executable, "-m", "edgessl", "pretrain", "--data", str(tmp / "images"), "--out", str(run),
                    "--backbone", "resnet_tiny", "--epochs", "1", "--batch-size", "64", "--threads", "2",
                    "--no-tensorboard"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "edgessl", "export", str(run), "--out", str(out), "--formats", "onnx"],
                   check=True, capture_output=True)
    return out


def enrolled_gallery(bundle: Path, frames: list[np.ndarray], path: Path) -> Path:
    """Five classes of five exemplars each (crops of the clip): realistic prototypes."""
    h, w = frames[0].shape[:2]
    with FeatureExtractor.from_bundle(load_bundle(bundle), threads=1) as ex, Gallery(path) as g:
        for k in range(5):
            shots = [f[:, k * w // 5:(k + 1) * w // 5] for f in frames[k * 20:k * 20 + 5]]
            g.add(f"class{k}", shots, ex.embed(shots), ex.fingerprint)
    return path


def process_memory(bundle: Path, clip: Path, gallery: Path, state: Path, cameras: int, regions_per_camera: int,
                   size: tuple[int, int], seconds: float = 60.0) -> dict[str, Any]:
    """`edgessl run` as a device runs it (API on, classes enrolled, cameras looping the clip in
    real time): /proc/PID/status after `seconds` of streaming."""
    state.mkdir(parents=True, exist_ok=True)
    config = {"device": "bench", "state_dir": str(state), "gallery": str(gallery.resolve()),
              "model": {"bundle": str(bundle.resolve())},
              "cameras": [{"id": f"cam{i}", "url": str(clip), "loop": True,
                           "regions": regions(regions_per_camera, *size)} for i in range(cameras)],
              "api": {"port": 0}, "log_level": "WARNING"}
    (state / "edge.json").write_text(json.dumps(config))
    env = {**os.environ, "EDGESSL_API_TOKEN": "bench-memory-token-0123456789"}
    proc = subprocess.Popen([sys.executable, "-m", "edgessl", "run", "--config", str(state / "edge.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"edgessl run exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            time.sleep(1.0)
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        mb = {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
        # The onnx package (its C extension) is not needed on a device; it would cost ~13 MB.
        onnx_loaded = "onnx_cpp2py_export" in Path(f"/proc/{proc.pid}/maps").read_text()
        return {"cameras": cameras, "rss": mb["VmRSS"], "anon": mb["RssAnon"], "file": mb["RssFile"],
                "peak": mb["VmHWM"], "threads": int(fields["Threads"]), "onnx_loaded": onnx_loaded}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


LAYERS = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from edgessl.edge_runtime.memory import tune_malloc
tune_malloc()
out = [("Python interpreter", rss())]
import numpy; out.append(("numpy", rss()))
import cv2; out.append(("OpenCV (cv2)", rss()))
import onnxruntime; out.append(("ONNX Runtime (import)", rss()))
from edgessl.edge_runtime.bundle.manifest import load_bundle
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.memory import release_free_memory
ex = FeatureExtractor.from_bundle(load_bundle(sys.argv[1]))
ex.embed([numpy.zeros((272, 160, 3), numpy.uint8)] * 8, batch_size=8)
release_free_memory(); out.append(("the model: an ONNX Runtime session, batch 8 run", rss()))
import fastapi, uvicorn, pydantic; out.append(("FastAPI, uvicorn, pydantic (the API)", rss()))
import edgessl.edge_runtime.daemon.core; out.append(("edgessl's daemon modules", rss()))
print(json.dumps({"layers": out, "onnx": "onnx" in sys.modules}))
"""


def memory_layers(bundle: Path) -> list[tuple[str, float]]:
    """Resident memory added by each layer of the daemon, imported one after another in a fresh
    process (no streams running): what a device pays before the first frame."""
    proc = subprocess.run([sys.executable, "-c", LAYERS, str(bundle)], check=True, capture_output=True, text=True)
    steps = json.loads(proc.stdout.strip().splitlines()[-1])["layers"]
    return [(name, mb - (steps[i - 1][1] if i else 0.0)) for i, (name, mb) in enumerate(steps)]


# -- calibration -------------------------------------------------------------------------------


def calibrate(ex: FeatureExtractor, bundle: Path, clip: Path, gallery: Path, tmp: Path, frames: list[np.ndarray],
              threads: int, size: tuple[int, int]) -> int:
    """The most regions per camera that the daemon sustains: all frames processed (at most 3%
    dropped), found by short runs of the daemon itself, starting from an estimate."""
    est = with_readers(clip, 4, lambda: raw_throughput(ex, region_crops(frames[:8], 2), CAMERAS * 2, 3,
                                                       with_preprocess=True))
    r = max(1, int(0.7 * est // (CAMERAS * FPS)))
    print(f"calibrating: preprocessing + backend {est:.0f} crops/s -> trying {r} regions per camera", flush=True)
    verdicts: dict[int, bool] = {}

    def sustained(r: int) -> bool:
        if r not in verdicts:
            res = run_daemon(bundle, clip, gallery, tmp / f"probe-{r}", r, 0.25, threads, size, warmup_s=4)
            verdicts[r] = res["dropped"] <= 0.03
            print(f"  {r} regions: {res['crops_per_s']:.0f} of {res['offered']:.0f} crops/s, "
                  f"{res['dropped']:.0%} dropped -> {'sustained' if verdicts[r] else 'not sustained'}", flush=True)
        return verdicts[r]

    if sustained(r):
        while r < 64 and sustained(r + 1):
            r += 1
    else:
        while r > 1 and not sustained(r - 1):
            r -= 1
        r = max(1, r - 1)
    return r


# -- report ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured minutes per load level (default 10)")
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: a stand-in CNN)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="backend threads (default: cores - 1, what `edgessl run` chooses)")
    parser.add_argument("--regions", type=int, default=None, help="regions per camera at the sustainable load "
                        "(default: found by short runs of the daemon)")
    parser.add_argument("--minutes-2x", type=float, default=None,
                        help="measured minutes at twice the load (default: --minutes)")
    parser.add_argument("--compare-threads", type=int, nargs="*", default=[],
                        help="also run twice the load with these backend thread counts (e.g. 1)")
    parser.add_argument("--memory-seconds", type=float, default=60.0,
                        help="streaming before VmRSS of `edgessl run` is read (0: skip; default 60)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from edgessl.edge_runtime.memory import tune_malloc

    tune_malloc()  # as `edgessl run` does: the in-process daemon's RSS trend is then the device's

    with tempfile.TemporaryDirectory(prefix="edgessl-bench-daemon-") as tmp_name:
        tmp = Path(tmp_name)
        clip, clip_text = video(tmp)
        bundle_dir = args.bundle or standin_bundle(tmp / "bundle")
        bundle = load_bundle(bundle_dir)
        frames = frames_of(clip, 100)
        h, w = frames[0].shape[:2]
        gallery = tmp / "gallery.db"
        with FeatureExtractor.from_bundle(bundle, threads=args.threads) as ex:
            model_text = (f"{bundle.manifest.model.name} v{bundle.manifest.model.version}, input "
                          f"{bundle.manifest.preprocess.input_size[0]}x{bundle.manifest.preprocess.input_size[1]}, "
                          f"ONNX Runtime CPU, {args.threads} threads")
            enrolled_gallery(bundle_dir, frames, gallery)
            if args.regions is None:
                r = calibrate(ex, bundle_dir, clip, gallery, tmp, frames, args.threads, (w, h))
            else:
                r = args.regions
            print(f"regions per camera: {r} (sustainable), {2 * r} (twice the load)", flush=True)

            results = []
            levels = [("sustainable", r, False, args.minutes, args.threads),
                      ("2x", 2 * r, False, args.minutes_2x or args.minutes, args.threads),
                      ("2x, pipelined", 2 * r, True, args.minutes, args.threads)]
            levels += [(f"2x, {t} backend thread{'s' if t > 1 else ''}", 2 * r, False, args.minutes, t)
                       for t in args.compare_threads]
            for level, regions_per_cam, pipelined, minutes, threads in levels:
                print(f"run {level}: {CAMERAS} cameras x {FPS:g} fps x {regions_per_cam} regions "
                      f"for {minutes:g} min ...", flush=True)
                res = run_daemon(bundle_dir, clip, gallery, tmp / f"state-{level}", regions_per_cam, minutes,
                                 threads, (w, h), pipelined=pipelined)
                # The raw backend on batches of the same size and crops of the same shape, with the
                # readers decoding as during the run; and preprocessing + backend, as the daemon does.
                sizes = res["batch_sizes"] or [CAMERAS * regions_per_cam]
                common_size = statistics.mode(sizes)
                sample = region_crops(frames[:8], regions_per_cam)
                res["raw_busy"] = with_readers(clip, 8, lambda s=common_size, c=sample: raw_throughput(ex, c, s, 5))
                res["pipe_busy"] = with_readers(clip, 8, lambda s=common_size, c=sample: raw_throughput(
                    ex, c, s, 5, with_preprocess=True))
                res.update(common_batch=common_size, level=level, minutes=minutes)
                results.append(res)
                print(f"  p50 {res['p50'] * 1e3:.1f} ms, p99 {res['p99'] * 1e3:.1f} ms, "
                      f"{res['crops_per_s']:.0f} crops/s, RSS {res['rss_start']:.0f} -> {res['rss_end']:.0f} MB",
                      flush=True)

        memory, layers = [], []
        if args.memory_seconds > 0:
            tiny = tiny_bundle(tmp / "tiny")
            layers = memory_layers(tiny)
            for name, b, cams in (("resnet_tiny 32x32", tiny, 1), (model_text.split(",")[0], bundle_dir, CAMERAS)):
                g = enrolled_gallery(b, frames, tmp / f"memory-{cams}.db")
                res = process_memory(b, clip, g, tmp / f"memory-{cams}", cams, 2, (w, h), args.memory_seconds)
                res["model"] = name
                memory.append(res)
                print(f"edgessl run, {cams} camera(s), {name}: VmRSS {res['rss']:.0f} MB", flush=True)

    body = report(results, model_text, clip_text, h, w) + memory_report(memory, layers, args.memory_seconds)
    print()
    print(body)
    if not args.no_write:
        write_section("daemon", body)
    return 0


def report(results: list[dict], model_text: str, clip_text: str, h: int, w: int) -> str:
    interval = 1 / FPS
    lines = [
        "## Camera daemon under load",
        "",
        f"{CAMERAS} cameras, each playing {clip_text} in a loop at {FPS:g} fps in real time, latest-frame mode; "
        f"model {model_text}. The load is the regions classified per frame (cells of a grid over the {w}x{h} frame): "
        "the sustainable level is the most regions per camera that short runs of the daemon processed without "
        f"dropping frames (at most 3%), the second level doubles it, once with the next pass resized while the backend "
        "runs this one (`inference.pipelined`) and once without (the default). Minutes measured per level: "
        + ", ".join(f"{r['level']} {r['minutes']:g}" for r in results) + f", after a {WARMUP_S:g} s warm-up. "
        "Latency: from the reader getting the frame to the smoothed decision of its regions.",
        "",
        "| load | regions/camera | offered crops/s | processed crops/s | p50 latency | p99 latency | max | "
        "p99 bound | within |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        bound = interval + 2 * res["infer_p99"]
        lines.append(
            f"| {res['level']} | {res['regions']} | {res['offered']:.0f} | {res['crops_per_s']:.0f} | "
            f"{res['p50'] * 1e3:.1f} ms | {res['p99'] * 1e3:.1f} ms | {res['max'] * 1e3:.0f} ms | "
            f"{bound * 1e3:.0f} ms | {'yes' if res['p99'] <= bound else '**no**'} |")
    lines += ["", "p99 bound: one frame interval (40 ms) plus twice the p99 time of one batch (a frame that arrives "
              "just after a batch started waits for it and for its own).", "",
              "| load | camera | captured fps | processed fps | dropped |", "|---|---|---|---|---|"]
    for res in results:
        for cid, c in res["cams"].items():
            lines.append(f"| {res['level']} | {cid} | {c['captured_fps']:.1f} | {c['processed_fps']:.1f} | "
                         f"{c['dropped']:.0%} |")
    lines += ["", "| load | usual batch (crops) | batch time p50 / p99 | loop busy | raw backend | "
              "preprocessing + backend | daemon | daemon / raw backend | daemon / (preprocessing + backend) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        lines.append(
            f"| {res['level']} | {res['common_batch']} | {res['infer_p50'] * 1e3:.1f} / {res['infer_p99'] * 1e3:.1f} ms | "
            f"{res['busy']:.0%} | {res['raw_busy']:.0f} crops/s | {res['pipe_busy']:.0f} crops/s | "
            f"{res['crops_per_s']:.0f} crops/s | {res['crops_per_s'] / res['raw_busy']:.2f} | "
            f"{res['crops_per_s'] / res['pipe_busy']:.2f} |")
    lines += ["", "Throughputs on batches of the daemon's usual size, with the four readers decoding as during the "
              "run. At the sustainable level the daemon processes what is offered, so its ratio is the offered load "
              "over the capacity; at twice the load it runs flat out and the ratio is its efficiency (share "
              "of the raw backend; goal >= 0.95). The batch time includes the device's preprocessing (crop, resize; and "
              "normalise for float-input artifacts: bundles from export put it in the graph).", "",
              "Preprocessing (edge_runtime/preprocess.py: resize into one uint8 batch; normalise only for float-input "
              "artifacts) takes "
              + ", ".join(f"{1 - res['pipe_busy'] / res['raw_busy']:.0%} ({res['level']})" for res in results)
              + " of the time of preprocessing + backend on these batches: the gap between the two ratios.", "",
              "| load | RSS start | RSS end | max | mean, first half | mean, second half | trend |",
              "|---|---|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| {res['level']} | {res['rss_start']:.0f} MB | {res['rss_end']:.0f} MB | {res['rss_max']:.0f} MB | "
                     f"{res['rss_first_half']:.0f} MB | {res['rss_second_half']:.0f} MB | "
                     f"{res['rss_slope']:+.2f} MB/min |")
    lines += ["", "The machine is shared (2 cores, another benchmark may be running): the figures are what the "
              "daemon got, not what it would get alone."]
    return "\n".join(lines)


def memory_report(memory: list[dict], layers: list[tuple[str, float]], seconds: float) -> str:
    if not memory:
        return ""
    lines = ["", "", f"**The daemon process's memory**: `edgessl run` (API on, five classes enrolled, two regions per "
             f"camera, cameras looping the clip in real time), `/proc/PID/status` after {seconds:g} s of streaming. "
             "Goals: 1 camera <= 120 MB, 4 cameras <= 250 MB.", "",
             "| model | cameras | VmRSS | anonymous | file-backed (libraries) | peak | threads | onnx imported |",
             "|---|---|---|---|---|---|---|---|"]
    for m in memory:
        lines.append(f"| {m['model']} | {m['cameras']} | **{m['rss']:.0f} MB** | {m['anon']:.0f} MB | {m['file']:.0f} MB | "
                     f"{m['peak']:.0f} MB | {m['threads']} | {'yes' if m['onnx_loaded'] else 'no'} |")
    lines += ["", "Where it goes: each layer of the daemon imported one after another in a fresh process "
              "(resnet_tiny bundle; malloc tuned as `edgessl run` does; no streams):", "",
              "| layer | adds | total |", "|---|---|---|"]
    total = 0.0
    for name, added in layers:
        total += added
        lines.append(f"| {name} | {added:.1f} MB | {total:.0f} MB |")
    lines += ["", "The rest of the running figure is the streams and threads: FFmpeg decoders (one thread per camera "
              "with `decoder_threads: 1`), the frames, per-thread malloc arenas (two at most), uvicorn's event loop. "
              "About half of the resident memory is the libraries' code pages (file-backed: shared with other "
              "processes and reclaimable), counted in VmRSS all the same."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
