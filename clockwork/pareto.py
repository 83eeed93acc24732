"""Pareto fronts and the recommended operating point of a quality-vs-cost sweep.

Pure math on plain rows (dicts or a pandas DataFrame's records): no Ray, no MLflow. A point is on the
front when no other point is at least as good in every objective and strictly better in one.
Points with a missing or non-finite objective are never on the front (a failed trial has no FID).

The operating point answers "which setting do I ship": the cheapest point whose quality stays within a
tolerance of the baseline (the plain UNet, clock 1). Cheapest = the largest FLOPs saving.

The competitor answers "is it worth it at all": a user can always sample the plain UNet with fewer steps.
:func:`plain_steps_front` is the front of the plain baseline measured at several step counts (same prompts,
same seeds) and :func:`versus_fewer_steps` scores any method point against it:
``delta = front(point's cost) - point's FID`` (for a maximised metric such as CLIP: ``point - front``), the
front interpolated linearly in cost between its two neighbouring step counts, so **positive = better than
taking fewer steps** at the same FLOPs. Outside the front's cost range there is no such plain point and the
answer says so (``status``) instead of extrapolating. The standard deviation comes from paired bootstrap
replicates when every point carries them (``fid_boot``: the metric on the same resampled prompt indices for
every method), else from propagating the points' own ``*_std`` as independent errors.
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


def plain_steps_front(rows: Sequence[Mapping[str, Any]], quality: str = "fid", cost: str = "gflops",
                      quality_mode: str = "min", drop_dominated: bool = True) -> list[Mapping[str, Any]]:
    """The rows of the plain baseline (one per step count) that are on the (cost, quality) front, cheapest first.

    A step count that costs more and is no better than another is dropped: nobody would pick it, and a
    non-monotone front would make the interpolation reward a method for the plain sampler's noise.
    ``drop_dominated=False`` keeps every step count (the plain curve itself): right for a metric that barely
    moves with the step count (CLIP here), where noise alone would let the cheapest step count dominate the
    rest and leave no front to compare with.
    """
    if quality_mode not in MODES:
        raise ValueError(f"quality_mode must be 'min' or 'max', got {quality_mode!r}")
    if not drop_dominated:
        ok = [r for r in rows if math.isfinite(_value(r, cost)) and math.isfinite(_value(r, quality))]
        return sorted(ok, key=lambda r: _value(r, cost))
    return [rows[i] for i in pareto_front(rows, cost, quality, "min", quality_mode)]


def _boot(row: Mapping[str, Any], key: str) -> np.ndarray | None:
    v = row.get(f"{key}_boot")
    if v is None:
        return None
    a = np.asarray(v, dtype=float)
    return a if a.ndim == 1 and len(a) > 1 and np.isfinite(a).all() else None


def versus_fewer_steps(point: Mapping[str, Any], front: Sequence[Mapping[str, Any]], quality: str = "fid",
                       cost: str = "gflops", quality_mode: str = "min") -> dict[str, Any]:
    """``point`` against the plain-steps ``front`` (from :func:`plain_steps_front`) at the point's cost.

    Returns ``{"delta", "delta_std", "front", "front_std", "status", "steps"}``: ``front`` is the front's
    quality interpolated at the point's cost, ``delta`` how much better the point is (positive = it beats
    taking fewer steps; FID points for FID), ``steps`` the (possibly fractional) plain step count of equal
    cost when the rows carry ``steps``. ``status`` is ``"inside"``, or ``"cheaper_than_front"`` /
    ``"costlier_than_front"`` (then ``delta`` and ``front`` are ``None``: no plain step count costs that).
    """
    if quality_mode not in MODES:
        raise ValueError(f"quality_mode must be 'min' or 'max', got {quality_mode!r}")
    pts = [(_value(r, cost), _value(r, quality), r) for r in front]
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        raise ValueError(f"the plain-steps front has no finite ({cost}, {quality}) point; evaluate the baseline "
                         "at several step counts first")
    pts.sort(key=lambda p: p[0])
    c, q = _value(point, cost), _value(point, quality)
    out: dict[str, Any] = {"delta": None, "delta_std": None, "front": None, "front_std": None, "steps": None}
    if not (math.isfinite(c) and math.isfinite(q)):
        return {**out, "status": "no_metrics"}
    if c < pts[0][0] - 1e-9:
        return {**out, "status": "cheaper_than_front"}
    if c > pts[-1][0] + 1e-9:
        return {**out, "status": "costlier_than_front"}
    hi = next(i for i, p in enumerate(pts) if p[0] >= c - 1e-9)
    lo = hi if abs(pts[hi][0] - c) <= 1e-9 or hi == 0 else hi - 1
    (c0, q0, r0), (c1, q1, r1) = pts[lo], pts[hi]
    w = 0.0 if c1 == c0 else (c - c0) / (c1 - c0)
    sign = 1.0 if quality_mode == "min" else -1.0
    f = (1 - w) * q0 + w * q1
    boots = [_boot(r, quality) for r in (r0, r1, point)]
    if all(b is not None for b in boots) and len({len(b) for b in boots}) == 1:  # paired: same resampled prompts
        fb = (1 - w) * boots[0] + w * boots[1]
        f_std, d_std = float(np.std(fb, ddof=1)), float(np.std(sign * (fb - boots[2]), ddof=1))
    else:  # independent errors
        s0, s1, sp = (_value(r, f"{quality}_std") for r in (r0, r1, point))
        s0, s1, sp = (x if math.isfinite(x) else 0.0 for x in (s0, s1, sp))
        f_std = math.hypot((1 - w) * s0, w * s1)
        d_std = math.hypot(f_std, sp)
    s0, s1 = _value(r0, "steps"), _value(r1, "steps")
    steps = (1 - w) * s0 + w * s1 if math.isfinite(s0) and math.isfinite(s1) else None
    return {"delta": sign * (f - q), "delta_std": d_std, "front": f, "front_std": f_std, "status": "inside",
            "steps": steps}


def beats_fewer_steps(cmp: Mapping[str, Any], margin: float = 1.0, sigmas: float = 2.0) -> bool | None:
    """Does a :func:`versus_fewer_steps` answer beat the front by ``margin`` and ``sigmas`` standard deviations?
    ``None`` when the point is outside the front's cost range (no answer)."""
    if cmp.get("delta") is None:
        return None
    return bool(cmp["delta"] >= margin and cmp["delta"] >= sigmas * (cmp.get("delta_std") or 0.0))


__all__ = ["pareto_mask", "pareto_front", "operating_point", "plain_steps_front", "versus_fewer_steps",
           "beats_fewer_steps"]
