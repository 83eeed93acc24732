"""The front plots of a sweep (``pareto_<front>.png``): the Clockwork trials' front beside the plain-steps front
(the baseline at each step count), the alternative every trial is scored against. The trials are drawn per adaptor
kind (the trial's own ``adaptor`` value; training-free kinds hollow, distilled ones filled), each kind with its own
front when there are several, so a training-free adaptor's points stand apart from the distilled ones'."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from clockwork.pareto import pareto_front, plain_steps_front
from pipeline.tracking import is_finite
from pipeline.tune.answer import adaptor_kind, as_row, kind_label
from pipeline.tune.space import training_free
from pipeline.tune.records import FRONTS, Record

MARKERS = "osD^vP<>Xph"  # one per adaptor kind, in the order the kinds are met
COLOURS = ["#7f7f7f", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]  # not the fronts' or ring's
AXIS = {"gflops": "GFLOPs per image (incl. CFG)", "fid": "FID (lower is better)",
        "clip": "CLIP score (higher is better)", "latency_ms": "latency of the UNet loop (ms)"}


def _line(ax, rows: list[dict], x: str, y: str, **style) -> None:
    ax.plot([float(r[x]) for r in rows], [float(r[y]) for r in rows], **style)


def plot_fronts(sweep_dir: Path, records: list[Record], summary: dict) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; the front plots are made by --import-results", file=sys.stderr)
        return []
    done = [r for r in records if r.done]
    paths = []
    for name, (x, _, y, y_mode) in FRONTS.items():
        pts = [(r, float(r.metrics[x]), float(r.metrics[y])) for r in done
               if is_finite(r.metrics.get(x)) and is_finite(r.metrics.get(y))]
        fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
        if pts:
            err = [r.metrics.get(f"{y}_std") for r, _, _ in pts]
            if all(is_finite(e) for e in err):  # the metric's own uncertainty (FID: bootstrap std)
                ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=err, fmt="none", ecolor="#d0d0d0",
                            elinewidth=1, zorder=1, label=f"± {y}_std")
            trials = [as_row(r) for r, _, _ in pts if not r.baseline]
            kinds: dict[str, list[dict]] = {}
            for (r, _, _) in pts:
                if not r.baseline:
                    kinds.setdefault(adaptor_kind(r), []).append(as_row(r))
            for i, (kind, rows) in enumerate(kinds.items()):
                colour, free = COLOURS[i % len(COLOURS)], training_free(kind)
                ax.scatter([float(t[x]) for t in rows], [float(t[y]) for t in rows], s=30, marker=MARKERS[i % len(MARKERS)],
                           facecolors="none" if free else colour, edgecolors=colour, linewidths=1.2,
                           label=f"{kind_label(kind)} trials", zorder=2)
                if len(kinds) > 1 and len(rows) > 1:  # each kind's own front, thin
                    own = [rows[j] for j in pareto_front(rows, x, y, "min", y_mode)]
                    _line(ax, own, x, y, ls=":", c=colour, lw=1, zorder=2)
            ours = [trials[i] for i in pareto_front(trials, x, y, "min", y_mode)]
            _line(ax, ours, x, y, ls="-", marker="o", c="#d62728", ms=6, lw=1.5, label="Clockwork front", zorder=3)
            plain = plain_steps_front([as_row(r) for r, _, _ in pts if r.baseline], y, x, y_mode,
                                      drop_dominated=y == "fid")
            _line(ax, plain, x, y, ls="--", marker="*", c="#1f77b4", ms=12, lw=1.5,
                  label="plain UNet, fewer steps (the front to beat)", zorder=4)
            named = {t["trial_id"] for t in ours}
            for r, px, py in pts:
                if r.baseline:
                    ax.annotate(f"{r.column('steps')} steps", (px, py), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color="#1f77b4")
                elif r.trial_id in named or r.recommended:
                    ax.annotate(r.run_name, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if r.recommended:
                    ax.scatter([px], [py], s=260, facecolors="none", edgecolors="#2ca02c", linewidths=2,
                               label="recommended (best ΔFID@FLOPs)", zorder=5)
        ax.set_xlabel(AXIS[x])
        ax.set_ylabel(AXIS[y])
        split = summary.get("split")
        ax.set_title(f"{sweep_dir.name}: {y} vs {x} ({len(pts)} points"
                     + (f", {'validation split' if split == 'val' else f'{split} prompts'}" if split else "") + ")",
                     fontsize=10)
        if name == "fid_gflops" and summary.get("fewer_steps"):
            fig.text(0.01, 0.01, textwrap.fill(summary["fewer_steps"]["answer"], 130), fontsize=7)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        p = sweep_dir / f"pareto_{name}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths
