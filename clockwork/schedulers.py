"""Samplers by the names the paper uses, built from any diffusers scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)

SAMPLERS = {
    # name: (class, overrides)
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # diffusers refuses final_sigmas_type="zero" for first-order-ish DPM-Solver; sigma_min is its own default there
    "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver", "solver_order": 2, "final_sigmas_type": "sigma_min"}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}
# Stable Diffusion's noise schedule (SD 1.x/2.x/XL): what a random-weight UNet at real shapes samples with
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon")


def make_scheduler(name: str, config):
    """Build sampler ``name`` (one of :data:`SAMPLERS`) from a scheduler config (dict or FrozenDict)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    cls, overrides = SAMPLERS[name]
    return cls.from_config(dict(config), **overrides)
