"""`edgessl gallery`: list or forget the enrolled classes of a device gallery."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "List the enrolled classes of a gallery, or forget one (with all its exemplars)."
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print each class and its number of exemplars",
                                 description="Print each enrolled class and its number of exemplars.")
    listing.add_argument("--gallery", required=True, metavar="FILE", help="gallery database (SQLite)")
    forget = actions.add_parser("forget", help="remove a class and its exemplars",
                                description="Remove a class and all its exemplars from the gallery.")
    forget.add_argument("--gallery", required=True, metavar="FILE", help="gallery database (SQLite)")
    forget.add_argument("label", metavar="LABEL", help="the class to forget")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.fewshot.gallery import Gallery

    with Gallery(args.gallery, create=False) as gallery:
        if args.action == "forget":
            removed = gallery.forget(args.label)
            print(f"forgot {args.label!r} ({removed} exemplars); {len(gallery.classes())} classes left")
            return 0
        classes = gallery.classes()
        for c in classes:
            print(f"{c.label}\t{c.exemplars}")
        if not classes:
            print("(no classes enrolled)")
    return 0
