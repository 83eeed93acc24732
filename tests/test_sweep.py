"""End-to-end sweeps with real Ray Tune and a real MLflow sqlite store (no mocks).

- a tiny real Clockwork sweep (distillation + evaluation from the library): MLflow parent + nested children,
  params, loss curves, Pareto tags, tables and plots on the parent, results.csv;
- >= 8 concurrent trials writing to one sqlite store, with a flaky trial (retried) and a broken one
  (recorded as failed, not fatal): no MLflow run is lost;
- a sweep killed midway (SIGKILL of the driver) resumes with --resume without rerunning finished trials,
  and a --no-mlflow sweep is logged afterwards with --import-results (idempotently).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.tune import driver  # noqa: E402
from pipeline.tune import records  # noqa: E402
from pipeline.tune import mlflow_sync  # noqa: E402

pytest.importorskip("ray")
pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the in-process sweeps (run_sweep joins it, as it joins any running cluster)."""
    import ray

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds); tests tell sweeps apart by parent."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"

CONTRACT = ["trial_id", "clock", "width", "cut", "steps", "adaptor", "fid", "fid_std", "kid", "clip", "gflops",
            "gflops_ratio", "latency_ms", "adaptor_params", "status", "pareto_fid_gflops", "pareto_clip_gflops",
            "pareto_fid_latency"]


def write_config(path: Path, section: dict) -> Path:
    path.write_text(yaml.safe_dump({"sweep": section}))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def store(uri: str, name: str):
    """The MLflow client, experiment, parent runs and child runs of sweep ``name``."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(mlflow_sync.DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`sweep.name` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, exp, parents, children


def test_tiny_clockwork_sweep_logs_parent_children_fronts(tmp_path, ray_cluster, mlflow_uri):
    from test_sweep_trial import make_world

    world = make_world(tmp_path / "world")
    uri = mlflow_uri
    cfg = write_config(tmp_path / "sweep.yaml", {
        "name": "tiny", "trial": "tests/test_sweep_trial.py:tiny_trial",
        "space": {"clock": [2, 4], "width": [8], "cut": [2], "steps": [4], "adaptor": ["resnet"]},
        "resources": {"cpus_per_trial": 0.5}, "max_failures": 1, "fid_tolerance": 0.5,
        "overrides": {"tiny_root": str(world), "distill_steps": 15},
    })
    summary = driver.run_sweep(cfg, sweeps_dir=tmp_path / "sweeps", tracking_uri=uri, num_cpus=2)
    out = tmp_path / "sweeps" / "tiny"

    rows = read_csv(out / "results.csv")
    assert list(rows[0])[:len(CONTRACT)] == CONTRACT
    assert len(rows) == 3 and all(r["status"] == "complete" for r in rows), rows  # 2 points + the baseline
    base = [r for r in rows if r["baseline"] == "True"]
    assert len(base) == 1 and base[0]["adaptor"] == "none" and float(base[0]["gflops_ratio"]) == 1.0
    assert all(float(r["gflops"]) < float(base[0]["gflops"]) for r in rows if r["baseline"] != "True")
    for name in records.FRONTS:
        assert any(r[f"pareto_{name}"] == "True" for r in rows)
        assert (out / f"pareto_{name}.png").stat().st_size > 10_000
    assert sum(r["recommended"] == "True" for r in rows) == (1 if summary["recommended"] else 0)
    assert summary["baseline"]["trial_id"] == base[0]["trial_id"]

    client, exp, parents, children = store(uri, "tiny")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    by_trial = {c.data.tags["sweep.trial_id"]: c for c in children}
    assert set(by_trial) == {r["trial_id"] for r in rows}
    for r in rows:
        c = by_trial[r["trial_id"]]
        assert c.info.run_name == r["run_name"]
        assert float(c.data.metrics["fid"]) == pytest.approx(float(r["fid"]))
        assert c.data.tags["pareto.fid_gflops"] == r["pareto_fid_gflops"].lower()
        assert c.data.tags["sweep.recommended"] == r["recommended"].lower()
        if r["baseline"] != "True":
            assert c.data.params["clock.period"] == r["clock"] and c.data.params["cut"] == r["cut"]
            assert c.data.params["adaptor.kind"] == r["adaptor"] and c.data.params["sampling.steps"] == "4"
        if r["adaptor"] == "resnet":
            assert c.data.params["adaptor.width"] == "8"
            curve = client.get_metric_history(c.info.run_id, "distill_loss")
            assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [5, 10, 15]
    # The UI filter for the front finds exactly the front.
    front = client.search_runs([exp.experiment_id], "tags.`pareto.fid_gflops` = 'true' and tags.`sweep.name` = 'tiny'")
    assert {f.data.tags["sweep.trial_id"] for f in front} == set(summary["fronts"]["fid_gflops"])
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    arts |= {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"results.csv", "summary.json", "pareto/pareto_fid_gflops.png", "pareto/pareto_clip_gflops.png",
            "pareto/pareto_fid_latency.png", "pareto/fronts.json", "pareto/pareto.csv"} <= arts
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.space.clock"] == "[2, 4]"
    assert client.get_run(parent.info.run_id).data.metrics["baseline.fid"] == pytest.approx(float(base[0]["fid"]))


def test_schedules_and_the_plain_steps_front_go_through_tune_and_mlflow(tmp_path, ray_cluster, mlflow_uri):
    """A schedule (list of adaptor steps) is a clock value Tune carries; the baseline runs at every front step
    count; trials get ΔFID@FLOPs; the one that beats fewer steps the most is recommended, on the parent too."""
    cfg = write_config(tmp_path / "sweep.yaml", {
        "name": "front", "trial": "tests/test_sweep_trial.py:quick_trial",
        "space": {"clock": [2, [1, 2]], "width": [1], "cut": [1], "steps": [4]}, "front_steps": [2, 3],
        "beat_margin": 0.5, "resources": {"cpus_per_trial": 0.5}, "overrides": {"sleep": 0.2},
    })
    summary = driver.run_sweep(cfg, sweeps_dir=tmp_path / "sweeps", tracking_uri=mlflow_uri, num_cpus=2)
    rows = {r["run_name"]: r for r in read_csv(tmp_path / "sweeps" / "front" / "results.csv")}
    assert set(rows) == {"baseline-s2", "baseline-s3", "baseline-s4", "c2-w1-k1-s4", "a1.2-w1-k1-s4"}
    assert all(r["status"] == "complete" for r in rows.values())
    assert rows["a1.2-w1-k1-s4"]["clock"] == "[1, 2]" and [p["steps"] for p in summary["plain_front"]] == [2, 3, 4]
    assert float(rows["a1.2-w1-k1-s4"]["dfid_at_flops"]) == pytest.approx(0.867, abs=0.01)  # quick_trial's formula
    assert rows["c2-w1-k1-s4"]["beats_fewer_steps"] == rows["a1.2-w1-k1-s4"]["beats_fewer_steps"] == "True"
    assert rows["a1.2-w1-k1-s4"]["recommended"] == "True" and summary["recommended"]["clock"] == [1, 2]
    client, _, parents, children = store(mlflow_uri, "front")
    tags, metrics = parents[0].data.tags, client.get_run(parents[0].info.run_id).data.metrics
    assert tags["sweep.recommended"] == "a1.2-w1-k1-s4" and tags["sweep.answer"] == summary["fewer_steps"]["answer"]
    assert tags["recommended.clock.adaptor_steps"] == "[1, 2]" and tags["sweep.beats_fewer_steps"] == "true"
    assert metrics["recommended.dfid_at_flops"] == pytest.approx(float(rows["a1.2-w1-k1-s4"]["dfid_at_flops"]))
    kid = {c.info.run_name: c for c in children}["a1.2-w1-k1-s4"]
    assert kid.data.tags["fewer_steps.beats"] == "true" and kid.data.params["clock.adaptor_steps"] == "[1, 2]"


def test_concurrent_trials_retries_and_failures_never_lose_a_run(tmp_path, monkeypatch, ray_cluster, mlflow_uri):
    # The default kind of store (a sqlite file), reached the default way (MLFLOW_TRACKING_URI).
    uri = mlflow_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = write_config(tmp_path / "sweep.yaml", {
        "name": "crowd", "trial": "tests/test_sweep_trial.py:quick_trial",
        "space": {"clock": [2, 3, 4, 5], "width": [1, 2], "cut": [1]}, "baseline": "none",
        "resources": {"cpus_per_trial": 0.2}, "max_failures": 1,
        "overrides": {"sleep": 2.0, "reports": 8, "fail_once_width": 2, "fail_clock": 5,
                      "barrier": 8, "barrier_dir": str(tmp_path / "barrier")},
    })
    driver.run_sweep(cfg, sweeps_dir=tmp_path / "sweeps")
    out = tmp_path / "sweeps" / "crowd"
    rows = {r["run_name"]: r for r in read_csv(out / "results.csv")}
    assert len(rows) == 8
    # A flaky trial is retried and completes; a broken one is recorded as failed and the sweep goes on.
    assert rows["c3-w2-k1"]["status"] == "complete" and rows["c3-w2-k1"]["attempts"] == "2"
    assert rows["c5-w1-k1"]["status"] == "error" and rows["c5-w1-k1"]["attempts"] == "2"
    assert rows["c5-w1-k1"]["error"] == "ValueError: broken trial (clock 5): always fails"
    assert sum(r["status"] == "complete" for r in rows.values()) == 6

    # The trials really overlapped: at the busiest moment, >= 8 were reporting losses to MLflow at once.
    spans = [json.loads(line) for f in (out / "work").glob("*/intervals.jsonl") for line in f.read_text().splitlines()]
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    busiest, now = 0, 0
    for _, d in events:
        now += d
        busiest = max(busiest, now)
    assert busiest >= 8, f"only {busiest} trials overlapped"

    client, _, parents, children = store(uri, "crowd")
    assert len(parents) == 1 and len(children) == 8
    status = {c.info.run_name: c.info.status for c in children}
    assert status["c5-w1-k1"] == status["c5-w2-k1"] == "FAILED" and list(status.values()).count("FINISHED") == 6
    for c in children:
        if c.info.status == "FINISHED":
            assert {"fid", "gflops", "clip", "latency_ms"} <= set(c.data.metrics)
            # Every loss report of every trial arrived (8 per attempt; the flaky ones report twice).
            n = len(client.get_metric_history(c.info.run_id, "distill_loss"))
            assert n == 8 * int(rows[c.info.run_name]["attempts"]), (c.info.run_name, n)
    assert "always fails" in [c for c in children if c.info.run_name == "c5-w2-k1"][0].data.tags["sweep.error"]


def test_random_search_with_asha_stops_trials_on_the_distillation_loss(tmp_path, ray_cluster, mlflow_uri):
    cfg = write_config(tmp_path / "sweep.yaml", {
        "name": "asha", "trial": "tests/test_sweep_trial.py:quick_trial",
        "space": {"clock": {"randint": [2, 7]}, "width": {"choice": [1, 2, 4]}, "cut": [1]},
        "search": {"algorithm": "random", "num_samples": 6, "seed": 1}, "baseline": "none",
        "scheduler": {"name": "asha", "options": {"grace_period": 2, "reduction_factor": 2}},
        "max_concurrent": 2, "resources": {"cpus_per_trial": 0.5}, "overrides": {"sleep": 1.0, "reports": 8},
    })
    driver.run_sweep(cfg, sweeps_dir=tmp_path / "sweeps", tracking_uri=mlflow_uri)
    rows = read_csv(tmp_path / "sweeps" / "asha" / "results.csv")
    assert len(rows) == 6 and all(2 <= int(r["clock"]) < 7 and r["width"] in ("1", "2", "4") for r in rows)
    status = {r["trial_id"]: r["status"] for r in rows}
    assert set(status.values()) <= {"complete", "early_stopped"} and "early_stopped" in status.values()
    client, _, _, children = store(mlflow_uri, "asha")
    for c in children:
        s = status[c.data.tags["sweep.trial_id"]]
        assert c.info.status == ("FINISHED" if s == "complete" else "KILLED") and c.data.tags["sweep.status"] == s
        n = len(client.get_metric_history(c.info.run_id, "distill_loss"))
        assert n == 8 if s == "complete" else 2 <= n < 8  # stopped at a rung, after >= grace_period reports


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    """A root for the default trial (pipeline.common:train_and_evaluate): configs/smoke.yaml with a validation split
    smaller than its 16 evaluation prompts (8 prompts, 24 reference images), data/prepared made by the prepare
    stage's own script (~20 s)."""
    root = tmp_path_factory.mktemp("val_root")
    p = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    for k in ("teacher", "scorer"):
        p["world"][k] = str(ROOT / p["world"][k])
    p["prepare"].update(val_prompts=8, val_reference_images=24)
    assert p["prepare"]["eval_prompts"] > 8
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(os.environ, CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root


def test_default_trial_checks_its_split_before_it_samples(val_root, tmp_path):
    """train_and_evaluate called directly: n_samples is checked against the split it scores (val by default:
    prepare.val_prompts; heldout: prepare.eval_prompts), and a data/prepared without a validation split is a clear
    ValueError - all before the teacher is loaded."""
    from pipeline.common import train_and_evaluate

    common = {"root": str(val_root), "params_file": str(val_root / "params.yaml"), "clock": 2, "cut": 1, "steps": 4,
              "adaptor": "identity", "device": "cpu"}
    with pytest.raises(ValueError, match=r"n_samples=9 but only 8 val prompts were prepared \(prepare.val_prompts"):
        train_and_evaluate({**common, "n_samples": 9}, str(tmp_path / "a"))  # default split: val
    with pytest.raises(ValueError, match=r"n_samples=17 but only 16 heldout prompts .*\(prepare.eval_prompts"):
        train_and_evaluate({**common, "n_samples": 17, "split": "heldout"}, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="split must be 'val' or 'heldout'"):
        train_and_evaluate({**common, "split": "test"}, str(tmp_path / "c"))
    stale = tmp_path / "stale"  # the same prepared data, made before it had a validation split
    shutil.copytree(val_root / "data", stale / "data")
    (stale / "data" / "prepared" / "val_reference_stats.npz").unlink()
    info = json.loads((stale / "data" / "prepared" / "prompts.json").read_text())
    (stale / "data" / "prepared" / "prompts.json").write_text(json.dumps({**info, "val_prompts": []}))
    with pytest.raises(ValueError) as e:
        train_and_evaluate({**common, "root": str(stale), "n_samples": 4}, str(tmp_path / "d"))
    assert "no validation split" in str(e.value) and "prepare.val_prompts and prepare.val_reference_images" in str(e.value)


def test_default_trials_score_on_the_validation_split(val_root, tmp_path, ray_cluster, mlflow_uri):
    """A real sweep of pipeline.common:train_and_evaluate (the embedded teacher, a distilled and a training-free
    adaptor, the plain baseline) with the default sweep.split: every trial evaluates the validation prompts (all 8
    of them, fewer than the 16 evaluation prompts), results.csv / MLflow / the answer say so, and the trials are
    summarised per adaptor kind."""
    raw = yaml.safe_load((val_root / "params.yaml").read_text())
    raw["sweep"] = {"name": "valsplit", "space": {"clock": [2], "width": [8], "cut": [1], "steps": [4],
                                                  "adaptor": ["resnet", "identity"]}, "front_steps": [2, 3],
                    "resources": {"cpus_per_trial": 1}, "max_failures": 0,
                    "overrides": {"root": str(val_root), "n_samples": 8, "distill_steps": 5, "latency_runs": 1,
                                  "device": "cpu"}}
    cfg = val_root / "sweep_valsplit.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    summary = driver.run_sweep(cfg, sweeps_dir=tmp_path / "sweeps", tracking_uri=mlflow_uri, num_cpus=2)
    out = tmp_path / "sweeps" / "valsplit"
    rows = {r["run_name"]: r for r in read_csv(out / "results.csv")}
    assert set(rows) == {"baseline-s2", "baseline-s3", "baseline-s4", "c2-resnet-w8-k1-s4", "c2-identity-k1-s4"}, rows
    assert all(r["status"] == "complete" and r["split"] == "val" for r in rows.values()), rows
    for r in rows.values():
        done = json.loads((out / "work" / r["key"] / "result.json").read_text())
        assert done["metrics"]["split"] == "val" and done["metrics"]["n_samples"] == 8 and done["params"]["split"] == "val"
    assert float(rows["c2-identity-k1-s4"]["adaptor_params"]) == 0 and float(rows["c2-resnet-w8-k1-s4"]["adaptor_params"]) > 0
    assert summary["split"] == "val" and "on the validation split" in summary["fewer_steps"]["answer"]
    groups = summary["by_adaptor"]
    assert groups["identity"]["training_free"] is True and groups["resnet"]["training_free"] is False
    assert groups["identity"]["trials"] == groups["resnet"]["trials"] == 1
    assert all(g["best"] is not None for g in groups.values())  # both scored against the plain-steps front
    client, _, parents, children = store(mlflow_uri, "valsplit")
    assert len(parents) == 1 and len(children) == 5
    assert parents[0].data.tags["sweep.split"] == "val" and parents[0].data.params["sweep.split"] == "val"
    assert {c.data.params["sweep.split"] for c in children} == {"val"}
    assert "validation split" in parents[0].data.tags["sweep.answer"]


def _wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, mlflow_uri):
    cfg = write_config(tmp_path / "sweep.yaml", {
        "name": "killme", "trial": "tests/test_sweep_trial.py:quick_trial",
        "space": {"clock": [2, 3, 4, 5], "width": [1], "cut": [1]}, "baseline": "none",
        "resources": {"cpus_per_trial": 1}, "max_concurrent": 2, "overrides": {"sleep": 3.0},
    })
    cmd = [sys.executable, str(ROOT / "pipeline" / "sweep.py"), "--config", str(cfg), "--sweeps-dir",
           str(tmp_path / "sweeps"), "--no-mlflow", "--num-cpus", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "sweeps" / "killme"
    with open(tmp_path / "first.log", "w") as log:
        # Its own session, so that the driver, Ray's daemons and the trials die together - and only they.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: len(list(out.glob("work/*/result.json"))) >= 1, 240, "a finished trial")
            time.sleep(2.5)  # Tune's state is saved every 2 s (TUNE_GLOBAL_CHECKPOINT_S)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finished = {p.parent.name for p in out.glob("work/*/result.json")}
    assert 1 <= len(finished) < 4, finished
    assert not (out / "results.csv").exists()

    res = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Resuming" in res.stdout
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    for key in finished:  # run once, before the kill; never again
        kinds = [json.loads(line)["kind"] for line in (out / "work" / key / "attempts.jsonl").read_text().splitlines()]
        assert kinds.count("run") == 1, (key, kinds)
    assert {r["key"] for r in rows} >= finished

    # A --no-mlflow sweep goes into MLflow afterwards, as often as one likes, without duplicates.
    uri = mlflow_uri
    for _ in range(2):
        driver.import_results(out, tracking_uri=uri)
    client, _, parents, children = store(uri, "killme")
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.tags["sweep.trial_id"] for c in children} == {r["trial_id"] for r in rows}
    table = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "results.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 4  # replaced, not appended to, by the second import
    c = [c for c in children if c.info.run_name == "c2-w1-k1"][0]
    assert len(client.get_metric_history(c.info.run_id, "distill_loss")) == 4
    assert c.data.params["clock.period"] == "2" and c.info.status == "FINISHED"
