"""clockwork.editing (DDIM inversion, Plug-and-Play injection, SDEdit) and clockwork.embedded.edits, on tiny UNets."""

from __future__ import annotations

import pytest
import torch

import clockwork
from clockwork.editing import (PnPSettings, ddim_invert, default_injection_layers, injection_sites, pnp_edit,
                               pnp_generate, sdedit)
from tests.conftest import scheduler_config


@pytest.fixture(scope="module")
def tiny(request):
    from tests.conftest import build_unet

    return build_unet("embedded", seed=0, sample_size=16)


def _inputs(unet, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    cond = torch.randn(n, 5, unet.config.cross_attention_dim, generator=g)
    return x0, cond, torch.zeros(1, 5, unet.config.cross_attention_dim), torch.randn(n, 5, unet.config.cross_attention_dim, generator=g)


def test_inversion_reconstructs_the_source_without_a_prompt_change(tiny) -> None:
    x0, cond, neg, _ = _inputs(tiny)
    cfg = scheduler_config("embedded")
    errs = {}
    for steps in (10, 100):
        inv = ddim_invert(tiny, cfg, x0, cond, steps)
        rec, _ = pnp_generate(tiny, cfg, inv, cond, cond, neg, PnPSettings(steps=steps, guidance=1.0, feature_fraction=0,
                                                                            attn_fraction=0))
        errs[steps] = float((rec - x0).pow(2).mean())
    # DDIM inversion is exact in the limit of small steps: more steps, smaller error, and small against x0's scale
    assert errs[100] < errs[10]
    assert errs[100] < 0.02 * float(x0.pow(2).mean()), errs
    assert set(inv.latents) == set(inv.timesteps) and inv.timesteps == sorted(inv.timesteps, reverse=True)


def test_injection_copies_the_source_features_and_changes_the_edit(tiny) -> None:
    x0, cond, neg, target = _inputs(tiny)
    cfg = scheduler_config("embedded")
    feats, attns = default_injection_layers(tiny)
    assert feats == ("up_blocks.1.resnets.1",) and attns and all(a.startswith("up_blocks.") for a in attns)
    seen = []
    layer = dict(tiny.named_modules())[feats[0]]
    h = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        res = pnp_edit(tiny, cfg, x0, cond, target, neg, PnPSettings(steps=6, guidance=2.0, feature_fraction=1.0,
                                                                      attn_fraction=0.0))
    finally:
        h.remove()
    # generation steps see [source | uncond | target] rows; our hook runs before the injector's, so compare after
    gen = [o for o in seen if o.shape[0] == 3 * len(x0)]
    assert len(gen) == 6
    plain = pnp_edit(tiny, cfg, x0, cond, target, neg, PnPSettings(steps=6, guidance=2.0, feature_fraction=0, attn_fraction=0))
    assert not torch.allclose(res.images, plain.images, atol=1e-4)
    assert res.passes["generation"].rows == [6] * 6  # source rows stay while injecting
    assert plain.passes["generation"].rows == [4] * 6  # no injection: no source rows


def test_injection_and_clock_together(tiny) -> None:
    """Clock 2 in both passes: each pass starts with a full step; injection layers in the low-res part fire on full
    steps only, a layer in the kept high-res part on every step; the source rows leave at a full step."""
    x0, cond, neg, target = _inputs(tiny)
    cfg = scheduler_config("embedded")
    low, high = "up_blocks.1.resnets.1", "up_blocks.3.resnets.0"
    assert injection_sites(tiny, 1, (low, high)) == {low: "full steps only", high: "every step"}
    calls = {low: 0, high: 0}
    mods = dict(tiny.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    try:
        s = PnPSettings(steps=8, guidance=2.0, feature_fraction=3 / 8, attn_fraction=0.25, feature_layers=(low, high))
        res = pnp_edit(tiny, cfg, x0, cond, target, neg, s, clockwork={"adaptor": "identity", "clock": 2})
    finally:
        for h in hs:
            h.remove()
    inv, gen = res.passes["inversion"], res.passes["generation"]
    assert inv.full == [True, False] * 4 and gen.full == [True, False] * 4
    assert calls[high] == 16 and calls[low] == 8  # 8 steps per pass; the low-res layer on the 4 full ones
    # injection ends after step 2 (3/8 of 8): the source rows stay through adaptor step 3, leave at full step 4
    assert gen.rows == [6, 6, 6, 6, 4, 4, 4, 4]
    assert clockwork.get_hook(tiny) is None  # removed after the edit
    flops = gen.flops(10.0, 4.0)
    assert flops == 6 * 10 + 6 * 4 + 6 * 10 + 6 * 4 + 4 * 10 + 4 * 4 + 4 * 10 + 4 * 4


def test_clockwork_edit_differs_from_full_and_sdedit_runs(tiny) -> None:
    x0, cond, neg, target = _inputs(tiny)
    cfg = scheduler_config("embedded")
    s = PnPSettings(steps=6, guidance=2.0)
    full = pnp_edit(tiny, cfg, x0, cond, target, neg, s)
    cw = pnp_edit(tiny, cfg, x0, cond, target, neg, s, clockwork={"adaptor": "identity", "clock": 2})
    assert not torch.allclose(full.images, cw.images)
    sd = sdedit(tiny, cfg, x0, target, neg, steps=10, strength=0.5, guidance=2.0, generator=torch.Generator().manual_seed(0),
                clockwork={"adaptor": "identity", "clock": 2})
    assert len(sd.passes["generation"].full) == 5 and sd.passes["generation"].full[0]


def test_bad_editing_inputs_raise_clearly(tiny) -> None:
    x0, cond, neg, target = _inputs(tiny)
    cfg = scheduler_config("embedded")
    with pytest.raises(ValueError, match="fraction"):
        PnPSettings(feature_fraction=1.5)
    with pytest.raises(ValueError, match="not modules of this UNet"):
        pnp_edit(tiny, cfg, x0, cond, target, neg, PnPSettings(steps=2, feature_layers=("up_blocks.9.resnets.0",)))
    with pytest.raises(ValueError, match="strength"):
        sdedit(tiny, cfg, x0, target, neg, strength=0.0)
    clockwork.enable(tiny, scheduler=None or __import__("diffusers").DDIMScheduler.from_config(cfg))
    try:
        with pytest.raises(ValueError, match="already has Clockwork"):
            pnp_edit(tiny, cfg, x0, cond, target, neg, PnPSettings(steps=2), clockwork={"clock": 2})
    finally:
        clockwork.disable(tiny)
    inv = ddim_invert(tiny, cfg, x0, cond, 4)
    with pytest.raises(ValueError, match="same steps"):
        pnp_generate(tiny, cfg, inv, cond, target, neg, PnPSettings(steps=5))


# ---- the embedded world's edits ---------------------------------------------------------------------------------
def test_edits_and_their_scores_on_exact_renderings() -> None:
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.embedded.edits import (edit_caption, ideal_images, make_edits, measured_colour, measured_size,
                                          score_edits)

    held = CaptionedFashion("heldout", limit=60)
    imgs = held.images_uint8()
    assert (measured_colour(imgs) == held.colour).all()
    assert (measured_size(imgs) == held.size).float().mean() > 0.95
    edits = make_edits(held.captions)
    assert [e.attribute for e in edits[:3]] == ["colour", "size", "item"]
    assert all(e.source != e.target and e.source.template == e.target.template for e in edits)
    ideal = ((ideal_images(held.gray, edits) + 1) * 127.5).round().to(torch.uint8)
    clip = lambda images, prompts: torch.zeros(len(images))  # noqa: E731 - the pixel scores need no scorer
    s = score_edits(ideal, edits, ideal, clip)
    keeps = torch.tensor([e.attribute != "item" for e in edits])
    assert torch.allclose(s["mask_iou"][keeps], torch.ones(int(keeps.sum())))
    assert torch.allclose(s["structure_ssim"][keeps], torch.ones(int(keeps.sum())), atol=1e-4)
    assert s["mask_iou"][~keeps].isnan().all()
    colour = torch.tensor([e.attribute == "colour" for e in edits])
    assert (s["attribute_success"][colour] == 1).all()
    # the unedited source fails every colour edit
    s_src = score_edits(imgs, edits, ideal, clip)
    assert (s_src["attribute_success"][colour] == 0).all()
    with pytest.raises(ValueError, match="unknown attribute 'shape'"):
        edit_caption(held.captions[0], "shape", "round")
    with pytest.raises(ValueError, match="unknown colour 'pink'.*red"):
        edit_caption(held.captions[0], "colour", "pink")
    with pytest.raises(ValueError, match="unknown edit attributes"):
        make_edits(held.captions, ("colour", "texture"))


def test_cli_edit_bad_inputs_end_in_one_clear_error(tmp_path, capsys) -> None:
    from PIL import Image

    from clockwork.cli import main

    assert main(["edit", "--image", str(tmp_path / "missing.png"), "--source", "a", "--target", "b"]) == 2
    assert "no such file" in capsys.readouterr().err
    Image.new("RGB", (64, 48)).save(tmp_path / "big.png")
    assert main(["edit", "--image", str(tmp_path / "big.png"), "--source", "a", "--target", "b"]) == 2
    assert "64x48" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["edit", "--image", str(tmp_path / "bad.png"), "--source", "a", "--target", "b"]) == 2
    assert "not an image" in capsys.readouterr().err
    assert not list(tmp_path.glob("edited*"))


def test_cli_edit_writes_the_edit_and_a_side_by_side(tmp_path) -> None:
    from PIL import Image

    from clockwork.cli import main
    from clockwork.embedded.data import CaptionedFashion

    held = CaptionedFashion("heldout", limit=1)
    Image.fromarray(held.images_uint8()[0].permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    target = held.texts[0].replace(held.captions[0].text.split()[0], "x")  # any prompt: MiniLM encodes free text
    out = tmp_path / "o" / "edited.png"
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--source", held.texts[0], "--target", target,
                 "--clock", "2", "--steps", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (32, 32)
    assert Image.open(out.with_name("edited_side_by_side.png")).size[0] > 3 * 32


def test_edit_image_in_an_sd_pipeline(sd_pipe) -> None:
    from PIL import Image

    from clockwork.editing import edit_image

    size = sd_pipe.unet.config.sample_size * sd_pipe.vae_scale_factor
    img = Image.new("RGB", (size, size), (200, 30, 30))
    out = edit_image(sd_pipe, img, "a red square", "a blue square", PnPSettings(steps=3, guidance=2.0),
                     clockwork={"adaptor": "identity", "clock": 2})
    assert out.size == (size, size)
