"""The clock counts sampler steps (never UNet calls), read from the scheduler's own state."""

from __future__ import annotations

import pytest
import torch
from conftest import SAMPLER_NAMES, expected_steps, make_sampler

from clockwork import Clock, sampler_step
from clockwork.clock import adaptor_loop_indices, loop_to_step, scheduler_loop_index


def test_period_schedule():
    assert Clock(2).schedule(8) == [True, False] * 4  # paper: adaptor at (1-based) steps 2, 4, 6, 8
    assert Clock(4).schedule(8) == [True, False, False, False] * 2
    assert Clock(1).schedule(5) == [True] * 5
    assert Clock(3).schedule(7) == [True, False, False, True, False, False, True]


def test_explicit_adaptor_steps():
    late = Clock(adaptor_steps=[4, 5, 6, 7])  # the "late" ablation, 0-based
    assert late.schedule(8) == [True] * 4 + [False] * 4
    assert Clock(adaptor_steps=[2, 3, 4, 5]).schedule(8) == [True, True, False, False, False, False, True, True]
    assert repr(late) == "Clock(adaptor_steps=[4, 5, 6, 7])" and repr(Clock(2)) == "Clock(2)"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_period(bad):
    with pytest.raises(ValueError, match=r"integer >= 1") as e:
        Clock(bad)
    assert repr(bad) in str(e.value)


def test_adaptor_steps_outside_schedule():
    with pytest.raises(ValueError, match=r"outside the schedule of 8 steps \(allowed: 0\.\.7\)") as e:
        Clock(adaptor_steps=[9]).validate(8)
    assert "[9]" in str(e.value)
    with pytest.raises(ValueError, match="outside"):
        Clock(adaptor_steps=[3, 8]).schedule(8)
    with pytest.raises(ValueError, match=">= 0"):
        Clock(adaptor_steps=[-1, 2])
    Clock(adaptor_steps=[7]).validate(8)


def test_step_zero_needs_an_adaptor_without_r_out_prev():
    with pytest.raises(ValueError, match=r"step 0 cannot be an adaptor step.*allowed: 1\.\.7"):
        Clock(adaptor_steps=[0, 2]).validate(8)
    Clock(adaptor_steps=[0, 2]).validate(8, first_step_may_be_adaptor=True)


# ---- reading the step from the scheduler ----------------------------------------------------------

def _run_loop(sched, steps: int, calls_per_iter: int = 1):
    """Drive a scheduler like a pipeline does (random model outputs) and record, before every model
    evaluation, (loop index, sampler step); returns also the number of scheduler.step calls."""
    g = torch.Generator().manual_seed(0)
    sched.set_timesteps(steps)
    x = torch.randn(1, 2, 4, 4, generator=g) * sched.init_noise_sigma
    seen = []
    for t in sched.timesteps:
        xi = sched.scale_model_input(x, t)
        for _ in range(calls_per_iter):
            seen.append((scheduler_loop_index(sched, t), sampler_step(sched, t)))
        x = sched.step(torch.randn(xi.shape, generator=g) * 0.1, t, x, return_dict=False)[0]
    return seen


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("steps", [4, 8])
def test_sampler_step_counts_sampler_steps(name, steps):
    sched = make_sampler(name)
    seen = _run_loop(sched, steps)
    assert [s for _, s in seen] == expected_steps(name, steps)
    assert [i for i, _ in seen] == list(range(len(sched.timesteps)))
    # two UNet calls per iteration (CFG as two calls) see the same step
    seen2 = _run_loop(make_sampler(name), steps, calls_per_iter=2)
    assert [s for _, s in seen2] == [s for s in expected_steps(name, steps) for _ in range(2)]
    # a second generation starts over without any reset: set_timesteps resets the scheduler's state
    assert _run_loop(sched, steps) == seen


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_adaptor_loop_indices_match_the_clock(name):
    sched = make_sampler(name)
    idx = adaptor_loop_indices(sched, 8, Clock(2))
    exp = expected_steps(name, 8)
    assert idx == [i for i, s in enumerate(exp) if s % 2 == 1]
    assert adaptor_loop_indices(sched, 8, Clock(1)) == []
    with pytest.raises(ValueError, match="outside"):
        adaptor_loop_indices(sched, 6, Clock(adaptor_steps=[7]))


def test_pndm_with_runge_kutta_warmup():
    """skip_prk_steps=False: the first three steps take 4 evaluations each, then one per PLMS step."""
    from diffusers import PNDMScheduler

    sched = PNDMScheduler(skip_prk_steps=False)
    seen = _run_loop(sched, 8)
    assert [s for _, s in seen] == [0] * 4 + [1] * 4 + [2] * 4 + [3, 4, 5, 6, 7]


@pytest.mark.parametrize("name", ["dpm++", "euler", "heun"])
def test_begin_index_before_first_step(name):
    """img2img-style pipelines set_begin_index(k): the first evaluation is at loop index k, not 0."""
    sched = make_sampler(name)
    sched.set_timesteps(8)
    begin = 3 * sched.order
    sched.set_begin_index(begin)
    ts = sched.timesteps[begin:]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, generator=g)
    seen = []
    for t in ts:
        xi = sched.scale_model_input(x, t)
        seen.append(scheduler_loop_index(sched, t))
        x = sched.step(torch.randn(xi.shape, generator=g) * 0.1, t, x, return_dict=False)[0]
    assert seen == list(range(begin, len(sched.timesteps)))
    assert loop_to_step(sched, seen[0]) == 3


def test_ddim_reads_step_from_timestep():
    sched = make_sampler("ddim")
    sched.set_timesteps(8)
    for i, t in enumerate(sched.timesteps):
        assert sampler_step(sched, t) == i
        assert sampler_step(sched, t.reshape(1).expand(2)) == i
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        sampler_step(sched, torch.tensor(3))
