"""A fresh default run reproduces reports/default, and precision can never move a committed number silently.

The README's order is `./setup.sh && dvc repro`, then `python -m pytest -q`: when the working tree holds a default
run (metrics/ and plots/ written by `dvc repro` with today's params.yaml), every number of it must equal the
committed one, timings and the CPU's name aside (pipeline/common/reproduction.py; CI runs the same check with
scripts/check_reproduction.py right after its own `dvc repro`). Without such a run the comparison is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.common.reproduction import DEFAULT_RUN_FILES, compare, compare_runs

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "reports" / "default"


def test_compare_ignores_timings_and_the_cpu_only() -> None:
    committed = {"clockwork": {"fid": 62.31, "latency_ms": 812.0, "fid_boot": [1.0, 2.0]}, "cpu": "AMD EPYC",
                 "precision": "fp32", "seconds": 40.0}
    fresh = {"clockwork": {"fid": 62.31, "latency_ms": 1012.5, "fid_boot": [1.0, 2.0]}, "cpu": "Intel Xeon (+AMX)",
             "precision": "fp32", "seconds": 52.1}
    assert compare(committed, fresh) == []
    moved = json.loads(json.dumps(fresh))
    moved["clockwork"]["fid_boot"][1] = 2.0000001
    assert compare(committed, moved) == ["clockwork.fid_boot[1]: 2.0 -> 2.0000001"]
    assert compare(committed, moved, rtol=1e-6) == []


def test_a_precision_change_is_a_difference() -> None:
    """`auto` resolving to bf16 on an AMX CPU is recorded, so it cannot pass for the committed fp32 run."""
    committed = {"precision": "fp32", "fid": 62.31}
    assert compare(committed, {"precision": "bf16", "fid": 62.31}) == ["precision: 'fp32' -> 'bf16'"]
    assert compare(committed, {"fid": 62.31}) == ["precision: missing from the fresh run"]


def test_default_params_pin_every_precision() -> None:
    """The default run is a function of params.yaml and the code: no precision is left to the CPU (`auto`)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["world"]["precision"] == "fp32"
    assert params["prepare"]["inception_precision"] == "fp32"


def test_committed_default_metrics_record_precision_and_cpu() -> None:
    for name in ("headline/evaluate.json", "headline/ablate.json", "headline/edit.json", "distill.json", "ablate.json",
                 "edit.json"):
        m = json.loads((DEFAULT / name).read_text())
        assert m.get("precision") == "fp32", f"reports/default/{name} records precision {m.get('precision')!r}"
        assert m.get("cpu"), f"reports/default/{name} does not record the CPU"
    for method, m in json.loads((DEFAULT / "evaluate.json").read_text()).items():
        assert m.get("precision") == "fp32", f"reports/default/evaluate.json {method}: precision {m.get('precision')!r}"


def test_headline_metrics_fit_a_terminal() -> None:
    """`dvc metrics show` prints one column per leaf: each headline file keeps to about 20."""
    def leaves(x) -> int:
        return sum(leaves(v) for v in x.values()) if isinstance(x, dict) else 1

    for name in ("headline/evaluate.json", "headline/ablate.json", "headline/edit.json", "distill.json"):
        n = leaves(json.loads((DEFAULT / name).read_text()))
        # 25: the ablate headline's 21 rows (the adaptor types now include forecast) + the 4-value machine record
        assert n <= 25, f"reports/default/{name} has {n} values: too wide for `dvc metrics show`"


def _has_default_run() -> str | None:
    missing = [f for f in DEFAULT_RUN_FILES if not (REPO / f).is_file()]
    if missing:
        return f"no default run in this working tree ({missing[0]} missing): run `dvc repro` first"
    if (REPO / "params.yaml").read_text() != (DEFAULT / "params.yaml").read_text():
        return "params.yaml differs from the default run's (reports/default/params.yaml): not a default run"
    return None


def test_the_working_trees_default_run_reproduces_the_committed_one() -> None:
    why = _has_default_run()
    if why:
        pytest.skip(why)
    report = compare_runs(DEFAULT, REPO)
    lines = [f"{f}: {d}" for f, diffs in report.items() for d in diffs[:5]]
    assert not report, ("the default run in this working tree does not reproduce reports/default:\n  "
                        + "\n  ".join(lines))
