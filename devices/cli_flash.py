"""`edgessl flash BUNDLE --to TARGET | --fleet FILE`: install a bundle on devices."""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Install a signed bundle. --to a device root folder installs it here through the A/B installer "
        "(verify signature and hashes, extract into the inactive slot, health check, switch, roll back on "
        "failure). --to http://HOST:PORT uploads it to a running daemon, which runs the same install. "
        "--fleet FILE flashes every device listed there: the canary first, then the others concurrently; "
        "the first failure stops the rollout.")
    parser.add_argument("bundle", metavar="BUNDLE", help="signed bundle directory, or a .tar of one")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="TARGET", help="device root folder, or a daemon URL http://HOST:PORT")
    where.add_argument("--fleet", metavar="FILE", help="fleet file (TOML): devices with name, target, token")
    parser.add_argument("--token", default=None, help="the daemon's bearer token (default: $EDGESSL_TOKEN)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="install even when the bundle's version is not newer than the installed one")
    parser.add_argument("--allow-model-change", action="store_true",
                        help="install a bundle of another model than the one the device runs (refused "
                             "otherwise: a fleet key signs every model of a fleet); logged on the device")


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.flash import TOKEN_ENV, flash, flash_fleet, load_fleet, summarize
    from edgessl.devices.table import format_table
    from edgessl.edge_runtime.device.installer import InstallResult

    token = args.token or os.environ.get(TOKEN_ENV)
    if args.to:
        outcome = flash(args.bundle, args.to, token=token, allow_downgrade=args.allow_downgrade,
                        allow_model_change=args.allow_model_change)
        if isinstance(outcome, InstallResult):
            print(outcome.reason)  # the steps were logged as they happened
        else:
            print(json.dumps(outcome.model_dump(), indent=2, sort_keys=True))
        return 0

    fleet = load_fleet(args.fleet)
    results = flash_fleet(args.bundle, fleet, allow_downgrade=args.allow_downgrade,
                          allow_model_change=args.allow_model_change, token=token,
                          on_result=lambda r: print(f"{r.name}: {r.status} ({r.reason})", flush=True))
    print()
    print(format_table(["device", "target", "status", "version", "slot", "seconds", "reason"],
                       [(r.name, r.target, r.status, r.version, r.slot, f"{r.seconds:.1f}", r.reason) for r in results]))
    print(summarize(results))
    return 0 if all(r.status == "ok" for r in results) else 1
