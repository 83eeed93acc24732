"""Image editing with Clockwork: DDIM inversion + Plug-and-Play injection (Tumanyan et al., CVPR 2023), and SDEdit.

    from clockwork.editing import PnPSettings, pnp_edit
    res = pnp_edit(unet, scheduler_config, x0, source_embeds, target_embeds, negative_embeds,
                   settings=PnPSettings(steps=20, guidance=2.0), clockwork={"adaptor": "identity", "clock": 2})
    edited = res.images                      # same space as x0 (pixels for the embedded teacher, latents for SD)

Plug-and-Play edits a real image in two passes over one UNet:

1. **Inversion**: DDIM inversion (diffusers' ``DDIMInverseScheduler``) of the source image with the source prompt,
   no guidance, keeping the latent at every noise level of the schedule.
2. **Generation** with the target prompt from the inverted noise, with classifier-free guidance. Each step runs
   one batch ``[source rows | unconditional rows | target rows]``: the source rows are the inverted latents at
   that step's noise level, and forward hooks copy their features into the other rows - a decoder resnet's
   output for the first ``feature_fraction`` of the steps, the self-attention queries and keys of the decoder
   for the first ``attn_fraction``. The source rows leave the batch once no injection is left.

Clockwork is on in both passes when ``clockwork={...}`` (the arguments of :func:`clockwork.enable`); its clock
counts each pass's own sampler steps, so each pass starts with a full step. **Which injections an adaptor step
keeps:** only layers in the always-run high-resolution part run on adaptor steps
(:func:`injection_sites`). PnP's default layers sit in the decoder's lower levels, so at ``cut=1`` they run on
full steps only; an adaptor step then reuses (identity adaptor) or predicts from (trained adaptor) the r_out of
the last full step, which was computed *with* the injection - the injected structure carries over, but the
adaptor step itself injects nothing new. Layers in the kept ``up_blocks[n-cut:]`` inject on every step.
While the source rows are in the batch they are part of every step (Clockwork keeps their r_out like any row);
they leave it at a full step, since an adaptor step needs the previous step's r_out for every row.

SDEdit (:func:`sdedit`) - noise the image to ``strength`` of the schedule and denoise with the target prompt -
is the simple baseline; Clockwork works there as in any img2img pipeline.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from torch import nn

import clockwork
from clockwork.cut import UNetCut

_SITE = re.compile(r"^up_blocks\.(\d+)\.")


@dataclass(frozen=True)
class PnPSettings:
    """Plug-and-Play's knobs; the defaults follow the paper (features 80 %, self-attention 50 % of the steps)."""

    steps: int = 20
    guidance: float = 2.0
    feature_fraction: float = 0.8
    attn_fraction: float = 0.5
    feature_layers: tuple[str, ...] | None = None  # module names; None = default_injection_layers(unet)
    attn_layers: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        for name in ("feature_fraction", "attn_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} is a fraction of the steps in [0, 1], got {v}")


@dataclass
class PassRecord:
    """What one sampling pass cost: rows in the UNet batch and full (True) / adaptor (False) per step, wall time."""

    rows: list[int] = field(default_factory=list)
    full: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    def flops(self, full_step_flops: float, adaptor_step_flops: float) -> float:
        """Total FLOPs given the FLOPs of one batch row through a full / an adaptor step."""
        return float(sum(r * (full_step_flops if f else adaptor_step_flops) for r, f in zip(self.rows, self.full)))


@dataclass
class Inversion:
    """DDIM inversion of a batch: the latent at every noise level of the generation schedule."""

    timesteps: list[int]  # generation order (noisiest first)
    latents: dict[int, torch.Tensor]  # noise level t -> latent x_t
    record: PassRecord

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[self.timesteps[0]]


@dataclass
class EditResult:
    images: torch.Tensor  # same space and range as the input (x0 prediction of the last step)
    passes: dict[str, PassRecord]  # "inversion" and "generation" (SDEdit: "generation" only)


# ---- where to inject --------------------------------------------------------------------------------------------
def default_injection_layers(unet: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """PnP's layers for a diffusers UNet: (feature layers, self-attention layers).

    Features: the second resnet of the decoder's second level (``up_blocks.1.resnets.1``, PnP's "layer 4" in
    SD); self-attention: every ``attn1`` of ``up_blocks[1:]`` (PnP's decoder layers 4-11).
    """
    ups = unet.up_blocks
    feats = ()
    if len(ups) > 1 and len(ups[1].resnets) > 1:
        feats = ("up_blocks.1.resnets.1",)
    attns = tuple(name for name, m in unet.named_modules() if name.endswith(".attn1") and _up_index(name) not in (None, 0))
    return feats, attns


def _up_index(name: str) -> int | None:
    m = _SITE.match(name)
    return int(m.group(1)) if m else None


def injection_sites(unet: nn.Module, cut: int, layers: tuple[str, ...]) -> dict[str, str]:
    """For each layer: ``"every step"`` if it is in the high-resolution part Clockwork always runs at ``cut``,
    ``"full steps only"`` if an adaptor step replaces it."""
    ucut = UNetCut(unet, cut)
    out = {}
    for name in layers:
        i = _up_index(name)
        if i is None:
            down = re.match(r"^down_blocks\.(\d+)\.", name)
            kept = down is not None and int(down.group(1)) in ucut.kept_down
        else:
            kept = i in ucut.kept_up
        out[name] = "every step" if kept else "full steps only"
    return out


def _resolve(unet: nn.Module, names: tuple[str, ...], kind: str) -> list[nn.Module]:
    modules = dict(unet.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{kind} injection layers {missing} are not modules of this UNet "
                         f"(e.g. {[n for n in modules if n.startswith('up_blocks.1.')][:4]})")
    return [modules[n] for n in names]


class _Injector:
    """Forward hooks that copy the source rows' outputs into the other rows of the batch while switched on."""

    def __init__(self, unet, feature_layers, attn_layers):
        self.features = False
        self.attention = False
        self.groups = 1  # batch = `groups` blocks of n source rows; block 0 is the source
        self._handles = []
        for m in _resolve(unet, feature_layers, "feature"):
            self._handles.append(m.register_forward_hook(self._hook("features")))
        for m in _resolve(unet, attn_layers, "self-attention"):
            if not (hasattr(m, "to_q") and hasattr(m, "to_k")):
                raise ValueError(f"{type(m).__name__} has no to_q / to_k: not a diffusers Attention layer")
            # queries and keys, as PnP; hooks on the projections work with any attention processor that calls them
            self._handles += [m.to_q.register_forward_hook(self._hook("attention")),
                              m.to_k.register_forward_hook(self._hook("attention"))]

    def _hook(self, switch):
        def hook(module, args, output):
            if not getattr(self, switch) or self.groups < 2:
                return None
            src = output.chunk(self.groups)[0]
            return torch.cat([src] * self.groups)
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


# ---- passes -----------------------------------------------------------------------------------------------------
@contextmanager
def _clockwork_on(unet, scheduler, clockwork_kwargs: dict | None) -> Iterator:
    if not clockwork_kwargs:
        yield None
        return
    if clockwork.get_hook(unet) is not None:
        raise ValueError("this UNet already has Clockwork enabled; call clockwork.disable(unet) and pass the "
                         "settings as clockwork={...} so both editing passes get their own clock")
    if clockwork_kwargs.get("fast"):
        raise ValueError("clockwork fast=True (torch.compile) is not supported while editing: the injection hooks "
                         "run inside the compiled graph")
    hook = clockwork.enable(unet, scheduler=scheduler, **clockwork_kwargs)
    try:
        yield hook
    finally:
        clockwork.disable(unet)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _schedulers(scheduler_config) -> tuple[DDIMScheduler, DDIMInverseScheduler]:
    """DDIM and its inverse on the model's noise schedule, with one timestep spacing both support (the inverse
    has no "linspace": such configs, e.g. SD 1.x's PNDM default, get "leading")."""
    cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}

    def build(cls, **over):
        known = set(inspect.signature(cls.__init__).parameters)
        return cls.from_config({k: v for k, v in {**cfg, **over}.items() if k in known})

    spacing = cfg.get("timestep_spacing", "leading")
    spacing = spacing if spacing in ("leading", "trailing") else "leading"
    return build(DDIMScheduler, timestep_spacing=spacing), build(DDIMInverseScheduler, timestep_spacing=spacing)


def _record_step(record: PassRecord, hook, rows: int) -> None:
    record.rows.append(rows)
    record.full.append(True if hook is None else bool(hook.trace[-1][1]))


@torch.no_grad()
def ddim_invert(unet, scheduler_config, x0: torch.Tensor, cond: torch.Tensor, steps: int = 20,
                clockwork: dict | None = None, unet_kwargs: dict | None = None) -> Inversion:
    """Invert ``x0`` with the source prompt's ``cond`` (no guidance): the latent at every noise level."""
    fwd, inv = _schedulers(scheduler_config)
    dev, dtype = unet.device, unet.dtype
    fwd.set_timesteps(steps, device=dev)
    x = x0.to(dev, dtype)
    cond = cond.to(dev, dtype)
    record = PassRecord()
    latents = {}
    with _clockwork_on(unet, inv, clockwork) as hook:
        inv.set_timesteps(steps, device=dev)
        _sync(dev)
        t0 = time.perf_counter()
        for t in inv.timesteps:
            out = unet(x, t, encoder_hidden_states=cond, **(unet_kwargs or {})).sample
            _record_step(record, hook, len(x))
            x = inv.step(out, t, x, return_dict=False)[0]
            latents[int(t)] = x  # the inverse step from the model's t lands on noise level t
        _sync(dev)
        record.seconds = time.perf_counter() - t0
    timesteps = [int(t) for t in fwd.timesteps]
    if set(timesteps) != set(latents):
        raise RuntimeError(f"inversion levels {sorted(latents)} do not match the generation schedule {timesteps}")
    return Inversion(timesteps=timesteps, latents=latents, record=record)


def _injection_steps(steps: int, fraction: float) -> int:
    return int(round(fraction * steps))


@torch.no_grad()
def pnp_generate(unet, scheduler_config, inversion: Inversion, source_cond: torch.Tensor, target_cond: torch.Tensor,
                 negative_cond: torch.Tensor, settings: PnPSettings = PnPSettings(), clockwork: dict | None = None,
                 unet_kwargs: dict | None = None) -> tuple[torch.Tensor, PassRecord]:
    """The target prompt's generation from the inverted noise with Plug-and-Play injection."""
    fwd, _ = _schedulers(scheduler_config)
    dev, dtype = unet.device, unet.dtype
    n = inversion.noise.shape[0]
    src_c, tgt_c = source_cond.to(dev, dtype), target_cond.to(dev, dtype)
    neg_c = negative_cond.to(dev, dtype).expand_as(tgt_c)
    do_cfg = settings.guidance > 1.0
    feats, attns = default_injection_layers(unet)
    feats = settings.feature_layers if settings.feature_layers is not None else feats
    attns = settings.attn_layers if settings.attn_layers is not None else attns
    n_feat = _injection_steps(settings.steps, settings.feature_fraction)
    n_attn = _injection_steps(settings.steps, settings.attn_fraction)
    injector = _Injector(unet, feats, attns)
    record = PassRecord()
    try:
        with _clockwork_on(unet, fwd, clockwork) as hook:
            fwd.set_timesteps(settings.steps, device=dev)
            if [int(t) for t in fwd.timesteps] != inversion.timesteps:
                raise ValueError(f"the inversion was made for timesteps {inversion.timesteps}; this schedule has "
                                 f"{[int(t) for t in fwd.timesteps]} (use the same steps and scheduler config)")
            x = inversion.noise.to(dev, dtype)
            with_source = n_feat > 0 or n_attn > 0
            _sync(dev)
            t0 = time.perf_counter()
            for i, t in enumerate(fwd.timesteps):
                injecting = i < max(n_feat, n_attn)
                # the source rows leave at a full step: an adaptor step needs last step's r_out for every row
                if with_source and not injecting and (hook is None or hook.clock.is_full(i)):
                    with_source = False
                blocks = ([inversion.latents[int(t)].to(dev, dtype)] if with_source else []) + ([x, x] if do_cfg else [x])
                conds = ([src_c] if with_source else []) + ([neg_c, tgt_c] if do_cfg else [tgt_c])
                injector.groups = len(blocks) if with_source else 1
                injector.features, injector.attention = i < n_feat, i < n_attn
                out = unet(torch.cat(blocks), t, encoder_hidden_states=torch.cat(conds), **(unet_kwargs or {})).sample
                _record_step(record, hook, len(blocks) * n)
                outs = out.chunk(len(blocks))[1 if with_source else 0:]
                eps = outs[0] + settings.guidance * (outs[1] - outs[0]) if do_cfg else outs[0]
                x = fwd.step(eps, t, x, return_dict=False)[0]
            _sync(dev)
            record.seconds = time.perf_counter() - t0
    finally:
        injector.remove()
    return x, record


def pnp_edit(unet, scheduler_config, x0: torch.Tensor, source_cond: torch.Tensor, target_cond: torch.Tensor,
             negative_cond: torch.Tensor, settings: PnPSettings = PnPSettings(), clockwork: dict | None = None,
             unet_kwargs: dict | None = None) -> EditResult:
    """Invert ``x0`` with the source prompt, then generate with the target prompt injecting the source's features.

    ``x0`` lives where the UNet works (pixels in [-1, 1] for a pixel-space UNet, VAE latents for SD);
    conds are the prompts' token states ``(B, L, D)``; ``negative_cond`` may be one row.
    """
    inversion = ddim_invert(unet, scheduler_config, x0, source_cond, settings.steps, clockwork, unet_kwargs)
    images, gen = pnp_generate(unet, scheduler_config, inversion, source_cond, target_cond, negative_cond, settings,
                               clockwork, unet_kwargs)
    return EditResult(images=images, passes={"inversion": inversion.record, "generation": gen})


@torch.no_grad()
def sdedit(unet, scheduler_config, x0: torch.Tensor, target_cond: torch.Tensor, negative_cond: torch.Tensor,
           steps: int = 20, strength: float = 0.6, guidance: float = 2.0, generator: torch.Generator | None = None,
           clockwork: dict | None = None, unet_kwargs: dict | None = None) -> EditResult:
    """SDEdit: noise ``x0`` to ``strength`` of the schedule and denoise it with the target prompt (DDIM)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength is the share of the schedule to re-run, in (0, 1], got {strength}")
    fwd, _ = _schedulers(scheduler_config)
    dev, dtype = unet.device, unet.dtype
    tgt_c = target_cond.to(dev, dtype)
    neg_c = negative_cond.to(dev, dtype).expand_as(tgt_c)
    do_cfg = guidance > 1.0
    record = PassRecord()
    with _clockwork_on(unet, fwd, clockwork) as hook:
        fwd.set_timesteps(steps, device=dev)
        start = steps - max(1, int(round(strength * steps)))
        timesteps = fwd.timesteps[start:]
        x0 = x0.to(dev, dtype)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else "cpu").to(dev, dtype)
        x = fwd.add_noise(x0, noise, timesteps[:1])
        _sync(dev)
        t0 = time.perf_counter()
        for t in timesteps:
            inp = torch.cat([x, x]) if do_cfg else x
            out = unet(inp, t, encoder_hidden_states=torch.cat([neg_c, tgt_c]) if do_cfg else tgt_c,
                       **(unet_kwargs or {})).sample
            _record_step(record, hook, len(inp))
            if do_cfg:
                u, c = out.chunk(2)
                out = u + guidance * (c - u)
            x = fwd.step(out, t, x, return_dict=False)[0]
        _sync(dev)
        record.seconds = time.perf_counter() - t0
    return EditResult(images=x, passes={"generation": record})


# ---- diffusers SD pipelines -------------------------------------------------------------------------------------
@torch.no_grad()
def edit_image(pipe, image, source_prompt: str, target_prompt: str, settings: PnPSettings = PnPSettings(),
               clockwork: dict | None = None, negative_prompt: str = ""):
    """Plug-and-Play edit of a PIL image (or a [-1, 1] tensor (1, 3, H, W)) with an SD 1.x / 2.x pipeline.

    Returns a PIL image. The image is encoded with the pipeline's VAE and prompts with ``pipe.encode_prompt``.
    """
    if getattr(pipe.unet.config, "addition_embed_type", None) is not None:
        raise ValueError("edit_image supports SD 1.x / 2.x pipelines (no added conditioning); for SDXL call "
                         "pnp_edit with unet_kwargs={'added_cond_kwargs': ...}")
    dev = pipe.unet.device
    x = pipe.image_processor.preprocess(image) if not torch.is_tensor(image) else image
    vae = pipe.vae
    latents = vae.encode(x.to(dev, vae.dtype)).latent_dist.mean * vae.config.scaling_factor

    def embed(prompt):
        return pipe.encode_prompt(prompt, dev, 1, False)[0]

    res = pnp_edit(pipe.unet, pipe.scheduler.config, latents, embed(source_prompt), embed(target_prompt),
                   embed(negative_prompt), settings, clockwork)
    decoded = vae.decode(res.images.to(vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


__all__ = ["EditResult", "Inversion", "PassRecord", "PnPSettings", "ddim_invert", "default_injection_layers",
           "edit_image", "injection_sites", "pnp_edit", "pnp_generate", "sdedit"]
