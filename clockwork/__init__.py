"""Clockwork Diffusion for diffusers UNets: cut, adaptors, clock, trajectory distillation, FLOPs, metrics.

Quick start::

    import clockwork
    clockwork.enable(pipe, adaptor="identity", clock=2)   # or "forecast", or a trained adaptor folder
    images = pipe(prompt, num_inference_steps=8).images
    clockwork.disable(pipe)
"""

from clockwork.adaptors import (ADAPTORS, ForecastAdaptor, IdentityAdaptor, ResNetAdaptor, UNetLightAdaptor, build_adaptor,
                                load_adaptor)
from clockwork.clock import Clock, sampler_step
from clockwork.cut import UNetCut, valid_cuts
from clockwork.hook import ClockworkHook, disable, enable, get_hook

__version__ = "0.1.0"
__all__ = [
    "ADAPTORS", "Clock", "ClockworkHook", "ForecastAdaptor", "IdentityAdaptor", "ResNetAdaptor", "UNetCut",
    "UNetLightAdaptor", "build_adaptor", "disable", "enable", "get_hook", "load_adaptor", "sampler_step", "valid_cuts",
]
