"""Schedules chosen on calibration prompts, and the Clockwork fronts they make.

The distill stage decides the calibration prompts once (the validation split's first ``clock.calibration_prompts``,
else the distillation prompts it held out of training - never evaluation prompts), chooses the schedule when
``clock.adaptor_steps: auto`` and writes both to :data:`SCHEDULE_FILE`; the evaluate stage reads that file to search
the best schedule per budget of each adaptor of ``evaluate.fronts`` (:func:`choose_schedules`,
:func:`clockwork.schedule.search_schedules` over the sample-change score) and to draw every front on one chart
(:func:`plot_fronts`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.common.methods import MethodSpec

SCHEDULE_FILE = "metrics/schedule.json"
ALL_STEPS_DIR = "all_steps"  # inside models/adaptor: the adaptor trained on every step, before the fine-tune (auto)


def calibration_prompts(prepared, heldout_prompts: int, n: int) -> tuple[list[str], str]:
    """``n`` prompts the schedule search may look at, and where they come from (``val`` | ``distill-heldout``)."""
    if prepared.val_prompts:
        pool, source = prepared.val_prompts, "val"
    else:
        pool, source = prepared.distill_prompts[len(prepared.distill_prompts) - heldout_prompts:] if heldout_prompts else [], \
            "distill-heldout"
    if len(pool) < n:
        raise ValueError(f"clock.calibration_prompts={n} but only {len(pool)} calibration prompts exist (prepare.val_prompts, "
                         "else distill.heldout_prompts): the schedule search never samples evaluation prompts")
    return list(pool[:n]), source


def sample_change(world, prepared, prompts: Sequence[str], spec: MethodSpec, adaptor, seed: int):
    """``score(schedule)``: how far Clockwork's final sample moves from the full UNet's on ``prompts``
    (clockwork.schedule.sample_change_scorer; cheap: one batch per schedule)."""
    import torch

    from clockwork.schedule import sample_change_scorer

    ctx, pooled = prepared.table.lookup(list(prompts))
    neg, neg_pooled = prepared.table.uncond(1)
    added = None
    if world.added_cond(pooled[:1]) is not None:  # SDXL: CFG order, negative rows first
        added = {k: v.to(world.device, world.unet.dtype)
                 for k, v in world.added_cond(torch.cat([neg_pooled.expand_as(pooled), pooled])).items()}
    return sample_change_scorer(world.unet, world.sampler(spec.sampler), ctx, neg.expand_as(ctx), adaptor=adaptor,
                                cut=spec.cut, steps=spec.steps, guidance=spec.guidance, seed=seed,
                                added_cond_kwargs=added, latent_size=world.latent_size)


def validation_fid(world, prepared, prompts: Sequence[str], spec: MethodSpec, adaptor, seed: int, batch_size: int = 500):
    """``score(schedule)``: the FID of Clockwork's images of ``prompts`` (validation prompts) against the validation
    split's reference images - what the evaluation measures, on data it never sees (one sampling pass and one
    Inception pass per schedule: use it on a GPU)."""
    import dataclasses

    from pipeline.common.evaluation import fid_against, inception, sample_images

    reference = prepared.val_reference
    if reference is None or list(prompts) != list(prepared.val_prompts[:len(prompts)]):
        raise ValueError("clock.schedule_score: val_fid needs the validation split and its reference statistics "
                         "(prepare.val_prompts, prepare.val_reference_images)")
    ctx, pooled = prepared.table.lookup(list(prompts))
    neg, neg_pooled = prepared.table.uncond(1)
    latents = world.latents(len(prompts), seed)

    def score(schedule: tuple[int, ...]) -> float:
        s = dataclasses.replace(spec, adaptor_steps=tuple(schedule))
        images = sample_images(world, s, adaptor, ctx, neg, latents, batch_size, progress=False, pooled=pooled,
                               neg_pooled=neg_pooled)
        return fid_against(inception(images, world.device, False, reference.precision), reference)

    return score


SCORES = {"sample_change": sample_change, "val_fid": validation_fid}  # clock.schedule_score


def choose_schedules(world, prepared, prompts: Sequence[str], spec: MethodSpec, adaptor, budgets: Sequence[int],
                     seed: int, score: str = "sample_change") -> list[dict]:
    """The best adaptor steps for each budget for ``adaptor`` with ``spec``'s sampler, steps, guidance and cut, by
    ``score`` on ``prompts`` (:data:`SCORES`; clockwork.schedule.search_schedules), lowest first."""
    from clockwork.schedule import search_schedules

    if score not in SCORES:
        raise ValueError(f"schedule score must be one of {sorted(SCORES)}, got {score!r}")
    fn = SCORES[score](world, prepared, prompts, spec, adaptor, seed)
    return [{"budget": c.budget, "adaptor_steps": list(c.adaptor_steps), "score": c.score, "method": c.method,
             "candidates": c.candidates, "ranking": [[list(s), v] for s, v in c.ranking]}
            for c in search_schedules(fn, spec.steps, list(budgets))]


def schedule_score(world, prepared, prompts: Sequence[str], spec: MethodSpec, adaptor, schedule: Sequence[int],
                   seed: int, score: str = "sample_change") -> float:
    """One schedule's ``score`` (:data:`SCORES`) for ``adaptor`` on ``prompts``, as :func:`choose_schedules` scores it."""
    return SCORES[score](world, prepared, prompts, spec, adaptor, seed)(tuple(schedule))


def front_methods(fronts: Sequence[str], budgets: Sequence[int], world, prepared, clockwork_spec: MethodSpec, adaptor,
                  schedule: dict, adaptor_dir: str | Path, search_dir: str | Path, context: str) -> dict[str, tuple]:
    """The rows of the Clockwork fronts: ``front_<adaptor>_b<budget>`` -> (spec, adaptor or None, what the row
    records of its search), for each adaptor of ``fronts`` (distilled: the all-steps adaptor in ``adaptor_dir`` when
    ``clock.adaptor_steps: auto`` made one, else ``adaptor``) at its best schedule per budget, searched on the
    calibration prompts of ``schedule`` (metrics/schedule.json). Searches are kept in ``search_dir`` (a cut run does
    not search again)."""
    import dataclasses

    from clockwork.adaptors import load_adaptor
    from pipeline.common.io import obj_sha, write_json
    from pipeline.common.methods import build_adaptor_for
    from pipeline.common.rows import weights_sha

    cal = schedule["calibration"]
    if not cal.get("prompts"):
        raise SystemExit(f"{SCHEDULE_FILE} records no calibration prompts (too few for clock.calibration_prompts?); "
                         "dvc repro distill")
    score = cal.get("score", "sample_change")
    out = {}
    for kind in fronts:
        if kind == "distilled":
            all_steps = Path(adaptor_dir) / ALL_STEPS_DIR
            spec, a = clockwork_spec, load_adaptor(all_steps) if all_steps.is_dir() else adaptor
        else:
            spec = dataclasses.replace(clockwork_spec, adaptor=kind).normalized()
            a = build_adaptor_for(spec, world.unet_config)
        found = Path(search_dir) / f"search_{obj_sha([kind, spec.key(), weights_sha(a), list(budgets), cal, context])}.json"
        if found.is_file():
            chosen = json.loads(found.read_text())
        else:
            chosen = choose_schedules(world, prepared, cal["prompts"], spec, a, budgets, cal["seed"], score)
            write_json(found, chosen)
        for c in chosen:
            out[f"front_{kind}_b{c['budget']}"] = (
                dataclasses.replace(spec, adaptor_steps=tuple(c["adaptor_steps"])), a if kind == "distilled" else None,
                {"front": kind, "budget": c["budget"], "schedule_score": c["score"], "calibration": cal["source"],
                 "score": score, **({"all_steps_adaptor": a is not adaptor} if kind == "distilled" else {})})
    return out


def read_schedule(path: str | Path = SCHEDULE_FILE) -> dict:
    """What the distill stage chose (``adaptor_steps``, ``mode``: given | auto) and the calibration prompts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run the distill stage (dvc repro distill)")
    return json.loads(path.read_text())


def front_rows(results: dict[str, dict]) -> dict[str, list[tuple[str, dict]]]:
    """The evaluate rows of each front, by adaptor, cheapest first: ``front_<adaptor>_b<budget>``."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for name, m in results.items():
        if name.startswith("front_"):
            out.setdefault(m["front"], []).append((name, m))
    return {k: sorted(v, key=lambda r: r[1]["gflops"]) for k, v in out.items()}


def plot_fronts(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """FID against GFLOPs: the plain-steps front, each adaptor's Clockwork front (labelled with its adaptor steps)
    and the configured Clockwork point, with FID's bootstrap std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = results["baseline"]["gflops"]
    plain = sorted((m for n, m in results.items() if n == "baseline" or n.startswith("baseline_")),
                   key=lambda m: m["gflops"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.errorbar([m["gflops"] / full for m in plain], [m["fid"] for m in plain], [m["fid_std"] for m in plain], fmt="s-",
                color="0.35", ms=4, capsize=2, label="fewer plain steps")
    for m in plain:
        ax.annotate(str(m["steps"]), (m["gflops"] / full, m["fid"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    for i, (adaptor, rows) in enumerate(front_rows(results).items()):
        xs, ys = [m["gflops"] / full for _, m in rows], [m["fid"] for _, m in rows]
        ax.errorbar(xs, ys, [m["fid_std"] for _, m in rows], fmt="o-", color=f"C{i}", ms=4, capsize=2,
                    label=f"Clockwork front: {adaptor}")
        for (_, m), x, y in zip(rows, xs, ys):
            ax.annotate("{" + ",".join(map(str, m["clock"])) + "}", (x, y), fontsize=6, color=f"C{i}", xytext=(3, 3),
                        textcoords="offset points")
    if "clockwork" in results:
        c = results["clockwork"]
        ax.errorbar([c["gflops"] / full], [c["fid"]], [c["fid_std"]], fmt="*", color="k", ms=10, capsize=2,
                    label=f"clockwork {c['clock']}")
    ax.set_xlabel("GFLOPs / full sampler's")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
