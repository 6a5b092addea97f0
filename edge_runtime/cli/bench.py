"""`edgessl bench BUNDLE`: the export's parity and speed report, and the same figures measured here."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Print the parity and speed report that export stored in the bundle, then run every "
                     "artifact of the bundle whose backend runs here on the bundle's golden inputs: the parity gate "
                     "(lowest centred cosine to the fp32 golden embeddings, the device health check's figure; "
                     "threshold per precision from the bundle's device profiles), raw cosines, and speed "
                     "(ms/image at batch 1, images/s at batch 8). An artifact whose backend cannot run here "
                     "(TensorRT without a GPU) is listed as unchecked. When the site gate judged the bundle "
                     "(a candidate of the closed loop), its report is printed too: accuracy before/after per "
                     "class on the site's evaluation set, parity, health and the verdict.")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--threads", type=int, help="inference threads (default: the backend's default)")
    p.add_argument("--stored-only", action="store_true", help="only print the stored report")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per figure (default: 1.0)")
    p.add_argument("--json", action="store_true",
                   help="print {stored: [rows], measured: [rows], gate: report or null} as JSON, no tables")


def _threshold(precision: str, profiles: list[str]) -> float:
    """The least strict threshold among the bundle's profiles (export's rule for shipping an
    artifact), or the default one when none of them is known here."""
    from edgessl.edge_runtime.device.profiles import resolve_profile
    from edgessl.edge_runtime.inference.parity import DEFAULT_MIN_COSINE
    from edgessl.errors import EdgesslError

    found = []
    for name in profiles:
        try:
            found.append(resolve_profile(name)[0].min_cosine.for_precision(precision))
        except EdgesslError:
            continue
    return min(found) if found else DEFAULT_MIN_COSINE[precision]


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    import numpy as np

    from edgessl.edge_runtime.bundle.gate_report import render_gate
    from edgessl.edge_runtime.bundle.manifest import ReportRow, load_bundle
    from edgessl.edge_runtime.inference.backends import backend_for, load_backend
    from edgessl.edge_runtime.inference.backends.tensorrt import gpu_available
    from edgessl.edge_runtime.inference.parity import cosine_rows, golden_agreement, passes
    from edgessl.edge_runtime.inference.timing import render_report, speed
    from edgessl.errors import EdgesslError

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    if not args.json:
        print(render_report(m.report, title=f"stored report ({m.report_machine or 'machine not recorded'}):"))
        if m.gate is not None:
            print()
            print(render_gate(m.gate))
    gate = None if m.gate is None else m.gate.model_dump(mode="json")
    shipped = [a.label for a in m.artifacts]
    reported = [r.name for r in m.report if r.in_bundle]
    if m.report and sorted(shipped) != sorted(reported):
        print(f"warning: the stored report marks {', '.join(reported) or 'nothing'} as in the bundle, "
              f"but the manifest lists {', '.join(shipped)}", file=sys.stderr)
    if args.stored_only:
        if args.json:
            print(json.dumps({"stored": [r.model_dump() for r in m.report], "measured": [], "gate": gate}))
        return 0
    golden = np.load(bundle.path(m.golden), allow_pickle=False)
    inputs, expected = np.asarray(golden["inputs"]), np.asarray(golden["embeddings"], np.float32)
    center = np.load(bundle.path(m.center), allow_pickle=False)
    stored = {r.name: r for r in m.report}
    rows = []
    for artifact in m.artifacts:
        base = dict(name=artifact.label, file=artifact.file, in_bundle=True)
        try:
            backend = backend_for(artifact.format)
            if backend == "tensorrt" and not gpu_available():
                was = stored.get(artifact.label)
                rows.append(ReportRow(**base, backend=backend, status="unchecked", reason=(
                    "no NVIDIA GPU here: not run" + (f" (export: {was.status})" if was is not None else ""))))
                continue
            with load_backend(backend, bundle.path(artifact.file), threads=args.threads) as b:
                batched = b.embed(inputs)
                single = np.concatenate([b.embed(inputs[i:i + 1]) for i in range(len(inputs))])
                latency, throughput = speed(b, m.preprocess, args.seconds)
        except EdgesslError as exc:
            rows.append(ReportRow(**base, status="skipped", reason=str(exc)[:200]))
            continue
        agreement = min(golden_agreement(expected, batched, center), golden_agreement(expected, single, center))
        threshold = _threshold(artifact.precision, m.profiles)
        ok = passes(agreement, threshold)
        cos = cosine_rows(expected, batched)
        rows.append(ReportRow(**base, backend=backend, status="ok" if ok else "failed-parity",
                              reason="" if ok else f"min centred cosine {agreement:.4f} < {threshold} "
                                                   f"({artifact.precision} threshold)",
                              centred_min=agreement, cosine_median=float(np.median(cos)),
                              cosine_p1=float(np.percentile(cos, 1)), latency_ms_b1=latency,
                              throughput_b8=throughput))
    if args.json:
        print(json.dumps({"stored": [r.model_dump() for r in m.report], "measured": [r.model_dump() for r in rows],
                          "gate": gate}))
        return 0
    print()
    print(render_report(rows, title=f"measured here (golden set, {len(inputs)} images):"))
    return 0
