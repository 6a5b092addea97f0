"""`edgessl device init|status|rollback|check --root DIR`: the device root of the A/B installer."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Manage a device root: two bundle slots (A/B), a `current` link to the active one, "
                          "the device profile and the keys whose signatures it accepts. Install bundles with "
                          "`edgessl flash BUNDLE --to DIR`; run the daemon with `edgessl run --root DIR`.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="provision a device root",
                              description="Provision a device root with a profile and trusted public keys.")
    init.add_argument("--root", required=True, metavar="DIR", help="device root folder (created if needed)")
    init.add_argument("--profile", required=True, metavar="NAME",
                      help="device profile: a name from `edgessl devices list`, or a .toml file")
    init.add_argument("--trust", required=True, action="append", metavar="KEY.pub",
                      help="public key whose signatures the device accepts (repeat for several)")
    for name, text in [("status", "show the active and previous bundles and recent history"),
                       ("rollback", "make the previous bundle active again"),
                       ("check", "run the health check on the active bundle (in another process)")]:
        sub = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--root", required=True, metavar="DIR", help="device root folder")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print the status as JSON")


def run(args: argparse.Namespace) -> int:
    from edgessl.edge_runtime.device import installer, slots

    if args.action == "init":
        st = slots.init_device(args.root, args.profile, args.trust)
        print(f"provisioned {st.root}: profile {st.profile}, trusted keys {', '.join(st.trusted_keys)}")
        print(f"next: edgessl flash BUNDLE --to {st.root}")
        return 0
    if args.action == "rollback":
        print(installer.rollback(args.root).reason)  # the steps were logged as they happened
        return 0
    if args.action == "check":
        from edgessl.edge_runtime.device.health import run_health_check
        from edgessl.edge_runtime.device.profiles import load_profile

        profile_path = slots.profile_path(args.root)
        active = slots.active_model(args.root)
        report = run_health_check(active.bundle_dir, profile_path, load_profile(profile_path).health_timeout_s,
                                  active.plan.artifact.label)
        print(("ok: " if report.ok else "FAILED: ") + report.reason)
        return 0 if report.ok else 1

    st = slots.status(args.root)
    if args.json:
        print(json.dumps(st.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"device root  {st.root}\nprofile      {st.profile}\ntrusted keys {', '.join(st.trusted_keys) or '-'}")
    for slot in st.slots:
        role = "active" if slot.name == st.active else "previous" if slot.name == st.previous else ""
        what = f"{slot.model} v{slot.version} ({slot.created_at})" if slot.version else (
            "empty" if not slot.present else "unreadable")
        print(f"slot {slot.name}       {what}{f'  [{role}]' if role else ''}")
    print(f"last good    v{st.last_good_version}" if st.last_good_version else "last good    -")
    if st.runs:
        print(f"runs         {st.runs['backend']} {st.runs['artifact']} ({st.runs['reason']})")
    for note in st.notes:
        print(f"note: {note}")
    if st.history:
        print("history:")
        for h in st.history:
            print(f"  {h['at']}  {h['action']:<8} {'ok' if h['ok'] else 'FAILED':<6} {h['reason']}")
    return 0
