"""`edgessl demo` (what `make demo` runs): the whole product on a device, on data it renders itself.

    render (unlabeled clips, labelled held-out shots, a camera video with ground truth)
    -> pretrain (self-supervised, labels never used) -> distil a student -> export ONNX + INT8
    -> keys generate + sign -> device init (x86-cpu) -> flash (A/B slot, health check)
    -> `edgessl run` as a child process (the video as a looping file camera, one region,
       a JSON-lines sink) -> enroll every class through the HTTP API from 5 images
    -> read the daemon's smoothed labels from the sink -> per-class accuracy on the video,
       held-out accuracy through `edgessl classify --root`, the same backbone with random
       weights as the baseline, the artifact that ran, latency p50/p99 and the page's URL.

Training, distillation and export run in this process (the library the commands call);
everything on the device side runs the real `edgessl` command in a subprocess, so the demo
proves the CLI. No network, no ../shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgessl import synthetic
from edgessl.demo_device import DaemonProcess, edgessl, enroll, http
from edgessl.demo_figures import labels_per_frame, percentile, random_weights_accuracy, settle_frames, steady

SHOTS = 5
THRESHOLD = 0.0  # closed-set demo: the daemon names the nearest class unless nothing is similar at all
ALPHA, CONSECUTIVE = 0.5, 3  # the daemon's smoothing (EMA weight, frames in a row before a change)


SHAPE_AUGMENT = {"gray_p": 0.8, "hue": 0.5, "rotate": 180.0}
# Five classes and many renders of each: SimCLR's negatives are mostly renders of the same class,
# which it must push apart; VICReg has no negatives. Measured at 1.5 min on the renders (5-way
# 5-shot, torch, docs/benchmarks.md): VICReg 77.8%, SimCLR 58.4%, DINO 43.8%, SwAV 33.1%, BYOL 31.4%.
METHOD = "vicreg"
TEACHER = "resnet_tiny"
PRETRAIN_LR = 0.6  # LARS, per 256 images; VICReg's 0.3 is for long runs (1.5 min: 77.8% -> 80.8%)
IMAGE_SIZE = 32
DISTILL_LR = 2e-4  # AdamW, per 256 images: a fine-tune, not a fresh start


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training (default: 0)")
    p.add_argument("--minutes", type=float, default=3.0, help="self-supervised pretraining budget (default: 3)")
    p.add_argument("--distill-minutes", type=float, default=0.25, help="distillation budget (default: 0.25)")
    p.add_argument("--per-class", type=int, default=1000, help="unlabeled training images per class (default: 1000)")
    p.add_argument("--held-out", type=int, default=40, help="labelled held-out images per class (default: 40)")
    p.add_argument("--seconds-per-class", type=float, default=2.5,
                   help="how long each class stays in the camera video (default: 2.5)")
    p.add_argument("--fps", type=int, default=12, help="camera video frame rate (default: 12)")
    p.add_argument("--student", default=TEACHER,
                   help=f"student backbone for the device (default: {TEACHER}, the teacher's, started from its weights)")
    p.add_argument("--serve", action="store_true", help="keep the daemon running at the end (Ctrl-C stops it)")
    p.add_argument("--scene", choices=("regions", "objects"), default="regions",
                   help="regions (default): one region of a camera, every class in turn; objects: shapes of "
                   "enrolled and never-enrolled classes enter, cross, stop and leave a camera's view, are "
                   "tracked, and are enrolled from their tracks")
    p.add_argument("--stop-seconds", type=float, default=6.0,
                   help="objects scene: how long a third of the objects stop in view (default: 6)")
    p.add_argument("--returns", type=int, default=4,
                   help="objects scene: how often each enrolled object comes back (default: 4)")
    p.add_argument("--strangers", type=int, default=8,
                   help="objects scene: never-enrolled shapes in other hues (default: 8)")
    p.add_argument("--lookalikes", type=int, default=2,
                   help="objects scene: never-enrolled shapes in each enrolled object's hue (default: 2)")


def _say(step: str, what: str) -> None:
    print(f"\n== {step}: {what}", flush=True)


# ---------------------------------------------------------------- the demo

def run(args: argparse.Namespace) -> int:
    if args.scene == "objects":
        from edgessl.demo_objects import run_objects

        return run_objects(args)
    t_start = time.monotonic()
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    data, root = out / "data", out / "device"
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = time.monotonic() - since
        return time.monotonic()

    t = time.monotonic()
    support, qdir, video, truth = _render(args, data)
    t = lap("data", t)
    _, student = train_and_flash(args, out, data, root, lap, steps=("2/8", "3/8", "4/8", "5/8"))
    t = time.monotonic()

    _say("6/8 daemon", "edgessl run: the video as a looping camera, one region, a JSON-lines sink")
    events_path = out / "events.jsonl"
    _write_config(root, video, events_path)
    daemon = DaemonProcess(root, out / "daemon.log")
    try:
        url = daemon.wait_ready()
        token = daemon.token()
        model = http("GET", f"{url}/v1/model", token)
        print(f"daemon pid {daemon.proc.pid}, API {url}, model {model['name']}:{model['version']} "
              f"backend {model['backend']} artifact {model['artifact']} ({model.get('why', '')})")
        t = lap("daemon start", t)

        _say("7/8 enroll", f"every class through POST /v1/classes, {SHOTS} images each")
        for kind, paths in support.items():
            answer = enroll(url, token, kind, paths)
            print(f"  {kind:<9} {answer.get('exemplars', answer) if isinstance(answer, dict) else answer}")
        enrolled_at = max(s["frame"] for s in http("GET", f"{url}/v1/state", token))

        _say("8/8 watch", "the daemon's labels from the JSON-lines sink over one loop of the video")
        first = enrolled_at + 2 * args.fps  # after the last enrollment the smoother settles for a moment
        last = first + len(truth) - 1
        latencies = _watch(daemon, url, token, last, out)
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
        shown = labels_per_frame(events, "bench", "tray", first, last)
        t = lap("enroll + watch", t)

        held, rejected = _held_out(root, qdir)
        query = {k: sorted((qdir / k).iterdir()) for k in synthetic.CLASSES}
        rand = random_weights_accuracy(student, support, query, args.seed)
        t = lap("held-out + baseline", t)

        video_ok, video_all = _video_scores(truth, shown, first, last, out / "video_decisions.jsonl")
        _report(args, held, rejected, video_ok, video_all, rand, model, latencies, events, len(truth),
                sum(len(v) for v in query.values()), time.monotonic() - t_start)
        print("steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        print(f"\npage: {url}/   (token: {root / 'state' / 'api-token'})\noutputs in {out}: bundle/, device/, "
              f"events.jsonl, video_decisions.jsonl, daemon.log\nagain: edgessl run --root {root}")
        if args.serve:
            daemon.serve(url)
    finally:
        daemon.stop()
    return 0


def _render(args: argparse.Namespace, data: Path) -> tuple[dict[str, list[Path]], Path, Path, list[str]]:
    """Unlabeled renders, held-out shots (the supports to enroll, the rest as queries in class
    folders) and the camera video with its per-frame truth."""
    _say("1/8 data", "rendering shapes and a camera video (procedural, no download)")
    synthetic.write_image_set(data / "unlabeled", args.per_class, size=64, seed=args.seed)
    held_out = synthetic.write_image_set(data / "held_out", args.held_out, size=64, seed=args.seed + 100)
    support = {k: v[:SHOTS] for k, v in held_out.items()}
    qdir = data / "queries"
    for k, paths in held_out.items():
        (qdir / k).mkdir(parents=True)
        for p in paths[SHOTS:]:
            shutil.copy(p, qdir / k / p.name)
    video = data / "video.mp4"
    truth = synthetic.write_camera_video(video, args.seconds_per_class, args.fps, seed=args.seed + 7)
    (data / "video.truth.json").write_text(json.dumps(truth))
    print(f"{args.per_class * len(synthetic.CLASSES)} unlabeled images in {data / 'unlabeled'} (their folder names "
          f"are never read)\n{len(truth)}-frame camera video {video} "
          f"({args.fps} fps, {args.seconds_per_class:g} s per class), classes: {', '.join(synthetic.CLASSES)}")
    return support, qdir, video, truth


def _write_config(root: Path, video: Path, events_path: Path) -> None:
    import yaml

    config = {
        "device": "demo", "state_dir": "state", "model": {"root": "."},
        "classifier": {"threshold": THRESHOLD},
        "smoothing": {"alpha": ALPHA, "hysteresis": 0.05, "consecutive": CONSECUTIVE},
        "cameras": [{"id": "bench", "url": str(video), "loop": True,
                     "regions": [dict(name="tray", **synthetic.CAMERA_REGION)]}],
        "sinks": {"events": {"type": "jsonl", "path": str(events_path)}},
        "api": {"host": "127.0.0.1", "port": 0},
    }
    (root / "edge.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"config {root / 'edge.yaml'} (ROOT/edge.yaml is read by `edgessl run --root ROOT`)")


def _watch(daemon: DaemonProcess, url: str, token: str, last: int, out: Path) -> dict[int, float]:
    """Follow the daemon's decisions until frame `last` has passed; latency per frame."""
    latencies: dict[int, float] = {}
    while True:
        states = http("GET", f"{url}/v1/state", token)
        for s in states:
            if s["latency_ms"] is not None:
                latencies[s["frame"]] = s["latency_ms"]
        if max(s["frame"] for s in states) > last + 2:
            break
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.proc.returncode}); see {out / 'daemon.log'}")
        time.sleep(0.05)
    time.sleep(0.5)  # the sink writes on its own thread
    return latencies


def _held_out(root: Path, qdir: Path) -> tuple[dict[str, list[int]], int]:
    """Held-out images through the device's command, against the gallery the daemon enrolled.
    Accuracy is the class the head chose ("nearest"); how many of them the calibrated thresholds
    would still call "unknown" is counted apart, as it is a different question."""
    lines = edgessl("classify", "--root", root, "--gallery", root / "state" / "gallery.db",
                     "--threshold", str(THRESHOLD), qdir).splitlines()  # the daemon's global threshold
    held = {k: [0, 0] for k in synthetic.CLASSES}
    rejected = 0
    for line in lines:
        rec = json.loads(line)
        kind = Path(rec["source"]).parent.name
        held[kind][0] += rec.get("nearest", rec["label"]) == kind  # "nearest" comes with "unknown"
        held[kind][1] += 1
        rejected += rec["label"] == "unknown"
    return held, rejected


def _video_scores(truth: list[str], shown: dict[int, str], first: int, last: int,
                  decisions: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per class (right, counted): a frame counts once the object has been in the region for
    SETTLE frames (the first), and in all frames (the second); every frame is written out."""
    n, settle = len(truth), settle_frames(CONSECUTIVE)
    video_all = {k: [0, 0] for k in synthetic.CLASSES}
    video_ok = {k: [0, 0] for k in synthetic.CLASSES}
    with open(decisions, "w") as f:
        for seq in range(first, last + 1):
            pos = (seq - 1) % n
            kind, label, counted = truth[pos], shown.get(seq), steady(truth, pos, settle)
            video_all[kind][0] += label == kind
            video_all[kind][1] += 1
            if counted:
                video_ok[kind][0] += label == kind
                video_ok[kind][1] += 1
            f.write(json.dumps({"frame": seq, "position": pos, "truth": kind, "label": label,
                                "counted": counted}) + "\n")
    return video_ok, video_all


def _pct(c: Sequence[int]) -> str:
    return f"{100 * c[0] / c[1]:.1f}%" if c[1] else "-"


def _total(d: dict[str, list[int]]) -> list[int]:
    return [sum(v[0] for v in d.values()), sum(v[1] for v in d.values())]


def _worst(d: dict[str, list[int]]) -> str:
    return f"{min(100 * v[0] / v[1] for v in d.values() if v[1]):.1f}%"


def _report(args: argparse.Namespace, held: dict[str, list[int]], rejected: int, video_ok: dict[str, list[int]],
            video_all: dict[str, list[int]], rand: dict[str, float], model: dict[str, Any],
            latencies: dict[int, float], events: list[dict[str, Any]], n: int, n_held: int, wall: float) -> None:
    print(f"\n{'class':<10} {'held-out':>9} {'video':>8} {'(all frames)':>13} {'random weights':>15}")
    for k in synthetic.CLASSES:
        print(f"{k:<10} {_pct(held[k]):>9} {_pct(video_ok[k]):>8} {_pct(video_all[k]):>13} {100 * rand[k]:>14.1f}%")
    print(f"{'all':<10} {_pct(_total(held)):>9} {_pct(_total(video_ok)):>8} {_pct(_total(video_all)):>13} "
          f"{100 * sum(rand.values()) / len(rand):>14.1f}%   (chance {100 / len(synthetic.CLASSES):.0f}%)")
    settle = settle_frames(CONSECUTIVE)
    print(f"\nvideo rule: the daemon's smoothed label at every frame of one loop ({n} frames, read from the "
          f"JSON-lines sink); the first {settle} frames ({settle / args.fps:.2f} s) after each change of the "
          f"object in the region are transitions (EMA alpha {ALPHA} + {CONSECUTIVE} frames in a row) and are "
          f"not counted; '(all frames)' counts them.")
    print(f"held-out: {n_held} images never enrolled, `edgessl classify --root`, the class the head chose; "
          f"{rejected} of them ({100 * rejected / max(1, n_held):.1f}%) fall below their class's calibrated "
          f"threshold and would be labelled 'unknown' (calibrated from 5 shots each).\n"
          f"random weights: the {args.student} architecture untrained, same prototypes.")
    lat, ev_lat = list(latencies.values()), [e["latency_ms"] for e in events]
    print(f"\nRESULT seed={args.seed} held-out {_pct(_total(held))} (worst class {_worst(held)}, "
          f"{100 * rejected / max(1, n_held):.1f}% below threshold) | "
          f"video {_pct(_total(video_ok))} (worst class {_worst(video_ok)}) | "
          f"random weights {100 * sum(rand.values()) / len(rand):.1f}% | "
          f"artifact {model['backend']}/{model['artifact']} ({model['precision']}) | "
          f"latency p50 {percentile(lat, 50):.1f} ms p99 {percentile(lat, 99):.1f} ms "
          f"({len(lat)} decisions; label changes p50 {percentile(ev_lat, 50):.1f} ms) | wall {wall:.0f} s")


def train_and_flash(args: argparse.Namespace, out: Path, data: Path, root: Path, lap: Callable[[str, float], float],
                    steps: Sequence[str]) -> tuple[Path, Path]:
    """Pretrain on data/unlabeled, distil, export ONNX + INT8, sign, provision a device root and
    flash it: the steps every scene shares. Returns (bundle, student checkpoint)."""
    from edgessl.export.bundle_writer import export_bundle
    from edgessl.train.pretrain import PretrainConfig, pretrain

    t = time.monotonic()
    _say(f"{steps[0]} pretrain", f"VICReg on {TEACHER} for {args.minutes:g} min (labels ignored)")
    teacher = pretrain(PretrainConfig(
        data=str(data / "unlabeled"), out=str(out / "teacher"), method=METHOD, backbone=TEACHER,
        minutes=args.minutes, image_size=IMAGE_SIZE, batch_size=64, lr=PRETRAIN_LR, crop_min_scale=0.5,
        seed=args.seed,
        # Colour and orientation are random per render, so they are the cheapest cues for telling
        # renders apart: strong hue jitter, mostly grey views and any rotation take them away and
        # leave shape and surface pattern (measured at 1.5 min: 26.6% -> 44.0% 5-way 5-shot).
        augment_options=SHAPE_AUGMENT, tensorboard=False))
    t = lap("pretrain", t)

    # A student of the teacher's own architecture starts from the teacher's weights: half a minute
    # from scratch lost a third of the accuracy (74% -> 53% held-out, docs/benchmarks.md), so the
    # step becomes a quantization-aware fine-tune at a low learning rate.
    same_architecture = args.student == TEACHER
    _say(f"{steps[1]} distil", f"a {args.student} student learns the teacher's embedding space ({args.distill_minutes:g} min"
         + (", starting from the teacher's weights, 8-bit fake quantization" if same_architecture else "") + ")")
    student = pretrain(PretrainConfig(
        data=str(data / "unlabeled"), out=str(out / "student"), method="distill", backbone=args.student,
        minutes=args.distill_minutes, image_size=IMAGE_SIZE, batch_size=64, crop_min_scale=0.5, seed=args.seed,
        lr=DISTILL_LR if same_architecture else None,
        method_options={"teacher": str(teacher), "relation_weight": 1.0, "qat_fraction": 0.5,
                        "init_from_teacher": same_architecture}, tensorboard=False))
    t = lap("distil", t)

    _say(f"{steps[2]} export", "ONNX fp32 + INT8 (calibrated on unlabeled renders), checked through the device's code")
    bundle = export_bundle(student, out / "bundle", formats=["onnx", "onnx-int8"], calib=data / "unlabeled",
                           devices=["x86-cpu"], name="demo-shapes", version=1, force=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        parity = a.get("parity") or {}
        print(f"  {a['name']:<10} {a['file']:<16} centred cosine to torch: median {parity.get('cosine_median', 0):.4f}, "
              f"min {parity.get('cosine_min', 0):.4f}")
    print(f"  the x86-cpu profile's default: {manifest.get('defaults', {}).get('x86-cpu')}")
    t = lap("export", t)

    _say(f"{steps[3]} sign + provision + flash", "keys, signature, a device root (x86-cpu, A/B slots), install")
    edgessl("keys", "generate", "--out", out / "keys")
    edgessl("sign", bundle, "--key", out / "keys" / "signing.key")
    edgessl("device", "init", "--root", root, "--profile", "x86-cpu", "--trust", out / "keys" / "signing.pub")
    print(edgessl("flash", bundle, "--to", root).rstrip())
    t = lap("flash", t)

    return bundle, student
