"""Choose Clockwork's adaptor steps for every budget: the Clockwork front, from a calibration run.

A schedule is the set of 0-based sampler steps on which the adaptor replaces the low-resolution UNet; its budget is
how many there are (each saves the same FLOPs, so the budget fixes the GFLOPs). :func:`search_schedules` takes any
``score(schedule) -> float`` (lower is better) and returns the best schedule per budget: exhaustive while a budget
has at most ``exhaustive_limit`` candidates, greedy beyond (the best schedule one step smaller, plus the step that
scores best). :func:`sample_change_scorer` is the training-free score: how far Clockwork's final latents move from
the full UNet's, on calibration prompts and noise (use validation prompts, never the evaluation ones).

    score = sample_change_scorer(unet, scheduler, embeds, negative, adaptor=adaptor, cut=1, steps=8, guidance=7.5)
    front = search_schedules(score, num_steps=8)          # [ScheduleChoice(budget=1, ...), ..., budget=7]
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from clockwork.clock import Clock


@dataclass(frozen=True)
class ScheduleChoice:
    """The best schedule found for one budget."""

    budget: int  # adaptor steps
    adaptor_steps: tuple[int, ...]
    score: float
    method: str  # "exhaustive" | "greedy"
    candidates: int  # schedules scored for this budget
    ranking: tuple[tuple[tuple[int, ...], float], ...] = ()  # every candidate of this budget and its score, best first


def _check(num_steps: int, budgets, allowed) -> tuple[tuple[int, ...], list[int]]:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2 (step 0 always runs the full UNet), got {num_steps!r}")
    steps = tuple(range(1, num_steps)) if allowed is None else tuple(sorted(set(int(s) for s in allowed)))
    bad = [s for s in steps if not 1 <= s < num_steps]
    if not steps or bad:
        raise ValueError(f"allowed adaptor steps must lie in 1..{num_steps - 1} (step 0 has no previous r_out), got "
                         f"{sorted(bad) if bad else 'none'}")
    wanted = list(range(1, len(steps) + 1)) if budgets is None else sorted(set(budgets))
    wrong = [b for b in wanted if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= len(steps)]
    if not wanted or wrong:
        raise ValueError(f"budget must be a number of adaptor steps in 1..{len(steps)} (the allowed steps "
                         f"{list(steps)}), got {wrong or 'none'}")
    return steps, wanted


def search_schedules(score: Callable[[tuple[int, ...]], float], num_steps: int, budgets: Sequence[int] | None = None,
                     *, allowed: Sequence[int] | None = None, exhaustive_limit: int = 256) -> list[ScheduleChoice]:
    """The best schedule for each budget in ``budgets`` (default: every budget 1 .. len(allowed)), lowest score first
    within a budget, ties broken by the earlier steps. ``allowed`` restricts the steps the adaptor may take
    (default 1 .. num_steps - 1; never step 0). Every schedule is scored once (``score`` may be costly)."""
    steps, wanted = _check(num_steps, budgets, allowed)
    seen: dict[tuple[int, ...], float] = {}

    def scored(s: tuple[int, ...]) -> float:
        if s not in seen:
            seen[s] = float(score(s))
        return seen[s]

    best: dict[int, ScheduleChoice] = {}

    def best_for(k: int) -> ScheduleChoice:  # a budget nobody asked for is searched only when greedy grows from it
        if k not in best:
            if math.comb(len(steps), k) <= exhaustive_limit:
                cands, method = list(itertools.combinations(steps, k)), "exhaustive"
            else:  # grow the best schedule one step smaller by its best next step
                base = best_for(k - 1).adaptor_steps if k > 1 else ()
                cands, method = [tuple(sorted(base + (s,))) for s in steps if s not in base], "greedy"
            ranked = sorted(cands, key=lambda s: (scored(s), s))
            best[k] = ScheduleChoice(k, ranked[0], seen[ranked[0]], method, len(cands),
                                     tuple((s, seen[s]) for s in ranked))
        return best[k]

    return [best_for(k) for k in wanted]


def sample_change_scorer(unet, scheduler, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor, *, adaptor,
                         cut: int = 1, steps: int, guidance: float, seed: int = 0, added_cond_kwargs=None,
                         latent_size: int | None = None) -> Callable[[tuple[int, ...]], float]:
    """``score(schedule)``: the mean squared difference between Clockwork's final latents with that schedule and the
    full UNet's, over the calibration prompts (one batch, CFG, fixed noise from ``seed``). The full UNet's latents are
    computed once here; each call samples once with ``clockwork.enable(unet, adaptor, Clock(adaptor_steps=...))`` and
    removes the hook again. ``added_cond_kwargs``: SDXL's, already in CFG order (negative rows first)."""
    from clockwork.hook import disable, enable, get_hook

    if get_hook(unet) is not None:
        raise ValueError("this UNet already carries the Clockwork hook: disable(unet) first (the scorer needs the full "
                         "UNet as the reference)")
    from clockwork.sensitivity import sampling_loop

    dev, dtype = unet.device, unet.dtype
    cond, uncond = prompt_embeds.to(dev, dtype), negative_embeds.to(dev, dtype)
    size = latent_size or unet.config.sample_size
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((cond.shape[0], unet.config.in_channels, size, size), generator=gen).to(dev, dtype)
    sched = copy.deepcopy(scheduler)
    kw = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}

    @torch.no_grad()
    def final_latents() -> torch.Tensor:  # the UNet as it is now: with or without the Clockwork hook
        sched.set_timesteps(steps, device=dev)
        return sampling_loop(sched, noise * sched.init_noise_sigma, cond, uncond, guidance,
                             lambda k, x, t, ctx: unet(x, t, encoder_hidden_states=ctx, **kw).sample).float()

    reference = final_latents()

    def score(schedule: tuple[int, ...]) -> float:
        if not schedule:
            return 0.0
        enable(unet, adaptor, Clock(adaptor_steps=schedule), cut=cut, scheduler=sched)
        try:
            out = final_latents()
        finally:
            disable(unet)
        return float(((out - reference) ** 2).mean())

    return score


def plot_front(result: dict, path) -> "Path":
    """The Clockwork front of ``clockwork schedule``'s JSON: score (log) against the GFLOPs ratio, one point per
    budget, labelled with its adaptor steps."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, meta = result["front"], result["meta"]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    xs, ys = [r["gflops_ratio"] for r in rows], [max(r["score"], 1e-12) for r in rows]
    ax.plot(xs, ys, "o-", color="C0", ms=4)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate("{" + ",".join(map(str, r["adaptor_steps"])) + "}", (x, y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs / full UNet's")
    ax.set_ylabel("change of the final sample (MSE)")
    ax.set_title(f"{meta['source']}: {meta['adaptor']} adaptor, cut {meta['cut']}, {meta['sampler']} {meta['steps']} "
                 f"steps, n={meta['n']}", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["ScheduleChoice", "plot_front", "sample_change_scorer", "search_schedules"]
