"""`edgessl enroll`, `classify` and `gallery` end to end on the tiny bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgessl.cli import main

RED, BLUE = (30, 30, 200), (200, 30, 30)  # BGR


@pytest.fixture
def enrolled(tmp_path, tiny_bundle, write_images, capsys):
    """A gallery with 'red' and 'blue' enrolled through the CLI; returns the common arguments."""
    write_images(tmp_path / "red", RED, 3)
    write_images(tmp_path / "blue", BLUE, 3)
    args = ["--bundle", str(tiny_bundle), "--gallery", str(tmp_path / "gallery.db")]
    assert main(["enroll", *args, "--label", "red", str(tmp_path / "red")]) == 0
    assert "enrolled 3 images as 'red' (3 exemplars in total); the gallery has 1 classes" in capsys.readouterr().out
    assert main(["enroll", *args, "--label", "blue", *map(str, sorted((tmp_path / "blue").iterdir()))]) == 0
    assert "the gallery has 2 classes" in capsys.readouterr().out
    return args


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_classify_images_one_line_each(tmp_path, enrolled, write_images, capsys):
    red = write_images(tmp_path / "query" / "r", RED, 2, seed=7)
    blue = write_images(tmp_path / "query" / "b", BLUE, 2, seed=7)
    (tmp_path / "query" / "zz-broken.jpg").write_bytes(b"not an image")
    assert main(["classify", *enrolled, str(tmp_path / "query")]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [line["source"] for line in lines] == [str(p) for p in blue + red]  # sorted paths; broken skipped
    assert [line["label"] for line in lines] == ["blue", "blue", "red", "red"]
    assert all(set(line) == {"source", "label", "score"} and line["score"] > 0.5 for line in lines)

    assert main(["classify", *enrolled, "--threshold", "1.0", "--no-calibrate", str(red[0])]) == 0
    assert json_lines(capsys.readouterr().out)[0]["label"] == "unknown"


def write_video(path, colors, fps=10.0, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for bgr in colors:
        writer.write(np.full((size[1], size[0], 3), bgr, np.uint8))
    writer.release()


def test_classify_video_one_line_per_processed_frame(tmp_path, enrolled, capsys):
    video = tmp_path / "clip.mp4"
    write_video(video, [RED] * 6 + [BLUE] * 6)
    assert main(["classify", *enrolled, "--every", "2", str(video)]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [line["frame"] for line in lines] == [0, 2, 4, 6, 8, 10]
    assert [line["timestamp"] for line in lines] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [line["label"] for line in lines] == ["red"] * 3 + ["blue"] * 3
    assert all(line["source"] == str(video) for line in lines)


def test_video_that_cannot_be_opened(tmp_path, enrolled, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    assert main(["classify", *enrolled, str(bad)]) == 1
    assert "bad.mp4: cannot open video" in capsys.readouterr().err


def test_gallery_list_and_forget(tmp_path, enrolled, capsys):
    gallery = str(tmp_path / "gallery.db")
    assert main(["gallery", "list", "--gallery", gallery]) == 0
    assert capsys.readouterr().out.splitlines() == ["blue\t3", "red\t3"]
    assert main(["gallery", "forget", "--gallery", gallery, "red"]) == 0
    assert "forgot 'red' (3 exemplars); 1 classes left" in capsys.readouterr().out
    assert main(["gallery", "forget", "--gallery", gallery, "red"]) == 1
    assert "no class 'red' in the gallery; known classes: 'blue'" in capsys.readouterr().err
    assert main(["gallery", "list", "--gallery", str(tmp_path / "none.db")]) == 1
    assert "none.db: no gallery there" in capsys.readouterr().err


def test_errors_are_one_line_that_names_the_problem(tmp_path, tiny_bundle, write_images, capsys):
    images = write_images(tmp_path / "img", RED, 1)
    args = ["--bundle", str(tiny_bundle), "--gallery", str(tmp_path / "g.db")]
    assert main(["enroll", *args, "--backend", "tflite", "--label", "x", str(images[0])]) == 1
    assert "unknown backend 'tflite'; valid backends: onnxruntime" in capsys.readouterr().err
    assert main(["enroll", *args, "--label", "bad\nlabel", str(images[0])]) == 1
    assert "control characters" in capsys.readouterr().err
    assert main(["enroll", *args, "--label", "x", str(tmp_path / "nope.png")]) == 1
    assert "nope.png: no such file or folder" in capsys.readouterr().err
    assert main(["classify", *args, str(images[0])]) == 1  # no gallery yet
    assert "no gallery there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", *args, "--every", "0", str(images[0])])
    assert "--every: must be a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["enroll"], ["classify"], ["gallery", "list"], ["gallery", "forget"]])
def test_help_imports_nothing_heavy(command):
    code = (
        "import sys\n"
        "from edgessl.cli import main\n"
        "try:\n"
        f"    main({command + ['--help']!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted({'cv2', 'onnxruntime', 'numpy', 'torch'} & set(sys.modules))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "default" in out or command[0] == "gallery"
    assert "HEAVY []" in out
