#!/usr/bin/env python
"""Sweep Clockwork operating points with Ray Tune; log every trial to MLflow; find the Pareto fronts.

    python pipeline/sweep.py                                  # the `sweep:` section of params.yaml
    python pipeline/sweep.py --config params.yaml --name clock-width-cut --gpus-per-trial 1
    python pipeline/sweep.py --name clock-width-cut --resume  # continue a killed sweep
    python pipeline/sweep.py --no-mlflow ...                  # record to files only (no mlflow installed)
    python pipeline/sweep.py --import-results sweeps/clock-width-cut   # log such a sweep into MLflow later

Each trial distills an adaptor for one point {clock, width, cut, steps, adaptor} and evaluates it with the
pipeline's own ``train_and_evaluate(params, workdir)`` (``sweep.trial``), reusing the trajectory store of
``dvc repro trajectories``. The baseline (clock 1, the plain UNet) is evaluated once per step count.

Everything lands in ``sweeps/<name>/``: ``results.csv`` (one row per trial, Pareto flags),
``trials.jsonl`` (params, metrics, loss curve, status of every trial), ``summary.json`` (baseline,
recommended operating point, fronts), ``pareto_*.png``, ``ray/`` (Tune's state, for ``--resume``) and
``work/<trial>/`` (each trial's files; a finished trial's ``result.json`` is never recomputed).
MLflow gets a parent run per sweep and a nested child run per trial (see docs/SWEEP.md); it is a
window on these files, never their source.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import random
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Quiet, offline-safe defaults; a user's own setting wins.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live table (CLIReporter) instead of the new console
# Trials report distillation losses first and quality metrics last, so not every result has every metric.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
# A killed sweep loses at most this many seconds of Tune bookkeeping (the state is a few KB of JSON).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")

DEFAULT_TRIAL = "pipeline.common:train_and_evaluate"
DEFAULT_EXPERIMENT = "clockwork-sweep"  # = pipeline.tracking.experiment_name("sweep")

# Sweep dimension -> its params.yaml key (also the flat dotted MLflow param name). A trial function gets the
# dimensions by their short names, as pipeline.common.train_and_evaluate takes them.
DIMENSIONS: dict[str, str] = {
    "clock": "clock.period",
    "width": "adaptor.width",
    "cut": "cut",
    "steps": "sampling.steps",
    "adaptor": "adaptor.kind",
}
# The other keys train_and_evaluate takes (sweep.overrides), with their params.yaml names.
TRIAL_KEYS: dict[str, str] = {
    "depth": "adaptor.depth", "inputs": "adaptor.inputs", "sampler": "sampling.sampler",
    "guidance": "sampling.guidance", "distill_steps": "distill.steps", "n_samples": "evaluate.n_samples",
    "latency_runs": "evaluate.latency_runs", "device": "device", "params_file": "params_file", "root": "root",
}
# What a trial function returns that describes the trial rather than measures it.
DESCRIPTORS = {"clock", "cut", "steps", "adaptor", "sampler", "width", "inputs", "training"}
ADAPTOR_KINDS = ("identity", "resnet", "unet-light")
INT_DISTRIBUTIONS = {"choice": None, "randint": 2, "qrandint": 3, "lograndint": 2}  # name -> number of args
# The quality-vs-cost fronts: name -> (x, x mode, y, y mode).
FRONTS: dict[str, tuple[str, str, str, str]] = {
    "fid_gflops": ("gflops", "min", "fid", "min"),
    "clip_gflops": ("gflops", "min", "clip", "max"),
    "fid_latency": ("latency_ms", "min", "fid", "min"),
}
METRICS = ("fid", "fid_std", "kid", "clip", "gflops", "gflops_ratio", "latency_ms", "adaptor_params")
CSV_COLUMNS = [  # docs/CONTRACTS.md first, then extras
    "trial_id", "clock", "width", "cut", "steps", "adaptor", *METRICS, "status",
    "pareto_fid_gflops", "pareto_clip_gflops", "pareto_fid_latency",
    "baseline", "recommended", "gflops_saving", "distill_loss", "heldout_mse", "attempts", "wall_s",
    "node", "gpu_ids", "started", "finished", "run_name", "key", "error",
]
# Keys Ray adds to every result; everything else a trial reports is a metric.
RAY_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "should_checkpoint", "distill_step", "sweep_final",
}
TRIAL_INFO = ("started", "finished", "wall_s", "node", "gpu_ids", "cached")


class SweepConfigError(ValueError):
    """Problems in the `sweep:` section; ``problems`` is a list of (dotted key, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "params.yaml"):
        self.problems = problems
        super().__init__("\n".join(f"{source}: {k}: {m}" for k, m in problems))


# ================================================================================ the `sweep:` section
class Section(BaseModel):
    # The style of pipeline/config.py: unknown keys and wrong types fail at once.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
NonNegFloat = Annotated[float, Field(ge=0)]
IntDim = Union[list[int], dict[str, list[int]]]
StrDim = Union[list[str], dict[str, list[str]]]

_MIN = {"clock": 2, "width": 1, "cut": 1, "steps": 2}
_WHY = {
    "clock": "clock periods are integers >= 2 (clock 1 is the baseline, evaluated on its own: see `baseline`)",
    "width": "adaptor widths are integers >= 1",
    "cut": "cuts are integers >= 1 (1 = the paper's default)",
    "steps": "step counts are integers >= 2",
}


def _check_values(dim: str, values: list) -> None:
    if dim == "adaptor":
        bad = [v for v in values if v not in ADAPTOR_KINDS]
        if bad:
            raise ValueError(f"unknown adaptor kind(s) {bad}; choose from {list(ADAPTOR_KINDS)}")
        return
    bad = [v for v in values if v < _MIN[dim]]
    if bad:
        raise ValueError(f"{_WHY[dim]}, got {bad}")


def _check_dim(dim: str, v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, list):
        if not v:
            raise ValueError("empty list: give at least one value")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate values in {v}")
        _check_values(dim, v)
        return v
    if len(v) != 1:
        raise ValueError(f"a distribution is one of {sorted(INT_DISTRIBUTIONS)} with its arguments, "
                         f"e.g. {{randint: [2, 5]}}; got {v}")
    (name, args), = v.items()
    if dim == "adaptor" and name != "choice":
        raise ValueError(f"adaptor kinds are categories: use a list or {{choice: [...]}}, not {name}")
    if name not in INT_DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; use one of {sorted(INT_DISTRIBUTIONS)} (or a list)")
    need = INT_DISTRIBUTIONS[name]
    if need is None:
        return {name: _check_dim(dim, list(args))}
    if len(args) != need:
        form = {"randint": "[low, high)", "qrandint": "[low, high, q]", "lograndint": "[low, high)"}[name]
        raise ValueError(f"{name} takes {form}, got {args}")
    lo, hi = args[0], args[1]
    if lo >= hi:
        raise ValueError(f"{name}: low {lo} must be below high {hi}")
    _check_values(dim, [lo])
    if name == "lograndint" and lo < 1:
        raise ValueError("lograndint needs low >= 1")
    return v


class Space(Section):
    """What to sweep: a list per dimension (grid or categorical) or one distribution (random search)."""

    clock: IntDim
    width: IntDim
    cut: IntDim
    steps: IntDim | None = None  # default: params.yaml sampling.steps
    adaptor: StrDim | None = None  # default: params.yaml adaptor.kind

    @field_validator("clock", "width", "cut", "steps", "adaptor")
    @classmethod
    def _dim(cls, v, info):
        return _check_dim(info.field_name, v)


SEARCHERS_BUILTIN = ("grid", "random")
SCHEDULERS = {"fifo": "fifo", "asha": "async_hyperband", "async_hyperband": "async_hyperband",
              "hyperband": "hyperband", "median_stopping_rule": "median_stopping_rule"}


class Search(Section):
    algorithm: str = "grid"  # grid | random | any Ray Tune searcher by name (optuna, hyperopt, ...)
    num_samples: PosInt = 1  # trials for random / model-based search; a grid runs each point once
    metric: Union[str, list[str]] = "fid"  # what a model-based searcher optimises (final metrics)
    mode: Union[Literal["min", "max"], list[Literal["min", "max"]]] = "min"
    seed: NonNegInt = 0
    options: dict[str, Any] = {}  # passed to the searcher's constructor

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v):
        known = set(SEARCHERS_BUILTIN)
        try:
            from ray.tune.search import SEARCH_ALG_IMPORT

            known |= set(SEARCH_ALG_IMPORT) - {"variant_generator"}
        except ImportError:  # no Ray here (e.g. --import-results): names are checked where the sweep runs
            return v
        if v not in known:
            raise ValueError(f"unknown search algorithm {v!r}; choose from {sorted(known)}")
        return v

    @model_validator(mode="after")
    def _pairs(self):
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        modes = [self.mode] if isinstance(self.mode, str) else self.mode
        if len(metrics) != len(modes):
            raise ValueError(f"search.metric has {len(metrics)} entries but search.mode has {len(modes)}")
        return self


class Scheduler(Section):
    name: str = "fifo"  # fifo | asha | hyperband | median_stopping_rule
    metric: str = "distill_loss"  # reported every distill.log_every steps
    mode: Literal["min", "max"] = "min"
    time_attr: str = "training_iteration"  # one iteration = one loss report
    options: dict[str, Any] = {}  # e.g. {grace_period: 4, reduction_factor: 2}

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in SCHEDULERS:
            why = (" (it needs trials that checkpoint and restore for Tune; these trials do not)"
                   if v in ("pbt", "pb2", "pbt_replay", "hb_bohb", "resource_changing") else "")
            raise ValueError(f"unsupported scheduler {v!r}{why}; choose from {sorted(SCHEDULERS)}")
        return v


class Resources(Section):
    gpus_per_trial: NonNegFloat = 1.0  # used when the cluster has GPUs; fractions share a GPU; 0 = CPU only
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole(cls, v):
        if v > 1 and v != int(v):
            raise ValueError(f"more than one GPU per trial must be a whole number, got {v}")
        return v


class SweepParams(Section):
    """The `sweep:` section of params.yaml (see docs/SWEEP.md)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = "sweep"
    trial: str = DEFAULT_TRIAL  # "module:function" or "path/to/file.py:function"
    space: Space
    search: Search = Search()
    scheduler: Scheduler = Scheduler()
    baseline: str = "trial"  # trial | none | a metrics JSON with a `baseline` entry (metrics/evaluate.json)
    fid_tolerance: NonNegFloat = 1.0  # FID points above the baseline the recommendation may lose
    fid_tolerance_relative: bool = False  # read fid_tolerance as a fraction of the baseline's FID
    resources: Resources = Resources()
    max_concurrent: NonNegInt = 0  # 0 = as many trials as the resources allow
    max_failures: NonNegInt = 2  # retries of a failing trial before it is recorded as failed
    overrides: dict[str, Any] = {}  # extra trial-function params for every trial, e.g. {distill_steps: 300}

    @field_validator("search", "scheduler", mode="before")
    @classmethod
    def _shorthand(cls, v, info):
        if isinstance(v, str):  # `search: random`, `scheduler: asha`
            return {"algorithm": v} if info.field_name == "search" else {"name": v}
        return v

    @field_validator("trial")
    @classmethod
    def _trial_spec(cls, v):
        if ":" not in v or not all(v.rsplit(":", 1)):
            raise ValueError(f"trial must be 'module:function' or 'path/file.py:function', got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross(self):
        problems = []
        dists = [d for d in DIMENSIONS if isinstance(getattr(self.space, d), dict)
                 and "choice" not in getattr(self.space, d)]
        if self.search.algorithm == "grid":
            if dists:
                problems.append(f"space.{dists[0]} is a distribution, but a grid needs lists of values "
                                "(use `search: random` to sample distributions)")
            if self.search.num_samples != 1:
                problems.append("search.num_samples is for random / model-based search; a grid runs every point "
                                "once")
        clash = [k for k in self.overrides if k in DIMENSIONS or k in DIMENSIONS.values()]
        if clash:
            problems.append(f"overrides set {clash}, which the space sweeps; remove them from overrides")
        if self.trial == DEFAULT_TRIAL:
            unknown = [k for k in self.overrides if k not in TRIAL_KEYS]
            if unknown:
                problems.append(f"overrides {unknown} are not parameters of {DEFAULT_TRIAL}; it takes "
                                f"{sorted(TRIAL_KEYS)} (everything else comes from the params file)")
        if self.baseline not in ("trial", "none") and not self.baseline.endswith(".json"):
            problems.append(f"baseline must be 'trial', 'none' or a metrics .json file, got {self.baseline!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith(("list[", "dict[", "function-"))]
        key = ".".join(["sweep", *loc])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? see docs/SWEEP.md for the keys this section takes)"
        elif e["type"] in ("int_type", "float_type", "string_type", "list_type", "dict_type", "bool_type"):
            msg += f" (got {e.get('input')!r})"
        out.append((key, msg))
    # A dimension that is neither a list nor a dict yields one error per union member: keep the first.
    seen, uniq = set(), []
    for k, m in out:
        if k not in seen:
            seen.add(k)
            uniq.append((k, m))
    return uniq


def parse_sweep(raw: dict, source: str = "params.yaml") -> SweepParams:
    """The validated `sweep:` section of a params dict; :class:`SweepConfigError` names every bad key."""
    if not isinstance(raw, dict) or "sweep" not in raw:
        raise SweepConfigError([("sweep", "missing: add a `sweep:` section (see docs/SWEEP.md)")], source)
    section = raw["sweep"]
    if not isinstance(section, dict):
        raise SweepConfigError([("sweep", f"must be a mapping, got {type(section).__name__}")], source)
    try:
        return SweepParams.model_validate(section)
    except ValidationError as e:
        raise SweepConfigError(_problems(e), source) from None


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError([("(file)", f"{path} not found")], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepConfigError([("(file)", f"not valid YAML: {e}")], str(path)) from None
    if not isinstance(raw, dict):
        raise SweepConfigError([("(file)", "must be a mapping of sections")], str(path))
    return raw


# ======================================================================================= the points
def _dotted_get(d: dict, key: str, default=None):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _dotted_set(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[parts[-1]] = value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _values(dim) -> list | None:
    if dim is None:
        return None
    return dim["choice"] if isinstance(dim, dict) else list(dim)


def normalize_point(point: dict, base: dict | None = None) -> dict:
    """The full point of one trial: steps and adaptor from the params file when the space leaves them out;
    what does not matter dropped (width for the identity adaptor; all but steps for the baseline), so equal
    trials share a key."""
    p = {k: v for k, v in point.items() if v is not None and k in DIMENSIONS}
    for d in ("steps", "adaptor"):
        if d not in p and base and _dotted_get(base, DIMENSIONS[d]) is not None:
            p[d] = _dotted_get(base, DIMENSIONS[d])
    if p.get("clock") == 1 or p.get("adaptor") == "none":  # the plain UNet, as pipeline.common.MethodSpec
        return {"clock": 1, **({"steps": p["steps"]} if "steps" in p else {}), "adaptor": "none"}
    if p.get("adaptor") == "identity":
        p.pop("width", None)
    return {d: p[d] for d in DIMENSIONS if d in p}


def grid_points(sp: SweepParams, base: dict | None = None) -> list[dict]:
    dims = [(d, _values(getattr(sp.space, d))) for d in DIMENSIONS]
    points: list[dict] = [{}]
    for name, values in dims:
        if values is None:
            continue
        points = [{**p, name: v} for p in points for v in values]
    out, seen = [], set()
    for p in points:
        p = normalize_point(p, base)
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def baseline_points(sp: SweepParams, base: dict) -> list[dict]:
    """The plain UNet (clock 1, no adaptor): one per step count in the space (or the params' step count)."""
    if sp.baseline != "trial":
        return []
    steps = _values(sp.space.steps) or [None]
    return [normalize_point({"clock": 1, "steps": s}, base) for s in steps]


def is_full_params(base: dict) -> bool:
    """A whole params.yaml (the pipeline's), rather than a file holding only a `sweep:` section."""
    return bool(base) and "world" in base


def trial_params(base: dict, sp: SweepParams, point: dict, params_file: str | None = None) -> dict:
    """What the trial function gets: the point by short names (as train_and_evaluate takes them), the
    overrides, and the params file whose other settings apply."""
    p = {**sp.overrides, **point}
    if params_file and is_full_params(base):
        p.setdefault("params_file", str(params_file))
    return p


def nested_params(base: dict, params: dict) -> dict:
    """The params.yaml a trial amounts to (for the pipeline's validator and for MLflow)."""
    n = copy.deepcopy({k: v for k, v in base.items() if k != "sweep"})
    for k, v in params.items():
        if k in DIMENSIONS or k in TRIAL_KEYS:
            _dotted_set(n, DIMENSIONS.get(k) or TRIAL_KEYS[k], v)
    if params.get("adaptor") == "none":  # the baseline: the pipeline spells it clock 1 + identity
        _dotted_set(n, "adaptor.kind", "identity")
    if params.get("adaptor") in ("identity", "none") and _dotted_get(n, "adaptor.inputs") is not None:
        n["adaptor"]["inputs"] = ["r_out_prev"]  # the only input the identity adaptor takes
    if "clock" in params and isinstance(base.get("clock"), dict):
        n["clock"]["adaptor_steps"] = None  # the swept period decides
    return n


def run_name(point: dict) -> str:
    s = f"-s{point['steps']}" if "steps" in point else ""
    if point.get("clock") == 1:
        return f"baseline{s}"
    kind = point.get("adaptor", "")
    w = f"-w{point['width']}" if "width" in point else ""
    return f"c{point['clock']}{'-' + kind if kind else ''}{w}-k{point.get('cut', '')}{s}"


def point_key(trial_spec: str, params: dict, base: dict, point: dict) -> str:
    """A stable name for one trial's work folder: same trial function, params and params file -> same folder
    (a finished trial there is never recomputed)."""
    blob = json.dumps({"trial": trial_spec, "params": {k: v for k, v in params.items() if k != "params_file"},
                       "base": {k: v for k, v in base.items() if k != "sweep"}}, sort_keys=True, default=str)
    return f"{run_name(point)}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def mlflow_params(base: dict, params: dict) -> dict[str, Any]:
    """Flat dotted params for MLflow, in params.yaml's names: the sections a trial reads, with its values."""
    keep = ("world", "sampling", "cut", "adaptor", "clock", "distill", "evaluate")
    flat = flatten({k: v for k, v in nested_params(base, params).items() if k in keep})
    flat.pop("world.data_root", None)
    for k, v in params.items():
        if k not in DIMENSIONS and k not in TRIAL_KEYS:
            flat[k] = v  # a custom trial function's own keys
    if params.get("adaptor") == "none":
        flat["adaptor.kind"] = "none"
        for k in ("adaptor.width", "adaptor.depth", "cut"):
            flat.pop(k, None)
    elif params.get("adaptor") == "identity":
        flat.pop("adaptor.width", None)
    if "params_file" in params:
        flat["params_file"] = params["params_file"]
    return flat


def param_space(sp: SweepParams, points: list[dict]) -> dict:
    """Tune's space. A grid is the explicit point list (identity widths deduplicated), fed as points to
    evaluate over categorical domains; random / model-based search sample the declared distributions."""
    from ray import tune

    if sp.search.algorithm == "grid":
        space = {}
        for d in DIMENSIONS:
            vals = sorted({p.get(d) for p in points}, key=lambda x: (x is None, str(x)))
            if any(d in p for p in points):
                space[d] = tune.choice(vals)
        return space
    space = {}
    for d in DIMENSIONS:
        v = getattr(sp.space, d)
        if v is None:
            continue
        if isinstance(v, list):
            space[d] = tune.choice(v)
        else:
            (name, args), = v.items()
            space[d] = tune.choice(args) if name == "choice" else getattr(tune, name)(*args)
    return space


# ======================================================================================== MLflow I/O
def _transient(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("locked", "busy", "operationalerror", "timeout", "timed out", "connection",
                                   "temporarily", "503", "502", "429", "too many requests", "resource_exhausted"))


def retrying(fn: Callable, *args, attempts: int = 40, **kwargs):
    """Call an MLflow client method; retry what a busy sqlite file or a restarting server throws."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if i == attempts - 1 or not _transient(e):
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the pipeline's store (sqlite:///<repo>/mlflow.db)."""
    try:
        from pipeline import tracking

        return tracking.tracking_uri()
    except ImportError:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """A relative sqlite path means the driver's folder; trials run elsewhere, so pin it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class Tracker:
    """One MlflowClient per process; every call retried (concurrent trials share one sqlite file)."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)

    def call(self, method: str, *args, **kwargs):
        return retrying(getattr(self.client, method), *args, **kwargs)

    def experiment_id(self, name: str) -> str:
        exp = self.call("get_experiment_by_name", name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.call("create_experiment", name, artifact_location=self.artifact_root(name))
        except Exception:  # noqa: BLE001 - another process created it first
            exp = self.call("get_experiment_by_name", name)
            if exp is None:
                raise
            return exp.experiment_id

    def artifact_root(self, experiment: str) -> str | None:
        """Artifacts of a sqlite store live beside its file (mlflow's default, ./mlruns, follows the cwd);
        a tracking server decides for itself."""
        prefix = "sqlite:///"
        if self.uri.startswith(prefix):
            return str(Path(self.uri[len(prefix):]).parent / "mlruns" / experiment)
        return None

    def search(self, experiment_id: str, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.call("search_runs", [experiment_id], filter_string=filter_string, max_results=1000,
                             page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def children(self, experiment_id: str, parent_id: str) -> dict[str, Any]:
        runs = self.search(experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return {r.data.tags.get("sweep.trial_id"): r for r in runs if r.data.tags.get("sweep.trial_id")}

    def log_params(self, run, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        have = dict(run.data.params) if run is not None and hasattr(run, "data") else {}
        todo = [Param(k, _param_value(v)) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), 100):
            self.call("log_batch", run.info.run_id, params=todo[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(ms), 1000):
            self.call("log_batch", run_id, metrics=ms[i:i + 1000])

    def log_history(self, run_id: str, key: str, history: Iterable[tuple[int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(key, float(v), now, int(s)) for s, v in history if _finite(v)]
        for i in range(0, len(ms), 1000):
            self.call("log_batch", run_id, metrics=ms[i:i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        ts = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(ts), 100):
            self.call("log_batch", run_id, tags=ts[i:i + 100])

    def open_child(self, experiment_id: str, parent_id: str, trial_id: str, name: str, params: dict,
                   tags: dict) -> tuple[str, bool]:
        """The child run of ``trial_id`` (created once; a retried or resumed trial reuses it), and whether it
        is new."""
        found = self.search(experiment_id, f"tags.`sweep.trial_id` = '{trial_id}' and "
                                           f"tags.`mlflow.parentRunId` = '{parent_id}'")
        if found:
            run = found[0]
            if run.info.status != "RUNNING":
                self.call("update_run", run.info.run_id, status="RUNNING")
        else:
            run = self.call("create_run", experiment_id, run_name=name,
                            tags={"mlflow.parentRunId": parent_id, "sweep.trial_id": trial_id, **tags})
        self.log_params(run, params)
        return run.info.run_id, not found


# ============================================================================== one trial, on a worker
@dataclass
class TrialContext:
    """What every trial needs from the driver (pickled once, via tune.with_parameters)."""

    repo: str
    sweep_dir: str
    sweep_name: str
    trial_spec: str
    base: dict  # the params file without its `sweep:` section ({} for a sweep-only file)
    sweep: dict  # SweepParams.model_dump()
    params_file: str | None = None
    mlflow: dict | None = None  # {"uri", "experiment_id", "parent_run_id"}


def load_trial_function(spec: str, repo: str | os.PathLike = REPO_ROOT) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` (relative to the repository)."""
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target) if Path(target).is_absolute() else Path(repo) / target
        if not path.is_file():
            raise FileNotFoundError(f"sweep.trial: no such file {path}")
        mod_name = "sweep_trial_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
        module = sys.modules.get(mod_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[mod_name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            hint = (" - pipeline/common.py (the DVC pipeline's train_and_evaluate) is not there yet"
                    if target == "pipeline.common" else "")
            raise ImportError(f"sweep.trial: cannot import {target!r}{hint}: {e}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise AttributeError(f"sweep.trial: {target} has no function {func!r}")
    return fn


def accepts_on_log(fn: Callable) -> bool:
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "on_log" in ps or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _append_jsonl(path: Path, obj) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=str) + "\n")


def _where() -> dict:
    info = {"node": socket.gethostname(), "gpu_ids": ""}
    try:
        import ray

        if ray.is_initialized():
            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            info["gpu_ids"] = ",".join(str(i) for i in ids)
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def run_point(ctx: TrialContext, point: dict, trial_id: str, report: Callable[[dict], None]) -> dict:
    """Run (or recall) one trial: distill + evaluate through the trial function, report, log to MLflow."""
    started = time.time()
    if ctx.repo not in sys.path:
        sys.path.insert(0, ctx.repo)
    os.chdir(ctx.repo)  # the pipeline's paths are relative to the repository, as for `dvc repro`
    sp = SweepParams.model_validate(ctx.sweep)
    point = normalize_point(point, ctx.base)
    params = trial_params(ctx.base, sp, point, ctx.params_file)
    key = point_key(ctx.trial_spec, params, ctx.base, point)
    workdir = Path(ctx.sweep_dir) / "work" / key
    workdir.mkdir(parents=True, exist_ok=True)
    done_file = workdir / "result.json"
    where = _where()
    if done_file.is_file():  # finished before (a resumed or repeated sweep): never recompute
        done = json.loads(done_file.read_text())
        _append_jsonl(workdir / "attempts.jsonl", {"kind": "cached", "trial_id": trial_id, "time": time.time(), **where})
        final = {**done["metrics"], **{k: done.get(k) for k in TRIAL_INFO if k in done}, "cached": 1}
        if ctx.mlflow:
            _mlflow_trial_end(ctx, trial_id, key, point, mlflow_params(ctx.base, params), final,
                              done.get("history", []), "FINISHED")
        report({**final, "sweep_final": 1})
        return final
    _append_jsonl(workdir / "attempts.jsonl", {"kind": "run", "trial_id": trial_id, "time": time.time(), **where})

    run_id, tracker = None, None
    if ctx.mlflow:
        try:
            tracker = Tracker(ctx.mlflow["uri"])
            run_id, _ = tracker.open_child(ctx.mlflow["experiment_id"], ctx.mlflow["parent_run_id"], trial_id,
                                           run_name(point), mlflow_params(ctx.base, params),
                                           _child_tags(ctx, key, point))
        except Exception as e:  # noqa: BLE001 - MLflow is a window: the trial goes on, the driver logs it later
            print(f"warning: trial {trial_id} cannot reach MLflow ({type(e).__name__}: {e}); its run is logged "
                  "by the driver at the end", file=sys.stderr)
            run_id, tracker = None, None
    history: list[tuple[int, float]] = []

    def on_log(step: int, loss: float) -> None:
        history.append((int(step), float(loss)))
        if tracker is not None:
            try:
                tracker.log_metrics(run_id, {"distill_loss": loss}, step=int(step))
            except Exception:  # noqa: BLE001 - the curve is rebuilt from the results at the end
                pass
        report({"distill_loss": float(loss), "distill_step": int(step)})

    fn = load_trial_function(ctx.trial_spec, ctx.repo)
    try:
        metrics = fn(params, str(workdir), on_log=on_log) if accepts_on_log(fn) else fn(params, str(workdir))
        if not isinstance(metrics, dict):
            raise TypeError(f"{ctx.trial_spec} returned {type(metrics).__name__}, expected a dict of metrics")
    except BaseException as e:
        _append_jsonl(workdir / "attempts.jsonl", {"kind": "error", "trial_id": trial_id, "time": time.time(),
                                                  "error": f"{type(e).__name__}: {e}"})
        if tracker is not None:
            try:
                tracker.set_tags(run_id, {"sweep.status": "error", "sweep.error": f"{type(e).__name__}: {e}"})
                tracker.call("set_terminated", run_id, "FAILED")
            except Exception:  # noqa: BLE001
                pass
        raise
    finished = time.time()
    clean = clean_metrics(metrics)
    if history and "distill_loss" not in clean:
        clean["distill_loss"] = history[-1][1]
    info = {"started": started, "finished": finished, "wall_s": round(finished - started, 3), **where}
    _atomic_json(done_file, {"trial_id": trial_id, "point": point, "metrics": clean, "history": history,
                             "params": params, **info})
    if tracker is not None:
        _mlflow_trial_end(ctx, trial_id, key, point, None, {**clean, **info}, None, "FINISHED", tracker, run_id,
                          live_history=bool(history))
    final = {**clean, **info}
    report({**final, "sweep_final": 1})
    return final


def clean_metrics(metrics: dict) -> dict:
    """Numbers only (NaN -> None), without the keys that describe the trial; final_loss -> distill_loss."""
    out = {}
    for k, v in metrics.items():
        if k in DESCRIPTORS or isinstance(v, bool):
            continue
        if _finite(v):
            out[k] = float(v)
        elif v is None or isinstance(v, float):
            out[k] = None
    if "distill_loss" not in out and out.get("final_loss") is not None:
        out["distill_loss"] = out["final_loss"]
    return out


def _child_tags(ctx: TrialContext, key: str, point: dict) -> dict:
    return {"sweep.name": ctx.sweep_name, "sweep.key": key, "sweep.baseline": str(point.get("clock") == 1).lower(),
            "mlflow.runName": run_name(point)}


def _mlflow_trial_end(ctx, trial_id, key, point, flat_params, final, history, status, tracker=None, run_id=None,
                      live_history=False):
    """Log final metrics on the trial's child run; never fails the trial (the driver reconciles later)."""
    try:
        tracker = tracker or Tracker(ctx.mlflow["uri"])
        if run_id is None:
            run_id, new = tracker.open_child(ctx.mlflow["experiment_id"], ctx.mlflow["parent_run_id"], trial_id,
                                             run_name(point), flat_params, _child_tags(ctx, key, point))
            if history and new:
                tracker.log_history(run_id, "distill_loss", history)
        last = {k: v for k, v in final.items() if k not in ("started", "finished", "distill_loss", "cached")}
        tracker.log_metrics(run_id, last)
        if "distill_loss" in final and not history and not live_history:
            tracker.log_metrics(run_id, {"distill_loss": final["distill_loss"]})  # no curve: the final loss only
        tracker.set_tags(run_id, {"sweep.status": "complete", "sweep.node": final.get("node", ""),
                                  "sweep.gpu_ids": final.get("gpu_ids", "")})
        tracker.call("set_terminated", run_id, status)
    except Exception as e:  # noqa: BLE001
        print(f"warning: MLflow logging of trial {trial_id} failed ({type(e).__name__}: {e}); "
              "the driver logs it from the results at the end", file=sys.stderr)


def _trainable(config: dict, ctx: TrialContext) -> None:
    from ray import tune

    point = {d: config[d] for d in DIMENSIONS if d in config}
    run_point(ctx, point, tune.get_context().get_trial_id(), tune.report)


def _baseline_task(ctx: TrialContext, point: dict, trial_id: str, max_failures: int) -> dict:
    """The baseline as a plain Ray task, retried like a trial; a failure is recorded, not raised."""
    for attempt in range(max_failures + 1):
        try:
            return {"ok": True, "metrics": run_point(ctx, point, trial_id, lambda m: None)}
        except Exception as e:  # noqa: BLE001 - recorded as a failed baseline, the sweep goes on
            out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return out


# ============================================================================= results, fronts, summary
@dataclass
class Record:
    trial_id: str
    point: dict
    status: str  # complete | early_stopped | error | not_run
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    error: str = ""
    key: str = ""
    run_name: str = ""
    params: dict = field(default_factory=dict)  # flat dotted, as logged to MLflow
    attempts: int = 0
    info: dict = field(default_factory=dict)
    pareto: dict = field(default_factory=dict)
    recommended: bool = False

    @property
    def baseline(self) -> bool:
        return self.point.get("clock") == 1

    def column(self, dim: str):
        return self.point.get(dim)


def _attempts(sweep_dir: Path, key: str) -> int:
    f = sweep_dir / "work" / key / "attempts.jsonl"
    if not f.is_file():
        return 0
    return sum(1 for line in f.read_text().splitlines() if line and json.loads(line).get("kind") == "run")


def _record(ctx: TrialContext, sp: SweepParams, trial_id: str, point: dict, status: str, metrics: dict,
            history: list, error: str = "") -> Record:
    point = normalize_point(point, ctx.base)
    params = trial_params(ctx.base, sp, point, ctx.params_file)
    key = point_key(ctx.trial_spec, params, ctx.base, point)
    info = {k: metrics.pop(k) for k in TRIAL_INFO if k in metrics}
    return Record(trial_id=trial_id, point=point, status=status, metrics=clean_metrics(metrics), history=history,
                  error=error, key=key, run_name=run_name(point), params=mlflow_params(ctx.base, params),
                  attempts=_attempts(Path(ctx.sweep_dir), key), info=info)


def records_from_results(ctx: TrialContext, sp: SweepParams, grid) -> list[Record]:
    out = []
    for r in grid:
        cfg = r.config
        if cfg is None and r.path and (Path(r.path) / "params.json").is_file():  # failed before its first report
            cfg = json.loads((Path(r.path) / "params.json").read_text())
        cfg = cfg or {}
        point = {d: cfg[d] for d in DIMENSIONS if d in cfg}
        last = dict(r.metrics or {})
        trial_id = last.get("trial_id") or (Path(r.path).name if r.path else f"trial-{len(out)}")
        history = []
        df = r.metrics_dataframe
        if df is not None and "distill_step" in df.columns and "distill_loss" in df.columns:
            h = df[df["distill_step"].notna()]
            history = [(int(s), float(v)) for s, v in zip(h["distill_step"], h["distill_loss"])]
        metrics = {k: v for k, v in last.items() if k not in RAY_KEYS}
        if r.error is not None:
            status, error = "error", error_text(r.error)
            metrics = {}
        elif last.get("sweep_final"):
            status, error = "complete", ""
        elif history:
            status, error = "early_stopped", ""
            metrics = {"distill_loss": history[-1][1]}
        else:
            status, error = "not_run", ""
        out.append(_record(ctx, sp, trial_id, point, status, metrics, history, error))
    return sorted(out, key=lambda rec: rec.trial_id)


def error_text(err: BaseException) -> str:
    """The trial's own exception (not Ray's wrapper with its traceback), as 'Type: message'."""
    cause = getattr(err, "cause", None) or err
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:
        cause = cause.cause
    text = f"{type(cause).__name__}: {cause}"
    if "RayTaskError" in text or "Traceback" in text:  # no cause attached: keep the last line of the traceback
        lines = [line for line in str(err).splitlines() if line.strip()]
        text = lines[-1].strip() if lines else text
    return text


def baseline_from_file(path: Path) -> dict:
    data = json.loads(path.read_text())
    b = data.get("baseline") if isinstance(data, dict) else None
    if not isinstance(b, dict):
        raise SweepConfigError([("sweep.baseline", f"{path} has no `baseline` entry")])
    return b


def analyse(records: list[Record], sp: SweepParams, base: dict) -> dict:
    """Pareto flags on the records (in place) and the summary: baseline, recommendation, fronts."""
    from clockwork.pareto import operating_point, pareto_front

    done = [r for r in records if r.status in ("complete", "from_file")]
    rows = [r.metrics for r in done]
    fronts = {}
    for name, (x, xm, y, ym) in FRONTS.items():
        idx = pareto_front(rows, x, y, xm, ym)
        fronts[name] = [done[i].trial_id for i in idx]
    for r in records:
        r.pareto = {name: r.trial_id in ids for name, ids in fronts.items()}
        r.recommended = False
    baselines = [r for r in done if r.baseline and _finite(r.metrics.get("fid"))]
    ref_steps = _dotted_get(base, "sampling.steps")
    ref = next((b for b in baselines if b.column("steps") == ref_steps), None)
    if ref is None and baselines:
        ref = max(baselines, key=lambda b: (b.column("steps") or 0))
    summary: dict[str, Any] = {
        "n_trials": len(records),
        "status": {s: sum(r.status == s for r in records) for s in sorted({r.status for r in records})},
        "fronts": fronts, "baseline": None, "recommended": None,
        "fid_tolerance": sp.fid_tolerance, "fid_tolerance_relative": sp.fid_tolerance_relative,
    }
    if ref is None:
        summary["note"] = "no baseline FID (sweep.baseline: none, or the baseline failed): no recommendation"
        return summary
    base_fid, base_gflops = float(ref.metrics["fid"]), ref.metrics.get("gflops")
    for r in records:
        if _finite(base_gflops) and _finite(r.metrics.get("gflops")) and base_gflops > 0:
            r.metrics["gflops_saving"] = round(1 - float(r.metrics["gflops"]) / float(base_gflops), 4)
    summary["baseline"] = {"trial_id": ref.trial_id, "run_name": ref.run_name,
                           **{k: ref.metrics.get(k) for k in METRICS}}
    i = operating_point(rows, base_fid, sp.fid_tolerance, quality="fid", cost="gflops",
                        relative=sp.fid_tolerance_relative)
    if i is not None:
        rec = done[i]
        rec.recommended = True
        summary["recommended"] = {
            "trial_id": rec.trial_id, "run_name": rec.run_name, "point": rec.point,
            **{d: rec.column(d) for d in DIMENSIONS if d != "seed"},
            **{k: rec.metrics.get(k) for k in (*METRICS, "gflops_saving")},
            "fid_delta": round(float(rec.metrics["fid"]) - base_fid, 4),
            "latency_ratio": (round(rec.metrics["latency_ms"] / ref.metrics["latency_ms"], 4)
                              if _finite(rec.metrics.get("latency_ms")) and _finite(ref.metrics.get("latency_ms"))
                              and ref.metrics["latency_ms"] > 0 else None),
        }
    return summary


def _row(r: Record) -> dict:
    m = r.metrics
    row = {"trial_id": r.trial_id, **{d: r.column(d) for d in ("clock", "width", "cut", "steps", "adaptor")}}
    if r.baseline:
        row["adaptor"] = "none"
    row.update({k: m.get(k) for k in METRICS})
    row.update(status=r.status, **{f"pareto_{n}": r.pareto.get(n, False) for n in FRONTS},
               baseline=r.baseline, recommended=r.recommended, gflops_saving=m.get("gflops_saving"),
               distill_loss=m.get("distill_loss"), heldout_mse=m.get("heldout_mse"), attempts=r.attempts,
               wall_s=r.info.get("wall_s"), node=r.info.get("node"), gpu_ids=r.info.get("gpu_ids"),
               started=r.info.get("started"), finished=r.info.get("finished"), run_name=r.run_name, key=r.key,
               error=r.error[:300])
    return row


def write_outputs(sweep_dir: Path, records: list[Record], summary: dict) -> list[Path]:
    """results.csv, trials.jsonl, summary.json and the front plots (if matplotlib is there)."""
    rows = [_row(r) for r in records]
    with open(sweep_dir / "results.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(sweep_dir / "results.csv.tmp", sweep_dir / "results.csv")
    tmp = sweep_dir / "trials.jsonl.tmp"
    tmp.write_text("".join(json.dumps(asdict(r), default=str) + "\n" for r in records))
    os.replace(tmp, sweep_dir / "trials.jsonl")
    with open(sweep_dir / "pareto.csv", "w", newline="") as f:
        cols = ["front", "rank", "trial_id", "run_name", "clock", "width", "cut", "steps", "adaptor",
                "fid", "clip", "gflops", "gflops_saving", "latency_ms"]
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        by_id = {r.trial_id: (r, row) for r, row in zip(records, rows)}
        for name, ids in summary["fronts"].items():
            for rank, tid in enumerate(ids):
                r, row = by_id[tid]
                w.writerow({"front": name, "rank": rank, **{c: row.get(c, "") for c in cols[2:]}})
    _atomic_json(sweep_dir / "summary.json", summary)
    return [sweep_dir / "results.csv", sweep_dir / "trials.jsonl", sweep_dir / "pareto.csv",
            sweep_dir / "summary.json", *plot_fronts(sweep_dir, records, summary)]


AXIS = {"gflops": "GFLOPs per image (incl. CFG)", "fid": "FID (lower is better)",
        "clip": "CLIP score (higher is better)", "latency_ms": "latency of the UNet loop (ms)"}


def plot_fronts(sweep_dir: Path, records: list[Record], summary: dict) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; the front plots are made by --import-results", file=sys.stderr)
        return []
    done = [r for r in records if r.status in ("complete", "from_file")]
    paths = []
    for name, (x, _, y, _) in FRONTS.items():
        pts = [(r, float(r.metrics[x]), float(r.metrics[y])) for r in done
               if _finite(r.metrics.get(x)) and _finite(r.metrics.get(y))]
        fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
        if pts:
            err = [r.metrics.get(f"{y}_std") for r, _, _ in pts]
            if all(_finite(e) for e in err):  # the metric's own uncertainty (FID: bootstrap std)
                ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=err, fmt="none", ecolor="#d0d0d0",
                            elinewidth=1, zorder=1, label=f"± {y}_std")
            ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=28, c="#b0b0b0", label="trial", zorder=2)
            front = [p for p in pts if p[0].pareto.get(name)]
            front.sort(key=lambda p: p[1])
            ax.plot([p[1] for p in front], [p[2] for p in front], "-o", c="#d62728", ms=6, lw=1.5,
                    label="Pareto front", zorder=3)
            for r, px, py in pts:
                if r.pareto.get(name) or r.baseline:
                    ax.annotate(r.run_name, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for r, px, py in pts:
                if r.baseline:
                    ax.scatter([px], [py], marker="*", s=220, c="#1f77b4", label="baseline (clock 1)", zorder=4)
                if r.recommended:
                    ax.scatter([px], [py], s=260, facecolors="none", edgecolors="#2ca02c", linewidths=2,
                               label="recommended", zorder=5)
        ax.set_xlabel(AXIS[x])
        ax.set_ylabel(AXIS[y])
        ax.set_title(f"{sweep_dir.name}: {y} vs {x} ({sum(r.pareto.get(name, False) for r in done)} on the front "
                     f"of {len(pts)} points)", fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        fig.tight_layout()
        p = sweep_dir / f"pareto_{name}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def _g(v) -> str:
    return f"{v:.4g}" if _finite(v) else "-"


def format_summary(name: str, records: list[Record], summary: dict, wall_s: float | None = None) -> str:
    import pandas as pd

    rows = []
    for r in records:
        m = r.metrics
        rows.append({
            "trial": r.run_name, "status": r.status,
            "fid": m.get("fid"), "clip": m.get("clip"), "gflops": m.get("gflops"),
            "saving": m.get("gflops_saving"), "ms": m.get("latency_ms"), "loss": m.get("distill_loss"),
            "front": "".join(c for n, c in zip(FRONTS, "FCL") if r.pareto.get(n)) or "-",
            "": "<- recommended" if r.recommended else ("baseline" if r.baseline else ""),
        })
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["gflops", "fid"], na_position="last")
    counts = ", ".join(f"{n} {s}" for s, n in summary["status"].items())
    head = f"Sweep {name}: {summary['n_trials']} trials ({counts})" + (f" in {wall_s:.0f} s" if wall_s else "")
    lines = [head, df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(no trials)",
             "front: F = FID vs GFLOPs, C = CLIP vs GFLOPs, L = FID vs latency"]
    b, rec = summary.get("baseline"), summary.get("recommended")
    if b:
        lines.append(f"Baseline ({b['run_name']}): FID {_g(b['fid'])}, CLIP {_g(b.get('clip'))}, "
                     f"GFLOPs {_g(b.get('gflops'))}, latency {_g(b.get('latency_ms'))} ms")
    tol = (f"{100 * summary['fid_tolerance']:.3g}% of the baseline" if summary["fid_tolerance_relative"]
           else f"+{summary['fid_tolerance']:g} FID")
    if rec:
        saving = rec.get("gflops_saving")
        dims = ", ".join(f"{d} {rec[d]}" for d in DIMENSIONS if rec.get(d) is not None)
        lines.append(
            f"Recommended operating point (largest FLOPs saving with FID within {tol}): {rec['run_name']} = {dims}: "
            f"GFLOPs {_g(rec.get('gflops'))} ({'-' if saving is None else f'{100 * saving:.1f}% saved'}), "
            f"FID {_g(rec['fid'])} ({rec['fid_delta']:+.3g}), CLIP {_g(rec.get('clip'))}, "
            f"latency {_g(rec.get('latency_ms'))} ms")
    elif b:
        lines.append(f"No point stays within {tol} of the baseline FID: ship the baseline.")
    if b and _finite(b.get("fid_std")) and b["fid_std"] > (summary["fid_tolerance"] * b["fid"]
                                                           if summary["fid_tolerance_relative"] else summary["fid_tolerance"]):
        lines.append(f"Caution: the baseline FID's bootstrap std ({b['fid_std']:.3g}) exceeds the tolerance, so the "
                     "FID differences here are within sampling noise; evaluate more images (n_samples) to decide.")
    else:
        lines.append(summary.get("note", "no recommendation"))
    return "\n".join(lines)


# ========================================================================== MLflow from the driver
def sync_mlflow(sweep_dir: Path, state: dict, records: list[Record], summary: dict, artifacts: list[Path],
                tracker: Tracker, finished: bool = True) -> str:
    """Make MLflow match the records: the parent run, one child per trial (created if a trial could not log
    it), final metrics, statuses, Pareto tags, and the tables and plots on the parent. Idempotent."""
    trk = state.get("mlflow") or {}
    exp_id = tracker.experiment_id(trk.get("experiment") or DEFAULT_EXPERIMENT)
    parent_id = trk.get("parent_run_id") if trk.get("uri") == tracker.uri else None
    if parent_id is None:
        found = tracker.search(exp_id, f"tags.`sweep.uid` = '{state['uid']}' and tags.`sweep.role` = 'parent'")
        parent_id = found[0].info.run_id if found else open_parent(tracker, exp_id, state)
    kids = tracker.children(exp_id, parent_id)
    status_map = {"complete": "FINISHED", "from_file": "FINISHED", "early_stopped": "KILLED", "error": "FAILED",
                  "not_run": "KILLED"}
    run_ids = {}
    ctx_like = TrialContext(repo=str(REPO_ROOT), sweep_dir=str(sweep_dir), sweep_name=state["name"],
                            trial_spec=state["sweep"]["trial"], base={}, sweep=state["sweep"])
    for r in records:
        run = kids.get(r.trial_id)
        t_start = int(r.info["started"] * 1000) if _finite(r.info.get("started")) else None
        t_end = int(r.info["finished"] * 1000) if _finite(r.info.get("finished")) else None
        if run is None:  # the trial could not log (no mlflow on its machine, or --no-mlflow): log it now
            run = tracker.call("create_run", exp_id, run_name=r.run_name, start_time=t_start,
                               tags={"mlflow.parentRunId": parent_id, "sweep.trial_id": r.trial_id,
                                     **_child_tags(ctx_like, r.key, r.point)})
            run_id = run.info.run_id
            tracker.log_params(run, r.params)
            tracker.log_history(run_id, "distill_loss", r.history)
            have = {"distill_loss": None} if r.history else {}
        else:
            run_id = run.info.run_id
            tracker.log_params(run, r.params)
            have = run.data.metrics
        missing = {k: v for k, v in {**r.metrics, **{k: r.info[k] for k in ("wall_s",) if k in r.info}}.items()
                   if k not in have or (k == "gflops_saving" and have.get(k) != v)}
        if missing:
            tracker.log_metrics(run_id, missing)
        tags = {"sweep.status": r.status, "sweep.attempts": r.attempts,
                **{f"pareto.{n}": str(r.pareto.get(n, False)).lower() for n in FRONTS},
                "sweep.recommended": str(r.recommended).lower()}
        if r.error:
            tags["sweep.error"] = r.error
        for k in ("node", "gpu_ids"):
            if r.info.get(k):
                tags[f"sweep.{k}"] = r.info[k]
        tracker.set_tags(run_id, tags)
        # Terminate only what is not already so: the UI's durations are the trials' own, not this sync's.
        want = status_map.get(r.status, "FINISHED")
        end = run.info.end_time
        if run.info.status != want or (t_end and (not end or abs(end - t_end) > 2000)):
            tracker.call("set_terminated", run_id, want, end_time=t_end)
        run_ids[r.trial_id] = run_id

    # The parent: what a person opens first.
    for p in artifacts:
        if p.is_file():
            tracker.call("log_artifact", parent_id, str(p), "pareto" if p.name.startswith("pareto") else None)
    try:
        import pandas as pd

        log_table(tracker, parent_id, pd.read_csv(sweep_dir / "pareto.csv"), "pareto/fronts.json")
        log_table(tracker, parent_id, pd.read_csv(sweep_dir / "results.csv"), "results.json")
    except Exception as e:  # noqa: BLE001 - the CSV artifacts above hold the same
        print(f"note: MLflow tables skipped ({type(e).__name__}: {e})", file=sys.stderr)
    pm: dict[str, Any] = {f"trials.{s}": n for s, n in summary["status"].items()}
    b, rec = summary.get("baseline"), summary.get("recommended")
    if b:
        pm.update({f"baseline.{k}": b.get(k) for k in METRICS})
    if rec:
        pm.update({f"recommended.{k}": rec.get(k) for k in (*METRICS, "gflops_saving", "fid_delta", "latency_ratio")})
    pm.update({f"front.{n}.size": len(ids) for n, ids in summary["fronts"].items()})
    if summary.get("wall_s"):
        pm["wall_s"] = summary["wall_s"]
    tracker.log_metrics(parent_id, pm)
    ptags = {"sweep.recommended_trial": rec["trial_id"] if rec else "",
             "sweep.recommended_run_id": run_ids.get(rec["trial_id"], "") if rec else "",
             "sweep.recommended": rec["run_name"] if rec else "none"}
    tracker.set_tags(parent_id, ptags)
    want = "FINISHED" if finished else "KILLED"
    if tracker.call("get_run", parent_id).info.status != want:
        tracker.call("set_terminated", parent_id, want)
    return parent_id


def log_table(tracker: Tracker, run_id: str, df, artifact_file: str) -> None:
    """An MLflow table artifact (what ``log_table`` writes), replaced rather than appended to, so that syncing
    the same sweep again (--resume, --import-results) leaves one copy of each row."""
    import tempfile

    folder, name = os.path.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        df.to_json(path, orient="split", index=False, date_format="iso")
        tracker.call("log_artifact", run_id, str(path), folder or None)
    tags = tracker.call("get_run", run_id).data.tags
    logged = json.loads(tags.get("mlflow.loggedArtifacts", "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        tracker.set_tags(run_id, {"mlflow.loggedArtifacts": json.dumps(logged + [entry])})


def open_parent(tracker: Tracker, exp_id: str, state: dict) -> str:
    run = tracker.call("create_run", exp_id, run_name=state["name"],
                       tags={"sweep.name": state["name"], "sweep.uid": state["uid"], "sweep.role": "parent",
                             "mlflow.note.content": f"Clockwork sweep `{state['name']}`: one child run per trial; "
                             "filter children with tags.`pareto.fid_gflops` = 'true' for the FID-vs-GFLOPs front."})
    flat = flatten({"sweep": state["sweep"]})
    flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
    tracker.log_params(run, flat)
    return run.info.run_id


# ============================================================================================ driver
def _state_file(sweep_dir: Path) -> Path:
    return sweep_dir / "sweep.json"


def _comparable(sweep: dict) -> dict:
    """The parts of a sweep that define its trials (resources may change between runs)."""
    return {k: v for k, v in sweep.items() if k not in ("resources", "max_concurrent", "max_failures", "name",
                                                         "fid_tolerance", "fid_tolerance_relative")}


def check_points(base: dict, sp: SweepParams, points: list[dict], source: str) -> None:
    """Every trial's params through the pipeline's own validator (when the config is a full params.yaml):
    a cut the teacher cannot take, a clock the step count cannot hold, ... fail before anything runs."""
    if not is_full_params(base):
        return
    try:
        from pipeline import config as pconfig
    except ImportError:
        return
    problems: list[tuple[str, str]] = []
    for p in points:
        n = nested_params(base, trial_params(base, sp, p))
        cuts = _dotted_get(n, "trajectories.cuts")
        added = isinstance(cuts, list) and "cut" in p and p["cut"] not in cuts
        if added:
            n["trajectories"]["cuts"] = sorted(cuts + [p["cut"]])  # train_and_evaluate unrolls a missing cut once
        try:
            pconfig.validate(n, root=REPO_ROOT, source=source)
        except pconfig.ConfigError as e:
            for k, m in e.problems:
                if not (added and k == "trajectories.cuts"):  # the same problem as `cut`, said twice
                    problems.append((f"trial {run_name(p)}: {k}", m))
        if len(problems) > 12:
            break
    if problems:
        raise SweepConfigError(problems, source)


def _make_search(sp: SweepParams, points: list[dict]):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # (Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator: it takes its own.)
    limit = sp.max_concurrent or 0
    if sp.search.algorithm == "grid":
        return BasicVariantGenerator(points_to_evaluate=points, random_state=sp.search.seed,
                                     max_concurrent=limit), len(points)
    if sp.search.algorithm == "random":
        return BasicVariantGenerator(random_state=sp.search.seed, max_concurrent=limit), sp.search.num_samples
    from ray import tune

    try:
        searcher = tune.create_searcher(sp.search.algorithm, metric=sp.search.metric, mode=sp.search.mode,
                                        **sp.search.options)
    except (ImportError, AssertionError, TypeError, ValueError) as e:
        raise SweepConfigError([("sweep.search.algorithm",
                                 f"cannot create {sp.search.algorithm!r}: {e} (is its package installed? "
                                 f"e.g. pip install {sp.search.algorithm})")]) from None

    class FinalMetricsOnly(ConcurrencyLimiter):
        """Model-based searchers see only final results (the loss reports lack their metric)."""

        def on_trial_result(self, trial_id, result):
            ms = [self.metric] if isinstance(self.metric, str) else (self.metric or [])
            if all(m in result for m in ms):
                super().on_trial_result(trial_id, result)

    return FinalMetricsOnly(searcher, max_concurrent=sp.max_concurrent or 10**6), sp.search.num_samples


def _make_scheduler(sp: SweepParams):
    from ray import tune

    name = SCHEDULERS[sp.scheduler.name]
    if name == "fifo":
        return None
    opts = dict(sp.scheduler.options)
    if name in ("async_hyperband", "hyperband"):
        # Tune stops a trial once time_attr reaches max_t; trials must always reach their evaluation.
        opts.setdefault("max_t", 10**6)
    try:
        return tune.create_scheduler(name, metric=sp.scheduler.metric, mode=sp.scheduler.mode,
                                     time_attr=sp.scheduler.time_attr, **opts)
    except TypeError as e:
        raise SweepConfigError([("sweep.scheduler.options", str(e))]) from None


def _reporter(sp: SweepParams, dims: list[str]):
    from ray.tune import CLIReporter

    return CLIReporter(
        parameter_columns={d: d for d in dims},
        metric_columns={"distill_loss": "loss", "fid": "fid", "clip": "clip", "gflops_ratio": "gflops_x",
                        "latency_ms": "ms"},
        max_report_frequency=15, max_progress_rows=40, sort_by_metric=False)


def check_inputs(root: Path) -> None:
    """Before Ray starts: the files every default trial reads (the `prepare` stage's output) must exist.

    Trials would otherwise each fail (and be retried) with the same FileNotFoundError. The trajectory store may
    be missing: the first trial that needs it unrolls it (slower; docs/SWEEP.md says to run the stage first).
    """
    prepared = root / "data" / "prepared"
    missing = [f for f in ("prompts.json", "embeddings.safetensors", "reference_stats.npz") if not (prepared / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{prepared} lacks {', '.join(missing)}: run `dvc repro trajectories` (or "
                                "`python pipeline/prepare.py`) with the same params file before the sweep; nothing run")


def run_sweep(config: str | os.PathLike = "params.yaml", name: str | None = None, *, resume: bool = False,
              overwrite: bool = False, address: str | None = None, gpus_per_trial: float | None = None,
              cpus_per_trial: float | None = None, max_concurrent: int | None = None, use_mlflow: bool = True,
              tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
              sweeps_dir: str | os.PathLike = "sweeps", num_cpus: int | None = None, num_gpus: int | None = None,
              retry_errored: bool = False, dry_run: bool = False, verbose: bool = False) -> dict:
    """Run (or resume) a sweep; returns the summary. See the module docstring and docs/SWEEP.md."""
    config = Path(config)
    raw = read_config(config)
    sp = parse_sweep(raw, config.name)
    updates = {}
    if gpus_per_trial is not None or cpus_per_trial is not None:
        res = sp.resources.model_dump()
        res.update({k: v for k, v in (("gpus_per_trial", gpus_per_trial), ("cpus_per_trial", cpus_per_trial))
                    if v is not None})
        updates["resources"] = res
    if max_concurrent is not None:
        updates["max_concurrent"] = max_concurrent
    if updates:
        try:
            sp = SweepParams.model_validate({**sp.model_dump(), **updates})
        except ValidationError as e:
            raise SweepConfigError(_problems(e), "command line") from None
    name = name or sp.name
    base = {k: v for k, v in raw.items() if k != "sweep"}
    points = grid_points(sp, base) if sp.search.algorithm == "grid" else []
    baselines = baseline_points(sp, base)
    check_points(base, sp, points + baselines, config.name)
    fn = load_trial_function(sp.trial)  # fail now, not in every trial
    if sp.scheduler.name != "fifo" and not accepts_on_log(fn):
        print(f"warning: {sp.trial} takes no on_log callback, so {sp.scheduler.name} sees no distillation losses "
              "and cannot stop trials early", file=sys.stderr)
    search_alg, num_samples = _make_search(sp, points)
    scheduler = _make_scheduler(sp)
    if sp.baseline.endswith(".json") and not (REPO_ROOT / sp.baseline).is_file() and not Path(sp.baseline).is_file():
        raise SweepConfigError([("sweep.baseline", f"{sp.baseline} not found (run `dvc repro evaluate`, or use "
                                 "`baseline: trial`)")], config.name)

    sweep_dir = Path(sweeps_dir).resolve() / name
    state_file = _state_file(sweep_dir)
    if overwrite and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    if resume:
        if not state_file.is_file():
            raise SystemExit(f"error: nothing to resume: {state_file} does not exist (run without --resume)")
        state = json.loads(state_file.read_text())
        if _comparable(state["sweep"]) != _comparable(sp.model_dump()):
            raise SystemExit(f"error: the `sweep:` section changed since {sweep_dir} started; start a new sweep "
                             "with another --name, or --overwrite this one")
    elif state_file.is_file():
        raise SystemExit(f"error: {sweep_dir} exists; pass --resume to continue it or --overwrite to start over")
    else:
        state = {"name": name, "uid": uuid.uuid4().hex[:12], "created": time.time(), "config": str(config),
                 "sweep": sp.model_dump(), "mlflow": None}
    state["sweep"] = sp.model_dump()

    if dry_run:
        print(f"{len(points) or num_samples} trials + {len(baselines)} baseline(s) in {sweep_dir}")
        for p in baselines + points:
            print(" ", run_name(p), json.dumps(p))
        return {"points": points, "baselines": baselines}

    if sp.trial == DEFAULT_TRIAL:
        check_inputs(REPO_ROOT)
    tracker = None
    if use_mlflow and importlib.util.find_spec("mlflow") is None:
        print("note: mlflow is not installed here: recording to sweeps/<name>/ only; log the sweep later with "
              f"`python pipeline/sweep.py --import-results {Path(sweeps_dir) / name}`", file=sys.stderr)
        use_mlflow = False
    if use_mlflow:
        uri = absolute_uri(tracking_uri or default_tracking_uri())
        tracker = Tracker(uri)
        exp_id = tracker.experiment_id(experiment)
        old = state.get("mlflow") or {}
        if old.get("uri") == uri and old.get("parent_run_id"):
            parent_id = old["parent_run_id"]
            tracker.call("update_run", parent_id, status="RUNNING")
        else:
            parent_id = open_parent(tracker, exp_id, state)
        state["mlflow"] = {"uri": uri, "experiment": experiment, "experiment_id": exp_id, "parent_run_id": parent_id}
        print(f"MLflow: experiment {experiment!r}, parent run {parent_id} at {uri}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(state_file, state)

    import ray
    from ray import tune

    started_ray = False
    if not ray.is_initialized():
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": verbose}
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            kwargs["address"] = address  # "auto" joins a cluster that `ray start` runs on this machine
        else:  # a fresh local instance, even if some `ray start` cluster runs here
            kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
        ray.init(**kwargs)
        started_ray = True
    try:
        cluster = ray.cluster_resources()
        gpus = cluster.get("GPU", 0)
        res = sp.resources
        resources = {"cpu": res.cpus_per_trial}
        if gpus and res.gpus_per_trial > 0:
            if res.gpus_per_trial > gpus:
                raise SystemExit(f"error: each trial asks for {res.gpus_per_trial} GPUs but the cluster has {gpus:g}")
            resources["gpu"] = res.gpus_per_trial
        print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {gpus:g} GPUs; per trial {resources}")

        ctx = TrialContext(repo=str(REPO_ROOT), sweep_dir=str(sweep_dir), sweep_name=name, trial_spec=sp.trial,
                           base=base, sweep=sp.model_dump(), params_file=str(config.resolve()), mlflow=state["mlflow"])
        trainable = tune.with_resources(tune.with_parameters(_trainable, ctx=ctx), resources)
        ray_dir = sweep_dir / "ray"
        t0 = time.time()
        # The baseline is not a point of the search space: it runs beside the Tune trials as plain tasks.
        task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources.get("gpu", 0),
                          max_retries=sp.max_failures)(_baseline_task)  # max_retries: a worker that dies
        futures = [(p, task.remote(ctx, p, run_name(p), sp.max_failures)) for p in baselines]
        if resume and tune.Tuner.can_restore(str(ray_dir)):
            print(f"Resuming {ray_dir} (finished trials are kept)")
            tuner = tune.Tuner.restore(str(ray_dir), trainable, resume_unfinished=True, resume_errored=retry_errored)
        else:
            if resume:
                print(f"note: no Tune state in {ray_dir}; starting the trials again (finished ones are read back "
                      "from work/)")
            dims = [d for d in DIMENSIONS if any(d in p for p in points)] if points else \
                [d for d in DIMENSIONS if getattr(sp.space, d) is not None]
            tuner = tune.Tuner(
                trainable, param_space=param_space(sp, points),
                tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                            reuse_actors=False,
                                            trial_dirname_creator=lambda t: t.trial_id),
                run_config=tune.RunConfig(name="ray", storage_path=str(sweep_dir),
                                          failure_config=tune.FailureConfig(max_failures=sp.max_failures),
                                          progress_reporter=_reporter(sp, dims), verbose=1))
        grid = tuner.fit()
        records = records_from_results(ctx, sp, grid)
        for p, fut in futures:
            out = ray.get(fut)
            if out["ok"]:
                records.insert(0, _record(ctx, sp, run_name(p), p, "complete", dict(out["metrics"]), []))
            else:
                print(f"baseline {run_name(p)} failed: {out['error']}\n{out['traceback']}", file=sys.stderr)
                records.insert(0, _record(ctx, sp, run_name(p), p, "error", {}, [], out["error"]))
        wall = time.time() - t0
    finally:
        if started_ray:
            ray.shutdown()
    if sp.baseline.endswith(".json"):
        path = Path(sp.baseline) if Path(sp.baseline).is_absolute() else REPO_ROOT / sp.baseline
        b = baseline_from_file(path)
        point = normalize_point({"clock": 1, "steps": b.get("steps")}, base)
        rec = _record(ctx, sp, f"baseline:{sp.baseline}", point, "from_file",
                      {k: b.get(k) for k in (*METRICS, "kid_std", "clip_std")}, [])
        records.insert(0, rec)
    return finish(sweep_dir, state, sp, base, records, tracker, wall)


def finish(sweep_dir: Path, state: dict, sp: SweepParams, base: dict, records: list[Record],
           tracker: Tracker | None, wall: float | None = None) -> dict:
    summary = analyse(records, sp, base)
    if wall is not None:
        summary["wall_s"] = round(wall, 2)
    elif state.get("wall_s"):
        summary["wall_s"] = state["wall_s"]
    complete = not any(r.status == "not_run" for r in records)
    artifacts = write_outputs(sweep_dir, records, summary)
    if wall is not None:
        state["wall_s"] = round(wall, 2)
        _atomic_json(_state_file(sweep_dir), state)
    print(format_summary(sweep_dir.name, records, summary, summary.get("wall_s")))
    if tracker is not None:
        parent = sync_mlflow(sweep_dir, state, records, summary, artifacts, tracker, finished=complete)
        summary["mlflow_parent_run_id"] = parent
        print(f"MLflow: parent run {parent} ({len(records)} child runs) at {tracker.uri}")
    if not complete:
        print(f"Sweep interrupted: {sum(r.status == 'not_run' for r in records)} trials did not run; "
              f"continue with `python pipeline/sweep.py --name {sweep_dir.name} --resume`")
    print(f"Results: {sweep_dir / 'results.csv'}")
    return summary


def import_results(sweep_dir: str | os.PathLike, tracking_uri: str | None = None,
                   experiment: str | None = None) -> dict:
    """Log a sweep recorded with --no-mlflow (e.g. on a GPU machine without mlflow) into MLflow."""
    sweep_dir = Path(sweep_dir).resolve()
    state_file, trials = _state_file(sweep_dir), sweep_dir / "trials.jsonl"
    if not state_file.is_file() or not trials.is_file():
        raise SystemExit(f"error: {sweep_dir} holds no finished sweep (sweep.json and trials.jsonl are needed)")
    state = json.loads(state_file.read_text())
    sp = SweepParams.model_validate(state["sweep"])
    raw = read_config(REPO_ROOT / state["config"]) if (REPO_ROOT / state["config"]).is_file() else {}
    base = {k: v for k, v in raw.items() if k != "sweep"}
    records = []
    for line in trials.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["history"] = [tuple(h) for h in d.get("history", [])]
            records.append(Record(**d))
    tracker = Tracker(absolute_uri(tracking_uri or default_tracking_uri()))
    state.setdefault("mlflow", None)
    if experiment or not state["mlflow"]:
        state["mlflow"] = {"experiment": experiment or DEFAULT_EXPERIMENT}
    return finish(sweep_dir, state, sp, base, records, tracker)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See docs/SWEEP.md.")
    ap.add_argument("--config", default=os.environ.get("CLOCKWORK_PARAMS", "params.yaml"),
                    help="params file with a `sweep:` section (default: params.yaml)")
    ap.add_argument("--name", help="sweep name: results go to sweeps/<name>/ (default: sweep.name)")
    ap.add_argument("--resume", action="store_true", help="continue a killed or interrupted sweep")
    ap.add_argument("--retry-errored", action="store_true", help="with --resume: run failed trials again")
    ap.add_argument("--overwrite", action="store_true", help="delete sweeps/<name>/ and start over")
    ap.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, else a local one)")
    ap.add_argument("--gpus-per-trial", type=float, help="GPUs per trial when the cluster has GPUs (fractions share)")
    ap.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    ap.add_argument("--max-concurrent", type=int, help="at most this many trials at once (0 = no limit)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: all visible)")
    ap.add_argument("--no-mlflow", action="store_true", help="record to sweeps/<name>/ only; log later with --import-results")
    ap.add_argument("--import-results", metavar="SWEEP_DIR", help="log a recorded sweep (sweeps/<name>) into MLflow")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    ap.add_argument("--sweeps-dir", default="sweeps", help="where sweeps/<name>/ lives (default: ./sweeps)")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the trials, run nothing")
    ap.add_argument("--verbose", action="store_true", help="show the trials' own output")
    args = ap.parse_args(argv)
    try:
        if args.import_results:
            import_results(args.import_results, args.tracking_uri, args.experiment)
            return 0
        summary = run_sweep(args.config, args.name, resume=args.resume, overwrite=args.overwrite, address=args.address,
                            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                            max_concurrent=args.max_concurrent, use_mlflow=not args.no_mlflow,
                            tracking_uri=args.tracking_uri, experiment=args.experiment, sweeps_dir=args.sweeps_dir,
                            num_cpus=args.num_cpus, num_gpus=args.num_gpus, retry_errored=args.retry_errored,
                            dry_run=args.dry_run, verbose=args.verbose)
    except SweepConfigError as e:
        print(f"error: invalid sweep, nothing run\n{e}", file=sys.stderr)
        return 2
    except (ImportError, FileNotFoundError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    return 0 if summary.get("status", {}).get("not_run", 0) == 0 else 3


if __name__ == "__main__":
    # Run as the importable module `pipeline.sweep`, so Ray workers unpickle the trainable by reference.
    from pipeline import sweep as _sweep

    sys.exit(_sweep.main())
