"""A file camera in mode `every` with objects: the reader hands the daemon every frame, but the
tracker must finish one frame before it begins the next, so each pass takes one frame of such a
camera (several frames of one camera in a pass made the objects stage mismatch its crops)."""

from __future__ import annotations

from daemon_helpers import make_config, wait_for


def test_objects_in_mode_every_take_one_frame_per_pass_and_track(tmp_path, tiny_bundle):
    from edgessl import scene
    from edgessl.edge_runtime.daemon.core import Daemon
    from edgessl.edge_runtime.daemon.streams import State

    objects = scene.plan(["circle", "square"], ["star"], seed=2, returns=1, strangers=1, lookalikes=0, stop_s=1.0)
    video = tmp_path / "scene.mp4"
    frames = len(scene.write(video, objects, seed=2))
    config = make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(video), "mode": "every", "realtime": False,
                                                  "queue_size": 64, "objects": {}}])
    seen: list[int] = []
    with Daemon(config, observer=lambda batch: seen.append(sum(o.camera == "cam" for o in batch.objects))) as daemon:
        stream = daemon.streams["cam"]
        wait_for(lambda: stream.status().state == State.ENDED, 120, "the scene played to its end")
        # Every frame the reader decoded reaches the inference (a decoder may give a few less than written).
        wait_for(lambda: stream.status().processed == stream.status().captured, 30, "every frame processed")
        assert 0 < stream.status().captured <= frames
        assert daemon.loop_errors == 0, daemon.last_loop_error
        assert max(seen) == 1  # one frame of the camera per pass
        assert daemon.metrics.object_events.labels("cam", "entered")._value.get() >= 2
