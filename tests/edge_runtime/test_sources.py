"""SOURCE arguments: images, folders (recursive, sorted) and videos; unreadable images skipped."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgessl.edge_runtime.inference.sources import Frame, FrameReader, expand
from edgessl.errors import ImageError


def test_folders_expand_recursively_in_order(tmp_path):
    for name in ["b/2.PNG", "b/1.jpg", "a.webp", "c/d/e.bmp", "notes.txt", "c/clip.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in expand([tmp_path])] == [
        "a.webp", "b/1.jpg", "b/2.PNG", "c/d/e.bmp"]  # folders give images only
    assert expand([tmp_path / "c" / "clip.mp4"]) == [tmp_path / "c" / "clip.mp4"]
    with pytest.raises(ImageError, match=r"clip.mp4: unsupported file type '.mp4'; supported: .bmp"):
        expand([tmp_path / "c" / "clip.mp4"], videos=False)
    with pytest.raises(ImageError, match=r"notes.txt: unsupported file type '.txt'"):
        FrameReader([tmp_path / "notes.txt"])
    with pytest.raises(ImageError, match="gone: no such file or folder"):
        FrameReader([tmp_path / "gone"])


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    good = np.full((10, 12, 3), 99, np.uint8)
    assert cv2.imwrite(str(tmp_path / "1.png"), good)
    (tmp_path / "2.jpg").write_bytes(b"garbage")
    assert cv2.imwrite(str(tmp_path / "3.png"), good[..., 0])  # grayscale file -> BGR frame
    reader = FrameReader([tmp_path])
    frames = list(reader)
    assert [(f.source, f.index, f.timestamp_s, f.is_video) for f in frames] == [
        (str(tmp_path / "1.png"), 0, None, False), (str(tmp_path / "3.png"), 0, None, False)]
    assert all(f.image.shape == (10, 12, 3) for f in frames)
    assert reader.skipped == 1


def test_video_frames_every_n(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 24))
    for i in range(7):
        writer.write(np.full((24, 32, 3), i * 30, np.uint8))
    writer.release()
    frames = list(FrameReader([path], every=3))
    assert [(f.index, f.timestamp_s) for f in frames] == [(0, 0.0), (3, 0.12), (6, 0.24)]
    assert [int(f.image.mean() / 30 + 0.5) for f in frames] == [0, 3, 6]  # the right frames, decoded
    assert all(f.is_video for f in frames)


def test_frame_checks_its_image():
    with pytest.raises(ValueError, match="BGR uint8"):
        Frame("x", 0, None, np.zeros((4, 4), np.uint8))
