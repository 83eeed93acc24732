"""Does the default run in this working tree reproduce reports/default? Exit 1 with every difference if not.

    ./setup.sh && dvc repro && python scripts/check_reproduction.py

Compares metrics/*.json, metrics/headline/*.json and plots/distill_loss.csv value by value with the committed files
(timings and the CPU's name aside: pipeline/common/reproduction.py). CI runs it after its own `dvc repro`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.common.reproduction import compare_runs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--committed", default="reports/default", help="the committed run's folder")
    ap.add_argument("--run", default=".", help="the working tree whose metrics/ and plots/ to check")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    a = ap.parse_args()
    report = compare_runs(a.committed, a.run, a.rtol)
    if not report:
        print(f"the default run reproduces {a.committed} exactly (timings aside)")
        return 0
    print(f"the default run does NOT reproduce {a.committed}:")
    for f, diffs in report.items():
        print(f"  {f}: {len(diffs)} difference(s)")
        for d in diffs[:10]:
            print(f"    {d}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
