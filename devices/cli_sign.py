"""`edgessl sign BUNDLE --key KEY`: write manifest.sig for a bundle."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Sign a bundle: check every file against manifest.json, then write manifest.sig, an "
                          "ed25519 signature over the exact bytes of manifest.json (which lists the sha256 of "
                          "every other file). Devices install only bundles signed by a key they trust.")
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory (with manifest.json)")
    parser.add_argument("--key", required=True, metavar="KEY", help="private key file (from `edgessl keys generate`)")


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.keys import sign_bundle

    kid = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} with key {kid}")
    return 0
