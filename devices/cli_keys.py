"""`edgessl keys generate --out DIR`: a new ed25519 signing key pair."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate an ed25519 key pair for signing bundles: NAME.key (private, mode 0600; keep "
                          "it off the devices) and NAME.pub (give it to devices with "
                          "`edgessl device init --trust NAME.pub`).")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="write NAME.key and NAME.pub into DIR",
                             description="Write a new key pair NAME.key (0600) and NAME.pub into DIR; "
                                         "existing files are never overwritten.")
    gen.add_argument("--out", required=True, metavar="DIR", help="folder for the key files (created if needed)")
    gen.add_argument("--name", default="signing", help="file name stem (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.keys import generate_keypair

    pair = generate_keypair(args.out, args.name)
    print(f"key {pair.key_id}\nprivate: {pair.private} (mode 0600, keep secret)\npublic:  {pair.public}")
    return 0
