"""The Clockwork fronts' pieces without a pipeline run: the config rules of `clock.adaptor_steps: auto` and
`evaluate.fronts` (one clear error naming the key), the calibration prompts (validation split, else the distillation
prompts held out of training, never evaluation prompts), the headline's winner per budget, the chart, and
scripts/compare_schedules.py on rows made up to give known answers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import ConfigError, validate  # noqa: E402

BASE = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())


def _params(**sections):
    d = copy.deepcopy(BASE)
    for name, values in sections.items():
        d[name].update(values)
    return d


@pytest.mark.parametrize("sections,key,match", [
    ({"clock": {"adaptor_steps": "auto"}}, "clock.budget", "needs the number of adaptor steps"),
    ({"clock": {"adaptor_steps": "auto", "budget": 8}}, "clock.budget", r"allowed 1..7"),
    ({"clock": {"adaptor_steps": [2, 3], "budget": 2}}, "clock.budget", "only read with clock.adaptor_steps: auto"),
    ({"clock": {"adaptor_steps": "auto", "budget": 2}, "distill": {"source": "online"}}, "clock.adaptor_steps",
     "use distill.source: store"),
    ({"clock": {"adaptor_steps": "auto", "budget": 2, "refine_top": 3}}, "clock.refine_top",
     "needs auto and clock.finetune_steps > 0"),
    ({"clock": {"adaptor_steps": "auto", "budget": 7, "finetune_steps": 5, "refine_top": 2}}, "clock.refine_top",
     "the 1 schedules of 7 adaptor steps"),
    ({"evaluate": {"fronts": ["identity"], "front_budgets": [0]}}, "evaluate.front_budgets", None),
    ({"evaluate": {"fronts": ["identity"], "front_budgets": [9]}}, "evaluate.front_budgets", r"\[9\] do not fit"),
    ({"evaluate": {"fronts": ["identity"]}}, "evaluate.front_budgets", "go together"),
    ({"evaluate": {"fronts": ["identity"], "front_budgets": [2]}, "clock": {"calibration_prompts": 500}},
     "clock.calibration_prompts", "never the evaluation ones"),
    ({"evaluate": {"fronts": ["bogus"], "front_budgets": [2]}}, "evaluate.fronts", None),
    ({"evaluate": {"fronts": ["identity"], "front_budgets": [2]}, "clock": {"schedule_score": "val_fid"},
      "prepare": {"val_prompts": 0, "val_reference_images": 0}}, "clock.schedule_score", "validation split"),
])
def test_bad_schedule_settings_name_their_key(sections, key, match) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_params(**sections), root=REPO)
    keys = [k for k, _ in e.value.problems]
    assert key in keys or any(k.startswith(key) for k in keys), e.value.problems
    if match:
        import re

        assert any(re.search(match, m) for k, m in e.value.problems if k.startswith(key)), e.value.problems


def test_good_schedule_settings_pass() -> None:
    p = validate(_params(clock={"adaptor_steps": "auto", "budget": 3, "finetune_steps": 10, "refine_top": 35,
                                "calibration_prompts": 4},
                         evaluate={"fronts": ["distilled", "identity", "forecast"], "front_budgets": [1, 3]}), root=REPO)
    from pipeline.common import MethodSpec

    assert MethodSpec.from_params(p).adaptor_steps == tuple(range(1, p.sampling.steps))  # the all-steps training
    assert MethodSpec.from_params(p, [2, 5, 6]).adaptor_steps == (2, 5, 6)


def test_calibration_prompts_are_never_evaluation_prompts() -> None:
    from pipeline.common.fronts import calibration_prompts

    prep = SimpleNamespace(val_prompts=["v1", "v2", "v3"], distill_prompts=["d1", "d2", "d3", "d4"], eval_prompts=["e1"])
    assert calibration_prompts(prep, 2, 2) == (["v1", "v2"], "val")
    prep.val_prompts = []
    assert calibration_prompts(prep, 2, 2) == (["d3", "d4"], "distill-heldout")  # the ones distill held out
    with pytest.raises(ValueError, match="clock.calibration_prompts=3 but only 2"):
        calibration_prompts(prep, 2, 3)
    with pytest.raises(ValueError, match="never samples evaluation prompts"):
        calibration_prompts(prep, 0, 1)


def _row(fid, gflops, steps=8, front=None, budget=None, clock=1, delta=None, std=0.5, boot_shift=0.0):
    m = {"fid": fid, "fid_std": 0.4, "gflops": gflops, "steps": steps, "clock": clock, "clip": 90.0, "clip_std": 0.1,
         "clip_boot": [90.0] * 4,
         "fid_boot": [fid + boot_shift + d for d in (-0.3, 0.1, 0.4, -0.2)], "n_samples": 100, "split": "heldout",
         "vs_fewer_steps": {"fid": {"delta": delta, "delta_std": None if delta is None else std,
                                    "status": None if delta is not None else "outside the front"}}}
    if front:
        m.update(front=front, budget=budget, schedule_score=0.01)
    return m


def _results():
    return {"baseline": _row(20.0, 100.0), "baseline_6steps": _row(24.0, 75.0, 6), "baseline_4steps": _row(30.0, 50.0, 4),
            "clockwork": _row(22.0, 60.0, clock=[2, 4, 5, 6], delta=4.0),
            "front_distilled_b2": _row(21.0, 80.0, front="distilled", budget=2, clock=[3, 5], delta=2.5),
            "front_identity_b2": _row(21.5, 80.0, front="identity", budget=2, clock=[3, 5], delta=2.0),
            "front_forecast_b2": _row(23.9, 80.0, front="forecast", budget=2, clock=[4, 5], delta=0.2),
            "front_distilled_b4": _row(22.3, 60.0, front="distilled", budget=4, clock=[2, 4, 5, 6], delta=3.7),
            "front_identity_b4": _row(29.0, 60.0, front="identity", budget=4, clock=[2, 4, 5, 7], delta=-2.0)}


def test_headline_names_the_winner_per_budget() -> None:
    from pipeline.common.headline import front_winners

    r = _results()
    assert front_winners(r) == {"b2": {"distilled": 2.5}, "b4": {"distilled": 3.7}}
    r["front_identity_b4"]["vs_fewer_steps"]["fid"]["delta"] = 5.0
    r["front_distilled_b2"]["vs_fewer_steps"]["fid"]["delta"] = None  # outside the front: no answer
    assert front_winners(r) == {"b2": {"identity": 2.0}, "b4": {"identity": 5.0}}
    for name in ("front_distilled_b2", "front_identity_b2", "front_forecast_b2"):
        r[name]["vs_fewer_steps"]["fid"]["delta"] = None
    assert front_winners(r)["b2"] == {"none": None}


def test_fronts_chart_is_drawn(tmp_path) -> None:
    from pipeline.common.fronts import front_rows, plot_fronts

    assert [n for n, _ in front_rows(_results())["distilled"]] == ["front_distilled_b4", "front_distilled_b2"]
    png = plot_fronts(_results(), tmp_path / "fronts.png", "test")
    assert png.stat().st_size > 10_000


def test_compare_schedules_reads_known_answers() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import compare_schedules as cs

    auto = _results()
    hand = {"baseline": auto["baseline"], "clockwork": _row(23.0, 60.0, clock=[2, 3, 4, 5], boot_shift=0.0)}
    c = cs.compare(auto, hand)
    assert c["auto_minus_hand"]["fid_diff"] == -1.0 and c["auto_minus_hand"]["verdict"] == "as good or better"
    assert c["auto_minus_hand"]["paired_std"] == 0.0  # the same bootstrap offsets: perfectly paired
    assert c["fronts_beat_plain"]["distilled"]["budgets"] == [2, 4]
    assert c["fronts_beat_plain"]["identity"]["budgets"] == [2] and c["fronts_beat_plain"]["forecast"]["budgets"] == []
    assert c["finetune_vs_all_steps"]["all_steps_row"] == "front_distilled_b4"
    assert c["finetune_vs_all_steps"]["fid_diff"] == -0.3
    # runs distilled for the schedules chosen at other budgets join auto's row as the trained adaptor's front; others
    # are listed; both against auto's plain rows, interpolated at their GFLOPs
    tr = cs.compare(auto, hand, trained={"b2": {"baseline": auto["baseline"], "clockwork": _row(21.0, 80.0, clock=[3, 5])}},
                    other={"x": {"baseline": auto["baseline"], "clockwork": _row(25.0, 60.0, clock=[1, 3, 4, 5])}})
    pts = {r["run"]: r for r in tr["fronts"]["trained"]}
    assert pts["b2"]["dfid_at_flops"] == pytest.approx(23.2 - 21.0) and pts["auto"]["dfid_at_flops"] == pytest.approx(5.6)
    assert [r["budget"] for r in tr["fronts"]["trained"]] == [2, 4] and tr["fronts_beat_plain"]["trained"]["budgets"] == [2, 4]
    assert tr["others"][0]["dfid_at_flops"] == pytest.approx(2.6) and "| x | [1, 3, 4, 5]" in cs.markdown(tr)
    with pytest.raises(SystemExit, match="x's baseline differs"):
        cs.compare(auto, hand, other={"x": {"baseline": _row(20.5, 100.0), "clockwork": _row(25.0, 60.0)}})
    hand["clockwork"] = _row(19.0, 60.0, clock=[2, 3, 4, 5])
    assert cs.compare(auto, hand)["auto_minus_hand"]["verdict"] == "worse"
    hand["baseline"] = _row(20.5, 100.0)
    with pytest.raises(SystemExit, match="not evaluated on the same prompts"):
        cs.compare(auto, hand)
    assert "| distilled | 2 | [3, 5]" in cs.markdown(c)


def test_row_cache_resumes_and_forgets(tmp_path) -> None:
    import torch

    from pipeline.common import MethodSpec
    from pipeline.common.rows import RowCache, weights_sha

    a = torch.nn.Linear(2, 2)
    spec = MethodSpec(adaptor="resnet", adaptor_steps=(2, 3))
    cache = RowCache(tmp_path / "rows", "ctx1")
    k = cache.key(spec, a)
    assert cache.load(k) is None
    cache.save(k, {"fid": 1.5}, torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    m, imgs = RowCache(tmp_path / "rows", "ctx1").load(k)
    assert m == {"fid": 1.5} and imgs.shape == (2, 3, 4, 4) and imgs.dtype == torch.uint8
    assert RowCache(tmp_path / "rows", "ctx2").key(spec, a) != k  # another context is another row
    with torch.no_grad():
        a.weight += 1
    assert weights_sha(a) != weights_sha(torch.nn.Linear(2, 2)) and cache.key(spec, a) != k  # other weights too
    (tmp_path / "rows" / f"{k}.json").unlink()
    assert cache.load(k) is None  # a row counts only with both files
    other = RowCache(tmp_path / "rows", "ctx3")
    other.key(spec, None)
    other.forget_others()
    assert list((tmp_path / "rows").iterdir()) == []
