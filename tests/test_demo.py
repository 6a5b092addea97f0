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
