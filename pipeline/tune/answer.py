"""What a sweep says: its Pareto fronts, every trial against the plain-steps front (ΔFID@FLOPs, as the evaluate
stage scores its methods), the recommended operating point, and the summary printed at the end.

The question a sweep answers is the one Clockwork has to: a user can always sample the plain UNet with fewer
steps. So the plain baseline runs at several step counts, and the recommendation is the trial that beats that
front by the most (``clockwork.pareto.beats_fewer_steps``: ΔFID@FLOPs >= ``beat_margin`` and >=
``beat_sigmas`` standard deviations) - or, plainly, none. The cheapest trial within ``fid_tolerance`` of the
baseline's FID is kept as secondary information.

Every trial and the front are scored on ``sweep.split``: the validation split by default, so the recommendation is
chosen there and the held-out evaluation prompts stay for the final numbers; the answer says which split it was.
The trials are also summarised per adaptor kind (``by_adaptor``: the trial's own ``adaptor`` value, training-free
kinds marked), so that a training-free adaptor's best point stands beside the distilled ones'.
"""

from __future__ import annotations

from typing import Any

from clockwork.pareto import beats_fewer_steps, operating_point, pareto_front, plain_steps_front, versus_fewer_steps
from pipeline.config_sweep import DIMENSIONS, SweepParams
from pipeline.tracking import is_finite
from pipeline.tune.records import FEWER_STEPS, FRONTS, METRICS, Record
from pipeline.tune.space import dotted_get, training_free

# What each split is, for the answer: where the recommendation was chosen.
SPLIT_WORDS = {
    "val": "the validation split (prepare.val_prompts, against prepare.val_reference_images), not on the held-out "
           "evaluation prompts",
    "heldout": "the held-out evaluation prompts (sweep.split: heldout): the test set chose, so its scores are "
               "optimistic",
}


def split_words(split: str | None) -> str:
    return SPLIT_WORDS.get(split or "", f"the {split} split")


def adaptor_kind(r: Record) -> str:
    """The trial's adaptor kind as the sweep ran it (``none`` for the plain baseline)."""
    return "none" if r.baseline else str(r.column("adaptor") or "")


def kind_label(kind: str) -> str:
    """``identity (training-free)``, ``resnet (distilled)``; a trial without an adaptor dimension: ``Clockwork``."""
    if not kind:
        return "Clockwork"
    return f"{kind} ({'training-free' if training_free(kind) else 'distilled'})"


def as_row(r: Record) -> dict:
    """A record as clockwork.pareto reads a point: its metrics (with the bootstrap replicates) and step count."""
    return {**r.metrics, "steps": r.column("steps"), "trial_id": r.trial_id}


def plain_fronts(records: list[Record]) -> tuple[list[dict], list[dict]]:
    """The plain baseline's FID front and CLIP curve (every step count: CLIP barely moves with it)."""
    rows = [as_row(r) for r in records if r.done and r.baseline]
    return (plain_steps_front(rows, "fid"),
            plain_steps_front(rows, "clip", quality_mode="max", drop_dominated=False))


def score_fewer_steps(records: list[Record], sp: SweepParams) -> list[dict]:
    """Every completed record against the plain-steps front, in place; returns the FID front."""
    fid_front, clip_curve = plain_fronts(records)
    for r in records:
        r.vs_fewer_steps, r.beats_fewer_steps = {}, None
        for k in FEWER_STEPS:
            r.metrics.pop(k, None)
        if not (r.done and fid_front):
            continue
        v = {"fid": versus_fewer_steps(as_row(r), fid_front, "fid")}
        if clip_curve:
            v["clip"] = versus_fewer_steps(as_row(r), clip_curve, "clip", quality_mode="max")
        r.vs_fewer_steps = v
        r.metrics.update({k: v["fid"][src] for k, src in FEWER_STEPS.items() if v["fid"][src] is not None})
        if not r.baseline:
            r.beats_fewer_steps = beats_fewer_steps(v["fid"], sp.beat_margin, sp.beat_sigmas)
    return fid_front


def _point(r: Record) -> dict:
    return {"trial_id": r.trial_id, "run_name": r.run_name, "point": r.point,
            **{d: r.column(d) for d in DIMENSIONS}, **{k: r.metrics.get(k) for k in (*METRICS, "gflops_saving")}}


def _g(v, fmt: str = ".4g") -> str:
    return format(v, fmt) if is_finite(v) else "-"


def _delta(r: Record | dict) -> str:
    m = r.metrics if isinstance(r, Record) else r
    return f"ΔFID@FLOPs {m['dfid_at_flops']:+.2f} ± {_g(m.get('dfid_at_flops_std'), '.2f')}"


def fewer_steps_answer(records: list[Record], sp: SweepParams, front: list[dict]) -> tuple[Record | None, dict]:
    """The recommended record (the best ΔFID@FLOPs among those that beat fewer steps, or ``None``) and the
    summary's ``fewer_steps`` entry, whose ``answer`` says it in words."""
    rule = (f"the best ΔFID@FLOPs among trials that beat taking fewer steps (ΔFID@FLOPs >= {sp.beat_margin:g} FID "
            f"and >= {sp.beat_sigmas:g} standard deviations)")
    out: dict[str, Any] = {"rule": rule, "margin": sp.beat_margin, "sigmas": sp.beat_sigmas, "split": sp.split,
                           "beats": [], "best": None}
    where = split_words(sp.split)
    if not front:
        out["answer"] = ("no plain-steps front (sweep.baseline: none, or every baseline failed): no trial is scored "
                         "against taking fewer steps, nothing is recommended")
        return None, out
    trials = [r for r in records if r.done and not r.baseline]
    scored = [r for r in trials if is_finite(r.metrics.get("dfid_at_flops"))]
    beat = [r for r in scored if r.beats_fewer_steps]
    out["beats"] = [r.trial_id for r in beat]
    key = lambda r: (r.metrics["dfid_at_flops"], -(r.metrics.get("gflops") or 0.0))  # noqa: E731
    best = max(scored, key=key) if scored else None
    if best is not None:
        out["best"] = {"trial_id": best.trial_id, "run_name": best.run_name,
                       **{k: best.metrics.get(k) for k in FEWER_STEPS}, "beats_fewer_steps": best.beats_fewer_steps}
    steps = ", ".join(str(int(p["steps"])) for p in front if p.get("steps") is not None)
    if beat:
        rec = max(beat, key=key)
        eq = rec.metrics.get("equal_cost_steps")
        out["answer"] = (f"{rec.run_name} beats taking fewer steps: {_delta(rec)} at {_g(rec.metrics.get('gflops'))} "
                         f"GFLOPs" + (f" (the cost of {eq:.1f} plain steps)" if is_finite(eq) else "")
                         + f"; {len(beat)} of the {len(trials)} completed trials beat the plain-steps front ({steps} steps)"
                         + f"; chosen on {where}")
        return rec, out
    if best is None:
        out["answer"] = (f"no trial beats taking fewer steps: none of the {len(trials)} trials costs what a plain "
                         f"step count of the front ({steps} steps) costs, so none is scored; widen front_steps; scored on {where}")
    else:
        out["answer"] = (f"no trial beats taking fewer steps (ΔFID@FLOPs >= {sp.beat_margin:g} and >= "
                         f"{sp.beat_sigmas:g} sigma): sample the plain UNet with fewer steps instead; the best of "
                         f"{len(scored)} scored trials, {best.run_name}, has {_delta(best)}; scored on {where}")
    return None, out


def by_adaptor(records: list[Record], fronts: dict[str, list[str]]) -> dict[str, dict]:
    """The completed trials per adaptor kind (the trial's ``adaptor`` value, in the order met): how many, whether
    the kind is training-free, which beat fewer steps, its best ΔFID@FLOPs, and its trials on the FID-GFLOPs front."""
    out: dict[str, dict] = {}
    on_front = set(fronts.get("fid_gflops", []))
    for r in records:
        if not r.done or r.baseline:
            continue
        kind = adaptor_kind(r)
        g = out.setdefault(kind, {"training_free": training_free(kind), "label": kind_label(kind), "trials": 0,
                                  "beats": [], "best": None, "fid_gflops_front": []})
        g["trials"] += 1
        if r.beats_fewer_steps:
            g["beats"].append(r.trial_id)
        if r.trial_id in on_front:
            g["fid_gflops_front"].append(r.trial_id)
        d = r.metrics.get("dfid_at_flops")
        if is_finite(d) and (g["best"] is None or d > g["best"]["dfid_at_flops"]):
            g["best"] = {"trial_id": r.trial_id, "run_name": r.run_name, "dfid_at_flops": d,
                         "dfid_at_flops_std": r.metrics.get("dfid_at_flops_std"), "gflops": r.metrics.get("gflops")}
    return out


def analyse(records: list[Record], sp: SweepParams, base: dict) -> dict:
    """Pareto flags, ΔFID@FLOPs and the recommendation on the records (in place), and the summary."""
    done = [r for r in records if r.done]
    rows = [r.metrics for r in done]
    fronts = {name: [done[i].trial_id for i in pareto_front(rows, x, y, xm, ym)]
              for name, (x, xm, y, ym) in FRONTS.items()}
    for r in records:
        r.pareto = {name: r.trial_id in ids for name, ids in fronts.items()}
        r.recommended = False
    front = score_fewer_steps(records, sp)
    rec, fewer = fewer_steps_answer(records, sp, front)
    by_id = {r.trial_id: r for r in records}
    summary: dict[str, Any] = {
        "n_trials": len(records),
        "status": {s: sum(r.status == s for r in records) for s in sorted({r.status for r in records})},
        "fronts": fronts,
        "plain_front": [{"trial_id": p["trial_id"], "run_name": by_id[p["trial_id"]].run_name, "steps": p["steps"],
                         **{k: p.get(k) for k in ("fid", "fid_std", "gflops", "latency_ms")}} for p in front],
        "split": sp.split, "by_adaptor": by_adaptor(records, fronts),
        "fewer_steps": fewer, "baseline": None, "recommended": None, "within_tolerance": None,
        "fid_tolerance": sp.fid_tolerance, "fid_tolerance_relative": sp.fid_tolerance_relative,
    }
    baselines = [r for r in done if r.baseline and is_finite(r.metrics.get("fid"))]
    ref = next((b for b in baselines if b.column("steps") == dotted_get(base, "sampling.steps")), None)
    if ref is None and baselines:
        ref = max(baselines, key=lambda b: (b.column("steps") or 0))
    if ref is None:
        summary["note"] = "no baseline FID (sweep.baseline: none, or the baseline failed): no recommendation"
        return summary
    base_fid, base_gflops = float(ref.metrics["fid"]), ref.metrics.get("gflops")
    for r in records:
        if is_finite(base_gflops) and is_finite(r.metrics.get("gflops")) and base_gflops > 0:
            r.metrics["gflops_saving"] = round(1 - float(r.metrics["gflops"]) / float(base_gflops), 4)
    summary["baseline"] = {"trial_id": ref.trial_id, "run_name": ref.run_name, "steps": ref.column("steps"),
                           **{k: ref.metrics.get(k) for k in METRICS}}

    def versus_baseline(r: Record) -> dict:
        lat, blat = r.metrics.get("latency_ms"), ref.metrics.get("latency_ms")
        return {"fid_delta": round(float(r.metrics["fid"]) - base_fid, 4),
                "latency_ratio": round(lat / blat, 4) if is_finite(lat) and is_finite(blat) and blat > 0 else None}

    if rec is not None:
        rec.recommended = True
        summary["recommended"] = {**_point(rec), **{k: rec.metrics.get(k) for k in FEWER_STEPS},
                                  **versus_baseline(rec)}
    i = operating_point(rows, base_fid, sp.fid_tolerance, quality="fid", cost="gflops",
                        relative=sp.fid_tolerance_relative)
    if i is not None:
        summary["within_tolerance"] = {**_point(done[i]), **versus_baseline(done[i])}
    return summary


def format_summary(name: str, records: list[Record], summary: dict, wall_s: float | None = None) -> str:
    import pandas as pd

    rows = []
    for r in records:
        m = r.metrics
        rows.append({
            "trial": r.run_name, "adaptor": adaptor_kind(r) + ("*" if training_free(adaptor_kind(r)) else ""),
            "status": r.status,
            "fid": m.get("fid"), "clip": m.get("clip"), "gflops": m.get("gflops"),
            "saving": m.get("gflops_saving"), "ms": m.get("latency_ms"), "loss": m.get("distill_loss"),
            "dFID@F": m.get("dfid_at_flops"), "±": m.get("dfid_at_flops_std"),
            "front": "".join(c for n, c in zip(FRONTS, "FCL") if r.pareto.get(n)) or "-",
            "": ("<- recommended" if r.recommended else "baseline" if r.baseline
                 else "beats fewer steps" if r.beats_fewer_steps else ""),
        })
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["gflops", "fid"], na_position="last")
    counts = ", ".join(f"{n} {s}" for s, n in summary["status"].items())
    head = f"Sweep {name}: {summary['n_trials']} trials ({counts})" + (f" in {wall_s:.0f} s" if wall_s else "")
    lines = [head, df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "(no trials)",
             "front: F = FID vs GFLOPs, C = CLIP vs GFLOPs, L = FID vs latency; dFID@F = ΔFID@FLOPs against the "
             "plain-steps front (> 0: better than taking fewer steps); adaptor* = training-free"]
    split = summary.get("split")
    if split:
        lines.append(f"Scored on {split_words(split)}")
    for kind, g in (summary.get("by_adaptor") or {}).items():
        best = g.get("best")
        lines.append(f"Adaptor {g['label']}: {g['trials']} trial{'s' if g['trials'] != 1 else ''}, "
                     f"{len(g['beats'])} beat{'s' if len(g['beats']) == 1 else ''} fewer steps"
                     + (f", best {best['run_name']} (ΔFID@FLOPs {best['dfid_at_flops']:+.2f} ± "
                        f"{_g(best.get('dfid_at_flops_std'), '.2f')})" if best else ", none scored against the front")
                     + f", {len(g['fid_gflops_front'])} on the FID-GFLOPs front")
    if summary.get("plain_front"):
        lines.append("Plain-steps front: " + ", ".join(f"{p['steps']} steps FID {_g(p['fid'])} at {_g(p['gflops'])} "
                                                       "GFLOPs" for p in summary["plain_front"]))
    b, rec, tol_pick = summary.get("baseline"), summary.get("recommended"), summary.get("within_tolerance")
    if b:
        lines.append(f"Baseline ({b['run_name']}): FID {_g(b['fid'])}, CLIP {_g(b.get('clip'))}, "
                     f"GFLOPs {_g(b.get('gflops'))}, latency {_g(b.get('latency_ms'))} ms")
    lines.append(f"Answer: {summary['fewer_steps']['answer']}")
    if rec:
        saving = rec.get("gflops_saving")
        dims = ", ".join(f"{d} {rec[d]}" for d in DIMENSIONS if rec.get(d) is not None)
        chosen = {"val": "; chosen on the validation split", "heldout": "; chosen on the held-out evaluation prompts, "
                  "the test set"}.get(split or "", f"; chosen on the {split} split" if split else "")
        lines.append(
            f"Recommended operating point ({summary['fewer_steps']['rule']}{chosen}): {rec['run_name']} = {dims}: "
            f"GFLOPs {_g(rec.get('gflops'))} ({'-' if saving is None else f'{100 * saving:.1f}% saved'}), "
            f"FID {_g(rec['fid'])} ({rec['fid_delta']:+.3g} vs the baseline), {_delta(rec)}, "
            f"CLIP {_g(rec.get('clip'))}, latency {_g(rec.get('latency_ms'))} ms")
    if b:
        tol = (f"{100 * summary['fid_tolerance']:.3g}% of the baseline" if summary["fid_tolerance_relative"]
               else f"+{summary['fid_tolerance']:g} FID")
        lines.append(f"Cheapest within {tol} of the baseline FID: {tol_pick['run_name']} (GFLOPs "
                     f"{_g(tol_pick.get('gflops'))}, FID {_g(tol_pick['fid'])})" if tol_pick
                     else f"No trial stays within {tol} of the baseline FID.")
    else:
        lines.append(summary.get("note", "no recommendation"))
    return "\n".join(lines)
