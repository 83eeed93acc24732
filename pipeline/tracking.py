"""MLflow as a window on the pipeline, never a source: the one place that talks to MLflow, for stages and sweep.

Default store ``sqlite:///<repo>/mlflow.db`` (git-ignored), overridable with ``MLFLOW_TRACKING_URI``;
``CLOCKWORK_MLFLOW=0`` turns stage logging off. One experiment per stage group (``clockwork-data``,
``clockwork-distill``, ``clockwork-evaluate``, ``clockwork-ablate``, ``clockwork-report``, ``clockwork-sweep``),
flat dotted params (``adaptor.width``, ``clock.period``, ``cut``), metrics, and artifacts a person looks at.

Stages use :func:`stage_run`, whose every call warns and carries on if MLflow fails:

    with tracking.stage_run("distill", params.flat()) as run:
        run.log_metrics({"loss": 0.1}, step=25)
        run.log_artifact("plots/distill_loss.csv")

The sweep (pipeline/tune/) uses :class:`Tracker`, a client whose calls are retried while a store shared by
concurrent trials is busy; it decides itself what a failure means. Both go through :func:`retrying`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"prepare": "data", "teacher": "data", "clip": "data", "trajectories": "data", "distill": "distill",
          "evaluate": "evaluate", "ablate": "ablate", "report": "report", "sweep": "sweep"}

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def enabled() -> bool:
    return os.environ.get("CLOCKWORK_MLFLOW", "1").lower() not in ("0", "false", "no", "off")


def experiment_name(stage: str) -> str:
    return f"clockwork-{GROUPS.get(stage, stage)}"


def _warn(what: str, e: Exception) -> None:
    warnings.warn(f"MLflow {what} failed ({type(e).__name__}: {e}); continuing without it", RuntimeWarning, stacklevel=3)


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def is_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _transient(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("locked", "busy", "operationalerror", "timeout", "timed out", "connection",
                                   "temporarily", "503", "502", "429", "too many requests", "resource_exhausted"))


def retrying(fn: Callable, *args, attempts: int = 40, **kwargs):
    """Call an MLflow function; retry what a busy sqlite file or a restarting server throws."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if i == attempts - 1 or not _transient(e):
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


def absolute_uri(uri: str) -> str:
    """A relative sqlite path means the caller's folder; sweep trials run elsewhere, so pin it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


class Run:
    """A thin, failure-proof handle on an active MLflow run (or a no-op when tracking is off)."""

    def __init__(self, mlflow=None, run=None):
        self._mlflow = mlflow
        self.run = run
        self.ok = mlflow is not None and run is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.ok else None

    def _call(self, what: str, fn, *a, **kw) -> None:
        if not self.ok:
            return
        try:
            retrying(fn, *a, **kw)
        except Exception as e:  # noqa: BLE001 - tracking must never stop the pipeline
            _warn(what, e)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.ok:
            self._call("log_params", self._mlflow.log_params, {k: _param_value(v) for k, v in params.items()},
                       run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if is_finite(v)}
        if clean and self.ok:
            self._call("log_metrics", self._mlflow.log_metrics, clean, step=step, run_id=self.run_id)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.ok and Path(path).exists():
            fn = self._mlflow.log_artifacts if Path(path).is_dir() else self._mlflow.log_artifact
            self._call("log_artifact", fn, str(path), artifact_path, run_id=self.run_id)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.ok:
            self._call("set_tags", self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    @contextlib.contextmanager
    def child(self, name: str, params: dict[str, Any] | None = None) -> Iterator["Run"]:
        """A nested run (e.g. one ablation row, one sweep trial)."""
        if not self.ok:
            yield Run()
            return
        try:
            ctx = self._mlflow.start_run(run_name=name, nested=True)
            child = ctx.__enter__()
        except Exception as e:  # noqa: BLE001
            _warn("start nested run", e)
            yield Run()
            return
        handle = Run(self._mlflow, child)
        if params:
            handle.log_params(params)
        try:
            yield handle
        finally:
            try:
                ctx.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001
                _warn("end nested run", e)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any] | None = None, run_name: str | None = None,
              tags: dict[str, Any] | None = None) -> Iterator[Run]:
    """An MLflow run for one stage execution in its group's experiment; a no-op Run if MLflow fails."""
    if not enabled():
        yield Run()
        return
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(experiment_name(stage))
        ctx = mlflow.start_run(run_name=run_name or stage)
        active = ctx.__enter__()
    except Exception as e:  # noqa: BLE001
        _warn("start run", e)
        yield Run()
        return
    run = Run(mlflow, active)
    run.set_tags({"stage": stage, "params_file": os.environ.get("CLOCKWORK_PARAMS", "params.yaml"), **(tags or {})})
    if params:
        run.log_params(params)
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as e:  # noqa: BLE001
            _warn("end run", e)


class Tracker:
    """One MlflowClient per process; every call retried (concurrent sweep trials share one sqlite file)."""

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
        """The child runs of ``parent_id`` by their ``sweep.trial_id`` tag."""
        runs = self.search(experiment_id, f"tags.`mlflow.parentRunId` = '{parent_id}'")
        return {r.data.tags.get("sweep.trial_id"): r for r in runs if r.data.tags.get("sweep.trial_id")}

    def log_params(self, run, params: dict[str, Any]) -> None:
        """The params ``run`` lacks (MLflow refuses to change a logged param)."""
        from mlflow.entities import Param

        have = dict(run.data.params) if run is not None and hasattr(run, "data") else {}
        todo = [Param(k, _param_value(v)) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), 100):
            self.call("log_batch", run.info.run_id, params=todo[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        self.log_history(run_id, None, [(step, metrics)])

    def log_history(self, run_id: str, key: str | None, history: Iterable[tuple[int, Any]]) -> None:
        """``(step, value)`` pairs of metric ``key``; with ``key=None`` each value is a dict of metrics."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(s)) for s, val in history
              for k, v in (val.items() if key is None else [(key, val)]) if is_finite(v)]
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
