"""Camera streams: latest-frame and every-frame modes, backoff, missing cameras, and a real RTSP
server that is killed and restarted, or stopped (SIGSTOP) and resumed."""

from __future__ import annotations

import re
import time

from daemon_helpers import RED, make_config, render_clip, textured, wait_for

from edgessl.edge_runtime.daemon.config import BackoffConfig, CameraConfig
from edgessl.edge_runtime.daemon.streams import CameraStream, State


def camera(**kwargs) -> CameraConfig:
    return CameraConfig.model_validate({"id": "cam", **kwargs})


def metric(daemon, name: str, camera: str) -> float:
    text = daemon.metrics.render().decode()
    match = re.search(rf'^{name}{{camera="{camera}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {camera} not in the metrics"
    return float(match.group(1))


def test_latest_mode_keeps_the_newest_frame_and_counts_the_dropped(tmp_path):
    clip = render_clip(tmp_path / "c.mp4", [RED], 2.0)  # 20 frames
    stream = CameraStream(camera(url=str(clip), realtime=False))
    stream.start()
    try:
        wait_for(lambda: stream.state == State.ENDED, 20, "the end of the file")
        status = stream.status()
        assert (status.captured, status.dropped) == (20, 19)  # nobody took any: all but the newest dropped
        (frame,) = stream.take(8)
        assert frame.seq == 20 and frame.image.shape == (120, 160, 3)
        assert stream.take(8) == [] and stream.status().processed == 1
    finally:
        stream.stop()
        stream.join(5)


def test_every_mode_hands_over_each_frame_in_order(tmp_path):
    clip = render_clip(tmp_path / "c.mp4", [RED], 3.0)  # 30 frames, more than the queue holds
    stream = CameraStream(camera(url=str(clip), mode="every", queue_size=4))
    stream.start()
    seqs: list[int] = []
    try:
        def drained() -> bool:
            seqs.extend(f.seq for f in stream.take(3))
            return stream.state == State.ENDED and not stream.take(0) and len(seqs) == 30
        wait_for(drained, 20, "every frame")
        assert seqs == list(range(1, 31)) and stream.status().dropped == 0
    finally:
        stream.stop()
        stream.join(5)


def test_realtime_file_plays_at_its_frame_rate_and_loops(tmp_path):
    clip = render_clip(tmp_path / "c.mp4", [RED], 0.5)  # 5 frames at 10 fps
    stream = CameraStream(camera(url=str(clip), loop=True))
    stream.start()
    try:
        wait_for(lambda: stream.status().captured >= 12, 10, "a few loops of the clip")
        status = stream.status()
        assert status.state == State.STREAMING and status.reconnects == 0  # a loop is not a reconnection
        assert 6 < status.fps < 16
    finally:
        stream.stop()
        stream.join(5)


def test_backoff_grows_to_its_cap_with_jitter():
    b = BackoffConfig(initial_s=0.5, max_s=4, factor=2, jitter=0.2)
    assert [b.delay(n, 0.5) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert b.delay(1, 0.0) == 0.4 and abs(b.delay(3, 0.9999) - 2.4) < 1e-3


def test_failed_after_max_attempts(tmp_path):
    stream = CameraStream(camera(url=str(tmp_path / "nope.mp4"), max_attempts=3,
                                 backoff={"initial_s": 0.01, "max_s": 0.02}))
    stream.start()
    try:
        wait_for(lambda: stream.state == State.FAILED, 10, "the camera to give up")
        status = stream.status()
        assert status.connect_failures == 3 and "no such file" in (status.last_error or "")
    finally:
        stream.stop()
        stream.join(5)


def test_missing_cameras_do_not_stop_the_others(tmp_path, tiny_bundle, clips, start_daemon):
    cameras = [
        {"id": "good", "url": str(clips["red"]), "loop": True},
        {"id": "nofile", "url": str(tmp_path / "missing.mp4")},
        {"id": "nodevice", "url": "/dev/video99"},
        {"id": "noserver", "url": "rtsp://127.0.0.1:9/cam", "open_timeout_s": 1},  # nothing listens on port 9
    ]
    events = []
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, cameras), extra_sinks={"t": events.append})
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    wait_for(lambda: any(e.camera == "good" and e.label == "red" for e in events), 20, "red on the good camera")
    health = daemon.health()
    assert health["status"] == "degraded"
    states = {cid: cam["state"] for cid, cam in health["cameras"].items()}
    assert states["good"] == "streaming"
    for cid in ("nofile", "nodevice", "noserver"):
        assert states[cid] in ("connecting", "backing_off"), states
        wait_for(lambda cid=cid: daemon.health()["cameras"][cid]["connect_failures"] >= 1, 15, f"{cid} to fail")


def test_rtsp_server_killed_and_restarted(tmp_path, tiny_bundle, rtsp_server, start_daemon):
    cam = {"id": "rtsp", "url": rtsp_server.url, "stall_timeout_s": 3, "open_timeout_s": 3,
           "backoff": {"initial_s": 0.2, "max_s": 1.0}}
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam]))
    stream = daemon.streams["rtsp"]
    wait_for(lambda: stream.status().processed >= 5, 30, "frames from the RTSP server")
    assert stream.status().reconnects == 0

    rtsp_server.kill()
    wait_for(lambda: stream.state in (State.CONNECTING, State.BACKING_OFF), 15, "the lost stream to be noticed")
    wait_for(lambda: stream.status().connect_failures >= 1, 15, "a failed reconnection while the server is down")
    before = stream.status().processed

    rtsp_server.start()  # same port
    wait_for(lambda: stream.state == State.STREAMING and stream.status().processed > before + 5, 30,
             "frames again after the restart")
    assert stream.status().reconnects == 1
    assert metric(daemon, "edgessl_camera_reconnects_total", "rtsp") == 1
    assert daemon.health()["status"] == "ok"


def test_rtsp_server_stopped_is_detected_by_the_stall_timeout(tmp_path, tiny_bundle, rtsp_server, start_daemon):
    cam = {"id": "rtsp", "url": rtsp_server.url, "stall_timeout_s": 1.5, "open_timeout_s": 1.5,
           "backoff": {"initial_s": 0.2, "max_s": 0.5}}
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam]))
    stream = daemon.streams["rtsp"]
    wait_for(lambda: stream.status().processed >= 5, 30, "frames from the RTSP server")

    rtsp_server.pause()  # SIGSTOP: the connection stays open, nothing comes
    paused_at = time.time()
    try:
        wait_for(lambda: stream.status().stalls == 1, 1.5 + 3, "the stall to be detected")
        assert metric(daemon, "edgessl_camera_stalls_total", "rtsp") == 1
        # The stalled connection is dropped; the reader backs off and retries (and fails: the server sleeps).
        wait_for(lambda: stream.status().connect_failures >= 1, 15, "a failed reconnection")
        states = [st for t, st in stream.status().history if t >= paused_at]
        assert states[:3] == ["stalled", "backing_off", "connecting"], states
    finally:
        rtsp_server.resume()  # SIGCONT
    before = stream.status().captured
    wait_for(lambda: stream.state == State.STREAMING and stream.status().captured > before + 5, 30,
             "frames again after SIGCONT")
    assert stream.status().reconnects >= 1
