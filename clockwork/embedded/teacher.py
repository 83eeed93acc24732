"""The embedded world's teacher: a small pixel-space UNet2DConditionModel in the paper's "Efficient UNet" layout.

Four resolution levels (32, 16, 8, 4 px), no attention at the highest resolution (as the paper's
Efficient UNet), cross-attention on 384-d MiniLM token states. ~5.0 M parameters (fp16 ~9.6 MiB).
The noise schedule is cosine ("squaredcos_cap_v2") with v-prediction, which suits few-step
sampling in pixel space; the sampler is diffusers' DPM++ 2M built from the same config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

TEACHER_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 112, 112),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=384,
    attention_head_dim=8,
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
)

# The committed teacher lives inside the package so a library user gets it with `pip install`.
DEFAULT_TEACHER_DIR = Path(__file__).resolve().parent.parent / "assets" / "teacher"


def build_teacher(**overrides) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**TEACHER_CONFIG, **overrides})


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def save_scheduler_config(directory: str | os.PathLike) -> Path:
    """Write the teacher's noise schedule as ``scheduler_config.json``, with only the keys it sets.

    ``DDPMScheduler.save_pretrained`` would also write DDPM's defaults, among them ``timestep_spacing:
    "leading"``; a sampler built ``from_config`` on that file keeps it, and DPM-Solver(++) with 8 "leading" steps
    starts at t=888 instead of 999 - from pure noise while telling the model 17% of the signal is left. Without
    the key every sampler uses its own default, as :func:`sampling_scheduler` does with the in-memory config.
    """
    import json

    import diffusers

    path = Path(directory) / "scheduler_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "DDPMScheduler", "_diffusers_version": diffusers.__version__, **SCHEDULER_CONFIG}
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def sampling_scheduler(name: str = "dpm++", config: dict | None = None):
    """A diffusers sampler for the teacher's schedule; see :func:`clockwork.schedulers.make_scheduler`."""
    from clockwork.schedulers import make_scheduler

    return make_scheduler(name, config or training_scheduler().config)


def load_teacher(path: str | os.PathLike | None = None, dtype=torch.float32, device="cpu") -> UNet2DConditionModel:
    """Load the committed teacher (or one at ``path``) - a plain diffusers folder (config.json + safetensors)."""
    path = Path(path or DEFAULT_TEACHER_DIR)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no teacher at {path} (expected config.json + diffusion_pytorch_model.safetensors); "
            "the repository ships one under clockwork/assets/teacher, or train one with `dvc repro -s teacher`"
        )
    unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype)
    return unet.to(device).eval()
