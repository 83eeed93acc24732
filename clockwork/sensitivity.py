"""Where can Clockwork pay? The paper's Fig. 2 as a measurement on your own UNet.

Clockwork replaces the low-resolution part of the UNet (everything below a cut, see
:class:`clockwork.cut.UNetCut`) on some sampler steps by something cheap. That only works where the final
sample does not care much about that part's output ``r_out``. This module measures how much it cares, per
level (every cut of :func:`clockwork.cut.valid_cuts`) and per sampler step:

1. Sample from fixed noise with classifier-free guidance, the UNet called through ``UNetCut.full_step``
   (bitwise equal to ``unet(...)``): the reference ``x_ref`` (final latents, unclamped).
2. Rerun with ``r_out`` changed on the steps from ``start`` on and measure, per image,
   ``rel_l2 = ||x - x_ref|| / ||x_ref||``; rows report its mean, std and ``n`` over the images.
   Modes (the changed r_out goes through ``UNetCut.adaptor_step``, the UNet itself is never modified):

   - ``noise``: ``r_out + alpha * std(r_out) * eps`` on every step >= start (std per image over C, H, W;
     ``eps`` seeded per (seed, cut, step), the same for every alpha) - the paper's Fig. 2;
   - ``reuse``: the previous step's r_out on every step >= start - exactly the identity adaptor with
     adaptor steps ``start .. steps-1`` (``clockwork.enable(..., adaptor="identity", clock=Clock(adaptor_steps=...))``);
   - ``reuse_once``: the identity adaptor at step ``start`` only (what clock 2 does at that step).

The steps before ``start`` equal the reference's, so each run resumes from a snapshot of the reference
(latents + a deep copy of the scheduler). Start steps are 0-based loop indices over
``scheduler.timesteps`` (the sampler step for first-order and multistep samplers). An optional
``score(final_latents) -> float`` (e.g. FID) is called on the reference first, then on every row in order.

    from clockwork.sensitivity import sensitivity, plot_sensitivity
    res = sensitivity(unet, scheduler, cond, uncond, steps=8, guidance=2.0, seed=0)   # token states (N, L, D), (1, L, D)
    plot_sensitivity(res, "sensitivity.png")

Command line: ``clockwork sensitivity --n 16 --out DIR`` (the embedded teacher) or ``clockwork sensitivity
--unet-config sd15 --sample-size 16 --n 2 --steps 4 --out DIR`` (random weights: shapes and FLOPs only);
both write DIR/sensitivity.json and DIR/sensitivity.png (their inputs: :mod:`clockwork.cli_inputs`). Read the plot as: the lower a cut's curve, the less
the final image depends on that level, the more an adaptor (or plain reuse) there can save without harm;
where ``reuse`` jumps, those steps want the full UNet.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clockwork.adaptors import IdentityAdaptor
from clockwork.cut import UNetCut, valid_cuts

MODES = ("noise", "reuse", "reuse_once")
_IDENTITY = IdentityAdaptor()


def _eps(shape, seed: int, cut: int, step: int, like: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 1000 * int(cut) + int(step))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device, like.dtype)


class _Forward:
    """The UNet call of one run: ``full_step`` before ``start``, the perturbed r_out from there on."""

    def __init__(self, ucut: UNetCut, mode: str = "none", alpha: float = 0.0, start: int = 0, seed: int = 0,
                 r_prev: torch.Tensor | None = None, record: list | None = None, kwargs: dict | None = None):
        self.ucut, self.mode, self.alpha, self.start, self.seed, self.r_prev, self.record = \
            ucut, mode, alpha, start, seed, r_prev, record
        self.kw = kwargs or {}

    def __call__(self, k: int, x, t, ehs):
        active = self.mode != "none" and (k == self.start if self.mode == "reuse_once" else k >= self.start)
        if not active or self.mode == "noise":
            out, _, r_out = self.ucut.full_step(x, t, ehs, **self.kw)
        if active and self.mode == "noise":
            std = r_out.flatten(1).std(dim=1).view(-1, *[1] * (r_out.ndim - 1))
            noisy = r_out + self.alpha * std * _eps(r_out.shape, self.seed, self.ucut.cut, k, r_out)
            out, _, r_out = self.ucut.adaptor_step(_IDENTITY, noisy, x, t, ehs, **self.kw)
        elif active:  # reuse / reuse_once: the identity adaptor on r_out(t+1)
            out, _, r_out = self.ucut.adaptor_step(_IDENTITY, self.r_prev, x, t, ehs, **self.kw)
        self.r_prev = r_out
        if self.record is not None:
            self.record.append(r_out)
        return out


def sampling_loop(scheduler, latents, cond, uncond, guidance: float, fwd, start: int = 0,
                  snapshots: list | None = None):
    """The sampling loop of :class:`clockwork.embedded.pipeline.EmbeddedPipeline` (and diffusers') from loop index
    ``start``; ``fwd(k, x, t, ctx)`` is the model call of loop iteration k (batch CFG when ``guidance`` > 1)."""
    do_cfg = guidance > 1.0
    ctx = torch.cat([uncond.expand_as(cond), cond]) if do_cfg else cond
    for k in range(start, len(scheduler.timesteps)):
        if snapshots is not None:
            snapshots.append((latents.clone(), copy.deepcopy(scheduler)))
        t = scheduler.timesteps[k]
        x = scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
        out = fwd(k, x, t, ctx)
        if do_cfg:
            out_uncond, out_text = out.chunk(2)
            out = out_uncond + guidance * (out_text - out_uncond)
        latents = scheduler.step(out, t, latents, return_dict=False)[0]
    return latents


def _rel_l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    x, ref = x.double().flatten(1), ref.double().flatten(1)
    return (x - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)


def _flops(unet, cut: int, steps: int, seq_len: int) -> dict | None:
    try:  # on the meta device from the config alone; a custom UNet class may not rebuild from its config
        from clockwork.flops import clockwork_flops

        cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        f = clockwork_flops(cfg, steps=steps, clock=1, cut=cut, adaptor="identity", batch=2, seq_len=seq_len)
        return {k: f[k] for k in ("full_step_gflops", "adaptor_step_gflops", "replaced_share")}
    except Exception:  # noqa: BLE001 - FLOPs are a nicety of the report, never a reason to fail
        return None


@torch.no_grad()
def sensitivity(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor | None, steps: int = 8, guidance: float = 2.0,
                seed: int = 0, cuts: Sequence[int] | None = None, modes: Sequence[str] = ("noise", "reuse"),
                alphas: Sequence[float] = (0.1, 0.3), start_steps: Sequence[int] | None = None,
                score: Callable[[torch.Tensor], float] | None = None, flops: bool = True,
                unet_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Sensitivity of the final sample to each level's r_out; returns ``{"meta": {...}, "rows": [...]}`` (JSON-ready).

    ``cond`` (N, L, D) are the prompts' token states, ``uncond`` (1 or N, L, D) the empty prompt's (needed
    when ``guidance > 1``); ``scheduler`` is any diffusers sampler (it is reset with ``set_timesteps``).
    Latents (N, C, H, W) are drawn from ``torch.Generator().manual_seed(seed)`` on the CPU. ``unet_kwargs``
    (e.g. SDXL's ``added_cond_kwargs``, for the CFG batch) go to every UNet call as they are.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; choose from {list(MODES)}")
    cuts = list(valid_cuts(unet) if cuts is None else cuts)
    device, dtype = unet.device, unet.dtype
    cond = cond.to(device, dtype)
    uncond = uncond.to(device, dtype) if uncond is not None else None
    if guidance > 1.0 and uncond is None:
        raise ValueError("guidance > 1 needs uncond (the empty prompt's token states)")
    c = unet.config
    shape = (cond.shape[0], c.in_channels, c.sample_size, c.sample_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    scheduler.set_timesteps(steps, device=device)
    n_loop = len(scheduler.timesteps)
    starts = list(range(1, n_loop) if start_steps is None else start_steps)
    if any(s < 0 or s >= n_loop for s in starts):
        raise ValueError(f"start steps must lie in 0..{n_loop - 1}, got {starts}")
    if any(m.startswith("reuse") for m in modes) and 0 in starts:
        raise ValueError("reuse cannot start at step 0: there is no previous step's r_out yet")
    init = noise * scheduler.init_noise_sigma
    variants = [(m, a) for m in modes for a in (alphas if m == "noise" else [None])]
    bar = tqdm(total=len(cuts) * (1 + len(variants) * len(starts)), desc="sensitivity", unit="run", disable=not progress)
    rows, per_cut, x_ref, ref_equal, ref_score = [], {}, None, True, None
    for cut in cuts:
        ucut = UNetCut(unet, cut)
        scheduler.set_timesteps(steps, device=device)
        snaps, r_outs = [], []
        x = sampling_loop(scheduler, init, cond, uncond, guidance, _Forward(ucut, record=r_outs, kwargs=unet_kwargs), snapshots=snaps)
        bar.update()
        if x_ref is None:
            x_ref, ref_score = x, (score(x) if score is not None else None)
        ref_equal = ref_equal and torch.equal(x, x_ref)
        per_cut[cut] = {"r_out_shape": list(r_outs[0].shape[1:]), "flops": _flops(unet, cut, steps, cond.shape[1]) if flops else None}
        for mode, alpha in variants:
            for s in starts:
                lat, sched = snaps[s]
                fwd = _Forward(ucut, mode, alpha or 0.0, s, seed, r_prev=r_outs[s - 1] if s > 0 else None,
                               kwargs=unet_kwargs)
                x = sampling_loop(copy.deepcopy(sched), lat, cond, uncond, guidance, fwd, start=s)
                d = _rel_l2(x, x_ref)
                row = {"cut": cut, "mode": mode, "alpha": alpha, "start_step": s, "rel_l2": float(d.mean()),
                       "rel_l2_std": float(d.std(unbiased=False)), "n": len(d)}
                if score is not None:
                    row["score"] = float(score(x))
                rows.append(row)
                bar.update()
    bar.close()
    meta = {"scheduler": type(scheduler).__name__, "steps": steps, "loop_steps": n_loop, "guidance": guidance,
            "seed": seed, "n": shape[0], "sample_shape": list(shape[1:]), "cuts": cuts, "modes": list(modes),
            "alphas": list(alphas), "start_steps": starts, "reference_equal_across_cuts": bool(ref_equal),
            "ref_score": ref_score, "per_cut": {str(k): v for k, v in per_cut.items()},
            "metric": "rel_l2 = ||x - x_ref|| / ||x_ref|| of the final latents, per image; mean and std over n"}
    return {"meta": meta, "rows": rows}


def _variant(row) -> str:
    return row["mode"] + (f" a={row['alpha']:g}" if row["alpha"] is not None else "")


def format_table(result: dict) -> str:
    """Plain-text table: one line per (cut, mode, alpha), one column of mean rel L2 per start step."""
    starts = result["meta"]["start_steps"]
    lines = [f"{'cut':>3} {'r_out':>11} {'mode':<14}" + "".join(f"{'s=' + str(s):>9}" for s in starts)]
    keys = list(dict.fromkeys((r["cut"], _variant(r)) for r in result["rows"]))
    for cut, var in keys:
        vals = {r["start_step"]: r["rel_l2"] for r in result["rows"] if r["cut"] == cut and _variant(r) == var}
        shape = "x".join(map(str, result["meta"]["per_cut"][str(cut)]["r_out_shape"]))
        lines.append(f"{cut:>3} {shape:>11} {var:<14}" + "".join(f"{vals.get(s, float('nan')):>9.4f}" for s in starts))
    return "\n".join(lines)


def plot_sensitivity(result: dict, path: str | Path, svg: bool = False) -> Path:
    """One panel per mode: x = start step, y = mean rel L2 (log), one line per cut (line style per alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, rows = result["meta"], result["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(4.2 * max(1, len(modes)), 3.5), squeeze=False, sharey=True)
    styles = ["-", "--", ":", "-."]
    for ax, mode in zip(axes[0], modes):
        alphas = list(dict.fromkeys(r["alpha"] for r in rows if r["mode"] == mode))
        for ci, cut in enumerate(meta["cuts"]):
            pc = meta["per_cut"][str(cut)]
            share = (pc.get("flops") or {}).get("replaced_share")
            for ai, a in enumerate(alphas):
                pts = sorted((r["start_step"], r["rel_l2"]) for r in rows if r["mode"] == mode and r["cut"] == cut and r["alpha"] == a)
                label = f"cut {cut} ({pc['r_out_shape'][-2]}x{pc['r_out_shape'][-1]}"
                label += f", {100 * share:.0f}% FLOPs)" if share is not None else ")"
                label += f" a={a:g}" if a is not None else ""
                ax.plot(*zip(*pts), styles[ai % len(styles)], marker="o", ms=3, color=f"C{ci}", label=label)
        ax.set_yscale("log")
        ax.set_title({"noise": "noise on r_out from step s on", "reuse": "reuse r_out(t+1) from step s on",
                      "reuse_once": "reuse r_out(t+1) at step s only"}[mode], fontsize=9)
        ax.set_xlabel("start step s (0-based)")
        ax.set_xticks(meta["start_steps"])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("rel. L2 change of the final sample")
    fig.suptitle(f"{meta.get('sampler', meta['scheduler'])}, {meta['steps']} steps, CFG {meta['guidance']:g}, n={meta['n']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    if svg:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path
