"""The next pass's crops are resized while the backend runs this one.

A prefetch thread takes the newest frames as soon as the inference loop has taken the pass
before, crops their regions and resizes them into the model's uint8 batch (OpenCV releases
the GIL, so this overlaps the backend's own threads), and hands the pass over. At most one
pass waits (a slot, not a queue): its frames are as fresh as the end of the previous pass
allows, and a slow backend makes frames be skipped (latest mode), never piled up.

The objects path stays in the inference loop: a tracker must finish one frame of a camera
before it looks at the next.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from edgessl.edge_runtime.daemon.pipeline import Prepared
from edgessl.edge_runtime.daemon.streams import CapturedFrame

log = logging.getLogger(__name__)


class Prefetcher:
    """`run` in its own thread; the inference loop calls `take`."""

    def __init__(self, collect: Callable[[], list[CapturedFrame]],
                 prepare: Callable[[list[CapturedFrame], bool], Prepared],
                 wake: threading.Event, stop: threading.Event) -> None:
        """prepare(frames, resize): the pass's crops, resized into the model's batch when `resize`."""
        self._collect, self._prepare = collect, prepare
        self._wake, self._stop = wake, stop
        self._slot = threading.Semaphore(1)  # taken while a prepared pass waits for the loop
        self._ready: queue.Queue[Prepared] = queue.Queue(maxsize=1)
        self.errors = 0

    def run(self) -> None:
        while not self._stop.is_set():
            if not self._slot.acquire(timeout=0.5):
                continue
            prepared = self._next()
            if prepared is None:
                self._slot.release()
            else:
                self._ready.put(prepared)  # never blocks: the slot was free, so the queue is empty

    def _next(self) -> Prepared | None:
        """The next pass (None when stopping, or when no camera gave a frame)."""
        while not self._wake.wait(0.5):
            if self._stop.is_set():
                return None
        self._wake.clear()
        try:
            frames = self._collect()
            if not frames:
                return None
            self._wake.set()  # a camera in mode `every` may queue more frames than one pass takes
            try:
                return self._prepare(frames, True)
            except Exception:  # the loop resizes them itself and reports what goes wrong there
                self.errors += 1
                log.debug("prefetch: resizing failed; the inference loop will do it", exc_info=True)
                return self._prepare(frames, False)
        except Exception:
            self.errors += 1
            log.exception("prefetch: collecting frames failed")
            self._stop.wait(0.5)
            return None

    def take(self, timeout: float) -> Prepared | None:
        """The prepared pass, waiting up to `timeout` s; frees the slot for the next one."""
        try:
            prepared = self._ready.get(timeout=timeout)
        except queue.Empty:
            return None
        self._slot.release()
        return prepared
