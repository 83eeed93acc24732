"""Run, resume, finish and import a sweep: Ray Tune for the Clockwork trials, plain Ray tasks for the baseline
at each step count, then the records, the answer and the files, and MLflow from them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.config import read_yaml
from pipeline.config_sweep import DEFAULT_TRIAL, DIMENSIONS, SCHEDULERS, ConfigError, SweepParams, parse_sweep, \
    recorded_sweep, validate_sweep
from pipeline import tracking
from pipeline.tracking import Tracker, absolute_uri
from pipeline.tune.answer import analyse, format_summary
from pipeline.tune.mlflow_sync import DEFAULT_EXPERIMENT, open_parent, sync_mlflow
from pipeline.tune.plots import plot_fronts
from pipeline.tune.records import Record, baseline_splits, make_record, read_records, records_from_file, \
    records_from_results, write_outputs
from pipeline.tune.space import REPO_ROOT, baseline_points, check_points, grid_points, param_space, run_name, \
    to_tune
from pipeline.tune.trial import TrialContext, accepts_on_log, atomic_json, baseline_task, load_trial_function, \
    trainable

read_config = read_yaml  # one reader, one error format for every params file


def state_file(sweep_dir: Path) -> Path:
    return sweep_dir / "sweep.json"


def _comparable(sweep: dict) -> dict:
    """The parts of a sweep that define its trials (resources and the judging of results may change)."""
    return {k: v for k, v in sweep.items() if k not in ("resources", "max_concurrent", "max_failures", "name",
                                                         "fid_tolerance", "fid_tolerance_relative", "beat_margin",
                                                         "beat_sigmas")}


def _make_search(sp: SweepParams, points: list[dict]):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # (Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator: it takes its own.)
    limit = sp.max_concurrent or 0
    if sp.search.algorithm == "grid":
        return BasicVariantGenerator(points_to_evaluate=[{d: to_tune(v) for d, v in p.items()} for p in points],
                                     random_state=sp.search.seed, max_concurrent=limit), len(points)
    if sp.search.algorithm == "random":
        return BasicVariantGenerator(random_state=sp.search.seed, max_concurrent=limit), sp.search.num_samples
    from ray import tune

    try:
        searcher = tune.create_searcher(sp.search.algorithm, metric=sp.search.metric, mode=sp.search.mode,
                                        **sp.search.options)
    except (ImportError, AssertionError, TypeError, ValueError) as e:
        raise ConfigError([("sweep.search.algorithm", f"cannot create {sp.search.algorithm!r}: {e} (is its package "
                            f"installed? e.g. pip install {sp.search.algorithm})")]) from None

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
        raise ConfigError([("sweep.scheduler.options", str(e))]) from None


def _reporter(dims: list[str]):
    from ray.tune import CLIReporter

    return CLIReporter(
        parameter_columns={d: d for d in dims},
        metric_columns={"distill_loss": "loss", "fid": "fid", "clip": "clip", "gflops_ratio": "gflops_x",
                        "latency_ms": "ms"},
        max_report_frequency=15, max_progress_rows=40, sort_by_metric=False)


def check_inputs(root: Path, split: str = "heldout") -> None:
    """Before Ray starts: the files every default trial reads (the `prepare` stage's output) must exist, and with
    ``split`` val (sweep.split) the validation split among them.

    Trials would otherwise each fail (and be retried) with the same error. The trajectory store may be missing:
    the first trial that needs it unrolls it (slower; docs/SWEEP.md says to run the stage first).
    """
    prepared = root / "data" / "prepared"
    missing = [f for f in ("prompts.json", "embeddings.safetensors", "reference_stats.npz") if not (prepared / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{prepared} lacks {', '.join(missing)}: run `dvc repro trajectories` (or "
                                "`python pipeline/prepare.py`) with the same params file before the sweep; nothing run")
    if split == "val":
        try:
            n_val = len(json.loads((prepared / "prompts.json").read_text()).get("val_prompts") or [])
        except (ValueError, AttributeError):
            n_val = 0
        if not n_val or not (prepared / "val_reference_stats.npz").is_file():
            raise FileNotFoundError(
                f"sweep.split is val but {prepared} has no validation split (prompts.json val_prompts: {n_val}, "
                f"val_reference_stats.npz {'present' if (prepared / 'val_reference_stats.npz').is_file() else 'missing'}): "
                "set prepare.val_prompts and prepare.val_reference_images > 0 and run `dvc repro prepare`, or set "
                "sweep.split: heldout (the evaluation prompts then choose the recommendation); nothing run")


def _open_state(sweep_dir: Path, name: str, sp: SweepParams, config: Path, resume: bool, overwrite: bool) -> dict:
    if overwrite and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    sf = state_file(sweep_dir)
    if resume:
        if not sf.is_file():
            raise SystemExit(f"error: nothing to resume: {sf} does not exist (run without --resume)")
        state = json.loads(sf.read_text())
        # (the recorded section read with today's defaults, so a key added since is not a change)
        if _comparable(recorded_sweep(state["sweep"]).model_dump()) != _comparable(sp.model_dump()):
            raise SystemExit(f"error: the `sweep:` section changed since {sweep_dir} started; start a new sweep "
                             "with another --name, or --overwrite this one")
    elif sf.is_file():
        raise SystemExit(f"error: {sweep_dir} exists; pass --resume to continue it or --overwrite to start over")
    else:
        state = {"name": name, "uid": uuid.uuid4().hex[:12], "created": time.time(), "config": str(config),
                 "mlflow": None}
    state["sweep"] = sp.model_dump()
    return state


def _open_mlflow(state: dict, uri: str, experiment: str) -> Tracker:
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
    return tracker


def run_sweep(config: str | os.PathLike = "params.yaml", name: str | None = None, *, resume: bool = False,
              overwrite: bool = False, address: str | None = None, gpus_per_trial: float | None = None,
              cpus_per_trial: float | None = None, max_concurrent: int | None = None, use_mlflow: bool = True,
              tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
              sweeps_dir: str | os.PathLike = "sweeps", num_cpus: int | None = None, num_gpus: int | None = None,
              retry_errored: bool = False, dry_run: bool = False, verbose: bool = False) -> dict:
    """Run (or resume) a sweep; returns the summary. See docs/SWEEP.md."""
    config = Path(config)
    raw = read_config(config)
    sp = parse_sweep(raw, config.name)
    res = {**sp.resources.model_dump(), **{k: v for k, v in (("gpus_per_trial", gpus_per_trial),
                                                                ("cpus_per_trial", cpus_per_trial)) if v is not None}}
    sp = validate_sweep({**sp.model_dump(), "resources": res,
                         **({"max_concurrent": max_concurrent} if max_concurrent is not None else {})}, "command line")
    name = name or sp.name
    base = {k: v for k, v in raw.items() if k != "sweep"}
    points = grid_points(sp, base) if sp.search.algorithm == "grid" else []
    baselines = baseline_points(sp, base)
    check_points(raw, sp, points + baselines, config.name)
    fn = load_trial_function(sp.trial)  # fail now, not in every trial
    if sp.scheduler.name != "fifo" and not accepts_on_log(fn):
        print(f"warning: {sp.trial} takes no on_log callback, so {sp.scheduler.name} sees no distillation losses "
              "and cannot stop trials early", file=sys.stderr)
    search_alg, num_samples = _make_search(sp, points)
    scheduler = _make_scheduler(sp)
    baseline_file = Path(sp.baseline) if Path(sp.baseline).is_absolute() else REPO_ROOT / sp.baseline
    if sp.baseline.endswith(".json") and not baseline_file.is_file():
        raise ConfigError([("sweep.baseline", f"{sp.baseline} not found (run `dvc repro evaluate`, or use "
                            "`baseline: trial`)")], config.name)
    if sp.baseline.endswith(".json"):
        other = sorted(baseline_splits(baseline_file) - {sp.split})
        if other:  # the front and the trials must be scored on the same prompts and reference
            raise ConfigError([("sweep.baseline", f"{sp.baseline}'s baseline was evaluated on the {'/'.join(other)} "
                                f"split, the trials on sweep.split={sp.split}; use `baseline: trial`")], config.name)
    sweep_dir = Path(sweeps_dir).resolve() / name
    state = _open_state(sweep_dir, name, sp, config, resume, overwrite)
    if dry_run:
        print(f"{len(points) or num_samples} trials + {len(baselines)} baseline(s) in {sweep_dir}")
        for p in baselines + points:
            print(" ", run_name(p), json.dumps(p))
        return {"points": points, "baselines": baselines}

    if sp.trial == DEFAULT_TRIAL:  # (the trials' root: overrides.root, else this checkout)
        check_inputs(Path(sp.overrides.get("root", REPO_ROOT)), sp.split)
    tracker = None
    if use_mlflow and importlib.util.find_spec("mlflow") is None:
        print("note: mlflow is not installed here: recording to sweeps/<name>/ only; log the sweep later with "
              f"`python pipeline/sweep.py --import-results {Path(sweeps_dir) / name}`", file=sys.stderr)
        use_mlflow = False
    if use_mlflow:
        tracker = _open_mlflow(state, absolute_uri(tracking_uri or tracking.tracking_uri()), experiment)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_json(state_file(sweep_dir), state)

    import ray
    from ray import tune

    from pipeline.common.parallel import start_ray

    started_ray = start_ray(address, num_cpus, num_gpus, verbose)
    try:
        cluster = ray.cluster_resources()
        gpus = cluster.get("GPU", 0)
        resources = {"cpu": sp.resources.cpus_per_trial}
        if gpus and sp.resources.gpus_per_trial > 0:
            if sp.resources.gpus_per_trial > gpus:
                raise SystemExit(f"error: each trial asks for {sp.resources.gpus_per_trial} GPUs but the cluster "
                                 f"has {gpus:g}")
            resources["gpu"] = sp.resources.gpus_per_trial
        print(f"Ray: {cluster.get('CPU', 0):g} CPUs, {gpus:g} GPUs; per trial {resources}")

        ctx = TrialContext(repo=str(REPO_ROOT), sweep_dir=str(sweep_dir), sweep_name=name, trial_spec=sp.trial,
                           base=base, sweep=sp.model_dump(), params_file=str(config.resolve()), mlflow=state["mlflow"])
        fit = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), resources)
        ray_dir = sweep_dir / "ray"
        t0 = time.time()
        # The baseline is not a point of the search space: it runs beside the Tune trials as plain tasks.
        task = ray.remote(num_cpus=resources["cpu"], num_gpus=resources.get("gpu", 0),
                          max_retries=sp.max_failures)(baseline_task)  # max_retries: a worker that dies
        futures = [(p, task.remote(ctx, p, run_name(p), sp.max_failures)) for p in baselines]
        if resume and tune.Tuner.can_restore(str(ray_dir)):
            print(f"Resuming {ray_dir} (finished trials are kept)")
            tuner = tune.Tuner.restore(str(ray_dir), fit, resume_unfinished=True, resume_errored=retry_errored)
        else:
            if resume:
                print(f"note: no Tune state in {ray_dir}; starting the trials again (finished ones are read back "
                      "from work/)")
            dims = [d for d in DIMENSIONS if any(d in p for p in points)] if points else \
                [d for d in DIMENSIONS if getattr(sp.space, d) is not None]
            tuner = tune.Tuner(
                fit, param_space=param_space(sp, points),
                tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                            reuse_actors=False, trial_dirname_creator=lambda t: t.trial_id),
                run_config=tune.RunConfig(name="ray", storage_path=str(sweep_dir),
                                          failure_config=tune.FailureConfig(max_failures=sp.max_failures),
                                          progress_reporter=_reporter(dims), verbose=1))
        records = records_from_results(ctx, sp, tuner.fit())
        for p, fut in futures:
            out = ray.get(fut)
            if out["ok"]:
                records.insert(0, make_record(ctx, sp, run_name(p), p, "complete", dict(out["metrics"]), []))
            else:
                print(f"baseline {run_name(p)} failed: {out['error']}\n{out['traceback']}", file=sys.stderr)
                records.insert(0, make_record(ctx, sp, run_name(p), p, "error", {}, [], out["error"]))
        wall = time.time() - t0
    finally:
        if started_ray:
            ray.shutdown()
    if sp.baseline.endswith(".json"):
        records[:0] = records_from_file(ctx, sp, baseline_file)
    return finish(sweep_dir, state, sp, base, records, tracker, wall)


def finish(sweep_dir: Path, state: dict, sp: SweepParams, base: dict, records: list[Record],
           tracker: Tracker | None, wall: float | None = None) -> dict:
    summary = analyse(records, sp, base)
    if wall is not None:
        summary["wall_s"] = state["wall_s"] = round(wall, 2)
        atomic_json(state_file(sweep_dir), state)
    elif state.get("wall_s"):
        summary["wall_s"] = state["wall_s"]
    complete = not any(r.status == "not_run" for r in records)
    artifacts = write_outputs(sweep_dir, records, summary) + plot_fronts(sweep_dir, records, summary)
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
    """Log a sweep recorded with --no-mlflow (e.g. on a GPU machine without mlflow) into MLflow; the answer
    and the files are made anew from trials.jsonl."""
    sweep_dir = Path(sweep_dir).resolve()
    if not state_file(sweep_dir).is_file() or not (sweep_dir / "trials.jsonl").is_file():
        raise SystemExit(f"error: {sweep_dir} holds no finished sweep (sweep.json and trials.jsonl are needed)")
    state = json.loads(state_file(sweep_dir).read_text())
    sp = recorded_sweep(state["sweep"])
    config = REPO_ROOT / state["config"]
    base = {k: v for k, v in (read_config(config) if config.is_file() else {}).items() if k != "sweep"}
    tracker = Tracker(absolute_uri(tracking_uri or tracking.tracking_uri()))
    state.setdefault("mlflow", None)
    if experiment or not state["mlflow"]:
        state["mlflow"] = {"experiment": experiment or DEFAULT_EXPERIMENT}
    return finish(sweep_dir, state, sp, base, read_records(sweep_dir), tracker)
