"""The pipelined frame path: the next pass's crops are resized while the backend runs this one,
and a camera's max_fps caps what the daemon takes from it."""

from __future__ import annotations

import time

from daemon_helpers import BLUE, RED, make_config, textured, wait_for
from test_daemon import split_clip


def test_the_next_pass_is_resized_ahead_and_regions_get_their_labels(tmp_path, tiny_bundle, start_daemon):
    clip = split_clip(tmp_path / "split.mp4")
    cam = {"id": "tray", "url": str(clip), "loop": True,
           "regions": [{"name": "left", "width": 0.5}, {"name": "right", "x": 0.5, "width": 0.5}]}
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam], inference={"pipelined": True}))
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    daemon.enrollment.enroll_images("blue", [textured(BLUE, i) for i in range(3)])
    wait_for(lambda: {(s["region"], s["label"]) for s in daemon.pipeline.states()} == {("left", "red"), ("right", "blue")},
             20, "left red and right blue")
    wait_for(lambda: daemon.pipeline.resized_ahead >= 5, 10, "passes resized by the prefetch thread")


def test_without_pipelining_the_loop_resizes_and_decides_the_same(tmp_path, tiny_bundle, start_daemon):
    """The default: the inference loop crops and resizes each pass itself."""
    clip = split_clip(tmp_path / "split.mp4")
    cam = {"id": "tray", "url": str(clip), "loop": True,
           "regions": [{"name": "left", "width": 0.5}, {"name": "right", "x": 0.5, "width": 0.5}]}
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam]))
    assert not daemon.config.inference.pipelined
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    daemon.enrollment.enroll_images("blue", [textured(BLUE, i) for i in range(3)])
    wait_for(lambda: {(s["region"], s["label"]) for s in daemon.pipeline.states()} == {("left", "red"), ("right", "blue")},
             20, "left red and right blue")
    assert daemon.pipeline.resized_ahead == 0


def test_max_fps_caps_the_frames_taken_from_a_busy_camera(tmp_path, tiny_bundle, clips, start_daemon):
    cams = [{"id": "busy", "url": str(clips["red"]), "loop": True, "fps": 25, "max_fps": 4},
            {"id": "other", "url": str(clips["blue"]), "loop": True, "fps": 25}]
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, cams))
    busy, other = daemon.streams["busy"], daemon.streams["other"]
    wait_for(lambda: busy.status().processed > 0 and other.status().processed > 0, 15, "both cameras processed")
    b0, o0, t0 = busy.status().processed, other.status().processed, time.monotonic()
    wait_for(lambda: other.status().processed - o0 >= 40, 30, "40 frames of the uncapped camera")
    elapsed = time.monotonic() - t0
    taken = busy.status().processed - b0
    assert 1 <= taken <= 4 * elapsed + 2  # at most max_fps, give or take the window's edges
    assert other.status().processed - o0 > taken  # the other camera is not held to it
