"""The Clockwork front's acceptance numbers from two evaluate runs on the same prompts and noise (scripts/gpu/auto_schedule.sh).

    python scripts/compare_schedules.py AUTO_EVALUATE_JSON HAND_EVALUATE_JSON --out DIR

AUTO: the evaluate stage of a run with ``clock.adaptor_steps: auto`` and ``evaluate.fronts`` (its plain-steps front,
the fronts and the auto-chosen Clockwork row); HAND: a run with the hand-found schedule (its ``clockwork`` row). Writes
DIR/compare_schedules.json and .md:
- auto-chosen vs hand-found Clockwork: FID difference with the paired bootstrap std (both runs resample the same
  image indices: same n, same evaluate.seed) and the unpaired one; verdict "as good or better" = auto's FID lower, or
  higher by at most 2 sigma;
- both against the plain-steps front at equal GFLOPs (dFID@FLOPs; HAND's row against AUTO's plain rows: same prompts);
- every front row (adaptor, budget, schedule, GFLOPs, dFID@FLOPs +- std) and the GFLOPs range over which each front
  beats the plain-steps front by >= +1.0 and >= 2 sigma;
- the all-steps adaptor at the chosen schedule (no fine-tune: the `distilled` front row of the same budget) vs the
  fine-tuned one: which of the two ways to train for a chosen schedule worked;
- with --trained LABEL=JSON ...: the trained adaptor's front (auto's row plus runs distilled for the schedules the
  search chose at other budgets); with --other LABEL=JSON ...: further rows on the same prompts (diagnostics).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MARGIN, SIGMAS = 1.0, 2.0


def _diff(a: dict, b: dict) -> dict:
    """a - b in FID, with paired (same bootstrap indices) and unpaired std."""
    d = a["fid"] - b["fid"]
    paired = float(np.std(np.asarray(a["fid_boot"]) - np.asarray(b["fid_boot"]), ddof=1))
    return {"fid_diff": round(d, 3), "paired_std": round(paired, 3),
            "unpaired_std": round(math.hypot(a["fid_std"], b["fid_std"]), 3)}


def _vs(m: dict) -> dict:
    v = m["vs_fewer_steps"]["fid"]
    return {"dfid_at_flops": None if v["delta"] is None else round(v["delta"], 3),
            "std": None if v["delta_std"] is None else round(v["delta_std"], 3), "status": v.get("status")}


def _beats(v: dict) -> bool:
    return v["dfid_at_flops"] is not None and v["dfid_at_flops"] >= MARGIN and v["dfid_at_flops"] >= SIGMAS * (v["std"] or 0)


def _same_prompts(auto: dict, other: dict, name: str) -> None:
    if not math.isclose(other["baseline"]["fid"], auto["baseline"]["fid"], abs_tol=1e-3):  # two GPU processes: ~1e-5
        raise SystemExit(f"{name}'s baseline differs from auto's (FID {other['baseline']['fid']:.4f} vs "
                         f"{auto['baseline']['fid']:.4f}): they were not evaluated on the same prompts and noise")


def _point(m: dict, full: float, plain: list[dict], label: str) -> dict:
    """A Clockwork row of another run (same prompts and noise) against AUTO's plain-steps rows."""
    from pipeline.common import vs_fewer_steps

    m = dict(m, vs_fewer_steps=vs_fewer_steps(m, plain))
    return {"run": label, "budget": len(m["clock"]), "adaptor_steps": m["clock"], "gflops_x": round(m["gflops"] / full, 3),
            "fid": round(m["fid"], 3), "fid_std": round(m["fid_std"], 3), **_vs(m)}


def compare(auto: dict, hand: dict, trained: dict[str, dict] | None = None, other: dict[str, dict] | None = None) -> dict:
    """``trained``: runs whose adaptor was distilled for a schedule the search chose at another budget (label ->
    evaluate.json); with auto's own row they make the trained adaptor's front. ``other``: further Clockwork rows on
    the same prompts (diagnostics), listed with their dFID@FLOPs."""
    from pipeline.common import vs_fewer_steps

    full = auto["baseline"]["gflops"]
    _same_prompts(auto, hand, "HAND")
    for label, run in {**(trained or {}), **(other or {})}.items():
        _same_prompts(auto, run, label)
    plain = [m for n, m in auto.items() if n == "baseline" or n.startswith("baseline_")]
    h = dict(hand["clockwork"], vs_fewer_steps=vs_fewer_steps(hand["clockwork"], plain))
    a = auto["clockwork"]
    d = _diff(a, h)
    verdict = "as good or better" if d["fid_diff"] <= SIGMAS * d["paired_std"] else "worse"
    fronts: dict[str, list] = {}
    for name, m in auto.items():
        if "front" in m:
            fronts.setdefault(m["front"], []).append({
                "row": name, "budget": m["budget"], "adaptor_steps": m["clock"], "gflops_x": round(m["gflops"] / full, 3),
                "fid": round(m["fid"], 3), "fid_std": round(m["fid_std"], 3), "schedule_score": m["schedule_score"],
                **_vs(m)})
    if trained is not None:
        fronts["trained"] = [{**_point(a, full, plain, "auto"), "row": "clockwork"}] + \
            [{**_point(r["clockwork"], full, plain, label), "row": f"{label}:clockwork"} for label, r in trained.items()]
    ranges = {}
    for kind, rows in fronts.items():
        rows.sort(key=lambda r: r["budget"])
        won = [r["gflops_x"] for r in rows if _beats(r)]
        ranges[kind] = {"beats_plain_at_gflops_x": sorted(won), "budgets": [r["budget"] for r in rows if _beats(r)]}
    same_budget = [r for r in fronts.get("distilled", []) if r["adaptor_steps"] == a["clock"]]
    finetune = None
    if same_budget:
        r = auto[same_budget[0]["row"]]
        finetune = {"all_steps_row": same_budget[0]["row"], **_diff(a, r),
                    "reading": "fine-tuned minus all-steps adaptor at the chosen schedule (negative: the fine-tune helped)"}
    return {
        "auto": {"adaptor_steps": a["clock"], "fid": round(a["fid"], 3), "fid_std": round(a["fid_std"], 3),
                 "gflops_x": round(a["gflops"] / full, 3), **_vs(a)},
        "hand": {"adaptor_steps": h["clock"], "fid": round(h["fid"], 3), "fid_std": round(h["fid_std"], 3),
                 "gflops_x": round(h["gflops"] / full, 3), **_vs(h)},
        "auto_minus_hand": {**d, "verdict": verdict, "rule": f"auto's FID lower, or higher by <= {SIGMAS:g} paired sigma"},
        "finetune_vs_all_steps": finetune, "fronts": fronts, "fronts_beat_plain": ranges,
        "rule": f"a front point beats the plain-steps front when dFID@FLOPs >= +{MARGIN} and >= {SIGMAS:g} sigma",
        "others": [_point(r["clockwork"], full, plain, label) for label, r in (other or {}).items()],
        "n_samples": a["n_samples"], "split": a.get("split"),
    }


def markdown(c: dict) -> str:
    def vs(r):
        return r.get("status") or "-" if r["dfid_at_flops"] is None else f"{r['dfid_at_flops']:+.2f} ± {r['std']:.2f}"

    d = c["auto_minus_hand"]
    title = "Auto-chosen vs hand-found schedule" + (", and the Clockwork fronts" if c["fronts"] else "")
    lines = [f"# {title} (n = {c['n_samples']} {c['split']} prompts)",
             "", "| Clockwork | adaptor steps | GFLOPs | FID | dFID@FLOPs |", "|---|---|---|---|---|"]
    for k in ("auto", "hand"):
        r = c[k]
        lines.append(f"| {k} | {r['adaptor_steps']} | {r['gflops_x']:.3f}x | {r['fid']:.2f} ± {r['fid_std']:.2f} | {vs(r)} |")
    lines += ["", f"Auto - hand: FID {d['fid_diff']:+.2f} (paired std {d['paired_std']:.2f}, unpaired "
              f"{d['unpaired_std']:.2f}): **{d['verdict']}** ({d['rule']}).", ""]
    if c["finetune_vs_all_steps"]:
        f = c["finetune_vs_all_steps"]
        lines += [f"Fine-tuned on the chosen steps minus the all-steps adaptor there ({f['all_steps_row']}): FID "
                  f"{f['fid_diff']:+.2f} (paired std {f['paired_std']:.2f}).", ""]
    if c["fronts"]:
        lines += ["| front | budget | adaptor steps | GFLOPs | FID | dFID@FLOPs | beats plain |",
                  "|---|---|---|---|---|---|---|"]
        for kind, rows in c["fronts"].items():
            for r in rows:
                lines.append(f"| {kind} | {r['budget']} | {r['adaptor_steps']} | {r['gflops_x']:.3f}x | {r['fid']:.2f} ± "
                             f"{r['fid_std']:.2f} | {vs(r)} | {'yes' if _beats(r) else 'no'} |")
        lines += ["", c["rule"] + "."]
    if "trained" in c["fronts"]:
        lines += ["", "`trained`: each budget's schedule chosen by the all-steps adaptor on validation prompts, with an "
                  "adaptor trained for it (auto: fine-tuned from the all-steps adaptor; the others: distilled on that "
                  "schedule alone, as the hand-found one is)."]
    if c.get("others"):
        lines += [""] if lines[-1] else []
        lines += ["Other runs on the same prompts and noise:", "", "| run | adaptor steps | GFLOPs | FID | dFID@FLOPs |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {r['adaptor_steps']} | {r['gflops_x']:.3f}x | {r['fid']:.2f} ± {r['fid_std']:.2f} | "
                  f"{vs(r)} |" for r in c["others"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("auto")
    ap.add_argument("hand")
    ap.add_argument("--out", required=True)
    ap.add_argument("--trained", nargs="*", default=None, metavar="LABEL=EVALUATE_JSON",
                    help="runs with an adaptor distilled for the schedule the search chose at another budget")
    ap.add_argument("--other", nargs="*", default=None, metavar="LABEL=EVALUATE_JSON",
                    help="further Clockwork runs on the same prompts and noise (listed with their dFID@FLOPs)")
    args = ap.parse_args()

    def runs(items):
        if items is None:
            return None
        bad = [i for i in items if "=" not in i]
        if bad:
            ap.error(f"--trained/--other take LABEL=EVALUATE_JSON, got {bad}")
        return {k: json.loads(Path(v).read_text()) for k, v in (i.split("=", 1) for i in items)}

    c = compare(json.loads(Path(args.auto).read_text()), json.loads(Path(args.hand).read_text()), runs(args.trained),
                runs(args.other))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_schedules.json").write_text(json.dumps(c, indent=1) + "\n")
    (out / "compare_schedules.md").write_text(markdown(c))
    print(markdown(c))


if __name__ == "__main__":
    main()
