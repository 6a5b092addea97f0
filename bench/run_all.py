"""`make bench`: every benchmark in turn, each writing its section of docs/benchmarks.md.

The whole set takes hours on a 2-core CPU (SSL methods about 2.5 h, the daemon about 25 min,
CIFAR few-shot 20 min, export formats about 30 min, this CPU against AVX2 about 5 min after
`make demo`). Pass names to run a subset:

    python bench/run_all.py fewshot_cifar export_formats
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["fewshot_cifar", "export_formats", "daemon", "ssl_methods", "isa"]


def main() -> None:
    chosen = sys.argv[1:] or BENCHES
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHES)}")
    here = Path(__file__).resolve().parent
    for name in chosen:
        print(f"== bench/{name}.py", flush=True)
        subprocess.run([sys.executable, str(here / f"{name}.py")], check=True)


if __name__ == "__main__":
    main()
