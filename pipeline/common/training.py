"""Training an adaptor: teacher-forced pairs from trajectories, distillation, one DAgger round on Clockwork's own
rollouts, the distillation config from params, and forward-noised training data (the classic alternative)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from pipeline.common.methods import MethodSpec, adaptor_loop_indices, build_adaptor_for
from pipeline.common.store import row_contexts
from pipeline.common.world import World


def pair_dataset(traj: dict, spec: MethodSpec, scheduler, table=None, prompts: Sequence[str] | None = None):
    """Teacher-forced (r_in(t), r_out(t+1)) -> r_out(t) pairs at the spec's adaptor steps.

    An adaptor that ignores r_out(t+1) may also run at step 0; PairDataset needs a previous step, so the
    trajectory gets a zero step in front (its r_out is never read by such an adaptor); a lazy store's views
    (``TrajectoryStore.load(..., lazy=True)``) get it as an index shift, nothing is loaded.

    With ``table`` and ``prompts`` (for the output-space loss; ``traj`` loaded ``with_latents=True``) the pairs
    also carry the teacher's UNet inputs: per-row text contexts (:func:`row_contexts`) and x_t scaled by the
    sampler's ``scale_model_input`` factors (:func:`clockwork.distill.model_input_scales`).
    """
    from clockwork.distill import PairDataset, model_input_scales

    loops = adaptor_loop_indices(scheduler, spec.steps, spec.clock_obj(), spec.uses_r_out_prev)
    if not loops:
        raise ValueError(f"{spec}: the clock never runs the adaptor, nothing to distill")
    scale = None
    if table is not None or prompts is not None:
        if table is None or prompts is None or "latents" not in traj:
            raise ValueError("the teacher's UNet inputs need table=, prompts= and trajectories loaded with_latents=True")
        traj = {**traj, "ctx": row_contexts(traj, table, prompts)}
        scale = model_input_scales(scheduler, spec.steps)
    if min(loops) == 0:
        pad = _pad_step
        traj = {**traj, "r_in": pad(traj["r_in"]), "r_out": pad(traj["r_out"]), "temb": pad(traj["temb"]),
                **({"r_out_used": pad(traj["r_out_used"])} if "r_out_used" in traj else {})}
        for k in ("latents", "timesteps"):  # per-step inputs of the output-space loss, when present
            if k in traj:
                traj[k] = pad(traj[k])
        if scale is not None:
            scale = torch.cat([torch.ones(1), scale])
        loops = [i + 1 for i in loops]
    return PairDataset(traj, loops, input_scale=scale)


def _pad_step(x):
    """``x`` with a zero step in front."""
    if isinstance(x, torch.Tensor):
        return torch.cat([torch.zeros_like(x[:1]), x])
    return x.pad_step()


def distill_adaptor(spec: MethodSpec, unet_config: dict, traj: dict, scheduler, distill_cfg, device: str = "cpu",
                    checkpoint_dir: str | os.PathLike | None = None, on_log=None, progress: bool = True,
                    teacher_unet=None, table=None, prompts: Sequence[str] | None = None):
    """Build and distill the adaptor ``spec`` describes on trajectories ``traj``; returns (adaptor, history).

    ``distill_cfg.output_weight > 0`` (the output-space loss) needs the frozen ``teacher_unet`` on ``device``,
    the prepared embedding ``table`` and the ``prompts`` the store was unrolled for (``traj["prompt"]``
    indexes them), and ``traj`` loaded ``with_latents=True``; they are unused otherwise.
    """
    from clockwork.cut import UNetCut
    from clockwork.distill import distill

    adaptor = build_adaptor_for(spec, unet_config)
    if not spec.needs_training:
        return adaptor, []
    teacher = None
    if distill_cfg.output_weight > 0:
        if teacher_unet is None or table is None or prompts is None:
            raise ValueError(f"distill.output_weight={distill_cfg.output_weight} > 0 needs the teacher: "
                             "distill_adaptor(..., teacher_unet=world.unet, table=prepared.table, prompts=<unrolled prompts>)")
        data = pair_dataset(traj, spec, scheduler, table=table, prompts=prompts)
        teacher = UNetCut(teacher_unet, spec.cut)
    else:
        data = pair_dataset(traj, spec, scheduler)
    history = distill(adaptor, data, distill_cfg, device=device, checkpoint_dir=checkpoint_dir, on_log=on_log,
                      progress=progress, teacher=teacher)
    return adaptor.to("cpu").eval(), history


def rollout_finetune(spec: MethodSpec, adaptor, world: World, table, prompts: Sequence[str], teacher_traj: dict,
                     distill_cfg, steps: int, device: str = "cpu", checkpoint_dir: str | os.PathLike | None = None,
                     progress: bool = True):
    """One DAgger round (the `rollout_steps` lever): unroll Clockwork with ``adaptor`` in the loop for ``prompts``
    (:func:`clockwork.rollouts.unroll_clockwork`: the teacher's r_out as targets at Clockwork's own states),
    then distill ``steps`` more steps (fresh Adam, seed + 1) on the teacher's trajectories and these rollouts
    together. ``teacher_traj`` holds the rows of the same prompts (:func:`load_trajectories`). Returns
    (adaptor, history)."""
    from clockwork.distill import distill
    from clockwork.rollouts import unroll_clockwork

    if spec.training != "unrolled":
        raise ValueError(f"rollout fine-tuning continues unrolled-trajectory training, not {spec.training!r}")
    with world.autocast():
        roll = unroll_clockwork(world.unet, adaptor, spec.cut, spec.clock_obj(), world.sampler(spec.sampler),
                                table.lookup(list(prompts))[0], table.uncond(1)[0], spec.steps, spec.guidance,
                                seed=distill_cfg.seed + 1, batch_size=512, progress=progress)
    t = teacher_traj
    both = {"r_in": torch.cat([t["r_in"], roll["r_in"]], 1), "r_out": torch.cat([t["r_out"], roll["r_out"]], 1),
            "r_out_used": torch.cat([t["r_out"], roll["r_out_used"]], 1), "temb": t["temb"],
            "text": torch.cat([t["text"], roll["text"]]), "timesteps": t["timesteps"],
            "prompt": torch.cat([t["prompt"], roll["prompt"]])}
    cfg = dataclasses.replace(distill_cfg, steps=steps, seed=distill_cfg.seed + 1)
    history = distill(adaptor, pair_dataset(both, spec, world.sampler(spec.sampler)), cfg, device=device,
                      checkpoint_dir=checkpoint_dir, progress=progress)
    return adaptor.to("cpu").eval(), history


def distill_config(section, steps: int | None = None):
    """A :class:`clockwork.distill.DistillConfig` from the params' ``distill`` section."""
    from clockwork.distill import DistillConfig

    s = steps if steps is not None else section.steps
    return DistillConfig(steps=s, batch_size=section.batch_size, lr=section.lr, weight_decay=section.weight_decay,
                         seed=section.seed, checkpoint_every=min(section.checkpoint_every, s),
                         log_every=min(section.log_every, s), grad_clip=section.grad_clip,
                         output_weight=section.output_weight)


@torch.no_grad()
def forward_noised_data(world: World, table, cut: int, sampler: str, steps: int, n_images: int, seed: int,
                        batch: int = 64) -> dict[str, torch.Tensor]:
    """Classic distillation data: real training images noised to each timestep (embedded world only)."""
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.trajectories import forward_noised_shard

    if world.kind != "embedded":
        raise NotImplementedError("forward-noised training data is only built for the embedded world")
    train = CaptionedFashion("train", root=world.params.data_root)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_images]
    parts = []
    for i in range(0, n_images, batch):
        j = idx[i:i + batch]
        ctx = table.lookup([train.texts[int(k)] for k in j])[0]
        with world.autocast():
            parts.append(forward_noised_shard(world.unet, world.sampler(sampler), cut, train.images(j), ctx,
                                              table.uncond(1)[0], steps, torch.Generator().manual_seed(seed + i)))
    return {"r_in": torch.cat([p[f"r_in.c{cut}"] for p in parts], 1), "r_out": torch.cat([p[f"r_out.c{cut}"] for p in parts], 1),
            "temb": parts[0]["temb"], "text": torch.cat([p["text"] for p in parts]), "timesteps": parts[0]["timesteps"]}
