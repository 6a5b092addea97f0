"""`edgessl classify`: label images, folders and videos with the enrolled classes (JSON lines)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

from edgessl.edge_runtime.cli.args import add_model_arguments, open_extractor, positive_int

if TYPE_CHECKING:
    from edgessl.edge_runtime.fewshot.classifier import Prediction
    from edgessl.edge_runtime.inference.sources import Frame

log = logging.getLogger(__name__)
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Classify images, folders of images and videos against the enrolled classes. Prints one JSON "
        "line per image {source, label, score} and per processed video frame {source, frame, timestamp, "
        "label, score}; label is 'unknown' below the chosen class's threshold (calibrated per class from "
        "the gallery; the global --threshold for classes with too few exemplars, or all with --no-calibrate), "
        "and then 'nearest' names the closest class.")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, default=0.5, metavar="T",
                        help="lowest centred cosine similarity to a class prototype that is "
                             "not 'unknown', for classes too small to calibrate (default: %(default)s)")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="use --threshold for every class instead of per-class calibrated thresholds")
    parser.add_argument("--head", choices=("prototype", "fitted", "auto"), default="auto",
                        help="what chooses the class: nearest prototype, a ridge classifier fitted on the "
                             "gallery, or auto (by leave-one-out; default: %(default)s)")
    parser.add_argument("--every", type=positive_int, default=1, metavar="N",
                        help="process every N-th video frame (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                        help="frames embedded together (default: %(default)s)")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="image files, folders of images (recursive) or videos (mp4, avi, mkv, mov, webm)")


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(items, size)):
        yield batch


def record(frame: Frame, prediction: Prediction) -> dict[str, object]:
    """The JSON object printed for one frame."""
    out: dict[str, object] = {"source": frame.source}
    if frame.is_video:
        out |= {"frame": frame.index, "timestamp": round(frame.timestamp_s or 0.0, 3)}
    out |= {"label": prediction.label, "score": round(prediction.score, 4)}
    if prediction.label == "unknown" and prediction.nearest is not None:
        out["nearest"] = prediction.nearest  # what it resembles most, even below the threshold
    return out


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
    from edgessl.edge_runtime.fewshot.gallery import Gallery
    from edgessl.edge_runtime.inference.sources import FrameReader

    reader = FrameReader(args.sources, every=args.every)
    with (open_extractor(args) as extractor,
          Gallery(args.gallery, create=False) as gallery):
        classifier = FewShotClassifier(extractor, gallery, threshold=args.threshold,
                                       calibrated=args.calibrate, head=args.head)
        if not gallery.classes():
            log.warning("the gallery %s has no classes: every frame is 'unknown' (enroll some first)", args.gallery)
        count = 0
        for batch in _batches(iter(reader), args.batch_size):
            predictions = classifier.classify([f.image for f in batch], batch_size=args.batch_size)
            lines = [json.dumps(record(f, p)) for f, p in zip(batch, predictions, strict=True)]
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            count += len(batch)
    log.info("classified %d frames%s", count, f", skipped {reader.skipped} unreadable images" if reader.skipped else "")
    return 0
