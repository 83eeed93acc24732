"""The world a stage samples in: the prepared prompts and FID statistics (:class:`Prepared`) and the teacher with
its noise schedule, samplers and CLIP scorer (:class:`World`: embedded, offline, or an SD-family diffusers
pipeline - SD 1.x, SD 2.x, SDXL)."""

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
from pipeline.config import model_source, public_config, resolve_path


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
    reference: Any  # None when data/prepared was made with --prompts-only (no Inception statistics)
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
        ref, val = root / "reference_stats.npz", root / "val_reference_stats.npz"  # absent: prepare.py --prompts-only
        return cls(info["distill_prompts"], info["eval_prompts"], info, EmbeddingTable.load(root / "embeddings.safetensors"),
                   ReferenceStats.load(ref) if ref.is_file() else None, info.get("val_prompts", []),
                   ReferenceStats.load(val) if val.is_file() else None)

    def split(self, name: str) -> tuple[list[str], Any]:
        """(prompts, FID reference statistics) of the ``heldout`` evaluation split or the ``val`` split."""
        if name == "heldout":
            if self.reference is None:
                raise FileNotFoundError("data/prepared has no reference_stats.npz (made with --prompts-only?); run the "
                                        "`prepare` stage, or scripts/gpu/gpu_prepare.py on a machine without MiniLM")
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


def sd_pipeline_class(model: str, pipeline: str = "auto") -> str:
    """The diffusers pipeline class of an SD-family model: ``pipeline`` itself, or with ``auto`` the ``_class_name``
    of the folder's (or the hub id's, from the Hugging Face cache when offline) ``model_index.json``."""
    if pipeline != "auto":
        return pipeline
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(model)["_class_name"]


def scheduler_config_of(world_params, root: str | os.PathLike = ".") -> dict:
    """The teacher's noise schedule without loading the teacher: the embedded one's, or an SD-family model's
    ``scheduler/scheduler_config.json`` (local folder or hub cache)."""
    if world_params.kind == "embedded":
        return teacher_scheduler_config(resolve_path(world_params.teacher, root))
    from diffusers import DDPMScheduler  # any scheduler class reads a scheduler config

    return public_config(DDPMScheduler.load_config(model_source(world_params.model, root), subfolder="scheduler"))


class World:
    """The teacher and everything needed to sample from it: embedded (offline) or an SD-family diffusers pipeline
    (``world.kind: sd``: StableDiffusionPipeline - SD 1.x, 2.x with v-prediction - or StableDiffusionXLPipeline)."""

    def __init__(self, world_params, device: str = "cpu", root: str | os.PathLike = "."):
        self.params = world_params
        self.kind = world_params.kind
        self.device = device
        self.root = Path(root)
        self._scorer = None
        self.is_xl = False
        from clockwork.precision import resolve_precision

        self.precision = resolve_precision(world_params.precision, device)  # sampling's autocast: fp32 | bf16
        if self.kind == "embedded":
            from clockwork.embedded.teacher import load_teacher

            self.unet = load_teacher(self._path(world_params.teacher), dtype=torch.float32, device=device)
            self.scheduler_config = teacher_scheduler_config(self._path(world_params.teacher))
            self.vae = None
            self.sd_pipe = None
            self.teacher_id = file_sha(self._path(world_params.teacher) / "diffusion_pytorch_model.safetensors")
            self.latent_size = int(self.unet.config.sample_size)
        else:
            import diffusers

            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[world_params.dtype]
            if device == "cpu":
                dtype = torch.float32
            model = model_source(world_params.model, self.root)
            cls_name = sd_pipeline_class(model, world_params.pipeline)
            self.is_xl = cls_name == "StableDiffusionXLPipeline"
            extra = {} if self.is_xl else {"safety_checker": None, "requires_safety_checker": False}
            self.sd_pipe = getattr(diffusers, cls_name).from_pretrained(model, torch_dtype=dtype, **extra).to(device)
            self.sd_pipe.set_progress_bar_config(disable=True)
            self.sd_pipe.vae.enable_slicing()  # decode a batch one image at a time: VAE memory independent of batch size
            self.unet = self.sd_pipe.unet.eval()
            self.vae = self.sd_pipe.vae
            self.scheduler_config = dict(self.sd_pipe.scheduler.config)
            self.resolution = world_params.resolution
            self.latent_size = world_params.resolution // self.sd_pipe.vae_scale_factor
            self.teacher_id = obj_sha([world_params.model, world_params.dtype, cls_name, world_params.resolution])
        self.unet.requires_grad_(False)

    def _path(self, p: str) -> Path:
        return resolve_path(p, self.root)

    @property
    def unet_config(self) -> dict:
        """The UNet's config at the size it samples (``sample_size`` = the latent size of ``world.resolution``)."""
        return {**public_config(self.unet.config), "sample_size": self.latent_size}

    def added_cond(self, pooled: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The UNet's added conditioning for prompts with pooled embeddings ``pooled`` (B, D): SDXL's ``text_embeds``
        and ``time_ids`` (original size, crop (0, 0), target size - as StableDiffusionXLPipeline builds them for a
        square image at world.resolution); None for UNets without (SD 1.x/2.x, the embedded teacher)."""
        if not self.is_xl:
            return None
        r = self.resolution
        ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).expand(len(pooled), 6)
        return {"text_embeds": pooled.float(), "time_ids": ids}

    def sampler(self, name: str):
        return make_sampler(name, self.scheduler_config)

    def latents(self, n: int, seed: int) -> torch.Tensor:
        """Initial noise per image from its own seed: image i gets the same noise in every method and run."""
        shape = (self.unet.config.in_channels, self.latent_size, self.latent_size)
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
                 decode: bool = True, autocast: bool = True, pooled: torch.Tensor | None = None,
                 neg_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (B, 3, H, W) from prompt token states ``ctx`` (and SDXL's pooled embeddings ``pooled``,
        ``neg_pooled``) and initial noise ``latents``, under :meth:`autocast` unless ``autocast=False`` (the
        model's own dtype)."""
        dtype = self.unet.dtype
        ctx, neg, latents = ctx.to(self.device, dtype), neg.to(self.device, dtype), latents.to(self.device, dtype)
        with self.autocast() if autocast else contextlib.nullcontext():
            if self.kind == "embedded":
                return pipe(ctx, neg, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                            output_type="uint8" if decode else "pt").cpu()
            kw = {}
            if self.is_xl:
                if pooled is None or neg_pooled is None:
                    raise ValueError("an SDXL world needs the prompts' pooled embeddings (pooled=, neg_pooled=)")
                pooled = pooled.to(self.device, dtype)
                kw = dict(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled.to(self.device, dtype).expand_as(pooled))
            out = pipe(prompt_embeds=ctx, negative_prompt_embeds=neg.expand_as(ctx), latents=latents,
                       num_inference_steps=steps, guidance_scale=guidance, height=self.resolution, width=self.resolution,
                       output_type="pt" if decode else "latent", **kw).images
        if not decode:
            return out
        return (out.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def scorer(self, table):
        """The CLIP scorer: the embedded contrastive model, or a real CLIP via torchmetrics (world.clip_model)."""
        if self._scorer is None:
            from clockwork import metrics

            if self.kind == "embedded":
                from clockwork.embedded.scorer import load_scorer

                self._scorer = metrics.EmbeddedCLIPScorer(scorer=load_scorer(self._path(self.params.scorer)), table=table,
                                                          device=self.device)
            else:
                self._scorer = metrics.TorchmetricsCLIPScorer(self.params.clip_model, device=self.device)
        return self._scorer


def load_world(world_params, device: str = "auto", root: str | os.PathLike = ".") -> World:
    return World(world_params, pick_device(device), root)
