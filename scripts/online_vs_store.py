"""Online vs stored distillation: score a second adaptor beside the evaluate stage's, on the same prompts and seeds.

The evaluate stage has scored the plain-steps front, the identity adaptor and Clockwork with the store-distilled
adaptor (models/adaptor -> metrics/evaluate.json). This scores Clockwork with the online-distilled adaptor
(``--online DIR``) exactly as the stage scores a method (pipeline.common.evaluate_method: same EvalContext, prompts,
noise, bootstrap indices) and compares:

- FID online - store, with the paired bootstrap std (both bootstraps resample the same image indices) and the
  unpaired one (the two stds in quadrature); "within 2 sigma" uses the unpaired one, the stricter reading;
- each adaptor's dFID@FLOPs against the plain-steps front (positive: better than taking fewer steps).

    CLOCKWORK_PARAMS=reports/online-vs-store/params_store.yaml \
        python scripts/online_vs_store.py --online models/adaptor_online --evaluate metrics/evaluate.json --out OUT

Writes OUT/online_vs_store.json and OUT/online_vs_store.md; run where the evaluate stage ran (same data/prepared).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def compare(store: dict, online: dict) -> dict:
    """The acceptance numbers of two scored Clockwork rows (metrics/evaluate.json rows with vs_fewer_steps)."""
    from clockwork.pareto import beats_fewer_steps

    d = online["fid"] - store["fid"]
    paired = [o - s for o, s in zip(online["fid_boot"], store["fid_boot"])]
    paired_std = statistics.stdev(paired) if len(paired) > 1 else float("nan")
    unpaired_std = math.hypot(online["fid_std"], store["fid_std"])
    row = {}
    for name, m in (("store", store), ("online", online)):
        v = m["vs_fewer_steps"]["fid"]
        row[name] = {"fid": m["fid"], "fid_std": m["fid_std"], "clip": m["clip"], "gflops": m["gflops"],
                     "dfid_at_flops": v["delta"], "dfid_std": v["delta_std"],
                     "beats_fewer_steps": beats_fewer_steps(v) is True}  # None (outside the front): no
    return {**row, "fid_online_minus_store": d, "paired_std": paired_std, "unpaired_std": unpaired_std,
            "within_2sigma": abs(d) <= 2 * unpaired_std}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--online", type=Path, required=True, help="the online-distilled adaptor folder")
    ap.add_argument("--evaluate", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--distill", type=Path, nargs=2, metavar=("STORE_JSON", "ONLINE_JSON"),
                    help="the two runs' metrics/distill.json, quoted in the report")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_params("evaluate")
    import dataclasses

    from clockwork.adaptors import load_adaptor
    from pipeline.common import EvalContext, Prepared, evaluate_method, load_world, vs_fewer_steps, write_json
    from evaluate import methods  # pipeline/evaluate.py's method list: the same Clockwork spec

    results = json.loads(a.evaluate.read_text())
    world = load_world(p.world, p.evaluate.device)
    e = p.evaluate
    ec = EvalContext(world, Prepared.load(), e.n_samples, e.seed, e.batch_size, e.fid_bootstrap, e.kid_subsets,
                     e.kid_subset_size, e.latency_runs)
    adaptor = load_adaptor(a.online)
    cfg = adaptor.config
    spec = dataclasses.replace(methods(p)["clockwork_identity"], adaptor=adaptor.kind, width=cfg.get("width", 0) or 0,
                               depth=cfg.get("depth", 0) or 0, inputs=tuple(cfg.get("inputs", ("r_out_prev",))))
    online, _ = evaluate_method(ec, spec, adaptor, name="clockwork_online")
    plain = [m for name, m in results.items() if name == "baseline" or name.startswith("baseline_")]
    online["vs_fewer_steps"] = vs_fewer_steps(online, plain)
    out = {"compare": compare(results["clockwork"], online), "clockwork_online": online,
           "distill": {k: json.loads(f.read_text()) for k, f in zip(("store", "online"), a.distill)} if a.distill else None}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "online_vs_store.json", out)
    c = out["compare"]
    lines = ["| adaptor | FID | CLIP | GFLOPs | dFID@FLOPs | beats fewer steps (>= +1.0 and >= 2 sigma) |", "|---|---|---|---|---|---|"]
    for name in ("store", "online"):
        r = c[name]
        lines.append(f"| {name} | {r['fid']:.2f} ± {r['fid_std']:.2f} | {r['clip']:.2f} | {r['gflops']:.2f} | "
                     f"{r['dfid_at_flops']:+.2f} ± {r['dfid_std']:.2f} | {'yes' if r['beats_fewer_steps'] else 'no'} |"
                     if r["dfid_at_flops"] is not None else f"| {name} | {r['fid']:.2f} | | | n/a | no |")
    lines.append("")
    lines.append(f"FID online - store: {c['fid_online_minus_store']:+.2f} (paired bootstrap std {c['paired_std']:.2f}, "
                 f"unpaired {c['unpaired_std']:.2f}): {'within' if c['within_2sigma'] else 'NOT within'} 2 sigma.")
    (a.out / "online_vs_store.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
    main()
