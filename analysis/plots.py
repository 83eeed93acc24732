"""The paper's figures from loaded results: labelled axes with units, a legend, the baseline marked,
error bars wherever a std exists."""

from __future__ import annotations

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.loader import completed, is_missing, is_sweep_baseline
from analysis.tables import flops_unit, pareto_mask

matplotlib.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8,
                            "svg.hashsalt": "clockwork"})

BASELINE_STYLE = dict(marker="*", s=260, color="black", zorder=6, edgecolor="white", linewidth=0.8)
REC_STYLE = dict(marker="*", s=320, color="gold", zorder=7, edgecolor="black", linewidth=0.8)
COLORS = {"baseline": "tab:gray", "unrolled": "tab:blue", "forward_noised": "tab:orange"}


def _err(s: pd.Series | None):
    if s is None:
        return None
    s = pd.to_numeric(s, errors="coerce")
    return None if s.isna().all() else s.fillna(0).to_numpy()


def _front_line(ax, x, y, higher_is_better=False, label="Pareto front"):
    m = pareto_mask(x, y, higher_is_better)
    order = np.argsort(np.asarray(x)[m])
    ax.step(np.asarray(x)[m][order], np.asarray(y)[m][order], where="post", color="tab:red", ls="--", lw=1.2,
            alpha=0.8, label=label, zorder=2)
    return m


def fid_vs_flops(pts: pd.DataFrame, main_steps: dict[str, int]):
    """Fig. 4: FID vs FLOPs per image over step counts, baseline vs Clockwork; one panel per teacher and image
    count (``pts["panel"]``: FIDs on different numbers of images are not comparable)."""
    panels = list(pts["panel"].unique()) if "panel" in pts else list(pts["teacher"].unique())
    key = "panel" if "panel" in pts else "teacher"
    names = [n for n in pts["series"].unique() if n != "baseline"]
    colors = {"baseline": "tab:gray", **{n: f"C{i}" for i, n in enumerate(names)}}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        g = pts[pts[key] == panel]
        teacher = g["teacher"].iloc[0]
        scale, unit = flops_unit(g["gflops"])  # per panel: teachers differ by orders of magnitude
        for series, s in g.groupby("series", sort=False):
            s = s.sort_values("steps")
            color = colors[series]
            ax.errorbar(s["gflops"] / scale, s["fid"], yerr=_err(s["fid_std"]), marker="o", capsize=3, color=color,
                        label=series, zorder=3)
            for _, r in s.iterrows():
                ax.annotate(f"{int(r['steps'])}", (r["gflops"] / scale, r["fid"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=color)
        _front_line(ax, g["gflops"].to_numpy() / scale, g["fid"].to_numpy())
        b = g[(g["series"] == "baseline") & (g["steps"] == main_steps.get(teacher))]
        if len(b):
            ax.scatter(b["gflops"] / scale, b["fid"], label=f"baseline, {int(b['steps'].iloc[0])} steps",
                       **BASELINE_STYLE)
        ax.set(xlabel=f"{unit} per image (incl. CFG)", ylabel="FID (lower is better)",
               title=f"{panel}\nFID vs compute (point labels: sampler steps)")
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def training_curves(pts: pd.DataFrame):
    """Fig. 7: FID by step count for adaptors distilled on unrolled trajectories vs forward-noised images."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, s in pts.groupby("training"):
        s = s.sort_values("steps")
        is_base = name.startswith("baseline")
        ax.errorbar(s["steps"], s["fid"], yerr=_err(s["fid_std"]), capsize=3, marker="*" if is_base else "o",
                    ms=11 if is_base else 6, ls="--" if is_base else "-", color=COLORS.get(name.split(" ")[0]),
                    label=name.replace("_", "-"), zorder=4 if is_base else 3)
    ax.set_xticks(sorted(pts["steps"].unique()))
    ax.set(xlabel="sampler steps", ylabel="FID (lower is better)",
           title="Unrolled trajectories vs forward-noised distillation")
    ax.legend()
    fig.tight_layout()
    return fig


def distill_loss(curve: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(curve["step"], curve["loss"], lw=1, label="training loss")
    if len(curve) > 20:
        w = max(5, len(curve) // 20)
        ax.plot(curve["step"], curve["loss"].rolling(w, min_periods=1).mean(), lw=2, label=f"moving mean ({w})")
    if (curve["loss"] > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="L2 loss on r_out at adaptor steps",
           title="Adaptor distillation on unrolled trajectories")
    ax.legend()
    fig.tight_layout()
    return fig


def sweep_fronts(trials: pd.DataFrame, name: str, recommended: str | None, baseline: pd.Series | None,
                 rec_rule: str = ""):
    """The sweep's Pareto fronts: FID vs GFLOPs and CLIP vs GFLOPs, recommended trial and baseline marked."""
    done = completed(trials)
    panels = [("fid", "FID (lower is better)", False)]
    if "clip" in done and done["clip"].notna().any():
        panels.append(("clip", "CLIP score (higher is better)", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    color_by = "clock" if "clock" in done and done[~is_sweep_baseline(done)]["clock"].nunique() > 1 else None
    for ax, (metric, ylabel, hib) in zip(axes[0], panels):
        d = done[done[metric].notna()]
        trials_only = d[~is_sweep_baseline(d)]
        groups = trials_only.groupby(trials_only[color_by].astype(str)) if color_by else [("trials", trials_only)]
        for i, (key, g) in enumerate(groups):
            err = _err(g[f"{metric}_std"]) if f"{metric}_std" in g else None
            ax.errorbar(g["gflops"], g[metric], yerr=err, fmt="o", ms=5, alpha=0.75, capsize=2, color=f"C{i}",
                        label=f"clock {key}" if color_by else key, zorder=3)
        _front_line(ax, d["gflops"].to_numpy(), d[metric].to_numpy(), hib)
        if recommended is not None:
            r = d[d["trial_id"].astype(str) == str(recommended)]
            if len(r):
                ax.scatter(r["gflops"], r[metric], label=f"recommended: {recommended}", **REC_STYLE)
        if baseline is not None and not is_missing(baseline.get(metric)):
            ax.scatter([baseline["gflops"]], [baseline[metric]], label=f"baseline ({int(baseline['steps'])} steps)",
                       **BASELINE_STYLE)
            ax.axhline(baseline[metric], color="black", lw=0.8, ls=":", zorder=1)
        ax.set(xlabel="GFLOPs per image (incl. CFG)", ylabel=ylabel, title=f"sweep '{name}': {metric.upper()} vs compute")
        ax.legend(loc="best")
    if rec_rule:
        fig.text(0.01, -0.02, f"recommended: {rec_rule}", fontsize=8)
    fig.tight_layout()
    return fig
