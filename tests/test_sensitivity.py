"""clockwork.sensitivity (the paper's Fig. 2 as a tool) on a tiny random pixel UNet, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_unet, make_sampler

import clockwork
from clockwork.clock import Clock
from clockwork.cut import valid_cuts
from clockwork.embedded.pipeline import EmbeddedPipeline
from clockwork.sensitivity import format_table, plot_sensitivity, sensitivity

STEPS, N, GUIDANCE = 4, 2, 2.0


@pytest.fixture(scope="module")
def unet():
    return build_unet("pixel")


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)


@pytest.fixture(scope="module")
def run(unet, prompts):
    """One sweep of every mode; ``samples[0]`` is the reference, ``samples[1 + i]`` belongs to ``rows[i]``."""
    samples = []

    def score(x):
        samples.append(x.clone())
        return float(x.double().mean())

    res = sensitivity(unet, make_sampler("dpm++"), *prompts, steps=STEPS, guidance=GUIDANCE, seed=0,
                      modes=("noise", "reuse", "reuse_once"), alphas=(0.0, 0.05, 0.5), score=score, flops=False,
                      progress=False)
    return res, samples


def plain_loop(unet, scheduler, cond, uncond, latents):
    """Sampling through ``unet(...)`` itself (with a Clockwork hook, if one is enabled)."""
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma
    ctx = torch.cat([uncond.expand_as(cond), cond])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(torch.cat([latents] * 2), t), t, encoder_hidden_states=ctx).sample
            u, c = out.chunk(2)
            latents = scheduler.step(u + GUIDANCE * (c - u), t, latents, return_dict=False)[0]
    return latents


def noise_for(unet):
    c = unet.config
    return torch.randn((N, c.in_channels, c.sample_size, c.sample_size), generator=torch.Generator().manual_seed(0))


def test_rows_cover_every_cut_mode_alpha_and_start(run, unet):
    res, samples = run
    keys = [(r["cut"], r["mode"], r["alpha"], r["start_step"]) for r in res["rows"]]
    want = [(c, m, a, s) for c in valid_cuts(unet) for m, a in
            [("noise", 0.0), ("noise", 0.05), ("noise", 0.5), ("reuse", None), ("reuse_once", None)]
            for s in range(1, STEPS)]
    assert keys == want
    assert all(r["n"] == N and r["rel_l2"] >= 0 and r["rel_l2_std"] >= 0 for r in res["rows"])
    assert len(samples) == 1 + len(res["rows"])
    assert [r["score"] for r in res["rows"]] == [float(x.double().mean()) for x in samples[1:]]
    meta = res["meta"]
    assert meta["cuts"] == valid_cuts(unet) and meta["reference_equal_across_cuts"] is True
    assert meta["ref_score"] == float(samples[0].double().mean())
    json.dumps(res)  # plain, JSON-ready
    table = format_table(res)
    assert len(table.splitlines()) == 1 + 5 * len(valid_cuts(unet))


def test_reference_is_plain_unet_sampling_bitwise(run, unet, prompts):
    _, samples = run
    ref = plain_loop(unet, make_sampler("dpm++"), *prompts, noise_for(unet))
    assert torch.equal(samples[0], ref)
    pipe = EmbeddedPipeline(unet, make_sampler("dpm++"))
    imgs = pipe(prompts[0], prompts[1], num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise_for(unet))
    assert torch.equal(samples[0].clamp(-1, 1), imgs)


def test_alpha_zero_changes_nothing_and_larger_alpha_changes_more(run):
    res, samples = run
    rows = res["rows"]
    zero = [i for i, r in enumerate(rows) if r["mode"] == "noise" and r["alpha"] == 0.0]
    assert all(rows[i]["rel_l2"] == 0.0 and torch.equal(samples[1 + i], samples[0]) for i in zero)

    def mean(alpha):
        vals = [r["rel_l2"] for r in rows if r["mode"] == "noise" and r["alpha"] == alpha]
        return sum(vals) / len(vals)

    assert 0 < mean(0.05) < mean(0.5)
    assert all(r["rel_l2"] > 0 for r in rows if r["mode"].startswith("reuse"))


@pytest.mark.parametrize("mode", ["reuse", "reuse_once"])
def test_reuse_is_the_identity_adaptor_of_clockwork_enable(run, unet, prompts, mode):
    res, samples = run
    for i, r in enumerate(res["rows"]):
        if r["mode"] != mode or r["cut"] not in (1, 3):
            continue
        s = r["start_step"]
        sched = make_sampler("dpm++")
        steps = range(s, STEPS) if mode == "reuse" else [s]
        clockwork.enable(unet, adaptor="identity", clock=Clock(adaptor_steps=steps), cut=r["cut"], scheduler=sched)
        try:
            x = plain_loop(unet, sched, *prompts, noise_for(unet))
        finally:
            clockwork.disable(unet)
        assert torch.equal(samples[1 + i], x), (r, (samples[1 + i] - x).abs().max())


def test_bad_arguments(unet, prompts):
    with pytest.raises(ValueError, match="unknown modes"):
        sensitivity(unet, make_sampler("dpm++"), *prompts, steps=2, modes=("blur",), progress=False)
    with pytest.raises(ValueError, match="step 0"):
        sensitivity(unet, make_sampler("dpm++"), *prompts, steps=2, modes=("reuse",), start_steps=[0], progress=False)


def test_plot(run, tmp_path):
    path = plot_sensitivity(run[0], tmp_path / "s.png", svg=True)
    assert path.stat().st_size > 1000 and path.with_suffix(".svg").is_file()


def test_cli_embedded_teacher_end_to_end(tmp_path, capsys):
    from clockwork.cli import main

    out = tmp_path / "emb"
    rc = main(["sensitivity", "--n", "2", "--steps", "3", "--start-steps", "2", "--modes", "noise,reuse",
               "--alphas", "0.3", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "sensitivity.json").read_text())
    assert {(r["cut"], r["mode"]) for r in res["rows"]} == {(c, m) for c in (1, 2, 3) for m in ("noise", "reuse")}
    assert res["meta"]["sampler"] == "dpm++" and res["meta"]["n"] == 2
    assert 0.5 < res["meta"]["per_cut"]["1"]["flops"]["replaced_share"] < 1
    assert (out / "sensitivity.png").stat().st_size > 1000
    assert "reuse" in capsys.readouterr().out


def test_cli_unet_config_file(tmp_path):
    from clockwork.cli import main
    from conftest import SD15_TINY

    (tmp_path / "config.json").write_text(json.dumps(SD15_TINY))
    rc = main(["sensitivity", "--unet-config", str(tmp_path / "config.json"), "--sample-size", "8", "--n", "1",
               "--steps", "2", "--modes", "reuse", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "sensitivity.json").read_text())
    assert res["meta"]["sample_shape"] == [4, 8, 8] and len(res["rows"]) == 3
