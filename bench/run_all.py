"""`make bench`: every benchmark in turn, each writing its section of docs/benchmarks.md.

The whole set takes hours on a 2-core CPU (SSL methods about 2.5 h, the daemon about 25 min,
CIFAR few-shot 20 min, export formats about 30 min, lightly side by side 2 x 15 min, the recipe sweep
45 min, the grey-data policy with its colour control 4 x 6 min, this CPU against AVX2 about 5 min after
`make demo`). Pass names to run a subset:

    python bench/run_all.py fewshot_cifar export_formats
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# name -> the runs of bench/NAME.py (one argument list each): ssl_peer runs on this CPU and with
# oneDNN held to AVX2, the reference edge CPU, since its ratios depend on the instruction set.
BENCHES: dict[str, list[list[str]]] = {
    "fewshot_cifar": [[]], "export_formats": [[]], "daemon": [[]], "ssl_methods": [[]],
    "ssl_peer": [[], ["--avx2"]], "recipes": [["--minutes", "5", "--avx2"]],
    "grey_policy": [["--minutes", "5", "--colour-control"]], "isa": [[]], "objects": [[]], "adversarial": [[]],
    "int8_student": [[]], "closed_loop": [[]],
}


def main() -> None:
    chosen = sys.argv[1:] or BENCHES
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHES)}")
    here = Path(__file__).resolve().parent
    for name in chosen:
        for extra in BENCHES[name]:
            print(f"== bench/{name}.py {' '.join(extra)}".rstrip(), flush=True)
            subprocess.run([sys.executable, str(here / f"{name}.py"), *extra], check=True)


if __name__ == "__main__":
    main()
