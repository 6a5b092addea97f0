"""Evaluation of frozen features: k-NN (DINO's weighted vote), a linear probe, and N-way K-shot
episodes with the device's own prototype code. Features are cached per checkpoint in
RUN/features/ (keyed by the checkpoint file, folder, subset and seed)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from edgessl.train.checkpoint import load_backbone
from edgessl.train.data import ImageFolder, collate
from edgessl.train.views import eval_transform

log = logging.getLogger(__name__)


def labelled_subset(dataset: ImageFolder, per_class: int | None, seed: int) -> list[int]:
    """Up to `per_class` images of each class, chosen deterministically."""
    labels = np.array(dataset.labels)
    if (labels < 0).any():
        raise ValueError(f"{dataset.root}: evaluation needs one sub-folder per class; "
                         f"{int((labels < 0).sum())} images lie directly in the root")
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    for c in range(len(dataset.class_names)):
        members = np.flatnonzero(labels == c)
        if per_class is not None and len(members) > per_class:
            members = np.sort(rng.choice(members, per_class, replace=False))
        idx.extend(members.tolist())
    return idx


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, folder: str | Path, ckpt: dict[str, Any],
                     per_class: int | None = None, seed: int = 0,
                     cache_dir: Path | None = None, cache_key: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (N, D), labels (N,) and class names of a labelled folder, cached per checkpoint."""
    pre = ckpt["preprocess"]
    size = pre["input_size"][0]
    dataset = ImageFolder(folder, size)
    idx = labelled_subset(dataset, per_class, seed)
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{cache_key}|{Path(folder).resolve()}|{per_class}|{seed}|{len(dataset)}".encode())
        cache = cache_dir / f"features-{key.hexdigest()[:16]}.npz"
        if cache.is_file():
            data = np.load(cache)
            return data["features"], data["labels"], dataset.class_names
    feats, labels = [], []
    loader = DataLoader(Subset(dataset, idx), batch_size=256, collate_fn=collate)
    for images, y, _ in loader:
        feats.append(backbone(eval_transform(images, size, pre["mean"], pre["std"])).float().numpy())
        labels.append(y.numpy())
    features, label_arr = np.concatenate(feats), np.concatenate(labels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=features, labels=label_arr)
    return features, label_arr, dataset.class_names


def checkpoint_key(path: Path, random_weights: bool) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|random={random_weights}"


@dataclass(frozen=True)
class Encoded:
    """A labelled folder encoded by one checkpoint: features (N, D), labels (N,), class names."""

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or len(self.labels) != len(self.features):
            raise ValueError(f"features {self.features.shape} and {len(self.labels)} labels do not match")


class Evaluator:
    """One checkpoint (file or run folder), its backbone and its feature cache."""

    def __init__(self, ckpt_path: Path, random_weights: bool = False) -> None:
        from edgessl.train.checkpoint import load_checkpoint

        ckpt_path = Path(ckpt_path)
        self.ckpt = load_checkpoint(ckpt_path)
        self.path = ckpt_path / "checkpoints" / "last.pt" if ckpt_path.is_dir() else ckpt_path
        self.run_dir = self.path.parent.parent
        self.random_weights = random_weights
        self.backbone = load_backbone(self.ckpt, random_weights=random_weights)
        self.key = checkpoint_key(self.path, random_weights)

    @property
    def step(self) -> int:
        return int(self.ckpt.get("step", 0))

    def encode(self, folder: Path, per_class: int | None, seed: int) -> Encoded:
        f, y, names = extract_features(self.backbone, folder, self.ckpt, per_class, seed,
                                       self.run_dir / "features", self.key)
        return Encoded(f, y, names)

    def encode_pair(self, train: Path, test: Path, per_class: int | None, seed: int) -> tuple[Encoded, Encoded]:
        a, b = self.encode(train, per_class, seed), self.encode(test, per_class, seed + 1)
        if a.class_names != b.class_names:
            raise ValueError(f"classes of {train} {a.class_names} differ from those of {test} {b.class_names}")
        return a, b

    def center(self, support: Encoded) -> np.ndarray:
        # Random weights have no training data mean: centre on the support set's mean instead.
        return support.features.mean(0) if self.random_weights else self.ckpt["center"].numpy()


# ---------------------------------------------------------------- k-NN

def knn_predict(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, n_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
    """Class scores (N_test, C) of the weighted k-NN vote of Wu et al. 2018 / DINO: the k most
    cosine-similar training features vote for their class with weight exp(similarity / T)."""
    tr = torch.nn.functional.normalize(torch.from_numpy(train_f).float(), dim=1)
    ty = torch.from_numpy(train_y).long()
    k = min(k, len(tr))
    out = []
    for s in range(0, len(test_f), chunk):
        q = torch.nn.functional.normalize(torch.from_numpy(test_f[s:s + chunk]).float(), dim=1)
        sim, idx = (q @ tr.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes).scatter_add_(1, ty[idx], (sim / temperature).exp())
        out.append(votes)
    return torch.cat(out).numpy()


def knn(ckpt_path: Path, train: Path, test: Path, *, k: int = 200, temperature: float = 0.1,
        per_class: int | None = None, seed: int = 0, random_weights: bool = False) -> dict[str, Any]:
    ev = Evaluator(ckpt_path, random_weights)
    tr, te = ev.encode_pair(train, test, per_class, seed)
    return _knn_result(ev, tr, te, k, temperature)


def _knn_result(ev: Evaluator, tr: Encoded, te: Encoded, k: int, temperature: float) -> dict[str, Any]:
    scores = knn_predict(tr.features, tr.labels, te.features, len(tr.class_names), k, temperature)
    ranked = np.argsort(-scores, axis=1)
    top1 = float((ranked[:, 0] == te.labels).mean())
    top5 = float((ranked[:, :5] == te.labels[:, None]).any(axis=1).mean()) if scores.shape[1] > 5 else None
    return {"checkpoint": str(ev.path), "step": ev.step, "random_weights": ev.random_weights, "k": k,
            "temperature": temperature, "train": len(tr.labels), "test": len(te.labels),
            "top1": top1, "top5": top5, "classes": tr.class_names}


def knn_over_checkpoints(run: Path, train: Path, test: Path, *, k: int = 200, temperature: float = 0.1,
                         per_class: int | None = None, seed: int = 0) -> list[tuple[int, float]]:
    """(step, k-NN top-1) for every checkpoint kept in RUN/checkpoints (step_*.pt and last.pt)."""
    ckpt_dir = Path(run) / "checkpoints"
    paths = sorted(ckpt_dir.glob("step_*.pt")) + [ckpt_dir / "last.pt"]
    out: dict[int, float] = {}
    for path in paths:
        if not path.is_file():
            continue
        ev = Evaluator(path)
        if ev.step in out:
            continue
        tr, te = ev.encode_pair(train, test, per_class, seed)
        out[ev.step] = _knn_result(ev, tr, te, k, temperature)["top1"]
    return sorted(out.items())


# ---------------------------------------------------------------- linear probe

def linear_probe(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, n_classes: int,
                 weight_decay: float = 1e-4, max_iter: int = 300) -> np.ndarray:
    """Multinomial logistic regression on standardised frozen features (full-batch L-BFGS,
    deterministic); returns class scores for the test features."""
    x = torch.from_numpy(train_f).float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    y = torch.from_numpy(train_y).long()
    lin = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin((torch.from_numpy(test_f).float() - mean) / std).numpy()


def linear(ckpt_path: Path, train: Path, test: Path, *, per_class: int | None = None, seed: int = 0,
           weight_decay: float = 1e-4, max_iter: int = 300, random_weights: bool = False) -> dict[str, Any]:
    ev = Evaluator(ckpt_path, random_weights)
    tr, te = ev.encode_pair(train, test, per_class, seed)
    scores = linear_probe(tr.features, tr.labels, te.features, len(tr.class_names), weight_decay, max_iter)
    return {"checkpoint": str(ev.path), "step": ev.step, "random_weights": random_weights,
            "train": len(tr.labels), "test": len(te.labels), "weight_decay": weight_decay,
            "top1": float((scores.argmax(1) == te.labels).mean()), "classes": tr.class_names}


# ---------------------------------------------------------------- few-shot episodes

def fewshot_episodes(ev: Evaluator, support: Encoded, query: Encoded, *, way: int, shot: int, queries: int,
                     episodes: int, seed: int) -> Any:
    from edgessl.edge_runtime.fewshot.prototypes import evaluate_episodes

    return evaluate_episodes(support.features, support.labels, query.features, query.labels, n_way=way,
                             k_shot=shot, n_query=queries, episodes=episodes, seed=seed,
                             center=ev.center(support))


def fewshot(ckpt_path: Path, support: Path, query: Path, *, way: int, shot: int, queries: int,
            episodes: int, per_class: int | None, seed: int, random_weights: bool) -> dict[str, Any]:
    ev = Evaluator(ckpt_path, random_weights)
    s, q = ev.encode_pair(support, query, per_class, seed)
    # Centred on the training data's mean: the server has the same role as center.npy on the device.
    result = fewshot_episodes(ev, s, q, way=way, shot=shot, queries=queries, episodes=episodes, seed=seed)
    return {"checkpoint": str(ev.path), "random_weights": random_weights, "way": way, "shot": shot,
            "episodes": episodes, "accuracy": float(result.mean), "ci95": float(result.ci95),
            "classes": s.class_names}


def fewshot_heads(ev: Evaluator, support: Encoded, query: Encoded, *, way: int, shots: list[int],
                  heads: tuple[str, ...], queries: int, episodes: int, seed: int) -> dict[int, dict[str, Any]]:
    """shot -> head -> EpisodeResult: every head on the same episodes (the device's head code)."""
    from edgessl.edge_runtime.fewshot.head import evaluate_heads

    return {shot: evaluate_heads(support.features, support.labels, query.features, query.labels, heads=heads,
                                 n_way=way, k_shot=shot, n_query=queries, episodes=episodes, seed=seed,
                                 center=ev.center(support))
            for shot in shots}


# ---------------------------------------------------------------- open set

def openset(ev: Evaluator, support: Encoded, query: Encoded, *, known: int, shot: int, splits: int, seed: int,
            fallback: float, background: int, cohort: int = 0) -> dict[str, Any]:
    """AUROC, FAR at 95% TAR and operating points of calibrated vs global thresholds (the device's
    calibration code), averaged over random splits into `known` enrolled and unknown classes."""
    from edgessl.edge_runtime.fewshot.openset import evaluate_openset, summarize

    results = evaluate_openset(support.features, support.labels, query.features, query.labels, known=known,
                               shot=shot, splits=splits, seed=seed, center=ev.center(support),
                               fallback=fallback, background=background, cohort=cohort)
    return {"checkpoint": str(ev.path), "random_weights": ev.random_weights, "known": known, "shot": shot,
            "splits": splits, "fallback": fallback, "background": background, "cohort": results[0].cohort_size, "queries": len(query.labels),
            "classes": support.class_names,
            **{name: {"mean": m, "ci95": c} for name, (m, c) in summarize(results).items()}}
