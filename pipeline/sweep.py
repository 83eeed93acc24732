#!/usr/bin/env python
"""Sweep Clockwork operating points with Ray Tune; log every trial to MLflow; answer "does it beat fewer steps?".

    python pipeline/sweep.py                                  # the `sweep:` section of params.yaml
    python pipeline/sweep.py --config params.yaml --name my-sweep --gpus-per-trial 1
    python pipeline/sweep.py --name my-sweep --resume         # continue a killed sweep
    python pipeline/sweep.py --no-mlflow ...                  # record to files only (no mlflow installed)
    python pipeline/sweep.py --import-results sweeps/my-sweep # log such a sweep into MLflow later

Each trial distills an adaptor for one point {clock (period or schedule), width, cut, steps, adaptor} and
evaluates it with the pipeline's own ``train_and_evaluate(params, workdir)`` (``sweep.trial``), reusing the
trajectory store of ``dvc repro trajectories``. The plain baseline (clock 1) is evaluated at every step count of
``sweep.front_steps`` and of the space: the fewer-steps front. Every trial is scored against it (ΔFID@FLOPs, as
the evaluate stage scores its methods); the recommendation is the trial that beats it by the most, or none. Trials
and front are scored on ``sweep.split``: the validation split (prepare.val_prompts) by default, so the
recommendation is chosen there, never on the held-out evaluation prompts (``heldout`` allows it, leaking the test set).

Everything lands in ``sweeps/<name>/``: ``results.csv`` (one row per trial: Pareto flags, ΔFID@FLOPs),
``trials.jsonl``, ``summary.json`` (the plain-steps front, the answer, the recommendation, the fronts),
``pareto_*.png``, ``ray/`` (Tune's state, for ``--resume``) and ``work/<trial>/`` (each trial's files; a
finished trial's ``result.json`` is never recomputed). MLflow gets a parent run per sweep and a nested child
run per trial; it is a window on these files, never their source. The code is in pipeline/tune/; docs/SWEEP.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config_sweep import ConfigError  # noqa: E402
from pipeline.tune.driver import import_results, run_sweep  # noqa: E402
from pipeline.tune.mlflow_sync import DEFAULT_EXPERIMENT  # noqa: E402


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
    except ConfigError as e:
        print(f"error: invalid sweep, nothing run\n{e}", file=sys.stderr)
        return 2
    except (ImportError, FileNotFoundError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    return 0 if summary.get("status", {}).get("not_run", 0) == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
