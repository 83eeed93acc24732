"""reports/default is what the committed code makes: the files of the default `dvc repro` (a fresh clone on a CPU,
reports/default/RUN.md) are tied to that run's dvc.lock, kept beside them as reports/default/dvc.lock, and that lock
to today's stage code and params.

When a change to a stage's code or to params.yaml changes what the default run computes, these tests fail until the
default run is repeated (`./setup.sh && dvc repro` in a fresh clone) and its dvc.lock and metrics are committed
(the reproduction is exact on a CPU but for the measured latencies) - so a committed number never outlives the
code that made it. Nothing here runs the pipeline: it compares hashes and values (seconds). The repository's own
dvc.lock is left alone: a user's `dvc repro` rewrites it (latencies move every output's hash), and that must not
fail these tests; whether such a run reproduced the committed numbers is tests/test_reproduction.py's question.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "reports" / "default"
LOCK = DEFAULT / "dvc.lock"  # the default run's own lock, copied beside its files
STAGES = ("prepare", "trajectories", "distill", "evaluate", "ablate", "edit")  # what reports/default's numbers come from
OUTS = {"metrics/evaluate.json": "evaluate.json", "metrics/ablate.json": "ablate.json",
        "metrics/distill.json": "distill.json", "plots/distill_loss.csv": "distill_loss.csv", "metrics/edit.json": "edit.json",
        "metrics/schedule.json": "schedule.json", "metrics/headline/evaluate.json": "headline/evaluate.json", "metrics/headline/ablate.json": "headline/ablate.json",
        "metrics/headline/edit.json": "headline/edit.json"}
RERUN = ("repeat the default run from a fresh clone (`./setup.sh && dvc repro`) and commit its dvc.lock (also as "
         "reports/default/dvc.lock) + reports/default (scripts/commit_default_run.sh)")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lock() -> dict:
    if not LOCK.is_file():
        pytest.fail(f"reports/default/dvc.lock is not committed; {RERUN}")
    return yaml.safe_load(LOCK.read_text())["stages"]


def _entries(stage: dict, kind: str) -> list[dict]:
    return [e for e in stage.get(kind, []) if isinstance(e, dict) and "path" in e]


@pytest.mark.parametrize("name", STAGES)
def test_locked_code_is_todays_code(lock: dict, name: str) -> None:
    """Every file the stage depends on (code, committed assets' files) hashes as it did in the locked run."""
    stale = []
    for dep in _entries(lock[name], "deps"):
        path, want = REPO / dep["path"], dep.get("md5", "")
        if want.endswith(".dir") or not path.is_file():  # directories (data, assets) are checked by DVC itself
            continue
        if md5(path) != want:
            stale.append(dep["path"])
    assert not stale, f"stage {name}: {stale} changed since the default run of reports/default; {RERUN}"


@pytest.mark.parametrize("name", STAGES)
def test_locked_params_are_todays_params(lock: dict, name: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, value in lock[name].get("params", {}).get("params.yaml", {}).items():
        node = params
        for part in section.split("."):
            node = node[part]
        assert node == value, f"params.yaml `{section}` differs from the default run's; {RERUN}"


def test_committed_default_metrics_are_the_locked_run(lock: dict) -> None:
    """reports/default/*.json and the loss curve are byte for byte the outputs dvc.lock recorded."""
    recorded = {o["path"]: o["md5"] for name in STAGES for o in _entries(lock[name], "outs") + _entries(lock[name], "metrics")
                + _entries(lock[name], "plots")}
    for out, committed in OUTS.items():
        assert out in recorded, f"dvc.lock records no {out}"
        assert md5(DEFAULT / committed) == recorded[out], f"reports/default/{committed} is not the locked run's {out}"
    assert (DEFAULT / "params.yaml").read_text() == (REPO / "params.yaml").read_text(), \
        f"reports/default/params.yaml is not today's params.yaml; {RERUN}"
