"""Does a run reproduce a committed one? The default run's files compared value by value, timings aside.

``reports/default`` holds the metrics of the committed default run; a fresh clone's ``dvc repro`` writes the same
files under ``metrics/`` and ``plots/``. Sampling, distillation and scoring are deterministic on a CPU at a pinned
precision, so every number must come back exactly; only what measures the machine (latencies, wall times, the CPU's
name) may differ. :func:`compare` lists the differences; ``scripts/check_reproduction.py`` runs it (CI does, after
its own ``dvc repro``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# keys that measure the machine rather than the method: never compared
MACHINE_KEYS = frozenset({"latency_ms", "seconds", "ms_per_image", "inversion_ms_per_image", "generation_ms_per_image",
                          "cpu", "wall_s"})

# fresh run's file -> committed file in reports/default (what the default run's numbers are)
DEFAULT_RUN_FILES = {
    "metrics/evaluate.json": "evaluate.json",
    "metrics/ablate.json": "ablate.json",
    "metrics/distill.json": "distill.json",
    "metrics/edit.json": "edit.json",
    "metrics/schedule.json": "schedule.json",
    "plots/distill_loss.csv": "distill_loss.csv",
    "metrics/headline/evaluate.json": "headline/evaluate.json",
    "metrics/headline/ablate.json": "headline/ablate.json",
    "metrics/headline/edit.json": "headline/edit.json",
}


def _same_number(a: float, b: float, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b if rtol == 0 else math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def compare(committed: Any, fresh: Any, rtol: float = 0.0, ignore: Iterable[str] = MACHINE_KEYS,
            path: str = "") -> list[str]:
    """Every place where ``fresh`` differs from ``committed`` (nested dicts/lists of JSON values), as
    ``"path: committed -> fresh"`` lines; keys in ``ignore`` are skipped at any depth. Numbers must be equal
    (``rtol`` = 0) or within ``rtol``; a key present on one side only is a difference."""
    ignore = frozenset(ignore)
    where = path or "."
    if isinstance(committed, dict) and isinstance(fresh, dict):
        out = []
        for k in sorted(set(committed) | set(fresh), key=str):
            if k in ignore:
                continue
            sub = f"{path}.{k}" if path else str(k)
            if k not in fresh:
                out.append(f"{sub}: missing from the fresh run")
            elif k not in committed:
                out.append(f"{sub}: not in the committed run")
            else:
                out += compare(committed[k], fresh[k], rtol, ignore, sub)
        return out
    if isinstance(committed, list) and isinstance(fresh, list):
        if len(committed) != len(fresh):
            return [f"{where}: {len(committed)} entries -> {len(fresh)}"]
        out = []
        for i, (a, b) in enumerate(zip(committed, fresh)):
            out += compare(a, b, rtol, ignore, f"{path}[{i}]")
        return out
    numbers = (int, float)
    if isinstance(committed, numbers) and isinstance(fresh, numbers):
        return [] if _same_number(committed, fresh, rtol) else [f"{where}: {committed!r} -> {fresh!r}"]
    return [] if committed == fresh else [f"{where}: {committed!r} -> {fresh!r}"]


def read(path: Path) -> Any:
    """A JSON file, or a CSV file as a list of rows (numbers parsed)."""
    if path.suffix == ".csv":
        with path.open() as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return json.loads(path.read_text())


def compare_runs(committed_dir: str | Path, run_root: str | Path = ".", rtol: float = 0.0,
                 files: dict[str, str] = DEFAULT_RUN_FILES) -> dict[str, list[str]]:
    """{file: differences} between a run's files under ``run_root`` and the committed ones in ``committed_dir``
    (only files with differences; a missing file is one)."""
    committed_dir, run_root = Path(committed_dir), Path(run_root)
    report = {}
    for fresh_name, committed_name in files.items():
        a, b = committed_dir / committed_name, run_root / fresh_name
        if not a.is_file() or not b.is_file():
            report[fresh_name] = [f"{a if not a.is_file() else b} does not exist"]
            continue
        diffs = compare(read(a), read(b), rtol)
        if diffs:
            report[fresh_name] = diffs
    return report
