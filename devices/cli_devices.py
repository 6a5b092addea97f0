"""`edgessl devices list|show NAME`: the device profiles edgessl knows."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Device profiles: the backends a kind of device runs (in order of preference), "
                          "precisions, threads, input size, latency and memory budgets.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="a table of the built-in profiles", description="A table of the built-in profiles.")
    show = actions.add_parser("show", help="every field of one profile", description="Every field of one profile.")
    show.add_argument("name", metavar="NAME", help="a built-in profile name (see `edgessl devices list`) or a .toml file")


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.catalog import all_profiles, get_profile
    from edgessl.devices.table import format_table
    from edgessl.edge_runtime.device.profiles import DeviceProfile

    if args.action == "list":
        rows = [(p.name, p.arch, ",".join(p.backends), ",".join(p.precisions), p.threads or "auto",
                 f"{p.input_size[0]}x{p.input_size[1]}", f"{p.latency_budget_ms:g}", p.memory_budget_mb, p.description)
                for p in all_profiles()]
        print(format_table(["name", "arch", "backends", "precisions", "threads", "input", "latency_ms",
                            "memory_mb", "description"], rows))
        return 0
    profile = get_profile(args.name)
    fields = DeviceProfile.model_fields
    width = max(map(len, fields))
    for key, value in profile.model_dump(mode="json").items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) if key != "input_size" else "x".join(map(str, value))
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        print(f"{key.ljust(width)}  {'-' if value in (None, '') else value}")
    return 0
