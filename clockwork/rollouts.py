"""Clockwork's own rollouts: distillation data on the states Clockwork visits (DAgger-style).

Plain distillation is teacher-forced on the teacher's own trajectories (:mod:`clockwork.trajectories`):
at an adaptor step i the adaptor sees the teacher's r_in(x_i) and r_out(x_{i-1}) and learns the teacher's
r_out(x_i), all at the teacher's states x. When sampling, Clockwork's states drift from the teacher's
(every adaptor error moves x, and the next steps start from there), so the adaptor meets inputs it never
trained on. Here the sampler is unrolled *with the current adaptor in the loop*, exactly as
:func:`clockwork.enable` samples (full UNet on full steps, :meth:`UNetCut.adaptor_step` on adaptor steps,
the clock decided per sampler step from the scheduler's state as :class:`~clockwork.hook.ClockworkHook`
does), and every loop iteration i records, at Clockwork's own state x_i:

- ``r_in``: r_in(x_i) (the high-res part is the teacher's, so it is what the adaptor step saw);
- ``r_out``: the *teacher's* r_out(x_i), the target (on adaptor steps the full UNet runs once more at x_i,
  only for this record; it does not change the trajectory);
- ``r_out_used``: the r_out Clockwork used at step i (the teacher's on full steps, the adaptor's
  prediction on adaptor steps): the right ``r_out_prev`` input for step i+1;
- ``full`` (S,) bool: which iterations ran the full UNet; ``latents``, ``temb``, ``text``, ``timesteps`` as
  :func:`clockwork.trajectories.unroll_batch` records them.

Layout (:func:`unroll_clockwork`) as ``TrajectoryStore(root).load(cut)``: per-step tensors (S, rows, ...)
with each batch's unconditional rows then its conditional rows (CFG as one batch), ``text`` (rows, D),
``temb`` (S, D), ``timesteps`` (S,), plus ``prompt`` (rows,) as ``pipeline.common.row_prompts`` gives and
``latents`` (S+1, prompts, ...) per prompt (both CFG halves share x; ``traj["latents"][:-1, traj["prompt"]]``
gives x_i per row, (S, rows, ...)). Records are fp16 on the CPU.
A training pair for adaptor iteration i is (r_in[i], r_out_used[i-1], temb[i], text) -> r_out[i].

Cost: a full step costs what it costs in :func:`~clockwork.trajectories.unroll_batch` (one UNet pass);
an adaptor step costs one full UNet pass (the target) plus a Clockwork adaptor step (high-res part +
adaptor). With clock 2, a rollout costs about 1 + (adaptor-step cost / full-step cost) / 2 of a teacher
unroll. A rollout is only valid for the adaptor weights it was made with; re-roll after training on it.
"""

from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm

from clockwork.adaptors import check_compatible
from clockwork.clock import Clock, loop_to_step, num_sampler_steps, scheduler_loop_index
from clockwork.cut import UNetCut
from clockwork.precision import stack_recorded
from clockwork.trajectories import _time_embedding

PER_STEP = ("r_in", "r_out", "r_out_used")  # (S, rows, ...) records


def _prepare_adaptor(adaptor: torch.nn.Module, ucut: UNetCut, device, dtype) -> torch.nn.Module:
    """The adaptor on the UNet's device/dtype; a copy when it has to move, so a training adaptor stays put."""
    check_compatible(adaptor, ucut.signature())
    first = next(adaptor.parameters(), None)
    if first is not None and (first.dtype != dtype or first.device != torch.device(device)):
        adaptor = copy.deepcopy(adaptor).to(device=device, dtype=dtype)
    return adaptor


@torch.no_grad()
def unroll_clockwork_batch(
    unet,
    adaptor: torch.nn.Module,
    cut: int,
    clock: Clock | int,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    record_dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Sample ``len(prompt_embeds)`` trajectories with Clockwork (batch CFG); record teacher targets along them.

    Same noise, scheduler calls and CFG arithmetic as :func:`clockwork.trajectories.unroll_batch`; the UNet
    calls are those of ``clockwork.enable(unet, adaptor, clock, cut)``. Returns ``r_in``/``r_out``/``r_out_used``
    (S, 2B, C, h, w), ``full`` (S,), ``latents`` (S+1, B, ...), ``temb`` (S, D), ``text`` (2B, D), ``timesteps`` (S,).
    """
    clock = clock if isinstance(clock, Clock) else Clock(clock)
    dev, dtype = unet.device, unet.dtype
    view = UNetCut(unet, cut)
    adaptor = _prepare_adaptor(adaptor, view, dev, dtype)
    uses_prev = getattr(adaptor, "uses_r_out_prev", True)
    if clock.adaptor_steps is not None and 0 in clock.adaptor_steps and uses_prev:
        raise ValueError("step 0 cannot be an adaptor step for an adaptor that uses r_out(t+1): there is no previous "
                         f"step yet (got adaptor_steps={sorted(clock.adaptor_steps)})")
    b = prompt_embeds.shape[0]
    ctx = torch.cat([negative_embeds.to(dev, dtype).expand_as(prompt_embeds), prompt_embeds.to(dev, dtype)])
    shape = (b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(dev, dtype)
    scheduler.set_timesteps(steps, device=dev)
    n = num_sampler_steps(scheduler)
    if n:
        clock.validate(n, first_step_may_be_adaptor=not uses_prev)
    latents = latents * scheduler.init_noise_sigma
    keep = lambda x: x.to("cpu", record_dtype)  # noqa: E731
    rec: dict[str, list] = {"latents": [], "temb": [], "full": [], **{k: [] for k in PER_STEP}}
    was_training = adaptor.training
    adaptor.eval()
    prev = None  # the r_out Clockwork used at the previous model evaluation (the hook's cached r_out)
    first_step = None
    try:
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            rec["latents"].append(keep(latents))
            # The clock's decision, read from the scheduler's state exactly as ClockworkHook.new_forward does.
            step = loop_to_step(scheduler, scheduler_loop_index(scheduler, t))
            first_step = step if first_step is None else first_step
            step -= first_step
            full = clock.is_full(step) or (step == 0 and uses_prev)
            if full:
                out, r_in, r_out = view.full_step(x, t, ctx)
                used = r_out
            else:
                if uses_prev and prev is None:
                    raise RuntimeError(f"adaptor step {step} has no r_out from a previous full step")
                out, r_in, used = view.adaptor_step(adaptor, prev, x, t, ctx)
                _, _, r_out = view.full_step(x, t, ctx)  # the teacher's target at Clockwork's own state
            prev = used
            rec["r_in"].append(keep(r_in))
            rec["r_out"].append(keep(r_out))
            rec["r_out_used"].append(keep(used))
            rec["full"].append(bool(full))
            rec["temb"].append(keep(_time_embedding(unet, x, t)[:1]))
            u, c_ = out.chunk(2)
            latents = scheduler.step(u + guidance * (c_ - u), t, latents, return_dict=False)[0]
    finally:
        adaptor.train(was_training)
    rec["latents"].append(keep(latents))
    res = stack_recorded({k: v for k, v in rec.items() if k != "full"}, dev)
    res["full"] = torch.tensor(rec["full"], dtype=torch.bool)
    res["temb"] = res["temb"][:, 0]
    res["text"] = keep(ctx.mean(dim=1))
    res["timesteps"] = scheduler.timesteps.detach().cpu().to(torch.float32)
    return res


def unroll_clockwork(
    unet,
    adaptor: torch.nn.Module,
    cut: int,
    clock: Clock | int,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    steps: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Clockwork rollouts of every prompt, in batches, in ``TrajectoryStore(root).load(cut)``'s layout.

    Batch i uses the noise of shard i of ``unroll_to_store(..., seed=seed, shard_size=batch_size)``, so with
    clock 1 (or an exact adaptor) the rollouts are that store's trajectories. Adds ``prompt`` (rows,): the prompt
    index of every row (each batch: its prompts' unconditional rows, then their conditional rows).
    """
    n = prompt_embeds.shape[0]
    if n == 0:
        raise ValueError("no prompts to unroll")
    parts, prompt = [], []
    for i in tqdm(range(-(-n // batch_size)), desc="clockwork rollouts", unit="batch", disable=not progress):
        gen = torch.Generator(device="cpu").manual_seed(seed * 100_003 + i)
        parts.append(unroll_clockwork_batch(unet, adaptor, cut, clock, scheduler,
                                            prompt_embeds[i * batch_size:(i + 1) * batch_size], negative_embeds,
                                            steps, guidance, gen))
        base = torch.arange(i * batch_size, min((i + 1) * batch_size, n))
        prompt += [base, base]
    out = stack_recorded({k: [p[k] for p in parts] for k in (*PER_STEP, "latents")}, prompt_embeds.device, dim=1, cat=True)
    out.update(stack_recorded({"text": [p["text"] for p in parts], "prompt": prompt}, prompt_embeds.device, cat=True))
    for k in ("temb", "timesteps", "full"):
        out[k] = parts[0][k]
    return out


__all__ = ["unroll_clockwork_batch", "unroll_clockwork"]
