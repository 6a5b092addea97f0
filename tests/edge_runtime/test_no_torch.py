"""The edge runtime works on a device without torch: every module imports, every command runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np

RED, BLUE = (30, 30, 200), (200, 30, 30)  # BGR

SCRIPT = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails

import importlib
import pkgutil

import edgessl.edge_runtime as pkg

def fail(name):
    raise ImportError(f"cannot import {name}")

names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".", onerror=fail)]
for name in names:
    importlib.import_module(name)
print("IMPORTED", " ".join(sorted(names)), flush=True)

from edgessl.cli import main

bundle, gallery, red, blue, query = sys.argv[1:]
common = ["--bundle", bundle, "--gallery", gallery]
assert main(["enroll", *common, "--label", "red", red]) == 0
assert main(["enroll", *common, "--label", "blue", blue]) == 0
sys.stdout.flush()
assert main(["classify", *common, query]) == 0
assert main(["gallery", "list", "--gallery", gallery]) == 0
sys.stdout.flush()
# The operator-side device commands and the daemon's tools need no torch either.
import edgessl.devices as devices
for info in pkgutil.walk_packages(devices.__path__, devices.__name__ + ".", onerror=fail):
    importlib.import_module(info.name)
import io, contextlib
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["bench", bundle, "--stored-only"]) == 0
    assert main(["devices", "list"]) == 0
    assert main(["config", "schema"]) == 0
    assert main(["keys", "generate", "--out", gallery + ".keys"]) == 0
    assert main(["sign", bundle, "--key", gallery + ".keys/signing.key"]) == 0
text = out.getvalue()
assert "raspberry-pi-5" in text and '"properties"' in text, text[:500]
# A server-side command says which extra to install instead of failing with a traceback.
err = io.StringIO()
with contextlib.redirect_stderr(err):
    assert main(["pretrain", "--data", ".", "--out", "x"]) == 3
assert "pip install 'edgessl[train]'" in err.getvalue(), err.getvalue()
assert sys.modules["torch"] is None
"""


def test_edge_runtime_runs_without_torch(tmp_path, tiny_bundle, write_images):
    write_images(tmp_path / "red", RED, 3)
    write_images(tmp_path / "blue", BLUE, 3)
    query = tmp_path / "query.png"
    assert cv2.imwrite(str(query), np.full((30, 30, 3), BLUE, np.uint8))
    bundle = tmp_path / "bundle"  # a copy: the test signs it
    shutil.copytree(tiny_bundle, bundle)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), str(tmp_path / "g.db"),
         str(tmp_path / "red"), str(tmp_path / "blue"), str(query)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    imported = set(lines[0].removeprefix("IMPORTED ").split())
    expected = {"bundle.manifest", "inference.preprocess", "inference.backends", "inference.backends.ort",
                "fewshot.prototypes", "inference.extractor", "fewshot.gallery", "fewshot.classifier",
                "inference.sources", "daemon.core", "daemon.http.app", "device.installer", "cli.args", "cli.enroll",
                "cli.classify", "cli.gallery"}
    assert {f"edgessl.edge_runtime.{name}" for name in expected} <= imported
    assert "enrolled 3 images as 'red'" in lines[1] and "enrolled 3 images as 'blue'" in lines[2]
    record = json.loads(lines[3])
    assert (set(record), record["source"], record["label"]) == ({"source", "label", "score"}, str(query), "blue")
    assert lines[4:] == ["blue\t3", "red\t3"]
