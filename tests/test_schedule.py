"""The schedule optimizer: known best schedules on synthetic costs (exhaustive and greedy), budgets respected,
step 0 never taken, every schedule scored once, bad budgets named; the sample-change scorer on a tiny UNet."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import build_unet, make_sampler

from clockwork.hook import get_hook
from clockwork.schedule import sample_change_scorer, search_schedules

WEIGHTS = {1: 5.0, 2: 1.0, 3: 3.0, 4: 0.5, 5: 2.0, 6: 4.0, 7: 6.0}  # an additive cost per adaptor step


def additive(schedule):
    return sum(WEIGHTS[s] for s in schedule)


@pytest.mark.parametrize("limit", [256, 1])  # exhaustive everywhere / greedy from budget 1 on
def test_an_additive_cost_gives_the_cheapest_steps(limit) -> None:
    front = search_schedules(additive, 8, exhaustive_limit=limit)
    assert [c.budget for c in front] == list(range(1, 8))
    for c in front:
        assert c.adaptor_steps == tuple(sorted(sorted(WEIGHTS, key=WEIGHTS.get)[:c.budget]))
        assert c.score == pytest.approx(additive(c.adaptor_steps))
        assert 0 not in c.adaptor_steps and len(c.adaptor_steps) == c.budget
        # the ranking holds every candidate of the budget, best first, each with its own score
        assert len(c.ranking) == c.candidates and c.ranking[0] == (c.adaptor_steps, c.score)
        assert all(v == pytest.approx(additive(s)) for s, v in c.ranking)
        assert [v for _, v in c.ranking] == sorted(v for _, v in c.ranking)
    assert [c.method for c in front] == ["exhaustive" if math.comb(7, c.budget) <= limit else "greedy" for c in front]


def test_exhaustive_finds_what_greedy_cannot() -> None:
    def cost(s):  # a pair that only pays together
        return -10.0 if s == (3, 6) else additive(s)

    assert search_schedules(cost, 8, [2])[0].adaptor_steps == (3, 6)
    greedy = search_schedules(cost, 8, [2], exhaustive_limit=1)[0]
    assert greedy.method == "greedy" and greedy.adaptor_steps == (2, 4)


def test_budgets_not_asked_for_are_searched_only_when_greedy_needs_them() -> None:
    calls = []

    def cost(s):
        calls.append(s)
        return additive(s)

    search_schedules(cost, 8, [2, 6])  # exhaustive: only the 21 + 7 schedules of budgets 2 and 6
    assert sorted({len(s) for s in calls}) == [2, 6] and len(calls) == 21 + 7
    calls.clear()
    front = search_schedules(cost, 8, [3], exhaustive_limit=1)  # greedy grows budget 3 from the best 1 and 2
    assert sorted({len(s) for s in calls}) == [1, 2, 3] and front[0].method == "greedy"


def test_each_schedule_is_scored_once_and_allowed_steps_hold() -> None:
    calls = []

    def cost(s):
        calls.append(s)
        return additive(s)

    front = search_schedules(cost, 8, [1, 3], allowed=[2, 3, 5, 7])
    assert len(calls) == len(set(calls))
    assert [c.adaptor_steps for c in front] == [(2,), (2, 3, 5)]
    assert all(set(s) <= {2, 3, 5, 7} for s in calls)


@pytest.mark.parametrize("kw,match", [({"budgets": [0]}, "budget must be a number of adaptor steps in 1..7"),
                                      ({"budgets": [8]}, r"budget must be .* got \[8\]"),
                                      ({"allowed": [0, 2]}, "allowed adaptor steps must lie in 1..7"),
                                      ({"allowed": []}, "allowed adaptor steps"),
                                      ({"budgets": [3], "allowed": [1, 2]}, r"in 1..2 \(the allowed steps \[1, 2\]\)")])
def test_bad_budgets_and_impossible_schedules_are_named(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        search_schedules(additive, 8, **kw)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 2"):
        search_schedules(additive, 1)


def test_sample_change_scorer_on_a_tiny_unet() -> None:
    unet = build_unet("sd15", seed=3)
    g = torch.Generator().manual_seed(0)
    prompts, negative = torch.randn(2, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make_sampler("dpm++", "sd")
    score = sample_change_scorer(unet, sched, prompts, negative, adaptor="identity", cut=1, steps=6, guidance=2.0)
    assert score(()) == 0.0
    one, again, two = score((3,)), score((3,)), score((2, 3))
    assert one > 0 and one == again  # fixed noise: deterministic
    assert get_hook(unet) is None  # the hook is removed after every call
    front = search_schedules(score, 6, [1, 2])
    assert [c.budget for c in front] == [1, 2] and front[1].score <= two


@pytest.mark.parametrize("config", ["SD15_TINY", "SDXL_TINY"])
def test_clockwork_schedule_command(tmp_path, config, capsys) -> None:
    import json

    import conftest

    from clockwork.cli import main

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(getattr(conftest, config)))
    out = tmp_path / "out"
    assert main(["schedule", "--unet-config", str(cfg), "--steps", "4", "--n", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    res = json.loads((out / "schedule.json").read_text())
    assert (out / "schedule.png").stat().st_size > 0
    front = res["front"]
    assert [r["budget"] for r in front] == [1, 2, 3] and all(0 not in r["adaptor_steps"] for r in front)
    ratios = [r["gflops_ratio"] for r in front]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] < 1  # more adaptor steps, fewer FLOPs
    assert "budget 3: adaptor steps [1, 2, 3]" in capsys.readouterr().out
    for r in front:  # the whole ranking of each budget, best first, the chosen schedule on top
        assert r["ranking"][0] == [r["adaptor_steps"], r["score"]] and len(r["ranking"]) == r["candidates"]
        assert [v for _, v in r["ranking"]] == sorted(v for _, v in r["ranking"])
