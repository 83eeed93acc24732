"""The trials' results as records, and the files of ``sweeps/<name>/`` (docs/CONTRACTS.md): results.csv,
trials.jsonl, pareto.csv, summary.json."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config_sweep import DIMENSIONS, SPLIT_KEY, SPLIT_PARAM, ConfigError, SweepParams
from pipeline.tune.space import from_tune, mlflow_params, normalize_point, point_key, run_name, trial_params
from pipeline.tune.trial import TRIAL_INFO, TrialContext, atomic_json, clean_metrics

# The quality-vs-cost fronts over every completed trial, baselines included: name -> (x, x mode, y, y mode).
FRONTS: dict[str, tuple[str, str, str, str]] = {
    "fid_gflops": ("gflops", "min", "fid", "min"),
    "clip_gflops": ("gflops", "min", "clip", "max"),
    "fid_latency": ("latency_ms", "min", "fid", "min"),
}
METRICS = ("fid", "fid_std", "kid", "clip", "gflops", "gflops_ratio", "latency_ms", "adaptor_params")
# Against the plain-steps front (clockwork.pareto.versus_fewer_steps): metric -> record key.
FEWER_STEPS = {"dfid_at_flops": "delta", "dfid_at_flops_std": "delta_std", "equal_cost_steps": "steps"}
CSV_COLUMNS = [  # docs/CONTRACTS.md first, then extras
    "trial_id", "clock", "width", "cut", "steps", "adaptor", *METRICS, "status",
    "pareto_fid_gflops", "pareto_clip_gflops", "pareto_fid_latency",
    "baseline", "recommended", "gflops_saving", *FEWER_STEPS, "fewer_steps_status", "beats_fewer_steps", "split",
    "distill_loss", "heldout_mse", "attempts", "wall_s",
    "node", "gpu_ids", "started", "finished", "run_name", "key", "error",
]
# Keys Ray adds to every result; everything else a trial reports is a metric.
RAY_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "experiment_tag", "should_checkpoint", "distill_step", "sweep_final",
}
DONE = ("complete", "from_file")  # statuses with metrics


@dataclass
class Record:
    trial_id: str
    point: dict
    status: str  # complete | early_stopped | error | not_run | from_file
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
    vs_fewer_steps: dict = field(default_factory=dict)  # {"fid": V, "clip": V} as in metrics/evaluate.json
    beats_fewer_steps: bool | None = None  # None: a baseline, or outside the front's cost range (no answer)

    @property
    def baseline(self) -> bool:
        return self.point.get("clock") == 1

    @property
    def done(self) -> bool:
        return self.status in DONE

    def column(self, dim: str):
        return self.point.get(dim)

    @property
    def split(self) -> str | None:
        """The split the trial was scored on: what it reported (train_and_evaluate's ``split``), else what it was
        given (sweep.split, its MLflow param); None in a record made before sweep.split existed."""
        return self.metrics.get(SPLIT_KEY) or self.params.get(SPLIT_PARAM)


def _attempts(sweep_dir: Path, key: str) -> int:
    f = sweep_dir / "work" / key / "attempts.jsonl"
    if not f.is_file():
        return 0
    return sum(1 for line in f.read_text().splitlines() if line and json.loads(line).get("kind") == "run")


def make_record(ctx: TrialContext, sp: SweepParams, trial_id: str, point: dict, status: str, metrics: dict,
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
        point = from_tune(cfg or {})
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
        out.append(make_record(ctx, sp, trial_id, point, status, metrics, history, error))
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


def _file_baselines(data) -> dict[str, dict]:
    """The plain-baseline entries of a metrics file: ``baseline`` and every ``baseline_<k>steps``."""
    if not isinstance(data, dict):
        return {}
    return {name: b for name, b in data.items() if isinstance(b, dict) and (
        name == "baseline" or (name.startswith("baseline_") and name.endswith("steps")))}


def baseline_splits(path: Path) -> set[str]:
    """The splits a metrics file's baselines were evaluated on (an entry without ``split`` predates the validation
    split: the evaluation prompts)."""
    return {b.get("split") or "heldout" for b in _file_baselines(json.loads(Path(path).read_text())).values()}


def records_from_file(ctx: TrialContext, sp: SweepParams, path: Path) -> list[Record]:
    """The plain baseline of a metrics file (metrics/evaluate.json): ``baseline`` and every ``baseline_<k>steps``.

    Their bootstrap replicates are dropped: the file's images are not the trials' (another ``n_samples``), so
    the deltas' std comes from the independent ``fid_std``s."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("baseline"), dict):
        raise ConfigError([("sweep.baseline", f"{path} has no `baseline` entry")])
    out = []
    for name, b in _file_baselines(data).items():
        point = {"clock": 1, "steps": b.get("steps")}
        tid = f"baseline:{sp.baseline}" + ("" if name == "baseline" else f"#{name}")
        out.append(make_record(ctx, sp, tid, point, "from_file",
                               {k: b.get(k) for k in (*METRICS, "kid_std", "clip_std")}, []))
    return out


def row(r: Record) -> dict:
    m, fid = r.metrics, r.vs_fewer_steps.get("fid") or {}
    out = {"trial_id": r.trial_id, **{d: r.column(d) for d in DIMENSIONS}}
    if r.baseline:
        out["adaptor"] = "none"
    out.update({k: m.get(k) for k in METRICS})
    out.update(status=r.status, **{f"pareto_{n}": r.pareto.get(n, False) for n in FRONTS},
               baseline=r.baseline, recommended=r.recommended, gflops_saving=m.get("gflops_saving"),
               **{k: m.get(k) for k in FEWER_STEPS}, fewer_steps_status=fid.get("status"),
               beats_fewer_steps=r.beats_fewer_steps, split=r.split,
               distill_loss=m.get("distill_loss"), heldout_mse=m.get("heldout_mse"), attempts=r.attempts,
               wall_s=r.info.get("wall_s"), node=r.info.get("node"), gpu_ids=r.info.get("gpu_ids"),
               started=r.info.get("started"), finished=r.info.get("finished"), run_name=r.run_name, key=r.key,
               error=r.error[:300])
    return out


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    os.replace(tmp, path)


def write_outputs(sweep_dir: Path, records: list[Record], summary: dict) -> list[Path]:
    """results.csv, trials.jsonl, pareto.csv and summary.json; returns their paths."""
    rows = [row(r) for r in records]
    _write_csv(sweep_dir / "results.csv", CSV_COLUMNS, rows)
    tmp = sweep_dir / "trials.jsonl.tmp"
    tmp.write_text("".join(json.dumps(asdict(r), default=str) + "\n" for r in records))
    os.replace(tmp, sweep_dir / "trials.jsonl")
    cols = ["front", "rank", "trial_id", "run_name", "clock", "width", "cut", "steps", "adaptor",
            "fid", "clip", "gflops", "gflops_saving", "latency_ms"]
    by_id = {r["trial_id"]: r for r in rows}
    _write_csv(sweep_dir / "pareto.csv", cols, [{"front": name, "rank": rank, **by_id[tid]}
                                                for name, ids in summary["fronts"].items()
                                                for rank, tid in enumerate(ids)])
    atomic_json(sweep_dir / "summary.json", summary)
    return [sweep_dir / n for n in ("results.csv", "trials.jsonl", "pareto.csv", "summary.json")]


def read_records(sweep_dir: Path) -> list[Record]:
    """trials.jsonl back as records (a sweep recorded by this code or by the single-file pipeline/sweep.py)."""
    out = []
    for line in (sweep_dir / "trials.jsonl").read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["history"] = [tuple(h) for h in d.get("history", [])]
            out.append(Record(**d))
    return out
