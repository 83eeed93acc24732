"""One place that reads this project's results (DVC metrics files, sweep CSVs, MLflow) into DataFrames.

Everything here only reads. Where results live:
- ``CLOCKWORK_RESULTS``: the results root (default: the repository root), in either layout (:data:`LAYOUT`):
  the pipeline's (``metrics/evaluate.json``, ``metrics/ablate.json``, ``metrics/distill.json``,
  ``plots/distill_loss.csv``) or a flat folder of the same files (``reports/full/evaluate.json``, ...);
  ``sweeps/<name>/results.csv`` and ``params.yaml`` under the root in both;
- ``CLOCKWORK_SWEEPS``: the folder holding ``<name>/results.csv`` (+ ``summary.json``, ``sweep.json``) of each
  sweep (default: ``<results>/sweeps``; the committed ``reports/sweeps`` for the full configuration's report);
- ``CLOCKWORK_REPORTS``: where tables and figures are written (default: ``<repo>/reports``);
- MLflow: ``CLOCKWORK_MLFLOW_URI``, else ``MLFLOW_TRACKING_URI``, else ``<results>/mlflow.db`` if it exists;
  ``CLOCKWORK_MLFLOW_URI=none`` turns the MLflow view off;
- ``CLOCKWORK_SENSITIVITY``: a ``sensitivity.json`` of ``clockwork sensitivity`` (optional; Fig. 2 when given).
Files older than a key read as before: ``split`` and ``vs_fewer_steps`` (each method against the plain-steps front at
equal GFLOPs, clockwork.pareto.versus_fewer_steps) are ``None`` there, and tables show "n/a".
The formats are those of docs/CONTRACTS.md. ``metrics/evaluate.json`` is required and is validated
strictly (a malformed file raises :class:`ResultsError`); every other input is optional: when it is
missing the loader returns ``None`` and :meth:`Results.note` says what was skipped.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_MARKER = "SYNTHETIC"  # file in a results root (and "_synthetic" key in JSON) written by analysis.fixtures

ADAPTOR_INPUTS = ("r_in", "r_out_prev", "time", "text")  # clockwork.adaptors.INPUTS, in the paper's words
INPUT_LABELS = {"r_in": "r_in", "r_out_prev": "r_out(t+1)", "time": "time", "text": "text"}
NO_ADAPTOR = {"", "none", "null", "nan", "baseline", "-"}

EVALUATE_REQUIRED = ("fid", "gflops", "steps")
EVALUATE_NUMERIC = ("fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms",
                    "adaptor_params", "steps", "n_samples")
ABLATE_REQUIRED = ("ablation", "variant", "fid")
ABLATIONS = ("adaptor_type", "schedule", "cut", "inputs", "training", "sampler", "steps", "levers", "front")
SPLITS = ("heldout", "val")  # the held-out evaluation prompts | the validation split (training-split prompts not distilled on)
SPLIT_LABELS = {"heldout": "held-out evaluation prompts", "val": "validation split (training-split prompts and images not "
                "distilled on)"}
# vs_fewer_steps (clockwork.pareto.versus_fewer_steps): one answer per metric
VS_METRICS = ("fid", "clip")
VS_STATUSES = ("inside", "cheaper_than_front", "costlier_than_front", "no_metrics")
SWEEP_REQUIRED = ("trial_id", "fid", "gflops")


# Where each results file is looked for under a results root, first match wins: the pipeline's layout
# (metrics/ and plots/, the DVC outs), then a flat folder of the same files (reports/full/, a GPU run's copy).
LAYOUT = {
    "evaluate.json": ("metrics/evaluate.json", "evaluate.json"),
    "ablate.json": ("metrics/ablate.json", "ablate.json"),
    "distill.json": ("metrics/distill.json", "distill.json"),
    "distill_loss.csv": ("plots/distill_loss.csv", "distill_loss.csv"),
    "edit.json": ("metrics/edit.json", "edit.json"),
}
MLFLOW_OFF = {"none", "off", "0", "false"}


def pareto():
    """``clockwork/pareto.py`` (plain_steps_front, versus_fewer_steps, beats_fewer_steps): the very module the stages
    use, loaded from its file when the ``clockwork`` package is not imported yet, since importing the package loads
    torch and diffusers (seconds per notebook kernel) and pareto.py needs only numpy."""
    import importlib.util
    import sys

    if "clockwork.pareto" in sys.modules:
        return sys.modules["clockwork.pareto"]
    name = "analysis._clockwork_pareto"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "clockwork" / "pareto.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def results_file(root: str | os.PathLike, name: str) -> Path:
    """``root``'s copy of results file ``name`` (a :data:`LAYOUT` key) in whichever layout exists; the
    pipeline's path when none does (so a message names where the file should be)."""
    root = Path(root)
    candidates = [root / rel for rel in LAYOUT[name]]
    return next((c for c in candidates if c.is_file()), candidates[0])


class ResultsError(ValueError):
    """A results file exists but does not follow docs/CONTRACTS.md (or a required one is missing)."""


# ----------------------------------------------------------------------------------------------- normalisers

def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def norm_adaptor(v: Any) -> str | None:
    if is_missing(v) or str(v).strip().lower() in NO_ADAPTOR:
        return None
    return str(v).strip().lower()


def norm_inputs(v: Any) -> tuple[str, ...] | None:
    """``["r_in", "r_out_prev"]`` / ``"r_in,r_out_prev"`` / ``"r_in+r_out_prev"`` -> ordered tuple."""
    if is_missing(v):
        return None
    if isinstance(v, str):
        parts = [p for p in re.split(r"[\s,+;|]+", v.strip("[]() ")) if p]
        parts = [p.strip("'\"") for p in parts]
    else:
        parts = [str(p) for p in v]
    if not parts:
        return None
    bad = [p for p in parts if p not in ADAPTOR_INPUTS]
    if bad:
        raise ResultsError(f"unknown adaptor inputs {bad}; expected a subset of {list(ADAPTOR_INPUTS)}")
    return tuple(i for i in ADAPTOR_INPUTS if i in parts)


def inputs_label(inputs: tuple[str, ...] | None) -> str:
    return " + ".join(INPUT_LABELS[i] for i in inputs) if inputs else "-"


def adaptor_steps(clock: Any, steps: Any) -> tuple[int, ...] | None:
    """0-based sampler steps that run the adaptor: clock ``2`` / ``"Clock(2)"`` / ``[1,3,5,7]`` /
    ``"Clock(adaptor_steps=[1, 3])"``. ``None`` for no clock (a baseline)."""
    if is_missing(clock) or (isinstance(clock, str) and clock.strip().lower() in NO_ADAPTOR):
        return None
    if isinstance(clock, str):
        nums = [int(x) for x in re.findall(r"\d+", clock)]
        if "[" in clock or "{" in clock or "," in clock or "adaptor_steps" in clock:
            clock = nums
        elif len(nums) == 1:
            clock = nums[0]
        else:
            raise ResultsError(f"cannot read clock {clock!r}: use an int period or a list of 0-based adaptor steps")
    if isinstance(clock, (list, tuple, set, frozenset)):
        return tuple(sorted(int(s) for s in clock))
    period = int(clock)
    if is_missing(steps):
        return None
    return tuple(s for s in range(int(steps)) if period > 0 and s % period != 0)


def clock_label(clock: Any, steps: Any) -> str:
    """The paper's wording: ``clock 2`` for a period, ``adaptor at {2,4,6,8}`` (1-based) for a step list."""
    if is_missing(clock):
        return "-"
    if (isinstance(clock, numbers.Real) and not isinstance(clock, bool)) or \
            (isinstance(clock, str) and re.fullmatch(r"\s*(Clock\()?\d+\)?\s*", clock)):
        period = int(re.findall(r"\d+", str(clock))[0])
        return f"clock {period}"
    st = adaptor_steps(clock, steps)
    return "adaptor at {" + ",".join(str(s + 1) for s in st) + "}" if st is not None else str(clock)


def _num(v: Any, what: str) -> float:
    if is_missing(v):
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ResultsError(f"{what} must be a number, got {v!r}") from None
    return float(v)


def _bool(v: Any) -> bool:
    if is_missing(v):
        return False
    if isinstance(v, str):
        return v.strip().lower() in {"1", "true", "yes", "y"}
    return bool(v)


# ------------------------------------------------------------------------------------------------ metrics

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON: {e}") from None


def check_vs_fewer_steps(v: Any, where: str) -> dict | None:
    """A ``vs_fewer_steps`` entry (docs/CONTRACTS.md): ``None`` (absent: a file older than the key, or a row with no
    front to compare with) or ``{"fid": V, "clip": V}`` with V = {delta, delta_std, front, front_std, status, steps}."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if not isinstance(v, dict):
        raise ResultsError(f"{where}.vs_fewer_steps must be an object {{fid: ..., clip: ...}} or null, got {type(v).__name__}")
    out = {}
    for metric, ans in v.items():
        w = f"{where}.vs_fewer_steps.{metric}"
        if ans is None:
            out[metric] = None
            continue
        if not isinstance(ans, dict):
            raise ResultsError(f"{w} must be an object, got {type(ans).__name__}")
        status = ans.get("status")
        if status not in VS_STATUSES:
            raise ResultsError(f"{w}.status must be one of {list(VS_STATUSES)}, got {status!r}")
        ans = dict(ans)
        for k in ("delta", "delta_std", "front", "front_std", "steps"):
            x = _num(ans.get(k), f"{w}.{k}")
            ans[k] = None if math.isnan(x) else x
        if status == "inside" and ans["delta"] is None:
            raise ResultsError(f"{w}: status 'inside' needs a delta")
        out[metric] = ans
    return out


def vs_fewer(row: Any, metric: str = "fid") -> dict | None:
    """``row``'s answer of ``vs_fewer_steps`` for ``metric`` (``None``: the file has no such key for the row)."""
    v = row.get("vs_fewer_steps") if hasattr(row, "get") else None
    if not isinstance(v, dict):
        return None
    a = v.get(metric)
    return a if isinstance(a, dict) else None


def _split(v: Any, where: str) -> str | None:
    if is_missing(v) or v == "":
        return None
    if str(v) not in SPLITS:
        raise ResultsError(f"{where}.split must be one of {list(SPLITS)}, got {v!r}")
    return str(v)


def parse_method(method: str) -> dict:
    """``baseline_6steps`` -> kind baseline, steps 6; ``clockwork_identity`` -> kind clockwork, adaptor identity;
    ``<teacher>/<method>`` names a teacher."""
    teacher = None
    if "/" in method:
        teacher, method = method.split("/", 1)
    m = re.fullmatch(r"(baseline|clockwork)(?:_(.*?))?(?:_?(\d+)steps?)?", method)
    if not m:
        return dict(teacher=teacher, kind=None, variant=method, steps=None)
    return dict(teacher=teacher, kind=m.group(1), variant=m.group(2), steps=int(m.group(3)) if m.group(3) else None)


def load_evaluate(path: str | os.PathLike, default_teacher: str = "teacher") -> pd.DataFrame:
    """``metrics/evaluate.json`` -> one row per (teacher, method); raises :class:`ResultsError` when malformed."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"required file {path} is missing: run `dvc repro evaluate` (docs/CONTRACTS.md)")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected an object keyed by method (baseline, clockwork, ...), "
                           f"got {type(data).__name__}")
    rows = []
    for method, entry in data.items():
        if method.startswith("_"):
            continue
        where = f"{path}: [{method!r}]"
        if not isinstance(entry, dict):
            raise ResultsError(f"{where} must be an object of metrics, got {type(entry).__name__}")
        missing = [k for k in EVALUATE_REQUIRED if is_missing(entry.get(k))]
        if missing:
            raise ResultsError(f"{where} lacks required field(s) {missing} (docs/CONTRACTS.md)")
        row = dict(entry)
        for k in EVALUATE_NUMERIC:
            row[k] = _num(entry.get(k), f"{where}.{k}")
        for k in EVALUATE_REQUIRED:
            if not math.isfinite(row[k]):
                raise ResultsError(f"{where}.{k} must be a finite number, got {entry.get(k)!r}")
        if row["gflops"] <= 0 or row["steps"] < 1:
            raise ResultsError(f"{where}: gflops must be > 0 and steps >= 1, got {row['gflops']}, {row['steps']}")
        parsed = parse_method(method)
        adaptor = norm_adaptor(entry.get("adaptor"))
        kind = parsed["kind"] or ("clockwork" if adaptor else "baseline")
        if kind == "baseline" and adaptor is not None:
            raise ResultsError(f"{where}: a baseline entry names adaptor {entry.get('adaptor')!r}")
        row.update(method=method if parsed["teacher"] is None else method.split("/", 1)[1],
                   teacher=str(entry.get("teacher") or parsed["teacher"] or default_teacher),
                   kind=kind, adaptor=adaptor, steps=int(row["steps"]),
                   inputs=norm_inputs(entry.get("inputs")), clock=entry.get("clock"),
                   split=_split(entry.get("split"), where),
                   vs_fewer_steps=check_vs_fewer_steps(entry.get("vs_fewer_steps"), where))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty or "baseline" not in set(df["kind"]):
        raise ResultsError(f"{path}: needs a 'baseline' entry (docs/CONTRACTS.md), got keys {list(data)}")
    if "clockwork" not in set(df["kind"]):
        raise ResultsError(f"{path}: needs at least one 'clockwork' entry, got keys {list(data)}")
    for c in ("sampler", "cut", "latency_ms", "clip", "kid", "fid_std", "kid_std", "clip_std", "adaptor_params",
              "n_samples", "device"):
        if c not in df:
            df[c] = math.nan
    return df


def load_ablate(path: str | os.PathLike) -> pd.DataFrame | None:
    """``metrics/ablate.json`` -> one row per ablation run, or ``None`` if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    data = _read_json(path)
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ResultsError(f"{path}: expected {{\"rows\": [...]}} (docs/CONTRACTS.md)")
    split = _split(data.get("split"), str(path))
    return ablate_frame([r if not isinstance(r, dict) or r.get("split") is not None or split is None
                         else {**r, "split": split} for r in rows], str(path))


def ablate_frame(rows: list[dict], where: str = "ablate rows") -> pd.DataFrame:
    out = []
    for i, r in enumerate(rows):
        w = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise ResultsError(f"{w} must be an object")
        missing = [k for k in ABLATE_REQUIRED if is_missing(r.get(k))]
        if missing:
            raise ResultsError(f"{w} lacks required field(s) {missing}")
        if r["ablation"] not in ABLATIONS:
            raise ResultsError(f"{w}: ablation {r['ablation']!r} is not one of {list(ABLATIONS)}")
        row = dict(r)
        for k in ("fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms", "adaptor_params",
                  "n_samples", "steps"):
            row[k] = _num(r.get(k), f"{w}.{k}")
        row["adaptor"] = norm_adaptor(r.get("adaptor"))
        row["inputs"] = norm_inputs(r.get("inputs")) if row["adaptor"] else None
        # pipeline/ablate.py names baselines "baseline", "dpm++/baseline", "4steps/baseline" (adaptor "none", clock 1)
        steps_ = adaptor_steps(r.get("clock"), r.get("steps")) if row["adaptor"] else None
        row["is_baseline"] = (row["adaptor"] is None or steps_ == ()
                              or bool(re.search(r"(^|[/_\s-])baseline($|[/_\s-])", str(r["variant"]).lower())))
        row["adaptor_steps"] = None if row["is_baseline"] else steps_
        row["training"] = None if row["is_baseline"] or is_missing(r.get("training")) else str(r["training"]).lower()
        row["sampler"] = None if is_missing(r.get("sampler")) else str(r["sampler"]).lower()
        row["split"] = _split(r.get("split"), w)
        row["vs_fewer_steps"] = check_vs_fewer_steps(r.get("vs_fewer_steps"), w)
        if r.get("train") is not None and not isinstance(r.get("train"), dict):
            raise ResultsError(f"{w}.train must be an object of distillation overrides, got {r['train']!r}")
        out.append(row)
    df = pd.DataFrame(out)
    for c in ("teacher", "clock", "cut", "sampler", "steps", "training", "split", "vs_fewer_steps", "train",
              "guidance", "width", "depth"):
        if c not in df:
            df[c] = None
    return df


def load_distill(root: Path) -> tuple[dict | None, pd.DataFrame | None]:
    """``metrics/distill.json`` and ``plots/distill_loss.csv`` under ``root`` (either :data:`LAYOUT`); ``None``
    for a missing one."""
    js, csv = results_file(root, "distill.json"), results_file(root, "distill_loss.csv")
    summary = _read_json(js) if js.is_file() else None
    if summary is not None and not isinstance(summary, dict):
        raise ResultsError(f"{js}: expected an object")
    curve = None
    if csv.is_file():
        curve = pd.read_csv(csv)
        if not {"step", "loss"} <= set(curve.columns):
            raise ResultsError(f"{csv}: expected columns step,loss; got {list(curve.columns)}")
    return summary, curve


# -------------------------------------------------------------------------------------------- sensitivity

SENSITIVITY_REQUIRED = ("cut", "mode", "start_step", "rel_l2")


def load_sensitivity(path: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """``sensitivity.json`` of ``clockwork sensitivity`` (clockwork/sensitivity.py): ``{"meta": {...}, "rows": [{cut,
    mode, alpha, start_step, rel_l2, rel_l2_std, n, [score]}, ...]}`` -> (meta, one row per run); raises
    :class:`ResultsError` when the file is missing or malformed (it was asked for)."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"sensitivity file {path} is missing: run `clockwork sensitivity --out {path.parent}`")
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("meta", {}), dict):
        raise ResultsError(f"{path}: expected {{\"meta\": {{...}}, \"rows\": [...]}} (clockwork/sensitivity.py)")
    rows = []
    for i, r in enumerate(data["rows"]):
        w = f"{path}: rows[{i}]"
        if not isinstance(r, dict):
            raise ResultsError(f"{w} must be an object")
        missing = [k for k in SENSITIVITY_REQUIRED if is_missing(r.get(k))]
        if missing:
            raise ResultsError(f"{w} lacks required field(s) {missing}")
        row = dict(r)
        for k in ("rel_l2", "rel_l2_std", "alpha", "n", "score"):
            row[k] = _num(r.get(k), f"{w}.{k}")
        row["cut"], row["start_step"], row["mode"] = int(r["cut"]), int(r["start_step"]), str(r["mode"])
        rows.append(row)
    if not rows:
        raise ResultsError(f"{path}: no rows")
    return data.get("meta") or {}, pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- sweeps

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


def _rel_repo(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


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


# ------------------------------------------------------------------------------------------------ Results

@dataclass
class SavedFigure:
    png: Path

    def _repr_png_(self) -> bytes:
        return self.png.read_bytes()


@dataclass
class Results:
    """Where the results are read from and where the reports go; records what was written or skipped."""

    root: Path
    reports: Path
    mlflow_uri: str | None = None
    sweeps: Path | None = None  # folder of <name>/results.csv; None: <root>/sweeps
    sensitivity: Path | None = None  # sensitivity.json of `clockwork sensitivity` (CLOCKWORK_SENSITIVITY); None: none
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> "Results":
        root = Path(os.environ.get("CLOCKWORK_RESULTS") or REPO_ROOT).resolve()
        reports = Path(os.environ.get("CLOCKWORK_REPORTS") or REPO_ROOT / "reports").resolve()
        uri = os.environ.get("CLOCKWORK_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri and (root / "mlflow.db").is_file():
            uri = f"sqlite:///{root / 'mlflow.db'}"
        if uri and uri.strip().lower() in MLFLOW_OFF:
            uri = None
        sweeps = os.environ.get("CLOCKWORK_SWEEPS")
        sens = os.environ.get("CLOCKWORK_SENSITIVITY")
        res = cls(root=root, reports=reports, mlflow_uri=uri or None, sweeps=Path(sweeps).resolve() if sweeps else None,
                  sensitivity=Path(sens).resolve() if sens else None)
        res._guard_synthetic()
        return res

    def __repr__(self) -> str:
        syn = "  [SYNTHETIC fixtures]" if self.synthetic else ""
        sw = f", sweeps={self.sweeps}" if self.sweeps is not None else ""
        sw += f", sensitivity={self.sensitivity}" if self.sensitivity is not None else ""
        return f"Results(root={self.root}, reports={self.reports}, mlflow={self.mlflow_uri}{sw}){syn}"

    @property
    def synthetic(self) -> bool:
        return (self.root / SYNTHETIC_MARKER).exists()

    def _guard_synthetic(self) -> None:
        # Synthetic fixture numbers must never land in the committed reports/ folder.
        if self.synthetic and self.reports.is_relative_to((REPO_ROOT / "reports").resolve()):
            raise ResultsError(f"{self.root} holds SYNTHETIC fixtures; refusing to write them into {self.reports}. "
                               "Set CLOCKWORK_REPORTS to a scratch folder.")

    # ---- inputs
    def world(self) -> str | None:
        """``world.kind`` of the params file the results were made with (names the teacher when evaluate.json
        does not): ``CLOCKWORK_PARAMS`` or params.yaml under the results root."""
        p = Path(os.environ.get("CLOCKWORK_PARAMS") or "params.yaml")
        p = p if p.is_absolute() else self.root / p
        if not p.is_file():
            return None
        import yaml

        try:
            kind = (yaml.safe_load(p.read_text()) or {}).get("world", {}).get("kind")
        except (yaml.YAMLError, AttributeError):
            return None
        return str(kind) if kind else None

    def file(self, name: str) -> Path:
        """Where results file ``name`` (``evaluate.json``, ``ablate.json``, ...) is read from (:data:`LAYOUT`)."""
        return results_file(self.root, name)

    def source(self, name: str) -> str:
        """How tables name results file ``name``: the pipeline's ``metrics/evaluate.json`` in the pipeline
        layout, else the file's path from the repository (``reports/full/evaluate.json``)."""
        f = self.file(name)
        rel = LAYOUT[name][0]
        if f == self.root / rel:
            return rel
        try:
            return str(f.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(f)

    def evaluate(self) -> pd.DataFrame:
        return load_evaluate(self.file("evaluate.json"), default_teacher=self.world() or "teacher")

    def ablate(self) -> pd.DataFrame | None:
        df = load_ablate(self.file("ablate.json"))
        if df is None:
            self.note("metrics/ablate.json not found: skipping the ablation tables and figures")
        return df

    def distill(self) -> tuple[dict | None, pd.DataFrame | None]:
        summary, curve = load_distill(self.root)
        if summary is None:
            self.note("metrics/distill.json not found: skipping the distillation summary")
        if curve is None:
            self.note("plots/distill_loss.csv not found: skipping the distillation loss curve")
        return summary, curve

    def load_sensitivity(self) -> tuple[dict, pd.DataFrame] | None:
        """(meta, rows) of the sensitivity file when one was given (``--sensitivity`` / ``CLOCKWORK_SENSITIVITY``), else
        ``None`` with a note; a given file that is missing or malformed raises :class:`ResultsError`."""
        if self.sensitivity is None:
            self.note("no sensitivity file (--sensitivity / CLOCKWORK_SENSITIVITY): Fig. 2 skipped")
            return None
        return load_sensitivity(self.sensitivity)

    def sensitivity_source(self) -> str:
        return _rel_repo(self.sensitivity) if self.sensitivity is not None else "-"

    @property
    def sweeps_dir(self) -> Path:
        """Where ``<name>/results.csv`` of each sweep is read from: ``CLOCKWORK_SWEEPS``, else ``<root>/sweeps``."""
        return self.sweeps if self.sweeps is not None else self.root / "sweeps"

    def sweep_csvs(self) -> dict[str, pd.DataFrame]:
        found = {p.parent.name: load_sweep_csv(p) for p in sorted(self.sweeps_dir.glob("*/results.csv"))}
        if not found:
            self.note(f"no <name>/results.csv under {self.sweeps_dir}")
        return found

    def sweep_info(self, name: str, trials: pd.DataFrame | None = None) -> SweepInfo:
        """How sweep ``name`` ran, from its folder's sweep.json / summary.json (empty when it came from MLflow)."""
        folder = self.sweeps_dir / name
        if not (folder / "results.csv").is_file():
            return SweepInfo(name, source="its MLflow runs", trials=trials)
        state, summary = (_read_json(f) if f.is_file() else {} for f in (folder / "sweep.json", folder / "summary.json"))
        return SweepInfo(name, source=_rel_repo(folder / "results.csv"), state=state if isinstance(state, dict) else {},
                         summary=summary if isinstance(summary, dict) else {}, trials=trials)

    def sweep_mlflow(self) -> pd.DataFrame | None:
        if not self.mlflow_uri:
            self.note("no MLflow store (CLOCKWORK_MLFLOW_URI / MLFLOW_TRACKING_URI / mlflow.db): MLflow view skipped")
            return None
        if self.mlflow_uri.startswith("sqlite:///") and not Path(self.mlflow_uri[len("sqlite:///"):]).is_file():
            self.note(f"MLflow store {self.mlflow_uri} does not exist: MLflow view skipped")
            return None
        trials = sweep_trials_from_mlflow(mlflow_runs(self.mlflow_uri))
        if trials.empty:
            self.note(f"MLflow store {self.mlflow_uri} has no nested sweep runs")
            return None
        return trials

    def merge_sweeps(self, csvs: dict[str, pd.DataFrame], ml: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
        """Sweep trials by sweep name: results.csv (the DVC output) where it exists, else the MLflow runs.
        A recommendation recorded on the MLflow parent run is carried over to the CSV's trials."""
        out = dict(csvs)
        if ml is None:
            return out
        ml = align_sweep_names(csvs, ml)
        for name, g in ml.groupby(ml["sweep"].fillna("mlflow").astype(str)):
            if name in out:
                rec = g["recommended_trial_id"].dropna() if "recommended_trial_id" in g else pd.Series(dtype=str)
                if len(rec) and "recommended_trial_id" not in out[name]:
                    out[name] = out[name].assign(recommended_trial_id=str(rec.iloc[0]))
            elif {"fid", "gflops"} <= set(g.columns):
                self.note(f"sweep {name!r}: no results.csv, using its {len(g)} MLflow child runs")
                out[name] = g.assign(sweep=name)
        return out

    # ---- outputs
    def note(self, msg: str) -> None:
        self.skipped.append(msg)
        print(f"NOTE: {msg}")

    def _path(self, name: str, ext: str) -> Path:
        self.reports.mkdir(parents=True, exist_ok=True)
        p = self.reports / f"{name}.{ext}"
        self.written.append(p)
        return p

    def write_table(self, table, name: str, missing: str = "no input rows"):
        """Write ``name.md`` and ``name.tex`` and return the table (a notebook displays it); a ``None`` table
        (its input is missing) is noted and skipped."""
        if table is None:
            self.note(f"{name}: {missing}; skipped")
            return None
        if getattr(table, "source", None):  # name the files the numbers were read from (flat layout: their paths)
            for key, (rel, _) in LAYOUT.items():
                table.source = table.source.replace(rel, self.source(key))
        self._path(name, "md").write_text(table.to_markdown())
        self._path(name, "tex").write_text(table.to_latex())
        return table

    def save_figure(self, fig, name: str) -> "SavedFigure":
        """Write ``name.png`` and ``name.svg`` (metadata without dates so reruns give the same bytes), close the
        figure, and return the PNG for a notebook to show (whatever the matplotlib backend)."""
        import matplotlib
        import matplotlib.pyplot as plt

        matplotlib.rcParams["svg.hashsalt"] = "clockwork"
        png = self._path(name, "png")
        fig.savefig(png, dpi=150, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(self._path(name, "svg"), bbox_inches="tight", metadata={"Date": None, "Creator": None})
        plt.close(fig)
        return SavedFigure(png)

    def summary(self) -> pd.DataFrame:
        """What this notebook wrote and skipped."""
        rows = [("wrote", str(p.relative_to(self.reports))) for p in self.written]
        return pd.DataFrame(rows + [("skipped", s) for s in self.skipped], columns=["", "what"])
