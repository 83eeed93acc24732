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
