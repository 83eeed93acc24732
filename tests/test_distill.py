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
