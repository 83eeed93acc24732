"""The sweep's trial entry (``pipeline.common:train_and_evaluate``): one adaptor distilled and evaluated."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.common.evaluation import EvalContext, evaluate_method
from pipeline.common.io import PREPARED_DIR, REPO_ROOT, TRAJECTORIES_DIR, obj_sha, pick_device, write_json
from pipeline.common.methods import TRAINING_FREE, MethodSpec, build_adaptor_for, method_gflops
from pipeline.common.store import ensure_trajectories, load_trajectories, split_trajectories, store_matches
from pipeline.common.training import distill_adaptor, distill_config, pair_dataset
from pipeline.common.world import Prepared, load_world


def train_and_evaluate(params: dict, workdir: str, on_log=None) -> dict:
    """Distill an adaptor for one configuration and evaluate it as the evaluate stage does.

    ``params``: ``clock`` (period, or a list of 0-based adaptor steps), ``width``, ``cut``, ``steps``,
    ``adaptor`` (identity | forecast | resnet | unet-light; identity and forecast are training-free); optional
    ``depth``, ``inputs``, ``sampler``, ``guidance``,
    ``distill_steps``, ``n_samples``, ``latency_runs``, ``params_file`` (default: the repo's params.yaml,
    whose other settings apply), ``root`` (repo root; default: this checkout), ``device`` (auto | cpu | cuda:
    sampling, distillation and Inception all run there), ``split`` (the sweep's ``sweep.split``): ``val`` (default)
    scores the first ``n_samples`` prompts of the validation split (prepare.val_prompts) against its reference
    images (prepare.val_reference_images), ``heldout`` the first ``n_samples`` evaluation prompts
    (prepare.eval_prompts) against the evaluation reference - which lets the test set choose an operating point.
    Trajectories come from the trajectories stage when sampler/steps/guidance/cut match, else they are
    unrolled once into ``<root>/data/sweep_trajectories/`` (shared by trials; resumable).

    ``clock: 1`` or ``adaptor: "none"`` is the plain baseline (nothing distilled). ``on_log(step, loss)`` is
    called every ``distill.log_every`` distillation steps (the sweep reports it to Ray Tune's scheduler).

    Returns ``{fid, fid_std, kid, kid_std, clip, clip_std, gflops, gflops_ratio, latency_ms, adaptor_params,
    heldout_mse, split, n_samples, ...}``; ``gflops_ratio`` is relative to the plain baseline with the same steps.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from pipeline.config import read_yaml, validate

    root = Path(params.get("root", REPO_ROOT)).resolve()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    p = validate(read_yaml(params.get("params_file", root / "params.yaml")), root=root)
    prepared = Prepared.load(root / PREPARED_DIR)
    n_samples = int(params.get("n_samples", p.evaluate.n_samples))
    split = params.get("split", "val")
    if split == "val":
        if not prepared.val_prompts or prepared.val_reference is None:
            raise ValueError(f"split=val (sweep.split) but {root / PREPARED_DIR} has no validation split "
                             f"({len(prepared.val_prompts)} val_prompts, val_reference_stats.npz "
                             f"{'present' if prepared.val_reference is not None else 'missing'}): set prepare.val_prompts "
                             "and prepare.val_reference_images > 0 and run `dvc repro prepare`, or pass split=heldout "
                             "(sweep.split: heldout: the evaluation prompts then choose)")
        pool, key = prepared.val_prompts, "prepare.val_prompts"
    elif split == "heldout":
        pool, key = prepared.eval_prompts, "prepare.eval_prompts"
    else:
        raise ValueError(f"split must be 'val' or 'heldout' (sweep.split), got {split!r}")
    if n_samples > len(pool):
        raise ValueError(f"n_samples={n_samples} but only {len(pool)} {split} prompts were prepared ({key}; split={split})")
    device = pick_device(params.get("device", "auto"))
    world = load_world(p.world, device, root)
    steps = p.clock.adaptor_steps
    if steps == "auto" and "clock" not in params:  # the schedule the distill stage chose
        from pipeline.common.fronts import SCHEDULE_FILE, read_schedule

        steps = read_schedule(root / SCHEDULE_FILE)["adaptor_steps"]
    clock = params.get("clock", p.clock.period if steps is None else list(steps))
    kind = params.get("adaptor", p.adaptor.kind)
    if clock == 1 or kind == "none":
        kind, clock = "none", 1
    default_inputs = p.adaptor.inputs if p.adaptor.kind not in TRAINING_FREE else ["r_in", "r_out_prev", "time", "text"]
    spec = MethodSpec(
        sampler=params.get("sampler", p.sampling.sampler), steps=int(params.get("steps", p.sampling.steps)),
        guidance=float(params.get("guidance", p.sampling.guidance)), adaptor=kind,
        clock=int(clock) if not isinstance(clock, (list, tuple)) else 1,
        adaptor_steps=tuple(int(s) for s in clock) if isinstance(clock, (list, tuple)) else None,
        cut=int(params.get("cut", p.cut)), width=int(params.get("width", p.adaptor.width)),
        depth=int(params.get("depth", p.adaptor.depth)),
        inputs=tuple(params.get("inputs", default_inputs)) if kind not in TRAINING_FREE else ("r_out_prev",),
    )
    if not spec.is_baseline:
        spec.clock_obj().validate(spec.steps, first_step_may_be_adaptor=not spec.uses_r_out_prev)
    t0 = time.perf_counter()
    adaptor, history, heldout_mse = None, [], None
    if not spec.is_baseline:
        if spec.needs_training:
            main = root / TRAJECTORIES_DIR
            if store_matches(main, spec.sampler, spec.steps, spec.guidance, spec.cut):
                troot = main
            else:
                troot = root / "data" / "sweep_trajectories" / obj_sha([spec.sampler, spec.steps, spec.guidance, spec.cut])
                ensure_trajectories(troot, world, prepared.table, prepared.distill_prompts, spec.sampler, spec.steps,
                                    spec.guidance, [spec.cut], p.trajectories.seed, p.trajectories.shard_size, progress=False)
            train, held = split_trajectories(load_trajectories(troot, spec.cut), p.distill.heldout_prompts)
            cfg = distill_config(p.distill, params.get("distill_steps"))
            adaptor, history = distill_adaptor(spec, world.unet_config, train, world.sampler(spec.sampler), cfg,
                                               device, workdir / "checkpoint", on_log=on_log,
                                               progress=False)
            if held is not None:
                from clockwork.distill import evaluate_mse

                heldout_mse = evaluate_mse(adaptor, pair_dataset(held, spec, world.sampler(spec.sampler)))
            adaptor.save_pretrained(workdir / "adaptor")
        else:
            adaptor = build_adaptor_for(spec, world.unet_config)
    t_distill = time.perf_counter() - t0
    ec = EvalContext(world, prepared, n_samples, p.evaluate.seed,
                     p.evaluate.batch_size, p.evaluate.fid_bootstrap, p.evaluate.kid_subsets, p.evaluate.kid_subset_size,
                     int(params.get("latency_runs", p.evaluate.latency_runs)), progress=False, split=split)
    metrics, _ = evaluate_method(ec, spec, adaptor, name=f"trial {spec.key()}")
    base = method_gflops(world.unet_config, MethodSpec(spec.sampler, spec.steps, spec.guidance), world.scheduler_config,
                         ec.seq_len)
    metrics.update(gflops_ratio=round(metrics["gflops"] / base, 4), width=spec.width if spec.needs_training else 0,
                   heldout_mse=heldout_mse, final_loss=history[-1]["loss"] if history else None,
                   distill_seconds=round(t_distill, 1), seconds=round(time.perf_counter() - t0, 1))
    write_json(workdir / "metrics.json", metrics)
    return metrics
