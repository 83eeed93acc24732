"""A method (:class:`MethodSpec`: a plain baseline or Clockwork with an adaptor) and what follows from it alone:
which loop iterations run the adaptor, the adaptor's architecture and size, GFLOPs per image."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.common.io import obj_sha
from pipeline.config_sections import TRAINING_FREE
from pipeline.common.world import make_sampler


def adaptor_loop_indices(scheduler, steps: int, clock, uses_r_out_prev: bool = True) -> list[int]:
    """Loop iterations (UNet evaluations) that run the adaptor; step 0 only when r_out(t+1) is not used.

    :func:`clockwork.clock.adaptor_loop_indices`, which mirrors :class:`clockwork.hook.ClockworkHook`'s decision per call.
    """
    from clockwork.clock import adaptor_loop_indices as loops

    return loops(scheduler, steps, clock, uses_r_out_prev)


# Adaptors without training or parameters: identity (DeepCache's cache: reuse the last r_out) and forecast
# (clockwork.adaptors.ForecastAdaptor at its default order 1: linear extrapolation of the last two full steps' r_out).
# The order is not part of a spec: "forecast" always means order 1.
# TRAINING_FREE (pipeline.config_sections) names them.


@dataclass(frozen=True)
class MethodSpec:
    """One way to sample: a plain baseline (``adaptor="none"``) or Clockwork with an adaptor."""

    sampler: str = "dpm++"
    steps: int = 8
    guidance: float = 2.0
    adaptor: str = "none"  # none | identity | forecast | resnet | unet-light
    clock: int = 1  # period; ignored when adaptor_steps is given
    adaptor_steps: tuple[int, ...] | None = None
    cut: int = 1
    width: int = 128
    depth: int = 2
    inputs: tuple[str, ...] = ("r_in", "r_out_prev", "time", "text")
    training: str = "unrolled"  # unrolled | forward_noised | none
    train: tuple[tuple[str, Any], ...] = ()  # distillation overrides of a lever row, sorted (key, value) pairs

    @classmethod
    def from_params(cls, p, schedule=None) -> "MethodSpec":
        """The method params.yaml describes (sampling, adaptor, clock, cut): what the distill stage trains. With
        ``clock.adaptor_steps: auto`` its adaptor steps are ``schedule`` (what the distill stage chose:
        pipeline.common.fronts.read_schedule), or every step 1..steps-1 while none is given (the all-steps training)."""
        steps = p.clock.adaptor_steps
        if steps == "auto":
            steps = schedule if schedule is not None else range(1, p.sampling.steps)
        return cls(sampler=p.sampling.sampler, steps=p.sampling.steps, guidance=p.sampling.guidance,
                   adaptor=p.adaptor.kind, clock=p.clock.period,
                   adaptor_steps=tuple(steps) if steps is not None else None,
                   cut=p.cut, width=p.adaptor.width, depth=p.adaptor.depth, inputs=tuple(p.adaptor.inputs))

    @property
    def train_overrides(self) -> dict[str, Any]:
        return dict(self.train)

    @property
    def is_baseline(self) -> bool:
        return self.adaptor == "none"

    @property
    def needs_training(self) -> bool:
        return self.adaptor != "none" and self.adaptor not in TRAINING_FREE

    def normalized(self) -> "MethodSpec":
        """Fields that do not matter for this kind set to fixed values, so equal methods hash equal."""
        if self.is_baseline:
            return MethodSpec(self.sampler, self.steps, self.guidance, "none", 1, None, 0, 0, 0, (), "none", ())
        if self.adaptor in TRAINING_FREE:
            return dataclasses.replace(self, width=0, depth=0, inputs=("r_out_prev",), training="none", train=())
        return self

    def clock_obj(self):
        from clockwork.clock import Clock

        return Clock(adaptor_steps=self.adaptor_steps) if self.adaptor_steps is not None else Clock(self.clock)

    @property
    def uses_r_out_prev(self) -> bool:
        return "r_out_prev" in self.inputs or self.adaptor in TRAINING_FREE

    def clock_repr(self):
        if self.is_baseline:
            return 1
        return list(self.adaptor_steps) if self.adaptor_steps is not None else self.clock

    def adaptor_kwargs(self) -> dict:
        if self.adaptor == "none" or self.adaptor in TRAINING_FREE:
            return {}
        return {"width": self.width, "depth": self.depth, "inputs": tuple(self.inputs)}

    def key(self) -> str:
        return obj_sha(dataclasses.asdict(self.normalized()))

    def describe(self) -> dict:
        n = self.normalized()
        return {"sampler": n.sampler, "steps": n.steps, "clock": n.clock_repr(), "cut": None if n.is_baseline else n.cut,
                "adaptor": n.adaptor, "inputs": list(n.inputs), "training": n.training, **({"train": dict(n.train)} if n.train else {})}

    def flat(self) -> dict:
        """Flat dotted params for MLflow."""
        d = self.describe()
        return {"sampler": d["sampler"], "steps": d["steps"], "clock.period": self.clock if self.adaptor_steps is None else "",
                "clock.adaptor_steps": "" if self.adaptor_steps is None else list(self.adaptor_steps),
                "cut": d["cut"], "adaptor.kind": d["adaptor"], "adaptor.width": self.width if self.needs_training else 0,
                "adaptor.depth": self.depth if self.needs_training else 0, "adaptor.inputs": ",".join(d["inputs"]),
                "training": d["training"], "guidance": self.guidance}


def cut_signature(unet_config: dict, cut: int) -> dict:
    from clockwork.cut import UNetCut
    from clockwork.flops import meta_unet

    return UNetCut(meta_unet(unet_config), cut).signature()


def build_adaptor_for(spec: MethodSpec, unet_config: dict):
    from clockwork.adaptors import build_adaptor

    torch.manual_seed(0)
    return build_adaptor(spec.adaptor, cut_signature(unet_config, spec.cut), **spec.adaptor_kwargs())


def adaptor_params(adaptor) -> int:
    return 0 if adaptor is None else sum(p.numel() for p in adaptor.parameters())


_STEP_FLOPS: dict[str, dict] = {}


def method_gflops(unet_config: dict, spec: MethodSpec, scheduler_config: dict, seq_len: int) -> float:
    """Total GFLOPs per image (CFG = batch 2) of the sampling loop, counted per UNet evaluation.

    Per-evaluation costs come from :func:`clockwork.flops.clockwork_flops` (FlopCounterMode on the meta
    device); the number of full and adaptor evaluations from the sampler's own loop (PNDM evaluates
    steps+1 times) and the clock, as the hook decides them.
    """
    from clockwork.clock import Clock
    from clockwork.flops import clockwork_flops

    adaptor = "identity" if spec.is_baseline else spec.adaptor
    cut = spec.cut if not spec.is_baseline else 1
    key = obj_sha([unet_config, adaptor, cut, spec.adaptor_kwargs(), seq_len])
    if key not in _STEP_FLOPS:
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.adaptor_kwargs().items()}
        _STEP_FLOPS[key] = clockwork_flops(unet_config, steps=2, clock=Clock(2), cut=cut, adaptor=adaptor, batch=2,
                                           seq_len=seq_len, adaptor_kwargs=kw)
    f = _STEP_FLOPS[key]
    sched = make_sampler(spec.sampler, scheduler_config)
    sched.set_timesteps(spec.steps)
    n_loops = len(sched.timesteps)
    n_adapt = 0 if spec.is_baseline else len(adaptor_loop_indices(sched, spec.steps, spec.clock_obj(), spec.uses_r_out_prev))
    return round((n_loops - n_adapt) * f["full_step_gflops"] + n_adapt * f["adaptor_step_gflops"], 4)
