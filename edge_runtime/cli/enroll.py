"""`edgessl enroll`: add a class to the device gallery from a few images."""

from __future__ import annotations

import argparse
import logging

from edgessl.edge_runtime.cli.args import add_model_arguments, open_extractor

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Enroll a class from a few example images: each image becomes an exemplar "
                          "(its crop and embedding are stored in the gallery). No retraining.")
    add_model_arguments(parser)
    parser.add_argument("--label", required=True, help="class name (1-64 printable characters)")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files or folders of images (jpg, jpeg, png, webp, bmp; recursive)")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.fewshot.classifier import FewShotClassifier
    from edgessl.edge_runtime.fewshot.gallery import Gallery
    from edgessl.edge_runtime.fewshot.labels import validate_label
    from edgessl.edge_runtime.inference.preprocess import read_image
    from edgessl.edge_runtime.inference.sources import expand
    from edgessl.errors import ImageError

    validate_label(args.label)
    images, skipped = [], 0
    for path in expand(args.images, videos=False):
        try:
            images.append(read_image(path))
        except ImageError as exc:
            log.warning("skipped: %s", exc)
            skipped += 1
    if not images:
        raise ImageError(f"no readable images among {', '.join(args.images)}; nothing enrolled")

    with (open_extractor(args) as extractor,
          Gallery(args.gallery) as gallery):
        added = FewShotClassifier(extractor, gallery).enroll(args.label, images)
        classes = gallery.classes()
    total = next(c.exemplars for c in classes if c.label == args.label)
    print(f"enrolled {added} images as {args.label!r} ({total} exemplars in total"
          f"{f', {skipped} unreadable skipped' if skipped else ''}); the gallery has {len(classes)} classes")
    return 0
