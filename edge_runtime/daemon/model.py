"""The model the daemon runs, and how it changes while the streams keep running.

What runs is decided by `device.selection`, once, for everyone: with `model.root` the daemon
runs the artifact that the device's health check verified at install (`device.slots.
active_model`); with `model.bundle`, ONNX Runtime on the fp32 model. `model.backend` and
`model.precision`, when set, override either.

A new model is loaded and checked beside the running one; the gallery's crops are embedded
with it into a side table in small batches while the running model keeps serving its own
embeddings; then, with the inference paused (`ModelHolder.swap`), the staged embeddings are
moved into place (one short transaction, plus the few exemplars enrolled meanwhile) and the
models are swapped. A gallery found stale at start (the model changed while the daemon was
down) is re-embedded in the background, in batches committed one by one, round-robin over
classes: the API and the streams come up at once, every class is served again from the first
batches on, and a crash loses at most one batch. Uploaded bundles are installed only through the device root's A/B installer, which
verifies the signature against the root's trusted keys before anything is written: a daemon
that runs a plain bundle folder has nowhere trusted to install to, so it refuses uploads and
says how to set up a device root.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgessl.edge_runtime.bundle.manifest import Bundle, load_bundle
from edgessl.edge_runtime.daemon.config import DaemonConfig
from edgessl.edge_runtime.daemon.errors import Conflict, Forbidden
from edgessl.edge_runtime.daemon.events import EventHub
from edgessl.edge_runtime.daemon.metrics import Metrics
from edgessl.edge_runtime.device.selection import RunPlan, choose
from edgessl.edge_runtime.fewshot.gallery import Gallery
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.memory import release_free_memory
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    extractor: FeatureExtractor
    plan: RunPlan
    generation: int

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"name": m.model.name, "version": m.model.version, "backbone": m.model.backbone,
                "fingerprint": self.extractor.fingerprint, "bundle": str(self.bundle.root),
                "embedding_dim": m.embedding_dim, "generation": self.generation,
                "backend": self.plan.backend, "artifact": self.plan.artifact.label,
                "precision": self.plan.precision, "threads": self.plan.threads, "why": self.plan.reason,
                # How many unlabelled images calibrated decisions are normalised by (0: plain cosines).
                "cohort": 0 if self.extractor.cohort is None else len(self.extractor.cohort)}

    @property
    def tag(self) -> str:
        return f"{self.bundle.manifest.model.name}:{self.bundle.manifest.model.version}"


class ModelHolder:
    """The current model; `use()` while embedding, `swap()` waits for users to finish."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model
        self._users = 0
        self._swapping = False
        self._cond = threading.Condition()

    @property
    def current(self) -> LoadedModel:
        return self._model

    @contextmanager
    def use(self) -> Iterator[LoadedModel]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._users += 1
            model = self._model
        try:
            yield model
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def swap(self, new: LoadedModel, prepare: Callable[[LoadedModel], None]) -> LoadedModel:
        """With no user left, run prepare(new) and make `new` current; return the old model."""
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._swapping = True
            while self._users:
                self._cond.wait()
        try:
            prepare(new)
            old, self._model = self._model, new
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()
        return old

    def close(self) -> None:
        self._model.extractor.close()


class ModelService:
    """Loads, swaps and installs the daemon's model."""

    def __init__(self, config: DaemonConfig, metrics: Metrics, hub: EventHub) -> None:
        self.config = config
        self.metrics = metrics
        self.hub = hub
        self.holder: ModelHolder | None = None
        self._generation = 0
        self._install_lock = threading.Lock()
        self._reembed_stop = threading.Event()
        self._reembed_thread: threading.Thread | None = None
        self.reembedding: dict[str, Any] = {"running": False, "done": 0, "total": 0, "model": None, "error": None}

    # -- what runs ----------------------------------------------------------------------------

    def plan(self, bundle_dir: Path) -> tuple[Bundle, RunPlan]:
        """The bundle at `bundle_dir` and how to run it here (see the module docstring)."""
        m = self.config.model
        bundle = load_bundle(bundle_dir)
        explicit = {"backend": m.backend, "precision": m.precision}
        if m.root is not None:
            from edgessl.edge_runtime.device.profiles import load_profile
            from edgessl.edge_runtime.device.slots import PROFILE_FILE, active_model

            active = active_model(m.root) if m.backend is None and m.precision is None else None
            if active is not None and Path(bundle_dir).resolve() == Path(active.bundle_dir).resolve():
                plan = active.plan  # what the installer's health check verified
            else:
                plan = choose(bundle.manifest, load_profile(Path(m.root) / PROFILE_FILE), **explicit)
        else:
            plan = choose(bundle.manifest, None, **explicit)
        if m.threads is not None:
            plan = replace(plan, threads=m.threads)
        elif plan.threads is None:
            # Neither the config nor the device profile says: leave a core to the cameras' decoders
            # and the frame path. On 2 cores at twice the sustainable load, 1 backend thread processed
            # every crop offered (601/s) where 2 threads got 498/s (docs/benchmarks.md, daemon).
            plan = replace(plan, threads=max(1, (os.cpu_count() or 1) - 1))
        return bundle, plan

    def initial_bundle(self) -> Path:
        m = self.config.model
        if m.root is not None:  # the active slot, if a key the device trusts now signed it
            from edgessl.edge_runtime.device.slots import active_model

            return Path(active_model(m.root).bundle_dir)
        assert m.bundle is not None
        return m.bundle

    def load(self, bundle_dir: Path) -> LoadedModel:
        bundle, plan = self.plan(bundle_dir)
        extractor = FeatureExtractor.from_plan(bundle, plan)
        release_free_memory()  # what parsing and optimising the model left free in the heap
        self._generation += 1
        log.info("running %s v%d: %s %s (%s)", bundle.manifest.model.name, bundle.manifest.model.version,
                 plan.backend, plan.artifact.label, plan.reason)
        return LoadedModel(bundle, extractor, plan, self._generation)

    def _announce(self, model: LoadedModel) -> None:
        mi = model.bundle.manifest.model
        self.metrics.set_model(mi.name, mi.version, model.extractor.fingerprint, model.plan.backend,
                               model.plan.artifact.label, model.plan.precision)

    def start(self) -> LoadedModel:
        """Reconcile the device root (if any), load the model, and start re-embedding a stale
        gallery in the background (the caller need not wait for it)."""
        if self.config.model.root is not None:
            self._reconcile_root(Path(self.config.model.root))
        model = self.load(self.initial_bundle())
        self.holder = ModelHolder(model)
        self._announce(model)
        self._start_reembed(model)
        return model

    @staticmethod
    def _reconcile_root(root: Path) -> None:
        """What an interrupted install left (staging folders, a state file that disagrees with
        `current`) is repaired before the active slot is loaded; `recover` logs and notes it."""
        from edgessl.edge_runtime.device.slots import locked, recover

        try:
            with locked(root):
                recover(root)
        except EdgesslError as exc:
            log.warning("%s: device root not reconciled at start: %s", root, exc)

    # -- re-embedding ---------------------------------------------------------------------------

    def _progress(self, done: int, total: int) -> None:
        self.reembedding.update(done=done, total=total)
        if done == total or done % (self.config.enrollment.reembed_batch * 16) < self.config.enrollment.reembed_batch:
            log.info("re-embedding: %d/%d exemplars done", done, total)

    def _start_reembed(self, model: LoadedModel) -> None:
        try:
            with Gallery(self.config.gallery_path) as gallery:
                stale = 0 if gallery.read_only else gallery.stale(model.extractor.fingerprint)
        except EdgesslError as exc:
            log.warning("cannot check the gallery for stale embeddings: %s", exc)
            return
        if not stale:
            return
        self._reembed_stop = stop = threading.Event()
        self.reembedding = {"running": True, "done": 0, "total": stale, "model": model.tag, "error": None}
        log.info("re-embedding %d stale exemplars with %s in the background (batches of %d)", stale, model.tag,
                 self.config.enrollment.reembed_batch)

        def work() -> None:
            started = time.monotonic()
            try:
                with Gallery(self.config.gallery_path) as gallery:
                    n = gallery.reembed(model.extractor, self.config.enrollment.reembed_batch, stop=stop.is_set,
                                        pause_s=self.config.enrollment.reembed_pause_s, progress=self._progress)
                log.info("re-embedded %d exemplars with %s in %.1f s%s", n, model.tag, time.monotonic() - started,
                         " (stopped)" if stop.is_set() else "")
            except Exception as exc:
                self.reembedding["error"] = f"{type(exc).__name__}: {exc}"
                log.exception("background re-embedding failed")
            finally:
                self.reembedding["running"] = False

        self._reembed_thread = threading.Thread(target=work, name="reembed", daemon=True)
        self._reembed_thread.start()

    def _stop_reembed(self) -> None:
        thread = self._reembed_thread
        if thread is not None and thread.is_alive():
            self._reembed_stop.set()
            thread.join()  # it stops after the batch in progress

    @property
    def current(self) -> LoadedModel:
        if self.holder is None:
            raise RuntimeError("the daemon is not started")
        return self.holder.current

    def use(self) -> AbstractContextManager[LoadedModel]:
        if self.holder is None:
            raise RuntimeError("the daemon is not started")
        return self.holder.use()

    def close(self) -> None:
        self._reembed_stop.set()
        if self._reembed_thread is not None:
            self._reembed_thread.join(1.0)
        if self.holder is not None and (self._reembed_thread is None or not self._reembed_thread.is_alive()):
            self.holder.close()

    # -- changes ------------------------------------------------------------------------------

    def reload(self, bundle_dir: Path) -> dict[str, Any]:
        """Load `bundle_dir` (checksums verified), re-embed the gallery with it and switch to it,
        without touching the streams. The running model stays when anything fails."""
        if self.holder is None:
            raise RuntimeError("the daemon is not started")
        old_info = self.current.info()
        self._stop_reembed()
        new = self.load(Path(bundle_dir))
        batch = self.config.enrollment.reembed_batch
        try:
            started = time.monotonic()
            with Gallery(self.config.gallery_path) as gallery:  # the running model keeps serving meanwhile
                staged = gallery.stage(new.extractor, batch_size=batch)
            log.info("staged %d embeddings for %s in %.1f s", staged, new.tag, time.monotonic() - started)
        except BaseException:
            new.extractor.close()
            raise

        def prepare(model: LoadedModel) -> None:
            started = time.monotonic()
            with Gallery(self.config.gallery_path) as gallery:
                n = gallery.reembed(model.extractor, batch)  # the staged ones, and any enrolled meanwhile
            log.info("switched %d exemplars to %s in %.2f s (inference paused)", n, model.tag,
                     time.monotonic() - started)

        try:
            old = self.holder.swap(new, prepare)
        except BaseException:
            new.extractor.close()
            raise
        old.extractor.close()
        self._announce(new)
        self.metrics.model_reloads.inc()
        info = new.info()
        log.info("model switched: %s v%s -> %s v%s (%s %s)", old_info["name"], old_info["version"], info["name"],
                 info["version"], info["backend"], info["artifact"])
        self.hub.publish({"type": "model", "model": info})
        return info

    def check_can_install(self) -> None:
        """Forbidden (403) without a device root, Conflict (409) while an install runs: what the API
        answers from an upload's headers, before storing any of its body."""
        if self.config.model.root is None:
            raise Forbidden(
                "this daemon runs a fixed bundle folder (model.bundle), so it has no trusted keys to check an "
                "uploaded bundle's signature against and installs nothing; provision a device root with "
                "`edgessl device init --root DIR --profile NAME --trust KEY.pub`, flash it, and run "
                "`edgessl run --root DIR` (or set model.root in the config)")
        if self._install_lock.locked():
            raise Conflict("another model upload is being installed; try again when it is done")

    def install(self, archive: Path, *, allow_downgrade: bool = False, allow_model_change: bool = False
                ) -> dict[str, Any]:
        """Install an uploaded bundle archive (.tar) through the device root's A/B installer:
        signature, checksums, binding to this device, health check, switch, reload; the running
        model stays otherwise."""
        self.check_can_install()
        root = self.config.model.root
        assert root is not None
        if not self._install_lock.acquire(blocking=False):
            raise Conflict("another model upload is being installed; try again when it is done")
        try:
            from edgessl.edge_runtime.device.installer import install
            from edgessl.edge_runtime.device.slots import active_bundle

            result = install(root, archive, allow_downgrade=allow_downgrade, allow_model_change=allow_model_change,
                             on_switch=self.reload)
            active = Path(active_bundle(root))
            if active.resolve() != Path(self.current.bundle.root).resolve():
                self.reload(active)  # the installer switched without calling us back
            return {"model": self.current.info(), "install": result.to_dict()}
        finally:
            self._install_lock.release()
