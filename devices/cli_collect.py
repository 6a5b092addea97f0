"""`edgessl collect --from DEVICE --out DIR | --fleet FILE --out DIR`: harvest samples and eval sets."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pull what devices collected (crops kept by their samplers: novel, low-margin and unknown ones) as "
        "WebDataset shards OUT/<device>/samples/shard-NNNNNN.tar that `edgessl pretrain`/`edgessl adapt` read, "
        "and the crops people enrolled in each device's gallery as the site's evaluation set "
        "OUT/<device>/eval/<label>/*.jpg. Samples are deleted on a device only once the server holds them "
        "checksummed; a broken transfer keeps what arrived and the next run resumes after it.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--from", dest="source", metavar="DEVICE",
                       help="a daemon URL http://HOST:PORT, or a device's state folder (holding samples.db)")
    where.add_argument("--fleet", metavar="FILE", help="fleet file (TOML), as for `edgessl flash --fleet`")
    parser.add_argument("--out", type=Path, required=True, help="harvest folder (one sub-folder per device)")
    parser.add_argument("--name", help="device name for --from (default: from the URL or folder)")
    parser.add_argument("--token", help="the daemon's bearer token (default: $EDGESSL_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _name(source: str) -> str:
    text = re.sub(r"^https?://", "", source.rstrip("/")) if "://" in source else Path(source).resolve().name
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "device"


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.flash import TOKEN_ENV
    from edgessl.devices.harvest import harvest, harvest_fleet, render_harvest

    token = args.token or os.environ.get(TOKEN_ENV)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.source:
        name = args.name or _name(args.source)
        results = [harvest(args.source, args.out, name=name, token=token,
                           on_progress=None if args.json else lambda d, n: print(f"\r{d}: {n} samples", end=""))]
        if not args.json:
            print()
    else:
        results = harvest_fleet(args.fleet, args.out, token=token, on_result=None if args.json else
                                lambda r: print(f"{r.device}: {r.status}, {r.samples} samples", flush=True))
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(render_harvest(results))
    return 0 if all(r.status == "ok" for r in results) else 1
