"""The model the daemon runs, and how it changes while the streams keep running.

What runs is decided by `device.selection`, once, for everyone: with `model.root` the daemon
runs the artifact that the device's health check verified at install (`device.slots.
active_model`); with `model.bundle`, ONNX Runtime on the fp32 model. `model.backend` and
`model.precision`, when set, override either.

A new model is loaded and checked beside the running one; then, with the inference paused
(`ModelHolder.swap`), the gallery is re-embedded from its stored crops and the models are
swapped. Uploaded bundles are installed only through the device root's A/B installer, which
verifies the signature against the root's trusted keys before anything is written: a daemon
that runs a plain bundle folder has nowhere trusted to install to, so it refuses uploads and
says how to set up a device root.
"""

from __future__ import annotations

import logging
import threading
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
                "precision": self.plan.precision, "threads": self.plan.threads, "why": self.plan.reason}

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

    # -- what runs ----------------------------------------------------------------------------

    def plan(self, bundle_dir: Path) -> tuple[Bundle, RunPlan]:
        """The bundle at `bundle_dir` and how to run it here (see the module docstring)."""
        m = self.config.model
        bundle = load_bundle(bundle_dir)
        explicit = {"backend": m.backend, "precision": m.precision}
        if m.root is not None:
            from edgessl.edge_runtime.device.profiles import load_profile
            from edgessl.edge_runtime.device.slots import PROFILE_FILE, active_model

            if m.backend is None and m.precision is None and \
                    Path(bundle_dir).resolve() == Path(active_model(m.root).bundle_dir).resolve():
                plan = active_model(m.root).plan
            else:
                plan = choose(bundle.manifest, load_profile(Path(m.root) / PROFILE_FILE), **explicit)
        else:
            plan = choose(bundle.manifest, None, **explicit)
        if m.threads is not None:
            plan = replace(plan, threads=m.threads)
        return bundle, plan

    def initial_bundle(self) -> Path:
        m = self.config.model
        if m.root is not None:
            from edgessl.edge_runtime.device.slots import active_bundle

            return Path(active_bundle(m.root))
        assert m.bundle is not None
        return m.bundle

    def load(self, bundle_dir: Path) -> LoadedModel:
        bundle, plan = self.plan(bundle_dir)
        extractor = FeatureExtractor.from_plan(bundle, plan)
        self._generation += 1
        log.info("running %s v%d: %s %s (%s)", bundle.manifest.model.name, bundle.manifest.model.version,
                 plan.backend, plan.artifact.label, plan.reason)
        return LoadedModel(bundle, extractor, plan, self._generation)

    def _announce(self, model: LoadedModel) -> None:
        mi = model.bundle.manifest.model
        self.metrics.set_model(mi.name, mi.version, model.extractor.fingerprint, model.plan.backend,
                               model.plan.artifact.label, model.plan.precision)

    def start(self) -> LoadedModel:
        model = self.load(self.initial_bundle())
        with Gallery(self.config.gallery_path) as gallery:
            if gallery.stale(model.extractor.fingerprint):
                gallery.reembed(model.extractor)
        self.holder = ModelHolder(model)
        self._announce(model)
        return model

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
        if self.holder is not None:
            self.holder.close()

    # -- changes ------------------------------------------------------------------------------

    def reload(self, bundle_dir: Path) -> dict[str, Any]:
        """Load `bundle_dir` (checksums verified), re-embed the gallery with it and switch to it,
        without touching the streams. The running model stays when anything fails."""
        if self.holder is None:
            raise RuntimeError("the daemon is not started")
        old_info = self.current.info()
        new = self.load(Path(bundle_dir))

        def prepare(model: LoadedModel) -> None:
            with Gallery(self.config.gallery_path) as gallery:
                n = gallery.reembed(model.extractor)
            log.info("re-embedded %d exemplars with %s", n, model.tag)

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

    def install(self, archive: Path, *, allow_downgrade: bool = False) -> dict[str, Any]:
        """Install an uploaded bundle archive (.tar) through the device root's A/B installer:
        signature, checksums, health check, switch, reload; the running model stays otherwise."""
        root = self.config.model.root
        if root is None:
            raise Forbidden(
                "this daemon runs a fixed bundle folder (model.bundle), so it has no trusted keys to check an "
                "uploaded bundle's signature against and installs nothing; provision a device root with "
                "`edgessl device init --root DIR --profile NAME --trust KEY.pub`, flash it, and run "
                "`edgessl run --root DIR` (or set model.root in the config)")
        if not self._install_lock.acquire(blocking=False):
            raise Conflict("another model upload is being installed; try again when it is done")
        try:
            from edgessl.edge_runtime.device.installer import install
            from edgessl.edge_runtime.device.slots import active_bundle

            result = install(root, archive, allow_downgrade=allow_downgrade, on_switch=self.reload)
            active = Path(active_bundle(root))
            if active.resolve() != Path(self.current.bundle.root).resolve():
                self.reload(active)  # the installer switched without calling us back
            return {"model": self.current.info(), "install": result.to_dict()}
        finally:
            self._install_lock.release()
