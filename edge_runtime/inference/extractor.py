"""Images to embeddings with the model of a bundle: preprocessing + a backend.

The device's share of the preprocessing is crop and resize into one uint8 batch; the rest
(channel order, scaling, mean/std) is in the graph of artifacts that take uint8 crops, and
done here in numpy only for older float-input artifacts (see Artifact.input)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from edgessl.edge_runtime.bundle.manifest import Artifact, Bundle, PreprocessSpec
from edgessl.edge_runtime.inference.backends import Backend, backend_class, load_backend
from edgessl.edge_runtime.inference.preprocess import model_inputs
from edgessl.errors import BackendError, BundleError

if TYPE_CHECKING:
    from edgessl.edge_runtime.device.selection import RunPlan

log = logging.getLogger(__name__)


class FeatureExtractor:
    """Raw (uncentred) embeddings of BGR images, plus what is needed to compare them:
    the centring vector, the fingerprint of the model that made them and, when the bundle has
    one, the cohort's raw embeddings (fewshot.cohort)."""

    def __init__(
        self, backend: Backend, spec: PreprocessSpec, center: np.ndarray, fingerprint: str, embedding_dim: int,
        cohort: np.ndarray | None = None,
    ) -> None:
        if center.shape != (embedding_dim,):
            raise BundleError(f"centre vector has shape {center.shape}; the manifest's embedding_dim "
                              f"is {embedding_dim}, so it must be ({embedding_dim},)")
        if cohort is not None and (cohort.ndim != 2 or cohort.shape[1] != embedding_dim
                                   or not np.isfinite(cohort).all()):
            raise BundleError(f"the cohort must be finite embeddings (M, {embedding_dim}); got shape {cohort.shape}")
        self.cohort = None if cohort is None else cohort.astype(np.float32)
        self.backend = backend
        self.spec = spec
        self.center = center.astype(np.float32)
        self.fingerprint = fingerprint
        self.embedding_dim = embedding_dim
        self.backend_name: str | None = None  # set by load(): what runs, for /v1/model and /metrics
        self.artifact: Artifact | None = None
        self.input_kind = getattr(backend, "input_kind", "float32-nchw")
        # One dummy frame checks that the model really produces embedding_dim features.
        probe = self.backend.embed(model_inputs([np.zeros((*spec.input_size, 3), np.uint8)], spec, self.input_kind))
        if probe.shape != (1, embedding_dim):
            raise BundleError(f"the model outputs embeddings of shape {probe.shape[1:]}; "
                              f"the manifest says embedding_dim {embedding_dim}")

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, backend: str = "onnxruntime", threads: int | None = None,
        precision: str = "fp32", **options: Any,
    ) -> FeatureExtractor:
        """Load the bundle's `precision` artifact for `backend` (a name from backends.BACKENDS)."""
        artifact = bundle.manifest.artifact(backend_class(backend).artifact_format, precision)
        return cls.load(bundle, backend, artifact, threads=threads, **options)

    @classmethod
    def from_plan(cls, bundle: Bundle, plan: RunPlan) -> FeatureExtractor:
        """Load what `device.selection` chose for this device."""
        return cls.load(bundle, plan.backend, plan.artifact, threads=plan.threads, **plan.options)

    @classmethod
    def load(cls, bundle: Bundle, backend: str, artifact: Artifact, *, threads: int | None = None,
             **options: Any) -> FeatureExtractor:
        manifest = bundle.manifest
        center = _load_npy(bundle.path(manifest.center))
        cohort = None if manifest.cohort is None else _load_npy(bundle.path(manifest.cohort))
        model = load_backend(backend, bundle.path(artifact.file), threads=threads, **options)
        try:
            if model.input_kind != artifact.input:
                raise BundleError(f"{artifact.file}: the manifest says the model takes {artifact.input} input, "
                                  f"the model itself takes {model.input_kind}")
            extractor = cls(model, manifest.preprocess, center, bundle.fingerprint(artifact),
                            manifest.embedding_dim, cohort)
        except BaseException:
            model.close()
            raise
        extractor.backend_name, extractor.artifact = backend, artifact
        log.info("model %s v%d (%s on %s), %d-d embeddings", manifest.model.name, manifest.model.version,
                 artifact.label, backend, manifest.embedding_dim)
        return extractor

    def inputs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 images -> the batch the model takes (crop + resize into one uint8 batch; and
        normalised for float-input artifacts). Touches no backend: another thread may run it."""
        return model_inputs(images, self.spec, self.input_kind)

    def embed_inputs(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """A batch from `inputs` -> (N, D) float32 raw embeddings, `batch_size` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(batch), self.embedding_dim), np.float32)
        for start in range(0, len(batch), batch_size):
            part = batch[start:start + batch_size]
            emb = self.backend.embed(part)
            if emb.shape != (len(part), self.embedding_dim):
                raise BackendError(f"backend returned embeddings of shape {emb.shape}, "
                                   f"expected ({len(part)}, {self.embedding_dim})")
            out[start:start + len(part)] = emb
        return out

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """BGR uint8 images -> (N, D) float32 raw embeddings (resized `batch_size` at a time)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(images), self.embedding_dim), np.float32)
        for start in range(0, len(images), batch_size):
            batch = self.inputs(images[start:start + batch_size])
            out[start:start + len(batch)] = self.embed_inputs(batch, batch_size)
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a numpy .npy array: {exc}") from exc
