"""`edgessl demo` (what `make demo` runs): the whole pipeline on data it renders itself.

Renders a labelled set of shapes and a video with known ground truth, pretrains a backbone
with SimCLR on the images (labels ignored), exports a verified bundle, enrolls every class
on the "device" from 5 examples, classifies the video frame by frame and held-out images,
and prints per-class accuracy. No network, no ../shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

SHOTS = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--minutes", type=float, default=1.5, help="pretraining budget (default: 1.5)")
    p.add_argument("--per-class", type=int, default=400, help="unlabeled training images per class (default: 400)")
    p.add_argument("--seed", type=int, default=0)


def _say(step: str, what: str) -> None:
    print(f"\n== {step}: {what}", flush=True)


def run(args: argparse.Namespace) -> int:
    import cv2

    from edgessl import synthetic
    from edgessl.edge_runtime.bundle.manifest import load_bundle
    from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
    from edgessl.edge_runtime.fewshot.gallery import Gallery
    from edgessl.edge_runtime.inference.extractor import FeatureExtractor
    from edgessl.edge_runtime.inference.sources import FrameReader
    from edgessl.export.bundle_writer import export_bundle
    from edgessl.train.pretrain import PretrainConfig, pretrain

    t_start = time.monotonic()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    data = out / "data"

    _say("1/5 data", "rendering shapes and a video (procedural, no download)")
    synthetic.write_image_set(data / "unlabeled", args.per_class, size=64, seed=args.seed)
    held_out = synthetic.write_image_set(data / "held_out", 40, size=64, seed=args.seed + 100)
    truth = synthetic.write_video(data / "shapes.mp4", seconds_per_class=3.0, fps=10, size=128, seed=args.seed + 7)
    print(f"{args.per_class * len(synthetic.CLASSES)} unlabeled images in {data / 'unlabeled'}, "
          f"{len(truth)}-frame video {data / 'shapes.mp4'}, classes: {', '.join(synthetic.CLASSES)}")

    _say("2/5 pretrain", f"SimCLR on resnet_tiny for {args.minutes} min (labels ignored)")
    ckpt = pretrain(PretrainConfig(data=str(data / "unlabeled"), out=str(out / "run"), minutes=args.minutes,
                                   image_size=32, batch_size=64, crop_min_scale=0.5, seed=args.seed))

    _say("3/5 export", "ONNX fp32 bundle, checked against torch through the device's code")
    bundle_dir = export_bundle(ckpt, out / "bundle", force=True)
    bundle = load_bundle(bundle_dir)
    print(f"bundle {bundle_dir}: onnx fp32 min cosine {bundle.manifest.artifacts[0].parity['cosine_min']:.6f}")

    _say("4/5 enroll", f"{SHOTS} examples per class into the on-device gallery")
    with FeatureExtractor.from_bundle(bundle) as extractor, Gallery(out / "gallery.db") as gallery:
        classifier = FewShotClassifier(extractor, gallery, threshold=-1.0)  # always the nearest class
        for kind, paths in held_out.items():
            classifier.enroll(kind, [cv2.imread(str(p)) for p in paths[:SHOTS]])
        print(", ".join(f"{c.label} ({c.exemplars})" for c in gallery.classes()))

        _say("5/5 classify", "the video frame by frame, and the held-out images")
        predictions = out / "predictions.jsonl"
        video_ok = {k: [0, 0] for k in synthetic.CLASSES}
        with open(predictions, "w") as f:
            for frame in FrameReader([data / "shapes.mp4"]):
                pred = classifier.classify([frame.image])[0]
                kind = truth[frame.index]
                video_ok[kind][0] += pred.label == kind
                video_ok[kind][1] += 1
                f.write(json.dumps({"frame": frame.index, "timestamp": round(frame.timestamp_s, 3),
                                    "label": pred.label, "score": round(pred.score, 4), "truth": kind}) + "\n")
        image_ok = {}
        for kind, paths in held_out.items():
            preds = classifier.classify([cv2.imread(str(p)) for p in paths[SHOTS:]])
            image_ok[kind] = (sum(p.label == kind for p in preds), len(preds))

    print(f"\n{'class':<10} {'video frames':>14} {'held-out images':>16}")
    for kind in synthetic.CLASSES:
        (vc, vn), (ic, in_) = video_ok[kind], image_ok[kind]
        print(f"{kind:<10} {100 * vc / vn:>13.1f}% {100 * ic / in_:>15.1f}%")
    vc, vn = (sum(v[i] for v in video_ok.values()) for i in (0, 1))
    ic, in_ = (sum(v[i] for v in image_ok.values()) for i in (0, 1))
    print(f"{'all':<10} {100 * vc / vn:>13.1f}% {100 * ic / in_:>15.1f}%   (chance: {100 / len(synthetic.CLASSES):.0f}%)")
    print(f"\noutputs: checkpoint {ckpt}\n         bundle     {bundle_dir}\n         gallery    {out / 'gallery.db'}"
          f"\n         per-frame  {predictions}\ndone in {time.monotonic() - t_start:.0f} s. Try:\n"
          f"  edgessl classify --bundle {bundle_dir} --gallery {out / 'gallery.db'} {data / 'shapes.mp4'}")
    return 0
