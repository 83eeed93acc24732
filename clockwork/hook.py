"""Attach Clockwork to a UNet (or a whole diffusers pipeline) through a diffusers ``ModelHook``.

    import clockwork
    clockwork.enable(pipe, adaptor="identity", clock=2)      # or a trained adaptor / its folder
    image = pipe(prompt, num_inference_steps=8).images[0]
    clockwork.disable(pipe)                                   # the original forward, exactly

The hook replaces ``unet.forward``: per call it reads the sampler step from the pipeline's scheduler,
asks the clock, and runs either :meth:`UNetCut.full_step` or :meth:`UNetCut.adaptor_step`. Both are
stateless functions (optionally ``torch.compile``-d once each, ``fast=True``); the only state is the
previous r_out per UNet call slot, overwritten at every full step - and, for the forecast adaptor, the r_out of
the last ``order + 1`` full steps per call slot (and per evaluation of a sampler step), extrapolated to the
adaptor step outside the compiled graphs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from clockwork.adaptors import AdaptorBase, ForecastAdaptor, build_adaptor, check_compatible, load_adaptor
from clockwork.clock import Clock, loop_to_step, num_sampler_steps, scheduler_loop_index
from clockwork.cut import UNetCut

HOOK_NAME = "clockwork"


class ClockworkHook(ModelHook):
    def __init__(self, cut: UNetCut, adaptor: torch.nn.Module, clock: Clock, get_scheduler: Callable, fast: bool | str = False):
        super().__init__()
        self.cut, self.adaptor, self.clock, self.get_scheduler = cut, adaptor, clock, get_scheduler
        self._full = cut.full_step
        self._adapt = cut.adaptor_step
        self.fast = fast
        if fast:
            mode = fast if isinstance(fast, str) else None
            # dynamic=False: one static graph per input shape. Both functions are methods of UNetCut, so every
            # UNet compiled in a process shares their code objects; with automatic dynamic shapes the second
            # UNet (or batch size) would turn the graphs symbolic, and symbolic shapes cost speed (and CUDA graphs).
            self._full = torch.compile(cut.full_step, fullgraph=True, mode=mode, dynamic=False)
            self._adapt = torch.compile(cut.adaptor_step, fullgraph=True, mode=mode, dynamic=False)
        # The identity adaptor reuses r_out unchanged, so caching it after the upsampler skips that conv too. The
        # forecast adaptor's weighted sum has weights summing to 1 and the upsampler is affine, so the same holds.
        self.upsampled = bool(getattr(adaptor, "reuses_r_out", False))
        # forecast with order >= 1: extrapolate from a history of full-step r_out (order 0 is the identity path)
        self.forecast = isinstance(adaptor, ForecastAdaptor) and adaptor.cached_tensors > 1
        self._r_out: dict[int, torch.Tensor] = {}
        # forecast: (call slot, evaluation within the sampler step) -> [(sampler step, r_out)] of full steps only
        self._history: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        self._loop = -1
        self._slot = 0
        self._sub = 0  # evaluation within the sampler step (Heun: 0 and 1; PNDM's first step: 0 and 1)
        self._eval_step = None  # sampler step of the previous loop iteration
        self._timesteps = _UNSET  # the scheduler's timesteps tensor of the current generation
        self._first_step = 0
        self.trace: list[tuple[int, bool]] = []  # (sampler step, full?) of the last calls, for inspection

    def new_forward(self, module, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        if args:
            raise TypeError("Clockwork's UNet forward takes sample, timestep, encoder_hidden_states positionally; pass the rest by name")
        if kwargs.get("down_intrablock_additional_residuals") is not None:
            raise ValueError("T2I-Adapter residuals (down_intrablock_additional_residuals) are not supported by Clockwork")
        kwargs.pop("down_intrablock_additional_residuals", None)
        scheduler = self.get_scheduler()
        uses_prev = getattr(self.adaptor, "uses_r_out_prev", True)
        ts = getattr(scheduler, "timesteps", None)
        if ts is not self._timesteps:
            # set_timesteps() made a new schedule: a new generation starts. Forget the previous one's
            # r_out and count steps from the first step this generation runs (img2img-style pipelines
            # start at begin_index > 0), so its first step is always a full one.
            self._timesteps = ts
            self._r_out.clear()
            self._history.clear()
            self._loop = -1
            self._eval_step = None
            self._first_step = None
            n = num_sampler_steps(scheduler)
            if n:
                self.clock.validate(n, first_step_may_be_adaptor=not uses_prev)
        loop = scheduler_loop_index(scheduler, timestep)
        step = loop_to_step(scheduler, loop)
        if self._first_step is None:
            self._first_step = step
        step -= self._first_step
        # Several UNet calls in one loop iteration (CFG as two calls) each get their own r_out slot.
        new_eval = loop != self._loop
        self._slot = 0 if new_eval else self._slot + 1
        if new_eval:  # a sampler step with several evaluations (Heun) numbers them: each has its own forecast history
            self._sub = self._sub + 1 if step == self._eval_step else 0
            self._eval_step = step
        self._loop = loop
        full = self.clock.is_full(step)
        if not full and step == 0 and uses_prev:
            full = True
        if full:
            out, _, r_out = self._full(sample, timestep, encoder_hidden_states, upsampled=self.upsampled, **kwargs)
        else:
            prev = self._r_out.get(self._slot)
            hist = self._history.get((self._slot, self._sub)) if self.forecast else None
            if hist and hist[-1][1].shape[0] == sample.shape[0]:  # (none for this evaluation: reuse, as identity)
                prev = self.adaptor.extrapolate(hist, step)
            if uses_prev and (prev is None or prev.shape[0] != sample.shape[0]):
                raise RuntimeError(
                    f"adaptor step {step} has no r_out from a previous full step for this call "
                    "(was the scheduler's set_timesteps called before sampling?)"
                )
            out, _, r_out = self._adapt(self.adaptor, prev, sample, timestep, encoder_hidden_states,
                                        upsampled=self.upsampled, **kwargs)
        if full or not self.forecast:  # forecast keeps full steps' r_out only (an adaptor step's is the extrapolation)
            self._r_out[self._slot] = r_out = r_out.clone() if self.fast else r_out
            if self.forecast:
                hist = self._history.setdefault((self._slot, self._sub), [])
                if hist and hist[-1][1].shape != r_out.shape:
                    hist.clear()  # another batch size: start over
                if hist and hist[-1][0] == step:
                    hist.pop()  # the same step again: the latest r_out replaces it
                hist.append((step, r_out))
                del hist[:-self.adaptor.cached_tensors]
        self.trace.append((step, full))
        if len(self.trace) > 4096:
            del self.trace[:2048]
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


_UNSET = object()


def _resolve_adaptor(adaptor, cut: UNetCut, device, dtype) -> torch.nn.Module:
    if isinstance(adaptor, str) and not Path(adaptor).exists():
        adaptor = build_adaptor(adaptor, cut)
    elif isinstance(adaptor, (str, Path)):
        adaptor = load_adaptor(adaptor)
    if not isinstance(adaptor, torch.nn.Module):
        raise ValueError(f"adaptor must be a name ('identity', 'forecast', 'resnet', ...), a saved adaptor folder or an nn.Module, got {type(adaptor).__name__}")
    check_compatible(adaptor, cut.signature())
    first = next(adaptor.parameters(), None)
    if first is not None and first.dtype != dtype:
        adaptor = adaptor.to(dtype=dtype)
    return adaptor.to(device=device).eval()


def enable(
    pipe_or_unet,
    adaptor: str | Path | torch.nn.Module = "identity",
    clock: int | Clock = 2,
    cut: int = 1,
    scheduler=None,
    fast: bool | str = False,
) -> ClockworkHook:
    """Turn Clockwork on for a diffusers pipeline (anything with ``.unet`` and ``.scheduler``) or a bare UNet.

    For a bare UNet pass the ``scheduler`` the sampling loop uses. ``fast=True`` compiles the full and
    the adaptor step as two static graphs (``fast="reduce-overhead"`` adds CUDA graphs).
    """
    if hasattr(pipe_or_unet, "unet"):
        unet = pipe_or_unet.unet
        pipe_ref = weakref.ref(pipe_or_unet)
        get_scheduler = (lambda: scheduler) if scheduler is not None else (lambda: pipe_ref().scheduler)
    else:
        unet = pipe_or_unet
        if scheduler is None:
            raise ValueError("enable(unet, ...) needs scheduler=<the scheduler of your sampling loop> to read the step from")
        get_scheduler = lambda: scheduler  # noqa: E731
    clock = clock if isinstance(clock, Clock) else Clock(clock)
    ucut = UNetCut(unet, cut)
    adaptor = _resolve_adaptor(adaptor, ucut, unet.device, unet.dtype)
    if clock.adaptor_steps is not None and 0 in clock.adaptor_steps and getattr(adaptor, "uses_r_out_prev", True):
        raise ValueError(
            "step 0 cannot be an adaptor step for an adaptor that uses r_out(t+1): there is no previous step yet "
            f"(got adaptor_steps={sorted(clock.adaptor_steps)}; allowed: steps >= 1, or an adaptor whose inputs "
            "do not include 'r_out_prev')"
        )
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME)
    hook = ClockworkHook(ucut, adaptor, clock, get_scheduler, fast=fast)
    registry.register_hook(hook, HOOK_NAME)
    return hook


def disable(pipe_or_unet) -> None:
    """Remove Clockwork; the UNet's original forward is restored."""
    unet = pipe_or_unet.unet if hasattr(pipe_or_unet, "unet") else pipe_or_unet
    registry = HookRegistry.check_if_exists_or_initialize(unet)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME)


def get_hook(pipe_or_unet) -> ClockworkHook | None:
    unet = pipe_or_unet.unet if hasattr(pipe_or_unet, "unet") else pipe_or_unet
    return HookRegistry.check_if_exists_or_initialize(unet).get_hook(HOOK_NAME)


__all__ = ["enable", "disable", "get_hook", "ClockworkHook", "AdaptorBase"]
