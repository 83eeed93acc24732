"""MLflow from the driver: the sweep's parent run and, from the records, one child per trial. A window on
``sweeps/<name>/``, never its source: syncing again (``--resume``, ``--import-results``) changes nothing twice."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.tracking import Tracker, experiment_name, is_finite
from pipeline.tune.records import FEWER_STEPS, FRONTS, METRICS, Record
from pipeline.tune.space import flatten
from pipeline.tune.trial import child_tags

DEFAULT_EXPERIMENT = experiment_name("sweep")
STATUS = {"complete": "FINISHED", "from_file": "FINISHED", "early_stopped": "KILLED", "error": "FAILED",
          "not_run": "KILLED"}
# Metrics that depend on the whole sweep (the baseline, the plain-steps front): logged again when they change.
DERIVED = {"gflops_saving", *FEWER_STEPS}
NOTE = ("Clockwork sweep `{name}`: one child run per trial; filter children with tags.`pareto.fid_gflops` = 'true' "
        "for the FID-vs-GFLOPs front, tags.`fewer_steps.beats` = 'true' for the trials that beat taking fewer steps.")


def open_parent(tracker: Tracker, exp_id: str, state: dict) -> str:
    run = tracker.call("create_run", exp_id, run_name=state["name"],
                       tags={"sweep.name": state["name"], "sweep.uid": state["uid"], "sweep.role": "parent",
                             "mlflow.note.content": NOTE.format(name=state["name"])})
    flat = flatten({"sweep": state["sweep"]})
    tracker.log_params(run, {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()})
    return run.info.run_id


def _sync_child(tracker: Tracker, exp_id: str, parent_id: str, sweep_name: str, r: Record, run) -> str:
    t_start = int(r.info["started"] * 1000) if is_finite(r.info.get("started")) else None
    t_end = int(r.info["finished"] * 1000) if is_finite(r.info.get("finished")) else None
    if run is None:  # the trial could not log (no mlflow on its machine, or --no-mlflow): log it now
        run = tracker.call("create_run", exp_id, run_name=r.run_name, start_time=t_start,
                           tags={"mlflow.parentRunId": parent_id, "sweep.trial_id": r.trial_id,
                                 **child_tags(sweep_name, r.key, r.point)})
        tracker.log_params(run, r.params)
        tracker.log_history(run.info.run_id, "distill_loss", r.history)
        have = {"distill_loss": None} if r.history else {}
    else:
        tracker.log_params(run, r.params)
        have = run.data.metrics
    run_id = run.info.run_id
    wall = {k: r.info[k] for k in ("wall_s",) if k in r.info}
    missing = {k: v for k, v in {**r.metrics, **wall}.items() if k not in have or (k in DERIVED and have.get(k) != v)}
    if missing:
        tracker.log_metrics(run_id, missing)
    fid = r.vs_fewer_steps.get("fid") or {}
    tags = {"sweep.status": r.status, "sweep.attempts": r.attempts,
            **{f"pareto.{n}": str(r.pareto.get(n, False)).lower() for n in FRONTS},
            "sweep.recommended": str(r.recommended).lower(), "fewer_steps.status": fid.get("status", "none"),
            "fewer_steps.beats": str(r.beats_fewer_steps).lower() if r.beats_fewer_steps is not None else "none"}
    if r.error:
        tags["sweep.error"] = r.error
    for k in ("node", "gpu_ids"):
        if r.info.get(k):
            tags[f"sweep.{k}"] = r.info[k]
    tracker.set_tags(run_id, tags)
    # Terminate only what is not already so: the UI's durations are the trials' own, not this sync's.
    want = STATUS.get(r.status, "FINISHED")
    end = run.info.end_time
    if run.info.status != want or (t_end and (not end or abs(end - t_end) > 2000)):
        tracker.call("set_terminated", run_id, want, end_time=t_end)
    return run_id


def _sync_parent(tracker: Tracker, parent_id: str, state: dict, summary: dict, artifacts: list[Path],
                 sweep_dir: Path, run_ids: dict[str, str], params: dict[str, dict], finished: bool) -> None:
    """What a person opens first: the tables and plots, the baseline, the answer and the recommendation."""
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
    b, rec, fewer = summary.get("baseline"), summary.get("recommended"), summary.get("fewer_steps") or {}
    if b:
        pm.update({f"baseline.{k}": b.get(k) for k in METRICS})
    if rec:
        pm.update({f"recommended.{k}": rec.get(k) for k in (*METRICS, "gflops_saving", *FEWER_STEPS, "fid_delta",
                                                              "latency_ratio")})
    pm["fewer_steps.beats"] = len(fewer.get("beats", []))
    if fewer.get("best"):
        pm["fewer_steps.best_dfid_at_flops"] = fewer["best"].get("dfid_at_flops")
    pm.update({f"front.{n}.size": len(ids) for n, ids in summary["fronts"].items()})
    pm["front.plain_steps.size"] = len(summary.get("plain_front", []))
    if summary.get("wall_s"):
        pm["wall_s"] = summary["wall_s"]
    tracker.log_metrics(parent_id, pm)
    # The recommendation's settings as tags: a param, once logged, cannot change with a resumed sweep's answer.
    rec_params = {f"recommended.{k}": v for k, v in params.get(rec["trial_id"], {}).items()} if rec else {}
    tracker.set_tags(parent_id, {
        "sweep.recommended_trial": rec["trial_id"] if rec else "",
        "sweep.recommended_run_id": run_ids.get(rec["trial_id"], "") if rec else "",
        "sweep.recommended": rec["run_name"] if rec else "none",
        "sweep.beats_fewer_steps": str(rec is not None).lower(), "sweep.answer": fewer.get("answer", ""),
        "sweep.split": summary.get("split") or "",  # where the trials were scored, so where the recommendation was chosen
        "mlflow.note.content": NOTE.format(name=state["name"]) + f"\n\n**Answer**: {fewer.get('answer', '-')}",
        **rec_params})
    want = "FINISHED" if finished else "KILLED"
    if tracker.call("get_run", parent_id).info.status != want:
        tracker.call("set_terminated", parent_id, want)


def sync_mlflow(sweep_dir: Path, state: dict, records: list[Record], summary: dict, artifacts: list[Path],
                tracker: Tracker, finished: bool = True) -> str:
    """Make MLflow match the records: the parent run, one child per trial (created if a trial could not log
    it), final metrics, statuses, Pareto and fewer-steps tags, and the tables and plots on the parent."""
    trk = state.get("mlflow") or {}
    exp_id = tracker.experiment_id(trk.get("experiment") or DEFAULT_EXPERIMENT)
    parent_id = trk.get("parent_run_id") if trk.get("uri") == tracker.uri else None
    if parent_id is None:
        found = tracker.search(exp_id, f"tags.`sweep.uid` = '{state['uid']}' and tags.`sweep.role` = 'parent'")
        parent_id = found[0].info.run_id if found else open_parent(tracker, exp_id, state)
    kids = tracker.children(exp_id, parent_id)
    run_ids = {r.trial_id: _sync_child(tracker, exp_id, parent_id, state["name"], r, kids.get(r.trial_id))
               for r in records}
    _sync_parent(tracker, parent_id, state, summary, artifacts, sweep_dir, run_ids,
                 {r.trial_id: r.params for r in records}, finished)
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
