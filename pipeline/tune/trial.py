"""One trial, on a Ray worker: run (or recall) the trial function at one point, report to Tune, log the child run."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config_sweep import SPLIT_KEY, SweepParams
from pipeline.tracking import Tracker, is_finite
from pipeline.tune.space import REPO_ROOT, from_tune, mlflow_params, normalize_point, point_key, run_name, \
    trial_params

# What a trial function returns that describes the trial rather than measures it.
DESCRIPTORS = {"clock", "cut", "steps", "adaptor", "sampler", "width", "inputs", "training"}
TRIAL_INFO = ("started", "finished", "wall_s", "node", "gpu_ids", "cached")


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
            raise ImportError(f"sweep.trial: cannot import {target!r}: {e}") from e
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


def atomic_json(path: Path, obj) -> None:
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


def clean_metrics(metrics: dict) -> dict:
    """Numbers only (NaN -> None), the bootstrap replicates (``fid_boot``: paired ΔFID@FLOPs std) and the split
    the trial reports it was scored on (``split``), without the keys that describe the trial; final_loss ->
    distill_loss."""
    out = {}
    for k, v in metrics.items():
        if k == SPLIT_KEY and isinstance(v, str):
            out[k] = v
            continue
        if k in DESCRIPTORS or isinstance(v, bool):
            continue
        if is_finite(v):
            out[k] = float(v)
        elif v is None or isinstance(v, float):
            out[k] = None
        elif k.endswith("_boot") and isinstance(v, (list, tuple)) and v and all(is_finite(x) for x in v):
            out[k] = [float(x) for x in v]
    if "distill_loss" not in out and out.get("final_loss") is not None:
        out["distill_loss"] = out["final_loss"]
    return out


def child_tags(sweep_name: str, key: str, point: dict) -> dict:
    return {"sweep.name": sweep_name, "sweep.key": key, "sweep.baseline": str(point.get("clock") == 1).lower(),
            "mlflow.runName": run_name(point)}


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
                                           child_tags(ctx.sweep_name, key, point))
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
        said = metrics.get(SPLIT_KEY)
        if isinstance(said, str) and said != params[SPLIT_KEY]:  # its scores would not be the sweep's
            raise ValueError(f"{ctx.trial_spec} scored the trial on the {said} split, but sweep.split is "
                             f"{params[SPLIT_KEY]} (it is given as params[{SPLIT_KEY!r}])")
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
    atomic_json(done_file, {"trial_id": trial_id, "point": point, "metrics": clean, "history": history,
                            "params": params, **info})
    if tracker is not None:
        _mlflow_trial_end(ctx, trial_id, key, point, None, {**clean, **info}, None, "FINISHED", tracker, run_id,
                          live_history=bool(history))
    final = {**clean, **info}
    report({**final, "sweep_final": 1})
    return final


def _mlflow_trial_end(ctx, trial_id, key, point, flat_params, final, history, status, tracker=None, run_id=None,
                      live_history=False):
    """Log final metrics on the trial's child run; never fails the trial (the driver reconciles later)."""
    try:
        tracker = tracker or Tracker(ctx.mlflow["uri"])
        if run_id is None:
            run_id, new = tracker.open_child(ctx.mlflow["experiment_id"], ctx.mlflow["parent_run_id"], trial_id,
                                             run_name(point), flat_params, child_tags(ctx.sweep_name, key, point))
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


def trainable(config: dict, ctx: TrialContext) -> None:
    """The function Tune runs for each point."""
    from ray import tune

    run_point(ctx, from_tune(config), tune.get_context().get_trial_id(), tune.report)


def baseline_task(ctx: TrialContext, point: dict, trial_id: str, max_failures: int) -> dict:
    """The baseline as a plain Ray task, retried like a trial; a failure is recorded, not raised."""
    for _ in range(max_failures + 1):
        try:
            return {"ok": True, "metrics": run_point(ctx, point, trial_id, lambda m: None)}
        except Exception as e:  # noqa: BLE001 - recorded as a failed baseline, the sweep goes on
            out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return out
