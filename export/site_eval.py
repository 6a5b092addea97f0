"""The site's evaluation set and how a bundle scores on it: leave-one-out nearest centred
prototype (the gallery's own rule) over the crops people enrolled at the site, through the
device's code path (device.selection, inference.extractor, fewshot.prototypes). The gate
(site_gate.py) compares a candidate with the running model on it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import numpy as np

from edgessl.edge_runtime.bundle.manifest import (
    Bundle,
    GateScore,
    Manifest,
    load_bundle,
)
from edgessl.edge_runtime.device.profiles import DeviceProfile, resolve_profile
from edgessl.edge_runtime.device.selection import RunPlan, choose
from edgessl.edge_runtime.fewshot.prototypes import center_normalize
from edgessl.edge_runtime.inference.backends import backend_for, backend_unavailable
from edgessl.edge_runtime.inference.extractor import FeatureExtractor
from edgessl.edge_runtime.inference.preprocess import read_image
from edgessl.edge_runtime.inference.sources import IMAGE_SUFFIXES
from edgessl.errors import EdgesslError

log = logging.getLogger(__name__)

# Below this many usable images the comparison is noise (one image is 10 points at 10 images).
DEFAULT_MIN_IMAGES = 10
Z95 = 1.959963984540054  # two-sided 95% normal quantile
# Ties between two identical models must compare equal, whatever the float rounding.
_EPS = 1e-9
# The health check's stand-in profile when no device profile is known here: the server is not
# the device, so only "runs, finite, matches its golden set" is judged, not speed or memory.
STANDIN_PROFILE = "gate-server"
STANDIN_LATENCY_MS = 10_000.0
STANDIN_MEMORY_MB = 1 << 20

# A device profile, a built-in profile's name or a .toml file; None: see `eval_plan`/`health_checks`.
ProfileArg: TypeAlias = DeviceProfile | str | Path | None


class EvalSetError(EdgesslError):
    """The site's evaluation set is missing, empty or has too few classes to judge a model."""


# --- the evaluation set --------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSet:
    """The readable images of an evaluation folder with at least 2 per class (BGR uint8)."""

    root: Path
    images: list[np.ndarray]
    labels: np.ndarray  # (N,) index into classes
    classes: tuple[str, ...]
    notes: tuple[str, ...]  # skipped classes, unreadable images, stray files

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


def load_eval_set(eval_dir: str | Path) -> EvalSet:
    """Read `EVAL_DIR/<label>/<image>` (files directly inside each class folder). Classes with
    fewer than 2 readable images cannot be left out of their own prototype: skipped, with a note.
    Raises EvalSetError when the folder is missing or fewer than 2 classes remain."""
    root = Path(eval_dir)
    if not root.is_dir():
        raise EvalSetError(f"{root}: evaluation set not found (expected a folder EVAL_DIR/<label>/<image>)")
    notes: list[str] = []
    stray = [p.name for p in root.iterdir() if p.is_file()]
    if stray:
        notes.append(f"{len(stray)} file(s) directly in {root} ignored: images belong in a folder named by their label")
    images: list[np.ndarray] = []
    labels: list[int] = []
    classes: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        readable = []
        for f in files:
            try:
                readable.append(read_image(f))
            except EdgesslError as exc:
                notes.append(f"unreadable image skipped: {exc}")
        if len(readable) < 2:
            notes.append(f"class {folder.name!r} skipped: {len(readable)} image(s); leave-one-out needs at least 2")
            continue
        labels += [len(classes)] * len(readable)
        images += readable
        classes.append(folder.name)
    if len(classes) < 2:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise EvalSetError(f"{root}: the evaluation set needs at least 2 classes with at least 2 images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))}) each; usable: {', '.join(classes) or 'none'} "
                           f"of the class folders {', '.join(found) or '(none)'}")
    return EvalSet(root, images, np.array(labels, np.int64), tuple(classes), tuple(notes))


# --- leave-one-out few-shot ----------------------------------------------------------------

@dataclass(frozen=True)
class LooResult:
    """Leave-one-out nearest-prototype classification of every image."""

    labels: np.ndarray  # (N,) true class index
    predicted: np.ndarray  # (N,) predicted class index
    margin: np.ndarray  # (N,) own-class cosine minus the best other class's cosine
    n_classes: int

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.predicted.shape != (n,) or self.margin.shape != (n,):
            raise ValueError(f"inconsistent shapes: labels {self.labels.shape}, predicted "
                             f"{self.predicted.shape}, margin {self.margin.shape}")

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def class_accuracy(self) -> np.ndarray:
        """(C,) accuracy of each class."""
        hits = np.bincount(self.labels, weights=self.correct, minlength=self.n_classes)
        return hits / np.bincount(self.labels, minlength=self.n_classes)


def leave_one_out(emb: np.ndarray, labels: np.ndarray, center: np.ndarray | None = None) -> LooResult:
    """Classify each row by the nearest prototype (centred, L2-normalised mean, as the gallery
    builds it) where its own class's prototype is built without it. `labels` are 0..C-1, every
    class with at least 2 rows."""
    labels = np.asarray(labels, np.int64)
    emb = np.asarray(emb)
    if emb.ndim != 2 or labels.shape != (len(emb),):
        raise ValueError(f"expected emb (N, D) and N labels, got emb {emb.shape} and labels {labels.shape}")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=n_classes)
    if n_classes < 2 or (counts < 2).any():
        raise ValueError(f"leave-one-out needs at least 2 classes of at least 2 rows; counts per class: "
                         f"{counts.tolist()}")
    x = center_normalize(emb, center).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]), np.float64)
    np.add.at(sums, labels, x)
    # The normalised mean equals the normalised sum, so prototypes are sums normalised.
    scores = x @ center_normalize(sums).astype(np.float64).T  # (N, C)
    rows = np.arange(len(x))
    own = center_normalize(sums[labels] - x).astype(np.float64)  # own class without the row itself
    scores[rows, labels] = np.einsum("nd,nd->n", x, own)
    others = scores.copy()
    others[rows, labels] = -np.inf
    return LooResult(labels=labels, predicted=scores.argmax(axis=1),
                     margin=scores[rows, labels] - others.max(axis=1), n_classes=n_classes)


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1] and is sensible at 0 or n hits)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n hits the bound is exactly 0 or 1 (rounding would leave 1e-16 off it).
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


# --- one model on the site's evaluation set ------------------------------------------------

@dataclass(frozen=True)
class SiteEval:
    """One bundle on the site's evaluation set (leave-one-out, see `leave_one_out`)."""

    model: str
    version: int
    artifact: str  # label of the artifact that ran
    backend: str
    classes: tuple[str, ...]
    counts: dict[str, int]  # images per class
    per_class: dict[str, float]  # accuracy per class
    accuracy: float  # mean over images
    class_accuracy: float  # mean over classes
    margin: float  # mean own-class cosine minus best other
    ci95: tuple[float, float]  # Wilson score interval of `accuracy` over the images
    images: int
    notes: tuple[str, ...]

    def score(self) -> GateScore:
        return GateScore(model=self.model, version=self.version, artifact=self.artifact, backend=self.backend,
                         accuracy=self.accuracy, class_accuracy=self.class_accuracy, ci95=self.ci95,
                         margin=self.margin)


def eval_plan(manifest: Manifest, *, artifact: str | None = None, profile: DeviceProfile | None = None) -> RunPlan:
    """What runs the evaluation, as a device would run the bundle: the named artifact; else what
    device.selection chooses for `profile`; else the export's default artifact of the first of
    the bundle's profiles whose backend runs here; else ONNX Runtime on the fp32 model."""
    if artifact is not None:
        a = manifest.artifact_named(artifact)
        return RunPlan(backend_for(a.format), a, reason="named")
    if profile is not None:
        return choose(manifest, profile)
    for name in manifest.profiles:
        label = manifest.defaults.get(name)
        if label is None:
            continue
        a = manifest.artifact_named(label)
        backend = backend_for(a.format)
        if backend_unavailable(backend) is None:
            return RunPlan(backend, a, reason=f"export's choice for {name}")
    return choose(manifest)


def site_eval(bundle: Bundle | str | Path, eval_dir: str | Path | EvalSet, *, artifact: str | None = None,
              profile: ProfileArg = None, threads: int | None = None) -> SiteEval:
    """Embed every evaluation image with `bundle` (see `eval_plan` for which artifact) and score
    leave-one-out few-shot classification on it. Raises EvalSetError for an unusable folder."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    data = eval_dir if isinstance(eval_dir, EvalSet) else load_eval_set(eval_dir)
    plan = eval_plan(bundle.manifest, artifact=artifact, profile=_profile(profile))
    if threads is not None:
        plan = replace(plan, threads=threads)
    with FeatureExtractor.from_plan(bundle, plan) as extractor:
        emb = extractor.embed(data.images)
        center = extractor.center
    if not np.isfinite(emb).all():
        raise EdgesslError(f"{bundle.root}: the model produced NaN or infinite embeddings on the evaluation set")
    loo = leave_one_out(emb, data.labels, center)
    per_class = loo.class_accuracy()
    hits = int(loo.correct.sum())
    m = bundle.manifest.model
    return SiteEval(
        model=m.name, version=m.version, artifact=plan.artifact.label, backend=plan.backend, classes=data.classes,
        counts={c: int(n) for c, n in zip(data.classes, np.bincount(data.labels), strict=True)},
        per_class={c: float(a) for c, a in zip(data.classes, per_class, strict=True)},
        accuracy=hits / len(loo.labels), class_accuracy=float(per_class.mean()), margin=float(loo.margin.mean()),
        ci95=wilson_interval(hits, len(loo.labels)), images=len(loo.labels), notes=data.notes)


def _profile(profile: ProfileArg) -> DeviceProfile | None:
    if profile is None or isinstance(profile, DeviceProfile):
        return profile
    return resolve_profile(profile)[0]


# --- the gate ------------------------------------------------------------------------------
