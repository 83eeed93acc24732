"""Pareto fronts and the answer to "does it beat taking fewer steps?": the verdict on a ``vs_fewer_steps`` answer
(clockwork.pareto.beats_fewer_steps with :data:`VS_MARGIN` and :data:`VS_SIGMAS`), its cells and its wording, shared by
every table and figure that carries ΔFID@FLOPs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.formatting import pm
from analysis.loader import is_missing, pareto


# ------------------------------------------------------------------------------------------------ Pareto


def pareto_mask(cost, value, higher_is_better: bool = False) -> np.ndarray:
    """Points not dominated by another (lower-or-equal cost and better-or-equal value, one strictly)."""
    c = np.asarray(cost, dtype=float)
    v = -np.asarray(value, dtype=float) if higher_is_better else np.asarray(value, dtype=float)
    ok = ~(np.isnan(c) | np.isnan(v))
    mask = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (v <= v[i]) & ((c < c[i]) | (v < v[i]))
        mask[i] = not dominated.any()
    return mask


# ------------------------------------------------------------------------------ versus taking fewer steps

# The question every report asks: does the method beat the plain UNet sampled with fewer steps at equal FLOPs?
# The stages answer it per row (vs_fewer_steps: clockwork.pareto.versus_fewer_steps against the plain-steps front);
# the verdict applies clockwork.pareto.beats_fewer_steps with this margin and these sigmas.
VS_MARGIN = 1.0  # FID points
VS_SIGMAS = 2.0
NA = "n/a"
BEATS, TIES, LOSES, OUTSIDE = "beats fewer steps", "ties", "loses", "outside the front"
OUTSIDE_WHY = {"cheaper_than_front": "cheaper than its fewest steps", "costlier_than_front": "costlier than its most steps"}


def fewer_steps_verdict(v: dict | None, margin: float = VS_MARGIN, sigmas: float = VS_SIGMAS) -> str:
    """The verdict of one ``vs_fewer_steps`` FID answer: ``beats fewer steps`` (ΔFID@FLOPs >= +margin and >= sigmas·σ:
    clockwork.pareto.beats_fewer_steps), ``ties`` (|Δ| < sigmas·σ; ``ties (below the +1.0 margin)`` when Δ is
    significant but smaller than the margin), ``loses`` (Δ <= -sigmas·σ), ``outside the front (...)`` when no plain
    step count costs as much, ``n/a`` when the file has no answer."""
    if v is None:
        return NA
    status = v.get("status")
    if status in OUTSIDE_WHY:
        return f"{OUTSIDE} ({OUTSIDE_WHY[status]})"
    if status != "inside" or v.get("delta") is None:
        return f"{NA} (no metrics)"
    if pareto().beats_fewer_steps(v, margin, sigmas):
        return BEATS
    d, sd = float(v["delta"]), float(v.get("delta_std") or 0.0)
    if d < 0 and d <= -sigmas * sd:
        return LOSES
    if abs(d) < sigmas * sd or d == 0:
        return TIES
    return f"{TIES} (below the +{margin:.1f} margin)"


def verdict_kind(verdict: str) -> str:
    """``beats`` / ``ties`` / ``loses`` / ``outside`` / ``n/a`` of a :func:`fewer_steps_verdict`."""
    for k, prefix in (("beats", BEATS), ("ties", TIES), ("loses", LOSES), ("outside", OUTSIDE)):
        if verdict.startswith(prefix):
            return k
    return NA


def fmt_vs(v: dict | None, digits: int = 2) -> str:
    """``+1.89 ± 0.21`` (Δ@FLOPs), ``outside (cheaper)`` / ``outside (costlier)``, or ``n/a``."""
    if v is None:
        return NA
    if v.get("status") in OUTSIDE_WHY:
        return "outside (" + v["status"].split("_")[0] + ")"
    if v.get("delta") is None:
        return NA
    d, sd = v["delta"], v.get("delta_std")
    return f"{d:+.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def fmt_front(v: dict | None, digits: int = 2) -> str:
    if v is None or v.get("front") is None:
        return NA if v is None or v.get("status") not in OUTSIDE_WHY else "-"
    return pm(v["front"], v.get("front_std"), digits)


def fmt_steps(v: dict | None) -> str:
    if v is None or v.get("steps") is None:
        return NA if v is None or v.get("status") not in OUTSIDE_WHY else "-"
    return f"{v['steps']:.1f}"


def front_steps(rows: pd.DataFrame, metric: str = "fid") -> list[int]:
    """Step counts of the plain-steps front (clockwork.pareto.plain_steps_front) of baseline ``rows``, fewest first."""
    recs = [r for r in rows[["steps", "gflops", metric]].to_dict("records")
            if not (is_missing(r[metric]) or is_missing(r["gflops"]))]
    if not recs:
        return []
    mode = "max" if metric == "clip" else "min"
    return [int(r["steps"]) for r in pareto().plain_steps_front(recs, metric, quality_mode=mode)]


def _steps_list(steps) -> str:
    return ", ".join(str(s) for s in steps) if steps else "-"


VS_NOTES = ("ΔFID@FLOPs: the FID of the plain-steps front (the full UNet sampled with fewer steps, same prompts and seeds; "
            "step counts that cost more and are no better dropped) interpolated linearly in GFLOPs at the method's cost, "
            "minus the method's FID: positive = better than taking fewer steps. ΔCLIP@FLOPs: the method's CLIP minus the "
            "front's. ±: std over paired bootstrap replicates (the same resampled prompts for every method) where the file "
            "has them, else the points' stds propagated. Verdict (clockwork.pareto.beats_fewer_steps): beats fewer steps "
            f"when ΔFID@FLOPs ≥ +{VS_MARGIN:.1f} and ≥ {VS_SIGMAS:g}σ; ties when |Δ| < {VS_SIGMAS:g}σ; loses when "
            f"Δ ≤ -{VS_SIGMAS:g}σ; outside the front when no plain step count costs as much. n/a: the results file "
            "has no vs_fewer_steps for the row (written before the stages computed it).")
