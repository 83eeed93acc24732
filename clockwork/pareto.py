"""Pareto fronts and the recommended operating point of a quality-vs-cost sweep.

Pure math on plain rows (dicts or a pandas DataFrame's records): no Ray, no MLflow. A point is on the
front when no other point is at least as good in every objective and strictly better in one.
Points with a missing or non-finite objective are never on the front (a failed trial has no FID).

The operating point answers "which setting do I ship": the cheapest point whose quality stays within a
tolerance of the baseline (the plain UNet, clock 1). Cheapest = the largest FLOPs saving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("min", "max")


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n, k); ``modes[j]`` is 'min' or 'max' for column j.

    Equal points do not dominate each other, so duplicates on the front are all kept.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (n, k) array, got shape {pts.shape}")
    if pts.shape[1] != len(modes):
        raise ValueError(f"{pts.shape[1]} objectives but {len(modes)} modes")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be 'min' or 'max', got {bad}")
    # Flip maximised objectives so that smaller is better everywhere.
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    z = pts * signs
    finite = np.isfinite(z).all(axis=1)
    mask = finite.copy()
    idx = np.flatnonzero(finite)
    for i in idx:
        others = z[idx]
        dominated = np.all(others <= z[i], axis=1) & np.any(others < z[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(rows: Sequence[Mapping[str, Any]], x: str, y: str, x_mode: str = "min", y_mode: str = "min") -> list[int]:
    """Indices of the rows on the (x, y) Pareto front, sorted by x (cheapest first for a cost axis)."""
    pts = [[_value(r, x), _value(r, y)] for r in rows]
    if not pts:
        return []
    mask = pareto_mask(pts, (x_mode, y_mode))
    front = [i for i in range(len(rows)) if mask[i]]
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1] if y_mode == "min" else -pts[i][1]))


def operating_point(
    rows: Sequence[Mapping[str, Any]],
    baseline_quality: float,
    tolerance: float,
    quality: str = "fid",
    cost: str = "gflops",
    quality_mode: str = "min",
    relative: bool = False,
) -> int | None:
    """Index of the cheapest row whose ``quality`` is within ``tolerance`` of ``baseline_quality``.

    ``tolerance`` is in the metric's own units (FID points), or a fraction of the baseline when
    ``relative``. For a 'min' metric (FID) a row qualifies when quality <= baseline + tol; for a 'max'
    metric (CLIP) when quality >= baseline - tol. Ties in cost go to the better quality, so the
    answer is always on the (cost, quality) Pareto front. ``None`` when no row qualifies.
    """
    if quality_mode not in MODES:
        raise ValueError(f"quality_mode must be 'min' or 'max', got {quality_mode!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not math.isfinite(baseline_quality):
        raise ValueError(f"baseline {quality} is {baseline_quality}; evaluate the baseline first")
    tol = tolerance * abs(baseline_quality) if relative else tolerance
    best, best_key = None, None
    for i, r in enumerate(rows):
        q, c = _value(r, quality), _value(r, cost)
        if not (math.isfinite(q) and math.isfinite(c)):
            continue
        ok = q <= baseline_quality + tol if quality_mode == "min" else q >= baseline_quality - tol
        if not ok:
            continue
        key = (c, q if quality_mode == "min" else -q)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


__all__ = ["pareto_mask", "pareto_front", "operating_point"]
