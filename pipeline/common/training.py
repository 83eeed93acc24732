"""Training an adaptor: teacher-forced pairs from trajectories, distillation, one DAgger round on Clockwork's own
rollouts, the distillation config from params, and forward-noised training data (the classic alternative)."""

from __future__ import annotations

import dataclasses
import math
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


def finetune_adaptor(adaptor, traj: dict, spec: MethodSpec, scheduler, distill_cfg, steps: int, device: str = "cpu",
                     checkpoint_dir: str | os.PathLike | None = None, on_log=None, progress: bool = True):
    """A copy of ``adaptor`` distilled ``steps`` more steps on the pairs of ``spec``'s schedule (the all-steps adaptor
    fine-tuned on the schedule chosen for it); returns (adaptor, history)."""
    import copy

    from clockwork.distill import distill

    tuned = copy.deepcopy(adaptor)
    history = distill(tuned, pair_dataset(traj, spec, scheduler), dataclasses.replace(
        distill_cfg, steps=steps, checkpoint_every=min(distill_cfg.checkpoint_every, steps),
        log_every=min(distill_cfg.log_every, steps)),
                      device=device, checkpoint_dir=checkpoint_dir, on_log=on_log, progress=progress)
    return tuned.to("cpu").eval(), history


def check_online(world_params, section, device: str, prepared) -> list[str] | None:
    """What ``distill.source: online`` needs that only the stage sees, before any work: the sampling precision on
    this device, and (SD world) the captions it streams. Returns those captions (None: the embedded world's prompts
    are data/prepared's). A problem prints ``params.yaml: key: message`` and exits with code 2, as
    pipeline/config.py does."""
    import sys

    from clockwork.precision import resolve_precision
    from pipeline.common.prompts import sd_online_captions

    problems, captions = [], None
    if resolve_precision(world_params.precision, device) == "bf16":
        problems.append(("world.precision", f"{world_params.precision} is bf16 on {device}: distill.source: online "
                         "unrolls the teacher in the UNet's own dtype, not the bf16 trajectories the store holds; use fp32"))
    o = section.online
    if world_params.kind == "sd":
        try:
            captions = sd_online_captions(world_params.distill_captions, prepared.distill_prompts, o.prompts)
        except ValueError as e:
            problems.append(("distill.online.prompts", str(e)))
        else:
            if o.buffer_prompts > len(captions):
                problems.append(("distill.online.buffer_prompts", f"{o.buffer_prompts} > the {len(captions)} captions "
                                 "streamed: the buffer would hold a prompt twice"))
    if problems:
        from pipeline.config import ConfigError, params_path

        print(f"error: invalid parameters, stage 'distill' not run\n{ConfigError(problems, params_path().name)}",
              file=sys.stderr)
        raise SystemExit(2)
    return captions


def online_config(section, device: str):
    """A :class:`clockwork.online.OnlineConfig` from the params' ``distill`` section (``distill.online``)."""
    from clockwork.online import OnlineConfig

    o = section.online
    return OnlineConfig(buffer_prompts=o.buffer_prompts, unroll_batch=o.unroll_batch, refresh_every=o.refresh_every,
                        seed=o.seed if o.seed is not None else section.seed,
                        compile=str(device).startswith("cuda") if o.compile == "auto" else o.compile)


def online_source(world: World, prepared, section, captions: Sequence[str] | None = None):
    """(prompt source, negative prompt) of ``distill.source: online``: the embedded world's prepared distillation
    prompts but the held-out ones, or an SD world's ``captions`` (:func:`check_online`) encoded per batch."""
    from pipeline.common.prompts import (EncodedPrompts, PipelineText, TablePrompts, embedded_online_prompts,
                                         negative_prompt)

    if world.kind == "embedded":
        source = TablePrompts(prepared.table, embedded_online_prompts(prepared.distill_prompts, section.heldout_prompts,
                                                                      section.online.prompts), world.added_cond)
    else:
        if captions is None:
            raise ValueError("an SD world streams captions: pass check_online's")
        source = EncodedPrompts(captions, PipelineText(world.sd_pipe, world.device), world.added_cond)
    return source, negative_prompt(prepared.table, world.added_cond)


def distill_adaptor_online(spec: MethodSpec, unet_config: dict, world: World, prepared, captions, scheduler, distill_cfg,
                           section, device: str = "cpu", checkpoint_dir: str | os.PathLike | None = None, on_log=None,
                           progress: bool = True):
    """Build the adaptor ``spec`` describes and distill it online (:func:`clockwork.online.distill_online`): the
    world's teacher unrolls the prompts of :func:`online_source` as training goes. Returns (adaptor, history,
    what the stream did: {source, prompts_streamed, epochs, buffer_prompts, buffer_gb, train_prompts, train_pairs})."""
    from clockwork.online import OnlineUnroller, distill_online

    ocfg = online_config(section, device)
    source, negative = online_source(world, prepared, section, captions)
    loops = adaptor_loop_indices(scheduler, spec.steps, spec.clock_obj(), spec.uses_r_out_prev)
    kw = dict(cut=spec.cut, loop_indices=loops, steps=spec.steps, guidance=spec.guidance, latent_size=world.latent_size)
    # validates everything before the first teacher pass, and sizes the buffer
    shapes = OnlineUnroller(world.unet, scheduler, source, negative, online=dataclasses.replace(ocfg, compile=False),
                            **kw).record_shapes()
    per_row = sum(math.prod(shapes[k]) for k in ("r_in", "r_out", "r_out", "temb")) * len(loops) + math.prod(shapes["text"])
    buffer_gb = ocfg.buffer_prompts * 2 * per_row * world.unet.dtype.itemsize / 1e9
    adaptor = build_adaptor_for(spec, unet_config)
    history = distill_online(adaptor, world.unet, scheduler, source, negative, cfg=distill_cfg, online=ocfg,
                             device=device, checkpoint_dir=checkpoint_dir, on_log=on_log, progress=progress, **kw)
    streamed = ocfg.refreshes_at(distill_cfg.steps - 1) * ocfg.unroll_batch  # refreshes done before the last step
    stream = {"source": "online", "prompts_streamed": streamed, "epochs": round(streamed / len(source), 4),
              "buffer_prompts": ocfg.buffer_prompts, "buffer_gb": round(buffer_gb, 3), "train_prompts": len(source),
              "train_pairs": streamed * 2 * len(loops)}
    return adaptor.to("cpu").eval(), history, stream


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
    lr = section.lr if section.lr_reference_batch is None else section.lr * section.batch_size / section.lr_reference_batch
    return DistillConfig(steps=s, batch_size=section.batch_size, lr=lr, weight_decay=section.weight_decay,
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
