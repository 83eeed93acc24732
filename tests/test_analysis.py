"""The analysis notebooks, run headlessly on SYNTHETIC fixtures (analysis/fixtures.py) in a temp dir.

The fixtures' numbers are made up; reports are written only under pytest's tmp dirs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis import ablation_tables, claims, fronts, loader, main_tables, sweep_loader, sweep_tables  # noqa: E402
from analysis.results import Results  # noqa: E402
from analysis.fixtures import write_fixtures  # noqa: E402

# every report the notebooks write from complete inputs (+ a sensitivity file): stem -> extensions
EXPECTED = {
    **{t: ("md", "tex") for t in ("table1_main", "fig4_points", "table3_adaptor", "table3_schedule", "table3_cut",
                                  "table4_samplers", "table5_inputs", "fig7_training", "distill_summary",
                                  "sweep_smoke_front", "sweep_smoke_trials", "sweep_mlflow_crosscheck",
                                  "paper_vs_ours", "table1_fewer_steps", "table1_acceptance", "table_levers",
                                  "table_sensitivity")},
    **{f: ("png", "svg") for f in ("fig4_fid_vs_flops", "fig7_unrolled_vs_forward_noised", "distill_loss",
                                   "sweep_smoke_pareto", "fig_levers", "fig2_sensitivity")},
}
FEWER_STEPS_VERDICTS = ("beats fewer steps", "ties", "loses", "outside the front", "n/a")
VERDICTS = {"holds", "holds (within noise)", "does not hold", "does not hold (within noise)", "not measured"}


def run_all(results: Path, reports: Path, *only: str, sensitivity: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "CLOCKWORK_MLFLOW_URI", "CLOCKWORK_RESULTS", "CLOCKWORK_REPORTS",
                        "CLOCKWORK_SWEEPS", "CLOCKWORK_SENSITIVITY")}
    cmd = [sys.executable, str(REPO / "analysis" / "run_all.py"), "--results", str(results), "--reports", str(reports)]
    if sensitivity is not None:
        cmd += ["--sensitivity", str(sensitivity)]
    return subprocess.run(cmd + (["--only", *only] if only else []), env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="session", autouse=True)
def _full_results_started(tmp_path_factory):
    """Start writing complete SYNTHETIC results incl. an MLflow sqlite store at session start, in the
    background (creating the store mostly waits on sqlite), in a subprocess (mlflow's tracking URI is
    process-global and other tests may use MLflow)."""
    root = tmp_path_factory.mktemp("results")
    proc = subprocess.Popen([sys.executable, "-m", "analysis.fixtures", str(root)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    yield root, proc
    proc.kill()


@pytest.fixture(scope="session")
def full_results(_full_results_started) -> Path:
    root, proc = _full_results_started
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return root


@pytest.fixture(scope="session")
def full_run(full_results, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    proc = run_all(full_results, reports, sensitivity=full_results / "sensitivity.json")
    return proc, reports


def md_rows(path: Path) -> list[list[str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("| ").split(" | ")] for ln in lines[1:]]  # skip the header


# ------------------------------------------------------------------------------------------- end to end

def test_malformed_evaluate_json_fails_the_run(tmp_path):
    root = write_fixtures(tmp_path / "results", minimal=True)
    ev = json.loads((root / "metrics" / "evaluate.json").read_text())
    ev["clockwork"]["fid"] = "n/a"
    (root / "metrics" / "evaluate.json").write_text(json.dumps(ev))
    proc = run_all(root, tmp_path / "reports", "01")
    assert proc.returncode != 0
    assert "evaluate.json" in proc.stderr and "fid" in proc.stderr
    assert not (tmp_path / "reports" / "table1_main.md").exists()


def test_missing_optional_inputs_are_skipped(tmp_path):
    root = write_fixtures(tmp_path / "results", minimal=True)  # evaluate.json only: no ablations, sweep, MLflow
    proc = run_all(root, tmp_path / "reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = {p.name for p in (tmp_path / "reports").iterdir()}
    assert {"table1_main.md", "fig4_fid_vs_flops.svg", "paper_vs_ours.md"} <= written
    assert not any(n.startswith(("sweep_", "table3", "fig7", "table_levers", "fig_levers", "fig2", "table_sensitivity"))
                   for n in written)
    rows = md_rows(tmp_path / "reports" / "paper_vs_ours.md")
    assert len(rows) == len(claims.CLAIMS)
    # evaluate.json alone answers Table 1's claims and Fig. 4's (its vs_fewer_steps); the ablation claims need ablate.json
    assert {r[-1] for r in rows if not r[0].startswith(("T1-", "F4-"))} == {"not measured"}


def test_all_notebooks_run_and_write_every_report(full_run):
    proc, reports = full_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for nb in ("01_main_results", "02_ablations", "03_sweep", "04_paper_vs_ours"):
        assert f"{nb}.ipynb: ok" in proc.stdout
    missing = [f"{s}.{e}" for s, exts in EXPECTED.items() for e in exts if not (reports / f"{s}.{e}").is_file()]
    assert not missing, missing
    for png in reports.glob("*.png"):
        assert png.stat().st_size > 5000, png
    assert r"\begin{tabular}" in (reports / "table1_main.tex").read_text()


def test_paper_vs_ours_has_a_row_per_claim(full_run, full_results):
    _, reports = full_run
    rows = md_rows(reports / "paper_vs_ours.md")
    assert [r[0] for r in rows] == [c.id for c in claims.CLAIMS]
    assert {"Table 1", "Table 3", "Table 4", "Table 5", "Fig. 7"} <= {r[1] for r in rows}
    assert all(r[-1] in VERDICTS for r in rows)
    assert [r[0] for r in rows if r[-1] == "not measured"] == []  # the fixtures hold every ablation
    # "ours" shows the numbers of the results, not typed ones
    ev = json.loads((full_results / "metrics" / "evaluate.json").read_text())
    fid_row = next(r for r in rows if r[0] == "T1-fid")
    b, c = ev["baseline"], ev["clockwork"]
    assert f"{b['fid']:.2f} ± {b['fid_std']:.2f} → {c['fid']:.2f} ± {c['fid_std']:.2f}" in fid_row[4]
    paper_row = next(r for r in rows if r[0] == "T3-resnet-vs-identity")
    assert "±" not in paper_row[3] and "±" in paper_row[4]  # our rows carry their std, the paper's have none


def test_table1_numbers_come_from_evaluate_json(full_run, full_results):
    _, reports = full_run
    ev = json.loads((full_results / "metrics" / "evaluate.json").read_text())
    text = (reports / "table1_main.md").read_text()
    for method in ("baseline", "clockwork", "clockwork_identity", "baseline_6steps", "baseline_4steps",
                   *(k for k in ev if k.startswith("baseline_"))):
        assert f"{ev[method]['fid']:.2f} ± {ev[method]['fid_std']:.2f}" in text
    rows = md_rows(reports / "table1_main.md")
    assert [r[1] for r in rows[-2:]] == ["baseline (full UNet), 4 steps", "baseline (full UNet), 3 steps"]
    assert [r[1] for r in rows[3:]] == [f"baseline (full UNet), {k} steps" for k in (7, 6, 5, 4, 3)]  # every front row
    fig4 = (reports / "fig4_points.md").read_text()
    assert f"{ev['baseline_4steps']['fid']:.2f}" in fig4
    checks = md_rows(reports / "table1_acceptance.md")
    # FLOPs, FID, CLIP, identity, the cheapest costlier fewer-steps baseline, ΔFID@FLOPs vs the plain-steps front
    assert len(checks) == 6 and all(r[-1] in {"pass", "FAIL", "pass (within noise)", "FAIL (within noise)"}
                                    for r in checks)
    assert checks[-1][1] == "ΔFID@FLOPs ≥ +1.0 and ≥ 2σ (beats fewer steps)"


def test_acceptance_checks_are_computed(tmp_path):
    ev = loader.load_evaluate(write_fixtures(tmp_path, minimal=True) / "metrics" / "evaluate.json")
    ok = main_tables.acceptance_table(ev).df.set_index("check")["result"]
    assert len(ok) == 6 and set(ok) <= {"pass", "pass (within noise)"}, ok
    worse = ev.copy()
    cw = worse["method"] == "clockwork"
    i = worse.index[cw][0]
    worse.loc[cw, ["fid", "gflops", "clip"]] = [30.0, worse.loc[cw, "gflops"].iloc[0] * 1.2, 0.1]
    # the stages' answer for that point: far above the front (what versus_fewer_steps would write)
    worse.at[i, "vs_fewer_steps"] = {"fid": {"delta": -9.3, "delta_std": 0.3, "front": 20.7, "front_std": 0.2,
                                             "status": "inside", "steps": 6.9}, "clip": None}
    bad = main_tables.acceptance_table(worse).df
    # FLOPs, FID, CLIP, identity, the 7-step baseline (6 steps is now cheaper), ΔFID@FLOPs
    assert bad["result"].str.startswith("FAIL").sum() == 6, bad
    assert "7 steps" in bad["check"].iloc[4] and bad["result"].iloc[-1] == "FAIL"
    dearer = worse.copy()
    dearer.loc[cw, "gflops"] = 100.0  # costs more than any baseline with fewer steps
    dearer.at[i, "vs_fewer_steps"] = {"fid": {"delta": None, "delta_std": None, "front": None, "front_std": None,
                                              "status": "costlier_than_front", "steps": None}}
    res = main_tables.acceptance_table(dearer).df["result"]
    assert res.iloc[-2] == "not measured" and res.iloc[-1] == "not measured"


def test_flat_results_folder_reads_like_the_pipeline_layout(tmp_path):
    nested = write_fixtures(tmp_path / "nested", minimal=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "evaluate.json").write_text((nested / "metrics" / "evaluate.json").read_text())
    (flat / "distill_loss.csv").write_text("step,loss\n1,0.5\n2,0.25\n")
    a = Results(root=nested, reports=tmp_path / "r1")
    b = Results(root=flat, reports=tmp_path / "r2")
    pd.testing.assert_frame_equal(a.evaluate(), b.evaluate())
    assert a.source("evaluate.json") == "metrics/evaluate.json"
    assert b.source("evaluate.json") == str(flat / "evaluate.json")
    assert b.distill()[1]["loss"].tolist() == [0.5, 0.25] and b.ablate() is None
    table = b.write_table(main_tables.table1(b.evaluate()), "table1_main")
    assert table.source == str(flat / "evaluate.json")


COMMITTED_SWEEP = REPO / "reports" / "sweeps" / "clock-width-cut"


def report_full_cmd(out: Path, stage: str = "report_full") -> list[str]:
    """dvc.yaml's `report_full` (or another report) command with its output folder replaced by ``out``."""
    import shlex

    import yaml

    cmd = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert cmd[:2] == ["python", "pipeline/report.py"] and "--out" in cmd, cmd
    cmd[cmd.index("--out") + 1] = str(out)
    return [sys.executable, *cmd[1:]]


def test_committed_full_reports_are_up_to_date(tmp_path):
    """reports/full/analysis is what `dvc repro report_full` makes from the committed reports/full metrics and the
    committed sweep records (reports/sweeps/)."""
    committed = REPO / "reports" / "full" / "analysis"
    if not committed.is_dir():
        pytest.skip("reports/full/analysis not generated yet")
    env = {k: v for k, v in os.environ.items() if k not in ("CLOCKWORK_RESULTS", "CLOCKWORK_REPORTS", "CLOCKWORK_SWEEPS")}
    proc = subprocess.run(report_full_cmd(tmp_path / "out"), cwd=REPO, capture_output=True, text=True,
                          env={**env, "CLOCKWORK_MLFLOW": "0"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fresh = {p.name: p.read_text() for p in (tmp_path / "out").glob("*.md")}
    assert fresh and fresh == {p.name: p.read_text() for p in committed.glob("*.md")}, \
        "reports/full/analysis is stale: run `dvc repro report_full` and commit it"
    figures = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert figures == {p.name for p in committed.glob("*.png")}
    if COMMITTED_SWEEP.is_dir():  # the sweep's fronts are among the committed reports
        assert {"sweep_clock-width-cut_pareto.png", "sweep_clock-width-cut_pareto.svg"} <= {p.name for p in committed.iterdir()}
        assert {"sweep_clock-width-cut_front.md", "sweep_clock-width-cut_trials.md"} <= set(fresh)


def test_committed_default_reports_are_up_to_date(tmp_path):
    """reports/default/analysis is what `dvc repro report_default` makes from the committed reports/default metrics."""
    committed = REPO / "reports" / "default" / "analysis"
    if not committed.is_dir():
        pytest.skip("reports/default/analysis not generated yet")
    env = {k: v for k, v in os.environ.items() if k not in ("CLOCKWORK_RESULTS", "CLOCKWORK_REPORTS", "CLOCKWORK_SWEEPS")}
    proc = subprocess.run(report_full_cmd(tmp_path / "out", "report_default"), cwd=REPO, capture_output=True, text=True,
                          env={**env, "CLOCKWORK_MLFLOW": "0"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fresh = {p.name: p.read_text() for p in (tmp_path / "out").glob("*.md")}
    assert fresh and fresh == {p.name: p.read_text() for p in committed.glob("*.md")}, \
        "reports/default/analysis is stale: run `dvc repro report_default` and commit it"


def _committed_sweeps(monkeypatch, tmp_path, folder: Path) -> "Results":
    """Results reading reports/full and the committed sweep records, as `dvc repro report_full` does."""
    if not folder.is_dir():
        pytest.skip(f"no committed sweep record {folder.name}")
    monkeypatch.setenv("CLOCKWORK_RESULTS", str(REPO / "reports" / "full"))
    monkeypatch.setenv("CLOCKWORK_REPORTS", str(tmp_path))
    monkeypatch.setenv("CLOCKWORK_SWEEPS", str(folder.parent))
    monkeypatch.setenv("CLOCKWORK_MLFLOW_URI", "none")
    return Results.from_env()


def test_committed_sweep_is_read_from_its_folder(monkeypatch, tmp_path):
    """reports/sweeps/<name>/ (CLOCKWORK_SWEEPS) reads like sweeps/<name>/; its fronts and recommendation are the ones
    pipeline/sweep.py recorded in results.csv and summary.json, and its tables say how it ran."""
    res = _committed_sweeps(monkeypatch, tmp_path, COMMITTED_SWEEP)
    assert res.sweeps_dir == COMMITTED_SWEEP.parent
    csvs = res.sweep_csvs()
    assert set(csvs) == {"clock-width-cut", "schedule-width-cut-steps"}
    trials = csvs["clock-width-cut"]
    summary = json.loads((COMMITTED_SWEEP / "summary.json").read_text())
    assert len(trials) == summary["n_trials"] == 19 and set(trials["status"]) == {"complete"}
    assert sweep_loader.is_sweep_baseline(trials).sum() == 1

    info = res.sweep_info("clock-width-cut", trials)
    assert info.source == "reports/sweeps/clock-width-cut/results.csv"
    assert info.device() == "CPU trials on node vm" and info.n_samples == 100 and info.date() == "2026-11-26"
    assert "the default params.yaml" in info.about() and "400 distillation steps" in info.about()

    base = sweep_tables.sweep_baseline(res.evaluate(), trials)
    assert base["trial_id"] == summary["baseline"]["trial_id"]  # the sweep's own baseline, not evaluate.json's
    rec, rule = sweep_tables.recommend(trials, base["fid"], info.rule())
    assert rec == summary["recommended"]["trial_id"] and rule.startswith("recorded by the sweep: ")
    # the analysis's fronts (pareto_mask) are the sweep's own (summary.json, results.csv flags)
    flags = sweep_tables._front_flags(sweep_loader.completed(trials))
    for col, front in (("front_fid", "fid_gflops"), ("front_clip", "clip_gflops")):
        assert set(flags[flags[col]]["trial_id"]) == set(summary["fronts"][front])
        assert flags[col].tolist() == flags[f"pareto_{front}"].tolist()

    table = sweep_tables.sweep_front_table(trials, "clock-width-cut", rec, base, info, rule,
                                           "reports/full/evaluate.json")
    rows = table.df.set_index("trial")
    assert rows.loc[summary["recommended"]["run_name"], "recommended"] == "★"
    assert "CPU trials" in table.caption and "100 images per trial" in table.notes
    assert "not with reports/full/evaluate.json" in table.notes
    every = sweep_tables.sweep_trials_table(trials, "clock-width-cut", rec, base, info, rule)
    assert len(every.df) == 19 and every.df["trial"].iloc[0] == "baseline-s8"
    assert "ΔFID@FLOPs ↑" not in every.df  # recorded before trials were scored against fewer steps


def test_committed_gpu_sweep_answers_fewer_steps(monkeypatch, tmp_path):
    """The GPU sweep record (reports/sweeps/schedule-width-cut-steps): the plain baseline at 3-8 steps, trials
    scored against that front in the tables as the sweep recorded them, the 8-step baseline as the reference."""
    folder = COMMITTED_SWEEP.parent / "schedule-width-cut-steps"
    res = _committed_sweeps(monkeypatch, tmp_path, folder)
    trials = res.sweep_csvs()["schedule-width-cut-steps"]
    summary = json.loads((folder / "summary.json").read_text())
    assert sweep_loader.is_sweep_baseline(trials).sum() == 6 and set(trials["status"]) == {"complete"}
    info = res.sweep_info("schedule-width-cut-steps", trials)
    assert info.device() == "GPU trials on node vm" and "resumed" in info.about()  # three calls; wall_s of the last
    base = sweep_tables.sweep_baseline(res.evaluate(), trials)
    assert base["trial_id"] == summary["baseline"]["trial_id"] == "baseline-s8"  # steps {6, 8}: the 8-step one
    rec, rule = sweep_tables.recommend(trials, base["fid"], info.rule())
    assert rec == summary["recommended"]["trial_id"]
    every = sweep_tables.sweep_trials_table(trials, "schedule-width-cut-steps", rec, base, info,
                                            rule).df.set_index("trial")
    beats = every[every["beats fewer steps"] == "yes"].index
    assert set(beats) == set(trials[trials["beats_fewer_steps"].astype(str) == "True"]["run_name"])
    want = summary["recommended"]
    assert every.loc[want["run_name"], "ΔFID@FLOPs ↑"].startswith(f"{want['dfid_at_flops']:+.2f}")


# ------------------------------------------------------------------------------------------------- units

@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ('{"clockwork": {"fid": 1, "gflops": 1, "steps": 8, "adaptor": "resnet"}}', "'baseline'"),
    ('{"baseline": {"fid": 1, "gflops": 1, "steps": 8}}', "'clockwork'"),
    ('{"baseline": {"fid": NaN, "gflops": 1, "steps": 8}}', "fid"),
    ('{"baseline": {"gflops": 1, "steps": 8}}', "lacks required field"),
    ('{"baseline": {"fid": "x", "gflops": 1, "steps": 8}}', "must be a number"),
    ('{"baseline": {"fid": 1, "gflops": -2, "steps": 8}, "clockwork": {"fid": 1, "gflops": 1, "steps": 8}}', "gflops"),
])
def test_load_evaluate_rejects_malformed_files(tmp_path, content, message):
    p = tmp_path / "evaluate.json"
    p.write_text(content)
    with pytest.raises(loader.ResultsError, match=message):
        loader.load_evaluate(p)


def test_load_evaluate_missing_file_is_an_error(tmp_path):
    with pytest.raises(loader.ResultsError, match="missing"):
        loader.load_evaluate(tmp_path / "evaluate.json")


def test_claim_predicates_agree_with_the_papers_own_numbers():
    df = claims.evaluate_claims(claims.paper_frames(), claims.paper_frames())
    assert set(df["verdict"]) <= {"holds", "not measured"}
    measured = df[df["verdict"] == "holds"]["id"]
    assert len(measured) == len(claims.CLAIMS) - 3  # Figs. 4 and 7 have no numbers in the paper
    assert set(df[df["paper_verdict"] == "stated"]["id"]) == {"F4-fewer-steps", "F7-equal", "F7-few-steps"}


def test_verdicts_are_computed_not_typed(tmp_path):
    root = write_fixtures(tmp_path, minimal=True)
    ev = loader.load_evaluate(root / "metrics" / "evaluate.json")
    ok = claims.evaluate_claims(claims.Frames(ev, None)).set_index("id")["verdict"]
    assert ok["T1-fid"] == "holds" and ok["T1-flops"] == "holds"
    worse = ev.copy()
    worse.loc[worse["method"] == "clockwork", ["fid", "gflops"]] = [99.0, 1e6]
    bad = claims.evaluate_claims(claims.Frames(worse, None)).set_index("id")["verdict"]
    assert bad["T1-fid"] == "does not hold" and bad["T1-flops"] == "does not hold"


def test_within_noise_is_flagged():
    assert claims.lower(19.7, 19.8, 0.3, 0.3) == "holds (within noise)"
    assert claims.lower(19.0, 25.0, 0.3, 0.3) == "holds"
    assert claims.lower(20.0, 19.0) == "does not hold"
    assert claims.not_worse(20.9, 20.0) == "holds"  # 4.5% < 5%
    assert claims.not_worse(21.2, 20.0) == "does not hold"
    assert claims.not_worse(0.29, 0.30, rel=0.05, higher_is_better=True) == "holds"


def test_pareto_mask_hand_worked():
    cost = [1, 2, 3, 4, 2, math.nan]
    fid = [5, 4, 4, 1, 6, 0]
    assert fronts.pareto_mask(cost, fid).tolist() == [True, True, False, True, False, False]
    clip = [0.1, 0.3, 0.2, 0.3, 0.0, 1.0]
    assert fronts.pareto_mask(cost, clip, higher_is_better=True).tolist() == [True, True, False, False, False, False]


def test_recommendation_is_cheapest_within_tolerance():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "fid": [25.0, 20.8, 20.1, 19.0],
                           "gflops": [5.0, 7.0, 9.0, 12.0], "status": ["ok", "ok", "ok", "failed"]})
    assert sweep_tables.recommend(trials, 20.0)[0] == "b"  # a is > 5% worse, d failed
    assert sweep_tables.recommend(trials.assign(recommended=[False, False, True, False]), 20.0) == \
        ("c", "recorded by the sweep")


def test_mlflow_children_of_other_stages_are_not_sweep_trials():
    runs = pd.DataFrame([
        {"run_id": "p1", "experiment_name": "clockwork-sweep", "tags.mlflow.runName": "smoke",
         "tags.mlflow.parentRunId": None},
        {"run_id": "c1", "experiment_name": "clockwork-sweep", "tags.mlflow.runName": "t000",
         "tags.mlflow.parentRunId": "p1", "metrics.fid": 20.0, "metrics.gflops": 9.0, "params.adaptor.width": "64"},
        {"run_id": "p2", "experiment_name": "clockwork-ablate", "tags.mlflow.runName": "ablate",
         "tags.mlflow.parentRunId": None},
        {"run_id": "c2", "experiment_name": "clockwork-ablate", "tags.mlflow.runName": "cut 2",
         "tags.mlflow.parentRunId": "p2", "metrics.fid": 21.0, "metrics.gflops": 11.0},
    ]).assign(status="FINISHED")
    t = sweep_loader.sweep_trials_from_mlflow(runs)
    assert t["trial_id"].tolist() == ["t000"] and t["sweep"].tolist() == ["smoke"]
    assert t["width"].tolist() == [64] and t["fid"].tolist() == [20.0]


@pytest.mark.parametrize("clock, steps, expected, label", [
    (2, 8, (1, 3, 5, 7), "clock 2"),
    ("Clock(4)", 8, (1, 2, 3, 5, 6, 7), "clock 4"),
    ([4, 5, 6, 7], 8, (4, 5, 6, 7), "adaptor at {5,6,7,8}"),
    ("Clock(adaptor_steps=[2, 3, 4, 5])", 8, (2, 3, 4, 5), "adaptor at {3,4,5,6}"),
    (None, 8, None, "-"),
])
def test_clock_parsing(clock, steps, expected, label):
    assert loader.adaptor_steps(clock, steps) == expected
    assert loader.clock_label(clock, steps) == label


def test_synthetic_results_never_write_into_repo_reports(tmp_path, monkeypatch):
    root = write_fixtures(tmp_path, minimal=True)
    monkeypatch.setenv("CLOCKWORK_RESULTS", str(root))
    monkeypatch.delenv("CLOCKWORK_REPORTS", raising=False)
    with pytest.raises(loader.ResultsError, match="SYNTHETIC"):
        Results.from_env()
    monkeypatch.setenv("CLOCKWORK_REPORTS", str(REPO / "reports" / "analysis"))
    with pytest.raises(loader.ResultsError, match="SYNTHETIC"):
        Results.from_env()


def test_committed_notebooks_have_no_outputs():
    nbs = sorted((REPO / "analysis").glob("[0-9][0-9]_*.ipynb"))
    assert len(nbs) == 4
    for p in nbs:
        nb = json.loads(p.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, p.name


@pytest.mark.parametrize("heading", ["## Results (full configuration", "## Sweeps"])
def test_readme_results_tables_are_copied_from_generated_files(heading):
    """Every table row of README's results (full configuration, default run, the editing run) and of its sweep
    section is a line of a generated reports/{full,default}/analysis/*.md or reports/edit/table_edit.md."""
    readme = (REPO / "README.md").read_text()
    start = readme.index(heading)
    end = readme.find("\n## ", start + 3)
    section = readme[start:end if end > 0 else None]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    files = [p for d in ("full", "default") for p in (REPO / "reports" / d / "analysis").glob("*.md")]
    files += list((REPO / "reports" / "edit").glob("table_*.md"))
    generated = {ln for p in files for ln in p.read_text().splitlines()}
    assert len(rows) > (20 if heading.startswith("## Results") else 3)
    assert [r for r in rows if r not in generated] == []


# ------------------------------------------------------------------------- versus taking fewer steps

def _v(delta, std=0.1, status="inside"):
    inside = status == "inside"
    return {"delta": delta if inside else None, "delta_std": std if inside else None, "front": 20.0 if inside else None,
            "front_std": 0.1 if inside else None, "status": status, "steps": 6.5 if inside else None}


@pytest.mark.parametrize("v, verdict", [
    (_v(2.0, 0.2), "beats fewer steps"),
    (_v(1.0, 0.5), "beats fewer steps"),                      # exactly the margin and exactly 2σ
    (_v(1.5, 0.9), "ties"),                                  # above the margin but within 2σ
    (_v(0.3, 0.2), "ties"),
    (_v(-0.3, 0.2), "ties"),
    (_v(0.6, 0.1), "ties (below the +1.0 margin)"),          # significant, smaller than the margin
    (_v(-0.5, 0.2), "loses"),
    (_v(-3.0, 0.0), "loses"),
    (_v(None, status="cheaper_than_front"), "outside the front (cheaper than its fewest steps)"),
    (_v(None, status="costlier_than_front"), "outside the front (costlier than its most steps)"),
    (_v(None, status="no_metrics"), "n/a (no metrics)"),
    (None, "n/a"),                                           # a file written before vs_fewer_steps
])
def test_fewer_steps_verdict(v, verdict):
    assert fronts.fewer_steps_verdict(v) == verdict
    assert fronts.verdict_kind(verdict) in {"beats", "ties", "loses", "outside", "n/a"}
    if v is not None and v.get("delta") is not None:  # "beats" is clockwork.pareto.beats_fewer_steps, nothing else
        assert (verdict == "beats fewer steps") == loader.pareto().beats_fewer_steps(v, 1.0, 2.0)


def test_fixture_vs_fewer_steps_is_clockwork_pareto(full_results):
    """The synthetic answers are what clockwork.pareto computes from the rows (the stages' code), so tables built on
    them test the real arithmetic: the trained Clockwork's ΔFID@FLOPs is the front interpolated at its cost."""
    ev = json.loads((full_results / "metrics" / "evaluate.json").read_text())
    plain = sorted((m for k, m in ev.items() if k.startswith("baseline")), key=lambda m: m["gflops"])
    cw = ev["clockwork"]
    lo, hi = max((m for m in plain if m["gflops"] <= cw["gflops"]), key=lambda m: m["gflops"]), \
        min((m for m in plain if m["gflops"] >= cw["gflops"]), key=lambda m: m["gflops"])
    w = (cw["gflops"] - lo["gflops"]) / (hi["gflops"] - lo["gflops"])
    front = (1 - w) * lo["fid"] + w * hi["fid"]
    v = cw["vs_fewer_steps"]["fid"]
    assert v["status"] == "inside" and v["delta"] == pytest.approx(front - cw["fid"])
    assert v["steps"] == pytest.approx((1 - w) * lo["steps"] + w * hi["steps"])
    assert 0 < v["delta_std"] < math.hypot(cw["fid_std"], lo["fid_std"], hi["fid_std"])  # paired: correlated errors cancel


def test_fewer_steps_table_answers_first(full_run, full_results):
    _, reports = full_run
    ev = json.loads((full_results / "metrics" / "evaluate.json").read_text())
    text = (reports / "table1_fewer_steps.md").read_text()
    assert text.startswith("**Does Clockwork beat fewer steps here? ")
    rows = md_rows(reports / "table1_fewer_steps.md")
    assert [r[1] for r in rows] == ["Clockwork (resnet adaptor, clock 2)", "Clockwork (identity adaptor, clock 2)"]
    for r, key in zip(rows, ("clockwork", "clockwork_identity")):
        v = ev[key]["vs_fewer_steps"]["fid"]
        assert r[7] == f"{v['delta']:+.2f} ± {v['delta_std']:.2f}" and r[5] == f"{v['steps']:.1f}"
        assert r[-1] == fronts.fewer_steps_verdict(v)
    assert "yes - Clockwork (resnet adaptor, clock 2) beats fewer steps" in text.splitlines()[0]
    verdict = next(r for r in md_rows(reports / "paper_vs_ours.md") if r[0] == "F4-fewer-steps")
    assert verdict[-1] == "holds" and "ΔFID@FLOPs" in verdict[4]


def test_levers_table_has_a_row_per_lever(full_run, full_results):
    _, reports = full_run
    ab = json.loads((full_results / "metrics" / "ablate.json").read_text())
    levers = [r for r in ab["rows"] if r["ablation"] == "levers"]
    front = sorted((r for r in ab["rows"] if r["ablation"] == "front"), key=lambda r: -r["steps"])
    rows = md_rows(reports / "table_levers.md")
    assert [r[0] for r in rows] == [r["variant"] for r in levers] + [f"plain {r['steps']} steps" for r in front]
    for r, lv in zip(rows, levers):
        assert r[2] == f"{lv['fid']:.2f} ± {lv['fid_std']:.2f}"
        assert r[-1] == fronts.fewer_steps_verdict(lv["vs_fewer_steps"]["fid"])
    kinds = {fronts.verdict_kind(r[-1]) for r in rows[:len(levers)]}
    assert kinds == {"beats", "ties", "loses", "outside"}  # the fixtures exercise every verdict
    what = {r[0]: r[1] for r in rows}
    assert "20000 distillation steps" in what["long"] and what["early_middle"] == "adaptor at {3,4,5,6}"
    assert "output-space loss" in what["output_loss"] and "adaptor of 120 k params" in what["w64_d1"]
    caption = (reports / "table_levers.md").read_text().splitlines()[0]
    assert "validation split" in caption and "not comparable with Table 1" in caption and "5000 images per row" in caption
    assert rows[len(levers)][4] == "1.000×"  # GFLOPs as a multiple of the 8-step front row
    svg = (reports / "fig_levers.svg").read_text()
    assert svg.count("<svg") == 1
    for name in ("table3_adaptor", "table3_schedule", "table3_cut", "table5_inputs", "table4_samplers", "fig4_points"):
        header = (reports / f"{name}.md").read_text().splitlines()[2]
        assert "ΔFID@FLOPs" in header, name


def test_fig4_draws_the_plain_steps_front(full_results, full_run):
    """Fig. 4 draws the plain-steps front of evaluate.json (clockwork.pareto.plain_steps_front) as one line, and the
    ablation's own front in another panel: the validation split is never on a held-out curve."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis import plots

    res = Results(root=full_results, reports=full_results / "unused")
    ev, ab = res.evaluate(), res.ablate()
    pts = main_tables.fig4_points(ev, ab)
    assert pts.groupby("panel")["split"].nunique().max() == 1 and pts["panel"].nunique() == 2
    fig = plots.fid_vs_flops(pts, {t: main_tables.main_steps(ev, t) for t in ev["teacher"].unique()})
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert {"plain-steps-front-fid-0", "plain-steps-front-fid-1", "plain-steps-front-clip-0"} <= set(lines)
    plain = [r for r in ev[ev["kind"] == "baseline"][["steps", "gflops", "fid"]].to_dict("records")]
    expected = loader.pareto().plain_steps_front(plain, "fid")
    assert list(lines["plain-steps-front-fid-0"].get_xdata()) == pytest.approx([r["gflops"] for r in expected])
    assert list(lines["plain-steps-front-fid-0"].get_ydata()) == pytest.approx([r["fid"] for r in expected])
    front_rows = ab[ab["ablation"] == "front"].sort_values("gflops")
    assert list(lines["plain-steps-front-fid-1"].get_ydata()) == pytest.approx(list(front_rows["fid"]))
    import matplotlib.pyplot as plt

    plt.close(fig)
    _, reports = full_run
    svg = (reports / "fig4_fid_vs_flops.svg").read_text()
    assert 'id="plain-steps-front-fid-0"' in svg and 'id="plain-steps-front-fid-1"' in svg


def test_ablation_baseline_is_never_borrowed_across_splits(full_results):
    res = Results(root=full_results, reports=full_results / "unused")
    ev, ab = res.evaluate(), res.ablate()
    rows = ab[(ab["ablation"] == "adaptor_type") & ~ab["is_baseline"]]
    base = ablation_tables.reference_baseline(rows, ev, ab[~((ab["ablation"] == "adaptor_type") & ab["is_baseline"])])
    assert base is not None and base["split"] == "val" and base["steps"] == 8  # the ablation run's own, not evaluate's
    assert ablation_tables.reference_baseline(rows, ev, None) is None  # evaluate.json is on the held-out split


def test_old_format_files_give_tables_with_na(tmp_path):
    """Files written before split / vs_fewer_steps / levers / front existed still load and report: the fewer-steps
    answers read n/a, the ablation tables keep their old columns, Fig. 4 still draws the plain-steps front."""
    root = write_fixtures(tmp_path / "results", mlflow_store=False, old=True)
    assert "vs_fewer_steps" not in (root / "metrics" / "evaluate.json").read_text()
    proc = run_all(root, tmp_path / "reports", "01", "02", "04")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = tmp_path / "reports"
    rows = md_rows(rep / "table1_fewer_steps.md")
    assert len(rows) == 2 and all(r[5:] == ["n/a"] * 5 for r in rows), rows
    assert "not answered" in (rep / "table1_fewer_steps.md").read_text().splitlines()[0]
    checks = md_rows(rep / "table1_acceptance.md")
    assert checks[-1][1].startswith("ΔFID@FLOPs") and checks[-1][-1] == "not measured (n/a)"
    assert not (rep / "table_levers.md").exists() and not (rep / "fig_levers.png").exists()
    assert "ΔFID@FLOPs" not in (rep / "table3_adaptor.md").read_text()
    assert 'id="plain-steps-front-fid-0"' in (rep / "fig4_fid_vs_flops.svg").read_text()
    f4 = next(r for r in md_rows(rep / "paper_vs_ours.md") if r[0] == "F4-fewer-steps")
    assert f4[-1] == "not measured"
    from pipeline.report import summary_markdown

    ev = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert "| n/a | n/a | n/a |" in summary_markdown(ev, None, None)


def test_malformed_vs_fewer_steps_is_rejected(tmp_path):
    root = write_fixtures(tmp_path, minimal=True)
    ev = json.loads((root / "metrics" / "evaluate.json").read_text())
    ev["clockwork"]["vs_fewer_steps"]["fid"]["status"] = "better"
    (root / "metrics" / "evaluate.json").write_text(json.dumps(ev))
    with pytest.raises(loader.ResultsError, match="status"):
        loader.load_evaluate(root / "metrics" / "evaluate.json")


def test_sensitivity_figure_and_table(full_run, full_results, tmp_path):
    _, reports = full_run
    sens = json.loads((full_results / "sensitivity.json").read_text())
    rows = md_rows(reports / "table_sensitivity.md")
    variants = {(r["cut"], r["mode"], r["alpha"]) for r in sens["rows"]}
    assert len(rows) == len(variants)
    starts = sorted({r["start_step"] for r in sens["rows"]})
    assert len(rows[0]) == 2 + len(starts)
    first = sens["rows"][0]
    assert rows[0][2] == f"{first['rel_l2']:.3g} ± {first['rel_l2_std']:.2g}"
    assert (reports / "fig2_sensitivity.png").stat().st_size > 5000
    proc = run_all(full_results, tmp_path / "r", "02", sensitivity=tmp_path / "missing.json")
    assert proc.returncode != 0 and "missing.json" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"meta": {}, "rows": [{"cut": 1, "mode": "noise"}]}))
    with pytest.raises(loader.ResultsError, match="rel_l2"):
        loader.load_sensitivity(bad)


def test_reruns_are_byte_identical(full_run, full_results, tmp_path):
    """The same inputs give the same bytes (tables, PNG and SVG figures): committed reports stay put on a rerun."""
    _, reports = full_run
    again = tmp_path / "again"
    proc = run_all(full_results, again, "01", "02", sensitivity=full_results / "sensitivity.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in again.iterdir())
    assert "fig4_fid_vs_flops.svg" in files and "fig_levers.png" in files and "fig2_sensitivity.svg" in files
    assert [f for f in files if (again / f).read_bytes() != (reports / f).read_bytes()] == []


def test_fig4_draws_each_clockwork_front_as_its_own_line(tmp_path) -> None:
    """evaluate.fronts rows (front_<adaptor>_b<budget>, all at the full step count) are one series per adaptor with a
    point per budget - not deduplicated into one point - and the table names each point's schedule."""
    from analysis.loader import load_evaluate
    from analysis.main_tables import fig4_points, fig4_table
    from analysis.plots import fid_vs_flops

    ev = load_evaluate(REPO / "reports/schedule-front/val-fid/evaluate_auto.json", "embedded")
    pts = fig4_points(ev, None)
    fronts = pts[pts["series"].str.startswith("Clockwork front: ")]
    assert sorted(fronts["series"].unique()) == ["Clockwork front: distilled", "Clockwork front: forecast",
                                                 "Clockwork front: identity"]
    assert fronts.groupby("series")["budget"].apply(sorted).map(list).tolist() == [[2, 4, 6]] * 3
    assert (pts["series"] == "Clockwork (resnet)").sum() == 1  # the configured Clockwork row stays its own point
    methods = set(fig4_table(pts).df["method"])
    assert {"Clockwork front: identity {3,5}", "Clockwork front: distilled {1,3,4,5}"} <= methods
    fid_vs_flops(pts, {"embedded": 8}).savefig(tmp_path / "fig4.svg")
    assert (tmp_path / "fig4.svg").read_text().count("{1,2,3,4,6,7}") >= 2  # schedules label the front points
