"""Shared fixtures: tiny UNet configs in the shapes Clockwork must cut, and tiny diffusers pipelines.

Every config here keeps the *structure* of the real model (block types, layers per block, skip
connections, list-valued attention heads, SDXL's text_time embedding) with tiny widths, so a CPU
forward pass takes milliseconds. ``embedded`` is the project's own teacher config, unchanged.
"""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors: one thread is fastest, and several OpenMP threads spin against each other (100x slower)
# when other processes share the 2 cores. Also inherited by the subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from clockwork.embedded.teacher import TEACHER_CONFIG

torch.set_num_threads(1)

# SD 1.x: 4 levels, CrossAttnDown x3 + Down, layers_per_block 2, int attention_head_dim.
SD15_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16, attention_head_dim=4,
)
# SD 2.x: as SD 1.x plus list-valued attention_head_dim and linear projections in the transformers.
SD21_TINY = dict(SD15_TINY, attention_head_dim=[2, 2, 4, 4], use_linear_projection=True)
# SDXL: 3 levels (no attention at the top one), transformer depth per level, text_time added conditioning.
SDXL_TEXT_DIM = 16
SDXL_TIME_DIM = 8
SDXL_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(16, 32, 32), norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=[1, 1, 2], attention_head_dim=[2, 4, 4], use_linear_projection=True,
    cross_attention_dim=16, addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
    projection_class_embeddings_input_dim=SDXL_TEXT_DIM + 6 * SDXL_TIME_DIM,
)
# A pixel-space UNet for EmbeddedPipeline tests: the teacher's layout, narrower and smaller.
PIXEL_TINY = dict(TEACHER_CONFIG, sample_size=16, block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
                  cross_attention_dim=16, attention_head_dim=4)

TINY_CONFIGS: dict[str, dict] = {
    "sd15": SD15_TINY,
    "sd21": SD21_TINY,
    "sdxl": SDXL_TINY,
    "embedded": dict(TEACHER_CONFIG),
    "pixel": PIXEL_TINY,
}


def text_dim(config: dict) -> int:
    return config["cross_attention_dim"]


def build_unet(name_or_config, seed: int = 0, **overrides):
    """A fp32 eval-mode UNet2DConditionModel with deterministic random weights."""
    from diffusers import UNet2DConditionModel

    cfg = dict(TINY_CONFIGS[name_or_config] if isinstance(name_or_config, str) else name_or_config)
    cfg.update(overrides)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg)
    # Default inits leave some layers tiny; a small perturbation makes every block matter to the output,
    # so a test that drops or reorders a block sees a difference.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return unet.eval()


def unet_inputs(unet, batch: int = 2, seq_len: int = 5, size: int | tuple[int, int] | None = None, seed: int = 0,
                timestep: float = 500.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(sample, timestep, encoder_hidden_states, extra kwargs) for one UNet call."""
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    h, w = (size, size) if isinstance(size, int) else (size or (c.sample_size, c.sample_size))
    sample = torch.randn(batch, c.in_channels, h, w, generator=g)
    ehs = torch.randn(batch, seq_len, c.cross_attention_dim, generator=g)
    kw = {}
    if c.addition_embed_type == "text_time":
        tdim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, tdim, generator=g),
                                   "time_ids": torch.tensor([[h * 8.0, w * 8.0, 0.0, 0.0, h * 8.0, w * 8.0]] * batch)}
    return sample, torch.tensor(timestep), ehs, kw


@pytest.fixture(scope="session")
def tiny_configs() -> dict[str, dict]:
    return {k: dict(v) for k, v in TINY_CONFIGS.items()}


@pytest.fixture
def make_unet():
    """``make_unet("sd15" | "sd21" | "sdxl" | "embedded" | "pixel" | config, seed=0, **overrides)``."""
    return build_unet


# ---- schedulers ------------------------------------------------------------------------------------

SAMPLER_NAMES = ["dpm++", "dpm", "pndm", "ddim", "euler", "heun"]


def scheduler_config(kind: str = "embedded") -> dict:
    """A base scheduler config: the embedded teacher's (cosine, v-pred) or SD's (scaled_linear, eps)."""
    from diffusers import DDPMScheduler

    if kind == "embedded":
        from clockwork.embedded.teacher import training_scheduler

        return dict(training_scheduler().config)
    return dict(DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1).config)


def make_sampler(name: str, kind: str = "embedded"):
    """``clockwork.schedulers.make_scheduler(name, ...)``.

    "dpm" (DPM-Solver, not ++) uses ``final_sigmas_type="sigma_min"``: diffusers refuses "zero" there.
    """
    import warnings

    from clockwork.schedulers import make_scheduler

    cfg = scheduler_config(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return make_scheduler(name, cfg)


def expected_steps(name: str, steps: int) -> list[int]:
    """Sampler step of every model evaluation, from each sampler's published algorithm."""
    if name == "heun":  # two evaluations per step, the last step is a plain Euler step (sigma_next = 0)
        return [k for k in range(steps - 1) for _ in range(2)] + [steps - 1]
    if name == "pndm":  # PLMS: the first step takes two evaluations (a 2nd-order start)
        return [0] + list(range(steps))
    return list(range(steps))


def reference_cfg_loop(unet, name: str, prompts, cfg_mode: str, state: dict, before_step, seed: int = 0,
                       steps: int = 6, guidance: float = 3.0) -> torch.Tensor:
    """A hand-written classifier-free-guidance sampling loop with plain UNet calls, for tests whose hooks on the UNet
    stand in for Clockwork: ``before_step(step, sub)`` runs before every model evaluation (``step``: its sampler
    step, :func:`expected_steps`; ``sub``: which evaluation of that step, Heun's second = 1); ``state["slot"]`` says
    which CFG call runs (``cfg_mode`` "batch": one call, slot 0; "two_calls": the negative prompts' call 0, the
    positive's 1). Returns the final sample, clamped to [-1, 1]."""
    sched = make_sampler(name)
    pos, neg = prompts
    step_of = expected_steps(name, steps)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((pos.shape[0], unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                        generator=gen)
        sched.set_timesteps(steps)
        x = x * sched.init_noise_sigma
        negb = neg.expand_as(pos)
        for i, t in enumerate(sched.timesteps):
            before_step(step_of[i], step_of[:i].count(step_of[i]))
            if cfg_mode == "batch":
                xi = sched.scale_model_input(torch.cat([x, x]), t)
                state["slot"] = 0
                u, c = unet(xi, t, encoder_hidden_states=torch.cat([negb, pos])).sample.chunk(2)
            else:
                xi = sched.scale_model_input(x, t)
                state["slot"] = 0
                u = unet(xi, t, encoder_hidden_states=negb).sample
                state["slot"] = 1
                c = unet(xi, t, encoder_hidden_states=pos).sample
            x = sched.step(u + guidance * (c - u), t, x, return_dict=False)[0]
    return x.float().clamp(-1, 1)



# ---- a tiny StableDiffusionPipeline, fully offline ---------------------------------------------------

_VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "a", "c", "p", "h", "lo", "l</w>", "w</w>", "r</w>",
          "t</w>", "e</w>", "a</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "ca", "cat</w>", "o</w>",
          "<unk>", "<|startoftext|>", "<|endoftext|>"]
_MERGES = ["#version: 0.2", "l o", "lo w</w>", "e r</w>", "c a", "ca t</w>"]


def tiny_tokenizer(folder):
    """A CLIPTokenizer from a tiny vocab/merges written into ``folder`` (no download)."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({tok: i for i, tok in enumerate(_VOCAB)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("\n".join(_MERGES) + "\n")
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                         unk_token="<unk>", model_max_length=8)


def tiny_sd_components(folder, seed: int = 0, scheduler=None) -> dict:
    """Components of a StableDiffusionPipeline: tiny UNet (SD 1.x layout), tiny VAE, tiny CLIP text model."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = build_unet("sd15", seed=seed)
    torch.manual_seed(seed + 10)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8,
                        sample_size=32).eval()
    torch.manual_seed(seed + 20)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(_VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=_VOCAB.index("<|startoftext|>"),
        eos_token_id=_VOCAB.index("<|endoftext|>"), pad_token_id=_VOCAB.index("<|endoftext|>"),
    )).eval()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(folder),
                scheduler=scheduler if scheduler is not None else make_sampler("dpm++", "sd"),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _tiny_clip_text(seed: int, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(_VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=_VOCAB.index("<|startoftext|>"),
                         eos_token_id=_VOCAB.index("<|endoftext|>"), pad_token_id=_VOCAB.index("<|endoftext|>"),
                         **({"projection_dim": projection} if projection else {}))
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def tiny_sd2_components(folder, seed: int = 0) -> dict:
    """A StableDiffusionPipeline of the SD 2.x kind: list-valued heads, linear projections, v-prediction."""
    from diffusers import DDIMScheduler

    comp = tiny_sd_components(folder, seed)
    comp["unet"] = build_unet("sd21", seed=seed)
    comp["scheduler"] = DDIMScheduler.from_config(dict(scheduler_config("sd"), prediction_type="v_prediction",
                                                         clip_sample=False))
    return comp


def tiny_sdxl_components(folder, seed: int = 0) -> dict:
    """Components of a StableDiffusionXLPipeline: the tiny SDXL UNet (3 levels, text_time), tiny VAE, two tiny CLIP
    text encoders whose states concatenate to its cross_attention_dim (8 + 8) and whose second projects to the
    pooled text_embeds (SDXL_TEXT_DIM)."""
    comp = tiny_sd_components(folder, seed)
    unet = build_unet("sdxl", seed=seed)
    return dict(unet=unet, vae=comp["vae"], text_encoder=_tiny_clip_text(seed + 20, 8),
                text_encoder_2=_tiny_clip_text(seed + 21, 8, projection=SDXL_TEXT_DIM), tokenizer=comp["tokenizer"],
                tokenizer_2=tiny_tokenizer(os.path.join(folder, "tok2")), scheduler=comp["scheduler"],
                force_zeros_for_empty_prompt=True)


@pytest.fixture
def sd_pipe(tmp_path):
    """A tiny StableDiffusionPipeline (32x32 px, 16x16 latents) with DPM++ 2M."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_path / "tokenizer"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def has_c_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "clang"))
