"""The world a stage samples in: the prepared prompts and FID statistics (:class:`Prepared`) and the teacher with
its noise schedule, samplers and CLIP scorer (:class:`World`: embedded, offline, or SD v1.5 via diffusers)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.common.io import PREPARED_DIR, file_sha, obj_sha, pick_device


def make_sampler(name: str, config) -> Any:
    """A diffusers sampler by the paper's name, built on the teacher's noise schedule."""
    from clockwork.schedulers import make_scheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return make_scheduler(name, dict(config))
        except ValueError:
            # DPM-Solver (not ++) refuses the default final_sigmas_type="zero" in diffusers >= 0.30.
            if name != "dpm":
                raise
            return make_scheduler(name, dict(config, final_sigmas_type="sigma_min"))


@dataclass
class Prepared:
    """What the prepare stage wrote: prompt sets, the embedding table, reference FID statistics."""

    distill_prompts: list[str]
    eval_prompts: list[str]
    info: dict
    table: Any
    reference: Any
    val_prompts: list[str] = field(default_factory=list)  # training-split captions not distilled on
    val_reference: Any = None  # FID statistics of training-split images not distilled on

    @classmethod
    def load(cls, root: str | os.PathLike = PREPARED_DIR) -> "Prepared":
        from clockwork.embedded.text import EmbeddingTable
        from clockwork.metrics import ReferenceStats

        root = Path(root)
        if not (root / "prompts.json").is_file():
            raise FileNotFoundError(f"{root}/prompts.json missing; run the `prepare` stage (dvc repro prepare)")
        info = json.loads((root / "prompts.json").read_text())
        val = root / "val_reference_stats.npz"
        return cls(info["distill_prompts"], info["eval_prompts"], info, EmbeddingTable.load(root / "embeddings.safetensors"),
                   ReferenceStats.load(root / "reference_stats.npz"), info.get("val_prompts", []),
                   ReferenceStats.load(val) if val.is_file() else None)

    def split(self, name: str) -> tuple[list[str], Any]:
        """(prompts, FID reference statistics) of the ``heldout`` evaluation split or the ``val`` split."""
        if name == "heldout":
            return self.eval_prompts, self.reference
        if name == "val":
            if not self.val_prompts or self.val_reference is None:
                raise FileNotFoundError("data/prepared has no validation split; set prepare.val_prompts and "
                                        "prepare.val_reference_images > 0 and dvc repro prepare")
            return self.val_prompts, self.val_reference
        raise ValueError(f"split must be 'heldout' or 'val', got {name!r}")


def teacher_scheduler_config(teacher_dir: str | os.PathLike) -> dict:
    """The embedded teacher's noise schedule, from which every sampler is built: its saved
    ``scheduler/scheduler_config.json``, else the built-in one (:func:`clockwork.embedded.teacher.training_scheduler`)."""
    path = Path(teacher_dir) / "scheduler" / "scheduler_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from clockwork.embedded.teacher import training_scheduler

    return dict(training_scheduler().config)


class World:
    """The teacher and everything needed to sample from it: embedded (offline) or SD v1.5 (diffusers)."""

    def __init__(self, world_params, device: str = "cpu", root: str | os.PathLike = "."):
        self.params = world_params
        self.kind = world_params.kind
        self.device = device
        self.root = Path(root)
        self._scorer = None
        from clockwork.precision import resolve_precision

        self.precision = resolve_precision(world_params.precision, device)  # sampling's autocast: fp32 | bf16
        if self.kind == "embedded":
            from clockwork.embedded.teacher import load_teacher

            self.unet = load_teacher(self._path(world_params.teacher), dtype=torch.float32, device=device)
            self.scheduler_config = teacher_scheduler_config(self._path(world_params.teacher))
            self.vae = None
            self.sd_pipe = None
            self.teacher_id = file_sha(self._path(world_params.teacher) / "diffusion_pytorch_model.safetensors")
        else:
            from diffusers import StableDiffusionPipeline

            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[world_params.dtype]
            if device == "cpu":
                dtype = torch.float32
            model = str(self._path(world_params.model)) if self._path(world_params.model).exists() else world_params.model
            self.sd_pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None,
                                                                   requires_safety_checker=False).to(device)
            self.sd_pipe.set_progress_bar_config(disable=True)
            self.unet = self.sd_pipe.unet.eval()
            self.vae = self.sd_pipe.vae
            self.scheduler_config = dict(self.sd_pipe.scheduler.config)
            self.teacher_id = obj_sha([world_params.model, world_params.dtype])
        self.unet.requires_grad_(False)

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q

    @property
    def unet_config(self) -> dict:
        return {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}

    def sampler(self, name: str):
        return make_sampler(name, self.scheduler_config)

    def latents(self, n: int, seed: int) -> torch.Tensor:
        """Initial noise per image from its own seed: image i gets the same noise in every method and run."""
        c = self.unet.config
        shape = (c.in_channels, c.sample_size, c.sample_size)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                            for i in range(n)])

    def pipeline(self, sampler: str):
        """A diffusers pipeline (``.unet`` + ``.scheduler``) that ``clockwork.enable`` attaches to."""
        if self.kind == "embedded":
            from clockwork.embedded.pipeline import EmbeddedPipeline

            return EmbeddedPipeline(self.unet, self.sampler(sampler))
        self.sd_pipe.scheduler = self.sampler(sampler)
        return self.sd_pipe

    def autocast(self):
        """The context every sampling of the teacher runs in (images, trajectories, rollouts): ``world.precision``."""
        from clockwork.precision import autocast

        return autocast(self.precision, self.device)

    @torch.no_grad()
    def generate(self, pipe, ctx: torch.Tensor, neg: torch.Tensor, latents: torch.Tensor, steps: int, guidance: float,
                 decode: bool = True, autocast: bool = True) -> torch.Tensor:
        """uint8 images (B, 3, H, W) from prompt token states ``ctx`` and initial noise ``latents``, under
        :meth:`autocast` unless ``autocast=False`` (the model's own dtype)."""
        dtype = self.unet.dtype
        ctx, neg, latents = ctx.to(self.device, dtype), neg.to(self.device, dtype), latents.to(self.device, dtype)
        with self.autocast() if autocast else contextlib.nullcontext():
            if self.kind == "embedded":
                return pipe(ctx, neg, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                            output_type="uint8" if decode else "pt").cpu()
            out = pipe(prompt_embeds=ctx, negative_prompt_embeds=neg.expand_as(ctx), latents=latents,
                       num_inference_steps=steps, guidance_scale=guidance, output_type="pt" if decode else "latent").images
        if not decode:
            return out
        return (out.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def scorer(self, table):
        """The CLIP scorer: the embedded contrastive model, or a real CLIP via torchmetrics (sd15)."""
        if self._scorer is None:
            from clockwork import metrics

            if self.kind == "embedded":
                from clockwork.embedded.scorer import load_scorer

                self._scorer = metrics.EmbeddedCLIPScorer(scorer=load_scorer(self._path(self.params.scorer)), table=table,
                                                          device=self.device)
            else:
                self._scorer = _PromptCLIP(metrics.TorchmetricsCLIPScorer(self.params.clip_model, device=self.device))
        return self._scorer


class _PromptCLIP:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, images, prompts):
        return self.inner(images, prompts)


def load_world(world_params, device: str = "auto", root: str | os.PathLike = ".") -> World:
    return World(world_params, pick_device(device), root)
