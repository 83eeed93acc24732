"""`clockwork generate` and `clockwork edit`: the same inputs with and without Clockwork, side by side."""

from __future__ import annotations

from pathlib import Path

import torch

import clockwork
from clockwork.embedded.pipeline import EmbeddedPipeline
from clockwork.embedded.teacher import load_teacher, sampling_scheduler
from clockwork.embedded.text import MiniLMEncoder
from clockwork.viz import image_grid


@torch.no_grad()
def generate_grid(prompts: list[str], clock: int = 2, cut: int = 1, adaptor: str = "identity", steps: int = 8,
                  guidance: float = 2.0, seed: int = 0, out: str = "clockwork_grid.png", teacher: str | None = None,
                  n_per_prompt: int = 4, sampler: str = "dpm++") -> Path:
    """Write a PNG: one row per (prompt, mode); ``n_per_prompt`` seeds per row, identical across modes."""
    if not prompts:
        raise ValueError("give at least one --prompt")
    unet = load_teacher(teacher)
    pipe = EmbeddedPipeline(unet, sampling_scheduler(sampler))
    encoder = MiniLMEncoder()
    states, _ = encoder(list(prompts))
    neg, _ = encoder([""])
    ctx = states.repeat_interleave(n_per_prompt, dim=0)
    rows, titles, caps = [], [], []
    for label, enabled in (("baseline", False), (f"clockwork (clock {clock}, {Path(str(adaptor)).name})", True)):
        if enabled:
            clockwork.enable(pipe, adaptor=adaptor, clock=clock, cut=cut)
        gen = torch.Generator().manual_seed(seed)
        imgs = pipe(ctx, neg, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="uint8")
        clockwork.disable(pipe)
        for p_i, prompt in enumerate(prompts):
            rows.append(imgs[p_i * n_per_prompt:(p_i + 1) * n_per_prompt])
            titles.append(label)
            caps += [prompt] * n_per_prompt
    grid = image_grid(torch.cat(rows), caps, ncols=n_per_prompt, scale=3, row_titles=titles)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    return out_path


@torch.no_grad()
def edit_file(image: str, source: str, target: str, clock: int = 2, cut: int = 1, adaptor: str = "identity",
              steps: int = 16, guidance: float = 2.0, out: str = "edited.png", teacher: str | None = None,
              resize: bool = False, feature_fraction: float | None = None, attn_fraction: float | None = None) -> tuple[Path, Path]:
    """``clockwork edit``: Plug-and-Play edit of one image with the embedded teacher (or ``teacher``), full UNet and
    Clockwork. Writes the Clockwork edit to ``out`` and ``<out>_side_by_side.png`` (source | full UNet | Clockwork)."""
    import numpy as np
    from PIL import Image

    from clockwork.editing import PnPSettings, pnp_edit

    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"--image {image}: no such file")
    try:
        img = Image.open(path).convert("RGB")
    except Exception as e:  # noqa: BLE001 - any unreadable file is this argument's problem
        raise ValueError(f"--image {image}: not an image PIL can read ({type(e).__name__})") from None
    unet = load_teacher(teacher)
    size = int(unet.config.sample_size)
    if img.size != (size, size):
        if not resize:
            raise ValueError(f"--image {image} is {img.size[0]}x{img.size[1]}; the teacher works on {size}x{size} "
                             "images (pass --resize to scale it)")
        img = img.resize((size, size), Image.BICUBIC)
    if not source.strip() or not target.strip():
        raise ValueError("--source and --target must be non-empty prompts")
    x0 = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    encoder = MiniLMEncoder()
    states, _ = encoder([source, target, ""])
    # defaults: for the embedded teacher the validated ones (reports/edit/validation.json: PnP's feature injection
    # freezes its layout), else PnP's published 0.8 / 0.5
    defaults = PnPSettings(feature_fraction=0.0) if teacher is None else PnPSettings()
    settings = PnPSettings(steps=steps, guidance=guidance,
                           feature_fraction=defaults.feature_fraction if feature_fraction is None else feature_fraction,
                           attn_fraction=defaults.attn_fraction if attn_fraction is None else attn_fraction)
    scheduler_config = sampling_scheduler("ddim").config
    results = []
    for cw in (None, {"adaptor": adaptor, "clock": clock, "cut": cut}):
        res = pnp_edit(unet, scheduler_config, x0, states[:1], states[1:2], states[2:], settings, clockwork=cw)
        results.append(((res.images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(results[1][0].permute(1, 2, 0).numpy()).save(out_path)
    src = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    side = image_grid(torch.cat([src, *results]), [f"source: {source}", f"full UNet: {target}",
                                                  f"clockwork (clock {clock}): {target}"], ncols=3, scale=6)
    side_path = out_path.with_name(out_path.stem + "_side_by_side.png")
    side.save(side_path)
    return out_path, side_path
