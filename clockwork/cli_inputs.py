"""What the calibration commands (``clockwork sensitivity``, ``clockwork schedule``) run on: the embedded teacher
with MiniLM prompts, or a seeded random-weight UNet of a known config (shapes and FLOPs only), each as
``(unet, scheduler, cond, uncond, unet_kwargs, prompts)`` - the arguments of :func:`clockwork.sensitivity.sensitivity`
and :func:`clockwork.schedule.sample_change_scorer` - and the embedded world's FID as a ``score``. A user with
a real model passes their own UNet, scheduler and text states to those functions instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def embedded_inputs(teacher=None, sampler: str = "dpm++", n: int = 16, seed: int = 0, device="cpu",
                    phrasing: str = "heldout"):
    """(unet, scheduler, cond, uncond, kwargs, prompts): the embedded teacher, its sampler (as ``clockwork generate``
    builds it) and ``n`` prompts over a seeded permutation of the 160 contents (MiniLM states): in the held-out
    evaluation phrasing (template 3), or with ``phrasing="train"`` in the training phrasings (templates 0-2, for a
    calibration that must not see the evaluation prompts)."""
    from clockwork.embedded.data import NUM_CONTENTS, TRAIN_TEMPLATES, content_text
    from clockwork.embedded.teacher import load_teacher, sampling_scheduler
    from clockwork.embedded.text import MiniLMEncoder

    if phrasing not in ("heldout", "train"):
        raise ValueError(f"phrasing must be 'heldout' or 'train', got {phrasing!r}")
    unet = load_teacher(teacher, device=device)
    order = torch.randperm(NUM_CONTENTS, generator=torch.Generator().manual_seed(seed)).tolist()
    template = (lambda i: 3) if phrasing == "heldout" else (lambda i: TRAIN_TEMPLATES[i % len(TRAIN_TEMPLATES)])
    prompts = [content_text(order[i % NUM_CONTENTS], template=template(i)) for i in range(n)]
    enc = MiniLMEncoder()
    return unet, sampling_scheduler(sampler), enc(prompts)[0], enc([""])[0], None, prompts


def config_inputs(name: str = "sd15", sampler: str = "dpm++", n: int = 2, seed: int = 0, sample_size: int | None = None,
                  device="cpu"):
    """(unet, scheduler, cond, uncond, kwargs, None): a seeded random-weight UNet of a known config (sd15 | sd21 |
    sdxl | config.json), SD's noise schedule and random token states - the shapes only, not the model's numbers."""
    from diffusers import UNet2DConditionModel

    from clockwork.flops import named_config
    from clockwork.schedulers import SD_SCHEDULER, make_scheduler

    cfg, seq_len = named_config(name)
    if sample_size:
        cfg["sample_size"] = sample_size
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg).to(device).eval()
    c = unet.config
    dim = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
    g = torch.Generator().manual_seed(seed + 1)
    cond, uncond = torch.randn(n, seq_len, dim, generator=g), torch.randn(1, seq_len, dim, generator=g)
    kwargs = None
    if c.addition_embed_type == "text_time":  # SDXL: pooled text and size/crop ids for the CFG batch of 2n
        px = c.sample_size * 8
        text = torch.randn(2 * n, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim, generator=g)
        ids = torch.tensor([px, px, 0, 0, px, px], dtype=torch.float32).repeat(2 * n, 1)
        kwargs = {"added_cond_kwargs": {"text_embeds": text.to(device), "time_ids": ids.to(device)}}
    return unet, make_scheduler(sampler, SD_SCHEDULER), cond, uncond, kwargs, None


def embedded_fid(cache: str | Path, n_ref: int = 1000, device="cpu") -> Callable[[torch.Tensor], float]:
    """``score`` for the embedded world: FID (TF Inception) of final samples vs ``n_ref`` held-out real images."""
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.metrics import fid_from_features, inception_features, reference_stats

    ref = reference_stats(cache, lambda: CaptionedFashion("heldout", limit=n_ref).images_uint8(), key=f"heldout-{n_ref}",
                          progress=False)

    def score(x: torch.Tensor) -> float:
        imgs = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        return fid_from_features(ref, inception_features(imgs, progress=False, device=device))

    return score
