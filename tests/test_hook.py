"""clockwork.enable / disable inside diffusers pipelines: exactness, the identity reference, the clock in use,
no hidden state, bad input, torch.compile, and the README snippet."""

from __future__ import annotations

import runpy
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from conftest import (SAMPLER_NAMES, build_unet, expected_steps, has_c_compiler, make_sampler, reference_cfg_loop,
                      tiny_sd_components)

import clockwork
from clockwork import Clock, build_adaptor, get_hook
from clockwork.cut import UNetCut
from clockwork.embedded.pipeline import EmbeddedPipeline

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6


@pytest.fixture(scope="module")
def pixel_unet():
    return build_unet("pixel", seed=11)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)


def embedded(unet, name="dpm++"):
    return EmbeddedPipeline(unet=unet, scheduler=make_sampler(name))


def sample(pipe, prompts, seed=0, steps=STEPS, **kw):
    pos, neg = prompts
    return pipe(pos, neg, num_inference_steps=steps, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(seed), **kw)


def perturbed_resnet(cut, seed=0):
    """A resnet adaptor with non-zero weights everywhere (an untrained one is exactly the identity)."""
    ad = build_adaptor("resnet", cut, width=16)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return ad.eval()


# ---- clock 1 is the plain pipeline, bitwise -------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_clock1_bitwise_embedded_pipeline(pixel_unet, prompts, name):
    pipe = embedded(pixel_unet, name)
    base = sample(pipe, prompts)
    base_two = sample(pipe, prompts, cfg_mode="two_calls")
    hook = clockwork.enable(pipe, adaptor="identity", clock=1)
    try:
        assert torch.equal(sample(pipe, prompts), base)
        assert torch.equal(sample(pipe, prompts, cfg_mode="two_calls"), base_two)
        assert hook.trace and all(full for _, full in hook.trace)
    finally:
        clockwork.disable(pipe)
    assert torch.isfinite(base).all()


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_clock1_bitwise_stable_diffusion_pipeline(tmp_path, name):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_path, scheduler=make_sampler(name, "sd")))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a lower cat", negative_prompt="wider", num_inference_steps=4, guidance_scale=5.0,
              output_type="pt")
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.enable(pipe, adaptor="identity", clock=1)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.disable(pipe)
    assert torch.equal(out, base)
    if name == "dpm++":
        # clock 2 really changes something (so the test above is not vacuous) and stays sane
        clockwork.enable(pipe, adaptor="identity", clock=2)
        out2 = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
        clockwork.disable(pipe)
        assert not torch.equal(out2, base) and torch.isfinite(out2).all()
        assert torch.equal(pipe(**kw, generator=torch.Generator().manual_seed(0)).images, base)


def test_make_scheduler_builds_dpm():
    """clockwork.schedulers.make_scheduler('dpm', <any DDPM-style config>) must give a usable DPM-Solver."""
    from clockwork.schedulers import make_scheduler
    from conftest import scheduler_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        s = make_scheduler("dpm", scheduler_config("embedded"))
    assert s.config.algorithm_type == "dpmsolver"


# ---- the identity adaptor against an independent reference ------------------------------------------

def reference_identity(unet, name, prompts, period, cfg_mode, cut=1, seed=0, steps=STEPS, guidance=3.0):
    """A hand-written sampling loop: plain UNet calls; on adaptor steps a forward pre-hook replaces the
    input of the boundary upsampler (= r_out) by the one cached at the previous full step of the same call."""
    boundary = unet.up_blocks[len(unet.up_blocks) - 1 - cut].upsamplers[0]
    cache, state = {}, {"adaptor": False, "slot": 0}

    def pre(mod, args):
        if state["adaptor"]:
            return (cache[state["slot"]], *args[1:])
        cache[state["slot"]] = args[0]
        return None

    handle = boundary.register_forward_pre_hook(pre)
    try:
        return reference_cfg_loop(unet, name, prompts, cfg_mode, state,
                                  lambda step, sub: state.update(adaptor=step % period != 0), seed, steps, guidance)
    finally:
        handle.remove()


@pytest.mark.parametrize("name,cfg_mode,period,cut", [
    ("dpm++", "batch", 2, 1), ("dpm++", "two_calls", 2, 1), ("heun", "batch", 2, 1), ("pndm", "two_calls", 3, 1),
    ("euler", "batch", 2, 2), ("ddim", "batch", 4, 1),
])
def test_identity_matches_reference_loop(pixel_unet, prompts, name, cfg_mode, period, cut):
    pipe = embedded(pixel_unet, name)
    ref = reference_identity(pixel_unet, name, prompts, period, cfg_mode, cut=cut)
    base = sample(pipe, prompts, cfg_mode=cfg_mode)
    clockwork.enable(pipe, adaptor="identity", clock=period, cut=cut)
    try:
        out = sample(pipe, prompts, cfg_mode=cfg_mode)
    finally:
        clockwork.disable(pipe)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, base, atol=1e-4), "the reference must differ from the plain pipeline"


def _count_calls(modules):
    counts = Counter()
    handles = [m.register_forward_hook(lambda mod, a, o, k=k: counts.update([k])) for k, m in enumerate(modules)]
    return counts, handles


@pytest.mark.parametrize("adaptor", ["identity", "resnet"])
@pytest.mark.parametrize("cfg_mode", ["batch", "two_calls"])
def test_replaced_blocks_never_run_on_adaptor_steps(pixel_unet, prompts, adaptor, cfg_mode):
    pipe = embedded(pixel_unet, "heun")
    cut = UNetCut(pixel_unet, 1)
    replaced = cut.replaced_modules()
    kept = [pixel_unet.conv_in, pixel_unet.down_blocks[0], pixel_unet.up_blocks[-1], pixel_unet.conv_out]
    counts, handles = _count_calls(replaced + kept)
    ad = "identity" if adaptor == "identity" else perturbed_resnet(cut)
    hook = clockwork.enable(pipe, adaptor=ad, clock=2)
    try:
        sample(pipe, prompts, cfg_mode=cfg_mode)
    finally:
        clockwork.disable(pipe)
        for h in handles:
            h.remove()
    n_calls = len(hook.trace)
    n_full = sum(full for _, full in hook.trace)
    assert n_calls == len(expected_steps("heun", STEPS)) * (2 if cfg_mode == "two_calls" else 1)
    assert 0 < n_full < n_calls
    assert all(counts[k] == n_full for k in range(len(replaced))), "a replaced block ran on an adaptor step"
    assert all(counts[len(replaced) + k] == n_calls for k in range(len(kept)))


# ---- the clock in use: same decision per sampler step whatever the calls ------------------------------

def _decisions(trace):
    per_step = defaultdict(set)
    for step, full in trace:
        per_step[step].add(full)
    assert all(len(v) == 1 for v in per_step.values()), f"one sampler step got both decisions: {dict(per_step)}"
    return {k: v.pop() for k, v in sorted(per_step.items())}


@pytest.mark.parametrize("clock", [2, Clock(adaptor_steps=[3, 4, 5])])
def test_same_decisions_for_heun_and_two_call_cfg(pixel_unet, prompts, clock):
    decisions = {}
    for name in ("dpm++", "heun", "pndm", "ddim"):
        for cfg_mode in ("batch", "two_calls"):
            pipe = embedded(pixel_unet, name)
            hook = clockwork.enable(pipe, adaptor="identity", clock=clock)
            sample(pipe, prompts, cfg_mode=cfg_mode)
            clockwork.disable(pipe)
            calls_per_eval = 2 if cfg_mode == "two_calls" else 1
            assert len(hook.trace) == len(expected_steps(name, STEPS)) * calls_per_eval
            decisions[name, cfg_mode] = _decisions(hook.trace)
    ref = decisions["dpm++", "batch"]
    clk = clock if isinstance(clock, Clock) else Clock(clock)
    assert ref == dict(enumerate(clk.schedule(STEPS)))
    for key, d in decisions.items():
        assert d == ref, key


def test_two_calls_same_seed_identical_without_reset(pixel_unet, prompts):
    cut = UNetCut(pixel_unet, 1)
    for adaptor, cfg_mode in (("identity", "batch"), (perturbed_resnet(cut), "two_calls")):
        pipe = embedded(pixel_unet, "dpm++")
        clockwork.enable(pipe, adaptor=adaptor, clock=2)
        a = sample(pipe, prompts, cfg_mode=cfg_mode)
        b = sample(pipe, prompts, cfg_mode=cfg_mode)
        sample(pipe, (prompts[0][:1], prompts[1]), seed=5, cfg_mode=cfg_mode)  # other batch size and seed
        sample(pipe, prompts, seed=9, steps=5, cfg_mode=cfg_mode)  # other step count
        c = sample(pipe, prompts, cfg_mode=cfg_mode)
        clockwork.disable(pipe)
        assert torch.equal(a, b) and torch.equal(a, c)
        # a fresh hook on a fresh pipeline gives the same image: nothing leaks between generations
        pipe2 = embedded(pixel_unet, "dpm++")
        clockwork.enable(pipe2, adaptor=adaptor, clock=2)
        assert torch.equal(sample(pipe2, prompts, cfg_mode=cfg_mode), a)
        clockwork.disable(pipe2)


def test_disable_restores_the_unet_exactly(pixel_unet, prompts):
    unet = pixel_unet
    pipe = embedded(unet, "dpm++")
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    forward = unet.forward
    x = torch.randn(2, 3, 16, 16)
    ehs = torch.cat([prompts[0]])
    with torch.no_grad():
        y0 = unet(x, torch.tensor(500), ehs).sample
    base = sample(pipe, prompts)
    clockwork.enable(pipe, adaptor=perturbed_resnet(UNetCut(unet, 1)), clock=2)
    clockwork.enable(pipe, adaptor="identity", clock=3)  # enabling again replaces the hook
    assert get_hook(pipe).clock.period == 3
    assert not torch.equal(sample(pipe, prompts), base)
    clockwork.disable(pipe)
    clockwork.disable(pipe)  # idempotent
    assert get_hook(pipe) is None
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
    assert set(dict(unet.named_modules())) == set(dict(build_unet("pixel").named_modules()))
    with torch.no_grad():
        assert torch.equal(unet(x, torch.tensor(500), ehs).sample, y0)
        assert torch.equal(unet.forward(x, torch.tensor(500), ehs).sample, y0)
    assert torch.equal(sample(pipe, prompts), base)
    assert unet.forward.__func__ is forward.__func__


# ---- other pipelines and UNets ---------------------------------------------------------------------------

def test_bare_sdxl_unet_with_added_cond_kwargs():
    """enable(unet, scheduler=...) on an SDXL-shaped UNet in a hand-written loop."""
    unet = build_unet("sdxl", seed=4)
    g = torch.Generator().manual_seed(0)
    ehs = torch.randn(2, 5, 16, generator=g)
    added = {"text_embeds": torch.randn(2, 16, generator=g), "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)}
    x0 = torch.randn(1, 4, 16, 16, generator=g)

    def run(sched):
        sched.set_timesteps(STEPS)
        x = x0 * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                u, c = unet(sched.scale_model_input(torch.cat([x, x]), t), t, ehs, added_cond_kwargs=added).sample.chunk(2)
                x = sched.step(u + 4 * (c - u), t, x, return_dict=False)[0]
        return x

    sched = make_sampler("euler", "sd")
    base = run(sched)
    counts, handles = _count_calls([unet.mid_block])
    hook = clockwork.enable(unet, adaptor="identity", clock=1, scheduler=sched)
    assert torch.equal(run(sched), base)
    clockwork.enable(unet, adaptor="identity", clock=2, scheduler=sched)
    out = run(sched)
    hook = get_hook(unet)
    clockwork.disable(unet)
    for h in handles:
        h.remove()
    assert not torch.equal(out, base) and torch.isfinite(out).all()
    assert _decisions(hook.trace) == dict(enumerate(Clock(2).schedule(STEPS)))
    assert counts[0] == STEPS + STEPS // 2  # clock 1 run: every step; clock 2 run: the full steps only
    with pytest.raises(ValueError, match="scheduler="):
        clockwork.enable(unet, adaptor="identity", clock=2)


def test_controlnet_pipeline(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    comps = tiny_sd_components(tmp_path)
    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(comps["unet"], conditioning_embedding_out_channels=(8, 16)).eval()
    with torch.no_grad():  # from_unet zero-inits the residual convs: give them weights so they matter
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe = StableDiffusionControlNetPipeline(**comps, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(prompt="a lower cat", image=image, num_inference_steps=STEPS, output_type="pt", guidance_scale=5.0)
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.enable(pipe, adaptor="identity", clock=1)
    same = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.enable(pipe, adaptor="identity", clock=2)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.disable(pipe)
    assert torch.equal(same, base)
    assert torch.isfinite(out).all() and not torch.equal(out, base)


@pytest.mark.parametrize("name", ["euler", "dpm++", "ddim", "heun"])
def test_img2img_starts_with_a_full_step(tmp_path, name):
    """img2img skips the first steps (set_begin_index / sliced timesteps): the first step it runs must be full,
    even when it is an odd step of the schedule."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd_components(tmp_path, scheduler=make_sampler(name, "sd")))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(prompt="a lower cat", image=image, num_inference_steps=8, strength=0.625, output_type="pt")  # starts at step 3
    base = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    hook = clockwork.enable(pipe, adaptor="identity", clock=1)
    assert torch.equal(pipe(**kw, generator=torch.Generator().manual_seed(0)).images, base)
    clockwork.enable(pipe, adaptor="identity", clock=2)
    hook = get_hook(pipe)
    out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    clockwork.disable(pipe)
    assert torch.isfinite(out).all()
    assert _decisions(hook.trace) == {0: True, 1: False, 2: True, 3: False, 4: True}


# ---- bad input -------------------------------------------------------------------------------------------

def test_bad_input_raises_clear_value_errors(pixel_unet, prompts, tmp_path):
    pipe = embedded(pixel_unet)
    with pytest.raises(ValueError, match=r"integer >= 1.*got 0"):
        clockwork.enable(pipe, clock=0)
    with pytest.raises(ValueError, match=r"integer >= 1.*got -1"):
        clockwork.enable(pipe, clock=-1)
    with pytest.raises(ValueError, match=r"unknown adaptor 'resnet50'; choose one of \['forecast', 'identity', 'resnet', 'unet-light'\]"):
        clockwork.enable(pipe, adaptor="resnet50")
    with pytest.raises(ValueError, match=r"cut=7 .*valid cuts: \[1, 2, 3\]"):
        clockwork.enable(pipe, cut=7)
    with pytest.raises(ValueError, match=r"step 0 cannot be an adaptor step.*allowed"):
        clockwork.enable(pipe, clock=Clock(adaptor_steps=[0, 1]))
    # an adaptor that does not look at r_out(t+1) may run at step 0
    cut = UNetCut(pixel_unet, 1)
    clockwork.enable(pipe, adaptor=build_adaptor("resnet", cut, width=16, inputs=("r_in", "time")),
                     clock=Clock(adaptor_steps=[0, 1]))
    hook = get_hook(pipe)
    sample(pipe, prompts, steps=4)
    assert _decisions(hook.trace) == {0: False, 1: False, 2: True, 3: True}
    # adaptor steps outside the schedule: found when sampling starts (the step count is known only then)
    clockwork.enable(pipe, adaptor="identity", clock=Clock(adaptor_steps=[9]))
    with pytest.raises(ValueError, match=r"outside the schedule of 6 steps \(allowed: 0\.\.5\)"):
        sample(pipe, prompts)
    clockwork.disable(pipe)
    # an adaptor saved for another cut / another UNet
    build_adaptor("resnet", UNetCut(pixel_unet, 1), width=16).save_pretrained(tmp_path / "ad_cut1")
    with pytest.raises(ValueError, match=r"another UNet or cut \(cut: adaptor has 1, UNet cut needs 2"):
        clockwork.enable(pipe, adaptor=str(tmp_path / "ad_cut1"), cut=2)
    other = build_unet("embedded", seed=1)  # other widths
    with pytest.raises(ValueError, match="another UNet or cut"):
        clockwork.enable(other, adaptor=tmp_path / "ad_cut1", cut=1, scheduler=make_sampler("dpm++"))
    clockwork.enable(pipe, adaptor=tmp_path / "ad_cut1", cut=1)  # the right one loads
    assert isinstance(get_hook(pipe).adaptor, clockwork.ResNetAdaptor)
    clockwork.disable(pipe)
    with pytest.raises(FileNotFoundError):
        clockwork.enable(pipe, adaptor=tmp_path / "missing")
    with pytest.raises(ValueError, match="adaptor must be"):
        clockwork.enable(pipe, adaptor=3)
    assert get_hook(pipe) is None


# ---- torch.compile ---------------------------------------------------------------------------------------

def test_steps_are_single_graphs(prompts):
    """Dynamo captures full_step and adaptor_step each as one graph (fullgraph=True) - no C compiler needed."""
    torch._dynamo.reset()
    unet = build_unet("pixel", seed=12, block_out_channels=(16, 32, 32),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))  # 3 levels: faster tracing
    cut = UNetCut(unet, 1)
    ad = perturbed_resnet(cut)
    x = torch.randn(2, 3, 16, 16)
    ehs = torch.cat([prompts[1], prompts[0][:1]])
    t = torch.tensor(500)
    with torch.no_grad():
        ref = cut.full_step(x, t, ehs)
        got = torch.compile(cut.full_step, fullgraph=True, backend="eager")(x, t, ehs)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, ref))
        ref_a = cut.adaptor_step(ad, ref[2], x, t, ehs)
        got_a = torch.compile(cut.adaptor_step, fullgraph=True, backend="eager")(ad, ref[2], x, t, ehs)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_a, ref_a))
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.skipif(not has_c_compiler(), reason="torch.compile (inductor) on CPU needs a C/C++ compiler; none found")
def test_inductor_compile_and_fast_mode_match_eager(prompts):
    """Inductor on CPU: ~1-4 min the first time (C++ compilation), hence @slow."""
    torch._dynamo.reset()
    unet = build_unet("pixel", seed=11, block_out_channels=(16, 16, 32, 32))
    cut = UNetCut(unet, 1)
    ad = perturbed_resnet(cut)
    x = torch.randn(2, 3, 16, 16)
    ehs = torch.cat([prompts[1], prompts[0][:1]])
    t = torch.tensor(500)
    with torch.no_grad():
        ref = cut.full_step(x, t, ehs)
        got = torch.compile(cut.full_step, fullgraph=True)(x, t, ehs)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, ref))
        ref_a = cut.adaptor_step(ad, ref[2], x, t, ehs)
        got_a = torch.compile(cut.adaptor_step, fullgraph=True)(ad, ref[2], x, t, ehs)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got_a, ref_a))
    pipe = embedded(unet, "dpm++")
    clockwork.enable(pipe, adaptor="identity", clock=2)
    eager = sample(pipe, prompts)
    clockwork.enable(pipe, adaptor="identity", clock=2, fast=True)
    fast1 = sample(pipe, prompts)
    fast2 = sample(pipe, prompts)
    clockwork.disable(pipe)
    torch._dynamo.reset()
    assert torch.allclose(fast1, eager, atol=1e-4) and torch.equal(fast1, fast2)


# ---- the documented snippet ------------------------------------------------------------------------------

def test_diffusers_snippet_runs():
    ns = runpy.run_path(str(ROOT / "docs" / "snippet_diffusers.py"), run_name="snippet")
    res = ns["main"]()
    assert res["decisions"] == ["full", "adaptor"] * 4
    assert res["disable_restores_baseline"] is True
    assert 0 < res["max_abs_diff_vs_baseline"] < 1
    src = (ROOT / "docs" / "snippet_diffusers.py").read_text()
    assert 'StableDiffusionPipeline.from_pretrained(' in src and "stable-diffusion-v1-5" in src
    assert "clockwork.enable(pipe" in src and "clockwork.disable(pipe)" in src
