"""The daemon's report, as /health gives it: with the token, every part's state; without, only
whether it is up (nothing a camera sees, no URL, no path)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edgessl.edge_runtime.daemon.streams import State

if TYPE_CHECKING:
    from edgessl.edge_runtime.daemon.core import Daemon


def health_report(daemon: Daemon, full: bool = True) -> dict[str, Any]:
    """The daemon's report; `full=False`: only whether it is up (what /health answers without
    the token: nothing a camera sees, no URL, no path)."""
    statuses = {cid: s.status() for cid, s in daemon.streams.items()}
    alive = daemon.inference_alive()
    api_alive = daemon.supervisor.api_alive()
    streaming = all(st.state == State.STREAMING for st in statuses.values())
    storage = daemon.storage.status()
    status = ("ok" if alive and api_alive and streaming and storage["ok"] else "degraded") if alive else "failed"
    head = {"status": status, "device": daemon.device, "uptime_s": round(time.time() - daemon.started_at, 1)}
    if not full:
        return {**head, "cameras": {cid: str(st.state) for cid, st in statuses.items()}, "full": False}
    return {
        **head,
        "model": daemon.model.info() if daemon.models.holder is not None else None,
        "cameras": {cid: st.as_dict() for cid, st in statuses.items()},
        "inference": {"alive": alive, "last_batch": daemon.pipeline.last_batch, "errors": daemon.loop_errors,
                      "last_error": daemon.last_loop_error},
        "api": {"alive": api_alive, **(daemon.server.status() if daemon.server else {}),
                "event_streams": daemon.event_streams.status()},
        "sinks": daemon.sink_status(),
        "storage": storage,  # problems: a read-only, unwritable or full state_dir or gallery (the page shows them)
        "gallery": {"reembedding": dict(daemon.models.reembedding)},
        "background": daemon.background.status(),
        "tracks": daemon.track_store.status() if daemon.track_store is not None else None,
        "samples": daemon.collection.status(),  # the sample store, kept counts per camera, drift scores
        "work": {**daemon.work.status(), "live_enrollments": daemon.live.status()},
        "full": True,
    }
