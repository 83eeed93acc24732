"""The points of a `sweep:` section: the grid, the plain baseline at each front step count, what each trial's
function is given (and MLflow is told), and Tune's search space."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.config_sweep import DIMENSIONS, SPLIT_KEY, SPLIT_PARAM, TRIAL_KEYS, ConfigError, SweepParams

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a default trial reads of the params file; problems elsewhere (ablate, report, ...) are not the trial's.
TRIAL_SECTIONS = ("world", "prepare", "sampling", "trajectories", "cut", "adaptor", "clock", "distill", "evaluate")


def dotted_get(d: dict, key: str, default=None):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def dotted_set(d: dict, key: str, value) -> None:
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


def training_free(kind: str | None) -> bool:
    """Whether adaptor ``kind`` needs no distillation (nor a width): the pipeline's own list
    (``pipeline.common.methods.TRAINING_FREE``: identity, forecast, ...), so that no list of kinds is kept here."""
    if not kind or kind == "none":
        return False
    from pipeline.common.methods import TRAINING_FREE

    return kind in TRAINING_FREE


def values(dim) -> list | None:
    """The values of a list or a ``choice``; ``None`` for a dimension left out or sampled from a range."""
    if dim is None or (isinstance(dim, dict) and "choice" not in dim):
        return None
    return list(dim["choice"] if isinstance(dim, dict) else dim)


def normalize_point(point: dict, base: dict | None = None) -> dict:
    """The full point of one trial: steps and adaptor from the params file when the space leaves them out;
    what does not matter dropped (width for the identity adaptor; all but steps for the baseline), so equal
    trials share a key."""
    p = {k: v for k, v in point.items() if v is not None and k in DIMENSIONS}
    for d in ("steps", "adaptor"):
        if d not in p and base and dotted_get(base, DIMENSIONS[d]) is not None:
            p[d] = dotted_get(base, DIMENSIONS[d])
    if p.get("clock") == 1 or p.get("adaptor") == "none":  # the plain UNet, as pipeline.common.MethodSpec
        return {"clock": 1, **({"steps": p["steps"]} if "steps" in p else {}), "adaptor": "none"}
    if training_free(p.get("adaptor")):  # identity, forecast, ...: nothing to distill, no width
        p.pop("width", None)
    return {d: p[d] for d in DIMENSIONS if d in p}


def grid_points(sp: SweepParams, base: dict | None = None) -> list[dict]:
    points: list[dict] = [{}]
    for name in DIMENSIONS:
        vals = values(getattr(sp.space, name))
        if vals is not None:
            points = [{**p, name: v} for p in points for v in vals]
    out, seen = [], set()
    for p in points:
        p = normalize_point(p, base)
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def baseline_points(sp: SweepParams, base: dict) -> list[dict]:
    """The plain UNet (clock 1, no adaptor) at every step count of ``front_steps`` and of the space (else at
    the params' step count): the fewer-steps front the trials are scored against."""
    if sp.baseline != "trial":
        return []
    steps = sorted(set(sp.front_steps or []) | set(values(sp.space.steps) or []))
    return [normalize_point({"clock": 1, "steps": s}, base) for s in steps or [None]]


def is_full_params(base: dict) -> bool:
    """A whole params.yaml (the pipeline's), rather than a file holding only a `sweep:` section."""
    return bool(base) and "world" in base


def trial_params(base: dict, sp: SweepParams, point: dict, params_file: str | None = None) -> dict:
    """What the trial function gets: the point by short names (as train_and_evaluate takes them), the
    overrides, the split to score on (``split``: sweep.split) and the params file whose other settings apply."""
    p = {**sp.overrides, **point, SPLIT_KEY: sp.split}
    if params_file and is_full_params(base):
        p.setdefault("params_file", str(params_file))
    return p


def nested_params(base: dict, params: dict) -> dict:
    """The params.yaml a trial amounts to (for the pipeline's validator and for MLflow)."""
    n = copy.deepcopy({k: v for k, v in base.items() if k != "sweep"})
    for k, v in params.items():
        if (k in DIMENSIONS and k != "clock") or k in TRIAL_KEYS:
            dotted_set(n, DIMENSIONS.get(k) or TRIAL_KEYS[k], v)
    clock = params.get("clock")
    if isinstance(clock, list):  # a schedule: adaptor_steps overrides the period
        dotted_set(n, "clock.adaptor_steps", clock)
    elif clock is not None:
        dotted_set(n, "clock.period", clock)
        if isinstance(base.get("clock"), dict):
            n["clock"]["adaptor_steps"] = None  # the swept period decides
    if params.get("adaptor") == "none":  # the baseline: the pipeline spells it clock 1 + identity
        dotted_set(n, "adaptor.kind", "identity")
    if (params.get("adaptor") == "none" or training_free(params.get("adaptor"))) and \
            dotted_get(n, "adaptor.inputs") is not None:
        n["adaptor"]["inputs"] = ["r_out_prev"]  # the only input the training-free adaptors take
    return n


def clock_name(clock) -> str:
    """``c2`` for a period, ``a2.3.4.5`` for a schedule of 0-based adaptor steps."""
    return "a" + ".".join(str(s) for s in clock) if isinstance(clock, list) else f"c{clock}"


def run_name(point: dict) -> str:
    s = f"-s{point['steps']}" if "steps" in point else ""
    if point.get("clock") == 1:
        return f"baseline{s}"
    kind = point.get("adaptor", "")
    w = f"-w{point['width']}" if "width" in point else ""
    return f"{clock_name(point.get('clock'))}{'-' + kind if kind else ''}{w}-k{point.get('cut', '')}{s}"


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
        if k not in DIMENSIONS and k not in TRIAL_KEYS and k != SPLIT_KEY:
            flat[k] = v  # a custom trial function's own keys
    if SPLIT_KEY in params:
        flat[SPLIT_PARAM] = params[SPLIT_KEY]  # the split the trial is scored on
    if isinstance(params.get("clock"), list):
        flat["clock.period"] = ""  # unused: the schedule decides (as pipeline.common.MethodSpec.flat)
        flat["clock.adaptor_steps"] = params["clock"]
    if params.get("adaptor") == "none":
        flat["adaptor.kind"] = "none"
        for k in ("adaptor.width", "adaptor.depth", "cut"):
            flat.pop(k, None)
    elif training_free(params.get("adaptor")):
        flat.pop("adaptor.width", None)
    if "params_file" in params:
        flat["params_file"] = params["params_file"]
    return flat


# Tune treats a list in a config as nested values to resolve, so a schedule travels through Tune as its JSON.
def to_tune(value):
    return json.dumps(value) if isinstance(value, list) else value


def from_tune(config: dict) -> dict:
    """The point of a Tune config (schedules back to lists)."""
    return {d: json.loads(v) if isinstance(v, str) and v.startswith("[") else v
            for d, v in config.items() if d in DIMENSIONS}


def param_space(sp: SweepParams, points: list[dict]) -> dict:
    """Tune's space. A grid is the explicit point list (identity widths deduplicated), fed as points to
    evaluate over categorical domains; random / model-based search sample the declared distributions."""
    from ray import tune

    space = {}
    for d in DIMENSIONS:
        if sp.search.algorithm == "grid":
            if any(d in p for p in points):
                space[d] = tune.choice(sorted({to_tune(p.get(d)) for p in points}, key=lambda x: (x is None, str(x))))
            continue
        v = getattr(sp.space, d)
        if v is None:
            continue
        if values(v) is not None:
            space[d] = tune.choice([to_tune(x) for x in values(v)])
        else:
            (name, args), = v.items()
            space[d] = getattr(tune, name)(*args)
    return space


def split_problems(base: dict, sp: SweepParams) -> list[tuple[str, str]]:
    """``sweep.split: val`` against a full params file: its prepare section must make a validation split that holds
    every trial's ``n_samples`` prompts (the pipeline's validator checks them against the evaluation prompts)."""
    if sp.split != "val" or not is_full_params(base):
        return []
    instead = "or set sweep.split: heldout (then the evaluation prompts choose the recommendation: the test set leaks)"
    if dotted_get(base, "world.kind") != "embedded":
        return [("sweep.split", f"val needs a validation split, which prepare builds for the embedded world only; {instead}")]
    val, ref = dotted_get(base, "prepare.val_prompts") or 0, dotted_get(base, "prepare.val_reference_images") or 0
    if not (val and ref):
        return [("sweep.split", f"val scores every trial on the validation split, but prepare.val_prompts={val} and "
                 f"prepare.val_reference_images={ref}: set both > 0 (then `dvc repro prepare`), {instead}")]
    n = sp.overrides.get("n_samples", dotted_get(base, "evaluate.n_samples"))
    if isinstance(n, int) and n > val:
        key = "sweep.overrides.n_samples" if "n_samples" in sp.overrides else "evaluate.n_samples"
        return [(key, f"{n} > prepare.val_prompts={val}: every trial evaluates n_samples validation prompts "
                 "(sweep.split: val)")]
    return []


def check_points(raw: dict, sp: SweepParams, points: list[dict], source: str) -> None:
    """With a full params.yaml: the file through the pipeline's validator, sweep.split against its prepare section,
    then every trial's params (a cut the teacher cannot take, a schedule the step count cannot hold, ...), before
    anything runs."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    if not is_full_params(base):
        return
    from pipeline import config as pconfig

    pconfig.validate(raw, root=REPO_ROOT, source=source)
    problems: list[tuple[str, str]] = split_problems(base, sp)
    # Checked once on the whole file above, not a trial's: the evaluate stage's fronts and the distill stage's
    # schedule search (a baseline spelled as the identity adaptor would fail `evaluate.fronts: distilled`); with
    # split val, n_samples is checked against the validation split above, not against the evaluation prompts.
    skip = {"evaluate.front_steps", "evaluate.fronts", "evaluate.front_budgets", "clock.budget",
            "clock.calibration_prompts"} | ({"evaluate.n_samples"} if sp.split == "val" else set())
    for p in points:
        n = nested_params(base, trial_params(base, sp, p))
        cuts = dotted_get(n, "trajectories.cuts")
        added = isinstance(cuts, list) and "cut" in p and p["cut"] not in cuts
        if added:
            n["trajectories"]["cuts"] = sorted(cuts + [p["cut"]])  # train_and_evaluate unrolls a missing cut once
        try:
            pconfig.validate(n, root=REPO_ROOT, source=source)
        except ConfigError as e:
            for k, m in e.problems:
                # (cut and trajectories.cuts say the same thing; a baseline at k steps needs no front of its own)
                if k.split(".")[0] in TRIAL_SECTIONS and k not in skip and \
                        not (added and k == "trajectories.cuts"):
                    problems.append((f"trial {run_name(p)}: {k}", m))
        if len(problems) > 12:
            break
    if problems:
        raise ConfigError(problems, source)
