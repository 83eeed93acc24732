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

from analysis import claims, loader, tables  # noqa: E402
from analysis.fixtures import write_fixtures  # noqa: E402

# every report the notebooks write from complete inputs: stem -> extensions
EXPECTED = {
    **{t: ("md", "tex") for t in ("table1_main", "fig4_points", "table3_adaptor", "table3_schedule", "table3_cut",
                                  "table4_samplers", "table5_inputs", "fig7_training", "distill_summary",
                                  "sweep_smoke_front", "sweep_smoke_trials", "sweep_mlflow_crosscheck",
                                  "paper_vs_ours")},
    **{f: ("png", "svg") for f in ("fig4_fid_vs_flops", "fig7_unrolled_vs_forward_noised", "distill_loss",
                                   "sweep_smoke_pareto")},
}
VERDICTS = {"holds", "holds (within noise)", "does not hold", "does not hold (within noise)", "not measured"}


def run_all(results: Path, reports: Path, *only: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "CLOCKWORK_MLFLOW_URI", "CLOCKWORK_RESULTS", "CLOCKWORK_REPORTS",
                        "CLOCKWORK_SWEEPS")}
    cmd = [sys.executable, str(REPO / "analysis" / "run_all.py"), "--results", str(results), "--reports", str(reports)]
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
    proc = run_all(full_results, reports)
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
    assert not any(n.startswith(("sweep_", "table3", "fig7")) for n in written)
    rows = md_rows(tmp_path / "reports" / "paper_vs_ours.md")
    assert len(rows) == len(claims.CLAIMS)
    assert {r[-1] for r in rows if not r[0].startswith("T1-")} == {"not measured"}


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
    assert f"{ev['baseline']['fid']:.2f} → {ev['clockwork']['fid']:.2f}" in fid_row[4]


def test_table1_numbers_come_from_evaluate_json(full_run, full_results):
    _, reports = full_run
    ev = json.loads((full_results / "metrics" / "evaluate.json").read_text())
    text = (reports / "table1_main.md").read_text()
    for method in ("baseline", "clockwork", "clockwork_identity", "baseline_6steps", "baseline_4steps"):
        assert f"{ev[method]['fid']:.2f} ± {ev[method]['fid_std']:.2f}" in text
    rows = md_rows(reports / "table1_main.md")
    assert [r[1] for r in rows[-2:]] == ["baseline (full UNet), 6 steps", "baseline (full UNet), 4 steps"]
    fig4 = (reports / "fig4_points.md").read_text()
    assert f"{ev['baseline_4steps']['fid']:.2f}" in fig4
    checks = md_rows(reports / "table1_acceptance.md")
    assert len(checks) == 5 and all(r[-1] in {"pass", "FAIL", "pass (within noise)", "FAIL (within noise)"}
                                    for r in checks)


def test_acceptance_checks_are_computed(tmp_path):
    ev = loader.load_evaluate(write_fixtures(tmp_path, minimal=True) / "metrics" / "evaluate.json")
    ok = tables.acceptance_table(ev).df.set_index("check")["result"]
    assert len(ok) == 5 and set(ok) <= {"pass", "pass (within noise)"}, ok
    worse = ev.copy()
    cw = worse["method"] == "clockwork"
    worse.loc[cw, ["fid", "gflops", "clip"]] = [30.0, worse.loc[cw, "gflops"].iloc[0] * 1.2, 0.1]
    bad = tables.acceptance_table(worse).df
    assert bad["result"].str.startswith("FAIL").sum() == 4, bad  # FLOPs, FID, CLIP, identity; 6 steps now cheaper
    assert bad["result"].iloc[-1] == "not measured"


def test_flat_results_folder_reads_like_the_pipeline_layout(tmp_path):
    nested = write_fixtures(tmp_path / "nested", minimal=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "evaluate.json").write_text((nested / "metrics" / "evaluate.json").read_text())
    (flat / "distill_loss.csv").write_text("step,loss\n1,0.5\n2,0.25\n")
    a = loader.Results(root=nested, reports=tmp_path / "r1")
    b = loader.Results(root=flat, reports=tmp_path / "r2")
    pd.testing.assert_frame_equal(a.evaluate(), b.evaluate())
    assert a.source("evaluate.json") == "metrics/evaluate.json"
    assert b.source("evaluate.json") == str(flat / "evaluate.json")
    assert b.distill()[1]["loss"].tolist() == [0.5, 0.25] and b.ablate() is None
    table = b.write_table(tables.table1(b.evaluate()), "table1_main")
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


def test_committed_sweep_is_read_from_its_folder(monkeypatch, tmp_path):
    """reports/sweeps/<name>/ (CLOCKWORK_SWEEPS) reads like sweeps/<name>/; its fronts and recommendation are the ones
    pipeline/sweep.py recorded in results.csv and summary.json, and its tables say how it ran."""
    if not COMMITTED_SWEEP.is_dir():
        pytest.skip("no committed sweep record")
    monkeypatch.setenv("CLOCKWORK_RESULTS", str(REPO / "reports" / "full"))
    monkeypatch.setenv("CLOCKWORK_REPORTS", str(tmp_path))
    monkeypatch.setenv("CLOCKWORK_SWEEPS", str(COMMITTED_SWEEP.parent))
    monkeypatch.setenv("CLOCKWORK_MLFLOW_URI", "none")
    res = loader.Results.from_env()
    assert res.sweeps_dir == COMMITTED_SWEEP.parent
    csvs = res.sweep_csvs()
    assert list(csvs) == ["clock-width-cut"]
    trials = csvs["clock-width-cut"]
    summary = json.loads((COMMITTED_SWEEP / "summary.json").read_text())
    assert len(trials) == summary["n_trials"] == 19 and set(trials["status"]) == {"complete"}
    assert loader.is_sweep_baseline(trials).sum() == 1

    info = res.sweep_info("clock-width-cut", trials)
    assert info.source == "reports/sweeps/clock-width-cut/results.csv"
    assert info.device() == "CPU trials on node vm" and info.n_samples == 100 and info.date() == "2026-11-26"
    assert "the default params.yaml" in info.about() and "400 distillation steps" in info.about()

    base = tables.sweep_baseline(res.evaluate(), trials)
    assert base["trial_id"] == summary["baseline"]["trial_id"]  # the sweep's own baseline, not evaluate.json's
    rec, rule = tables.recommend(trials, base["fid"], info.rule())
    assert rec == summary["recommended"]["trial_id"] and rule.startswith("recorded by the sweep: ")
    # the analysis's fronts (pareto_mask) are the sweep's own (summary.json, results.csv flags)
    flags = tables._front_flags(loader.completed(trials))
    for col, front in (("front_fid", "fid_gflops"), ("front_clip", "clip_gflops")):
        assert set(flags[flags[col]]["trial_id"]) == set(summary["fronts"][front])
        assert flags[col].tolist() == flags[f"pareto_{front}"].tolist()

    table = tables.sweep_front_table(trials, "clock-width-cut", rec, base, info, rule, "reports/full/evaluate.json")
    rows = table.df.set_index("trial")
    assert rows.loc[summary["recommended"]["run_name"], "recommended"] == "★"
    assert "CPU trials" in table.caption and "100 images per trial" in table.notes
    assert "not with reports/full/evaluate.json" in table.notes
    every = tables.sweep_trials_table(trials, "clock-width-cut", rec, base, info, rule)
    assert len(every.df) == 19 and every.df["trial"].iloc[0] == "baseline-s8"


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
    assert len(measured) == len(claims.CLAIMS) - 2  # Fig. 7 has no numbers in the paper
    assert set(df[df["paper_verdict"] == "stated"]["id"]) == {"F7-equal", "F7-few-steps"}


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
    assert tables.pareto_mask(cost, fid).tolist() == [True, True, False, True, False, False]
    clip = [0.1, 0.3, 0.2, 0.3, 0.0, 1.0]
    assert tables.pareto_mask(cost, clip, higher_is_better=True).tolist() == [True, True, False, False, False, False]


def test_recommendation_is_cheapest_within_tolerance():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "fid": [25.0, 20.8, 20.1, 19.0],
                           "gflops": [5.0, 7.0, 9.0, 12.0], "status": ["ok", "ok", "ok", "failed"]})
    assert tables.recommend(trials, 20.0)[0] == "b"  # a is > 5% worse, d failed
    assert tables.recommend(trials.assign(recommended=[False, False, True, False]), 20.0) == ("c", "recorded by the sweep")


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
    t = loader.sweep_trials_from_mlflow(runs)
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
        loader.Results.from_env()
    monkeypatch.setenv("CLOCKWORK_REPORTS", str(REPO / "reports" / "analysis"))
    with pytest.raises(loader.ResultsError, match="SYNTHETIC"):
        loader.Results.from_env()


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
    """Every table row of README's full-configuration results and of its sweep section is a line of a generated
    reports/full/analysis/*.md."""
    readme = (REPO / "README.md").read_text()
    start = readme.index(heading)
    end = readme.find("\n## ", start + 3)
    section = readme[start:end if end > 0 else None]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    generated = {ln for d in ("full", "default") for p in (REPO / "reports" / d / "analysis").glob("*.md")
                 for ln in p.read_text().splitlines()}
    assert len(rows) > (20 if heading.startswith("## Results") else 3)
    assert [r for r in rows if r not in generated] == []
