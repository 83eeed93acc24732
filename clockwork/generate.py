"""``clockwork generate``: the same prompts and seeds sampled with and without Clockwork, side by side."""

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
