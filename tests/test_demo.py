"""`make demo` end to end, shortened: every step runs and the per-class table is printed."""

import json
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgessl", "demo", "--out", str(out), "--minutes", "0.1",
                           "--per-class", "30"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for step in ("1/5 data", "2/5 pretrain", "3/5 export", "4/5 enroll", "5/5 classify"):
        assert step in text
    for kind in ("circle", "square", "triangle", "cross", "star"):
        assert any(line.startswith(kind) and line.rstrip().endswith("%") for line in text.splitlines())
    assert (out / "bundle" / "manifest.json").is_file() and (out / "gallery.db").is_file()
    frames = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(frames) == 150 and [f["frame"] for f in frames] == list(range(150))
    assert {f["truth"] for f in frames} == {"circle", "square", "triangle", "cross", "star"}
