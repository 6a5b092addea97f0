"""Checkpoint -> bundle directory: artifacts in every requested format, each checked against
fp32 torch through the device's own preprocessing and backend, a report, and the manifest."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgessl.edge_runtime.bundle.manifest import (
    Artifact,
    InputKind,
    Manifest,
    ModelInfo,
    PreprocessSpec,
    ReportRow,
    file_entry,
    load_bundle,
    now_iso,
    write_manifest,
)
from edgessl.edge_runtime.device.profiles import DeviceProfile, resolve_profile
from edgessl.edge_runtime.fewshot.cohort import COHORT_IMAGES, MIN_COHORT
from edgessl.edge_runtime.fewshot.prototypes import evaluate_episodes
from edgessl.edge_runtime.inference.backends import load_backend
from edgessl.edge_runtime.inference.parity import DEFAULT_MIN_COSINE, golden_agreement, passes
from edgessl.edge_runtime.inference.preprocess import normalize
from edgessl.edge_runtime.inference.timing import speed
from edgessl.errors import EdgesslError
from edgessl.export.formats import FORMATS, ExportContext, Format, formats_for_profile, nvidia_gpu
from edgessl.export.graph_input import put_preprocessing_in_graph
from edgessl.export.onnx_export import export_onnx
from edgessl.export.parity import backend_embeddings, compare, device_inputs, torch_embeddings
from edgessl.train.checkpoint import load_backbone, load_checkpoint
from edgessl.train.data import list_images, load_rgb

log = logging.getLogger(__name__)

GOLDEN_IMAGES = 8
EPISODES = 600  # fixed episodes (same seed for every format) so formats are comparable
# INT8 quantization aims this far above the strictest target profile's threshold, so that a
# device whose int8 kernels round differently still passes its health check. The gate itself
# is the threshold.
INT8_HEADROOM = 0.005


@dataclass(frozen=True)
class EvalSet:
    """Labelled images for few-shot accuracy: supports and queries, preprocessed for the device."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    def accuracy(self, embed: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
        s, q = embed(self.support), embed(self.query)
        n_query = int(min(15, np.bincount(self.query_labels).min()))
        r = evaluate_episodes(s, self.support_labels, q, self.query_labels, n_way=5, k_shot=5, n_query=n_query,
                              episodes=EPISODES, seed=0, center=np.concatenate([s, q]).mean(0))
        return float(r.mean), float(r.ci95)


def sample_images(folder: Path, size: int, count: int) -> torch.Tensor:
    """`count` images spread evenly over the sorted file list (deterministic)."""
    files = list_images(folder)
    idx = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    images = [img for i in dict.fromkeys(idx.tolist()) if (img := load_rgb(files[i], size)) is not None]
    if not images:
        raise EdgesslError(f"{folder}: no readable images")
    return torch.from_numpy(np.stack(images))


def labelled_images(folder: Path, size: int, per_class: int, offset: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) < 5:
        raise EdgesslError(f"{folder}: few-shot evaluation needs at least 5 class sub-folders, found {len(classes)}")
    images, labels = [], []
    for c, cls in enumerate(classes):
        files = list_images(cls)[offset:offset + per_class]
        for f in files:
            if (img := load_rgb(f, size)) is not None:
                images.append(img)
                labels.append(c)
    return torch.from_numpy(np.stack(images)), np.array(labels)


def real_images(ckpt: dict, data: Path | None, size: int, limit: int = 64) -> torch.Tensor:
    """Real images for parity: from --data when given, else the samples stored in the checkpoint."""
    if data is not None:
        return sample_images(data, size, limit)
    if "samples" not in ckpt:
        raise EdgesslError("the checkpoint holds no sample images (unfinished run?); pass --data DIR")
    return ckpt["samples"]


def thresholds(fmt: Format, profiles: list[DeviceProfile]) -> dict[str, float]:
    """Profile name -> the parity threshold (min centred cosine) an artifact of `fmt` must reach
    there: the profiles that run the format (else all given), or the default when none is given."""
    runs = [p for p in profiles if fmt.name in formats_for_profile(p.backends, p.precisions)] or profiles
    if not runs:
        return {"default": DEFAULT_MIN_COSINE[fmt.precision]}
    return {p.name: p.min_cosine.for_precision(fmt.precision) for p in runs}


def input_size_warnings(input_size: tuple[int, int], profiles: list[DeviceProfile]) -> list[str]:
    """A warning (one line) when the bundle's input size differs from some profiles' input_size."""
    h, w = input_size
    other = [f"{p.name} ({p.input_size[0]}x{p.input_size[1]})" for p in profiles
             if tuple(p.input_size) != tuple(input_size)]
    if not other:
        return []
    return [f"the bundle's input size {h}x{w} differs from the input_size of device profile(s) {', '.join(other)}: "
            f"devices run {h}x{w} as the bundle says, but their latency budgets were set for their own size; "
            f"train or distil at that size for those devices"]


def preprocess_spec(ckpt: dict) -> PreprocessSpec:
    """The preprocessing a checkpoint was trained with, as the device will follow it."""
    pre = ckpt["preprocess"]
    return PreprocessSpec(input_size=tuple(pre["input_size"]), resize=pre["resize"], mean=tuple(pre["mean"]),
                          std=tuple(pre["std"]), channel_order=pre["channel_order"])


@dataclass(frozen=True)
class ExportInputs:
    """Real images for export, through the device's preprocessing: as the float-input model takes
    them (to build, calibrate and check formats against torch) and as the shipped artifacts take
    them (`*_in`: parity, few-shot, golden; uint8 crops when the preprocessing is in the graph)."""

    check: np.ndarray
    check_in: np.ndarray
    calib: np.ndarray
    cohort: np.ndarray | None
    eval_float: EvalSet | None
    eval_in: EvalSet | None


def _prepare_inputs(ckpt: dict, spec: PreprocessSpec, kind: InputKind, *, data: Path | None, calib: Path | None,
                    calib_size: int, eval_query: Path | None, eval_support: Path | None, eval_per_class: int,
                    cohort: bool, int8: bool) -> ExportInputs:
    size = spec.input_size[0]

    def both(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        crops = device_inputs(images, spec, "uint8-nhwc-bgr")
        floats = normalize(crops, spec)
        return floats, crops if kind == "uint8-nhwc-bgr" else floats

    check, check_in = both(real_images(ckpt, data, size))
    calib_inputs = check
    if calib is not None:
        calib_inputs = both(sample_images(calib, size, calib_size))[0]
    cohort_inputs = None
    if cohort and calib is not None and len(calib_inputs) >= MIN_COHORT:
        # The unlabelled calibration images double as the cohort that normalises unknown scores.
        cohort_inputs = calib_inputs[:COHORT_IMAGES]
    elif cohort:
        log.warning("no cohort in the bundle: it needs --calib DIR with at least %d images; calibrated "
                    "classification on the device then compares plain cosines", MIN_COHORT)
    elif int8 and calib is None:
        log.warning("no --calib DIR: INT8 calibration uses the %d sample images of the checkpoint", len(check))
    eval_float = eval_in = None
    if eval_query is not None:
        q, ql = labelled_images(eval_query, size, eval_per_class)
        s, sl = labelled_images(eval_support, size, eval_per_class) if eval_support else \
            labelled_images(eval_query, size, eval_per_class, offset=eval_per_class)
        counts = np.bincount(sl)
        if counts.min() < 5 or len(ql) == 0:
            raise EdgesslError(f"few-shot evaluation needs at least 5 support images per class; "
                               f"{eval_support or eval_query} gives {int(counts.min())} for some class")
        (sf, si), (qf, qi) = both(s), both(q)
        eval_float, eval_in = EvalSet(sf, sl, qf, ql), EvalSet(si, sl, qi, ql)
    return ExportInputs(check, check_in, calib_inputs, cohort_inputs, eval_float, eval_in)


def export_bundle(checkpoint: Path, out: Path, *, formats: list[str] | None = None, data: Path | None = None,
                  calib: Path | None = None, calib_size: int = 300, calib_method: str = "minmax",
                  eval_query: Path | None = None, eval_support: Path | None = None, eval_per_class: int = 100,
                  devices: list[str] | None = None, keep_failed: bool = False, threads: int | None = None,
                  name: str | None = None, version: int = 1, min_cosine: float = 0.9999,
                  force: bool = False, cohort: bool = True, model_input: InputKind = "uint8-nhwc-bgr") -> Path:
    """`model_input`: uint8-nhwc-bgr puts the channel order, scaling and mean/std into every
    artifact's graph (the device only crops and resizes); float32-nchw writes artifacts that
    take normalised floats, as bundles did before."""
    ckpt = load_checkpoint(checkpoint)
    if "center" not in ckpt:
        raise EdgesslError(f"{checkpoint}: training did not finish (no centring vector); finish or resume it")
    cfg = ckpt["config"]
    spec = preprocess_spec(ckpt)
    profiles = _profiles(devices or [])
    size_warnings = input_size_warnings(spec.input_size, profiles)
    for warning in size_warnings:
        log.warning("%s", warning)
    wanted = list(dict.fromkeys(["onnx", *(formats or []),
                                 *(f for p in profiles for f in formats_for_profile(p.backends, p.precisions))]))
    model = load_backbone(ckpt)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgesslError(f"{out}: already exists and is not empty; choose another --out or pass --force")

    inputs = _prepare_inputs(ckpt, spec, model_input, data=data, calib=calib, calib_size=calib_size,
                             eval_query=eval_query, eval_support=eval_support, eval_per_class=eval_per_class,
                             cohort=cohort, int8=any(FORMATS[f].precision == "int8" for f in wanted))
    check, eval_set = inputs.check, inputs.eval_float

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    base = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.base."))
    try:
        # The float-input fp32 model every format is built from; not shipped as it is (see _onnx).
        fp32 = export_onnx(model, base / "model.onnx", spec.input_size)
        reference = torch_embeddings(model, check)
        parity = compare(reference, backend_embeddings("onnxruntime", fp32, check))
        log.info("onnx fp32 vs torch on %d real images: min cosine %.6f", parity.images, parity.cosine_min)
        if not parity.cosine_min >= min_cosine:
            raise EdgesslError(f"ONNX model disagrees with torch: min cosine {parity.cosine_min:.6f} < "
                               f"{min_cosine} on {parity.images} real images; bundle not written")
        metric = None
        if eval_set is not None:
            metric = lambda embed: eval_set.accuracy(lambda x: np.concatenate(  # noqa: E731
                [embed(x[i:i + 64]) for i in range(0, len(x), 64)]))[0]
        center = ckpt["center"].numpy().astype(np.float32)
        # INT8 aims at the gate of its strictest target profile (plus headroom).
        targets = {n: min(1.0, max(thresholds(FORMATS[n], profiles).values()) + INT8_HEADROOM)
                   for n in wanted if FORMATS[n].precision == "int8"}
        ctx = ExportContext(workdir=tmp, fp32_onnx=fp32, calib=inputs.calib, check=check, input_kind=model_input,
                            check_inputs=inputs.check_in,
                            calib_method=calib_method, accuracy_metric=metric, center=center, gate_targets=targets)

        artifacts, rows = [], []
        for fmt_name in wanted:
            fmt = FORMATS[fmt_name]
            artifact, row = _build_and_check(fmt, ctx, reference, spec, inputs.eval_in, threads,
                                             thresholds(fmt, profiles))
            if fmt_name == "onnx" and size_warnings:
                row = row.model_copy(update={"reason": "; ".join(filter(None, [row.reason, *size_warnings]))})
            rows.append(row)
            if artifact is not None and (row.status in ("ok", "unchecked") or keep_failed):
                artifacts.append(artifact)
                rows[-1] = row.model_copy(update={"in_bundle": True})
            elif row.file:
                _remove_artifact(tmp, row.file)
        for row in rows:
            log.info("%-14s %s %s", row.name, row.status, row.reason)
        if rows[0].status != "ok":  # rows[0] is the fp32 ONNX model, the base of every other format
            raise EdgesslError(f"the fp32 ONNX model failed its own check: {rows[0].reason}; bundle not written")

        np.save(tmp / "center.npy", center)
        cohort_file = None
        if inputs.cohort is not None:
            # The fp32 model's embeddings: every artifact passed parity with it, so its cohort is theirs.
            np.save(tmp / "cohort.npy", torch_embeddings(model, inputs.cohort).astype(np.float32))
            cohort_file = "cohort.npy"
        # The golden inputs are what the artifacts take (uint8 crops with the preprocessing in the graph).
        np.savez(tmp / "golden.npz", inputs=inputs.check_in[:GOLDEN_IMAGES], embeddings=reference[:GOLDEN_IMAGES])
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = Manifest(
            created_at=now_iso(),
            model=ModelInfo(name=name or Path(cfg["out"]).name, version=version, backbone=cfg["backbone"],
                            method=cfg["method"], source=str(Path(checkpoint).resolve())),
            preprocess=spec, embedding_dim=int(ckpt["embedding_dim"]), center="center.npy",
            golden="golden.npz", cohort=cohort_file, artifacts=artifacts, files={f: file_entry(tmp / f) for f in files},
            profiles=[p.name for p in profiles], defaults=_defaults(profiles, artifacts, rows), report=rows,
            report_machine=_machine(threads),
        )
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # the device's own check, before the bundle is handed out
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved into place
        shutil.rmtree(base, ignore_errors=True)
    return out


def _build_and_check(fmt: Format, ctx: ExportContext, reference: np.ndarray, spec: PreprocessSpec,
                     eval_set: EvalSet | None, threads: int | None,
                     gate: dict[str, float]) -> tuple[Artifact | None, ReportRow]:
    """Build one format and judge it by the device's own parity definition: the lowest centred
    cosine to fp32 torch over the check images (the golden inputs among them, also one at a
    time as the health check runs them), against `gate` (profile -> threshold)."""
    try:
        file = fmt.build(ctx)
        if ctx.input_kind == "uint8-nhwc-bgr":
            put_preprocessing_in_graph(ctx.workdir / file, spec)
    except Exception as exc:  # any failure of a converter is reported, not fatal to the other formats
        log.debug("export %s failed", fmt.name, exc_info=True)
        return None, ReportRow(name=fmt.name, status="failed-export", backend=fmt.backend,
                               reason=f"{type(exc).__name__}: {exc}"[:300])
    path = ctx.workdir / file
    size = sum(p.stat().st_size for p in _artifact_files(path))
    note = ctx.notes.get(fmt.name, "")
    backend = fmt.backend
    unchecked = fmt.backend == "tensorrt" and not nvidia_gpu()
    if unchecked:
        # No GPU here: check the very ONNX file the device will build its engine from, with ONNX Runtime.
        backend = "onnxruntime"
        note = "; ".join(filter(None, [note, "unchecked: no NVIDIA GPU here, so no engine was built; parity via "
                                             "onnxruntime on the shipped ONNX; the device builds the engine and "
                                             "health-checks it"]))
    row = dict(name=fmt.name, backend=fmt.backend, file=file, size_bytes=size)
    assert ctx.center is not None
    try:
        with load_backend(backend, path, threads=threads) as b:
            embed = lambda x: np.concatenate([b.embed(x[i:i + 16]) for i in range(0, len(x), 16)])  # noqa: E731
            got = embed(ctx.check_inputs)
            golden = ctx.check_inputs[:GOLDEN_IMAGES]
            single = np.concatenate([b.embed(golden[i:i + 1]) for i in range(len(golden))])
            parity = compare(reference, got)
            agreement = min(golden_agreement(reference, got, ctx.center),
                            golden_agreement(reference[:len(golden)], single, ctx.center))
            fewshot = eval_set.accuracy(embed) if eval_set is not None else (None, None)
            latency, throughput = speed(b, spec) if backend == fmt.backend else (None, None)
    except Exception as exc:
        return None, ReportRow(**row, status="failed-export", reason=f"does not run: {exc}"[:300])
    least = min(gate.values())
    failing = {p: t for p, t in gate.items() if not passes(agreement, t)}
    if not passes(agreement, least):
        status = "failed-parity"
        note = "; ".join(filter(None, [note, f"min centred cosine {agreement:.4f} < {least} "
                                             f"({fmt.precision} threshold of {', '.join(gate)})"]))
    else:
        status = "unchecked" if unchecked else "ok"
        if failing:
            note = "; ".join(filter(None, [note, "below the threshold of " + ", ".join(
                f"{p} ({t})" for p, t in failing.items()) + f": min centred cosine {agreement:.4f}; "
                "never the default there"]))
    report = ReportRow(**row, status=status, reason=note, centred_min=agreement,
                       cosine_median=parity.cosine_median, cosine_p1=parity.cosine_p1, fewshot=fewshot[0],
                       fewshot_ci95=fewshot[1], latency_ms_b1=latency, throughput_b8=throughput)
    artifact = Artifact(format=fmt.artifact_format, precision=fmt.precision, file=file, name=fmt.name,
                        input=ctx.input_kind,
                        parity={"golden_min_centred": agreement, "cosine_median": parity.cosine_median,
                                "cosine_p1": parity.cosine_p1, "cosine_min": parity.cosine_min,
                                "images": float(parity.images)})
    return artifact, report


def _artifact_files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _remove_artifact(root: Path, file: str) -> None:
    if file == "model.onnx":
        return  # the fp32 model is the base of the others; it is only left out of the manifest
    for p in _artifact_files(root / file):
        p.unlink(missing_ok=True)


def _profiles(names: list[str]) -> list[DeviceProfile]:
    return [resolve_profile(n)[0] for n in names]


def _defaults(profiles: list[DeviceProfile], artifacts: list[Artifact], rows: list[ReportRow]) -> dict[str, str]:
    """Per profile: among the shipped artifacts of its most preferred backend that pass *that
    profile's* threshold (the health check's), the fastest one measured here; a backend that
    cannot be measured here (TensorRT without a GPU) keeps the profile's own order of
    precisions, and the device's health check measures it. A profile none passes gets no default."""
    by_name = {a.label: a for a in artifacts}
    usable = {r.name: r for r in rows if r.status in ("ok", "unchecked") and r.name in by_name}
    defaults = {}
    for p in profiles:
        for backend in p.backends:
            candidates = [n for n in formats_for_profile([backend], p.precisions) if n in usable
                          and passes(by_name[n].parity.get("golden_min_centred", float("nan")),
                                     p.min_cosine.for_precision(by_name[n].precision))]
            if not candidates:
                continue
            measured = [n for n in candidates if usable[n].latency_ms_b1 is not None]
            defaults[p.name] = min(measured, key=lambda n: usable[n].latency_ms_b1 or 0.0) if measured \
                else candidates[0]
            break
    return defaults


def _machine(threads: int | None) -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, threads={threads or 'default'}"
