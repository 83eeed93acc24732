"""Latency benchmark of the UNet sampling loop (baseline vs Clockwork, eager vs fast) - a thin wrapper.

    python scripts/benchmark.py --device cuda --models sd15,teacher --sdpa auto --out reports/benchmarks
    python scripts/benchmark.py --device cpu --models teacher --threads 2 --out reports/benchmarks

Same options as ``clockwork bench`` (see ``clockwork/bench/`` and docs/BENCHMARKS.md).
"""

from __future__ import annotations

import sys

from clockwork.bench import main

if __name__ == "__main__":
    sys.exit(main())
