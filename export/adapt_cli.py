"""`edgessl adapt`: continue SSL on a site's harvested footage, distil, export version + 1."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgessl.export.adapt import MIX_RATIO


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Adapt the deployed model to its site without labels: continue its self-supervised training on the "
        "samples `edgessl collect` harvested (mixed with base data so it does not forget), distil into the "
        "deployed student architecture again, and export the same formats as the running bundle with "
        "version + 1 (unsigned: gate it, then sign and flash, or let `edgessl loop` do all of it).")
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="RUN|BUNDLE",
                   help="the run the deployed bundle was exported from, or the running bundle (its manifest names "
                        "the run)")
    p.add_argument("--bundle", type=Path, help="the running bundle, when --from is a run (formats, name, version)")
    p.add_argument("--data", type=Path, required=True, metavar="SITE_DIR", help="the harvest folder (edgessl collect)")
    p.add_argument("--mix", type=Path, metavar="BASE_DATA", help="base images mixed in, against forgetting")
    p.add_argument("--mix-ratio", type=float, default=MIX_RATIO,
                   help=f"base images per site sample (default: {MIX_RATIO:g}; 0: site data alone, which overfits "
                        "a small site set)")
    p.add_argument("--minutes", type=float, required=True, help="training budget (export comes on top)")
    p.add_argument("--out", type=Path, required=True, help="adaptation folder (the candidate in OUT/bundle)")
    p.add_argument("--formats", help="export formats (default: those of the running bundle)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from edgessl.export.adapt import adapt
    from edgessl.export.formats import parse_formats

    result = adapt(args.source, args.data, args.out, minutes=args.minutes, bundle=args.bundle, mix=args.mix,
                   mix_ratio=args.mix_ratio, seed=args.seed, threads=args.threads, force=args.force,
                   formats=parse_formats(args.formats) if args.formats else None)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"candidate {result.bundle}: version {result.version}, {result.site_samples} site samples + "
              f"{result.mix_samples} base images, {result.minutes:.1f} min training + {result.export_minutes:.1f} "
              f"min export; site eval set {result.eval_dir} ({result.eval_images} images)")
    return 0
