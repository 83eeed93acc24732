"""The Ray Tune sweep behind ``python pipeline/sweep.py`` (docs/SWEEP.md), one concern a module:

- ``space``: the points of a `sweep:` section, what each trial is given, Tune's search space;
- ``trial``: one trial on a Ray worker (run the trial function, report, log its MLflow child run);
- ``records``: the trials' results as records and the files of ``sweeps/<name>/``;
- ``answer``: fronts, ΔFID@FLOPs against the plain-steps front, the recommendation, the printed summary;
- ``plots``: the front plots; ``mlflow_sync``: the MLflow parent and children from the records;
- ``driver``: run, resume, finish and import a sweep.

The section itself is validated by pipeline/config_sweep.py, MLflow is reached through pipeline/tracking.py,
and the fronts come from clockwork/pareto.py.
"""

import os

# Quiet, offline-safe defaults, set before Ray is imported; a user's own setting wins.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic live table (CLIReporter) instead of the new console
# Trials report distillation losses first and quality metrics last, so not every result has every metric.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
# A killed sweep loses at most this many seconds of Tune bookkeeping (the state is a few KB of JSON).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
