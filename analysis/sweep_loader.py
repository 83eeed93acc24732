"""The sweeps' results read into DataFrames: each sweep's ``results.csv`` (+ ``summary.json``, ``sweep.json``) and the
MLflow runs of its trials (``mlflow.search_runs``), with :class:`SweepInfo` saying how a sweep ran; only reads.
Split from :mod:`analysis.loader`, whose normalisers and :class:`~analysis.loader.ResultsError` it uses.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.loader import ResultsError, _bool, _read_json, is_missing, norm_adaptor


SWEEP_REQUIRED = ("trial_id", "fid", "gflops")


def load_sweep_csv(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_csv(path)
    missing = [c for c in SWEEP_REQUIRED if c not in df]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing} (docs/CONTRACTS.md)")
    for c in ("pareto_fid_gflops", "pareto_clip_gflops", "pareto_fid_latency", "recommended"):
        if c in df:
            df[c] = df[c].map(_bool)
    if "operating_point" in df and "recommended" not in df:
        df["recommended"] = df["operating_point"].map(_bool)
    df["sweep"] = path.parent.name
    df["trial_id"] = df["trial_id"].astype(str)
    if "recommended" not in df or not df["recommended"].any():
        summary = path.parent / "summary.json"  # pipeline/sweep.py: {"recommended": {"trial_id": ...}, ...}
        rec = _read_json(summary).get("recommended") if summary.is_file() else None
        if isinstance(rec, dict) and rec.get("trial_id") is not None:
            df["recommended_trial_id"] = str(rec["trial_id"])
    return df


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished with numbers (fid and gflops present, status not a failure)."""
    ok = df["fid"].notna() & df["gflops"].notna()
    if "status" in df:
        ok &= ~df["status"].astype(str).str.lower().isin(
            {"failed", "error", "errored", "crashed", "killed", "pruned", "not_run", "early_stopped"})
    return df[ok].copy()


def is_sweep_baseline(df: pd.DataFrame) -> pd.Series:
    """The sweep's own baseline trials (pipeline/sweep.py: ``baseline`` column, clock 1, adaptor none)."""
    if "baseline" in df:
        return df["baseline"].fillna(False).astype(bool)
    if "adaptor" in df:
        return df["adaptor"].map(norm_adaptor).isna()
    return pd.Series(False, index=df.index)


def mlflow_runs(uri: str) -> pd.DataFrame:
    """All runs of all experiments at ``uri`` as one DataFrame (``mlflow.search_runs``), with experiment names."""
    import mlflow  # slow to import; only when there is a store to read

    client_uri = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="pandas")
        names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    finally:
        mlflow.set_tracking_uri(client_uri)
    if len(runs):
        runs["experiment_name"] = runs["experiment_id"].map(names)
    return runs


def _is_sweep_parent(run: pd.Series) -> bool:
    """A sweep's parent run (pipeline/sweep.py tags it ``sweep.role=parent``; also: a ``*sweep*``
    experiment, or a ``stage=sweep`` / ``sweep`` tag)."""
    return (str(run.get("tags.sweep.role")) == "parent" or "sweep" in str(run.get("experiment_name") or "").lower()
            or str(run.get("tags.stage")) == "sweep" or not is_missing(run.get("tags.sweep")))


# MLflow names (pipeline/sweep.py: params.yaml's dotted names, ``sweep.*`` / ``pareto.*`` tags) -> results.csv columns
MLFLOW_ALIASES = {
    "trial_id": ("tags.sweep.trial_id", "tags.trial_id", "params.trial_id", "tags.mlflow.runName"),
    "clock": ("params.clock.period", "params.clockwork.clock", "params.clock", "params.clock.adaptor_steps"),
    "width": ("params.adaptor.width", "params.width"),
    "cut": ("params.cut",),
    "steps": ("params.sampling.steps", "params.steps"),
    "adaptor": ("params.adaptor.kind", "params.adaptor"),
    "status": ("tags.sweep.status", "params.status", "status"),
    "baseline": ("tags.sweep.baseline",),
    "recommended": ("tags.sweep.recommended",),
    "pareto_fid_gflops": ("tags.pareto.fid_gflops",),
    "pareto_clip_gflops": ("tags.pareto.clip_gflops",),
    "pareto_fid_latency": ("tags.pareto.fid_latency",),
    "beats_fewer_steps": ("tags.fewer_steps.beats",),  # sweeps that score every trial against fewer steps
}

def sweep_trials_from_mlflow(runs: pd.DataFrame) -> pd.DataFrame:
    """Nested child runs of sweep parents -> one row per trial, columns named as in results.csv.

    ``metrics.fid`` -> ``fid``, ``params.adaptor.width`` -> ``adaptor.width`` (and ``width``); the sweep
    name is the parent's ``sweep`` tag or param, else its run name; ``trial_id`` is the child's
    ``trial_id`` tag/param, else its run name. Children of other stages' runs (ablation rows) are ignored."""
    if runs.empty or "tags.mlflow.parentRunId" not in runs:
        return pd.DataFrame()
    parents = runs.set_index("run_id")
    sweep_parents = {rid for rid, r in parents.iterrows() if _is_sweep_parent(r)}
    kids = runs[runs["tags.mlflow.parentRunId"].isin(sweep_parents)]
    rows = []
    for _, r in kids.iterrows():
        pid = r["tags.mlflow.parentRunId"]
        parent = parents.loc[pid]
        row: dict[str, Any] = {
            "run_id": r["run_id"], "parent_run_id": pid,
            "sweep": str(_first(parent, "tags.sweep.name", "tags.sweep", "params.sweep", "tags.mlflow.runName") or pid),
            "recommended_trial_id": _first(parent, "tags.sweep.recommended_trial", "tags.recommended_trial_id",
                                           "params.recommended_trial_id")}
        row.update({col[len("metrics."):]: v for col, v in r.items() if col.startswith("metrics.")})
        for name, keys in MLFLOW_ALIASES.items():
            row[name] = _first(r, *keys)
        row["trial_id"] = str(row["trial_id"] or r["run_id"])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in df.columns:  # params come back as strings
        if not pd.api.types.is_numeric_dtype(df[c]) and c not in {"trial_id", "sweep", "run_id", "parent_run_id",
                                                                   "status", "recommended_trial_id"}:
            conv = pd.to_numeric(df[c], errors="coerce")
            if conv.notna().sum() == df[c].notna().sum():
                df[c] = conv
    for c in ("pareto_fid_gflops", "pareto_clip_gflops", "pareto_fid_latency", "recommended", "baseline"):
        if c in df:
            df[c] = df[c].map(_bool)
    return df


def align_sweep_names(csvs: dict[str, pd.DataFrame], ml: pd.DataFrame) -> pd.DataFrame:
    """Name each MLflow sweep after the results.csv that shares most of its trial ids (the parent run's
    name need not be the sweep folder's)."""
    ml = ml.copy()
    for name, g in ml.groupby("sweep"):
        if name in csvs:
            continue
        ids = set(g["trial_id"].astype(str))
        best = max(csvs, key=lambda c: len(ids & set(csvs[c]["trial_id"])), default=None)
        if best is not None and len(ids & set(csvs[best]["trial_id"])) >= len(ids) / 2:
            ml.loc[g.index, "sweep"] = best
    return ml


def _first(row, *keys):
    for k in keys:
        if k in row and not is_missing(row[k]) and str(row[k]) != "":
            return row[k]
    return None


@dataclass
class SweepInfo:
    """What a sweep's folder says about how it ran (``sweep.json``, ``summary.json``, results.csv's ``node`` /
    ``gpu_ids`` / ``started``), for captions: a sweep is its own run, with its own budget per trial."""

    name: str
    source: str  # where its trials were read from
    state: dict = field(default_factory=dict)  # sweep.json ({} when absent)
    summary: dict = field(default_factory=dict)  # summary.json ({} when absent)
    trials: pd.DataFrame | None = None

    @property
    def overrides(self) -> dict:
        return (self.state.get("sweep") or {}).get("overrides") or {}

    @property
    def n_samples(self) -> int | None:
        n = self.overrides.get("n_samples")
        if n is None and self.trials is not None and "n_samples" in self.trials and self.trials["n_samples"].notna().any():
            n = self.trials["n_samples"].dropna().iloc[0]
        return None if n is None else int(n)

    def device(self) -> str | None:
        """``CPU`` when no trial got a GPU (results.csv ``gpu_ids`` empty), ``GPU`` when any did; with the nodes."""
        t = self.trials
        if t is None or "gpu_ids" not in t:
            return None
        gpus = t["gpu_ids"].map(lambda v: "" if is_missing(v) else str(v).strip())
        kind = "GPU" if (gpus != "").any() else "CPU"
        nodes = sorted({str(n) for n in t.get("node", pd.Series(dtype=object)).dropna()})
        return f"{kind} trials" + (f" on node {', '.join(nodes)}" if nodes else "")

    def date(self) -> str | None:
        if self.trials is None or "started" not in self.trials:
            return None
        t = pd.to_numeric(self.trials["started"], errors="coerce").dropna()
        if t.empty:
            return None
        return datetime.datetime.fromtimestamp(float(t.min()), datetime.timezone.utc).strftime("%Y-%m-%d")

    def about(self) -> str:
        """``CPU trials on node vm, the default params.yaml, 400 distillation steps and 100 evaluated images per
        trial, 2026-11-26, 28 min``; the parts that are recorded."""
        parts = [self.device()]
        config = self.state.get("config")
        if config:
            parts.append("the default params.yaml" if str(config) == "params.yaml" else f"params file {config}")
        budget = []
        if self.overrides.get("distill_steps") is not None:
            budget.append(f"{self.overrides['distill_steps']} distillation steps")
        if self.n_samples is not None:
            budget.append(f"{self.n_samples} evaluated images")
        if budget:
            parts.append(" and ".join(budget) + " per trial")
        split = self.summary.get("split")  # recorded since sweep.split; older sweeps scored the evaluation prompts
        if split:
            parts.append({"val": "scored and chosen on the validation split",
                          "heldout": "scored and chosen on the held-out evaluation prompts"}.get(split, f"scored on {split}"))
        parts.append(self.date())
        wall = self.summary.get("wall_s", self.state.get("wall_s"))
        if wall is not None:
            span = self._trial_span()  # a resumed sweep records the wall time of its last call only
            parts.append(f"{float(wall) / 60:.0f} min" if span is None or span <= 1.5 * float(wall) + 60
                         else f"resumed, {float(wall) / 60:.0f} min in its last call")
        return ", ".join(p for p in parts if p)

    def _trial_span(self) -> float | None:
        """Seconds from the first trial's start to the last one's end (results.csv ``started`` / ``finished``)."""
        t = self.trials
        if t is None or "started" not in t or "finished" not in t:
            return None
        a, b = pd.to_numeric(t["started"], errors="coerce").dropna(), pd.to_numeric(t["finished"], errors="coerce").dropna()
        return None if a.empty or b.empty else float(b.max() - a.min())

    def rule(self) -> str | None:
        """The sweep's own recommendation rule, as pipeline/sweep.py applied it: the best ΔFID@FLOPs that beats
        fewer steps (summary.json ``fewer_steps.rule``), or, in older sweeps, the ``fid_tolerance`` rule."""
        if isinstance(self.summary.get("fewer_steps"), dict) and self.summary["fewer_steps"].get("rule"):
            return str(self.summary["fewer_steps"]["rule"])
        tol = self.summary.get("fid_tolerance")
        if tol is None:
            return None
        within = f"{100 * float(tol):g}% of the baseline's FID" if self.summary.get("fid_tolerance_relative") \
            else f"+{float(tol):g} FID of the baseline's"
        return f"the largest FLOPs saving with FID within {within}"

    def caution(self) -> str | None:
        """Older sweeps' warning: the baseline's FID std exceeds the tolerance, so rankings are noise. (A sweep that
        scores trials against fewer steps carries the noise in each ΔFID@FLOPs' std instead.)"""
        if "fewer_steps" in self.summary:
            return None
        base, tol = self.summary.get("baseline") or {}, self.summary.get("fid_tolerance")
        std = base.get("fid_std")
        if tol is None or is_missing(std) or std is None or self.summary.get("fid_tolerance_relative"):
            return None
        if float(std) <= float(tol):
            return None
        return (f"The baseline FID's bootstrap std ({float(std):.2f}) exceeds the tolerance ({float(tol):g} FID): "
                "FID differences of a few points are within sampling noise.")
