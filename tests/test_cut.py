"""UNetCut against diffusers' own UNet2DConditionModel.forward, on tiny SD1.x / SD2.x / SDXL / embedded UNets."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIGS, build_unet, unet_inputs

from clockwork import IdentityAdaptor, build_adaptor, valid_cuts
from clockwork.cut import UNetCut
from clockwork.flops import SD15, SD21, SDXL, meta_unet

CONFIG_CUTS = [(name, cut) for name in ("sd15", "sd21", "sdxl", "embedded")
               for cut in range(1, len(TINY_CONFIGS[name]["down_block_types"]))]


@pytest.fixture(scope="module")
def unets():
    return {name: build_unet(name, seed=i) for i, name in enumerate(("sd15", "sd21", "sdxl", "embedded"))}


def _capture(unet, cut: UNetCut):
    """Forward hooks that record r_in (output of down_blocks[c-1]) and r_out (input of the boundary upsampler)."""
    got = {}
    hs = [unet.down_blocks[cut.cut - 1].register_forward_hook(lambda m, a, o: got.__setitem__("r_in", o[0])),
          unet.up_blocks[cut.boundary_up].upsamplers[0].register_forward_pre_hook(
              lambda m, a: got.__setitem__("r_out", a[0]))]
    return got, hs


@pytest.mark.parametrize("name,c", CONFIG_CUTS)
def test_full_step_is_bitwise_unet_forward(unets, name, c):
    unet = unets[name]
    sample, t, ehs, kw = unet_inputs(unet)
    cut = UNetCut(unet, c)
    with torch.no_grad():
        got, hs = _capture(unet, cut)
        ref = unet(sample, t, ehs, **kw).sample
        for h in hs:
            h.remove()
        out, r_in, r_out = cut.full_step(sample, t, ehs, **kw)
    assert torch.equal(out, ref)
    assert torch.equal(r_in, got["r_in"]) and torch.equal(r_out, got["r_out"])
    # r_in / r_out: the channels of the cut level, at the resolution after c downsamplers
    boc = unet.config.block_out_channels
    h = sample.shape[-1] // cut.r_in_scale()
    assert r_in.shape == (2, boc[c - 1], h, h) and cut.r_in_channels == boc[c - 1]
    assert r_out.shape == (2, list(reversed(boc))[cut.boundary_up], h, h) and cut.r_out_channels == r_out.shape[1]


@pytest.mark.parametrize("name,c", CONFIG_CUTS)
def test_identity_adaptor_step_on_own_r_out_reproduces_full_step(unets, name, c):
    """Feeding the adaptor step the r_out of the same input must give the full output bitwise:
    this checks the skip bookkeeping, the boundary upsampler and upsample_size of the decoder."""
    unet = unets[name]
    sample, t, ehs, kw = unet_inputs(unet, seed=3)
    cut = UNetCut(unet, c)
    with torch.no_grad():
        full, r_in, r_out = cut.full_step(sample, t, ehs, **kw)
        out, r_in2, r_hat = cut.adaptor_step(IdentityAdaptor(), r_out, sample, t, ehs, **kw)
        _, _, r_up = cut.full_step(sample, t, ehs, upsampled=True, **kw)
        out_up, _, _ = cut.adaptor_step(IdentityAdaptor(), r_up, sample, t, ehs, upsampled=True, **kw)
        other = torch.randn_like(r_out)
        out_other, _, _ = cut.adaptor_step(IdentityAdaptor(), other, sample, t, ehs, **kw)
    assert torch.equal(out, full) and torch.equal(out_up, full)
    assert torch.equal(r_in2, r_in) and r_hat is r_out
    assert r_up.shape[-1] == 2 * r_out.shape[-1]
    assert not torch.allclose(out_other, full, atol=1e-3), "the low-res output must matter (test would be vacuous)"


@pytest.mark.parametrize("size", [20, (18, 22), 12])
def test_odd_sizes_forward_upsample_size(size):
    """20x20 with 3 downsamplers: 20 -> 10 -> 5 -> 3, so the upsamplers need upsample_size (as diffusers)."""
    unet = build_unet("sd15", seed=5)
    sample, t, ehs, kw = unet_inputs(unet, size=size)
    with torch.no_grad():
        ref = unet(sample, t, ehs).sample
        for c in valid_cuts(unet):
            cut = UNetCut(unet, c)
            out, r_in, r_out = cut.full_step(sample, t, ehs)
            assert torch.equal(out, ref), f"cut {c}"
            assert out.shape == sample.shape
            a_out, _, _ = cut.adaptor_step(IdentityAdaptor(), r_out, sample, t, ehs)
            assert torch.equal(a_out, ref), f"cut {c}"
            for kind in ("resnet", "unet-light"):
                ad = build_adaptor(kind, cut, width=16)
                a_out, _, r_hat = cut.adaptor_step(ad, r_out, sample, t, ehs)
                assert a_out.shape == sample.shape and r_hat.shape == r_out.shape


def test_controlnet_residuals_match_diffusers(unets):
    unet = unets["sd15"]
    sample, t, ehs, _ = unet_inputs(unet, seed=7)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, skips = unet.down_blocks[0](unet.conv_in(sample), unet.time_embedding(unet.get_time_embed(sample, t)))
        # one residual per skip connection (conv_in + every down block output), as a ControlNet returns
        cut = UNetCut(unet, 1)
        shapes = []
        h = unet.conv_in(sample)
        shapes.append(h.shape)
        s = cut.prepare(sample, t, ehs)
        for i in range(cut.n):
            h, res = cut._down(i, h, s)
            shapes += [r.shape for r in res]
        down = tuple(torch.randn(sh, generator=g) * 0.5 for sh in shapes)
        mid = torch.randn(h.shape, generator=g) * 0.5
        ref = unet(sample, t, ehs, down_block_additional_residuals=list(down), mid_block_additional_residual=mid).sample
        plain = unet(sample, t, ehs).sample
        for c in valid_cuts(unet):
            cut = UNetCut(unet, c)
            out, _, r_out = cut.full_step(sample, t, ehs, down_block_additional_residuals=down,
                                          mid_block_additional_residual=mid)
            assert torch.equal(out, ref), f"cut {c}"
            # the adaptor step applies the residuals of the kept skips: with the residual-aware r_out it is exact
            a_out, _, _ = cut.adaptor_step(IdentityAdaptor(), r_out, sample, t, ehs, down_block_additional_residuals=down,
                                           mid_block_additional_residual=mid)
            assert torch.equal(a_out, ref), f"cut {c}"
        assert not torch.allclose(ref, plain, atol=1e-4)
        # diffusers ignores a mid residual given alone; so must the cut
        only_mid = unet(sample, t, ehs, mid_block_additional_residual=mid).sample
        assert torch.equal(UNetCut(unet, 1).full_step(sample, t, ehs, mid_block_additional_residual=mid)[0], only_mid)
    # down residuals alone are diffusers' deprecated T2I-Adapter form: refused, not silently misapplied
    with pytest.raises(ValueError, match="T2I-Adapter"):
        UNetCut(unet, 1).full_step(sample, t, ehs, down_block_additional_residuals=down)


def test_conditioning_variants_match_diffusers():
    """center_input_sample, timestep_cond (LCM-style), encoder_attention_mask, class embeddings."""
    unet = build_unet("sd15", seed=2, center_input_sample=True, time_cond_proj_dim=8, num_class_embeds=3)
    sample, t, ehs, _ = unet_inputs(unet, seed=4)
    kw = dict(timestep_cond=torch.randn(2, 8), class_labels=torch.tensor([0, 2]),
              encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    with torch.no_grad():
        ref = unet(sample, t, ehs, **kw).sample
        for c in valid_cuts(unet):
            cut = UNetCut(unet, c)
            out, _, r_out = cut.full_step(sample, t, ehs, **kw)
            assert torch.equal(out, ref), f"cut {c}"
            assert torch.equal(cut.adaptor_step(IdentityAdaptor(), r_out, sample, t, ehs, **kw)[0], ref)


def test_freeu_matches_diffusers():
    unet = build_unet("sd15", seed=6)
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    sample, t, ehs, _ = unet_inputs(unet, seed=8)
    with torch.no_grad():
        ref = unet(sample, t, ehs).sample
        for c in valid_cuts(unet):
            out, _, r_out = UNetCut(unet, c).full_step(sample, t, ehs)
            assert torch.equal(out, ref), f"cut {c}"


def test_replaced_modules_never_run_on_adaptor_steps(unets):
    unet = unets["sd15"]
    sample, t, ehs, _ = unet_inputs(unet)
    for c in valid_cuts(unet):
        cut = UNetCut(unet, c)
        replaced = cut.replaced_modules()
        ids = {id(m) for m in replaced}
        kept = [m for m in [unet.conv_in, unet.conv_out, *unet.down_blocks, *unet.up_blocks] if id(m) not in ids]
        calls = {id(m): 0 for m in replaced + kept}
        hs = [m.register_forward_hook(lambda mod, a, o: calls.__setitem__(id(mod), calls[id(mod)] + 1))
              for m in replaced + kept]
        try:
            with torch.no_grad():
                _, _, r_out = cut.full_step(sample, t, ehs)
                assert all(calls[id(m)] == 1 for m in replaced), "every replaced module runs on a full step"
                for k in calls:
                    calls[k] = 0
                cut.adaptor_step(build_adaptor("resnet", cut, width=16), r_out, sample, t, ehs)
        finally:
            for h in hs:
                h.remove()
        assert all(calls[id(m)] == 0 for m in replaced), f"cut {c}: a replaced module ran on an adaptor step"
        # the always-run part did run (the boundary up block only partly: its upsampler, not its resnets)
        assert calls[id(unet.conv_in)] == 1 and calls[id(unet.conv_out)] == 1
        assert all(calls[id(unet.down_blocks[i])] == 1 for i in range(c))
        assert all(calls[id(unet.down_blocks[i])] == 0 for i in range(c, cut.n))
        assert all(calls[id(unet.up_blocks[i])] == 1 for i in cut.kept_up)
        # the replaced part is most of the low-res UNet: every down block from the cut on, the mid block
        assert all(unet.down_blocks[i] in replaced for i in range(c, cut.n)) and unet.mid_block in replaced
        assert unet.up_blocks[cut.boundary_up].upsamplers[0] not in replaced


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_replaced_modules_are_exactly_what_an_adaptor_step_skips(unets, name):
    """Every leaf module that does not run on an adaptor step lies inside replaced_modules(), and none inside runs."""
    unet = unets[name]
    sample, t, ehs, kw = unet_inputs(unet)
    leaves = {n: m for n, m in unet.named_modules() if not list(m.children())}
    ran = set()
    hs = [m.register_forward_hook(lambda mod, a, o, n=n: ran.add(n)) for n, m in leaves.items()]
    try:
        for c in valid_cuts(unet):
            cut = UNetCut(unet, c)
            with torch.no_grad():
                _, _, r_out = cut.full_step(sample, t, ehs, **kw)
                ran.clear()
                cut.adaptor_step(IdentityAdaptor(), r_out, sample, t, ehs, **kw)
            inside = {n for r in cut.replaced_modules() for n, m in leaves.items()
                      if any(m is x for x in r.modules())}
            used = {n for n, m in leaves.items() if not isinstance(m, torch.nn.Dropout)}
            assert (used - ran) - inside == set(), f"cut {c}: skipped but not listed as replaced"
            assert ran & inside == set(), f"cut {c}: listed as replaced but ran"
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "embedded"])
def test_bad_cut_names_the_valid_cuts(unets, name):
    unet = unets[name]
    n = len(unet.down_blocks)
    allowed = list(range(1, n))
    assert valid_cuts(unet) == allowed
    for bad in (0, n, n + 3, -1, "1", 1.0):
        with pytest.raises(ValueError, match=r"valid cuts: \[1, 2") as e:
            UNetCut(unet, bad)
        assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        UNetCut(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("cfg,name", [(SD15, "sd15"), (SD21, "sd21"), (SDXL, "sdxl")])
def test_real_configs_adaptor_step_shapes_on_meta(cfg, name):
    """The real SD 1.5 / 2.1 / SDXL UNets on the meta device (no weights): shapes along the cut."""
    unet = meta_unet(cfg)
    c = unet.config
    s = c.sample_size
    sample = torch.zeros(2, c.in_channels, s, s, device="meta")
    ehs = torch.zeros(2, 77, c.cross_attention_dim, device="meta")
    kw = {}
    if name == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(2, 1280, device="meta"),
                                   "time_ids": torch.zeros(2, 6, device="meta")}
    t = torch.tensor(999, device="meta")
    boc = list(c.block_out_channels)
    for cut_i in valid_cuts(unet):
        cut = UNetCut(unet, cut_i)
        with torch.no_grad():
            out, r_in, r_out = cut.full_step(sample, t, ehs, **kw)
            assert out.shape == sample.shape
            res = s // 2 ** cut_i
            assert r_in.shape == (2, boc[cut_i - 1], res, res)
            assert r_out.shape == (2, boc[::-1][cut.boundary_up], res, res)
            for kind in ("identity", "resnet", "unet-light") if cut_i == 1 else ("identity",):
                with torch.device("meta"):
                    ad = build_adaptor(kind, cut, **({} if kind == "identity" else {"width": 64}))
                a_out, _, r_hat = cut.adaptor_step(ad, r_out, sample, t, ehs, **kw)
                assert a_out.shape == sample.shape and a_out.device.type == "meta"
                assert r_hat.shape == r_out.shape
    if name == "sd15":  # the paper's cut 1 for SD 1.5: r_in 320x32x32, r_out 640x32x32
        cut = UNetCut(unet, 1)
        assert (cut.r_in_channels, cut.r_out_channels) == (320, 640)
        assert cut.signature() == {"cut": 1, "r_in_channels": 320, "r_out_channels": 640, "temb_channels": 1280,
                                   "text_channels": 768}
    if name == "sdxl":
        assert UNetCut(unet, 1).text_channels == 1280  # the pooled text embedding, not the 2048-d tokens


def test_cut_holds_no_state_and_does_not_modify_unet(unets):
    unet = unets["sd21"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sample, t, ehs, _ = unet_inputs(unet)
    cut = UNetCut(unet, 2)
    with torch.no_grad():
        a = cut.full_step(sample, t, ehs)[0]
        b = cut.full_step(sample, t, ehs)[0]
    assert torch.equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert not list(cut.__dict__.get("_parameters", {}))
