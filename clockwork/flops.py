"""FLOPs accounting from a UNet config alone, on the meta device (no weights, no memory).

Counts with ``torch.utils.flop_counter.FlopCounterMode`` while the math attention processor
(``AttnProcessor``) is set, so attention score matmuls are counted (SDPA kernels are not seen by the
counter on every backend). 1 multiply-add = 2 FLOPs. The paper's profiler skips attention matmuls,
so its numbers are lower (SD 1.5: 677.8 vs ~803 GFLOPs per batch-1 step).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

from clockwork.adaptors import build_adaptor
from clockwork.clock import Clock
from clockwork.cut import UNetCut

SD15 = dict(sample_size=64, cross_attention_dim=768)
SD21 = dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
SDXL = dict(
    sample_size=128, block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


def named_config(name_or_path: str) -> tuple[dict, int]:
    """(UNet config, text sequence length) for 'sd15' | 'sd21' | 'sdxl' | 'embedded' | a config.json path."""
    if name_or_path == "sd15":
        return dict(SD15), 77
    if name_or_path == "sd21":
        return dict(SD21), 77
    if name_or_path == "sdxl":
        return dict(SDXL), 77
    if name_or_path == "embedded":
        from clockwork.embedded.teacher import TEACHER_CONFIG
        from clockwork.embedded.text import MAX_TOKENS

        return dict(TEACHER_CONFIG), MAX_TOKENS
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unet config {name_or_path!r}: not one of sd15, sd21, sdxl, embedded, and no such file")
    cfg = json.loads(path.read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}, 77


def meta_unet(config: dict) -> UNet2DConditionModel:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet.set_attn_processor(AttnProcessor())
    return unet.eval()


def _inputs(unet: UNet2DConditionModel, batch: int, seq_len: int, device="meta"):
    c = unet.config
    cad = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
    sample = torch.zeros(batch, c.in_channels, c.sample_size, c.sample_size, device=device)
    ehs = torch.zeros(batch, seq_len, cad, device=device)
    kw = {}
    if c.addition_embed_type == "text_time":
        text_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, text_dim, device=device),
                                   "time_ids": torch.zeros(batch, 6, device=device)}
    return sample, torch.tensor(999, device=device), ehs, kw


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def step_flops(unet: UNet2DConditionModel, cut: int = 1, adaptor: str | torch.nn.Module = "identity",
               batch: int = 2, seq_len: int = 77, adaptor_kwargs: dict | None = None) -> dict:
    """FLOPs of one full step and one adaptor step (and the adaptor alone) at ``batch``."""
    ucut = UNetCut(unet, cut)
    dev = next(unet.parameters()).device
    if isinstance(adaptor, str):
        with torch.device(dev):
            adaptor = build_adaptor(adaptor, ucut, **(adaptor_kwargs or {}))
    sample, t, ehs, kw = _inputs(unet, batch, seq_len, device=dev)
    # identity and forecast: r_out is kept after the boundary upsampler, as the hook keeps it (no upsampler conv).
    # The forecast adaptor's step costs what the identity's does plus its weighted sum of order+1 cached r_out,
    # ~2 (order+1) FLOPs per element of r_out, which is not counted: elementwise ops are not counted anywhere here
    # (FlopCounterMode counts matmuls and convolutions), and it is ~1e-4 of a step (SD 1.5, batch 2, order 1:
    # ~0.02 of ~1600 GFLOPs).
    up = bool(getattr(adaptor, "reuses_r_out", False))
    full = _count(lambda: ucut.full_step(sample, t, ehs, **kw))
    holder = {}
    with torch.no_grad():
        _, r_in, r_out = ucut.full_step(sample, t, ehs, upsampled=up, **kw)
        s = ucut.prepare(sample, t, ehs, **kw)
    adapt = _count(lambda: ucut.adaptor_step(adaptor, r_out, sample, t, ehs, upsampled=up, **kw))
    adaptor_only = _count(lambda: adaptor(r_in=r_in, r_out_prev=r_out, temb=s.emb, text=s.text))
    holder.update(full=full, adapt=adapt, adaptor_only=adaptor_only,
                  adaptor_params=sum(p.numel() for p in adaptor.parameters()),
                  unet_params=sum(p.numel() for p in unet.parameters()))
    return holder


def clockwork_flops(unet_config: str | dict = "sd15", steps: int = 8, clock: int | Clock = 2, cut: int = 1,
                    adaptor: str = "identity", batch: int = 2, seq_len: int | None = None,
                    adaptor_kwargs: dict | None = None, sampler_evals_per_step: int = 1) -> dict:
    """Total FLOPs of a Clockwork sampling loop vs the plain UNet loop (JSON-ready, GFLOPs)."""
    if isinstance(unet_config, str):
        cfg, default_len = named_config(unet_config)
    else:
        cfg, default_len = dict(unet_config), 77
    unet = meta_unet(cfg)
    f = step_flops(unet, cut, adaptor, batch, seq_len or default_len, adaptor_kwargs)
    clk = clock if isinstance(clock, Clock) else Clock(clock)
    sched = clk.schedule(steps)
    n_full, n_adapt = sum(sched), steps - sum(sched)
    g = 1e-9
    total = (n_full * f["full"] + n_adapt * f["adapt"]) * sampler_evals_per_step
    base = steps * f["full"] * sampler_evals_per_step
    return {
        "unet_config": unet_config if isinstance(unet_config, str) else "custom",
        "steps": steps, "clock": repr(clk), "cut": cut, "adaptor": adaptor if isinstance(adaptor, str) else type(adaptor).__name__,
        "batch": batch, "full_steps": n_full, "adaptor_steps": n_adapt,
        "full_step_gflops": round(f["full"] * g, 3),
        "adaptor_step_gflops": round(f["adapt"] * g, 3),
        "adaptor_only_gflops": round(f["adaptor_only"] * g, 3),
        "total_gflops": round(total * g, 3),
        "baseline_total_gflops": round(base * g, 3),
        "ratio": round(total / base, 4),
        "replaced_share": round(1 - (f["adapt"] - f["adaptor_only"]) / f["full"], 4),
        "adaptor_params": f["adaptor_params"],
        "unet_params": f["unet_params"],
    }
