"""The clock: which sampler steps run the full UNet and which run the adaptor.

Steps are 0-based sampler steps: ``Clock(2)`` over 8 steps runs the full UNet at 0, 2, 4, 6 and the
adaptor at 1, 3, 5, 7 (the paper's 1-based "adaptor at steps 2, 4, 6, 8"). The first step is
always full unless the adaptor does not look at r_out(t+1).

The step index is read from the scheduler's own state (its ``step_index`` / PNDM's ``counter``),
which ``set_timesteps`` resets at the start of every generation - so there is no hidden state to
reset, and classifier-free guidance done as one batch or as two UNet calls, and second-order
samplers (Heun: two model evaluations per step), all get the same decision per sampler step.
"""

from __future__ import annotations

from collections.abc import Iterable


class Clock:
    def __init__(self, period: int = 2, adaptor_steps: Iterable[int] | None = None):
        if adaptor_steps is not None:
            steps = sorted(set(int(s) for s in adaptor_steps))
            if any(s < 0 for s in steps):
                raise ValueError(f"adaptor_steps are 0-based sampler step indices >= 0, got {steps}")
            self.period = None
            self.adaptor_steps: frozenset[int] | None = frozenset(steps)
        else:
            if not isinstance(period, int) or isinstance(period, bool) or period < 1:
                raise ValueError(f"clock period must be an integer >= 1 (1 = never use the adaptor), got {period!r}")
            self.period = period
            self.adaptor_steps = None

    def __repr__(self) -> str:
        if self.adaptor_steps is not None:
            return f"Clock(adaptor_steps={sorted(self.adaptor_steps)})"
        return f"Clock({self.period})"

    def is_full(self, step: int) -> bool:
        if self.adaptor_steps is not None:
            return step not in self.adaptor_steps
        return step % self.period == 0

    def schedule(self, num_steps: int) -> list[bool]:
        """``True`` where the full UNet runs, for a sampler of ``num_steps`` steps."""
        self.validate(num_steps)
        return [self.is_full(i) for i in range(num_steps)]

    def validate(self, num_steps: int, first_step_may_be_adaptor: bool = False) -> None:
        if self.adaptor_steps is not None:
            outside = sorted(s for s in self.adaptor_steps if s >= num_steps)
            if outside:
                raise ValueError(
                    f"adaptor steps {outside} are outside the schedule of {num_steps} steps (allowed: 0..{num_steps - 1})"
                )
            if 0 in self.adaptor_steps and not first_step_may_be_adaptor:
                raise ValueError("step 0 cannot be an adaptor step: there is no r_out(t+1) yet (allowed: 1.."
                                 f"{num_steps - 1}), unless the adaptor does not use r_out_prev")


def _is_pndm(scheduler) -> bool:
    return hasattr(scheduler, "counter") and hasattr(scheduler, "ets")


def scheduler_loop_index(scheduler, timestep=None) -> int:
    """Index of the current iteration of the denoising loop, read from the scheduler's state."""
    if _is_pndm(scheduler):  # PNDM counts its own steps
        return int(scheduler.counter)
    idx = getattr(scheduler, "step_index", None)
    if idx is not None:
        return int(idx)
    if hasattr(scheduler, "_step_index"):
        # Schedulers with step_index start at None before the first step; their first step() then starts
        # at begin_index (set by img2img-style pipelines that skip the first steps), else at 0.
        begin = getattr(scheduler, "begin_index", None)
        return int(begin) if begin is not None else 0
    # Schedulers without step state (DDIM, DDPM, LCM...): find the timestep in the schedule.
    ts = scheduler.timesteps
    t = timestep.flatten()[0] if hasattr(timestep, "flatten") else timestep
    matches = (ts == t).nonzero().flatten()
    if len(matches) == 0:
        raise ValueError(f"timestep {t} is not in the scheduler's timesteps; call set_timesteps first")
    return int(matches[0])


def loop_to_step(scheduler, i: int) -> int:
    """Map a denoising-loop iteration to its 0-based sampler step (see :func:`sampler_step`)."""
    if _is_pndm(scheduler):
        prk = getattr(scheduler, "prk_timesteps", None)
        n_prk = 0 if scheduler.config.get("skip_prk_steps", True) or prk is None else len(prk)
        if n_prk:  # Runge-Kutta warm-up: 4 evaluations per step, then one per PLMS step
            return i // 4 if i < n_prk else i - n_prk + n_prk // 4
        return max(i - 1, 0)  # PLMS: counters 0 and 1 both belong to the first step
    if getattr(scheduler, "order", 1) == 2 and hasattr(scheduler, "state_in_first_order"):
        return i // 2
    return i


def adaptor_loop_indices(scheduler, num_steps: int, clock: "Clock", uses_r_out_prev: bool = True) -> list[int]:
    """Loop iterations (model evaluations) that run the adaptor for ``num_steps`` sampler steps.

    Mirrors :class:`clockwork.hook.ClockworkHook`'s decision per call. Sampler step 0 runs the adaptor only when
    the adaptor does not read r_out(t+1) (``uses_r_out_prev=False``): there is no previous r_out yet. Calls
    ``scheduler.set_timesteps(num_steps)``.
    """
    scheduler.set_timesteps(num_steps)
    clock.validate(num_steps, first_step_may_be_adaptor=not uses_r_out_prev)
    out = []
    for i in range(len(scheduler.timesteps)):
        s = loop_to_step(scheduler, i)
        if not clock.is_full(s) and not (s == 0 and uses_r_out_prev):
            out.append(i)
    return out


def sampler_step(scheduler, timestep=None) -> int:
    """The 0-based *sampler* step of the current model evaluation.

    First-order and multistep samplers evaluate once per step. Heun / KDPM2 (``order == 2``) evaluate
    twice: loop iterations 2k and 2k+1 belong to step k. PNDM (PLMS) evaluates twice in its first
    step (counters 0 and 1), then once per step; with Runge-Kutta warm-up (``skip_prk_steps=False``)
    its first three steps take four evaluations each.
    """
    return loop_to_step(scheduler, scheduler_loop_index(scheduler, timestep))


def num_sampler_steps(scheduler) -> int | None:
    return getattr(scheduler, "num_inference_steps", None)
