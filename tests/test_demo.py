"""`make demo` end to end, shortened: every step of the product path runs (pretrain, distil,
export with INT8, sign, device root, flash, the daemon as a child process, enrollment through
the HTTP API, the JSON-lines sink) and the figures are printed. The accuracy bar is the demo's
printed figure at full budget, not asserted here."""

import json
import re
import subprocess
import sys

from edgessl import synthetic


def test_demo_runs_the_product_path(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgessl", "demo", "--out", str(out), "--minutes", "0.1",
                           "--distill-minutes", "0.05", "--per-class", "30", "--held-out", "8",
                           "--seconds-per-class", "0.8", "--fps", "10"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for step in ("1/8 data", "2/8 pretrain", "3/8 distil", "4/8 export", "5/8 sign", "6/8 daemon", "7/8 enroll",
                 "8/8 watch"):
        assert step in text
    # The device side ran through the real command.
    for command in ("$ edgessl keys generate", "$ edgessl sign", "$ edgessl device init", "$ edgessl flash",
                    "$ edgessl run --root", "$ edgessl classify --root"):
        assert command in text
    # The daemon answered, said what it runs, and its sink got the labels.
    assert re.search(r"daemon pid \d+, API http://127\.0\.0\.1:\d+, model demo-shapes:1 backend onnxruntime "
                     r"artifact onnx", text)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and {"label", "frame", "capture_time", "decision_time", "latency_ms"} <= set(events[0])
    assert {e["label"] for e in events} & set(synthetic.CLASSES)
    decisions = [json.loads(line) for line in (out / "video_decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 5 * 8 and {d["truth"] for d in decisions} == set(synthetic.CLASSES)
    # Figures: per class, and the closing line.
    for kind in synthetic.CLASSES:
        assert re.search(rf"^{kind}\s+[\d.]+%\s+[\d.]+%\s+[\d.]+%\s+[\d.]+%$", text, re.M), kind
    result = re.search(r"^RESULT seed=0 held-out [\d.]+% .* video [\d.]+% .* random weights [\d.]+% \| "
                       r"artifact onnxruntime/onnx\S* \(\w+\) \| latency p50 [\d.]+ ms p99 [\d.]+ ms .* wall \d+ s$",
                       text, re.M)
    assert result, text[-2000:]
    # Held-out accuracy is the head's choice; the calibrated rejections are counted apart.
    assert re.search(r"^held-out: \d+ images never enrolled, .* \d+ of them \([\d.]+%\) fall below", text, re.M)
    assert "video rule:" in text and re.search(r"page: http://127\.0\.0\.1:\d+/", text)
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert {a["name"] for a in manifest["artifacts"]} >= {"onnx"}
    assert manifest["cohort"] == "cohort.npy"  # calibrated on the unlabeled renders, so it has a cohort
    assert (out / "bundle" / "manifest.sig").is_file() and (out / "device" / "current").exists()


def test_objects_demo_runs_the_product_path(tmp_path):
    """`edgessl demo --scene objects`, shortened: the same device path, a camera with objects,
    enrollment from tracks and rejection through the HTTP API, figures against the ground truth."""
    out = tmp_path / "objects"
    proc = subprocess.run([sys.executable, "-m", "edgessl", "demo", "--scene", "objects", "--out", str(out),
                           "--minutes", "0.1", "--distill-minutes", "0.05", "--per-class", "30",
                           "--returns", "1", "--strangers", "2", "--lookalikes", "0", "--stop-seconds", "3"],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for step in ("1/8 data", "5/8 sign", "6/8 daemon", "7/8 name and teach", "8/8 watch"):
        assert step in text
    for command in ("$ edgessl sign", "$ edgessl flash", "$ edgessl run --root"):
        assert command in text
    # Each enrolled object was named from its track through the API.
    named = re.findall(r"^  (circle|square|star)\s+track #(\d+): named; (\d+) of its crops enrolled$", text, re.M)
    assert sorted(k for k, _, _ in named) == ["circle", "square", "star"] and all(int(n) >= 1 for *_, n in named)
    truth = json.loads((out / "data" / "scene.truth.json").read_text())
    assert {o["role"] for o in truth["objects"]} == {"enrolled", "stranger", "lookalike"}
    # The daemon's view of every frame was recorded, and its object events reached the sink.
    frames = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert len(frames) >= 0.9 * len(truth["frames"])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert {"entered", "label", "left"} <= {e["event"] for e in events if e["kind"] == "object"}
    # Tracking does not depend on a well-trained model: every object is followed.
    result = re.search(r"^RESULT seed=0 recall ([\d.]+)% \| ID switches [\d.]+/100 objects \| label right [\d.]+% \| "
                       r"false label [\d.]+% \(strangers [\d.]+%, look-alikes -\) \| stops kept [\d.-]+%? \| artifact "
                       r"onnxruntime/onnx\S* \| capture-to-decision p50 [\d.]+ ms p99 [\d.]+ ms", text, re.M)
    assert result, text[-3000:]
    assert float(result.group(1)) >= 80.0
