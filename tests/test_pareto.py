"""Pareto fronts and the operating point against a hand-worked sweep (see the table below)."""

import math

import numpy as np
import pytest

from clockwork.pareto import operating_point, pareto_front, pareto_mask

#        name        gflops  fid    clip    latency_ms
ROWS = [
    dict(name="A", gflops=100, fid=10.0, clip=0.300, latency_ms=50),  # baseline (clock 1)
    dict(name="B", gflops=70, fid=10.2, clip=0.290, latency_ms=40),
    dict(name="C", gflops=70, fid=10.5, clip=0.295, latency_ms=38),
    dict(name="D", gflops=60, fid=11.5, clip=0.280, latency_ms=45),
    dict(name="E", gflops=80, fid=10.8, clip=0.280, latency_ms=42),
    dict(name="F", gflops=50, fid=math.nan, clip=None, latency_ms=None),  # failed trial: no metrics
    dict(name="G", gflops=60, fid=11.5, clip=0.280, latency_ms=45),  # exact duplicate of D
]


def names(idx):
    return [ROWS[i]["name"] for i in idx]


def test_fid_vs_gflops_front():
    # C loses to B (same cost, worse FID); E loses to B (cheaper and better); F has no FID.
    # D and G are equal, so neither dominates the other: both stay.
    assert names(pareto_front(ROWS, "gflops", "fid")) == ["D", "G", "B", "A"]


def test_clip_vs_gflops_front_maximises_clip():
    # Now C beats B (same cost, higher CLIP) and E (cheaper, higher CLIP).
    assert names(pareto_front(ROWS, "gflops", "clip", "min", "max")) == ["D", "G", "C", "A"]


def test_fid_vs_latency_front():
    # D (45 ms, 11.5) and E (42 ms, 10.8) both lose to B (40 ms, 10.2).
    assert names(pareto_front(ROWS, "latency_ms", "fid")) == ["C", "B", "A"]


def test_mask_three_objectives_and_errors():
    pts = np.array([[1, 1, 1], [1, 1, 2], [0, 2, 2], [2, 0, 0]], float)
    assert pareto_mask(pts, ["min", "min", "min"]).tolist() == [True, False, True, True]
    assert pareto_mask(pts, ["max", "max", "max"]).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="modes"):
        pareto_mask(pts, ["min", "min"])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_mask(pts, ["min", "low", "min"])
    assert pareto_front([], "gflops", "fid") == []


def test_operating_point():
    # FID within 0.5 of the baseline (10.0): A, B, C qualify; B and C are cheapest (70), B has the better FID.
    assert names([operating_point(ROWS, 10.0, 0.5)]) == ["B"]
    assert names([operating_point(ROWS, 10.0, 0.05, relative=True)]) == ["B"]  # 5% of 10.0 = 0.5
    assert names([operating_point(ROWS, 10.0, 0.1)]) == ["A"]  # nothing saves FLOPs within 0.1: ship the baseline
    assert names([operating_point(ROWS, 10.0, 2.0)]) == ["D"]  # D and G tie; the first is kept
    # CLIP is maximised: within 0.01 of 0.300 -> A, B, C; cheapest 70 -> C has the higher CLIP.
    assert names([operating_point(ROWS, 0.300, 0.01, quality="clip", quality_mode="max")]) == ["C"]
    assert operating_point(ROWS, 5.0, 0.0) is None
    with pytest.raises(ValueError, match="tolerance"):
        operating_point(ROWS, 10.0, -1)
    with pytest.raises(ValueError, match="baseline"):
        operating_point(ROWS, math.nan, 1.0)


# ------------------------------------------------------------------ the competitor: the plain-steps front
from clockwork.pareto import beats_fewer_steps, plain_steps_front, versus_fewer_steps  # noqa: E402

#           steps gflops fid   clip
PLAIN = [dict(steps=s, gflops=g, fid=f, fid_std=0.3, clip=c, clip_std=0.1)
         for s, g, f, c in ((3, 6.0, 32.0, 80.0), (4, 8.0, 27.0, 82.0), (5, 10.0, 25.0, 83.0), (6, 12.0, 23.0, 83.5),
                            (7, 14.0, 23.5, 83.2), (8, 16.0, 21.0, 84.0))]


def test_plain_steps_front_drops_dominated_step_counts():
    # 7 steps costs more than 6 and is worse: not a choice anyone would make.
    assert [r["steps"] for r in plain_steps_front(PLAIN)] == [3, 4, 5, 6, 8]
    assert [r["steps"] for r in plain_steps_front(PLAIN, "clip", quality_mode="max")] == [3, 4, 5, 6, 8]
    # CLIP flat within noise: the cheapest step count dominates every other one, the plain curve keeps them all
    flat = [dict(steps=s, gflops=2.0 * s, clip=c) for s, c in ((3, 93.62), (4, 93.57), (6, 93.55), (8, 93.55))]
    assert [r["steps"] for r in plain_steps_front(flat, "clip", quality_mode="max")] == [3]
    curve = plain_steps_front(flat, "clip", quality_mode="max", drop_dominated=False)
    assert [r["steps"] for r in curve] == [3, 4, 6, 8]
    res = versus_fewer_steps(dict(gflops=10.0, clip=93.60), curve, "clip", quality_mode="max")
    assert res["status"] == "inside" and res["delta"] == pytest.approx(93.60 - 93.56)  # halfway between 4 and 6 steps


def test_versus_fewer_steps_interpolates_and_signs():
    front = plain_steps_front(PLAIN)
    # Halfway between 5 steps (25.0 @ 10) and 6 steps (23.0 @ 12): the front gives 24.0 at 11 GFLOPs.
    better = versus_fewer_steps(dict(gflops=11.0, fid=22.5, fid_std=0.4), front)
    assert better["status"] == "inside" and better["front"] == pytest.approx(24.0)
    assert better["delta"] == pytest.approx(1.5) and better["steps"] == pytest.approx(5.5)
    # independent errors: front std = hypot(0.5*0.3, 0.5*0.3), delta std adds the point's 0.4
    assert better["delta_std"] == pytest.approx(math.hypot(math.hypot(0.15, 0.15), 0.4))
    worse = versus_fewer_steps(dict(gflops=11.0, fid=25.0), front)
    assert worse["delta"] == pytest.approx(-1.0)
    # CLIP is maximised: higher than the front is better
    clip = versus_fewer_steps(dict(gflops=11.0, clip=84.0), plain_steps_front(PLAIN, "clip", quality_mode="max"),
                              "clip", quality_mode="max")
    assert clip["delta"] == pytest.approx(84.0 - 83.25)
    # exactly on a plain point: compared with that point alone
    on = versus_fewer_steps(dict(gflops=8.0, fid=26.0), front)
    assert on["front"] == pytest.approx(27.0) and on["delta"] == pytest.approx(1.0)


def test_versus_fewer_steps_says_when_outside_the_front():
    front = plain_steps_front(PLAIN)
    assert versus_fewer_steps(dict(gflops=5.0, fid=30.0), front)["status"] == "cheaper_than_front"
    out = versus_fewer_steps(dict(gflops=17.0, fid=20.0), front)
    assert out["status"] == "costlier_than_front" and out["delta"] is None
    assert beats_fewer_steps(out) is None
    assert versus_fewer_steps(dict(gflops=11.0, fid=math.nan), front)["status"] == "no_metrics"
    with pytest.raises(ValueError, match="front has no finite"):
        versus_fewer_steps(dict(gflops=11.0, fid=20.0), [dict(gflops=None, fid=None)])


def test_versus_fewer_steps_paired_bootstrap():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, 50)  # the prompt resample moves every method alike
    front = [dict(gflops=10.0, fid=25.0, fid_boot=(25.0 + shared).tolist()),
             dict(gflops=12.0, fid=23.0, fid_boot=(23.0 + shared).tolist())]
    pt = dict(gflops=11.0, fid=22.0, fid_std=1.0, fid_boot=(22.0 + shared + rng.normal(0, 0.1, 50)).tolist())
    res = versus_fewer_steps(pt, front)
    assert res["delta"] == pytest.approx(2.0)
    # paired: the shared resampling noise cancels, so the std is ~0.1, far below the unpaired ~1.2
    assert res["delta_std"] < 0.2 and res["front_std"] > 0.5
    assert beats_fewer_steps(res) is True
    assert beats_fewer_steps({**res, "delta": 0.9}) is False
    assert beats_fewer_steps({**res, "delta_std": 1.5}) is False
