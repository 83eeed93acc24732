"""MLflow as a window on the pipeline, never a source: every call here warns and carries on if MLflow fails.

Default store ``sqlite:///<repo>/mlflow.db`` (git-ignored), overridable with ``MLFLOW_TRACKING_URI``;
``CLOCKWORK_MLFLOW=0`` turns logging off. One experiment per stage group (``clockwork-data``,
``clockwork-distill``, ``clockwork-evaluate``, ``clockwork-ablate``, ``clockwork-report``), flat dotted
params (``adaptor.width``, ``clock.period``, ``cut``), metrics, and artifacts a person looks at.

    with tracking.stage_run("distill", params.flat()) as run:
        run.log_metrics({"loss": 0.1}, step=25)
        run.log_artifact("plots/distill_loss.csv")
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
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
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


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
            fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - tracking must never stop the pipeline
            _warn(what, e)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.ok:
            self._call("log_params", self._mlflow.log_params, {k: _param_value(v) for k, v in params.items()},
                       run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
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
