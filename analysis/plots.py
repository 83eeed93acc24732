"""The paper's figures from loaded results: labelled axes with units, a legend, the baseline marked,
error bars wherever a std exists."""

from __future__ import annotations

import re

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.formatting import flops_unit
from analysis.fronts import VS_MARGIN, VS_SIGMAS, pareto_mask, verdict_kind
from analysis.loader import SPLIT_LABELS, clock_label, is_missing, pareto, vs_fewer
from analysis.sensitivity_tables import SENS_MODES, _cut_words, sens_variant, sensitivity_about
from analysis.sweep_loader import completed, is_sweep_baseline

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


FRONT_STYLE = dict(color="black", marker="o", ms=6, lw=1.6, ls="-", zorder=4)
SOURCE_NAMES = {"evaluate": "evaluate.json", "ablate": "ablate.json"}


def _plain_front(g: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The baseline rows of ``g`` (one panel, one source) on the plain-steps front of ``metric``, cheapest first
    (clockwork.pareto.plain_steps_front)."""
    recs = [{"i": i, "gflops": r["gflops"], metric: r[metric]} for i, r in g.iterrows()
            if not (is_missing(r[metric]) or is_missing(r["gflops"]))]
    if not recs:
        return g.iloc[:0]
    mode = "max" if metric == "clip" else "min"  # CLIP: the plain curve of every step count, as the stages compare
    return g.loc[[r["i"] for r in pareto().plain_steps_front(recs, metric, quality_mode=mode,
                                                             drop_dominated=metric != "clip")]]


def fid_vs_flops(pts: pd.DataFrame, main_steps: dict[str, int]):
    """Fig. 4: FID (and CLIP, where measured) vs FLOPs per image. Per panel (teacher, split, image count: FIDs on
    different prompts or numbers of images are not comparable): the plain-steps front of the baseline (a line through
    the step counts nobody cheaper matches, labelled by step count, from one results file), the baseline's other step
    counts (hollow; a file's `front` rows make its front where it has them), and each Clockwork variant with error
    bars, labelled with its steps and (FID) its ΔFID@FLOPs where the file has it. Each front line has the SVG id ``plain-steps-front-<metric>-<panel #>``."""
    key = "panel" if "panel" in pts else "teacher"
    panels = list(pts[key].unique())
    metrics = [("fid", "FID (lower is better)")]
    if "clip" in pts and pts["clip"].notna().any():
        metrics.append(("clip", "CLIP score (higher is better)"))
    names = [n for n in pts["series"].unique() if n != "baseline"]
    colors = {n: f"C{i}" if len(names) <= 10 else plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(5.8 * len(panels), 4.4 * len(metrics)), squeeze=False)
    for j, panel in enumerate(panels):
        g = pts[pts[key] == panel]
        teacher = g["teacher"].iloc[0]
        src = g["front_source"].iloc[0] if "front_source" in g and g["front_source"].iloc[0] else g["source"].iloc[0]
        scale, unit = flops_unit(g["gflops"])  # per panel: teachers differ by orders of magnitude
        for m, (metric, ylabel) in enumerate(metrics):
            ax = axes[m][j]
            d = g[g[metric].notna()]
            plain = d[(d["kind"] == "baseline") & (d["source"] == src)]
            in_front = plain[plain["ablation"] == "front"] if "ablation" in plain and (plain["ablation"] == "front").any() \
                else plain  # ablate.json's own front rows where it has them (what its vs_fewer_steps used)
            front = _plain_front(in_front, metric)
            if len(front):
                (line,) = ax.plot(front["gflops"] / scale, front[metric], label="plain-steps front (full UNet; labels: "
                                  "steps)", **FRONT_STYLE)
                line.set_gid(f"plain-steps-front-{metric}-{j}")
                err = _err(front.get(f"{metric}_std"))
                if err is not None:
                    ax.errorbar(front["gflops"] / scale, front[metric], yerr=err, fmt="none", ecolor="black", capsize=3,
                                zorder=4)
            off = plain.drop(index=front.index)
            others = d[(d["kind"] == "baseline") & (d["source"] != src)]
            if len(off):
                ax.errorbar(off["gflops"] / scale, off[metric], yerr=_err(off.get(f"{metric}_std")), fmt="o", mfc="white",
                            color="gray", capsize=3, zorder=3, label="plain steps, off the front")
            if len(others):
                ax.errorbar(others["gflops"] / scale, others[metric], yerr=_err(others.get(f"{metric}_std")), fmt="x",
                            color="gray", capsize=3, zorder=3, label=f"plain steps ({SOURCE_NAMES.get(others['source'].iloc[0])})")
            for _, r in pd.concat([plain, others]).iterrows():
                ax.annotate(f"{int(r['steps'])}", (r["gflops"] / scale, r[metric]), textcoords="offset points",
                            xytext=(-4, 6), ha="right", fontsize=7, color="black")
            for (series, source), s in d[d["kind"] != "baseline"].groupby(["series", "source"], sort=False):
                s = s.sort_values(["steps", "gflops"])  # a Clockwork front: one step count, its budgets by cost
                color = colors[series]
                label = series if source == src else f"{series} ({SOURCE_NAMES.get(source, source)})"
                ax.errorbar(s["gflops"] / scale, s[metric], yerr=_err(s.get(f"{metric}_std")), marker="o" if source == src
                            else "s", capsize=3, color=color, label=label, zorder=5, ls="-" if len(s) > 1 else "none")
                for _, r in s.iterrows():
                    v = vs_fewer(r, metric)
                    txt = f"{int(r['steps'])}" if is_missing(r.get("front")) else \
                        "{" + ",".join(map(str, r["clock"])) + "}"  # a front point: its adaptor steps
                    if metric == "fid" and v is not None and v.get("delta") is not None:
                        txt += f": Δ{v['delta']:+.1f}"
                    ax.annotate(txt, (r["gflops"] / scale, r[metric]), textcoords="offset points", xytext=(5, -10),
                                fontsize=7, color=color)
            b = d[(d["kind"] == "baseline") & (d["steps"] == main_steps.get(teacher)) & (d["source"] == src)]
            if len(b):
                ax.scatter(b["gflops"] / scale, b[metric], label=f"baseline, {int(b['steps'].iloc[0])} steps",
                           **BASELINE_STYLE)
            if metric == "fid" and len(front):  # a far-off point (the identity adaptor) would flatten the front
                top = 2.5 * float(front[metric].max())
                far = d[d[metric] > top]
                if len(far):
                    ax.set_ylim(top=top)
                    ax.text(0.02, 0.97, "off scale: " + ", ".join(f"{r['series']} {r[metric]:.1f}" for _, r in far.iterrows()),
                            transform=ax.transAxes, fontsize=7, va="top", color="gray")
            split = g["split"].dropna().iloc[0] if "split" in g and g["split"].notna().any() else None
            n = g["images"].iloc[0] if "images" in g else "?"
            where = f"{SOURCE_NAMES.get(src, src)}: {SPLIT_LABELS.get(split, 'split not recorded') if split else 'split not recorded'}"
            where = where.replace(" (training-split prompts and images not distilled on)", "")
            ax.set(xlabel=f"{unit} per image (incl. CFG)", ylabel=ylabel,
                   title=f"{panel}\n{where}, {n} images" + ("\nΔ: ΔFID@FLOPs vs the front (> 0: better)"
                                                            if metric == "fid" else ""))
            ax.title.set_fontsize(9)
            ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


VERDICT_COLORS = {"beats": "tab:green", "ties": "tab:gray", "loses": "tab:red", "outside": "tab:orange", "n/a": "tab:gray"}


def levers(pts: pd.DataFrame, about: str = ""):
    """ΔFID@FLOPs of each lever against the plain-steps front of its ablation run, with 2σ error bars; the zero line
    (as good as taking fewer steps) and the +margin line (what "beats fewer steps" needs) marked. Levers outside the
    front or without an answer are named at zero."""
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(pts) + 1.8))
    y = np.arange(len(pts))[::-1]
    for yi, (_, r) in zip(y, pts.iterrows()):
        kind = verdict_kind(r["verdict"])
        color = VERDICT_COLORS[kind]
        if is_missing(r["delta"]):
            ax.annotate(r["verdict"], (0, yi), xytext=(6, -3), textcoords="offset points", fontsize=8, color=color)
            ax.plot([0], [yi], marker="x", color=color, zorder=4)
            continue
        err = None if is_missing(r["delta_std"]) else VS_SIGMAS * r["delta_std"]
        ax.errorbar([r["delta"]], [yi], xerr=None if err is None else [[err], [err]], fmt="o", color=color, capsize=4,
                    ms=7, zorder=4)
        ax.annotate(r["verdict"], (r["delta"], yi), xytext=(0, 7), textcoords="offset points", fontsize=7, color=color,
                    ha="center")
    ax.axvline(0, color="black", lw=1, zorder=2)
    ax.axvline(VS_MARGIN, color="tab:green", lw=1, ls="--", zorder=2, label=f"+{VS_MARGIN:.1f} FID: the margin to beat")
    ax.set_yticks(y)
    ax.set_yticklabels([str(v) for v in pts["variant"]])
    ax.set_ylim(-0.8, len(pts) - 0.2)
    ax.set(xlabel=f"ΔFID@FLOPs vs the plain-steps front (FID points, ± {VS_SIGMAS:g}σ; > 0: better than fewer steps)",
           title="Levers vs taking fewer steps" + (f"\n{about}" if about else ""))
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def sensitivity(meta: dict, rows: pd.DataFrame):
    """Fig. 2: one panel per mode; x = start step s, y = relative change of the final sample (log), ± std over images;
    one line per cut (colour) and noise strength α (line style)."""
    modes = list(dict.fromkeys(rows["mode"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.8 * len(modes), 3.9), squeeze=False, sharey=True)
    cuts = sorted({int(c) for c in rows["cut"]})
    styles = ["-", "--", ":", "-."]
    positive = bool((rows["rel_l2"] > 0).all())
    for ax, mode in zip(axes[0], modes):
        g = rows[rows["mode"] == mode]
        alphas = list(dict.fromkeys(None if is_missing(a) else float(a) for a in g["alpha"]))
        for ci, cut in enumerate(cuts):
            for ai, a in enumerate(alphas):
                s = g[(g["cut"] == cut) & (g["alpha"].isna() if a is None else g["alpha"] == a)].sort_values("start_step")
                if s.empty:
                    continue
                label = _cut_words(meta, cut) + ("" if a is None else f", α={a:g}")
                ax.errorbar(s["start_step"], s["rel_l2"], yerr=_err(s.get("rel_l2_std")), ls=styles[ai % len(styles)],
                            marker="o", ms=4, capsize=2, color=f"C{ci}", label=label)
        if positive:
            ax.set_yscale("log")
        ax.set_xticks(sorted({int(v) for v in g["start_step"]}))
        ax.set(xlabel="start step s (0-based sampler step)", title=SENS_MODES.get(mode, sens_variant(mode, None)))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("relative L2 change of the final sample")
    about = sensitivity_about(meta)
    fig.suptitle("Where can Clockwork pay? Sensitivity of the final sample to r_out below each cut"
                 + (f"\n{about}" if about else ""), fontsize=9)
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


def _clock_short(v) -> str:
    """``c3`` for a period, ``a2.3.4.5`` for a schedule of 0-based adaptor steps, as in the sweep's trial names."""
    st = [int(x) for x in re.findall(r"\d+", str(v))]
    return ("a" + ".".join(map(str, st))) if "[" in str(v) or isinstance(v, (list, tuple)) else f"c{int(float(v))}"


def _short(r) -> str:
    """``c3 w64 k1``: clock, adaptor width, cut, as in the sweep's trial names (``c3-resnet-w64-k1-s8``)."""
    parts = [_clock_short(r["clock"])] if "clock" in r and not is_missing(r["clock"]) else []
    parts += [f"{p}{int(r[c])}" for p, c in (("w", "width"), ("k", "cut")) if c in r and not is_missing(r[c])]
    return " ".join(parts) or str(r["trial_id"])


def sweep_fronts(trials: pd.DataFrame, name: str, recommended: str | None, baseline: pd.Series | None,
                 rec_rule: str = "", info=None, other: str | None = None):
    """The sweep's Pareto fronts: FID vs GFLOPs and CLIP vs GFLOPs; colour = clock period, marker = cut, the
    Clockwork trials' front (points labelled) beside the plain-steps front of the sweep's baseline trials (blue,
    labelled with their steps: what taking fewer steps gives), recommended trial (gold star) and baseline (black
    star, dotted line) marked. ``info``: the
    sweep's :class:`analysis.sweep_loader.SweepInfo` (how it ran: in the title); ``other``: the results its FIDs are not
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
        on_front = _front_line(ax, t["gflops"].to_numpy(), t[metric].to_numpy(), hib) if len(t) else []
        for (_, r), front in zip(t.iterrows(), on_front):
            if front:
                ax.annotate(_short(r), (r["gflops"], r[metric]), textcoords="offset points", xytext=(5, -11 if hib else 5),
                            fontsize=7, color="tab:red", zorder=8,
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.5))
        plain = _plain_front(d[is_sweep_baseline(d)], metric) if "steps" in d else d.iloc[:0]
        if len(plain) > 1:  # the sweep's baseline at several step counts: what taking fewer steps gives
            (line,) = ax.plot(plain["gflops"], plain[metric], color="tab:blue", marker="s", ms=5, lw=1.4, zorder=4)
            line.set_gid(f"plain-steps-front-{metric}")
            for _, r in plain.iterrows():
                ax.annotate(f"{int(r['steps'])}", (r["gflops"], r[metric]), textcoords="offset points",
                            xytext=(-4, -12 if not hib else 6), fontsize=7, color="tab:blue", zorder=8)
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
    handles = [Line2D([], [], color="tab:red", ls="--", label="Clockwork front (labels: c = clock, w = width, k = cut)")]
    if is_sweep_baseline(done).sum() > 1 and "steps" in done:
        handles.append(Line2D([], [], color="tab:blue", marker="s", ms=5,
                              label="plain-steps front (full UNet; labels: steps)"))
    if recommended is not None and (done["trial_id"].astype(str) == str(recommended)).any():
        r = done[done["trial_id"].astype(str) == str(recommended)].iloc[0]
        handles.append(Line2D([], [], ls="", marker="*", markersize=13, color="gold", markeredgecolor="black",
                              label=f"recommended: {_short(r)}"))
    if baseline is not None:
        steps = f", {int(baseline['steps'])} steps" if not is_missing(baseline.get("steps")) else ""
        handles.append(Line2D([], [], ls=":", marker="*", markersize=13, color="black",
                              label=f"baseline (full UNet{steps})"))
    handles += [Line2D([], [], ls="", marker="o", color=color[c], label=clock_label(c, None)) for c in clocks]
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
