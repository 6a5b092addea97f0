"""`edgessl demo --scene objects`: objects, not boxes, down the same device path as `make demo`.

    render the unlabeled training images and a camera scene (shapes of enrolled and never-enrolled
    classes enter, cross, stop for a while and leave; ground-truth boxes and ids beside the video)
    -> pretrain -> distil -> export ONNX + INT8 -> sign -> device root -> flash
    -> `edgessl run` (the scene as a camera with `objects:`) -> the enrollment part of the scene:
       each object to enroll passes alone and is named from its track (POST /v1/tracks/{id}/enroll)
       -> the teaching part: a look-alike of each passes; where the daemon takes it for the object,
       it is rejected (POST /v1/tracks/{id}/reject) -> the evaluation part: the objects come back
       among strangers and look-alikes
    -> figures against the ground truth: track recall, ID switches, right labels, false labels of
       never-enrolled objects, stops kept, capture-to-decision latency

The daemon's view of every frame comes from its server-sent events (`objects` messages: the
tracks after each frame) and its decisions from the JSON-lines sink, both as a user would read them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgessl.demo import _say, train_and_flash
from edgessl.demo_device import DaemonProcess, http
from edgessl.demo_figures import percentile

ENROLLED = ("circle", "square", "star")
UNENROLLED = ("triangle", "cross")
CAMERA = "yard"
# Open set: the daemon's global threshold, the floor of every calibrated class threshold (the
# regions demo names the nearest class: 0). Below it a track is `unknown`. Each object is enrolled
# from one track, which counts as one view, so this is the threshold its class uses. Chosen on
# five other scenes (seeds 1-5, the seed-0 model, the daemon's code in one process): 0.6 / 0.65 /
# 0.7 named 60 / 59 / 58 of 60 returns right and 4 / 3 / 3 of 70 never-enrolled objects falsely.
OBJECTS_THRESHOLD = 0.65
ZONES = [{"name": "west", "points": [[0, 0], [0.35, 0], [0.35, 1], [0, 1]]},
         {"name": "east", "points": [[0.65, 0], [1, 0], [1, 1], [0.65, 1]]}]


class EventStream:
    """The daemon's /v1/events in a thread: `objects` messages by frame, and object events."""

    def __init__(self, url: str, token: str) -> None:
        self.frames: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.newest = 0
        self._stop = False
        request = urllib.request.Request(f"{url}/v1/events", headers={"Authorization": f"Bearer {token}"})
        self._response = urllib.request.urlopen(request, timeout=30)  # noqa: S310 (loopback)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._lines()
        except (OSError, ValueError, AttributeError):  # closed by close(), or the daemon went
            if not self._stop:
                raise

    def _lines(self) -> None:
        kind = None
        for raw in self._response:
            if self._stop:
                return
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("objects", "object"):
                item = json.loads(line[6:])
                if kind == "objects" and item["camera"] == CAMERA:
                    self.frames[item["frame"]] = item
                    self.newest = max(self.newest, item["frame"])
                elif kind == "object":
                    self.events.append(item)

    def wait_for(self, frame: int, proc: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.newest < frame:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon processed frame {self.newest} of {frame} in {timeout:g} s")
            time.sleep(0.1)

    def close(self) -> None:
        self._stop = True
        self._response.close()


def _iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_frames(truth: list[list[dict]], seen: dict[int, dict[str, Any]], frames: range,
                 min_iou: float = 0.5) -> dict[int, dict[int, int]]:
    """Per ground-truth object: frame index -> the track id matched to it (IoU >= min_iou, one to
    one per frame, largest IoU first). `seen` is keyed by the daemon's frame number (index + 1)."""
    from edgessl.edge_runtime.objects.assignment import assign

    out: dict[int, dict[int, int]] = defaultdict(dict)
    for i in frames:
        gt = truth[i]
        hyp = seen.get(i + 1, {}).get("objects", [])
        if not gt or not hyp:
            continue
        cost = np.array([[1 - _iou(g["box"], h["box"]) for h in hyp] for g in gt])
        for a, b in assign(cost, max_cost=1 - min_iou):
            out[gt[a]["id"]][i] = hyp[b]["id"]
    return out


def run_objects(args: argparse.Namespace) -> int:
    from edgessl import scene

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
    objects, video, truth = _render_scene(args, data)
    n = len(truth)
    t = lap("data", t)
    train_and_flash(args, out, data, root, lap, steps=("2/8", "3/8", "4/8", "5/8"))
    t = time.monotonic()

    _say("6/8 daemon", f"edgessl run: the scene as camera '{CAMERA}' with objects (motion proposals, tracker)")
    _write_config(root, video, out / "events.jsonl")
    daemon = DaemonProcess(root, out / "daemon.log")
    stream: EventStream | None = None
    try:
        url = daemon.wait_ready()
        token = daemon.token()
        stream = EventStream(url, token)
        model = http("GET", f"{url}/v1/model", token)
        print(f"daemon pid {daemon.proc.pid}, API {url}, model {model['name']}:{model['version']} "
              f"backend {model['backend']} artifact {model['artifact']}")
        t = lap("daemon start", t)

        _say("7/8 name and teach", "each enrolled object named from its track (POST /v1/tracks/{id}/enroll); "
             "each look-alike the daemon took for it rejected (POST /v1/tracks/{id}/reject)")
        for part in ("enrollment", "teaching"):
            _name_and_teach(url, token, stream, daemon, [o for o in objects if o.part == part], truth, part)
        start = stream.newest
        t = lap("name + teach", t)

        _say("8/8 watch", f"the evaluation part (frames {start + 1}-{n}) against the ground truth")
        stream.wait_for(n, daemon.proc, timeout=(n - start) / scene.FPS + 120)
        time.sleep(1.0)  # the last 'left' events: the sink writes on its own thread
        evaluation = [o for o in objects if o.part == "evaluation"]
        report = evaluate(truth, stream.frames, evaluation, range(start, n), stream.events, scene.FPS)
        t = lap("watch", t)
        _print_report(report, args, model, time.monotonic() - t_start, timings, url, root, out)
        with open(out / "tracks.jsonl", "w") as f:  # the daemon's view of every frame, for later scoring
            for seq in sorted(stream.frames):
                f.write(json.dumps(stream.frames[seq]) + "\n")
        if args.serve:
            daemon.serve(url)
    finally:
        if stream is not None:
            stream.close()
        daemon.stop()
    return 0


def _render_scene(args: argparse.Namespace, data: Path) -> tuple[list[Any], Path, list[list[dict]]]:
    """Unlabeled renders to pretrain on, and the camera scene (its objects, video and per-frame truth)."""
    from edgessl import scene, synthetic

    _say("1/8 data", "unlabeled renders to learn from, and a camera scene with ground truth (procedural)")
    synthetic.write_image_set(data / "unlabeled", args.per_class, size=64, seed=args.seed)
    objects = scene.plan(ENROLLED, UNENROLLED, seed=args.seed, stop_s=args.stop_seconds, returns=args.returns,
                         strangers=args.strangers, lookalikes=args.lookalikes)
    video = data / "scene.mp4"
    truth = scene.write(video, objects, seed=args.seed)
    n = len(truth)
    evaluation = [o for o in objects if o.part == "evaluation"]
    roles = Counter(o.role for o in evaluation)
    print(f"{args.per_class * len(synthetic.CLASSES)} unlabeled images (folder names never read)\n"
          f"scene {video}: {n} frames, {n / scene.FPS:.0f} s at {scene.FPS} fps ({scene.SIZE[0]}x{scene.SIZE[1]}); "
          f"ground truth in {video.with_suffix('.truth.json')}\n"
          f"  enrollment part: the {', the '.join(ENROLLED)} pass alone, each in a hue of its own\n"
          f"  teaching part: a look-alike of each (a {' or '.join(UNENROLLED)} in its hue) passes alone\n"
          f"  evaluation part: {roles['enrolled']} returns of the enrolled objects, {roles['stranger']} strangers "
          f"({' and '.join(UNENROLLED)} in other hues), {roles['lookalike']} look-alikes; "
          f"{sum(bool(o.stops) for o in evaluation)} of them stop for {args.stop_seconds:g} s")
    return objects, video, truth


def _write_config(root: Path, video: Path, events_path: Path) -> None:
    import yaml

    config = {
        "device": "demo", "state_dir": "state", "model": {"root": "."},
        "classifier": {"threshold": OBJECTS_THRESHOLD},
        "cameras": [{"id": CAMERA, "url": str(video), "loop": True, "mode": "every", "realtime": True,
                     "objects": {"zones": ZONES}}],
        "sinks": {"events": {"type": "jsonl", "path": str(events_path)}},
        "api": {"host": "127.0.0.1", "port": 0},
    }
    (root / "edge.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"config {root / 'edge.yaml'}")


def _name_and_teach(url: str, token: str, stream: EventStream, daemon: DaemonProcess, mine: list[Any],
                    truth: list[list[dict]], part: str) -> None:
    """Once `mine` (one part of the scene) has passed: in the enrollment part, name each object
    from the track that covered it most; in the teaching part, reject each look-alike the daemon
    took for an enrolled class, as a person would ("not Rex")."""
    from edgessl import scene

    end = int(np.ceil((max(o.t1 for o in mine) + 0.5) * scene.FPS))
    stream.wait_for(end, daemon.proc, timeout=end / scene.FPS + 60)
    time.sleep(0.5)  # the tracks' last crops reach the track store
    matched = match_frames(truth, stream.frames, range(end))
    for obj in mine:
        ids = Counter(matched.get(obj.id, {}).values())
        if not ids:
            print(f"  {obj.kind}: no track covered it")
            continue
        track = ids.most_common(1)[0][0]
        if part == "enrollment":
            answer = http("POST", f"{url}/v1/tracks/{track}/enroll", token,
                          json.dumps({"label": obj.kind}).encode(), "application/json")
            print(f"  {obj.kind:<9} track #{track}: named; {answer['added']} of its crops enrolled")
            continue
        shown = http("GET", f"{url}/v1/tracks/{track}", token)["label"]
        if shown in ENROLLED:
            answer = http("POST", f"{url}/v1/tracks/{track}/reject", token,
                          json.dumps({"label": shown}).encode(), "application/json")
            print(f"  look-alike {obj.kind} track #{track}: shown as {shown}; rejected (\"not {shown}\", "
                  f"{answer['added']} negatives)")
        else:
            print(f"  look-alike {obj.kind} track #{track}: shown as {shown}; nothing to correct")


def evaluate(truth: list[list[dict]], seen: dict[int, dict[str, Any]], objects: list[Any], frames: range,
             events: list[dict[str, Any]], fps: int = 10) -> dict[str, Any]:
    """Per ground-truth object of the evaluation part: recall, ID switches, the labels the track
    covering it showed while it did, whether a stop kept its track; plus the capture-to-decision
    latencies."""
    matched = match_frames(truth, seen, frames)
    covered_by: dict[int, set[int]] = defaultdict(set)  # track id -> ground-truth objects it covered
    for gid, hits in matched.items():
        for track in hits.values():
            covered_by[track].add(gid)
    rows = []
    for obj in objects:
        visible = [i for i in frames if any(g["id"] == obj.id for g in truth[i])]
        if not visible:
            continue
        hits = matched.get(obj.id, {})
        order = [hits[i] for i in sorted(hits)]
        switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
        main = Counter(order).most_common(1)[0][0] if order else None
        shown: list[str] = []  # the labels of the covering track while it covered this object
        for i in sorted(hits):
            label = next((o["label"] for o in seen[i + 1]["objects"] if o["id"] == hits[i]), None)
            if label is not None and (not shown or shown[-1] != label):
                shown.append(label)
        kept = None
        for t0, t1 in obj.stops:
            before = [hits[i] for i in sorted(hits) if i < t0 * fps]
            during = [i for i in visible if t0 * fps <= i <= t1 * fps]
            after = [hits[i] for i in sorted(hits) if i > t1 * fps]
            held = sum(i in hits for i in during) / max(1, len(during))
            kept = bool(before and after and before[-1] == after[0] and held >= 0.9)
        rows.append({"id": obj.id, "class": obj.kind, "role": obj.role, "frames": len(visible), "matched": len(hits),
                     "recalled": len(hits) >= 0.5 * len(visible), "switches": switches, "track": main,
                     "handover": main is not None and len(covered_by[main]) > 1,
                     "final": shown[-1] if shown else None, "shown": shown, "stop_kept": kept})
    latency = [seen[s]["latency_ms"] for s in seen if s - 1 in frames]
    decided = [e["latency_ms"] for e in events if e.get("event") in ("label", "changed")]
    return {"rows": rows, "latency": latency, "decision_latency": decided}


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _print_report(report: dict[str, Any], args: argparse.Namespace, model: dict[str, Any], wall: float,
                  timings: dict[str, float], url: str, root: Path, out: Path) -> None:
    rows = report["rows"]

    def named(r: dict[str, Any]) -> bool:  # its track showed an enrolled class while it covered it
        return any(s in ENROLLED for s in r["shown"])

    print(f"\n{'objects':<22} {'n':>3} {'recall':>7} {'ID sw/100':>10} {'label right':>12} {'false label':>12} "
          f"{'stops kept':>11}")
    groups = [(f"enrolled {k}", [r for r in rows if r["role"] == "enrolled" and r["class"] == k]) for k in ENROLLED]
    groups += [(f"stranger {k}", [r for r in rows if r["role"] == "stranger" and r["class"] == k]) for k in UNENROLLED]
    groups += [("look-alikes", [r for r in rows if r["role"] == "lookalike"]), ("all", rows)]
    for name, mine in groups:
        if not mine:
            continue
        known = [r for r in mine if r["role"] == "enrolled"]
        unknown = [r for r in mine if r["role"] != "enrolled"]
        stops = [r for r in mine if r["stop_kept"] is not None]
        print(f"{name:<22} {len(mine):>3} {_pct(sum(r['recalled'] for r in mine), len(mine)):>7} "
              f"{100 * sum(r['switches'] for r in mine) / len(mine):>10.1f} "
              f"{_pct(sum(r['final'] == r['class'] for r in known), len(known)) if known else '':>12} "
              f"{_pct(sum(named(r) for r in unknown), len(unknown)) if unknown else '':>12} "
              f"{_pct(sum(r['stop_kept'] for r in stops), len(stops)) if stops else '-':>11}")
    known = [r for r in rows if r["role"] == "enrolled"]
    strangers = [r for r in rows if r["role"] == "stranger"]
    lookalikes = [r for r in rows if r["role"] == "lookalike"]
    stops = [r for r in rows if r["stop_kept"] is not None]
    recall = _pct(sum(r["recalled"] for r in rows), len(rows))
    switches = 100 * sum(r["switches"] for r in rows) / max(1, len(rows))
    right = _pct(sum(r["final"] == r["class"] for r in known), len(known))
    never = strangers + lookalikes
    false = _pct(sum(named(r) for r in never), len(never))
    stranger_false = _pct(sum(named(r) for r in strangers), len(strangers))
    alike = _pct(sum(named(r) for r in lookalikes), len(lookalikes))
    kept = _pct(sum(r["stop_kept"] for r in stops), len(stops))
    handovers = sum(r["handover"] for r in rows)
    lat, dec = report["latency"], report["decision_latency"]
    print(f"\nrules: an object is recalled when a track covers it (IoU >= 0.5, one to one per frame) in at least half "
          f"of its frames; an ID switch is a change of the track covering it; 'label right' is the last label "
          f"the covering track showed while it covered the object; 'false label' counts never-enrolled objects "
          f"whose covering track showed an enrolled name at any time; a stop is kept when the same track covers "
          f"the object before and after it and during 90% of it. Strangers are never-enrolled shapes in hues "
          f"unlike the enrolled objects'; look-alikes are never-enrolled shapes in an enrolled object's hue, which "
          f"this 32-pixel model tells apart by shape alone. Goals: recall >= 95%, label right >= 90%, false "
          f"label <= 5% (of all never-enrolled objects).\n{handovers} of {len(rows)} objects shared their track "
          f"with another object (their blobs merged as one left and the other came).")
    print(f"\nRESULT seed={args.seed} recall {recall} | ID switches {switches:.1f}/100 objects | label right {right} | "
          f"false label {false} (strangers {stranger_false}, look-alikes {alike}) | stops kept {kept} | artifact {model['backend']}/"
          f"{model['artifact']} | capture-to-decision p50 {percentile(lat, 50):.1f} ms p99 {percentile(lat, 99):.1f} "
          f"ms ({len(lat)} frames; label events p50 {percentile(dec, 50):.1f} ms) | wall {wall:.0f} s")
    print("steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"\npage: {url}/   (token: {root / 'state' / 'api-token'})\noutputs in {out}: data/scene.mp4 and "
          f"scene.truth.json, events.jsonl, tracks.jsonl (the daemon's objects per frame), daemon.log")
