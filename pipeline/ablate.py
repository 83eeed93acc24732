"""Stage `ablate`: the paper's ablations at this scale -> metrics/ablate.json (one row per variant).

- adaptor_type: identity / resnet / unet-light / resnet-wide (+ the plain baseline)      (paper Table 3)
  and forecast (training-free: the last two full steps' r_out extrapolated, TaylorSeer-style)
- schedule: alternating vs adaptor on the late half vs the early middle                  (Table 3)
- cut: 1 vs 2                                                                             (Table 3)
- inputs: r_in only / r_out(t+1) only / both / both + text / adaptor at every step
  without r_out(t+1) (Clock(adaptor_steps=0..N-1), inputs r_in only)                      (Table 5)
- training: unrolled trajectories vs forward-noised training images, at 4 and 8 steps     (Fig. 7)
- sampler: DPM++ / DPM / PNDM / DDIM, baseline and Clockwork each                         (Table 4)
- steps: 4 / 6 / 8, baseline and Clockwork each
- levers: named variants of the default Clockwork method (`ablate.levers`: adaptor size, schedule, cut,
  distillation budget and data, output-space loss, own-rollout fine-tuning) - what might make Clockwork pay
- front: the plain baseline at `ablate.front_steps` (always, when any ablation runs). Every row carries
  `vs_fewer_steps`: its FID and CLIP against this plain-steps front at equal GFLOPs
  (clockwork.pareto.versus_fewer_steps; positive = better than taking fewer steps)
Rows are evaluated on `ablate.split`: the held-out evaluation prompts, or the validation split (training-split
prompts and reference images not distilled on) where operating points are chosen.
Each row distills the adaptor it needs (ablate.distill_steps, the `distill` section's optimiser) on
`ablate.distill_prompts` trajectories - the trajectories stage's store when sampler/steps/guidance/cut
match, else its own unroll under data/ablate/ - and is evaluated with the evaluate stage's code on the
first `ablate.n_samples` held-out prompts. Identical rows (e.g. the default resnet row appears in
several ablations) are computed once. data/ablate/ is persisted: finished rows and adaptors are reused
when nothing they depend on changed, so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402

WORK = Path("data/ablate")
GRID = "plots/samples/ablate.png"
GRID_IMAGES = 4
INPUT_VARIANTS = {  # paper Table 5 (the time embedding conditions every variant)
    "r_in": ("r_in", "time"),
    "r_out_prev": ("r_out_prev", "time"),
    "both": ("r_in", "r_out_prev", "time"),
    "both+text": ("r_in", "r_out_prev", "time", "text"),
}


def ablation_rows(p) -> list[tuple[str, str, object]]:
    """(ablation, variant, MethodSpec) for every requested ablation."""
    from pipeline.common import MethodSpec
    from pipeline.common.methods import TRAINING_FREE

    a = p.ablate
    period = p.clock.period if p.clock.adaptor_steps is None else 2
    steps = p.clock.adaptor_steps
    if steps == "auto":  # the schedule the distill stage chose
        from pipeline.common.fronts import read_schedule

        steps = read_schedule()["adaptor_steps"]
    base = MethodSpec(sampler=p.sampling.sampler, steps=p.sampling.steps, guidance=p.sampling.guidance,
                      adaptor=p.adaptor.kind if p.adaptor.kind not in TRAINING_FREE else "resnet", clock=p.clock.period,
                      adaptor_steps=tuple(steps) if steps is not None else None,
                      cut=p.cut, width=p.adaptor.width, depth=p.adaptor.depth,
                      inputs=tuple(p.adaptor.inputs) if p.adaptor.kind not in TRAINING_FREE else INPUT_VARIANTS["both+text"])
    resnet = dataclasses.replace(base, adaptor="resnet")
    plain = lambda **kw: MethodSpec(**{"sampler": base.sampler, "steps": base.steps, "guidance": base.guidance, **kw})  # noqa: E731
    at_steps = lambda spec, n: dataclasses.replace(spec, steps=n, clock=period, adaptor_steps=None)  # noqa: E731
    rows: list[tuple[str, str, object]] = []
    for name in a.ablations:
        if name == "adaptor_type":
            rows += [(name, "baseline", plain()),
                     (name, "identity", dataclasses.replace(base, adaptor="identity")),
                     (name, "forecast", dataclasses.replace(base, adaptor="forecast")),
                     (name, "resnet", resnet),
                     (name, "unet-light", dataclasses.replace(base, adaptor="unet-light", width=a.unet_light_width, depth=1)),
                     (name, "resnet-wide", dataclasses.replace(resnet, width=a.resnet_wide_width))]
        elif name == "schedule":
            rows.append((name, "alternating", dataclasses.replace(base, clock=2, adaptor_steps=None)))
            rows += [(name, k, dataclasses.replace(base, adaptor_steps=tuple(v))) for k, v in a.schedules.items()]
        elif name == "cut":
            rows += [(name, f"cut{c}", dataclasses.replace(base, cut=c)) for c in a.cuts]
        elif name == "inputs":
            rows += [(name, k, dataclasses.replace(base, inputs=v)) for k, v in INPUT_VARIANTS.items()]
            rows.append((name, "every_step_without_r_out_prev",
                         dataclasses.replace(base, inputs=INPUT_VARIANTS["r_in"], adaptor_steps=tuple(range(base.steps)))))
        elif name == "training":
            for n in a.training_steps:
                for t in ("unrolled", "forward_noised"):
                    rows.append((name, f"{t}_{n}steps", dataclasses.replace(at_steps(base, n), training=t)))
        elif name == "sampler":
            for s in a.samplers:
                rows += [(name, f"{s}/baseline", plain(sampler=s)), (name, f"{s}/clockwork", dataclasses.replace(base, sampler=s))]
        elif name == "steps":
            for n in a.step_counts:
                rows += [(name, f"{n}steps/baseline", plain(steps=n)), (name, f"{n}steps/clockwork", at_steps(base, n))]
        elif name == "levers":
            rows += [(name, k, lever_spec(resnet if v.adaptor is None else base, v)) for k, v in a.levers.items()]
    if rows:
        rows += [("front", f"{n}steps", plain(steps=n)) for n in a.front_steps]
    return rows


TRAIN_KEYS = ("distill_steps", "distill_prompts", "output_weight", "rollout_steps")


def lever_spec(base, lever):
    """The default Clockwork method with one `ablate.levers` entry's changes."""
    spec_kw = {k: getattr(lever, k) for k in ("adaptor", "width", "depth", "cut", "steps") if getattr(lever, k) is not None}
    if lever.inputs is not None:
        spec_kw["inputs"] = tuple(lever.inputs)
    if lever.adaptor_steps is not None:
        spec_kw["adaptor_steps"] = tuple(lever.adaptor_steps)
    elif lever.period is not None:
        spec_kw.update(clock=lever.period, adaptor_steps=None)
    train = tuple(sorted((k, getattr(lever, k)) for k in TRAIN_KEYS if getattr(lever, k) is not None))
    return dataclasses.replace(base, **spec_kw, train=train)


def with_fewer_steps(results: list[dict]) -> None:
    """Add `vs_fewer_steps` to every row: against the `front` rows of the same sampler and guidance."""
    from pipeline.common import vs_fewer_steps

    fronts: dict = {}
    for r in results:
        if r["ablation"] == "front":
            fronts.setdefault((r["sampler"], r["guidance"]), []).append(r)
    for r in results:
        front = fronts.get((r["sampler"], r["guidance"]))
        r["vs_fewer_steps"] = vs_fewer_steps(r, front) if front else None


def main() -> None:
    p = load_params("ablate")
    from clockwork.adaptors import load_adaptor
    from pipeline import tracking
    from pipeline.common import (TRAJECTORIES_DIR, EvalContext, Prepared, atomic_dir, distill_adaptor, distill_config,
                                 ensure_trajectories, evaluate_method, forward_noised_data, load_trajectories, load_world, log,
                                 pick_device, rollout_finetune, sample_grid, save_png, store_matches, write_json)
    from pipeline.common.headline import HEADLINE_DIR, ablate_headline, machine
    from pipeline.common.rows import RowCache, stage_context

    a = p.ablate
    world = load_world(p.world, a.device)
    prepared = Prepared.load()
    train_device = pick_device(p.distill.device)
    rows = ablation_rows(p)
    main_meta = json.loads((Path(TRAJECTORIES_DIR) / "meta.json").read_text())
    # What every row depends on besides its own spec (rows made otherwise are not matched): the sections the rows
    # read, minus which rows are asked for and what a row's spec already says (its sampler, steps, schedule, width,
    # training budget overrides), and the knobs of the main distillation the rows never use (its step count, source,
    # workers, held-out prompts, checkpointing)
    context = stage_context("ablate", p, world, ("world", "trajectories", "distill", "ablate"), ignore=(
        "ablate.levers", "ablate.ablations", "ablate.front_steps", "ablate.schedules", "ablate.samplers",
        "ablate.step_counts", "ablate.training_steps", "ablate.resnet_wide_width", "ablate.unet_light_width",
        "ablate.device", "distill.steps", "distill.source", "distill.online", "distill.workers",
        "distill.heldout_prompts", "distill.rollout_steps", "distill.checkpoint_every", "distill.log_every",
        "distill.memory_cap_gb"), extra=main_meta)
    cache = RowCache(WORK / "rows", context)
    (WORK / "adaptors").mkdir(parents=True, exist_ok=True)
    ec = EvalContext(world, prepared, a.n_samples, a.seed, batch_size=a.batch_size, fid_bootstrap=a.fid_bootstrap,
                     kid_subsets=50, kid_subset_size=100, latency_runs=a.latency_runs, split=a.split)
    cuts = sorted(set(a.cuts) | {p.cut})
    fn_cache: dict = {}

    def training_data(spec, with_latents: bool = False):
        if spec.training == "forward_noised":
            k = (spec.cut, spec.sampler, spec.steps)
            if k not in fn_cache:
                log(f"forward-noised data: {a.forward_noised_images} training images, {spec.sampler} {spec.steps} steps, cut {spec.cut}")
                fn_cache[k] = forward_noised_data(world, prepared.table, spec.cut, spec.sampler, spec.steps,
                                                  a.forward_noised_images, a.seed)
            return fn_cache[k]
        n = spec.train_overrides.get("distill_prompts", a.distill_prompts)
        if store_matches(TRAJECTORIES_DIR, spec.sampler, spec.steps, spec.guidance, spec.cut) and \
                main_meta["num_prompts"] >= n:
            root = Path(TRAJECTORIES_DIR)
        else:
            root = WORK / "trajectories" / f"{spec.sampler}-{spec.steps}steps-g{spec.guidance}-{n}"
            ensure_trajectories(root, world, prepared.table, prepared.distill_prompts[:n], spec.sampler,
                                spec.steps, spec.guidance, cuts, p.trajectories.seed, p.trajectories.shard_size)
        return load_trajectories(root, spec.cut, max_prompts=n, with_latents=with_latents)

    results, grids, done, shown = [], {}, {}, {}
    t0 = time.perf_counter()
    with tracking.stage_run("ablate", p.flat(), tags={"device": world.device}) as run:
        for i, (ablation, variant, spec) in enumerate(rows):
            key = cache.key(spec, None)  # trained inside the row: its weights follow from the key
            if key not in done and (found := cache.load(key)) is not None:
                done[key], grids[key] = found
                log(f"[{i + 1}/{len(rows)}] {ablation}/{variant}: reused")
            if key not in done:
                log(f"[{i + 1}/{len(rows)}] {ablation}/{variant}: {spec.describe()}")
                adaptor = None
                if spec.needs_training:
                    adir = WORK / "adaptors" / key
                    if (adir / "config.json").is_file():
                        adaptor = load_adaptor(adir)
                    else:
                        ckpt = WORK / "adaptors" / f"{key}.ckpt"
                        tr = spec.train_overrides
                        cfg = distill_config(p.distill, tr.get("distill_steps", a.distill_steps))
                        if "output_weight" in tr:
                            cfg = dataclasses.replace(cfg, output_weight=tr["output_weight"])
                        teacher = {}
                        if cfg.output_weight > 0:  # the output-space loss runs the teacher's high-res part
                            teacher = dict(teacher_unet=world.unet, table=prepared.table, prompts=prepared.distill_prompts)
                        data = training_data(spec, bool(teacher))
                        adaptor, hist = distill_adaptor(spec, world.unet_config, data, world.sampler(spec.sampler), cfg,
                                                        train_device, ckpt, **teacher)
                        if tr.get("rollout_steps"):  # + one round on Clockwork's own rollouts
                            n = tr.get("distill_prompts", a.distill_prompts)
                            adaptor, _ = rollout_finetune(spec, adaptor, world, prepared.table, prepared.distill_prompts[:n],
                                                          data, cfg, tr["rollout_steps"], train_device,
                                                          WORK / "adaptors" / f"{key}.rollout.ckpt")
                            shutil.rmtree(WORK / "adaptors" / f"{key}.rollout.ckpt", ignore_errors=True)
                        with atomic_dir(adir) as tmp:
                            adaptor.save_pretrained(tmp)
                        shutil.rmtree(ckpt, ignore_errors=True)
                m, imgs = evaluate_method(ec, spec, adaptor, name=f"{ablation}/{variant}")
                m["training"] = spec.describe()["training"]
                m["inputs"] = spec.describe()["inputs"]
                cache.save(key, m, imgs[:GRID_IMAGES])
                done[key], grids[key] = m, imgs[:GRID_IMAGES]
            m = done[key]
            row = {"ablation": ablation, "variant": variant, "sampler": m["sampler"], "steps": m["steps"],
                   "clock": m["clock"], "cut": m["cut"], "adaptor": m["adaptor"], "inputs": m["inputs"],
                   "training": m["training"], "guidance": spec.guidance, "train": spec.train_overrides,
                   "width": spec.width if spec.needs_training else None, "depth": spec.depth if spec.needs_training else None,
                   **{k: m[k] for k in ("fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "gflops", "latency_ms",
                                        "adaptor_params", "n_samples", "split", "fid_boot", "clip_boot")}}
            results.append(row)
            shown[f"{ablation}/{variant}"] = grids[key]
            with run.child(f"{ablation}/{variant}", {"ablation": ablation, "variant": variant, **spec.flat()}) as child:
                child.log_metrics({k: row[k] for k in ("fid", "fid_std", "kid", "clip", "gflops", "latency_ms", "adaptor_params")})
        # Forget rows and adaptors no current row uses (made with other settings).
        cache.forget_others()
        for f in (WORK / "adaptors").iterdir():
            if f.name.split(".")[0] not in done:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        with_fewer_steps(results)
        for r in results:
            if r["ablation"] == "levers" and r["vs_fewer_steps"]:
                v = r["vs_fewer_steps"]["fid"]
                log(f"levers/{r['variant']}: FID {r['fid']:.2f} @ {r['gflops']:.2f} GFLOPs, vs fewer steps "
                    + (f"{v['delta']:+.2f} ± {v['delta_std']:.2f}" if v["delta"] is not None else v["status"]))
        record = machine(world.precision, world.device)
        write_json("metrics/ablate.json", {"split": a.split, **record, "rows": results})
        write_json(f"{HEADLINE_DIR}/ablate.json", ablate_headline(results, record))
        save_png(GRID, sample_grid(shown, ec.prompts, GRID_IMAGES))
        run.log_artifact("metrics/ablate.json")
        run.log_artifact(GRID, "samples")
    log(f"ablate: {len(results)} rows ({len(done)} distinct) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
