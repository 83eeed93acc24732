"""The forecast adaptor (TaylorSeer-style): extrapolation weights by hand, the hook's forecast against an independent
reference loop (every sampler family, CFG as one batch and as two calls, orders 1 and 2), the fall-back to the
identity adaptor, torch.compile, save / load, FLOPs and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_unet, expected_steps, make_sampler, reference_cfg_loop

import clockwork
from clockwork import Clock, ForecastAdaptor, IdentityAdaptor, build_adaptor, get_hook, load_adaptor
from clockwork.adaptors import extrapolation_weights
from clockwork.cut import UNetCut
from clockwork.embedded.pipeline import EmbeddedPipeline

STEPS = 7
SIG = {"cut": 1, "r_in_channels": 16, "r_out_channels": 24, "temb_channels": 32, "text_channels": 12}


@pytest.fixture(scope="module")
def pixel_unet():
    return build_unet("pixel", seed=11)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)


def sample(pipe, prompts, seed=0, steps=STEPS, **kw):
    pos, neg = prompts
    return pipe(pos, neg, num_inference_steps=steps, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(seed), **kw)


def clockwork_sample(unet, name, prompts, adaptor, clock, cfg_mode="batch", cut=1, **kw):
    pipe = EmbeddedPipeline(unet=unet, scheduler=make_sampler(name))
    hook = clockwork.enable(pipe, adaptor=adaptor, clock=clock, cut=cut, **kw)
    try:
        return sample(pipe, prompts, cfg_mode=cfg_mode), hook
    finally:
        clockwork.disable(pipe)


# ---- the weights ---------------------------------------------------------------------------------------------

def test_weights_by_hand():
    # first order, equal spacing: 2 r(1) - r(0)
    assert extrapolation_weights([0, 1], 2) == pytest.approx([-1.0, 2.0], abs=1e-12)
    # first order, clock 2: full steps 0 and 2, adaptor step 3: r(2) + (r(2) - r(0)) / 2
    assert extrapolation_weights([0, 2], 3) == pytest.approx([-0.5, 1.5], abs=1e-12)
    # first order, unequal spacing (clock 3, step 4 from full steps 0 and 3): (4-3)/(0-3), (4-0)/(3-0)
    assert extrapolation_weights([0, 3], 4) == pytest.approx([-1 / 3, 4 / 3], abs=1e-12)
    assert extrapolation_weights([3, 6], 8) == pytest.approx([-2 / 3, 5 / 3], abs=1e-12)
    # second order, equal spacing: 3 r(2) - 3 r(1) + r(0)
    assert extrapolation_weights([0, 1, 2], 3) == pytest.approx([1.0, -3.0, 3.0], abs=1e-12)
    # second order, clock 2 (full 0, 2, 4; step 5): (5-2)(5-4)/((0-2)(0-4)) = 3/8, (5-0)(5-4)/((2-0)(2-4)) = -5/4, ...
    assert extrapolation_weights([0, 2, 4], 5) == pytest.approx([3 / 8, -5 / 4, 15 / 8], abs=1e-12)
    # second order, unequal spacing: full 0, 1, 3; step 4: (4-1)(4-3)/((0-1)(0-3)), (4-0)(4-3)/((1-0)(1-3)), ...
    assert extrapolation_weights([0, 1, 3], 4) == pytest.approx([1.0, -2.0, 2.0], abs=1e-12)
    # one step: reuse
    assert extrapolation_weights([5], 6) == [1.0]
    # weights sum to 1 (constants are reproduced) and reproduce a polynomial of their degree exactly
    for ks, s in (([1, 4], 5), ([0, 2, 5], 7), ([2, 3, 7], 9)):
        w = extrapolation_weights(ks, s)
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
        f = lambda x: 0.3 * x**2 - 2 * x + 1.5 if len(ks) == 3 else 4 * x - 7  # noqa: E731
        assert sum(wj * f(k) for wj, k in zip(w, ks)) == pytest.approx(f(s), abs=1e-9)
    with pytest.raises(ValueError, match="distinct"):
        extrapolation_weights([1, 1], 2)
    with pytest.raises(ValueError, match="at least one"):
        extrapolation_weights([], 2)


def test_extrapolate_uses_the_last_order_plus_one_full_steps():
    g = torch.Generator().manual_seed(0)
    r = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(4)]
    hist = list(zip([0, 2, 4, 6], r))
    f1, f2 = ForecastAdaptor(order=1), ForecastAdaptor(order=2)
    assert f1.cached_tensors == 2 and f2.cached_tensors == 3 and ForecastAdaptor(order=0).cached_tensors == 1
    assert torch.allclose(f1.extrapolate(hist, 7), 1.5 * r[3] - 0.5 * r[2], atol=1e-6)
    assert torch.allclose(f2.extrapolate(hist, 7), 3 / 8 * r[1] - 5 / 4 * r[2] + 15 / 8 * r[3], atol=1e-6)
    assert f1.extrapolate(hist[:1], 1) is r[0]  # one full step: the identity, the same tensor
    # fewer than order + 1 full steps: as many as exist (steps 0, 2 -> 5: -1.5 r(0) + 2.5 r(2))
    assert torch.allclose(f2.extrapolate(hist[:2], 5), 2.5 * r[1] - 1.5 * r[0], atol=1e-6)
    # 16-bit tensors: accumulated in float32, returned in their dtype
    h16 = [(k, t.to(torch.bfloat16)) for k, t in hist]
    out = f1.extrapolate(h16, 7)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), 1.5 * h16[3][1].float() - 0.5 * h16[2][1].float(), atol=2e-2)
    # the module itself returns what it is given, as the identity adaptor does
    x = torch.randn(2, 24, 3, 3)
    assert f1(r_out_prev=x) is x and IdentityAdaptor()(r_out_prev=x) is x
    with pytest.raises(ValueError, match="step 0"):
        f1(r_in=None, r_out_prev=None)


# ---- the hook against an independent reference -------------------------------------------------------------------

def reference_forecast(unet, name, prompts, clock, order, cfg_mode, cut=1, seed=0, steps=STEPS, guidance=3.0):
    """A hand-written sampling loop with plain UNet calls. A forward hook on the boundary upsampler records its output
    (r_out after the upsampler) on full steps and, on adaptor steps, replaces it by the polynomial through the last
    order + 1 recorded ones at the step index - weights from numpy's least squares polyfit, exact here - per CFG
    call and per evaluation of the sampler step (Heun's two, PNDM's first step's two)."""
    boundary = unet.up_blocks[len(unet.up_blocks) - 1 - cut].upsamplers[0]
    hist: dict = {}
    state = {}

    def weights(ks, s):
        deg = len(ks) - 1
        return [float(np.polyval(np.polyfit(np.array(ks, float), np.eye(len(ks))[j], deg), s)) for j in range(len(ks))]

    def post(mod, args, out):
        key = (state["slot"], state["sub"])
        if state["adaptor"]:
            h = hist[key][-(order + 1):]
            if len(h) == 1:
                return h[0][1]
            w = weights([k for k, _ in h], state["step"])
            return sum(wj * r for wj, (_, r) in zip(w, h))
        hist.setdefault(key, []).append((state["step"], out))
        return None

    handle = boundary.register_forward_hook(post)
    try:
        return reference_cfg_loop(unet, name, prompts, cfg_mode, state, lambda step, sub: state.update(
            step=step, sub=sub, adaptor=step > 0 and not clock.is_full(step)), seed, steps, guidance)
    finally:
        handle.remove()


@pytest.mark.parametrize("name,cfg_mode,clock,order,cut", [
    ("dpm++", "batch", Clock(2), 1, 1),
    ("dpm++", "two_calls", Clock(3), 1, 1),  # unequal spacing (steps 4, 5 from full steps 0, 3) and CFG slots
    ("ddim", "batch", Clock(2), 2, 1),
    ("euler", "two_calls", Clock(adaptor_steps=[2, 4, 5]), 2, 2),
    ("heun", "batch", Clock(2), 1, 1),  # two evaluations per step: each its own history
    ("pndm", "batch", Clock(2), 1, 1),  # two evaluations in the first step
])
def test_hook_forecast_matches_reference_loop(pixel_unet, prompts, name, cfg_mode, clock, order, cut):
    ref = reference_forecast(pixel_unet, name, prompts, clock, order, cfg_mode, cut=cut)
    ad = build_adaptor("forecast", UNetCut(pixel_unet, cut), order=order)
    out, hook = clockwork_sample(pixel_unet, name, prompts, ad, clock, cfg_mode, cut=cut)
    ident, _ = clockwork_sample(pixel_unet, name, prompts, "identity", clock, cfg_mode, cut=cut)
    assert hook.upsampled and hook.forecast
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert (out - ident).abs().max() > 1e-3, "the forecast must differ from reuse (else this test proves nothing)"
    # history: full steps only, at most order + 1 per (CFG call, evaluation of the step)
    slots = {0, 1} if cfg_mode == "two_calls" else {0}
    assert {s for s, _ in hook._history} == slots
    full_steps = [s for s in range(STEPS) if clock.is_full(s)]
    evals = expected_steps(name, STEPS)
    for (_, sub), h in hook._history.items():  # (Heun's last step and PNDM's later steps evaluate once)
        assert [k for k, _ in h] == [s for s in full_steps if evals.count(s) > sub][-(order + 1):]


def test_first_adaptor_step_after_one_full_step_is_the_identity(pixel_unet, prompts):
    """With one full step so far (step 0) there is nothing to extrapolate from: reuse, bitwise as identity."""
    for clock in (Clock(adaptor_steps=[1]), Clock(adaptor_steps=[1, 2])):
        for cfg_mode in ("batch", "two_calls"):
            ident, _ = clockwork_sample(pixel_unet, "dpm++", prompts, "identity", clock, cfg_mode)
            fc, hook = clockwork_sample(pixel_unet, "dpm++", prompts, "forecast", clock, cfg_mode)
            assert torch.equal(fc, ident)
    # order 0 is the identity adaptor on every sampler (also Heun, whose evaluations share the identity's cache)
    for name in ("dpm++", "heun"):
        ident, _ = clockwork_sample(pixel_unet, name, prompts, "identity", Clock(2))
        fc0, hook = clockwork_sample(pixel_unet, name, prompts, ForecastAdaptor(order=0), Clock(2))
        assert torch.equal(fc0, ident) and not hook.forecast and hook.upsampled
    # ... while with two full steps it extrapolates (clock 2: step 3 from steps 0 and 2)
    fc, _ = clockwork_sample(pixel_unet, "dpm++", prompts, "forecast", Clock(2))
    assert not torch.equal(fc, ident)


def test_history_per_cfg_slot_and_cleared_per_generation(pixel_unet, prompts):
    pipe = EmbeddedPipeline(unet=pixel_unet, scheduler=make_sampler("dpm++"))
    hook = clockwork.enable(pipe, adaptor=ForecastAdaptor(order=2), clock=2)
    try:
        a = sample(pipe, prompts, cfg_mode="two_calls")
        h0, h1 = hook._history[(0, 0)], hook._history[(1, 0)]
        assert [k for k, _ in h0] == [k for k, _ in h1] == [2, 4, 6]
        assert all(not torch.equal(x, y) for (_, x), (_, y) in zip(h0, h1))  # unconditional vs conditional r_out
        # another generation (other batch size, steps and seed) starts afresh and leaves no trace in the next one
        sample(pipe, (prompts[0][:1], prompts[1]), seed=5, steps=5, cfg_mode="batch")
        assert set(hook._history) == {(0, 0)} and [k for k, _ in hook._history[(0, 0)]] == [0, 2, 4]
        assert torch.equal(sample(pipe, prompts, cfg_mode="two_calls"), a)
    finally:
        clockwork.disable(pipe)
    # CFG as one batch (one slot holding both halves) forecasts the same per half as the two calls' two slots
    b, _ = clockwork_sample(pixel_unet, "dpm++", prompts, ForecastAdaptor(order=2), Clock(2), "batch")
    assert torch.allclose(a, b, atol=1e-4)


def test_fast_mode_equals_eager(pixel_unet, prompts, monkeypatch):
    """fast=True: the full and the adaptor step as whole dynamo graphs (the eager backend, so no C compiler is
    needed; inductor on CPU is test_hook's slow test), the extrapolation outside them."""
    real_compile = torch.compile
    calls = []

    def eager_compile(fn, **kw):
        calls.append(kw)
        kw.pop("mode", None)
        return real_compile(fn, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    torch._dynamo.reset()
    try:
        for name, cfg_mode in (("dpm++", "two_calls"), ("heun", "batch")):
            eager, _ = clockwork_sample(pixel_unet, name, prompts, ForecastAdaptor(order=2), Clock(2), cfg_mode)
            fast, hook = clockwork_sample(pixel_unet, name, prompts, ForecastAdaptor(order=2), Clock(2), cfg_mode,
                                          fast=True)
            assert hook.fast and calls and all(c["fullgraph"] for c in calls)
            assert torch.allclose(fast, eager, atol=1e-4), (fast - eager).abs().max()
    finally:
        torch._dynamo.reset()


# ---- save / load, enable by name or folder, FLOPs, bad input ---------------------------------------------------

def test_save_load_round_trip(tmp_path, pixel_unet, prompts):
    cut = UNetCut(pixel_unet, 1)
    ad = build_adaptor("forecast", cut, order=2)
    assert isinstance(ad, ForecastAdaptor) and ad.kind == "forecast" and ad.num_parameters_ == 0
    assert ad.order == 2 and ad.cached_tensors == 3 and ad.uses_r_out_prev and tuple(ad.config.inputs) == ("r_out_prev",)
    assert {k: ad.config[k] for k in cut.signature()} == cut.signature()
    assert build_adaptor("forecast", cut).order == 1  # the default
    ad.save_pretrained(tmp_path / "fc")
    assert json.loads((tmp_path / "fc" / "config.json").read_text())["_class_name"] == "ForecastAdaptor"
    loaded = load_adaptor(tmp_path / "fc")
    assert type(loaded) is ForecastAdaptor and loaded.order == 2 and tuple(loaded.config.inputs) == ("r_out_prev",)
    assert {k: loaded.config[k] for k in cut.signature()} == cut.signature()
    IdentityAdaptor().save_pretrained(tmp_path / "id")  # parameter-free as well: loads from its config.json alone
    assert type(load_adaptor(tmp_path / "id")) is IdentityAdaptor
    # enable() takes the folder (order 2 kept) or the name (order 1)
    by_folder, hook = clockwork_sample(pixel_unet, "dpm++", prompts, str(tmp_path / "fc"), Clock(2))
    assert hook.adaptor.order == 2
    by_module, _ = clockwork_sample(pixel_unet, "dpm++", prompts, ad, Clock(2))
    by_name, hook = clockwork_sample(pixel_unet, "dpm++", prompts, "forecast", Clock(2))
    assert hook.adaptor.order == 1 and torch.equal(by_folder, by_module) and not torch.equal(by_name, by_module)


def test_flops_forecast_costs_what_identity_costs():
    from clockwork.cli import main
    from clockwork.flops import clockwork_flops
    from conftest import PIXEL_TINY

    ident = clockwork_flops(dict(PIXEL_TINY), steps=8, clock=2, adaptor="identity", seq_len=5)
    fc = clockwork_flops(dict(PIXEL_TINY), steps=8, clock=2, adaptor="forecast", seq_len=5,
                         adaptor_kwargs={"order": 2})
    assert fc["adaptor"] == "forecast" and fc["adaptor_params"] == 0
    assert {k: v for k, v in fc.items() if k != "adaptor"} == {k: v for k, v in ident.items() if k != "adaptor"}
    assert fc["adaptor_step_gflops"] < fc["full_step_gflops"]
    assert main(["flops", "--unet-config", "embedded", "--adaptor", "forecast", "--width", "64", "--json"]) == 0


def test_bad_order_and_inputs():
    for bad in (3, -1, 1.5, True, "1", None):
        with pytest.raises(ValueError, match="order"):
            ForecastAdaptor(order=bad)
    with pytest.raises(ValueError, match="order"):
        build_adaptor("forecast", SIG, order=4)
    with pytest.raises(ValueError, match=r"takes only `order`, not \['width'\]"):
        build_adaptor("forecast", SIG, width=64)
    with pytest.raises(ValueError, match="forecast adaptor only uses 'r_out_prev'"):
        build_adaptor("forecast", SIG, inputs=("r_in", "r_out_prev"))
    with pytest.raises(ValueError, match="forecast adaptor only uses 'r_out_prev'"):
        ForecastAdaptor(inputs=("r_in",))


def test_step_zero_cannot_be_a_forecast_step(pixel_unet):
    pipe = EmbeddedPipeline(unet=pixel_unet, scheduler=make_sampler("dpm++"))
    with pytest.raises(ValueError, match="step 0 cannot be an adaptor step"):
        clockwork.enable(pipe, adaptor="forecast", clock=Clock(adaptor_steps=[0, 1]))
    assert get_hook(pipe) is None
