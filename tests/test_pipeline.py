"""The smoke configuration through real `dvc repro` in a temporary copy of the repository.

One copy per test session (module fixture): the first `dvc repro` runs every stage; then a second
`dvc repro` must do nothing, and changing only `adaptor.width` must re-run distill (and what follows)
but never trajectories. Marked slow: the first `dvc repro` takes a few minutes on a 2-core CPU (every stage, every ablation).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.slow

EVALUATE_METHODS = ("baseline", "clockwork", "clockwork_identity", "baseline_6steps", "baseline_4steps")
EVALUATE_KEYS = {"fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms", "adaptor_params", "steps",
                 "clock", "cut", "adaptor", "sampler", "n_samples", "split", "fid_boot", "clip_boot", "vs_fewer_steps",
                 "precision"}
ABLATE_KEYS = {"ablation", "variant", "sampler", "steps", "clock", "cut", "adaptor", "inputs", "training", "fid", "fid_std",
               "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms", "adaptor_params", "n_samples", "guidance",
               "train", "split", "fid_boot", "clip_boot", "vs_fewer_steps", "width", "depth"}
ABLATIONS = {"adaptor_type", "schedule", "cut", "inputs", "training", "sampler", "steps", "levers", "front"}
GENERATED = ("dvc.lock", "metrics", "plots", "models", "data", "reports/analysis", "mlflow.db", "mlruns", "mlartifacts")


def copy_repo(dst: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), without generated outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if not src.is_file() or f.startswith(GENERATED):
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / f)


def dvc(repo: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}", PYTHONPATH=str(repo))
    # One thread per stage: on a shared CPU two OpenMP threads spin-wait and run several times slower.
    env.setdefault("CLOCKWORK_THREADS", "1")
    res = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("smoke_repo")
    copy_repo(repo)
    shutil.copy(repo / "configs" / "smoke.yaml", repo / "params.yaml")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "smoke copy"], cwd=repo, check=True)
    t0 = time.time()
    res = dvc(repo, "repro")
    return {"repo": repo, "out": res.stdout + res.stderr, "seconds": time.time() - t0}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_smoke_repro_runs_every_stage(smoke) -> None:
    assert ran(smoke["out"]) == {"prepare", "trajectories", "distill", "evaluate", "ablate", "edit", "report",
                                    "report_full", "report_default"}, \
        smoke["out"][-3000:]
    assert "'teacher' is frozen" in smoke["out"] and "'clip' is frozen" in smoke["out"]
    print(f"smoke dvc repro: {smoke['seconds']:.0f}s")


def test_smoke_metrics_follow_the_contract(smoke) -> None:
    repo = smoke["repo"]
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert tuple(ev) == EVALUATE_METHODS
    for name, m in ev.items():
        assert set(m) == EVALUATE_KEYS, (name, set(m) ^ EVALUATE_KEYS)
        for k in ("fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms"):
            assert _finite(m[k]), (name, k, m[k])
        assert m["n_samples"] == 16 and m["gflops"] > 0 and m["latency_ms"] > 0
    assert ev["clockwork"]["adaptor"] == "resnet" and ev["clockwork"]["adaptor_params"] > 0
    assert ev["clockwork_identity"]["adaptor_params"] == 0 and ev["baseline"]["adaptor"] == "none"
    # FLOPs: Clockwork saves the low-res part on half of the steps; fewer steps cost proportionally less.
    assert ev["clockwork_identity"]["gflops"] < ev["clockwork"]["gflops"] < ev["baseline"]["gflops"]
    assert ev["baseline_4steps"]["gflops"] == pytest.approx(ev["baseline"]["gflops"] / 2, rel=1e-3)
    # every method against the plain-steps front (smoke: 4, 6, 8 steps) at equal GFLOPs
    for name in ("baseline", "baseline_6steps", "baseline_4steps"):  # the front's own points: zero by construction
        v = ev[name]["vs_fewer_steps"]["fid"]
        assert v["status"] == "inside" and v["steps"] == ev[name]["steps"]
        assert v["delta"] <= 1e-9  # 0 on the front; a plain point the front drops is worse than it
    for name in ("clockwork", "clockwork_identity"):
        v = ev[name]["vs_fewer_steps"]["fid"]
        assert v["status"] in ("inside", "cheaper_than_front")
        if v["status"] == "inside":
            assert 4 <= v["steps"] <= 8 and _finite(v["delta"]) and v["delta_std"] > 0
    assert len(ev["baseline"]["fid_boot"]) == 2 and ev["baseline"]["split"] == "heldout"

    rows = json.loads((repo / "metrics/ablate.json").read_text())["rows"]
    assert {r["ablation"] for r in rows} == ABLATIONS
    for r in rows:
        assert set(r) == ABLATE_KEYS, set(r) ^ ABLATE_KEYS
        assert all(_finite(r[k]) for k in ("fid", "fid_std", "kid", "clip", "gflops", "latency_ms")), r
    every = [r for r in rows if r["variant"] == "every_step_without_r_out_prev"][0]
    assert every["inputs"] == ["r_in", "time"] and every["clock"] == list(range(8))
    assert {r["training"] for r in rows if r["ablation"] == "training"} == {"unrolled", "forward_noised"}
    assert [r["steps"] for r in rows if r["ablation"] == "front"] == [4, 6, 8]
    assert all(r["adaptor"] == "none" for r in rows if r["ablation"] == "front")
    levers = {r["variant"]: r for r in rows if r["ablation"] == "levers"}
    assert set(levers) == {"small", "rollout", "output_loss"} and levers["rollout"]["train"] == {"distill_steps": 5, "rollout_steps": 5}
    assert all(r["vs_fewer_steps"] is not None for r in rows if r["sampler"] == "dpm++")
    assert all(r["vs_fewer_steps"] is None for r in rows if r["sampler"] != "dpm++")  # no front for other samplers

    distill = json.loads((repo / "metrics/distill.json").read_text())
    assert {"final_loss", "heldout_mse", "steps", "adaptor_params"} <= set(distill)
    assert _finite(distill["final_loss"]) and _finite(distill["heldout_mse"]) and distill["steps"] == 20
    lines = (repo / "plots/distill_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 1 + 20 // 5
    edit = json.loads((repo / "metrics/edit.json").read_text())
    assert edit["n_edits"] == 6 and edit["attributes"] == ["colour", "size", "item"]
    assert list(edit["methods"]) == ["pnp", "pnp_3steps", "pnp_2steps", "pnp_identity_c2", "pnp_distilled_c2",
                                     "pnp_edit-distilled_c2", "inversion_only", "sdedit"]
    for name, r in edit["methods"].items():
        assert _finite(r["gflops"]) and r["gflops"] > 0 and _finite(r["ms_per_image"]), name
        assert set(r["scores"]) == {"attribute_success", "clip_preference", "clip_margin", "mask_iou", "structure_ssim"}
        assert ("vs_pnp" in r) == (name != "pnp") and ("vs_fewer_steps" in r) == (r["method"]["adaptor"] is not None)
    m = edit["methods"]
    # Clockwork in both passes costs less than the full UNet; fewer steps cost proportionally less
    assert m["pnp_identity_c2"]["gflops"] < m["pnp_distilled_c2"]["gflops"] < m["pnp"]["gflops"]
    assert m["pnp_edit-distilled_c2"]["gflops"] == pytest.approx(m["pnp_distilled_c2"]["gflops"])  # same architecture
    assert m["pnp_edit-distilled_c2"]["scores"] != m["pnp_distilled_c2"]["scores"]  # another adaptor
    made = list((repo / "data/edit/adaptors").glob("*/config.json"))  # the edit-distilled adaptor, cached
    assert len(made) == 1 and json.loads(made[0].read_text())["cut"] == 1
    assert m["pnp_identity_c2"]["inversion_adaptor_steps"] == 2 and m["pnp"]["inversion_adaptor_steps"] == 0
    assert m["pnp_2steps"]["gflops"] == pytest.approx(m["pnp"]["gflops"] / 2, rel=1e-3)
    assert "## edit" in (repo / "reports/analysis/summary.md").read_text()
    for png in ("plots/samples/evaluate.png", "plots/samples/ablate.png", "plots/samples/edit.png"):
        assert (repo / png).read_bytes()[:4] == b"\x89PNG"
    assert (repo / "models/adaptor/config.json").is_file()
    assert (repo / "reports/analysis/summary.md").is_file()
    # report_full re-made the committed full-configuration report from the committed metrics, unchanged
    for name in ("full", "default"):  # and report_default the committed default-run report
        for f in (REPO / f"reports/{name}/analysis").glob("*.md"):
            assert (repo / f"reports/{name}/analysis" / f.name).read_text() == f.read_text(), f.name


def test_smoke_logged_to_mlflow(smoke) -> None:
    db = smoke["repo"] / "mlflow.db"
    with sqlite3.connect(db) as con:
        names = {r[0] for r in con.execute("select name from experiments")}
        runs = con.execute("select count(*) from runs").fetchone()[0]
        params = {r[0] for r in con.execute("select key from params")}
    assert {"clockwork-data", "clockwork-distill", "clockwork-evaluate", "clockwork-ablate"} <= names
    assert runs >= 6 and {"adaptor.width", "clock.period", "cut"} <= params


def test_second_repro_does_nothing(smoke) -> None:
    repo = smoke["repo"]
    status = dvc(repo, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    again = dvc(repo, "repro")
    assert ran(again.stdout) == set(), again.stdout


def test_train_and_evaluate_for_the_sweep(smoke, tmp_path: Path) -> None:
    from pipeline.common import train_and_evaluate

    repo = smoke["repo"]
    losses = []
    common = {"root": str(repo), "distill_steps": 5, "n_samples": 8, "latency_runs": 1}
    m = train_and_evaluate({"clock": 2, "width": 16, "cut": 2, "steps": 4, "adaptor": "resnet", **common},
                           str(tmp_path / "t1"), on_log=lambda step, loss: losses.append((step, loss)))
    for k in ("fid", "fid_std", "kid", "clip", "gflops", "gflops_ratio", "latency_ms", "adaptor_params"):
        assert _finite(m[k]), (k, m[k])
    assert m["steps"] == 4 and m["cut"] == 2 and 0 < m["gflops_ratio"] < 1 and m["adaptor_params"] > 0
    assert m["split"] == "val" and m["n_samples"] == 8  # the sweep's default: the smoke config's validation split
    assert losses and losses[-1][0] == 5 and (tmp_path / "t1" / "adaptor" / "config.json").is_file()
    assert (repo / "data" / "sweep_trajectories").is_dir()  # 4 steps: unrolled once for the sweep
    base = train_and_evaluate({"clock": 1, "width": 16, "cut": 1, "steps": 4, **common}, str(tmp_path / "t2"))
    assert base["adaptor"] == "none" and base["adaptor_params"] == 0 and base["gflops_ratio"] == 1.0
    ident = train_and_evaluate({"clock": 2, "cut": 1, "steps": 8, "adaptor": "identity", **common}, str(tmp_path / "t3"))
    assert ident["adaptor_params"] == 0 and ident["gflops_ratio"] < 0.75


def test_width_change_reruns_distill_not_trajectories(smoke) -> None:
    repo = smoke["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["adaptor"]["width"] = 48
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status", "--json")
    changed = set(json.loads(status.stdout))
    assert "distill" in changed and "trajectories" not in changed and "prepare" not in changed, status.stdout
    res = dvc(repo, "repro", "distill")
    out = res.stdout
    assert ran(out) == {"distill"}, out
    assert "Stage 'trajectories' didn't change, skipping" in out
    assert json.loads((repo / "models/adaptor/config.json").read_text())["width"] == 48
    downstream = set(json.loads(dvc(repo, "status", "--json").stdout))
    assert {"evaluate", "ablate"} <= downstream and "trajectories" not in downstream


def test_auto_schedule_and_fronts(smoke) -> None:
    """clock.adaptor_steps: auto - the distill stage trains on every step, chooses `budget` steps on calibration prompts
    that are not evaluation prompts, fine-tunes - and evaluate.fronts evaluates each adaptor's best schedule per budget."""
    repo = smoke["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["clock"].update(adaptor_steps="auto", budget=2, finetune_steps=4, refine_top=2, calibration_prompts=4,
                           schedule_score="val_fid")
    params["evaluate"].update(fronts=["distilled", "identity", "forecast"], front_budgets=[1])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro", "evaluate").stdout
    assert {"distill", "evaluate"} <= ran(out), out[-3000:]
    sched = json.loads((repo / "metrics/schedule.json").read_text())
    prompts = json.loads((repo / "data/prepared/prompts.json").read_text())
    assert sched["mode"] == "auto" and len(sched["adaptor_steps"]) == 2 and 0 not in sched["adaptor_steps"]
    assert sched["calibration"]["source"] == "val" and sched["calibration"]["score"] == "val_fid"
    assert sched["calibration"]["prompts"] == prompts["val_prompts"][:4]
    assert sched["search"][0]["candidates"] == 21 and sched["search"][0]["method"] == "exhaustive"
    ranking = sched["search"][0]["ranking"]  # every candidate, best first; the best two fine-tuned and scored again
    assert len(ranking) == 21 and [r[1] for r in ranking] == sorted(r[1] for r in ranking)
    assert [r["adaptor_steps"] for r in sched["refined"]] == [r[0] for r in ranking[:2]]
    best = min(sched["refined"], key=lambda r: r["score"])
    assert sched["adaptor_steps"] == best["adaptor_steps"] and all(r["score"] > 0 for r in sched["refined"])
    assert len(sched["calibration"]["prompts"]) == 4 and not set(sched["calibration"]["prompts"]) & set(prompts["eval_prompts"])
    assert (repo / "models/adaptor/all_steps/config.json").is_file()
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ev["clockwork"]["clock"] == sched["adaptor_steps"]
    for kind in ("distilled", "identity", "forecast"):
        row = ev[f"front_{kind}_b1"]
        assert row["front"] == kind and row["budget"] == 1 and len(row["clock"]) == 1 and 0 not in row["clock"]
        assert _finite(row["fid"]) and row["gflops"] < ev["baseline"]["gflops"]
    assert ev["front_forecast_b1"]["adaptor"] == "forecast" and ev["front_distilled_b1"]["all_steps_adaptor"] is True
    assert ev["front_identity_b1"]["score"] == "val_fid" and ev["front_identity_b1"]["schedule_score"] > 0  # an FID
    again = dvc(repo, "repro", "-f", "evaluate").stdout  # rows and searches resume from data/evaluate
    assert "reused" in again and "front schedules searched" in again, again[-2000:]
    assert json.loads((repo / "metrics/evaluate.json").read_text())["front_forecast_b1"]["fid"] == ev["front_forecast_b1"]["fid"]
    head = json.loads((repo / "metrics/headline/evaluate.json").read_text())
    assert set(head["fronts"]) == {"b1"} and len(head["fronts"]["b1"]) == 1
    assert set(head["fronts"]["b1"]) <= {"distilled", "identity", "forecast", "none"}
    assert (repo / "plots/fronts.png").stat().st_size > 10_000
