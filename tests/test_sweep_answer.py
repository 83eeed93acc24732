"""What a sweep answers, on synthetic results (no Ray, no trials): every trial against the plain-steps front
(ΔFID@FLOPs), the recommendation (the best trial that beats fewer steps, or plainly none), the files, the plots,
and the analysis reading them back - and schedules (lists of adaptor steps) as a clock dimension."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config_sweep import ConfigError, parse_sweep  # noqa: E402
from pipeline.tune import space  # noqa: E402
from pipeline.tune.answer import analyse, format_summary  # noqa: E402
from pipeline.tune.records import Record, read_records, write_outputs  # noqa: E402

BASE = {"sampling": {"steps": 8}}


def plain(steps: int) -> Record:
    # The plain UNet: 2 GFLOPs a step, FID falling with the step count (all on the front).
    return Record(f"b{steps}", {"clock": 1, "steps": steps, "adaptor": "none"}, "complete",
                  {"fid": 20 + 30 / steps, "fid_std": 0.3, "clip": 0.3, "gflops": 2.0 * steps}, run_name=f"baseline-s{steps}")


def trial(tid: str, gflops: float, fid: float, clock=2, status: str = "complete") -> Record:
    metrics = {"fid": fid, "fid_std": 0.3, "clip": 0.3, "gflops": gflops} if status == "complete" else {}
    return Record(tid, {"clock": clock, "width": 64, "cut": 1, "steps": 8, "adaptor": "resnet"}, status, metrics,
                  run_name=f"{space.clock_name(clock)}-{tid}")


def sweep_params(**kw):
    return parse_sweep({"sweep": {"space": {"clock": [2], "width": [64], "cut": [1]}, **kw}})


def records(with_winner: bool = True) -> list[Record]:
    out = [plain(s) for s in range(3, 9)]
    if with_winner:
        out.append(trial("win", 10.0, 22.0))  # the cost of 5 plain steps (FID 26): 4 FID better
    out += [trial("tie", 12.0, 24.8),  # 6 plain steps cost this (FID 25): 0.2 better, within noise
            trial("cheap", 5.0, 40.0),  # cheaper than 3 plain steps: outside the front, no answer
            trial("broken", math.nan, math.nan, status="error")]
    return out


def test_every_trial_gets_its_delta_against_the_plain_steps_front():
    recs = records()
    summary = analyse(recs, sweep_params(), BASE)
    by = {r.trial_id: r for r in recs}
    win = by["win"]
    assert win.metrics["dfid_at_flops"] == pytest.approx(4.0)
    assert win.metrics["dfid_at_flops_std"] == pytest.approx(math.hypot(0.3, 0.3))  # independent errors: no boots
    assert win.metrics["equal_cost_steps"] == pytest.approx(5.0)
    assert win.vs_fewer_steps["fid"]["status"] == "inside" and win.beats_fewer_steps is True
    assert by["tie"].metrics["dfid_at_flops"] == pytest.approx(0.2) and by["tie"].beats_fewer_steps is False
    assert by["cheap"].vs_fewer_steps["fid"]["status"] == "cheaper_than_front"
    assert "dfid_at_flops" not in by["cheap"].metrics and by["cheap"].beats_fewer_steps is None
    assert by["broken"].vs_fewer_steps == {} and by["broken"].beats_fewer_steps is None
    # A baseline on the front ties itself; baselines are the front, never "beating" it.
    assert by["b5"].metrics["dfid_at_flops"] == pytest.approx(0.0) and by["b5"].beats_fewer_steps is None
    assert [p["steps"] for p in summary["plain_front"]] == [3, 4, 5, 6, 7, 8]


def test_paired_bootstrap_gives_the_delta_std_when_every_point_has_replicates():
    recs = records()
    for r in recs:
        if r.status == "complete":
            r.metrics["fid_boot"] = [r.metrics["fid"] + d for d in (-0.5, 0.0, 0.5)]  # the same shift for all
    analyse(recs, sweep_params(), BASE)
    win = next(r for r in recs if r.trial_id == "win")
    assert win.metrics["dfid_at_flops_std"] == pytest.approx(0.0, abs=1e-9)  # paired: the common shift cancels


def test_the_trial_that_beats_fewer_steps_is_recommended(tmp_path):
    recs = records()
    summary = analyse(recs, sweep_params(), BASE)
    assert [r.trial_id for r in recs if r.recommended] == ["win"]
    rec = summary["recommended"]
    assert rec["trial_id"] == "win" and rec["dfid_at_flops"] == pytest.approx(4.0)
    assert rec["fid_delta"] == pytest.approx(22.0 - (20 + 30 / 8))  # against the baseline at sampling.steps
    assert summary["fewer_steps"]["beats"] == ["win"] and summary["fewer_steps"]["best"]["trial_id"] == "win"
    assert summary["fewer_steps"]["answer"].startswith("c2-win beats taking fewer steps: ΔFID@FLOPs +4.00")
    assert summary["baseline"]["trial_id"] == "b8"
    text = format_summary("s", recs, summary)
    assert "Answer: c2-win beats taking fewer steps" in text and "Recommended operating point" in text

    write_outputs(tmp_path, recs, summary)
    rows = {r["trial_id"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert rows["win"]["recommended"] == "True" and rows["win"]["beats_fewer_steps"] == "True"
    assert float(rows["win"]["dfid_at_flops"]) == pytest.approx(4.0) and rows["win"]["fewer_steps_status"] == "inside"
    assert rows["tie"]["beats_fewer_steps"] == "False" and rows["cheap"]["fewer_steps_status"] == "cheaper_than_front"
    assert rows["cheap"]["dfid_at_flops"] == "" and rows["b3"]["beats_fewer_steps"] == ""
    assert json.loads((tmp_path / "summary.json").read_text())["recommended"]["trial_id"] == "win"
    back = read_records(tmp_path)  # what --import-results reads
    assert [r.trial_id for r in back] == [r.trial_id for r in recs] and back[6].beats_fewer_steps is True


def test_the_answer_names_the_split_it_was_chosen_on(tmp_path):
    """sweep.split (the validation split by default) is where every trial was scored: the answer, the printed
    summary, summary.json and results.csv say so; heldout is said to be the test set."""
    recs = records()
    for r in recs:
        r.params = {"sweep.split": "val"}
    summary = analyse(recs, sweep_params(), BASE)
    answer = summary["fewer_steps"]["answer"]
    assert summary["split"] == "val" and summary["fewer_steps"]["split"] == "val"
    assert answer.startswith("c2-win beats taking fewer steps") and "; chosen on the validation split" in answer
    assert answer.endswith("; chosen on the validation split (prepare.val_prompts, against "
                           "prepare.val_reference_images), not on the held-out evaluation prompts")
    text = format_summary("s", recs, summary)
    assert "Scored on the validation split" in text
    assert "standard deviations); chosen on the validation split): c2-win" in text  # the recommendation's line
    write_outputs(tmp_path, recs, summary)
    assert {r["split"] for r in csv.DictReader(open(tmp_path / "results.csv"))} == {"val"}
    assert json.loads((tmp_path / "summary.json").read_text())["split"] == "val"

    held = analyse(records(with_winner=False), sweep_params(split="heldout"), BASE)
    assert held["split"] == "heldout" and "scored on the held-out evaluation prompts" in held["fewer_steps"]["answer"]
    assert "the test set" in held["fewer_steps"]["answer"] and "validation" not in held["fewer_steps"]["answer"]
    # a trial's own report of its split wins over what it was given (train_and_evaluate's metrics["split"])
    r = trial("x", 10.0, 22.0)
    r.params, r.metrics["split"] = {"sweep.split": "val"}, "heldout"
    assert r.split == "heldout"


def test_trials_are_grouped_by_adaptor_kind(tmp_path):
    """Training-free kinds (pipeline.common.methods.TRAINING_FREE: identity, forecast, ...) and distilled ones are
    summarised apart, by the trial's own adaptor value: the printed table marks them, by_adaptor counts them."""
    from pipeline.common.methods import TRAINING_FREE

    recs = records()
    free = []
    for i, kind in enumerate(TRAINING_FREE):
        r = trial(f"free{i}", 9.0 + i, 27.0 - i)  # at the cost of 4.5.. plain steps, worse than the front
        r.point = {"clock": 2, "cut": 1, "steps": 8, "adaptor": kind}
        r.run_name = f"c2-{kind}-k1-s8"
        free.append(r)
    recs += free
    summary = analyse(recs, sweep_params(), BASE)
    groups = summary["by_adaptor"]
    assert list(groups) == ["resnet", *TRAINING_FREE]
    assert groups["resnet"]["training_free"] is False and groups["resnet"]["trials"] == 3
    assert groups["resnet"]["label"] == "resnet (distilled)" and groups["resnet"]["beats"] == ["win"]
    assert groups["resnet"]["best"]["trial_id"] == "win"
    for i, kind in enumerate(TRAINING_FREE):
        g = groups[kind]
        assert g["training_free"] is True and g["label"] == f"{kind} (training-free)" and g["trials"] == 1
        assert g["best"]["trial_id"] == f"free{i}" and g["beats"] == []
    text = format_summary("s", recs, summary)
    assert "Adaptor resnet (distilled): 3 trials, 1 beats fewer steps, best c2-win" in text
    assert all(f"Adaptor {k} (training-free): 1 trial, 0 beat fewer steps" in text for k in TRAINING_FREE)
    table = text.splitlines()
    assert any("c2-identity-k1-s8" in line and "identity*" in line for line in table)
    assert "baseline-s8" in text and not groups.get("none")  # the plain UNet is the front, not a kind
    pytest.importorskip("matplotlib")
    from pipeline.tune.plots import plot_fronts

    assert len(plot_fronts(tmp_path, recs, summary)) == 3


def test_no_trial_beats_fewer_steps_and_the_summary_says_so():
    recs = records(with_winner=False)
    summary = analyse(recs, sweep_params(), BASE)
    assert summary["recommended"] is None and not any(r.recommended for r in recs)
    answer = summary["fewer_steps"]["answer"]
    assert answer.startswith("no trial beats taking fewer steps") and "sample the plain UNet with fewer steps" in answer
    assert "c2-tie" in answer and summary["fewer_steps"]["best"]["trial_id"] == "tie"
    assert summary["fewer_steps"]["beats"] == []
    text = format_summary("s", recs, summary)
    assert f"Answer: {answer}" in text and "Recommended operating point" not in text
    # A looser margin makes the same trial a winner: the rule is the section's.
    assert analyse(recs, sweep_params(beat_margin=0.1, beat_sigmas=0.0), BASE)["recommended"]["trial_id"] == "tie"


def test_without_a_plain_front_nothing_is_scored():
    recs = [trial("a", 10.0, 22.0)]
    summary = analyse(recs, sweep_params(baseline="none"), BASE)
    assert summary["recommended"] is None and summary["plain_front"] == []
    assert summary["fewer_steps"]["answer"].startswith("no plain-steps front")
    assert recs[0].vs_fewer_steps == {} and "dfid_at_flops" not in recs[0].metrics


def test_the_plot_draws_both_fronts(tmp_path):
    pytest.importorskip("matplotlib")
    from pipeline.tune.plots import plot_fronts

    recs = records()
    summary = analyse(recs, sweep_params(), BASE)
    paths = plot_fronts(tmp_path, recs, summary)
    assert {p.name for p in paths} == {"pareto_fid_gflops.png", "pareto_clip_gflops.png", "pareto_fid_latency.png"}
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_the_analysis_reads_the_new_results(tmp_path):
    """analysis/ loads a sweep of this format: the recorded recommendation, its rule, and no invented one."""
    pytest.importorskip("pandas")
    from analysis import sweep_loader, sweep_tables

    for winner, expect in ((True, "win"), (False, None)):
        folder = tmp_path / str(winner)
        folder.mkdir()
        recs = records(with_winner=winner)
        summary = analyse(recs, sweep_params(), BASE)
        write_outputs(folder, recs, summary)
        df = sweep_loader.load_sweep_csv(folder / "results.csv")
        info = sweep_loader.SweepInfo(name="s", source="x", summary=summary, trials=df)
        rec, rule = sweep_tables.recommend(df, None, info.rule())
        assert rec == expect, rule
        assert "fewer steps" in rule and info.caution() is None
        assert "scored and chosen on the validation split" in info.about()  # summary.json's split


def test_schedules_are_a_clock_dimension():
    sp = parse_sweep({"sweep": {"space": {"clock": [2, [5, 4, 3, 2]], "width": [64], "cut": [1], "steps": [6, 8]},
                                "front_steps": [3, 4]}})
    assert sp.space.clock == [2, [2, 3, 4, 5]]  # sorted
    pts = space.grid_points(sp)
    assert [space.run_name(p) for p in pts] == ["c2-w64-k1-s6", "c2-w64-k1-s8", "a2.3.4.5-w64-k1-s6",
                                                "a2.3.4.5-w64-k1-s8"]
    assert [b["steps"] for b in space.baseline_points(sp, {})] == [3, 4, 6, 8]  # front_steps + the space's
    base = {"clock": {"period": 2, "adaptor_steps": None}, "sampling": {"steps": 8}}
    n = space.nested_params(base, pts[2])
    assert n["clock"] == {"period": 2, "adaptor_steps": [2, 3, 4, 5]} and n["sampling"]["steps"] == 6
    flat = space.mlflow_params(base, pts[2])
    assert flat["clock.adaptor_steps"] == [2, 3, 4, 5] and flat["clock.period"] == ""
    assert space.from_tune({k: space.to_tune(v) for k, v in pts[2].items()}) == pts[2]
    for bad, words in (([[]], "empty schedule"), ([[1, 1]], "distinct"), ([[-1, 2]], ">= 0")):
        with pytest.raises(ConfigError, match=words):
            parse_sweep({"sweep": {"space": {"clock": bad, "width": [64], "cut": [1]}}})
    with pytest.raises(ConfigError, match="front_steps.*baseline: trial"):
        parse_sweep({"sweep": {"space": {"clock": [2], "width": [64], "cut": [1]}, "front_steps": [3],
                               "baseline": "none"}})
