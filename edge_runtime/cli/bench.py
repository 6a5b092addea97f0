"""`edgessl bench BUNDLE`: the export's parity and speed report, and the same figures measured here."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Print the parity and speed report that export stored in the bundle, then run every "
                     "artifact whose backend is installed here on the bundle's golden inputs: cosine to the "
                     "fp32 golden embeddings and speed (ms/image at batch 1, images/s at batch 8).")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--threads", type=int, help="inference threads (default: the backend's default)")
    p.add_argument("--stored-only", action="store_true", help="only print the stored report")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per figure (default: 1.0)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgessl.edge_runtime.bundle.manifest import ReportRow, load_bundle
    from edgessl.edge_runtime.inference.backends import backend_for, load_backend
    from edgessl.edge_runtime.inference.parity import cosine_rows
    from edgessl.edge_runtime.inference.timing import render_report, speed
    from edgessl.errors import EdgesslError

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    print(render_report(m.report, title=f"stored report ({m.report_machine or 'machine not recorded'}):"))
    if args.stored_only:
        return 0
    golden = np.load(bundle.path(m.golden))
    rows = []
    for artifact in m.artifacts:
        base = dict(name=artifact.label, file=artifact.file)
        try:
            backend = backend_for(artifact.format)
            with load_backend(backend, bundle.path(artifact.file), threads=args.threads) as b:
                cos = cosine_rows(golden["embeddings"], b.embed(golden["inputs"]))
                latency, throughput = speed(b, m.preprocess.input_size, args.seconds)
        except EdgesslError as exc:
            rows.append(ReportRow(**base, status="skipped", reason=str(exc)[:200]))
            continue
        rows.append(ReportRow(**base, backend=backend, status="ok", cosine_median=float(np.median(cos)),
                              cosine_p1=float(np.percentile(cos, 1)), latency_ms_b1=latency,
                              throughput_b8=throughput, in_bundle=True))
    print()
    print(render_report(rows, title=f"measured here (golden set, {len(golden['inputs'])} images):"))
    return 0

