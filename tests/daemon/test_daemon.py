"""The inference loop: regions classified on their own, every-frame mode, gallery changes picked
up without restarting the streams, and an HTTP/MJPEG camera."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
from daemon_helpers import BLUE, GREEN, RED, make_config, textured, wait_for

from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.inference.extractor import FeatureExtractor


def split_clip(path, seconds: float = 2.0, fps: int = 10):
    """Left half red, right half blue."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (320, 120))
    for i in range(int(seconds * fps)):
        writer.write(np.hstack([textured(RED, i), textured(BLUE, i)]))
    writer.release()
    return path


def test_each_region_is_classified_on_its_own(tmp_path, tiny_bundle, start_daemon):
    clip = split_clip(tmp_path / "split.mp4")
    cam = {"id": "tray", "url": str(clip), "loop": True,
           "regions": [{"name": "left", "width": 0.5}, {"name": "right", "x": 0.5, "width": 0.5}]}
    events = []
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam]), extra_sinks={"t": events.append})
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    daemon.enrollment.enroll_images("blue", [textured(BLUE, i) for i in range(3)])
    wait_for(lambda: {(s["region"], s["label"]) for s in daemon.pipeline.states()} == {("left", "red"), ("right", "blue")},
             20, "left red and right blue")
    assert {(e.region, e.label) for e in events} >= {("left", "red"), ("right", "blue")}


def test_every_mode_processes_every_frame_of_a_file(tmp_path, tiny_bundle, clips, start_daemon):
    processed = []
    cam = {"id": "file", "url": str(clips["red"]), "mode": "every"}  # 20 frames, not looping
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam]),
                          observer=lambda stats: processed.extend(stats.cameras))
    wait_for(lambda: daemon.streams["file"].state == "ended" and len(processed) == 20, 20, "all 20 frames")
    status = daemon.streams["file"].status()
    assert (status.captured, status.processed, status.dropped) == (20, 20, 0)


def test_gallery_changes_by_another_process_are_picked_up(tmp_path, tiny_bundle, clips, start_daemon):
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]),
                                                               "loop": True}]))
    stream = daemon.streams["cam"]
    wait_for(lambda: daemon.pipeline.states()[0]["label"] == "unknown", 10, "unknown with an empty gallery")
    # `edgessl enroll` while the daemon runs: another connection to the same gallery file.
    with FeatureExtractor.from_bundle(daemon.model.bundle, threads=1) as ex, Gallery(daemon.gallery_path) as g:
        crops = [textured(RED, i) for i in range(3)]
        g.add("tomato", crops, ex.embed(crops), ex.fingerprint)
    wait_for(lambda: daemon.pipeline.states()[0]["label"] == "tomato", 15, "the new class")
    assert stream.status().reconnects == 0 and daemon.streams["cam"] is stream
    assert daemon.metrics.registry.get_sample_value("edgessl_gallery_classes") == 1


class _Mjpeg(BaseHTTPRequestHandler):
    stop = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        i = 0
        while not self.stop.is_set():
            ok, jpg = cv2.imencode(".jpg", textured(GREEN, i))
            try:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpg)).encode() + b"\r\n\r\n" + jpg.tobytes() + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return
            i += 1
            time.sleep(0.1)

    def log_message(self, *args: object) -> None:
        pass


def test_http_mjpeg_camera(tmp_path, tiny_bundle, start_daemon):
    _Mjpeg.stop.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mjpeg)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
        daemon = start_daemon(make_config(tmp_path, tiny_bundle, [{"id": "web", "url": url}]))
        daemon.enrollment.enroll_images("green", [textured(GREEN, i) for i in range(3)])
        wait_for(lambda: daemon.pipeline.states()[0]["label"] == "green", 20, "green from the MJPEG stream")
        assert daemon.streams["web"].config.kind == "http"
    finally:
        _Mjpeg.stop.set()
        server.shutdown()
        server.server_close()


def test_max_batch_is_the_batch_that_reaches_the_backend(tmp_path, tiny_bundle, clips, start_daemon):
    """48 regions with inference.max_batch 48: one backend call of 48 crops, and one Batch value
    whose per-crop fields line up (no silent cap at the extractor's own batch size)."""
    regions = [{"name": f"r{i}", "x": i / 48, "width": 1 / 48} for i in range(48)]
    cam = {"id": "wide", "url": str(clips["red"]), "loop": True, "regions": regions}
    batches = []
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [cam], inference={"max_batch": 48}),
                          observer=batches.append)
    daemon.enrollment.enroll_images("red", [textured(RED, i) for i in range(3)])
    backend = daemon.model.extractor.backend
    sizes: list[int] = []
    embed = backend.embed
    backend.embed = lambda batch: (sizes.append(len(batch)), embed(batch))[1]  # type: ignore[method-assign]
    wait_for(lambda: len(sizes) >= 3 and batches, 20, "a few passes")
    assert max(sizes) == 48 and set(sizes) <= {48, 3}  # every pass: all 48 crops at once (3: an enrollment)
    batch = batches[-1]
    assert len(batch) == 48 and batch.scores.shape == (48, len(batch.labels))
    assert set(batch.cameras) == {"wide"} and list(batch.regions) == [f"r{i}" for i in range(48)]
    assert (batch.latencies >= 0).all() and len(batch.decisions) == 48
