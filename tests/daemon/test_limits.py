"""Heavy but valid input (issue 13, items 1 and 2): decoded pixels are limited per image, per
request and in flight (read from the headers before decoding); decoding and embedding run in
a bounded worker pool off the event loop (503 + Retry-After when it is full); live
enrollments are capped per camera and overall (429 + Retry-After). The daemon's peak RSS stays
bounded while 12 PNGs of 6300x6300 are enrolled at once, and /health answers within 0.5 s
during that upload and during 45 concurrent live enrollments."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
from daemon_helpers import RED, make_config, textured, wait_for, write_yaml

from edgessl.edge_runtime.daemon.errors import Busy
from edgessl.edge_runtime.daemon.work import Slots, WorkPool

TOKEN = "limits-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RSS_BOUND_MB = 400
HEALTH_BOUND_S = 0.5


def big_png() -> bytes:
    """The issue's image: 6300x6300 (39.7 M pixels, 119 MB decoded) in ~133 KB of PNG."""
    img = np.full((6300, 6300, 3), (40, 120, 200), np.uint8)
    img[::50] = 255
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class HealthProbe:
    """Polls GET /health in a thread; `worst` is the slowest answer while it ran."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers=AUTH) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    r = client.get(f"{self.url}/health")
                    if r.status_code >= 500:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.times.append(time.monotonic() - start)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)

    @property
    def worst(self) -> float:
        return max(self.times)


def test_twelve_huge_pngs_at_once_keep_rss_bounded_and_health_responsive(tmp_path, tiny_bundle, clips,
                                                                          daemon_process):
    config = write_yaml(tmp_path / "edge.yaml", f"""
        device: rss-test
        state_dir: {tmp_path / "state"}
        model: {{bundle: {tiny_bundle}, threads: 1}}
        cameras:
          - {{id: cam, url: {clips["red"]}, loop: true}}
        api: {{port: 0}}
    """)
    proc = daemon_process(config, tmp_path / "daemon.log", env={"EDGESSL_API_TOKEN": TOKEN})
    url = proc.api_url()
    data = big_png()
    assert len(data) < 200_000
    pid = proc.proc.pid
    before = vm_kb(pid, "VmHWM")
    files = [("images", (f"{i}.png", data, "image/png")) for i in range(12)]
    with HealthProbe(url) as probe:
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/classes", headers=AUTH, data={"label": "huge"}, files=files, timeout=300)
        took = time.monotonic() - started
    peak = vm_kb(pid, "VmHWM")
    print(f"12 x 6300x6300 PNG ({len(data)} bytes each): {r.status_code} in {took:.1f} s; peak RSS "
          f"{before / 1024:.0f} MB before, {peak / 1024:.0f} MB after (bound {RSS_BOUND_MB} MB); /health "
          f"{len(probe.times)} polls, worst {probe.worst * 1000:.0f} ms")
    assert r.status_code == 201 and r.json()["added"] == 12, r.text
    assert peak < RSS_BOUND_MB * 1024, f"peak RSS {peak / 1024:.0f} MB"
    assert not probe.failures, probe.failures
    assert len(probe.times) >= 5 and probe.worst < HEALTH_BOUND_S, f"/health took up to {probe.worst:.2f} s"

    # The crops are stored scaled down: the longest side at most 4x the model's input size.
    cls = next(c for c in httpx.get(f"{url}/v1/classes", headers=AUTH).json() if c["label"] == "huge")
    crop = httpx.get(f"{url}/v1/exemplars/{cls['exemplar_ids'][0]}.jpg", headers=AUTH).content
    shape = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR).shape
    assert max(shape[:2]) <= 4 * 64 and len(crop) < 100_000, (shape, len(crop))  # the tiny model's input: <= 64

    # One more image is past the per-request limit of decoded pixels: refused from the headers.
    files.append(("images", ("13.png", data, "image/png")))
    r = httpx.post(f"{url}/v1/classes", headers=AUTH, data={"label": "huger"}, files=files, timeout=60)
    assert r.status_code == 413 and "api.max_request_pixels" in r.json()["detail"], r.text
    assert vm_kb(pid, "VmHWM") == peak  # nothing was decoded


def test_45_concurrent_live_enrollments_are_capped_and_health_answers(tmp_path, tiny_bundle, clips,
                                                                      start_daemon):
    (tmp_path / "token").write_text(TOKEN)
    cameras = [{"id": f"cam{i}", "url": str(clips["red"]), "loop": True} for i in range(3)]
    # 45 connections from one address: above the per-client connection cap (32), which has its own test.
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, cameras,
                                      api={"port": 0, "token_file": str(tmp_path / "token"),
                                           "max_connections_per_client": 64}))
    wait_for(lambda: all(s.status().processed > 0 for s in daemon.streams.values()), 20, "frames from all cameras")
    body = {"label": "live", "frames": 100, "interval_s": 60, "timeout_s": 25}
    client = httpx.Client(base_url=daemon.api_url, timeout=60, limits=httpx.Limits(max_connections=64), headers=AUTH)
    pool = ThreadPoolExecutor(45)
    try:
        with HealthProbe(daemon.api_url) as probe:
            futures = [pool.submit(client.post, f"/v1/cameras/cam{i % 3}/enroll", headers=AUTH, json=body)
                       for i in range(45)]
            # Those past the caps are answered at once; the ones admitted keep collecting shots.
            wait_for(lambda: sum(f.done() for f in futures) >= 41, 30, "the refused live enrollments")
            wait_for(lambda: len(probe.times) >= 20, 30, "20 health polls")
        done = [f.result() for f in futures if f.done()]
        running = daemon.live.status()["running"]
        print(f"45 live enrollments: {len(done)} answered at once "
              f"({sorted({r.status_code for r in done})}), running {running}; /health {len(probe.times)} "
              f"polls, worst {probe.worst * 1000:.0f} ms")
        assert len(done) == 41 and all(r.status_code == 429 for r in done), [r.text for r in done]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in done)
        assert sum(running.values()) == 4 and max(running.values()) <= 2  # 4 overall, 2 per camera
        messages = {r.json()["detail"].split(" (")[0] for r in done}
        assert any("running on cam" in m for m in messages) and any("running (at most 4" in r.json()["detail"]
                                                                     for r in done)
        assert not probe.failures, probe.failures
        assert probe.worst < HEALTH_BOUND_S, f"/health took up to {probe.worst:.2f} s"
        assert client.get("/v1/state", timeout=5).status_code == 200
    finally:
        daemon.stop()  # the admitted enrollments stop with the daemon
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()


def test_a_full_work_queue_answers_503_with_retry_after(tmp_path, tiny_bundle, clips, start_daemon):
    (tmp_path / "token").write_text(TOKEN)
    daemon = start_daemon(make_config(tmp_path, tiny_bundle, [{"id": "cam", "url": str(clips["red"]), "loop": True}],
                                      api={"port": 0, "token_file": str(tmp_path / "token"), "workers": 1,
                                           "max_queued": 2}))
    release = threading.Event()
    blocked = [daemon.work.submit(release.wait, 30) for _ in range(2)]  # the worker and the queue are taken
    try:
        ok, png = cv2.imencode(".png", textured(RED, 0))
        r = httpx.post(f"{daemon.api_url}/v1/classes", headers=AUTH, data={"label": "busy"},
                       files=[("images", ("a.png", png.tobytes(), "image/png"))], timeout=10)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert "busy" in r.json()["detail"] and "api.max_queued" in r.json()["detail"]
        assert httpx.get(f"{daemon.api_url}/health", headers=AUTH, timeout=5).json()["work"]["rejected"] == 1
    finally:
        release.set()
    for f in blocked:
        f.result(10)
    r = httpx.post(f"{daemon.api_url}/v1/classes", headers=AUTH, data={"label": "busy"},
                   files=[("images", ("a.png", png.tobytes(), "image/png"))], timeout=30)
    assert r.status_code == 201, r.text


def test_the_pixel_budget_holds_decodes_back_until_they_fit():
    pool = WorkPool(workers=2, max_queued=4, max_pixels=50)
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first() -> None:
        with pool.pixels(40):
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        first_in.wait(10)
        with pool.pixels(30):  # 40 + 30 > 50: waits for the first to finish
            order.append("second in")

    try:
        a, b = pool.submit(first), pool.submit(second)
        first_in.wait(10)
        wait_for(lambda: pool.status()["pixels_in_flight"] == 40, 5, "the first decode")
        assert order == ["first in"]
        release.set()
        a.result(10), b.result(10)
        assert order == ["first in", "first out", "second in"]
        with pool.pixels(500):  # one image larger than the budget still runs, alone
            assert pool.status()["pixels_in_flight"] == 500
    finally:
        release.set()
        pool.close()


def test_slots_cap_per_key_and_overall():
    import asyncio

    slots = Slots(per_key=1, total=2, what="live enrollment")
    gate = threading.Event()

    async def main() -> list[object]:
        tasks = [asyncio.ensure_future(slots.run(k, gate.wait, 10)) for k in ("a", "b")]
        await asyncio.sleep(0)
        results: list[object] = []
        for key in ("a", "c"):
            with pytest.raises(Busy) as caught:
                await slots.run(key, gate.wait, 10)
            results.append(caught.value)
        gate.set()
        await asyncio.gather(*tasks)
        return results

    try:
        per_key, overall = asyncio.run(main())
        assert per_key.status == 429 and "on a" in str(per_key) and per_key.headers["Retry-After"] == "5"
        assert "at most 2 at once" in str(overall)
        assert slots.status()["running"] == {}
    finally:
        slots.close()
