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


CUT_MARKERS = ("o", "s", "^", "D", "v")


def _short(r) -> str:
    """``c3 w64 k1``: clock, adaptor width, cut, as in the sweep's trial names (``c3-resnet-w64-k1-s8``)."""
    parts = [f"{p}{int(r[c])}" for p, c in (("c", "clock"), ("w", "width"), ("k", "cut"))
             if c in r and not is_missing(r[c])]
    return " ".join(parts) or str(r["trial_id"])


def sweep_fronts(trials: pd.DataFrame, name: str, recommended: str | None, baseline: pd.Series | None,
                 rec_rule: str = "", info=None, other: str | None = None):
    """The sweep's Pareto fronts: FID vs GFLOPs and CLIP vs GFLOPs; colour = clock period, marker = cut, front
    points labelled, recommended trial (gold star) and baseline (black star, dotted line) marked. ``info``: the
    sweep's :class:`analysis.loader.SweepInfo` (how it ran: in the title); ``other``: the results its FIDs are not
    comparable with (a sweep is its own run, with its own image count)."""
    from matplotlib.lines import Line2D

    done = completed(trials)
    n = info.n_samples if info is not None else None
    panels = [("fid", f"FID on {n} images per trial (lower is better)" if n else "FID (lower is better)", False)]
    if "clip" in done and done["clip"].notna().any():
        panels.append(("clip", "CLIP score (higher is better)", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    own = done[~is_sweep_baseline(done)]
    clocks = sorted(own["clock"].dropna().unique()) if "clock" in own else []
    cuts = sorted(own["cut"].dropna().unique()) if "cut" in own else []
    color = {c: f"C{i}" for i, c in enumerate(clocks)}
    marker = {c: CUT_MARKERS[i % len(CUT_MARKERS)] for i, c in enumerate(cuts)}
    for ax, (metric, ylabel, hib) in zip(axes[0], panels):
        d = done[done[metric].notna()]
        t = d[~is_sweep_baseline(d)]
        keys = [c for c in ("clock", "cut") if c in t]
        for key, g in (t.groupby(keys, dropna=False) if keys else [((), t)]):
            key = key if isinstance(key, tuple) else (key,)
            k = dict(zip(keys, key))
            err = _err(g[f"{metric}_std"]) if f"{metric}_std" in g else None
            ax.errorbar(g["gflops"], g[metric], yerr=err, fmt=marker.get(k.get("cut"), "o"), ms=6, alpha=0.8,
                        capsize=2, color=color.get(k.get("clock"), "C0"), zorder=3)
        on_front = _front_line(ax, d["gflops"].to_numpy(), d[metric].to_numpy(), hib)
        for (_, r), front, base in zip(d.iterrows(), on_front, is_sweep_baseline(d)):
            if front and not base:
                ax.annotate(_short(r), (r["gflops"], r[metric]), textcoords="offset points", xytext=(5, -11 if hib else 5),
                            fontsize=7, color="tab:red", zorder=8,
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.5))
        if recommended is not None:
            r = d[d["trial_id"].astype(str) == str(recommended)]
            if len(r):
                ax.scatter(r["gflops"], r[metric], **REC_STYLE)
        if baseline is not None and not is_missing(baseline.get(metric)):
            ax.scatter([baseline["gflops"]], [baseline[metric]], **BASELINE_STYLE)
            ax.axhline(baseline[metric], color="black", lw=0.8, ls=":", zorder=1)
        ax.set(xlabel="GFLOPs per image (incl. CFG)", ylabel=ylabel,
               title=f"{'FID' if metric == 'fid' else 'CLIP score'} vs GFLOPs")
    # one legend for both panels, below them (it covers no point)
    handles = [Line2D([], [], color="tab:red", ls="--", label="Pareto front (labels: c = clock, w = width, k = cut)")]
    if recommended is not None and (done["trial_id"].astype(str) == str(recommended)).any():
        r = done[done["trial_id"].astype(str) == str(recommended)].iloc[0]
        handles.append(Line2D([], [], ls="", marker="*", markersize=13, color="gold", markeredgecolor="black",
                              label=f"recommended: {_short(r)}"))
    if baseline is not None:
        steps = f", {int(baseline['steps'])} steps" if not is_missing(baseline.get("steps")) else ""
        handles.append(Line2D([], [], ls=":", marker="*", markersize=13, color="black",
                              label=f"baseline (full UNet{steps})"))
    handles += [Line2D([], [], ls="", marker="o", color=color[c], label=f"clock {int(c)}") for c in clocks]
    handles += [Line2D([], [], ls="", marker=marker[c], color="gray", label=f"cut {int(c)}") for c in cuts]
    if "fid_std" in done:
        handles.append(Line2D([], [], color="gray", marker="|", ls="", markersize=10, label="± FID bootstrap std"))
    about = info.about() if info is not None else ""
    title = f"Sweep '{name}'" + (f": {about}" if about else "")
    if other:
        title += f"\na separate run from {other}: compare its points with each other and its own baseline only"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    if rec_rule:
        fig.text(0.5, -0.03, f"recommended: {rec_rule}", fontsize=8, ha="center")
    return fig
