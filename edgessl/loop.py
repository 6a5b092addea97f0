"""`edgessl loop --fleet FILE --minutes N`: the closed loop, once.

    collect (every device: samples -> shards, gallery exemplars -> eval set)
      -> adapt  (SSL continued on the site's footage + base data, distilled, exported at version + 1)
      -> gate   (site eval set, leave-one-out few-shot: candidate >= running - margin; parity; health)
      -> sign   (only a candidate that passed; the gate report is inside the signed manifest)
      -> flash  (the fleet, canary first; each daemon re-embeds its gallery and resets its drift reference)

Run it from cron or a systemd timer (README: "The closed loop"). Every run writes WORK/loop-<time>.json
and prints a plain-text summary; the exit status is 0 when the fleet was updated or nothing needed to
be done, 1 when the gate refused the candidate, 2 when a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgessl.export.adapt import MIX_RATIO


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the closed loop once: harvest what the fleet's devices collected and the crops people enrolled "
        "there, continue self-supervised training on that footage (no labels), distil and export the same "
        "formats as the running bundle at version + 1, gate the candidate on the site's own classes "
        "(leave-one-out few-shot on the enrolled crops: at least as good as the running model), parity and "
        "health, then sign it and flash the fleet canary first. Prints a summary and writes it as JSON.")
    p.add_argument("--fleet", required=True, metavar="FILE", help="fleet file (TOML), as for `edgessl flash --fleet`")
    p.add_argument("--from", dest="source", type=Path, metavar="RUN|BUNDLE",
                   help="the run the running bundle was exported from, or the running bundle itself (default: "
                        "the bundle the last loop flashed, WORK/current.json: what a timer's next run continues)")
    p.add_argument("--bundle", type=Path, help="the running bundle, when --from is a run")
    p.add_argument("--key", required=True, metavar="KEY", help="private signing key (edgessl keys generate)")
    p.add_argument("--minutes", type=float, required=True, help="adaptation training budget")
    p.add_argument("--work", type=Path, default=Path("runs/loop"),
                   help="the loop's folder: harvest/, one adapt-vN folder per candidate, loop-*.json "
                        "(default: runs/loop)")
    p.add_argument("--mix", type=Path, metavar="BASE_DATA", help="base images mixed into the training")
    p.add_argument("--mix-ratio", type=float, default=MIX_RATIO,
                   help=f"base images per site sample (default: {MIX_RATIO:g})")
    p.add_argument("--margin", type=float, default=0.0,
                   help="the candidate may be at most this many accuracy points (0-100) below the running model "
                        "on the site's eval set (default: 0: at least as good)")
    p.add_argument("--min-samples", type=int, default=32,
                   help="adapt only when the harvest holds at least this many samples (default: 32)")
    p.add_argument("--token", help="default bearer token of the daemons (default: $EDGESSL_TOKEN)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--no-flash", dest="flash", action="store_false", help="stop after the gate (a dry run)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def _step(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"\n== {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from edgessl.devices.flash import TOKEN_ENV

    token = args.token or os.environ.get(TOKEN_ENV)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "fleet": str(args.fleet)}
    try:
        # With --json, stdout carries the summary alone: what the steps print goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            status = _loop(args, token, summary)
    except Exception as exc:  # the summary says which step failed and why; the traceback goes to the log
        import logging

        logging.getLogger(__name__).exception("loop failed")
        summary["error"] = f"{type(exc).__name__}: {exc}"
        status = 2
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["status"] = {0: "ok", 1: "refused", 2: "failed"}[status]
    out = args.work / f"loop-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    summary["summary_file"] = str(out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n" + render_summary(summary))
    return status


def _loop(args: argparse.Namespace, token: str | None, summary: dict[str, Any]) -> int:
    from edgessl.devices.flash import flash_fleet, load_fleet
    from edgessl.devices.harvest import harvest_fleet, render_harvest
    from edgessl.devices.keys import sign_bundle
    from edgessl.export.adapt import adapt, deployed, site_shards
    from edgessl.export.site_gate import gate, render_gate, write_gate
    from edgessl.train.shards import count_shard

    quiet = args.json
    fleet = load_fleet(args.fleet)
    current = args.work / "current.json"
    if args.source is None:
        if not current.is_file():
            raise ValueError(f"no --from and no {current} (written when a loop has flashed the fleet): pass "
                             f"--from RUN|BUNDLE the first time")
        args.source, args.bundle = Path(json.loads(current.read_text())["bundle"]), None
    dep = deployed(args.source, args.bundle)
    running = args.bundle or args.source
    summary["running"] = {"name": dep.name, "version": dep.version, "bundle": str(running)}

    _step(f"collect from {len(fleet.devices)} devices", quiet)
    harvest_dir = args.work / "harvest"
    harvests = harvest_fleet(args.fleet, harvest_dir, token=token)
    summary["collect"] = [h.as_dict() for h in harvests]
    if not quiet:
        print(render_harvest(harvests))
    if not any(h.status in ("ok", "partial") for h in harvests):
        raise RuntimeError("no device could be harvested: " + "; ".join(f"{h.device}: {h.reason}" for h in harvests))
    shards = site_shards(harvest_dir) if any(harvest_dir.rglob("*.tar")) else []
    held = sum(count_shard(p) for p in shards)
    summary["samples_held"] = held
    if held < args.min_samples:
        summary["verdict"] = "skipped"
        summary["reason"] = f"{held} samples harvested so far, fewer than --min-samples {args.min_samples}"
        return 0

    _step(f"adapt {dep.name} v{dep.version} for {args.minutes:g} minutes on {held} site samples", quiet)
    out = args.work / f"adapt-v{dep.version + 1}"
    result = adapt(args.source, harvest_dir, out, minutes=args.minutes, bundle=args.bundle, mix=args.mix,
                   mix_ratio=args.mix_ratio, threads=args.threads, force=True)
    summary["adapt"] = result.as_dict()

    _step(f"gate v{result.version} against v{dep.version} on the site's eval set", quiet)
    report = gate(Path(result.bundle), running, Path(result.eval_dir), margin=args.margin / 100)
    write_gate(Path(result.bundle), report)
    summary["gate"] = json.loads(report.model_dump_json())
    summary["verdict"] = report.verdict
    if not quiet:
        print(render_gate(report))
    if report.verdict != "pass":
        summary["flash"] = []
        return 1
    if not args.flash:
        summary["flash"] = []
        return 0

    _step(f"sign and flash v{result.version} (canary first)", quiet)
    sign_bundle(result.bundle, args.key)
    flashed = flash_fleet(result.bundle, fleet, token=token,
                          on_result=None if quiet else lambda r: print(f"{r.name}: {r.status} ({r.reason})", flush=True))
    summary["flash"] = [{"device": r.name, "status": r.status, "version": r.version, "slot": r.slot,
                         "reason": r.reason, "seconds": r.seconds} for r in flashed]
    if not all(r.status == "ok" for r in flashed):
        return 2
    current.write_text(json.dumps({"bundle": str(Path(result.bundle).resolve()), "version": result.version}) + "\n")
    return 0


def render_summary(s: dict[str, Any]) -> str:
    """The plain-text report: what the loop did, step by step."""
    running = s.get("running", {})
    lines = [f"edgessl loop: {s['status']} in {s['seconds']:.0f} s (running {running.get('name', '?')} "
             f"v{running.get('version', '?')})"]
    for h in s.get("collect", []):
        cams = ", ".join(f"{c}: {n}" for c, n in sorted(h["by_camera"].items())) or "none"
        drift = ", ".join(f"{c} {v:.3f}" for c, v in sorted((h.get("drift") or {}).items()))
        lines.append(f"  collected {h['device']}: {h['status']}, {h['samples']} new samples ({cams}), "
                     f"{h['eval_images']} eval crops in {len(h['eval_classes'])} classes"
                     + (f", drift at harvest: {drift}" if drift else "")
                     + (f" — {h['reason']}" if h["reason"] else ""))
    if "samples_held" in s:
        lines.append(f"  samples held for adaptation: {s['samples_held']}")
    if "adapt" in s:
        a = s["adapt"]
        lines.append(f"  adapted {a['minutes']:.1f} min (+ {a['export_minutes']:.1f} min export) on {a['site_samples']} "
                     f"site samples + {a['mix_samples']} base images -> v{a['version']} {a['bundle']}")
    if "gate" in s:
        g = s["gate"]
        lines.append(f"  gate: {g.get('verdict')}" + (f" ({'; '.join(g.get('reasons') or [])})"
                                                     if g.get("reasons") else ""))
        for row in g.get("classes", []):
            lines.append(f"    {row.get('label')}: {_pct(row.get('before'))} -> {_pct(row.get('after'))} "
                         f"(n={row.get('n')})")
        lines.append(f"    overall: {_pct((g.get('before') or {}).get('accuracy'))} -> "
                     f"{_pct((g.get('after') or {}).get('accuracy'))} ({g.get('images')} eval images)")
    if s.get("verdict") == "skipped":
        lines.append(f"  skipped: {s.get('reason')}")
    for f in s.get("flash", []):
        lines.append(f"  flashed {f['device']}: {f['status']} v{f['version']} ({f['reason']})")
    if "flash" in s:
        ok = sum(f["status"] == "ok" for f in s["flash"])
        lines.append(f"  devices updated: {ok} of {len(s['flash'])}" if s["flash"] else "  devices updated: none")
    if "error" in s:
        lines.append(f"  error: {s['error']}")
    lines.append(f"  summary: {s.get('summary_file', '-')}")
    return "\n".join(lines)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"

