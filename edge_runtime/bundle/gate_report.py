"""The site gate's report as plain text: before/after per class, overall, verdict and reasons.

The gate itself runs on the server (export.site_gate) and stores its `GateReport` in the
bundle's manifest; the rendering lives here so that `edgessl bench` on a device shows the same
table without importing export/ (the dependency arrow is export -> edge_runtime only).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgessl.edge_runtime.bundle.manifest import GateReport, GateScore


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{100 * (after - before):+.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _overall(name: str, pick: str, before: GateScore | None, after: GateScore | None) -> list[str]:
    b = None if before is None else getattr(before, pick)
    a = None if after is None else getattr(after, pick)
    return [name, "", _pct(b), _pct(a), _delta(b, a)]


def _interval(score: GateScore | None) -> str:
    if score is None:
        return "not evaluated"
    lo, hi = score.ci95
    return (f"{_pct(score.accuracy)}% [{_pct(lo)}, {_pct(hi)}] (95% Wilson), mean margin {score.margin:+.3f}, "
            f"{score.artifact} on {score.backend}")


def render_gate(report: GateReport) -> str:
    """A fixed-width table (accuracy in %, leave-one-out on the site's evaluation set) followed
    by the verdict, its reasons, the parity and health rows and the notes."""
    rows = [[c.label, str(c.n), _pct(c.before), _pct(c.after), _delta(c.before, c.after)] for c in report.classes]
    rows.append(_overall("overall (images)", "accuracy", report.before, report.after))
    rows[-1][1] = str(report.images)
    rows.append(_overall("overall (classes)", "class_accuracy", report.before, report.after))
    out = [f"site gate: {report.candidate} (after) vs {report.running} (before) on {report.eval_dir}",
           *_table(["class", "n", "before %", "after %", "change"], rows),
           f"before: {_interval(report.before)}",
           f"after:  {_interval(report.after)}",
           f"accepted drop: {100 * report.margin:.1f} points; at least {report.min_images} images",
           f"verdict: {report.verdict.upper()}"]
    out += [f"  - {reason}" for reason in report.reasons]
    checks = [(f"parity {c.name}", c) for c in report.parity] + [(f"health {c.name}", c) for c in report.health]
    if checks:
        out.append("checks:")
        out += [f"  {what}: {'ok' if c.ok else 'FAILED'}{f' ({c.detail})' if c.detail else ''}" for what, c in checks]
    if report.notes:
        out.append("notes:")
        out += [f"  {note}" for note in report.notes]
    out.append(f"({report.created_at}, {report.seconds:.1f} s)")
    return "\n".join(out)
