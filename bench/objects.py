"""The objects path: load on 4 cameras, and tracking quality against ground truth beside peers.

    python bench/objects.py --minutes 2       # after `edgessl demo --scene objects` (its bundle)
    python bench/objects.py --minutes 0.5 --no-write

1. Load. The daemon (in this process) with 4 cameras, each the objects scene (640x360, 10 fps,
   rendered by edgessl.scene) played as a live camera, `objects: {}` on each, three classes
   enrolled: frames processed / offered, capture-to-decision latency p50/p99 (a frame's capture
   to its tracks, evidence and events), crops embedded per second, RSS over the run.
2. Tracking quality. The motion proposals of each frame of three rendered scenes (seeds 1-3) are
   given to edgessl's tracker (with appearance from the bundle, as in the daemon) and, in a
   separate virtual environment (runs/objects-peer-venv: `trackers` 2.6.1, which pulls a second
   OpenCV and supervision, hence not on the device), to Roboflow's ByteTrack, OC-SORT and SORT,
   all on the same boxes. py-motmetrics scores each against the rendered ground truth (IoU >=
   0.5): MOTA, IDF1, ID switches, recall, precision. On ../shared/data/video/bikes.mp4 (frames
   137-186: a fixed camera, cars behind a fence), which has no ground truth, the trackers' track
   counts and lengths are shown side by side.

The bundle is --bundle, else runs/demo-objects/bundle, else the stand-in CNN of bench/daemon.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import SHARED_DATA, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "runs" / "objects-peer-venv"
PEER_PACKAGES = ["trackers==2.6.1", "motmetrics==1.4.0", "opencv-python-headless"]
PEERS = ("ByteTrackTracker", "OCSORTTracker", "SORTTracker")
CAMERAS = 4
WARMUP_S = 10.0
log = logging.getLogger("bench.objects")


# ---------------------------------------------------------------- run inside runs/objects-peer-venv

def peer_main(job: Path) -> None:
    """Track the proposals with each peer, then score every tracker's output with motmetrics."""
    import motmetrics as mm
    import supervision as sv
    import trackers

    spec = json.loads(job.read_text())
    out: dict[str, Any] = {"tracks": {}, "scores": {}}
    for clip in spec["clips"]:
        for name in PEERS:
            tracker = getattr(trackers, name)(frame_rate=spec["fps"])
            frames = []
            for boxes in clip["proposals"]:
                xyxy = np.array(boxes, float).reshape(-1, 4)
                det = sv.Detections(xyxy=xyxy, confidence=np.ones(len(xyxy)), class_id=np.zeros(len(xyxy), int))
                res = tracker.update(det)
                keep = res.tracker_id >= 0 if res.tracker_id is not None else np.zeros(0, bool)
                frames.append([[int(i), *map(float, b)] for i, b in zip(res.tracker_id[keep], res.xyxy[keep],
                                                                           strict=True)])
            clip["hypotheses"][name] = frames
        out["tracks"][clip["name"]] = {n: summary(f) for n, f in clip["hypotheses"].items()}
        if clip.get("truth") is not None:
            out["scores"][clip["name"]] = {n: score(mm, clip["truth"], f) for n, f in clip["hypotheses"].items()}
    Path(spec["out"]).write_text(json.dumps(out))


def score(mm: Any, truth: list[list[list[float]]], hyp: list[list[list[float]]]) -> dict[str, float]:
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hy in zip(truth, hyp, strict=True):
        g = np.array([b[1:] for b in gt], float).reshape(-1, 4)
        h = np.array([b[1:] for b in hy], float).reshape(-1, 4)
        # 1 - IoU, NaN (no match) below IoU 0.5: what mm.distances.iou_matrix computes, which
        # calls np.asfarray, gone from the NumPy 2 that `trackers` needs.
        w = np.clip(np.minimum(g[:, None, 2], h[None, :, 2]) - np.maximum(g[:, None, 0], h[None, :, 0]), 0, None)
        ht = np.clip(np.minimum(g[:, None, 3], h[None, :, 3]) - np.maximum(g[:, None, 1], h[None, :, 1]), 0, None)
        inter = w * ht
        area = lambda a: (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # noqa: E731
        iou = inter / np.maximum(area(g)[:, None] + area(h)[None, :] - inter, 1e-9)
        dist = np.where(iou >= 0.5, 1 - iou, np.nan)
        acc.update([int(b[0]) for b in gt], [int(b[0]) for b in hy], dist)
    m = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches", "recall", "precision",
                                                   "mostly_tracked", "num_unique_objects"], name="x")
    return {k: float(m[k].iloc[0]) for k in m.columns}


def summary(frames: list[list[list[float]]]) -> dict[str, float]:
    lengths: dict[int, int] = {}
    for f in frames:
        for b in f:
            lengths[int(b[0])] = lengths.get(int(b[0]), 0) + 1
    return {"tracks": len(lengths), "mean_length": float(np.mean(list(lengths.values()))) if lengths else 0.0}


# ---------------------------------------------------------------- edgessl's side

def bundle_path(arg: Path | None, tmp: Path) -> tuple[Path, str]:
    if arg is not None:
        return arg, str(arg)
    demo = ROOT / "runs" / "demo-objects" / "bundle"
    if (demo / "manifest.json").is_file():
        return demo, f"{demo.relative_to(ROOT)} (`edgessl demo --scene objects`: resnet_tiny 32x32, onnx-int8)"
    sys.path.insert(0, str(Path(__file__).parent))
    from daemon import standin_bundle

    return standin_bundle(tmp / "standin"), "a stand-in 5-layer CNN at 96x96 (untrained: run the objects demo first)"


def scene_clip(tmp: Path, seed: int) -> tuple[Path, list[list[dict]]]:
    from edgessl import scene
    from edgessl.demo_objects import ENROLLED, UNENROLLED

    path = tmp / f"scene-{seed}.mp4"
    return path, scene.write(path, scene.plan(ENROLLED, UNENROLLED, seed=seed), seed=seed)


def frames_of(path: Path, first: int = 0, last: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out[first:last]


def track_clip(frames: list[np.ndarray], extractor: Any, fps: float) -> tuple[list, list]:
    """edgessl's objects stage over the frames: (per-frame proposals, per-frame [id, x0, y0, x1, y1])."""
    from edgessl.edge_runtime.fewshot.prototypes import center_normalize
    from edgessl.edge_runtime.objects.config import ObjectsConfig
    from edgessl.edge_runtime.objects.stage import FrameIn, ObjectStage

    stage = ObjectStage("bench", ObjectsConfig(), device="bench")
    proposals, tracks = [], []
    empty = lambda q: _no_classes(len(q))  # noqa: E731 (no gallery: tracking only)
    for i, frame in enumerate(frames):
        t = i / fps
        crops = stage.begin(FrameIn("bench", i + 1, frame, t, t))
        emb = center_normalize(extractor.embed(crops), extractor.center) if crops else \
            np.zeros((0, extractor.embedding_dim), np.float32)
        stage.finish(emb, empty)
        proposals.append(stage.last_proposals.round(1).tolist())
        tracks.append([[o["id"], *map(float, o["box"])] for o in stage.objects()])
    return proposals, tracks


def _no_classes(n: int) -> Any:
    from edgessl.edge_runtime.fewshot.classifier import ClassScores

    return ClassScores([], np.zeros((n, 0), np.float32), np.zeros(0, np.float32), None)


def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEER_VENV} ({', '.join(PEER_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def quality(extractor: Any, tmp: Path, seeds: list[int]) -> dict[str, Any]:
    fps = 10.0
    clips = []
    for seed in seeds:
        path, truth = scene_clip(tmp, seed)
        proposals, ours = track_clip(frames_of(path), extractor, fps)
        gt = [[[g["id"], *map(float, g["box"])] for g in frame] for frame in truth]
        clips.append({"name": f"scene seed {seed}", "proposals": proposals, "truth": gt, "hypotheses": {"edgessl": ours}})
    bikes = SHARED_DATA / "video" / "bikes.mp4"
    if bikes.is_file():
        proposals, ours = track_clip(frames_of(bikes, 137, 187), extractor, 25.0)
        clips.append({"name": "bikes.mp4 137-186", "proposals": proposals, "truth": None,
                      "hypotheses": {"edgessl": ours}})
    job, result = tmp / "job.json", tmp / "peer.json"
    job.write_text(json.dumps({"clips": clips, "fps": fps, "out": str(result)}))
    t0 = time.monotonic()
    subprocess.run([str(peer_python()), __file__, "--peer", str(job)], check=True)
    log.info("peers and scoring took %.0f s", time.monotonic() - t0)
    return json.loads(result.read_text())


# ---------------------------------------------------------------- load

def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(bundle: Path, tmp: Path, minutes: float, threads: int) -> dict[str, Any]:
    from edgessl import synthetic
    from edgessl.demo_objects import ENROLLED
    from edgessl.edge_runtime.daemon.config import DaemonConfig
    from edgessl.edge_runtime.daemon.core import Daemon
    from edgessl.edge_runtime.daemon.pipeline import Batch

    clip, _ = scene_clip(tmp, 1)
    config = DaemonConfig.model_validate({
        "device": "bench", "state_dir": str(tmp / "state"), "model": {"bundle": str(bundle), "threads": threads},
        "classifier": {"threshold": 0.65}, "api": {"enabled": False},
        "cameras": [{"id": f"cam{i}", "url": str(clip), "loop": True, "objects": {}} for i in range(CAMERAS)]})
    latencies: list[float] = []
    crops = [0]
    lock = threading.Lock()
    measuring = threading.Event()

    def observe(batch: Batch) -> None:
        if not measuring.is_set():
            return
        with lock:
            latencies.extend(batch.decided_mono - f.captured_mono for f in batch.objects)
            crops[0] += batch.object_crops

    rss: list[tuple[float, float]] = []
    with Daemon(config, observer=observe) as daemon:
        rng = np.random.default_rng(0)
        for kind in ENROLLED:
            daemon.enrollment.enroll_images(kind, [synthetic.render(kind, rng, 64) for _ in range(5)])
        time.sleep(WARMUP_S)
        start = {cid: (s.captured, s.processed, s.dropped) for cid, s in ((c, d.status()) for c, d in
                                                                       daemon.streams.items())}
        measuring.set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < minutes * 60:
            rss.append((time.monotonic() - t0, rss_mb()))
            time.sleep(5)
        measuring.clear()
        seconds = time.monotonic() - t0
        end = {cid: (s.captured, s.processed, s.dropped) for cid, s in ((c, d.status()) for c, d in
                                                                     daemon.streams.items())}
    offered = sum(end[c][0] - start[c][0] for c in end)
    processed = sum(end[c][1] - start[c][1] for c in end)
    ms = np.array(latencies) * 1000
    return {"seconds": seconds, "offered": offered, "processed": processed,
            "fps_per_camera": processed / seconds / CAMERAS, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "crops_per_s": crops[0] / seconds,
            "rss_start": rss[0][1], "rss_peak": max(r for _, r in rss), "rss_end": rss[-1][1]}


# ---------------------------------------------------------------- report

def report(load_fig: dict[str, Any], qual: dict[str, Any], model: str, minutes: float, threads: int) -> str:
    lines = [f"Model: {model}; {threads} backend threads; {CAMERAS} cameras, each the objects scene (seed 1: 640x360, "
             f"10 fps, looped) as a live camera with `objects: {{}}`; 3 classes enrolled; {minutes:g} min measured "
             f"after {WARMUP_S:g} s of warm-up.", "",
             "| load | figure |", "|---|---|",
             f"| frames processed / offered | {load_fig['processed']} / {load_fig['offered']} = "
             f"**{load_fig['processed'] / max(1, load_fig['offered']):.3f}** ({load_fig['fps_per_camera']:.1f} fps per "
             f"camera) |",
             f"| capture-to-decision p50 / p99 | **{load_fig['p50']:.1f} ms / {load_fig['p99']:.1f} ms** |",
             f"| crops embedded per second (4 cameras) | {load_fig['crops_per_s']:.0f} |",
             f"| RSS start / peak / end | {load_fig['rss_start']:.0f} / {load_fig['rss_peak']:.0f} / "
             f"{load_fig['rss_end']:.0f} MB (the whole benchmark process) |", "",
             "Tracking quality on the same motion proposals (py-motmetrics 1.4.0, IoU >= 0.5; Roboflow `trackers` "
             "2.6.1 with their defaults at the clip's frame rate):", "",
             "| clip | tracker | MOTA | IDF1 | ID switches | recall | precision | mostly tracked |",
             "|---|---|---|---|---|---|---|---|"]
    for clip, scores in qual["scores"].items():
        for name, s in scores.items():
            bold = "**" if name == "edgessl" else ""
            lines.append(f"| {clip} | {bold}{name}{bold} | {bold}{s['mota']:.3f}{bold} | {bold}{s['idf1']:.3f}{bold} | "
                         f"{s['num_switches']:.0f} | {s['recall']:.3f} | {s['precision']:.3f} | "
                         f"{s['mostly_tracked']:.0f} / {s['num_unique_objects']:.0f} |")
    unscored = {clip: tracks for clip, tracks in qual["tracks"].items() if clip not in qual["scores"]}
    lines += ["", "Without ground truth (bikes.mp4, frames 137-186: cars behind a fence, one parked):", ""]
    if not unscored:
        lines.append(f"not run: {SHARED_DATA / 'video' / 'bikes.mp4'} is absent on this machine.")
        return "\n".join(lines)
    lines += ["| clip | tracker | tracks | mean length (frames) |", "|---|---|---|---|"]
    for clip, tracks in unscored.items():
        for name, t in tracks.items():
            lines.append(f"| {clip} | {name} | {t['tracks']} | {t['mean_length']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--peer":
        peer_main(Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="measured minutes of the load run (default 2)")
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the objects demo's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="backend threads (default: cores)")
    parser.add_argument("--seeds", default="1,2,3", help="rendered scenes scored against their ground truth")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from edgessl.edge_runtime.bundle.manifest import load_bundle
    from edgessl.edge_runtime.inference.extractor import FeatureExtractor

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bundle, model = bundle_path(args.bundle, tmp)
        extractor = FeatureExtractor.from_bundle(load_bundle(bundle), precision=_precision(bundle), threads=args.threads)
        print("tracking quality (edgessl and peers on the same proposals) ...", flush=True)
        qual = quality(extractor, tmp, [int(s) for s in args.seeds.split(",")])
        extractor.close()
        print(f"load: {CAMERAS} cameras for {args.minutes:g} min ...", flush=True)
        load_fig = load(bundle, tmp, args.minutes, args.threads)
    text = report(load_fig, qual, model, args.minutes, args.threads)
    print(text)
    if not args.no_write:
        write_section("objects", "## Objects: 4 cameras, and tracking against ground truth\n\n" + text)
    return 0


def _precision(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return "int8" if any(a.get("precision") == "int8" and a.get("format") == "onnx" for a in manifest["artifacts"]) \
        else "fp32"


if __name__ == "__main__":
    sys.exit(main())
