"""Stage `distill`: train the adaptor on the teacher's trajectories -> models/adaptor/ (diffusers folder).

MSE between the adaptor's prediction and the teacher's r_out(t) at the clock's adaptor steps, with
r_in(t) and r_out(t+1) from the teacher trajectory (teacher forcing); Adam. The last
`distill.heldout_prompts` trajectories are held out for `heldout_mse` (next to the identity adaptor's
MSE on the same pairs, the training-free reference). Checkpoints go to models/distill_ckpt/ (persisted,
so a killed run resumes; a stamp of the settings wipes checkpoints made with other ones). The loss curve
is plots/distill_loss.csv (a DVC plot) and an MLflow metric.

`distill.output_weight` > 0 adds the output-space term (clockwork.distill): the stage then also loads the
teacher on the training device, the trajectories' latents and data/prepared's embedding table (each
row's text context).

`distill.source: online` (the paper's regime: 50 000 captions, trajectories regenerated every epoch) trains
without a trajectory store: the teacher, on the training device, unrolls the captions of
pipeline/common/prompts.py as training goes (clockwork.online.distill_online, `distill.online`), into a
bounded on-device buffer. data/trajectories then only serves the held-out prompts' pairs (`heldout_mse`): a
small validation store. Checkpoints resume by re-unrolling the buffer.

`clock.adaptor_steps: auto` (the Clockwork front's schedule optimizer, store source): the adaptor is first distilled
on every step 1..steps-1 (models/adaptor/all_steps/), then the `clock.budget` adaptor steps that score best on the
calibration prompts (`clock.schedule_score`: sample change against the full UNet, or validation FID) are chosen
(clockwork.schedule.search_schedules), then the adaptor is fine-tuned on them for `clock.finetune_steps` (0 = the
all-steps adaptor as is); with `clock.refine_top` k > 1 the k best schedules are each fine-tuned and scored again,
and the best pair is kept. Every run writes
metrics/schedule.json: the schedule (given or chosen), the search and the calibration prompts - validation prompts,
never evaluation ones - that the evaluate stage's fronts use too.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402

CKPT_DIR = Path("models/distill_ckpt")


def main() -> None:
    p = load_params("distill")
    import json

    from clockwork.distill import evaluate_mse
    from pipeline import tracking
    from pipeline.common import (ADAPTOR_DIR, TRAJECTORIES_DIR, MethodSpec, Prepared, adaptor_params, atomic_dir,
                                 build_adaptor_for, code_sha, distill_adaptor, distill_config, load_world, log, make_sampler,
                                 num_prompts, obj_sha, pair_dataset, pick_device, split_trajectories, load_trajectories,
                                 write_json,
                                 write_text)
    from pipeline.common.fronts import (ALL_STEPS_DIR, SCHEDULE_FILE, calibration_prompts, choose_schedules,
                                        schedule_score)
    from pipeline.common.headline import machine
    from pipeline.common.training import finetune_adaptor
    from pipeline.config import teacher_unet_config

    device = pick_device(p.distill.device)
    auto = p.clock.adaptor_steps == "auto"
    spec = MethodSpec.from_params(p)  # auto: every step 1..steps-1 until the schedule is chosen
    unet_config = teacher_unet_config(p.world, Path.cwd())
    output_term = p.distill.output_weight > 0
    world = prepared = None
    if output_term:  # the teacher's high-res part is part of the loss
        world = load_world(p.world, device)
        prepared = Prepared.load()
        sched_cfg = world.scheduler_config
    else:  # the schedule without loading the teacher
        from pipeline.common.world import scheduler_config_of

        sched_cfg = scheduler_config_of(p.world)
    scheduler = make_sampler(spec.sampler, sched_cfg)
    online = p.distill.source == "online" and spec.needs_training
    if online:  # problems only the stage can see (the device, the caption file), before any work
        from pipeline.common.training import check_online

        prepared = Prepared.load()
        captions = check_online(p.world, p.distill, device, prepared)
    meta = json.loads((Path(TRAJECTORIES_DIR) / "meta.json").read_text())
    if (meta.get("sampler_name"), meta["steps"], meta["guidance"]) != (spec.sampler, spec.steps, spec.guidance):
        raise SystemExit(f"{TRAJECTORIES_DIR} was unrolled with {meta.get('sampler_name')}/{meta['steps']} steps/"
                         f"guidance {meta['guidance']}, not {spec.sampler}/{spec.steps}/{spec.guidance}; dvc repro trajectories")
    if output_term and "prompts_sha" in meta and meta["prompts_sha"] != obj_sha(prepared.distill_prompts):
        raise SystemExit(f"{TRAJECTORIES_DIR} was unrolled for other prompts than data/prepared's; dvc repro trajectories")
    traj = load_trajectories(TRAJECTORIES_DIR, spec.cut, with_latents=output_term, memory_cap_gb=p.distill.memory_cap_gb)
    train, held = split_trajectories(traj, p.distill.heldout_prompts)
    cfg = distill_config(p.distill)

    # Checkpoints made with other settings or data must not be resumed.
    stamp_of = [spec.key(), cfg.__dict__, p.distill.rollout_steps, meta, *([p.clock.model_dump()] if auto else []),
                code_sha("pipeline/distill.py", "pipeline/common",
                                                                  "clockwork/distill.py", "clockwork/adaptors.py")]
    if online:  # the store's own stamp stays what it was
        stamp_of += [p.distill.online.model_dump(), p.world.model_dump(),
                     code_sha("clockwork/online.py", "clockwork/trajectories.py", "clockwork/cut.py")]
    stamp = obj_sha(stamp_of)
    stamp_file = CKPT_DIR / "stamp.txt"
    if CKPT_DIR.exists() and (not stamp_file.is_file() or stamp_file.read_text() != stamp):
        shutil.rmtree(CKPT_DIR)
    CKPT_DIR.mkdir(parents=True, exist_ok=True)
    write_text(stamp_file, stamp)

    t0 = time.perf_counter()
    with tracking.stage_run("distill", p.flat()) as run:
        on_log = lambda step, loss: run.log_metrics({"loss": loss}, step=step)  # noqa: E731
        stream = None
        if online and p.distill.workers > 1:  # data-parallel on Ray Train: each worker loads its own teacher
            from pipeline.common.parallel import WorkersError, distill_adaptor_workers

            try:
                adaptor, history, stream = distill_adaptor_workers(spec, unet_config, p.world, prepared, captions, cfg,
                                                                   p.distill, p.distill.device, CKPT_DIR / "latest")
            except WorkersError as e:
                raise SystemExit(f"error: {e}") from None
            for h in history:
                on_log(h["step"], h["loss"])
        elif online:  # the teacher unrolls as training goes (config.py rules out output_weight / rollout_steps here)
            from pipeline.common.training import distill_adaptor_online

            world = load_world(p.world, device)
            adaptor, history, stream = distill_adaptor_online(spec, unet_config, world, prepared, captions, scheduler,
                                                              cfg, p.distill, device, CKPT_DIR / "latest", on_log=on_log)
        else:
            teacher_kw = dict(teacher_unet=world.unet, table=prepared.table, prompts=prepared.distill_prompts) \
                if output_term else {}
            adaptor, history = distill_adaptor(spec, unet_config, train, scheduler, cfg, device, CKPT_DIR / "latest",
                                               on_log=on_log, **teacher_kw)
        if p.distill.rollout_steps and spec.needs_training:  # + one round on Clockwork's own rollouts (DAgger)
            from pipeline.common import Prepared, load_world, rollout_finetune

            world = world or load_world(p.world, device)
            prepared = prepared or Prepared.load()
            adaptor, more = rollout_finetune(spec, adaptor, world, prepared.table,
                                             prepared.distill_prompts[:num_prompts(train)], train, cfg,
                                             p.distill.rollout_steps, device, CKPT_DIR / "rollout")
            history += [{**h, "step": h["step"] + cfg.steps} for h in more]
        prepared = prepared or Prepared.load()
        try:
            cal_prompts, cal_source = calibration_prompts(prepared, p.distill.heldout_prompts, p.clock.calibration_prompts)
        except ValueError:  # only auto and evaluate.fronts search (pipeline/config.py checks those before any stage)
            if auto:
                raise
            cal_prompts, cal_source = [], None
        schedule = {"mode": "auto" if auto else "given", "adaptor_steps": None if spec.adaptor_steps is None else
                    list(spec.adaptor_steps), "period": None if spec.adaptor_steps is not None else spec.clock,
                    "calibration": {"source": cal_source, "seed": p.clock.calibration_seed,
                                    "score": p.clock.schedule_score, "prompts": cal_prompts}}
        all_steps = None
        if auto:  # choose the schedule with the all-steps adaptor, then fine-tune on it
            world = world or load_world(p.world, device)
            search = choose_schedules(world, prepared, cal_prompts, spec, adaptor, [p.clock.budget],
                                      p.clock.calibration_seed, p.clock.schedule_score)
            spec = MethodSpec.from_params(p, search[0]["adaptor_steps"])
            log(f"schedule: adaptor steps {list(spec.adaptor_steps)} of {search[0]['candidates']} {search[0]['method']} "
                f"candidates (budget {p.clock.budget}, {p.clock.schedule_score} {search[0]['score']:.4g} on "
                f"{len(cal_prompts)} {cal_source} prompts)")
            schedule.update(adaptor_steps=list(spec.adaptor_steps), budget=p.clock.budget, search=search,
                            finetune_steps=p.clock.finetune_steps if spec.needs_training else 0)
            if spec.needs_training:
                all_steps = adaptor
            if spec.needs_training and p.clock.finetune_steps:  # the best refine_top schedules, each fine-tuned
                tried = []
                for steps, _ in search[0]["ranking"][:p.clock.refine_top]:
                    s = MethodSpec.from_params(p, steps)
                    tuned, more = finetune_adaptor(all_steps, train, s, scheduler, cfg, p.clock.finetune_steps, device,
                                                   CKPT_DIR / f"finetune_{obj_sha(list(steps))[:12]}")
                    again = schedule_score(world, prepared, cal_prompts, s, tuned, steps, p.clock.calibration_seed,
                                           p.clock.schedule_score) if p.clock.refine_top > 1 else None
                    if again is not None:
                        log(f"schedule: {steps} fine-tuned: {p.clock.schedule_score} {again:.4g}")
                    tried.append((again, s, tuned, more))
                again, spec, adaptor, more = min(tried, key=lambda t: 0.0 if t[0] is None else t[0])
                schedule.update(adaptor_steps=list(spec.adaptor_steps), refined=[
                    {"adaptor_steps": list(t[1].adaptor_steps), "score": t[0]} for t in tried] if again is not None else [])
                history += [{**h, "step": h["step"] + history[-1]["step"]} for h in more]
        seconds = time.perf_counter() - t0
        heldout = heldout_id = None
        if held is not None:
            data = pair_dataset(held, spec, scheduler)
            heldout = evaluate_mse(adaptor, data, device) if spec.needs_training else None
            identity = build_adaptor_for(MethodSpec(adaptor="identity", cut=spec.cut), unet_config)
            heldout_id = evaluate_mse(identity, data, device) if spec.uses_r_out_prev else None
            if heldout is None:
                heldout = heldout_id
        with atomic_dir(ADAPTOR_DIR) as tmp:
            adaptor.save_pretrained(tmp)
            if all_steps is not None:
                all_steps.save_pretrained(Path(tmp) / ALL_STEPS_DIR)
        write_json(SCHEDULE_FILE, schedule)
        write_text("plots/distill_loss.csv", "step,loss\n" + "".join(f"{h['step']},{h['loss']:.8g}\n" for h in history))
        metrics = {
            "final_loss": history[-1]["loss"] if history else None,
            **({"output_weight": cfg.output_weight, "final_r_out_mse": history[-1]["r_out_mse"],
                "final_output_mse": history[-1]["output_mse"]} if history and "output_mse" in history[-1] else {}),
            "heldout_mse": heldout,
            "heldout_mse_identity": heldout_id,
            "steps": cfg.steps if spec.needs_training else 0,
            "rollout_steps": p.distill.rollout_steps if spec.needs_training else 0,
            "adaptor_params": adaptor_params(adaptor),
            "adaptor": spec.adaptor, "width": spec.width if spec.needs_training else 0, "cut": spec.cut,
            "clock": spec.clock_repr(), "sampler": spec.sampler, "sampling_steps": spec.steps,
            "train_pairs": len(pair_dataset(train, spec, scheduler)) if spec.needs_training else 0,
            "train_prompts": num_prompts(train), "heldout_prompts": 0 if held is None else num_prompts(held),
            "seconds": round(seconds, 1), **machine("fp32", device),  # training runs in float32
        }
        if stream is not None:  # the online regime: what the teacher streamed (train_* count the stream, not the store)
            metrics.update(stream)
        write_json("metrics/distill.json", metrics)
        run.log_metrics({k: v for k, v in metrics.items() if k not in ("steps",)})
        run.log_artifact("plots/distill_loss.csv")
        run.log_artifact(ADAPTOR_DIR, "adaptor")
        log(f"distilled {spec.adaptor} (width {spec.width}, {metrics['adaptor_params']} params) in {seconds:.0f}s: "
            f"final loss {metrics['final_loss']}, held-out MSE {heldout} (identity {heldout_id})")


if __name__ == "__main__":
    main()
