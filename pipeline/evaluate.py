"""Stage `evaluate`: every method on the same held-out prompts and the same seeds -> metrics/evaluate.json.

Methods (docs/CONTRACTS.md): `baseline` (sampling.steps), `clockwork` (the distilled adaptor from
models/adaptor at `cut` and `clock`), `clockwork_identity` (training-free), and `baseline_<k>steps` for every
other step count of `evaluate.front_steps`: the plain-steps front, the alternative a user would pick instead.
Every method gets `vs_fewer_steps`: its FID and CLIP against that front interpolated at its GFLOPs
(clockwork.pareto.versus_fewer_steps; positive = better than taking fewer steps, paired-bootstrap std, or a
status when no plain step count costs the same) - the question Clockwork has to answer. Each gets FID and KID
against held-out real images (with bootstrap / subset std), the CLIP score of the world's scorer,
total GFLOPs per image (CFG batch 2, clockwork.flops), the measured latency of the UNet loop for one
prompt on this machine, and the adaptor's parameter count. plots/samples/evaluate.png shows the same
prompts and seeds for every method, the prompt under each image. metrics/headline/evaluate.json (the DVC metric)
holds the few numbers a terminal shows (pipeline.common.headline) with the resolved precision and the CPU.

`evaluate.fronts` (distilled | identity | forecast) x `evaluate.front_budgets`: for each adaptor the best adaptor steps
per budget, searched on the calibration prompts the distill stage recorded in metrics/schedule.json (validation
prompts, never these evaluation ones; pipeline/common/fronts.py), each evaluated as row `front_<adaptor>_b<budget>`
on the same prompts and seeds; `distilled` uses the all-steps adaptor where `clock.adaptor_steps: auto` made one.
plots/fronts.png draws every front beside the plain-steps front. With `clock.adaptor_steps: auto` the `clockwork`
and `clockwork_identity` rows take the schedule the distill stage chose.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402

GRID = "plots/samples/evaluate.png"
FRONTS_PLOT = "plots/fronts.png"
WORK = Path("data/evaluate")  # finished rows and front searches (persisted): a cut run resumes, an added row reuses


def methods(p, schedule: list[int] | None = None) -> dict:
    """The rows every run has; ``schedule``: the adaptor steps the distill stage chose (``clock.adaptor_steps: auto``)."""
    from pipeline.common import MethodSpec

    base = dict(sampler=p.sampling.sampler, guidance=p.sampling.guidance)
    steps = schedule if p.clock.adaptor_steps == "auto" else p.clock.adaptor_steps
    clock = dict(clock=p.clock.period, adaptor_steps=tuple(steps) if steps is not None else None, cut=p.cut)
    return {
        "baseline": MethodSpec(steps=p.sampling.steps, **base),
        "clockwork": None,  # built from the distilled adaptor's own config
        "clockwork_identity": MethodSpec(steps=p.sampling.steps, adaptor="identity", **base, **clock),
        **{f"baseline_{k}steps": MethodSpec(steps=k, **base)
           for k in sorted(set(p.evaluate.front_steps) - {p.sampling.steps}, reverse=True)},
    }


def _delta(v: dict) -> str:
    return f"dFID@FLOPs {v['delta']:+.2f} ± {v['delta_std']:.2f}" if v["delta"] is not None else v["status"]


def main() -> None:
    p = load_params("evaluate")
    import dataclasses

    import torch

    from clockwork.adaptors import load_adaptor
    from pipeline import tracking
    from pipeline.common import (ADAPTOR_DIR, EvalContext, Prepared, evaluate_method, load_world, log, sample_grid,
                                 save_png, vs_fewer_steps, write_json)
    from pipeline.common.fronts import front_methods, plot_fronts, read_schedule
    from pipeline.common.rows import RowCache, stage_context
    from pipeline.common.headline import HEADLINE_DIR, evaluate_headline, machine

    world = load_world(p.world, p.evaluate.device)
    prepared = Prepared.load()
    e = p.evaluate
    ec = EvalContext(world, prepared, e.n_samples, e.seed, e.batch_size, e.fid_bootstrap, e.kid_subsets,
                     e.kid_subset_size, e.latency_runs)
    adaptor = load_adaptor(ADAPTOR_DIR)
    cfg = adaptor.config
    schedule = read_schedule()
    specs = methods(p, schedule["adaptor_steps"])
    specs["clockwork"] = dataclasses.replace(
        specs["clockwork_identity"], adaptor=adaptor.kind, width=cfg.get("width", 0) or 0, depth=cfg.get("depth", 0) or 0,
        inputs=tuple(cfg.get("inputs", ("r_out_prev",))))
    if int(cfg.get("cut", p.cut)) != p.cut:
        raise SystemExit(f"{ADAPTOR_DIR} was distilled for cut {cfg.get('cut')}, params.yaml says cut: {p.cut}; "
                         "dvc repro distill")
    results, images = {}, {}
    t0 = time.perf_counter()
    rows = {name: (spec, adaptor if name == "clockwork" else None, {}) for name, spec in specs.items()}
    # what a row depends on besides its method and weights (not which rows or fronts are asked for)
    context = stage_context("evaluate", p, world, ("world", "evaluate"),
                            ignore=("evaluate.fronts", "evaluate.front_budgets", "evaluate.front_steps", "evaluate.device"))
    cache = RowCache(WORK / "rows", context)
    if e.fronts:
        t_search = time.perf_counter()
        rows.update(front_methods(e.fronts, e.front_budgets, world, prepared, specs["clockwork"], adaptor, schedule,
                                  ADAPTOR_DIR, WORK, context))
        log(f"front schedules searched in {time.perf_counter() - t_search:.0f}s")
    done: dict = {}  # a front row that is another row (same spec, same adaptor) is evaluated once
    with tracking.stage_run("evaluate", p.flat(), tags={"device": world.device, "torch_threads": torch.get_num_threads()}) as run:
        for name, (spec, a, extra) in rows.items():
            same = (spec.key(), id(a))
            if same in done:
                results[name] = {**results[done[same]], **extra, "same_as": done[same]}
                log(f"{name}: the same method as {done[same]}")
                continue
            key = cache.key(spec, a)
            row = cache.load(key)
            if row is not None:
                log(f"{name}: reused ({cache.folder}/{key})")
            else:
                with run.child(name, spec.flat()) as child:
                    row = evaluate_method(ec, spec, a, name=name)
                    child.log_metrics(row[0])
                cache.save(key, row[0], row[1][:e.grid_images])
            m, imgs = row
            results[name], done[same] = {**m, **extra}, name
            if not extra:
                images[name] = imgs[:e.grid_images]  # only the grid's: a real model's images add up (SDXL: 3 MB each)
        b = results["baseline"]
        plain = [m for name, m in results.items() if name == "baseline" or name.startswith("baseline_")]
        for m in results.values():
            m["vs_fewer_steps"] = vs_fewer_steps(m, plain)
        for name, m in results.items():
            run.log_metrics({f"{name}.{k}": v for k, v in m.items() if k in ("fid", "kid", "clip", "gflops", "latency_ms")})
            log(f"{name:>19}: FID {m['fid']:7.2f} ± {m['fid_std']:.2f}  CLIP {m['clip']:.2f}  "
                f"GFLOPs {m['gflops']:.2f} ({m['gflops'] / b['gflops']:.2f}x)  {m['latency_ms']:.1f} ms  "
                f"vs fewer steps: {_delta(m['vs_fewer_steps']['fid'])}")
            v = m["vs_fewer_steps"]["fid"]
            if v["delta"] is not None:
                run.log_metrics({f"{name}.dfid_at_flops": v["delta"], f"{name}.dfid_at_flops_std": v["delta_std"]})
        cache.forget_others()
        write_json("metrics/evaluate.json", results)
        write_json(f"{HEADLINE_DIR}/evaluate.json", evaluate_headline(results, machine(world.precision, world.device)))
        if e.grid_images:
            save_png(GRID, sample_grid(images, ec.prompts, e.grid_images))
            run.log_artifact(GRID, "samples")
        plot_fronts(results, FRONTS_PLOT, f"{p.sampling.sampler} {p.sampling.steps} steps, cut {p.cut}, n={e.n_samples} "
                    f"held-out prompts; schedules chosen on {schedule['calibration']['source'] or '-'} prompts")
        run.log_artifact(FRONTS_PLOT, "plots")
        run.log_artifact("metrics/evaluate.json")
    log(f"evaluate done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
