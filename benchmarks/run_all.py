"""Run every benchmark in this folder (used by `make bench`); each prints a table and saves JSON.

Usage: python benchmarks/run_all.py [--quick]
Results land in benchmarks/results/<name>.json.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    extra = [arg for arg in sys.argv[1:] if arg == "--quick"]
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(script), *extra], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nThese benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nAll results are in {HERE / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
