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
missing the loader returns ``None`` and :meth:`analysis.results.Results.note` says what was skipped.
This module holds the metrics-file readers and validators; the sweep readers (results.csv, MLflow runs) are in
:mod:`analysis.sweep_loader` and the :class:`analysis.results.Results` of the notebooks (where results are read from and
reports written, from the environment) in :mod:`analysis.results`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
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


# Where each results file is looked for under a results root, first match wins: the pipeline's layout
# (metrics/ and plots/, the DVC outs), then a flat folder of the same files (reports/full/, a GPU run's copy).
LAYOUT = {
    "evaluate.json": ("metrics/evaluate.json", "evaluate.json"),
    "ablate.json": ("metrics/ablate.json", "ablate.json"),
    "distill.json": ("metrics/distill.json", "distill.json"),
    "distill_loss.csv": ("plots/distill_loss.csv", "distill_loss.csv"),
    "edit.json": ("metrics/edit.json", "edit.json"),
}


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
