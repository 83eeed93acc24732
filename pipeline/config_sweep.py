"""The `sweep:` section of params.yaml (docs/SWEEP.md): what Ray Tune sweeps, how, and how the answer is judged.

Validated like every other section (pipeline/config.py puts it in ``Params``; a file holding only a `sweep:`
section goes through :func:`parse_sweep`), with the same :class:`ConfigError` format:
``params.yaml: sweep.space.clock: ...``. Nothing here imports Ray, except to check a searcher's name that is
not built in.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config_sections import ADAPTOR_KINDS, DEFAULT_PARAMS, SPLITS, ConfigError, NonNegInt, PosInt, Section, \
    problems_from

SweepConfigError = ConfigError  # one error format for every section

DEFAULT_TRIAL = "pipeline.common:train_and_evaluate"
# Sweep dimension -> its params.yaml key (also the flat dotted MLflow param name). A trial function gets the
# dimensions by their short names, as pipeline.common.train_and_evaluate takes them. A clock is a period or a
# list of 0-based adaptor steps (then it is clock.adaptor_steps).
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
# The split every trial is scored on (sweep.split) travels to the trial function as this key of its params, and to
# MLflow as the child run's param SPLIT_PARAM. "val": the validation split (prepare.val_prompts, against
# prepare.val_reference_images); "heldout": the evaluation prompts, which then choose the recommendation.
SPLIT_KEY = "split"
SPLIT_PARAM = "sweep.split"
# What a sweep recorded before sweep.split existed was scored on: the first n_samples evaluation prompts.
LEGACY_SPLIT = "heldout"
INT_DISTRIBUTIONS = {"choice": None, "randint": 2, "qrandint": 3, "lograndint": 2}  # name -> number of args
SEARCHERS_BUILTIN = ("grid", "random")
SCHEDULERS = {"fifo": "fifo", "asha": "async_hyperband", "async_hyperband": "async_hyperband",
              "hyperband": "hyperband", "median_stopping_rule": "median_stopping_rule"}

NonNegFloat = Annotated[float, Field(ge=0)]
Schedule = Union[int, list[int]]
ClockDim = Union[list[Schedule], dict[str, list[Schedule]]]
IntDim = Union[list[int], dict[str, list[int]]]
StrDim = Union[list[str], dict[str, list[str]]]

_MIN = {"clock": 2, "width": 1, "cut": 1, "steps": 2}
_WHY = {
    "clock": "clock periods are integers >= 2 (clock 1 is the baseline, evaluated on its own: see `front_steps`)",
    "width": "adaptor widths are integers >= 1",
    "cut": "cuts are integers >= 1 (1 = the paper's default)",
    "steps": "step counts are integers >= 2",
}


def _check_schedule(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("an empty schedule runs no adaptor step: give 0-based adaptor steps, e.g. [2, 3, 4, 5]")
    if min(v) < 0 or len(set(v)) != len(v):
        raise ValueError(f"a schedule lists distinct 0-based adaptor steps (>= 0), got {v}")
    return sorted(v)


def _check_values(dim: str, values: list) -> list:
    if dim == "adaptor":
        bad = [v for v in values if v not in ADAPTOR_KINDS]
        if bad:
            raise ValueError(f"unknown adaptor kind(s) {bad}; choose from {list(ADAPTOR_KINDS)}")
        return values
    if dim == "clock":
        values = [_check_schedule(v) if isinstance(v, list) else v for v in values]
    bad = [v for v in values if not isinstance(v, list) and v < _MIN[dim]]
    if bad:
        raise ValueError(f"{_WHY[dim]}, got {bad}")
    return values


def _check_dim(dim: str, v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, list):
        if not v:
            raise ValueError("empty list: give at least one value")
        if len({json.dumps(x) for x in v}) != len(v):
            raise ValueError(f"duplicate values in {v}")
        return _check_values(dim, v)
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
    if len(args) != need or any(isinstance(a, list) for a in args):
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

    clock: ClockDim  # periods >= 2 and/or schedules (lists of 0-based adaptor steps)
    width: IntDim
    cut: IntDim
    steps: IntDim | None = None  # default: params.yaml sampling.steps
    adaptor: StrDim | None = None  # default: params.yaml adaptor.kind

    @field_validator("clock", "width", "cut", "steps", "adaptor")
    @classmethod
    def _dim(cls, v, info):
        return _check_dim(info.field_name, v)


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
        if v in SEARCHERS_BUILTIN:  # no Ray import for these: every stage validates this section
            return v
        try:
            from ray.tune.search import SEARCH_ALG_IMPORT
        except ImportError:  # no Ray here (e.g. --import-results): names are checked where the sweep runs
            return v
        known = set(SEARCHERS_BUILTIN) | (set(SEARCH_ALG_IMPORT) - {"variant_generator"})
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
    baseline: str = "trial"  # trial | none | a metrics JSON with `baseline` (+ `baseline_<k>steps`) entries
    # The plain baseline's step counts: the fewer-steps front every trial is scored against (ΔFID@FLOPs); the
    # space's step counts are always among them. Default: the space's step counts only.
    front_steps: list[PosInt] | None = None
    beat_margin: NonNegFloat = 1.0  # FID points a trial must beat the front by (clockwork.pareto.beats_fewer_steps)
    beat_sigmas: NonNegFloat = 2.0  # ... and this many standard deviations of its ΔFID@FLOPs
    fid_tolerance: NonNegFloat = 1.0  # secondary: the cheapest trial within this FID of the baseline
    fid_tolerance_relative: bool = False  # read fid_tolerance as a fraction of the baseline's FID
    resources: Resources = Resources()
    max_concurrent: NonNegInt = 0  # 0 = as many trials as the resources allow
    max_failures: NonNegInt = 2  # retries of a failing trial before it is recorded as failed
    # Where every trial is scored, so where the recommendation is chosen: val = the validation split
    # (prepare.val_prompts / prepare.val_reference_images: training-split images never distilled on); heldout = the
    # evaluation prompts (prepare.eval_prompts), which leaks the test set into the choice.
    split: Literal[SPLITS] = "val"
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

    @field_validator("front_steps")
    @classmethod
    def _steps(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"give distinct step counts, e.g. [3, 4, 5, 6, 7, 8]; got {v}")
        return sorted(v) if v else v

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
        if SPLIT_KEY in self.overrides:
            problems.append(f"overrides set {SPLIT_KEY!r}: the split every trial is scored on is `sweep.split` "
                            f"({' | '.join(SPLITS)}); remove it from overrides")
        if self.trial == DEFAULT_TRIAL:
            unknown = [k for k in self.overrides if k not in TRIAL_KEYS]
            if unknown:
                problems.append(f"overrides {unknown} are not parameters of {DEFAULT_TRIAL}; it takes "
                                f"{sorted(TRIAL_KEYS)} (everything else comes from the params file)")
        if self.baseline not in ("trial", "none") and not self.baseline.endswith(".json"):
            problems.append(f"baseline must be 'trial', 'none' or a metrics .json file, got {self.baseline!r}")
        if self.front_steps is not None and self.baseline != "trial":
            problems.append("front_steps are the step counts of the sweep's own baseline trials: they need "
                            f"`baseline: trial` (got {self.baseline!r})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def parse_sweep(raw: dict, source: str = DEFAULT_PARAMS) -> SweepParams:
    """The validated `sweep:` section of a params dict; :class:`ConfigError` names every bad key."""
    if not isinstance(raw, dict) or "sweep" not in raw:
        raise ConfigError([("sweep", "missing: add a `sweep:` section (see docs/SWEEP.md)")], source)
    section = raw["sweep"]
    if not isinstance(section, dict):
        raise ConfigError([("sweep", f"must be a mapping, got {type(section).__name__}")], source)
    return validate_sweep(section, source)


def recorded_sweep(section: dict) -> SweepParams:
    """The section a sweep recorded in its sweep.json, read with today's defaults - except the split: a sweep
    recorded before `sweep.split` existed scored its trials on the evaluation prompts (LEGACY_SPLIT)."""
    return SweepParams.model_validate({SPLIT_KEY: LEGACY_SPLIT, **section})


def validate_sweep(section: dict, source: str = DEFAULT_PARAMS) -> SweepParams:
    try:
        return SweepParams.model_validate(section)
    except ValidationError as e:
        raise ConfigError(problems_from(e, "sweep"), source) from None
