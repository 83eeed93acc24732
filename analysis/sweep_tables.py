"""The sweep's tables from its trials (:mod:`analysis.sweep_loader`): the recommended trial, the Pareto-front and
all-trials tables, the sweep's own baseline, and the results.csv vs MLflow cross-check.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.formatting import Table, fmt, kid_scaled, params, pm, sig
from analysis.fronts import pareto_mask
from analysis.loader import is_missing
from analysis.sweep_loader import align_sweep_names, completed, is_sweep_baseline


RECOMMEND_REL_TOL = 0.05  # within 5% of the baseline's FID


def recommend(trials: pd.DataFrame, baseline_fid: float | None, sweep_rule: str | None = None) -> tuple[str | None, str]:
    """The recommended trial: the one the sweep recorded (``recommended`` column, ``summary.json``, the MLflow
    parent's ``sweep.recommended_trial`` tag), else the operating point rule of clockwork/pareto.py with a 5%
    relative tolerance: the cheapest completed trial whose FID is within 5% of the baseline's (of the best
    trial's without a baseline). A sweep that scored its trials against fewer steps (a ``beats_fewer_steps``
    column) and recommended none means none. ``sweep_rule`` (:meth:`analysis.sweep_loader.SweepInfo.rule`) names the rule the
    sweep applied, for a recorded recommendation."""
    recorded = "recorded by the sweep" + (f": {sweep_rule}" if sweep_rule else "")
    if "recommended" in trials and trials["recommended"].fillna(False).astype(bool).any():
        return str(trials[trials["recommended"].fillna(False).astype(bool)]["trial_id"].iloc[0]), recorded
    if "recommended_trial_id" in trials and trials["recommended_trial_id"].notna().any():
        rec = trials["recommended_trial_id"].dropna().astype(str)
        rec = rec[rec != ""]
        if len(rec):
            return rec.iloc[0], recorded
    if "beats_fewer_steps" in trials:  # the sweep scored every trial against fewer steps: its "none" stands
        return None, "no trial beats taking fewer steps, " + recorded
    done = completed(trials)
    done = done[~is_sweep_baseline(done)]
    if done.empty:
        return None, "no completed trial"
    has_base = baseline_fid is not None and not is_missing(baseline_fid)
    ref = baseline_fid if has_base else done["fid"].min()
    what = "the baseline's" if has_base else "the best trial's"
    ok = done[done["fid"] <= ref * (1 + RECOMMEND_REL_TOL)]
    if ok.empty:
        return str(done.sort_values("fid")["trial_id"].iloc[0]), f"lowest FID (no trial within 5% of {what} FID)"
    best = ok.sort_values(["gflops", "fid"]).iloc[0]
    return str(best["trial_id"]), f"cheapest trial with FID within 5% of {what} ({ref:.2f}); computed here"


def _cfg(v) -> str:
    if is_missing(v):
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def trial_label(r) -> str:
    """A trial's readable name: the sweep's run name (``c3-resnet-w64-k1-s8``), else its trial id."""
    name = r.get("run_name") if hasattr(r, "get") else None
    return str(r["trial_id"]) if is_missing(name) or name in (None, "") else str(name)


def _front_flags(done: pd.DataFrame) -> pd.DataFrame:
    """``front_fid`` / ``front_clip``: on the FID-GFLOPs / CLIP-GFLOPs Pareto front of the completed trials."""
    return done.assign(front_fid=pareto_mask(done["gflops"], done["fid"]),
                       front_clip=pareto_mask(done["gflops"], done["clip"], higher_is_better=True)
                       if "clip" in done else False)


def _front_name(a: bool, b: bool) -> str:
    return "FID+CLIP" if a and b else ("FID" if a else ("CLIP" if b else ""))


def _sweep_caption(name: str, what: str, info=None) -> str:
    about = info.about() if info is not None else ""
    return f"Sweep '{name}'" + (f" ({about})" if about else "") + f": {what}"


def _sweep_notes(baseline: pd.Series | None, rec: str | None, rule: str, trials: pd.DataFrame, info=None,
                 other: str | None = None) -> str:
    notes = []
    if baseline is not None:
        notes.append(f"Baseline: the full UNet at {int(baseline['steps'])} steps, FID {pm(baseline['fid'], baseline.get('fid_std'))}"
                     + (f", CLIP {fmt(baseline['clip'], 4)}" if not is_missing(baseline.get("clip")) else "")
                     + f", {sig(baseline['gflops'])} GFLOPs per image.")
    if rec is not None:
        r = trials[trials["trial_id"].astype(str) == str(rec)]
        notes.append(f"★ recommended: {trial_label(r.iloc[0]) if len(r) else rec} ({rule}).")
    if info is not None and info.caution():
        notes.append(info.caution())
    if info is not None and info.n_samples:
        notes.append(f"FID on {info.n_samples} images per trial: comparable within this sweep only"
                     + (f", not with {other}" if other else "") + ".")
    return " ".join(notes)


def _config_cols(d: pd.DataFrame) -> list[str]:
    """Configuration columns that vary across the sweep's own trials (the baseline aside)."""
    t = d[~is_sweep_baseline(d)]
    return [c for c in ("clock", "width", "cut", "adaptor", "steps") if c in d and t[c].nunique(dropna=True) > 1]


def _constant_config(d: pd.DataFrame) -> str:
    t = d[~is_sweep_baseline(d)]
    same = [(c, t[c].dropna().iloc[0]) for c in ("adaptor", "steps", "width", "cut", "clock")
            if c in d and t[c].nunique(dropna=True) == 1]
    return ", ".join(f"{c} {_cfg(v)}" for c, v in same)


def _vs_fewer(df: pd.DataFrame) -> dict[str, list[str]]:
    """ΔFID@FLOPs against the sweep's plain-steps front (results.csv ``dfid_at_flops`` ± std) and whether the trial
    beats fewer steps; nothing for sweeps recorded before trials were scored so (or a baseline: it is the front)."""
    if "dfid_at_flops" not in df or not pd.to_numeric(df["dfid_at_flops"], errors="coerce").notna().any():
        return {}
    base = is_sweep_baseline(df).to_numpy()
    std = df["dfid_at_flops_std"] if "dfid_at_flops_std" in df else pd.Series([None] * len(df), index=df.index)
    beats = df["beats_fewer_steps"] if "beats_fewer_steps" in df else pd.Series([None] * len(df), index=df.index)
    return {"ΔFID@FLOPs ↑": ["-" if b or is_missing(v) else f"{float(v):+.2f} ± {float(e or 0):.2f}"
                            for v, e, b in zip(df["dfid_at_flops"], std, base)],
            "beats fewer steps": ["-" if b else ("yes" if str(v).lower() == "true" else "no") for v, b in zip(beats, base)]}


def sweep_front_table(trials: pd.DataFrame, name: str, rec: str | None, baseline: pd.Series | None,
                      info=None, rule: str = "", other: str | None = None) -> Table:
    """The trials on the FID-GFLOPs or CLIP-GFLOPs Pareto front, cheapest first. ``info``: the sweep's
    :class:`analysis.sweep_loader.SweepInfo` (how it ran, for the caption); ``other``: what its FIDs are not comparable with."""
    done = _front_flags(completed(trials))
    front = done[done["front_fid"] | done["front_clip"]].sort_values("gflops")
    cfg_cols = [c for c in ("clock", "cut", "width", "adaptor", "steps") if c in front]
    df = pd.DataFrame({"trial": [trial_label(r) for _, r in front.iterrows()],
                       **{c: [_cfg(v) for v in front[c]] for c in cfg_cols},
                       "FID ↓": [pm(a, b) for a, b in zip(front["fid"], front.get("fid_std", [None] * len(front)))],
                       "CLIP ↑": [fmt(v, 4) for v in front.get("clip", [None] * len(front))],
                       "GFLOPs/image": [sig(g) for g in front["gflops"]],
                       "FLOPs vs baseline": [f"{g / baseline['gflops']:.3f}×" if baseline is not None else "-"
                                             for g in front["gflops"]],
                       **_vs_fewer(front),
                       "front": [_front_name(a, b) for a, b in zip(front["front_fid"], front["front_clip"])],
                       "baseline": np.where(is_sweep_baseline(front), "yes", ""),
                       "recommended": ["★" if str(t) == str(rec) else "" for t in front["trial_id"]]})
    return Table(df, caption=_sweep_caption(name, "trials on the FID-GFLOPs or CLIP-GFLOPs Pareto front "
                                                  f"({len(done)} completed of {len(trials)}).", info),
                 notes=_sweep_notes(baseline, rec, rule, trials, info, other),
                 source=info.source if info is not None else f"sweeps/{name}/results.csv or its MLflow runs",
                 label=f"tab:sweep-{name}")


def sweep_trials_table(trials: pd.DataFrame, name: str, rec: str | None, baseline: pd.Series | None,
                       info=None, rule: str = "", other: str | None = None) -> Table:
    """Every trial of the sweep (its baseline first, then by GFLOPs) with its Pareto fronts and the recommendation."""
    done = _front_flags(completed(trials))
    t = trials.merge(done[["trial_id", "front_fid", "front_clip"]], on="trial_id", how="left")
    t = t.assign(front_fid=t["front_fid"].fillna(False).astype(bool), front_clip=t["front_clip"].fillna(False).astype(bool),
                 _base=is_sweep_baseline(t).to_numpy())
    t = t.sort_values(["_base", "gflops", "trial_id"], ascending=[False, True, True], na_position="last")
    cols = _config_cols(t)
    base_g = baseline["gflops"] if baseline is not None else math.nan
    get = lambda c: t[c] if c in t else pd.Series([math.nan] * len(t), index=t.index)  # noqa: E731
    df = pd.DataFrame({"trial": [trial_label(r) for _, r in t.iterrows()],
                       **{c: [_cfg(v) for v in t[c]] for c in cols},
                       "FID ↓": [pm(a, b) for a, b in zip(t["fid"], get("fid_std"))],
                       "KID×10³ ↓": [fmt(kid_scaled(v)) for v in get("kid")],
                       "CLIP ↑": [fmt(v, 4) for v in get("clip")],
                       "GFLOPs/image": [sig(g) for g in t["gflops"]],
                       "FLOPs vs baseline": [f"{g / base_g:.3f}×" if not is_missing(g) and not is_missing(base_g) else "-"
                                             for g in t["gflops"]],
                       **_vs_fewer(t),
                       "latency (ms)": [sig(v) for v in get("latency_ms")],
                       "adaptor params": [params(v) if not b else "-" for v, b in zip(get("adaptor_params"), t["_base"])],
                       "status": [str(v) if not is_missing(v) else "-" for v in get("status")],
                       "Pareto front": [_front_name(a, b) for a, b in zip(t["front_fid"], t["front_clip"])],
                       "recommended": ["★" if str(x) == str(rec) else "" for x in t["trial_id"]]})
    const = _constant_config(t)
    what = f"all {len(t)} trials, the baseline (clock 1) first, then by GFLOPs" + (f"; every trial: {const}" if const else "")
    notes = _sweep_notes(baseline, rec, rule, trials, info, other)
    notes += (" " if notes else "") + ("Pareto front: FID vs GFLOPs and/or CLIP vs GFLOPs over the completed trials "
                                       "incl. the baseline; latency: the UNet loop on the machine that ran the trial.")
    return Table(df, caption=_sweep_caption(name, what + ".", info), notes=notes,
                 source=info.source if info is not None else f"sweeps/{name}/results.csv or its MLflow runs",
                 label=f"tab:sweep-{name}-trials")


def mlflow_crosscheck(csvs: dict[str, pd.DataFrame], ml: pd.DataFrame | None) -> Table | None:
    """Does the MLflow window show the same trials and numbers as the sweeps' results.csv?"""
    if ml is None or not len(ml):
        return None
    ml = align_sweep_names(csvs, ml)
    names = sorted(set(csvs) | set(ml["sweep"].dropna().astype(str)))
    rows = []
    for name in names:
        c = csvs.get(name)
        m = ml[ml["sweep"].astype(str) == name]
        both = (c.merge(m, on="trial_id", suffixes=("_csv", "_mlflow")) if c is not None and len(m) else pd.DataFrame())
        diffs = {k: (both[f"{k}_csv"] - both[f"{k}_mlflow"]).abs().max() if f"{k}_csv" in both and f"{k}_mlflow" in both
                 else math.nan for k in ("fid", "gflops")}
        rec_csv = recommend(c, None)[0] if c is not None and ("recommended" in c or "recommended_trial_id" in c) else None
        rec_ml = recommend(m, None)[0] if len(m) else None
        rows.append({"sweep": name, "trials in results.csv": "-" if c is None else str(len(c)),
                     "child runs in MLflow": str(len(m)), "matched by trial_id": str(len(both)),
                     "max |ΔFID|": sig(diffs["fid"]) if not is_missing(diffs["fid"]) else "-",
                     "max |ΔGFLOPs|": sig(diffs["gflops"]) if not is_missing(diffs["gflops"]) else "-",
                     "recommended (CSV / MLflow)": f"{rec_csv or '-'} / {rec_ml or '-'}"})
    return Table(pd.DataFrame(rows), caption="Sweep results.csv vs its MLflow runs (the DAG reads the CSV; "
                 "MLflow is the window).", source="sweeps/*/results.csv, MLflow search_runs", label="tab:mlflow")


def sweep_baseline(ev: pd.DataFrame, trials: pd.DataFrame) -> pd.Series | None:
    """The sweep's own baseline trial at its most common step count (the largest of equally common ones: a space
    of {6, 8} steps compares with the 8-step baseline), else evaluate.json's baseline there."""
    done = completed(trials)
    own, rest = done[is_sweep_baseline(done)], done[~is_sweep_baseline(done)]
    steps = rest["steps"].mode().max() if "steps" in rest and rest["steps"].notna().any() else None
    if len(own):
        at = own[own["steps"] == steps] if steps is not None and "steps" in own else own
        return (at if len(at) else own).iloc[0]
    b = ev[ev["kind"] == "baseline"]
    if steps is not None:
        at = b[b["steps"] == steps]
        b = at if len(at) else b[b["method"] == "baseline"]
    return b.iloc[0] if len(b) else None
