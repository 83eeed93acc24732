"""Online distillation on tiny UNets: the pairs equal the stored path's, the buffer refreshes its oldest prompts,
a killed run resumes bitwise, SDXL's per-row embedding works, bad settings fail before any teacher pass."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import SDXL_TEXT_DIM, build_unet, make_sampler

from clockwork import Clock, build_adaptor
from clockwork.clock import adaptor_loop_indices
from clockwork.cut import UNetCut
from clockwork.distill import DistillConfig
from clockwork.online import (OnlineConfig, OnlineUnroller, PairBuffer, TensorPrompts, distill_online, fill_buffer,
                              stream_prompts)
from clockwork.trajectories import unroll_batch, unroll_to_store

STEPS = 6


def sampler(name="dpm++"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_sampler(name, "sd")


@pytest.fixture(scope="module")
def sd():
    g = torch.Generator().manual_seed(0)
    return build_unet("sd15", seed=3), torch.randn(7, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)


def unroller(sd, loops=None, name="dpm++", **online):
    unet, prompts, negative = sd
    sched = sampler(name)
    loops = adaptor_loop_indices(sched, STEPS, Clock(2)) if loops is None else loops
    cfg = OnlineConfig(**{"buffer_prompts": 4, "unroll_batch": 2, "refresh_every": 3, "seed": 3, **online})
    return OnlineUnroller(unet, sched, TensorPrompts(prompts), negative, cut=1, loop_indices=loops, steps=STEPS,
                          guidance=2.0, online=cfg)


@pytest.mark.parametrize("name,clock,uses_prev", [("dpm++", Clock(2), True), ("heun", Clock(2), True),
                                                   ("dpm++", Clock(adaptor_steps=[0, 2, 5]), False)])
def test_online_pairs_equal_the_stored_ones(sd, tmp_path, name, clock, uses_prev):
    """Same prompts, seeds and steps: online pairs (cast to the store's fp16) == pair_dataset(load_trajectories(...))."""
    from pipeline.common import MethodSpec, load_trajectories
    from pipeline.common.training import pair_dataset

    unet, prompts, negative = sd
    inputs = ("r_in", "r_out_prev", "time", "text") if uses_prev else ("r_in", "time", "text")
    spec = MethodSpec(sampler=name, steps=STEPS, adaptor="resnet", cut=1, inputs=inputs,
                      clock=clock.period or 1, adaptor_steps=None if clock.period else tuple(sorted(clock.adaptor_steps)))
    loops = adaptor_loop_indices(sampler(name), STEPS, clock, uses_prev)
    un = unroller(sd, loops, name)
    buf = un.new_buffer()
    fill_buffer(un, buf, 2)
    order = stream_prompts(7, 3, 0, 4)
    assert order == un.prompts(0) + un.prompts(1) and order != [0, 1, 2, 3]
    # the store of the streamed prompts, one shard per refresh: shard k's seed is refresh k's
    unroll_to_store(tmp_path, unet, sampler(name), [1], prompts[order], negative, STEPS, 2.0, seed=3, shard_size=2,
                    progress=False)
    stored = pair_dataset(load_trajectories(tmp_path, 1), spec, sampler(name))
    assert len(stored) == len(buf) == 4 * len(loops) * 2
    idx = torch.arange(len(buf))
    h, a, p = idx % 2, (idx // 2) % len(loops), idx // (2 * len(loops))
    k, j = p // 2, p % 2
    ref = stored.batch(a * stored.per_step + k * 4 + h * 2 + j, "cpu")  # a shard's rows: 2 negative, then 2 prompts
    got = buf.batch(idx, "cpu", torch.float16)
    for key in ("r_in", "r_out_prev", "temb", "text", "target"):
        assert torch.equal(got[key].float(), ref[key]), key
    if not uses_prev:
        assert loops[0] == 0 and got["r_out_prev"][a == 0].abs().max() == 0  # as the stored path pads step 0
    assert got["r_out_prev"][a > 0].abs().max() > 0
    # and a different seed gives different pairs (the comparison can fail)
    other = unroller(sd, loops, name, seed=4)
    assert not torch.equal(other.unroll(0)["r_in"], un.unroll(0)["r_in"])


def test_refresh_replaces_the_oldest_prompts(sd):
    un = unroller(sd, buffer_prompts=5)
    buf = un.new_buffer()
    assert isinstance(buf, PairBuffer)
    assert buf.buffer_bytes() == 5 * 3 * 2 * (2 * 16 * 8 * 8 + 16 * 8 * 8 + 64) * 4 + 5 * 2 * 16 * 4
    fill_buffer(un, buf, un.online.refreshes_to_fill())  # 3 refreshes for 5 slots: the third wraps to slot 0
    assert buf.refresh.tolist() == [2, 0, 1, 1, 2] and buf.filled == 5 and len(buf) == 5 * 3 * 2
    before = {k: getattr(buf, k).clone() for k in ("r_in", "target", "r_out_prev", "temb", "text")}
    rec = un.unroll(3)
    buf.write(rec, 3)
    assert buf.refresh.tolist() == [2, 3, 3, 1, 2]  # slots 1 (refresh 0) and 2 (refresh 1's older prompt) replaced
    assert buf.prompt[[1, 2]].tolist() == stream_prompts(7, 3, 6, 2) == un.prompts(3)
    fresh = PairBuffer(5, 3, un.record_shapes(), "cpu", torch.float32)
    fresh.write(rec, 3)
    for k, old in before.items():
        new = getattr(buf, k)
        assert torch.equal(new[[0, 3, 4]], old[[0, 3, 4]]), k
        assert torch.equal(new[[1, 2]], getattr(fresh, k)[[1, 2]]), k
        if k != "temb":  # SD 1.x's temb depends on the timestep alone: the same for every prompt
            assert not torch.equal(new[[1, 2]], old[[1, 2]]), k
    # a resumed run rebuilds this buffer from the refreshes still in it (1..3), bitwise
    again = un.new_buffer()
    fill_buffer(un, again, 4)
    assert again.refresh.tolist() == buf.refresh.tolist()
    assert all(torch.equal(getattr(again, k), getattr(buf, k)) for k in before)
    # the stream: every epoch is a permutation of the prompts, different per epoch
    e0, e1 = stream_prompts(7, 3, 0, 7), stream_prompts(7, 3, 7, 7)
    assert sorted(e0) == sorted(e1) == list(range(7)) and e0 != e1


def test_kill_and_resume_give_the_same_weights(sd, tmp_path, monkeypatch):
    unet, prompts, negative = sd
    sched = sampler()
    loops = adaptor_loop_indices(sched, STEPS, Clock(2))
    online = OnlineConfig(buffer_prompts=4, unroll_batch=2, refresh_every=3, seed=1)
    cut = UNetCut(unet, 1)
    torch.manual_seed(0)
    init = build_adaptor("resnet", cut, width=8).state_dict()
    unrolled = []
    real = OnlineUnroller.unroll
    monkeypatch.setattr(OnlineUnroller, "unroll", lambda self, k: unrolled.append(k) or real(self, k))

    def run(steps, ckpt=None, on_log=None):
        ad = build_adaptor("resnet", cut, width=8)
        ad.load_state_dict(init)
        cfg = DistillConfig(steps=steps, batch_size=4, lr=1e-3, log_every=4, checkpoint_every=4)
        hist = distill_online(ad, unet, sched, TensorPrompts(prompts), negative, cut=1, loop_indices=loops, steps=STEPS,
                              guidance=2.0, cfg=cfg, online=online, checkpoint_dir=ckpt, on_log=on_log, progress=False)
        return ad, hist

    straight, hist = run(12)
    assert unrolled == [0, 1, 2, 3, 4]  # fill (2), then one every 3 steps: before steps 4, 7, 10
    assert [h["step"] for h in hist] == [4, 8, 12]
    assert not torch.equal(straight.state_dict()["up.weight"], init["up.weight"])

    def kill(step, loss):
        if step == 8:
            raise KeyboardInterrupt
    unrolled.clear()
    with pytest.raises(KeyboardInterrupt):
        run(12, tmp_path / "a", kill)
    state = json.loads((tmp_path / "a" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["online"]["refreshes"] == 3
    unrolled.clear()
    resumed, hist2 = run(12, tmp_path / "a")
    assert unrolled == [1, 2, 3, 4]  # only the refreshes in the buffer at step 4, then the run's own
    assert hist2 == hist
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    # a run to 5 steps, then a new call to 12 on its checkpoint
    run(5, tmp_path / "b")
    cont, _ = run(12, tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), cont.state_dict().values()))
    # resuming with other online settings would not continue that run
    online = OnlineConfig(buffer_prompts=4, unroll_batch=2, refresh_every=2, seed=1)
    with pytest.raises(ValueError, match="refresh_every=3"):
        run(12, tmp_path / "b")


def test_sdxl_per_row_embedding(tmp_path):
    """SDXL-tiny: added conditioning per prompt, temb per row; the pairs equal unroll_batch's; training runs."""
    unet = build_unet("sdxl", seed=5)
    g = torch.Generator().manual_seed(1)
    n = 4
    added = {"text_embeds": torch.randn(n, SDXL_TEXT_DIM, generator=g), "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * n)}
    neg = (torch.randn(1, 5, 16, generator=g), {"text_embeds": torch.zeros(1, SDXL_TEXT_DIM), "time_ids": added["time_ids"][:1]})
    source = TensorPrompts(torch.randn(n, 5, 16, generator=g), added)
    sched = sampler()
    loops = adaptor_loop_indices(sched, 4, Clock(2))
    online = OnlineConfig(buffer_prompts=2, unroll_batch=2, refresh_every=2, seed=0)
    un = OnlineUnroller(unet, sched, source, neg, cut=1, loop_indices=loops, steps=4, guidance=5.0, online=online)
    rec = un.unroll(0)
    assert rec["temb"].shape == (2, 4, UNetCut(unet, 1).temb_channels)
    assert not torch.equal(rec["temb"][0, 0], rec["temb"][0, 2])  # negative vs prompt row: added cond differs
    emb, add = source.embed(un.prompts(0))
    ref = unroll_batch(unet, sampler(), [1], emb, neg[0], 4, 5.0, torch.Generator().manual_seed(0), add, neg[1])
    assert torch.equal(rec["r_in"].half(), ref["r_in.c1"][loops]) and torch.equal(rec["target"].half(), ref["r_out.c1"][loops])
    assert torch.equal(rec["temb"].half(), ref["temb"][loops]) and torch.equal(rec["text"].half(), ref["text"])
    ad = build_adaptor("resnet", UNetCut(unet, 1), width=8)
    hist = distill_online(ad, unet, sched, source, neg, cut=1, loop_indices=loops, steps=4, guidance=5.0,
                          cfg=DistillConfig(steps=4, batch_size=4, log_every=2), online=online, progress=False)
    assert [h["step"] for h in hist] == [2, 4] and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)


def test_bad_settings_raise_before_any_work(sd, monkeypatch):
    unet, prompts, negative = sd
    sched = sampler()
    loops = adaptor_loop_indices(sched, STEPS, Clock(2))
    monkeypatch.setattr(OnlineUnroller, "unroll", lambda self, k: pytest.fail("a teacher pass ran before the check"))
    ad = build_adaptor("resnet", UNetCut(unet, 1), width=8)

    def call(online=None, **kw):
        args = dict(cut=1, loop_indices=loops, steps=STEPS, guidance=2.0, cfg=DistillConfig(steps=2),
                    online=online or OnlineConfig(buffer_prompts=4, unroll_batch=2), progress=False)
        return distill_online(ad, unet, sched, TensorPrompts(prompts), negative, **{**args, **kw})

    for online, key in [(OnlineConfig(buffer_prompts=0), "buffer_prompts"), (OnlineConfig(unroll_batch=-1), "unroll_batch"),
                        (OnlineConfig(refresh_every=1.5), "refresh_every"), (OnlineConfig(seed=-1), "seed"),
                        (OnlineConfig(buffer_prompts=2, unroll_batch=4), "buffer_prompts"),
                        (OnlineConfig(buffer_prompts=8, unroll_batch=2), "buffer_prompts.*larger than the prompt source")]:
        with pytest.raises(ValueError, match=key):
            call(online)
    with pytest.raises(ValueError, match="cut=4"):
        call(cut=4)
    with pytest.raises(ValueError, match="clock"):
        call(loop_indices=adaptor_loop_indices(sched, STEPS, Clock(1)))
    with pytest.raises(ValueError, match="loop_indices"):
        call(loop_indices=[1, STEPS])
    with pytest.raises(ValueError, match="output_weight"):
        call(cfg=DistillConfig(steps=2, output_weight=1.0))
    with pytest.raises(ValueError, match="device=meta"):
        call(device="meta")
    with pytest.raises(ValueError, match="negative"):
        distill_online(ad, unet, sched, TensorPrompts(prompts), negative[0], cut=1, loop_indices=loops, steps=STEPS,
                       guidance=2.0, cfg=DistillConfig(steps=2), online=OnlineConfig(buffer_prompts=4, unroll_batch=2))
