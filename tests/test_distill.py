"""Distillation on unrolled trajectories of a tiny UNet: it learns, it stops on NaN, it resumes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_unet, make_sampler

from clockwork import Clock, build_adaptor
from clockwork.clock import adaptor_loop_indices
from clockwork.cut import UNetCut
from clockwork.distill import DistillConfig, PairDataset, distill, evaluate_mse
from clockwork.trajectories import TrajectoryStore, unroll_to_store

STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    unet = build_unet("pixel", seed=21)
    sched = make_sampler("dpm++")
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(6, 5, 16, generator=g)
    negative = torch.randn(1, 5, 16, generator=g)
    store = unroll_to_store(root, unet, sched, cuts=[1, 2], prompt_embeds=prompts, negative_embeds=negative,
                            steps=STEPS, guidance=2.0, seed=0, shard_size=4, progress=False)
    return unet, sched, store, prompts, negative


def data_for(setup, cut=1, clock=2):
    unet, sched, store, *_ = setup
    return PairDataset(store.load(cut), adaptor_loop_indices(sched, STEPS, Clock(clock)))


def test_trajectory_store_layout(setup):
    unet, sched, store, prompts, negative = setup
    assert isinstance(store, TrajectoryStore) and store.meta["num_shards"] == 2 and store.meta["cuts"] == [1, 2]
    traj = store.load(1)
    n = 2 * 6  # unconditional + conditional half of every prompt (CFG as one batch)
    cut = UNetCut(unet, 1)
    assert traj["r_in"].shape == (STEPS, n, cut.r_in_channels, 8, 8)
    assert traj["r_out"].shape == (STEPS, n, cut.r_out_channels, 8, 8)
    assert traj["temb"].shape == (STEPS, cut.temb_channels) and traj["text"].shape == (n, 16)
    assert torch.isfinite(traj["r_in"].float()).all() and torch.isfinite(traj["r_out"].float()).all()
    assert store.load(2)["r_in"].shape[2:] == (UNetCut(unet, 2).r_in_channels, 4, 4)
    with pytest.raises(ValueError, match="not cut=3"):
        store.load(3)
    # the recorded features are what the cut computes at inference for the first step (pure noise)
    g = torch.Generator(device="cpu").manual_seed(0 * 100_003 + 0)
    x = torch.randn((4, 3, 16, 16), generator=g) * sched.init_noise_sigma
    sched.set_timesteps(STEPS)
    t = sched.timesteps[0]
    ctx = torch.cat([negative.expand(4, -1, -1), prompts[:4]])
    with torch.no_grad():
        _, r_in, r_out = cut.full_step(sched.scale_model_input(torch.cat([x, x]), t), t, ctx)
        s = cut.prepare(torch.cat([x, x]), t, ctx)
    assert torch.allclose(traj["r_in"][0, :4].float(), r_in[:4], atol=2e-2, rtol=1e-2)
    assert torch.allclose(traj["r_out"][0, 4:8].float(), r_out[4:8], atol=2e-2, rtol=1e-2)
    # and the adaptor's other inputs: the UNet's time embedding and the pooled prompt, as the hook passes them
    assert torch.allclose(traj["temb"][0].float(), s.emb[0], atol=1e-2, rtol=1e-2)
    assert torch.allclose(traj["text"][:4].float(), s.text[:4], atol=1e-2, rtol=1e-2)


def test_pair_dataset(setup):
    data = data_for(setup)
    assert data.loop_indices.tolist() == [1, 3, 5] and len(data) == 3 * 12
    b = data.batch(torch.tensor([0, 12, 35]), "cpu")
    traj = setup[2].load(1)
    assert torch.equal(b["target"][1], traj["r_out"][3, 0].float())
    assert torch.equal(b["r_out_prev"][1], traj["r_out"][2, 0].float())  # teacher forcing: previous step's r_out
    assert torch.equal(b["r_in"][2], traj["r_in"][5, 11].float())
    with pytest.raises(ValueError, match="outside"):
        PairDataset(traj, [0, 2])
    with pytest.raises(ValueError, match="clock 1"):
        PairDataset(traj, [])


def test_distill_reduces_mse(setup):
    data = data_for(setup)
    torch.manual_seed(0)
    ad = build_adaptor("resnet", UNetCut(setup[0], 1), width=16)
    before = evaluate_mse(ad, data)
    seen = []
    hist = distill(ad, data, DistillConfig(steps=40, batch_size=8, lr=2e-3, log_every=10), on_log=lambda s, l: seen.append(s),
                   progress=False)
    after = evaluate_mse(ad, data)
    assert [h["step"] for h in hist] == [10, 20, 30, 40] == seen
    assert after < 0.9 * before, (before, after)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not ad.training
    with pytest.raises(ValueError, match="no trainable parameters"):
        distill(build_adaptor("identity", UNetCut(setup[0], 1)), data, DistillConfig(steps=1), progress=False)


def test_nan_in_data_raises_and_keeps_the_checkpoint(setup, tmp_path):
    data = data_for(setup)
    ad = build_adaptor("resnet", UNetCut(setup[0], 1), width=16)
    ckpt = tmp_path / "ckpt"
    distill(ad, data, DistillConfig(steps=5, batch_size=4, checkpoint_every=5), checkpoint_dir=ckpt, progress=False)
    saved = (ckpt / "diffusion_pytorch_model.safetensors").read_bytes()
    traj = {k: v.clone() for k, v in setup[2].load(1).items()}
    traj["r_out"][:, :, 0, 0, 0] = float("nan")  # one feature of every sample, at every step
    bad = PairDataset(traj, data.loop_indices.tolist())
    with pytest.raises(FloatingPointError, match="loss is nan at step 5"):
        distill(ad, bad, DistillConfig(steps=20, batch_size=4, checkpoint_every=5), checkpoint_dir=ckpt, progress=False)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 5
    assert (ckpt / "diffusion_pytorch_model.safetensors").read_bytes() == saved


def test_resume_continues_from_the_saved_step(setup, tmp_path):
    data = data_for(setup)
    cut = UNetCut(setup[0], 1)
    cfg = dict(batch_size=4, lr=1e-3, log_every=5, checkpoint_every=10)
    ckpt = tmp_path / "ckpt"

    first = build_adaptor("resnet", cut, width=16)
    hist1 = distill(first, data, DistillConfig(steps=10, **cfg), checkpoint_dir=ckpt, progress=False)
    assert [h["step"] for h in hist1] == [5, 10]
    # a fresh process with steps=N again: loads the checkpoint, trains nothing more
    again = build_adaptor("resnet", cut, width=16)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in again.parameters():
            p.add_(torch.randn_like(p))
    assert distill(again, data, DistillConfig(steps=10, **cfg), checkpoint_dir=ckpt, progress=False) == hist1
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))

    # killed after the checkpoint at 10 (at step 15), then resumed with steps=2N
    def kill(step, loss):
        if step == 15:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        distill(build_adaptor("resnet", cut, width=16), data, DistillConfig(steps=20, **cfg), checkpoint_dir=ckpt,
                on_log=kill, progress=False)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 10
    steps_run = []
    resumed = build_adaptor("resnet", cut, width=16)
    hist2 = distill(resumed, data, DistillConfig(steps=20, **cfg), checkpoint_dir=ckpt,
                    on_log=lambda s, l: steps_run.append(s), progress=False)
    assert steps_run == [15, 20], "resumed at the saved step 10, not at 0 and not at the kill"
    assert hist2[:2] == hist1 and [h["step"] for h in hist2] == [5, 10, 15, 20]
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 20
    assert not any(p.suffix in (".bin", ".pkl") for p in ckpt.iterdir())
    assert not torch.equal(first.up.weight, resumed.up.weight)  # it trained on from there
    # and it trained on exactly as an uninterrupted run: same batches, same weights (CPU), same loss log
    straight = build_adaptor("resnet", cut, width=16)
    torch.manual_seed(0)
    fresh = build_adaptor("resnet", cut, width=16)
    straight.load_state_dict(fresh.state_dict())
    ref = build_adaptor("resnet", cut, width=16)
    ref.load_state_dict(fresh.state_dict())
    hist_ref = distill(ref, data, DistillConfig(steps=20, **{**cfg, "log_every": 3}), progress=False)
    ckpt2 = tmp_path / "ckpt2"
    with pytest.raises(KeyboardInterrupt):
        distill(straight, data, DistillConfig(steps=20, **{**cfg, "log_every": 3}), checkpoint_dir=ckpt2,
                on_log=lambda s, l: (_ for _ in ()).throw(KeyboardInterrupt) if s == 12 else None, progress=False)
    again2 = build_adaptor("resnet", cut, width=16)
    hist_res = distill(again2, data, DistillConfig(steps=20, **{**cfg, "log_every": 3}), checkpoint_dir=ckpt2,
                       progress=False)
    assert hist_res == hist_ref
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), again2.state_dict().values()))



def test_checkpoint_missing_its_weights_starts_over(setup, tmp_path):
    """A copied checkpoint that lost its weights (e.g. a tarball without *.safetensors) warns and restarts."""
    data = data_for(setup)
    cut = UNetCut(setup[0], 1)
    cfg = DistillConfig(steps=10, batch_size=4, log_every=5, checkpoint_every=10)
    ckpt = tmp_path / "ckpt"
    hist = distill(build_adaptor("resnet", cut, width=16), data, cfg, checkpoint_dir=ckpt, progress=False)
    (ckpt / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.warns(UserWarning, match="lacks.*from step 0"):
        again = distill(build_adaptor("resnet", cut, width=16), data, cfg, checkpoint_dir=ckpt, progress=False)
    assert [h["step"] for h in again] == [h["step"] for h in hist] == [5, 10]
    assert (ckpt / "diffusion_pytorch_model.safetensors").is_file()

# ---- the output-space term (DistillConfig.output_weight) ------------------------------------------------
def row_ctx(traj, store, prompts, negative):
    """Each row's text context as the unroll fed it: the negative prompt for the unconditional half."""
    from pipeline.common import row_prompts

    pid = row_prompts(store.meta, traj["r_in"].shape[1])
    return torch.where(traj["cond"].view(-1, 1, 1), prompts[pid], negative[0])


def data_with_inputs(setup, cut=1, clock=2, input_scale=None):
    unet, sched, store, prompts, negative = setup
    traj = store.load(cut, with_latents=True)
    traj["ctx"] = row_ctx(traj, store, prompts, negative)
    return PairDataset(traj, adaptor_loop_indices(sched, STEPS, Clock(clock)), input_scale=input_scale)


@pytest.fixture(scope="module")
def euler_setup(tmp_path_factory):
    """Trajectories of a sampler that scales its input (Euler), prompts exact in fp16 (as an EmbeddingTable's)."""
    root = tmp_path_factory.mktemp("traj_euler")
    unet = build_unet("pixel", seed=21)
    sched = make_sampler("euler")
    g = torch.Generator().manual_seed(1)
    prompts = torch.randn(6, 5, 16, generator=g).half().float()
    negative = torch.randn(1, 5, 16, generator=g).half().float()
    store = unroll_to_store(root, unet, sched, cuts=[1, 2], prompt_embeds=prompts, negative_embeds=negative,
                            steps=STEPS, guidance=2.0, seed=0, shard_size=4, progress=False)
    return unet, sched, store, prompts, negative


def test_load_with_latents(setup):
    unet, sched, store, prompts, negative = setup
    plain, traj = store.load(1), store.load(1, with_latents=True)
    assert set(traj) - set(plain) == {"latents", "cond"} and all(torch.equal(plain[k], traj[k]) for k in plain)
    assert traj["latents"].shape == (STEPS, 12, 3, 16, 16) and traj["cond"].dtype == torch.bool
    assert traj["cond"].tolist() == [False] * 4 + [True] * 4 + [False] * 2 + [True] * 2
    g = torch.Generator(device="cpu").manual_seed(0)  # shard 0's initial noise, as in unroll_batch
    x = torch.randn((4, 3, 16, 16), generator=g) * sched.init_noise_sigma
    assert torch.equal(traj["latents"][0, :4], x.half()) and torch.equal(traj["latents"][:, 4:8], traj["latents"][:, :4])
    assert torch.equal(traj["latents"][:, 10:12], traj["latents"][:, 8:10])
    # the state fed at step i: the teacher there gives the recorded r_in / r_out of every row
    ctx = row_ctx(traj, store, prompts, negative)
    sched.set_timesteps(STEPS)
    with torch.no_grad():
        for i in (0, 3, STEPS - 1):
            _, r_in, r_out = UNetCut(unet, 1).full_step(traj["latents"][i].float(), sched.timesteps[i], ctx)
            assert torch.allclose(traj["r_in"][i].float(), r_in, atol=2e-2, rtol=1e-2)
            assert torch.allclose(traj["r_out"][i].float(), r_out, atol=2e-2, rtol=1e-2)


def test_model_input_scales():
    from clockwork.distill import model_input_scales

    for name in ("dpm++", "ddim", "pndm"):
        assert torch.equal(model_input_scales(make_sampler(name), 6), torch.ones(len(_timesteps(name, 6))))
    for name in ("euler", "heun"):
        s = make_sampler(name)
        s.set_timesteps(6)
        got = model_input_scales(s, 6)
        assert s.step_index is None  # the sampler passed in is not stepped
        sig = s.sigmas[: len(s.timesteps)].double()
        assert got.shape == (len(s.timesteps),) and torch.allclose(got.double(), 1 / (sig ** 2 + 1).sqrt(), rtol=1e-5)
        assert got[0] < 0.2 and got[-1] > got[0]


def _timesteps(name, steps):
    s = make_sampler(name)
    s.set_timesteps(steps)
    return s.timesteps


def test_pair_dataset_returns_what_the_unet_saw(euler_setup):
    """Euler scales x_t before the UNet: `sample` = latents * input_scale is the UNet input of the unroll."""
    from clockwork.distill import model_input_scales

    unet, sched, store, *_ = euler_setup
    data = data_with_inputs(euler_setup, input_scale=model_input_scales(sched, STEPS))
    plain = PairDataset(store.load(1), data.loop_indices.tolist())
    assert data.has_inputs and not plain.has_inputs
    idx = torch.arange(len(data))
    b, b0 = data.batch(idx, "cpu"), plain.batch(idx, "cpu")
    assert set(b) - set(b0) == {"sample", "timestep", "ctx"} and all(torch.equal(b[k], b0[k]) for k in b0)
    with torch.no_grad():
        out, r_in, r_out = UNetCut(unet, 1).full_step(b["sample"], b["timestep"], b["ctx"])
    assert torch.allclose(r_in, b["r_in"], atol=2e-2, rtol=1e-2) and torch.allclose(r_out, b["target"], atol=2e-2, rtol=1e-2)
    unscaled = data_with_inputs(euler_setup).batch(idx, "cpu")  # the raw latents are not what the UNet saw
    with torch.no_grad():
        _, r_in_raw, _ = UNetCut(unet, 1).full_step(unscaled["sample"], b["timestep"], b["ctx"])
    assert not torch.allclose(r_in_raw, b["r_in"], atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("cut", [1, 2])
def test_output_term_is_the_unet_output_mse_of_adaptor_vs_full_step(setup, cut):
    """The loss term = MSE(adaptor_step output, full_step output) at the same inputs, computed independently."""
    from clockwork.distill import output_space_mse

    unet = setup[0]
    view = UNetCut(unet, cut)
    data = data_with_inputs(setup, cut=cut)
    torch.manual_seed(3)
    ad = build_adaptor("resnet", view, width=16)
    b = data.batch(torch.tensor([0, 5, 13, 30, 35]), "cpu")
    pred = ad(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
    term = output_space_mse(view, pred, b)
    with torch.no_grad():
        out_full, r_in, r_out = view.full_step(b["sample"], b["timestep"], b["ctx"])
        out_ad, r_in2, r_hat = view.adaptor_step(ad, b["r_out_prev"], b["sample"], b["timestep"], b["ctx"])
    assert torch.allclose(r_in2, r_in) and torch.allclose(r_hat, pred, atol=1e-5, rtol=1e-4)
    # the stored target is the fp16 r_out of that state, so the reference is the full step up to that rounding
    ref = torch.nn.functional.mse_loss(out_ad, out_full)
    assert term.item() > 0 and torch.allclose(term, ref, rtol=2e-2), (term.item(), ref.item())
    # exact when the target is the full step's own r_out
    exact = output_space_mse(view, pred, {**b, "target": r_out})
    assert torch.allclose(exact, ref, rtol=1e-5, atol=1e-9), (exact.item(), ref.item())
    # gradients reach the adaptor through the teacher's decoder, not the teacher
    unet.requires_grad_(False)
    ad.zero_grad()
    output_space_mse(view, ad(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"]), b).backward()
    assert all(p.grad is not None for p in ad.parameters() if p.requires_grad)
    assert all(p.grad is None for p in unet.parameters())


def _reference_losses(adaptor, data, cfg):
    """The r_out-MSE distillation loop before the output term existed (per-step losses)."""
    params = [p for p in adaptor.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 7919)
    adaptor.train()
    out = []
    for _ in range(cfg.steps):
        b = data.batch(torch.randint(0, len(data), (cfg.batch_size,), generator=gen), "cpu")
        loss = torch.nn.functional.mse_loss(adaptor(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"],
                                                    text=b["text"]).float(), b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        out.append(loss.item())
    return out


def test_output_weight_zero_is_the_plain_r_out_loss(setup):
    cut = UNetCut(setup[0], 1)
    cfg = DistillConfig(steps=8, batch_size=4, lr=1e-3, log_every=1, output_weight=0.0)
    torch.manual_seed(0)
    init = build_adaptor("resnet", cut, width=16).state_dict()
    runs = []
    for data, teacher in ((data_for(setup), None), (data_with_inputs(setup), cut)):  # extras and teacher ignored
        ad = build_adaptor("resnet", cut, width=16)
        ad.load_state_dict(init)
        runs.append((distill(ad, data, cfg, progress=False, teacher=teacher), ad))
    ref = build_adaptor("resnet", cut, width=16)
    ref.load_state_dict(init)
    losses = _reference_losses(ref, data_for(setup), cfg)
    for hist, ad in runs:
        assert hist == [{"step": i + 1, "loss": l} for i, l in enumerate(losses)]
        assert all(torch.equal(a, b) for a, b in zip(ad.state_dict().values(), ref.state_dict().values()))


def test_output_weight_needs_the_teacher_and_its_inputs(setup):
    view = UNetCut(setup[0], 1)
    ad = build_adaptor("resnet", view, width=16)
    cfg = DistillConfig(steps=2, batch_size=4, output_weight=0.5)
    with pytest.raises(ValueError, match="needs teacher=UNetCut"):
        distill(ad, data_with_inputs(setup), cfg, progress=False)
    with pytest.raises(ValueError, match="needs teacher=UNetCut"):
        distill(ad, data_with_inputs(setup), cfg, progress=False, teacher=setup[0])  # the UNet, not a UNetCut
    with pytest.raises(ValueError, match="UNet inputs"):
        distill(ad, data_for(setup), cfg, progress=False, teacher=view)
    with pytest.raises(ValueError, match="does not match these trajectories"):
        distill(ad, data_with_inputs(setup), cfg, progress=False, teacher=UNetCut(setup[0], 2))
    with pytest.raises(ValueError, match=">= 0"):
        distill(ad, data_for(setup), DistillConfig(steps=1, output_weight=-1.0), progress=False)


def test_output_weight_catches_unscaled_inputs(euler_setup):
    """x_t not scaled as the sampler did (Euler): the teacher's r_in differs from the recorded one."""
    from clockwork.distill import model_input_scales

    unet, sched = euler_setup[:2]
    view = UNetCut(unet, 1)
    cfg = DistillConfig(steps=2, batch_size=8, output_weight=1.0)
    with pytest.raises(ValueError, match="input_scale"):
        distill(build_adaptor("resnet", view, width=16), data_with_inputs(euler_setup), cfg, progress=False, teacher=view)
    hist = distill(build_adaptor("resnet", view, width=16), data_with_inputs(euler_setup, input_scale=model_input_scales(
        sched, STEPS)), cfg, progress=False, teacher=view)
    assert [h["step"] for h in hist] == [2]


def test_output_weight_first_loss_and_training(setup):
    """The logged loss is r_out MSE + w * output MSE, each term as computed independently; it trains."""
    unet = setup[0]
    view = UNetCut(unet, 1)
    data = data_with_inputs(setup)
    w = 2.0
    torch.manual_seed(0)
    ad = build_adaptor("resnet", view, width=16)
    init = {k: v.clone() for k, v in ad.state_dict().items()}
    cfg = DistillConfig(steps=40, batch_size=8, lr=2e-3, log_every=1, output_weight=w)
    unet.requires_grad_(True)
    hist = distill(ad, data, cfg, progress=False, teacher=view)
    first = build_adaptor("resnet", view, width=16)
    first.load_state_dict(init)
    first.train()
    b = data.batch(torch.randint(0, len(data), (8,), generator=torch.Generator().manual_seed(0)), "cpu")
    with torch.no_grad():
        pred = first(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
        out_ad = view.adaptor_step(first, b["r_out_prev"], b["sample"], b["timestep"], b["ctx"])[0]
        s = view.prepare(b["sample"], b["timestep"], b["ctx"])  # the teacher's output with the recorded r_out
        skips = view._encode(s)[1]
        out_ref = view._decode(b["target"], skips[: len(skips) - view.shared_skips], s)
    mse = torch.nn.functional.mse_loss(pred, b["target"]).item()
    out = torch.nn.functional.mse_loss(out_ad, out_ref).item()
    h = hist[0]
    assert h["r_out_mse"] == pytest.approx(mse, rel=1e-5) and h["output_mse"] == pytest.approx(out, rel=1e-4)
    assert h["loss"] == pytest.approx(mse + w * out, rel=1e-5)
    late = sum(x["output_mse"] for x in hist[-10:]) / 10
    early = sum(x["output_mse"] for x in hist[:10]) / 10
    assert late < 0.8 * early, (early, late)
    assert not any(p.requires_grad for p in unet.parameters())  # the teacher was frozen


def test_resume_with_output_weight_equals_uninterrupted(setup, tmp_path):
    view = UNetCut(setup[0], 1)
    data = data_with_inputs(setup)
    cfg = DistillConfig(steps=12, batch_size=4, lr=1e-3, log_every=3, checkpoint_every=5, output_weight=0.7)
    torch.manual_seed(0)
    init = build_adaptor("resnet", view, width=16).state_dict()

    def fresh():
        ad = build_adaptor("resnet", view, width=16)
        ad.load_state_dict(init)
        return ad

    ref = fresh()
    hist_ref = distill(ref, data, cfg, progress=False, teacher=view)
    assert all({"r_out_mse", "output_mse"} <= set(h) for h in hist_ref)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):  # killed at step 9: the checkpoint at 5 holds steps 4-5 of the log window
        distill(fresh(), data, cfg, checkpoint_dir=ckpt, progress=False, teacher=view,
                on_log=lambda s, l: (_ for _ in ()).throw(KeyboardInterrupt) if s == 9 else None)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 5
    resumed = build_adaptor("resnet", view, width=16)
    hist = distill(resumed, data, cfg, checkpoint_dir=ckpt, progress=False, teacher=view)
    assert hist == hist_ref
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def test_pipeline_wires_the_output_term(euler_setup):
    """pipeline.common: per-row contexts from an EmbeddingTable, scaled inputs, the teacher passed to distill."""
    from clockwork.embedded.text import EmbeddingTable
    from pipeline import common
    from pipeline.config import Distill

    unet, sched, store, prompts, negative = euler_setup
    names = [f"prompt {i}" for i in range(6)]
    table = EmbeddingTable([""] + names, torch.cat([negative, prompts]).half(), torch.zeros(7, 4).half())
    traj = common.load_trajectories(store.root, 1, with_latents=True)
    assert "latents" not in common.load_trajectories(store.root, 1)
    train, held = common.split_trajectories(traj, 2)
    assert train["latents"].shape[1] == train["cond"].shape[0] == train["r_in"].shape[1] == 8
    assert torch.equal(held["latents"], traj["latents"][:, traj["prompt"] >= 4])
    ctx = common.row_contexts(train, table, names)
    assert torch.equal(ctx.float(), torch.where(train["cond"].view(-1, 1, 1), prompts[train["prompt"]], negative[0]))
    with pytest.raises(ValueError, match="do not match"):
        common.row_contexts(train, table, names[::-1])
    view = UNetCut(unet, 1)
    spec = common.MethodSpec(sampler="euler", steps=STEPS, adaptor="resnet", clock=2, cut=1, width=16)
    data = common.pair_dataset(train, spec, sched, table=table, prompts=names)
    assert data.has_inputs and not common.pair_dataset(train, spec, sched).has_inputs
    b = data.batch(torch.arange(len(data)), "cpu")
    with torch.no_grad():
        _, r_in, _ = view.full_step(b["sample"], b["timestep"], b["ctx"])
    assert torch.allclose(r_in, b["r_in"], atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="with_latents"):
        common.pair_dataset(common.load_trajectories(store.root, 1), spec, sched, table=table, prompts=names)
    # an adaptor without r_out_prev may run at step 0 (a padded step in front): Euler's first state, x_T =
    # sigma_max * noise, overflows the shards' fp16 there, which is refused rather than trained on as inf
    step0 = common.MethodSpec(sampler="euler", steps=STEPS, adaptor="resnet", adaptor_steps=(0, 2, 4), cut=1,
                              width=16, inputs=("r_in", "time"))
    assert not torch.isfinite(train["latents"][0].float()).all()
    with pytest.raises(ValueError, match="not finite"):
        common.pair_dataset(train, step0, sched, table=table, prompts=names)
    cfg = common.distill_config(Distill(steps=3, batch_size=4, log_every=1, output_weight=0.5))
    assert cfg.output_weight == 0.5 and common.distill_config(Distill()).output_weight == 0.0
    spec = common.MethodSpec(sampler="euler", steps=STEPS, adaptor="resnet", clock=2, cut=1, width=16)
    ucfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    with pytest.raises(ValueError, match="needs the teacher"):
        common.distill_adaptor(spec, ucfg, train, sched, cfg, progress=False)
    _, hist = common.distill_adaptor(spec, ucfg, train, sched, cfg, progress=False, teacher_unet=unet, table=table,
                                     prompts=names)
    assert [h["step"] for h in hist] == [1, 2, 3] and all("output_mse" in h for h in hist)


def test_pipeline_pads_the_unet_inputs_for_step_zero(setup):
    """DPM++: the padded step 0 pairs carry x_T, timesteps[0] and the rows' contexts."""
    from clockwork.embedded.text import EmbeddingTable
    from pipeline import common

    unet, sched, store, prompts, negative = setup
    names = [f"prompt {i}" for i in range(6)]
    table = EmbeddingTable([""] + names, torch.cat([negative, prompts]).half(), torch.zeros(7, 4).half())
    traj = common.load_trajectories(store.root, 1, with_latents=True)
    spec = common.MethodSpec(sampler="dpm++", steps=STEPS, adaptor="resnet", adaptor_steps=(0, 2, 4), cut=1, width=16,
                             inputs=("r_in", "time"))
    data = common.pair_dataset(traj, spec, sched, table=table, prompts=names)
    assert data.loop_indices.tolist() == [1, 3, 5] and torch.equal(data.input_scale, torch.ones(STEPS + 1))
    b = data.batch(torch.arange(len(data)), "cpu")
    n = traj["r_in"].shape[1]
    assert torch.equal(b["sample"][:n], traj["latents"][0].float()) and torch.equal(b["r_in"][:n], traj["r_in"][0].float())
    sched.set_timesteps(STEPS)
    assert b["timestep"][:n].eq(float(sched.timesteps[0])).all() and b["timestep"][n].item() == float(sched.timesteps[2])
    with torch.no_grad():
        _, r_in, _ = UNetCut(unet, 1).full_step(b["sample"], b["timestep"], b["ctx"])
    assert torch.allclose(r_in, b["r_in"], atol=2e-2, rtol=1e-2)


def test_output_weight_lowers_the_output_space_error(setup):
    """Same steps, batches and init: w = 10 ends with a lower UNet-output error than w = 0 (about 20% at
    seeds 0-2 and both cuts), at the price of a higher r_out MSE."""
    from clockwork.distill import output_space_mse

    view = UNetCut(setup[0], 1)
    data = data_with_inputs(setup)
    b = data.batch(torch.arange(len(data)), "cpu")
    res = {}
    for w in (0.0, 10.0):
        torch.manual_seed(0)
        ad = build_adaptor("resnet", view, width=16)
        distill(ad, data, DistillConfig(steps=60, batch_size=8, lr=2e-3, log_every=60, output_weight=w), progress=False,
                teacher=view)
        with torch.no_grad():
            pred = ad(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
            res[w] = output_space_mse(view, pred, b).item(), torch.nn.functional.mse_loss(pred, b["target"]).item()
    assert res[10.0][0] < 0.9 * res[0.0][0], res
    assert res[10.0][1] > res[0.0][1], res
