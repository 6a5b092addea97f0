"""Prometheus metrics of the daemon, in a registry of its own (several daemons can share a process).

Per-camera counters and states are read from the streams when Prometheus scrapes (one source
of truth); latencies are histograms observed by the inference loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgessl.edge_runtime.daemon.streams import State, StreamStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
_INFERENCE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class _StreamCollector(Collector):
    def __init__(self, statuses: Callable[[], Iterable[StreamStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        statuses = list(self._statuses())
        families = {
            "captured": CounterMetricFamily("edgessl_frames_captured", "frames read from the camera", labels=["camera"]),
            "processed": CounterMetricFamily("edgessl_frames_processed", "frames classified", labels=["camera"]),
            "dropped": CounterMetricFamily("edgessl_frames_dropped", "frames replaced by a newer one before the "
                                           "inference took them (latest mode)", labels=["camera"]),
            "reconnects": CounterMetricFamily("edgessl_camera_reconnects", "successful reconnections after a "
                                              "lost stream", labels=["camera"]),
            "connect_failures": CounterMetricFamily("edgessl_camera_connect_failures", "failed attempts to "
                                                    "open the stream", labels=["camera"]),
            "stalls": CounterMetricFamily("edgessl_camera_stalls", "times no frame came for the stall "
                                          "timeout", labels=["camera"]),
        }
        state = GaugeMetricFamily("edgessl_camera_state", "1 for the camera's current state",
                                  labels=["camera", "state"])
        fps = GaugeMetricFamily("edgessl_camera_fps", "frames read per second, recently", labels=["camera"])
        for s in statuses:
            for key, family in families.items():
                family.add_metric([s.camera], getattr(s, key))
            for st in State:
                state.add_metric([s.camera, str(st)], 1.0 if s.state == st else 0.0)
            fps.add_metric([s.camera], s.fps)
        yield from families.values()
        yield state
        yield fps


class Metrics:
    def __init__(self, statuses: Callable[[], Iterable[StreamStatus]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_StreamCollector(statuses))
        self.inference_seconds = Histogram("edgessl_inference_seconds", "time to embed and classify one batch",
                                           buckets=_INFERENCE_BUCKETS, registry=r)
        self.batch_size = Histogram("edgessl_batch_size", "crops per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.capture_to_decision = Histogram(
            "edgessl_capture_to_decision_seconds", "from the frame's capture to its smoothed decision",
            ["camera"], buckets=_LATENCY_BUCKETS, registry=r)
        self.events = Counter("edgessl_events", "region label changes emitted", ["camera"], registry=r)
        self.object_events = Counter("edgessl_object_events", "what objects did (entered, label, changed, left)",
                                     ["camera", "type"], registry=r)
        self.objects = Gauge("edgessl_objects", "objects (confirmed tracks) on the camera now", ["camera"],
                             registry=r)
        self.object_labels = Counter("edgessl_object_labels", "objects that left, by their last label",
                                     ["camera", "label"], registry=r)
        self.sink_errors = Counter("edgessl_sink_errors", "messages a sink failed to deliver", ["sink"], registry=r)
        self.sink_dropped = Counter("edgessl_sink_dropped", "messages dropped because a sink fell behind",
                                    ["sink"], registry=r)
        self.gallery_classes = Gauge("edgessl_gallery_classes", "enrolled classes", registry=r)
        self.gallery_exemplars = Gauge("edgessl_gallery_exemplars", "enrolled exemplars (positive and negative)",
                                       registry=r)
        self.model_version = Gauge("edgessl_model_version", "version of the running model", registry=r)
        self.model_info = Gauge("edgessl_model_info", "1 for the running model", ["name", "version", "fingerprint", "backend", "artifact", "precision"],
                                registry=r)
        self.model_reloads = Counter("edgessl_model_reloads", "models loaded while running", registry=r)
        # Collection (edge_runtime/samples): what the sampler kept and why, what it turned down and why
        # (interval, rate_hour, rate_day, duplicate, not_worth, storage...; quota_evicted: a stored sample
        # evicted to make room), the store's size, and each camera's drift score.
        self.samples_kept = Counter("edgessl_samples_kept", "crops kept for the server, by reason (unknown, "
                                    "low_margin, novel)", ["camera", "reason"], registry=r)
        self.samples_rejected = Counter("edgessl_samples_rejected", "crops offered to the sampler and not kept, "
                                        "by reason; quota_evicted: stored samples evicted to make room",
                                        ["camera", "reason"], registry=r)
        self.samples_bytes = Gauge("edgessl_samples_bytes", "JPEG bytes of the stored samples", registry=r)
        self.samples_stored = Gauge("edgessl_samples_stored", "samples waiting to be harvested", registry=r)
        self.drift = Gauge("edgessl_drift", "1 - cos(running mean, reference mean) of the camera's embeddings",
                           ["camera"], registry=r)

    def set_model(self, name: str, version: int, fingerprint: str, backend: str, artifact: str,
                  precision: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, str(version), fingerprint[:12], backend, artifact, precision).set(1)
        self.model_version.set(version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
