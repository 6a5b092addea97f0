"""`edgessl export`: checkpoint -> verified bundle with a parity and speed report."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMAT_HELP = "onnx, onnx-fp16, onnx-int8, openvino, openvino-int8, tensorrt-fp16, tensorrt-int8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Export a pretrained (or distilled) checkpoint into a bundle. The fp32 ONNX model is always built and "
        "must match torch (min cosine --min-cosine) or nothing is written; every other format is checked "
        "against fp32 torch on real images through the device's own preprocessing and backend with the "
        "device health check's definition (lowest centred cosine over the images, threshold per precision "
        "from each --device profile's min_cosine, else fp32 0.999, fp16 0.99, int8 0.95), timed, and left out "
        "of the bundle if it fails the least strict of those thresholds unless --keep-failed. A profile's "
        "default artifact always passes that profile's threshold. The report is printed and stored in the "
        "manifest (see `edgessl bench BUNDLE`).")
    p.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--formats", default="onnx", help=f"comma-separated list of: {FORMAT_HELP} (default: onnx)")
    p.add_argument("--device", action="append", default=[], metavar="PROFILE",
                   help="device profile (name or .toml); adds its formats and marks its default artifact "
                        "(the fastest measured one that passes parity). Repeatable. See `edgessl devices list`")
    p.add_argument("--calib", type=Path, help="unlabeled images for INT8 calibration (recursive)")
    p.add_argument("--calib-size", type=int, default=300, help="calibration images, sampled evenly (default: 300)")
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="INT8 calibration of onnx-int8/tensorrt-int8 (ONNX Runtime's calibrators): minmax, entropy "
                        "(KL divergence, 2048-bin histograms) or percentile (99.999%%) (default: minmax)")
    p.add_argument("--eval", type=Path, dest="eval_query",
                   help="labelled images (one sub-folder per class): adds 5-way 5-shot accuracy per format "
                        "and turns on NNCF's accuracy-controlled quantization")
    p.add_argument("--eval-support", type=Path, help="labelled supports for --eval (default: other images of --eval)")
    p.add_argument("--eval-per-class", type=int, default=100, help="images per class for --eval (default: 100)")
    p.add_argument("--data", type=Path, help="real images for parity checks (default: samples in the checkpoint)")
    p.add_argument("--threads", type=int, help="inference threads for the speed figures (default: all cores)")
    p.add_argument("--keep-failed", action="store_true", help="ship formats that failed parity too")
    p.add_argument("--name", help="model name in the manifest (default: the run folder's name)")
    p.add_argument("--version", type=int, default=1, help="model version, monotonic (default: 1)")
    p.add_argument("--min-cosine", type=float, default=0.9999,
                   help="least cosine between fp32 ONNX and torch on any image (default: 0.9999)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--model-input", choices=["uint8-nhwc-bgr", "float32-nchw"], default="uint8-nhwc-bgr",
                   help="what the artifacts take: uint8-nhwc-bgr (default) puts channel order, scaling and mean/std "
                        "into the graph, so the device only crops and resizes; float32-nchw writes artifacts that "
                        "take normalised floats, for edge runtimes older than this field")
    p.add_argument("--no-cohort", dest="cohort", action="store_false",
                   help="do not write cohort.npy (the embeddings of up to 300 of the --calib images, with which "
                   "the device normalises scores before deciding 'unknown'; default: written with --calib)")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.bundle.manifest import load_bundle
    from edgessl.edge_runtime.device.profiles import resolve_profile
    from edgessl.edge_runtime.inference.timing import render_report
    from edgessl.errors import EdgesslError
    from edgessl.export.bundle_writer import export_bundle, input_size_warnings
    from edgessl.export.formats import parse_formats

    try:
        formats = parse_formats(args.formats)
    except ValueError as exc:
        raise EdgesslError(str(exc)) from None
    out = export_bundle(args.checkpoint, args.out, formats=formats, data=args.data, calib=args.calib,
                        calib_size=args.calib_size, calib_method=args.calib_method, eval_query=args.eval_query,
                        eval_support=args.eval_support, eval_per_class=args.eval_per_class, devices=args.device,
                        keep_failed=args.keep_failed, threads=args.threads, name=args.name,
                        version=args.version, min_cosine=args.min_cosine, force=args.force,
                        cohort=args.cohort, model_input=args.model_input)
    m = load_bundle(out).manifest
    print(f"cohort: {m.cohort}" if m.cohort else "no cohort (pass --calib DIR): the device decides 'unknown' "
          "on plain cosines")
    print(render_report(m.report, title=f"bundle {out}: {m.model.name} v{m.model.version}, "
                                        f"{m.embedding_dim}-d, input {m.preprocess.input_size} "
                                        f"({m.artifacts[0].input if m.artifacts else '-'})"))
    for profile in m.profiles:
        artifact = m.defaults.get(profile)
        print(f"default for {profile}: {artifact}" if artifact else
              f"no default for {profile}: none of its artifacts passes its parity threshold")
    for warning in input_size_warnings(m.preprocess.input_size, [resolve_profile(d)[0] for d in args.device]):
        print(f"warning: {warning}")
    return 0
