"""SYNTHETIC results for the analysis tests: well-formed files in the formats of docs/CONTRACTS.md.

Every number here is made up (seeded random around plausible values). The files are written only
into a scratch directory, which gets a ``SYNTHETIC`` marker file and ``"_synthetic": true`` in
each JSON; :class:`analysis.results.Results` refuses to write reports from such a root into the
repository's ``reports/``.

    python -m analysis.fixtures /tmp/fx [--no-mlflow] [--minimal] [--old]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.loader import SYNTHETIC_MARKER

FULL_STEP_GFLOPS = 1.6  # made-up per-step cost of a small teacher (batch 2)
ADAPTOR_STEP_SHARE = 0.4


def _gflops(steps: int, clock: int | None, adaptor_extra: float = 0.0) -> float:
    if not clock:
        return steps * FULL_STEP_GFLOPS
    n_adapt = sum(1 for s in range(steps) if s % clock)
    return (steps - n_adapt) * FULL_STEP_GFLOPS + n_adapt * FULL_STEP_GFLOPS * (ADAPTOR_STEP_SHARE + adaptor_extra)


N_BOOT = 10  # bootstrap replicates per row (evaluate.fid_bootstrap)
FRONT_STEPS = (3, 4, 5, 6, 7, 8)  # evaluate.front_steps / ablate.front_steps
NEW_KEYS = ("split", "fid_boot", "clip_boot", "vs_fewer_steps", "guidance", "train")  # absent from older files


def _metrics(rng, fid: float, gflops: float, latency: float, shared: np.ndarray | None = None) -> dict:
    """One row's metrics; with ``shared`` (the file's common bootstrap draws: every method is scored on the same
    resampled prompt indices) also ``fid_boot`` / ``clip_boot`` paired replicates, and fid_std/clip_std their stds."""
    m = dict(fid=round(fid, 3), fid_std=round(float(rng.uniform(0.1, 0.3)), 3),
             kid=round(fid / 2500, 5), kid_std=round(float(rng.uniform(2e-4, 5e-4)), 5),
             clip=round(0.300 - fid / 2000, 4), clip_std=round(float(rng.uniform(0.001, 0.003)), 4),
             gflops=round(gflops, 3), latency_ms=round(latency, 2), n_samples=5000)
    if shared is not None:
        own = rng.standard_normal((2, len(shared[0])))
        fb = m["fid"] + m["fid_std"] * (0.8 * shared[0] + 0.6 * own[0])
        cb = m["clip"] + m["clip_std"] * (0.8 * shared[1] + 0.6 * own[1])
        m.update(fid_boot=[round(float(x), 6) for x in fb], clip_boot=[round(float(x), 6) for x in cb],
                 fid_std=round(float(np.std(fb, ddof=1)), 6), clip_std=round(float(np.std(cb, ddof=1)), 6))
    return m


def vs_fewer_steps(point: dict, plain_rows: list[dict]) -> dict:
    """What pipeline/common's ``vs_fewer_steps`` writes: ``point``'s FID and CLIP against the plain-steps front
    of ``plain_rows`` (clockwork.pareto, loaded without torch: analysis.loader.pareto)."""
    from analysis.loader import pareto

    pa = pareto()
    return {"fid": pa.versus_fewer_steps(point, pa.plain_steps_front(plain_rows, "fid"), "fid"),
            "clip": pa.versus_fewer_steps(point, pa.plain_steps_front(plain_rows, "clip", quality_mode="max"), "clip",
                                          quality_mode="max")}


def evaluate(rng) -> dict:
    """metrics/evaluate.json as pipeline/evaluate.py writes it: the baseline at 8 steps, Clockwork (trained and
    identity), the plain baseline at every other step count of FRONT_STEPS, each with the held-out split, paired
    bootstrap replicates and its answer against the plain-steps front (vs_fewer_steps)."""
    base = dict(sampler="dpm++", cut=None, clock=None, adaptor=None, adaptor_params=0)
    cw = dict(sampler="dpm++", cut=1, clock=2, steps=8)
    shared = rng.standard_normal((2, N_BOOT))
    out = {"_synthetic": True}
    fids = {8: 20.0, 7: 20.5, 6: 21.2, 5: 22.6, 4: 24.5, 3: 29.0}
    for steps in sorted(FRONT_STEPS, reverse=True):
        key = "baseline" if steps == 8 else f"baseline_{steps}steps"
        out[key] = {**base, "steps": steps, **_metrics(rng, fids[steps], _gflops(steps, None), 4.0 * steps, shared)}
    out["clockwork"] = {**cw, "adaptor": "resnet", "adaptor_params": 410_000,
                        **_metrics(rng, 19.7, _gflops(8, 2, 0.03), 24.5, shared)}
    out["clockwork_identity"] = {**cw, "adaptor": "identity", "adaptor_params": 0,
                                 **_metrics(rng, 20.4, _gflops(8, 2), 23.0, shared)}
    # pipeline/evaluate.py's order: baseline, clockwork, clockwork_identity, then the other step counts
    order = ["_synthetic", "baseline", "clockwork", "clockwork_identity"] + [f"baseline_{k}steps" for k in
                                                                          sorted(FRONT_STEPS, reverse=True) if k != 8]
    out = {k: out[k] for k in order}
    plain = [m for k, m in out.items() if k == "baseline" or k.startswith("baseline_")]
    for k, m in out.items():
        if k != "_synthetic":
            m.update(split="heldout", vs_fewer_steps=vs_fewer_steps(m, plain))
    return out


# the `levers` rows: name -> (FID, changes); made up to give every verdict (beats, ties, loses, outside the front)
LEVERS = {
    "reference": (21.0, {}),
    "long": (19.9, {"train": {"distill_steps": 20000, "distill_prompts": 3840}}),
    "w64_d1": (23.5, {"params": 120_000, "extra": 0.005}),
    "w128_d1": (21.8, {"params": 260_000, "extra": 0.015}),
    "w64_d2": (22.0, {"params": 150_000, "extra": 0.01}),
    "output_loss": (20.5, {"train": {"output_weight": 1.0}}),
    "early_middle": (26.0, {"clock": [2, 3, 4, 5]}),
    "all_prompts": (20.7, {"train": {"distill_prompts": 4096}}),
    "rollout": (20.3, {"train": {"rollout_steps": 500}}),
    "four_steps": (25.0, {"steps": 4}),
}


def ablate(rng, split: str = "val") -> dict:
    """metrics/ablate.json with pipeline/ablate.py's variant names and conventions (baselines: adaptor "none",
    clock 1, no inputs; schedules as 0-based adaptor step lists), the `levers` rows, the plain-steps `front` rows
    at FRONT_STEPS, and every row's vs_fewer_steps against the front of its sampler and guidance."""
    rows = []
    shared = rng.standard_normal((2, N_BOOT))

    def add(ablation, variant, fid, *, adaptor="resnet", clock=2, cut=1, inputs=("r_in", "r_out_prev", "time"),
            training="unrolled", sampler="dpm++", steps=8, params=410_000, extra=0.03, train=None):
        if adaptor == "none":
            g, clock, cut, inputs, training, params = _gflops(steps, None), 1, None, (), "none", 0
        elif isinstance(clock, list):
            g = (steps - len(clock)) * FULL_STEP_GFLOPS + len(clock) * FULL_STEP_GFLOPS * ADAPTOR_STEP_SHARE
        else:
            g = _gflops(steps, clock, extra)
        rows.append(dict(ablation=ablation, variant=variant, sampler=sampler, steps=steps, clock=clock, cut=cut,
                         adaptor=adaptor, inputs=list(inputs), training=training, adaptor_params=params,
                         guidance=2.0, train=train or {}, split=split,
                         **_metrics(rng, fid + float(rng.normal(0, 0.05)), g, 3.0 * steps, shared)))

    for name, (fid, ch) in LEVERS.items():
        add("levers", name, fid, clock=ch.get("clock", 2), steps=ch.get("steps", 8), params=ch.get("params", 410_000),
            extra=ch.get("extra", 0.03), train=ch.get("train"))
    add("adaptor_type", "baseline", 20.0, adaptor="none")
    add("adaptor_type", "identity", 20.4, adaptor="identity", inputs=("r_out_prev",), params=0, extra=0,
        training="none")
    add("adaptor_type", "resnet", 19.7)
    add("adaptor_type", "unet-light", 20.1, adaptor="unet-light", params=90_000, extra=0.01)
    add("adaptor_type", "resnet-wide", 19.6, params=3_600_000, extra=0.2)
    for name, st, fid in (("alternating", 2, 19.7), ("late_half", [4, 5, 6, 7], 23.0),
                          ("early_middle", [2, 3, 4, 5], 26.0)):
        add("schedule", name, fid, clock=st)
    add("cut", "cut1", 19.7, cut=1)
    add("cut", "cut2", 20.9, cut=2, extra=0.35)
    for s, b, c in (("dpm++", 20.0, 19.7), ("dpm", 20.1, 19.8), ("pndm", 27.0, 25.9), ("ddim", 26.0, 28.9)):
        add("sampler", f"{s}/baseline", b, adaptor="none", sampler=s)
        add("sampler", f"{s}/clockwork", c, sampler=s)
    add("inputs", "r_in", 31.0, inputs=("r_in", "time"))
    add("inputs", "r_out_prev", 20.2, inputs=("r_out_prev", "time"))
    add("inputs", "both", 19.7)
    add("inputs", "both+text", 19.75, inputs=("r_in", "r_out_prev", "time", "text"))
    add("inputs", "every_step_without_r_out_prev", 80.0, inputs=("r_in", "time"), clock=list(range(8)))
    for steps, fu, ff in ((4, 23.8, 25.2), (6, 20.9, 21.0), (8, 19.7, 19.8), (16, 19.0, 19.05)):
        add("training", f"unrolled_{steps}steps", fu, steps=steps)
        add("training", f"forward_noised_{steps}steps", ff, steps=steps, training="forward_noised")
    for steps, fb, fc in ((4, 24.5, 23.9), (6, 21.2, 20.9), (8, 20.0, 19.7), (16, 19.2, 19.0)):
        add("steps", f"{steps}steps/baseline", fb, adaptor="none", steps=steps)
        add("steps", f"{steps}steps/clockwork", fc, steps=steps)
    plain = {r["steps"]: r for r in rows if r["ablation"] == "steps" and r["adaptor"] == "none"}
    for steps, fb in ((3, 29.3), (4, 24.8), (5, 22.9), (6, 21.5), (7, 20.8), (8, 20.3)):
        if steps in plain:  # pipeline/ablate.py runs a configuration once: the steps ablation's row, renamed
            rows.append({**plain[steps], "ablation": "front", "variant": f"{steps}steps"})
        else:
            add("front", f"{steps}steps", fb, adaptor="none", steps=steps)
    fronts: dict = {}
    for r in rows:  # pipeline/ablate.py's with_fewer_steps
        if r["ablation"] == "front":
            fronts.setdefault((r["sampler"], r["guidance"]), []).append(r)
    for r in rows:
        front = fronts.get((r["sampler"], r["guidance"]))
        r["vs_fewer_steps"] = vs_fewer_steps(r, front) if front else None
    return {"_synthetic": True, "split": split, "rows": rows}


def old_format(evaluate_json: dict, ablate_json: dict | None) -> tuple[dict, dict | None]:
    """The same results as files written before the stages computed vs_fewer_steps: no NEW_KEYS, only the 6- and
    4-step plain baselines, no `levers` / `front` rows, no top-level split."""
    ev = {k: ({f: v for f, v in m.items() if f not in NEW_KEYS} if isinstance(m, dict) else m)
          for k, m in evaluate_json.items() if not (k.startswith("baseline_") and k not in ("baseline_6steps", "baseline_4steps"))}
    if ablate_json is None:
        return ev, None
    rows = [{f: v for f, v in r.items() if f not in NEW_KEYS} for r in ablate_json["rows"]
            if r["ablation"] not in ("levers", "front")]
    return ev, {"_synthetic": True, "rows": rows}


def sensitivity(rng) -> dict:
    """sensitivity.json as `clockwork sensitivity` (clockwork/sensitivity.py) writes it, numbers made up: the final
    sample changes more for a higher-resolution cut, an earlier start step and more noise."""
    cuts, starts, alphas = [1, 2], list(range(1, 8)), [0.1, 0.3]
    per_cut = {"1": {"r_out_shape": [64, 16, 16], "r_in_scale": 2, "flops": {"full_step_gflops": 1.6,
                                                                            "adaptor_step_gflops": 0.32,
                                                                            "replaced_share": 0.8}},
               "2": {"r_out_shape": [128, 8, 8], "r_in_scale": 4, "flops": {"full_step_gflops": 1.6,
                                                                           "adaptor_step_gflops": 0.9,
                                                                           "replaced_share": 0.44}}}
    rows = []
    for cut in cuts:
        for mode, alpha in [("noise", a) for a in alphas] + [("reuse", None)]:
            for s in starts:
                scale = (0.6 if cut == 1 else 0.25) * (alpha / 0.1 if alpha else 1.5) * (8 - s) / 7
                m = scale * float(rng.uniform(0.9, 1.1)) * 0.1
                rows.append({"cut": cut, "mode": mode, "alpha": alpha, "start_step": s, "rel_l2": round(m, 6),
                             "rel_l2_std": round(m * float(rng.uniform(0.2, 0.4)), 6), "n": 16})
    meta = {"scheduler": "DPMSolverMultistepScheduler", "steps": 8, "loop_steps": 8, "guidance": 2.0, "seed": 0, "n": 16,
            "sample_shape": [3, 32, 32], "cuts": cuts, "modes": ["noise", "reuse"], "alphas": alphas,
            "start_steps": starts, "reference_equal_across_cuts": True, "ref_score": None, "per_cut": per_cut,
            "metric": "rel_l2 = ||x - x_ref|| / ||x_ref|| of the final latents, per image; mean and std over n",
            "sampler": "dpm++", "source": "SYNTHETIC teacher"}
    return {"_synthetic": True, "meta": meta, "rows": rows}


def sweep(rng, n: int = 14, fid_tolerance: float = 1.0) -> pd.DataFrame:
    """results.csv as pipeline/sweep.py writes it: trials, one baseline trial (clock 1), one failed trial,
    Pareto flags and the recommended operating point (cheapest within ``fid_tolerance`` FID of the baseline)."""
    rows = [dict(trial_id="baseline-8", clock=1, width=None, cut=None, steps=8, adaptor="none", fid=20.0, fid_std=0.2,
                 kid=0.008, clip=0.29, gflops=_gflops(8, None), gflops_ratio=1.0, latency_ms=3 * _gflops(8, None),
                 adaptor_params=0, status="complete", baseline=True)]
    for i in range(n):
        clock, width, cut = int(rng.choice([2, 3, 4])), int(rng.choice([32, 64, 128])), int(rng.choice([1, 2]))
        g = _gflops(8, clock, width / 2000 + (0.3 if cut == 2 else 0))
        fid = 19.5 + 1.5 * (clock - 2) - width / 200 + (0.8 if cut == 2 else 0) + float(rng.normal(0, 0.2))
        rows.append(dict(trial_id=f"t{i:03d}", clock=clock, width=width, cut=cut, steps=8, adaptor="resnet",
                         fid=round(fid, 3), fid_std=0.2, kid=round(fid / 2500, 5), clip=round(0.3 - fid / 2000, 4),
                         gflops=round(g, 3), gflops_ratio=round(g / _gflops(8, None), 4), latency_ms=round(3 * g, 2),
                         adaptor_params=width * 6000, status="complete", baseline=False))
    rows[-1].update(status="error", fid=np.nan, kid=np.nan, clip=np.nan)
    df = pd.DataFrame(rows)
    from analysis.fronts import pareto_mask  # the sweep writes its own flags; reuse ours for the fixture

    ok = df["status"] == "complete"
    for col, metric, hib, cost in (("pareto_fid_gflops", "fid", False, "gflops"),
                                   ("pareto_clip_gflops", "clip", True, "gflops"),
                                   ("pareto_fid_latency", "fid", False, "latency_ms")):
        df[col] = False
        df.loc[ok, col] = pareto_mask(df.loc[ok, cost], df.loc[ok, metric], hib)
    within = df[ok & (df["fid"] <= 20.0 + fid_tolerance)].sort_values(["gflops", "fid"])
    df["recommended"] = df["trial_id"] == within["trial_id"].iloc[0]
    return df


def log_mlflow(root: Path, df: pd.DataFrame, name: str) -> str:
    """The MLflow view pipeline/sweep.py leaves: experiment clockwork-sweep, a parent run per sweep
    (``sweep.role=parent``), a child per trial with params.yaml's dotted names and ``sweep.*`` tags."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("clockwork-sweep")
    rec = df[df["recommended"]]["trial_id"].iloc[0]
    parent = client.create_run(exp, run_name=name, tags={"sweep.name": name, "sweep.role": "parent",
                                                         "sweep.recommended_trial": rec, "synthetic": "true"})
    for _, r in df.iterrows():
        run = client.create_run(exp, run_name=f"clock{r['clock']}-w{r['width']}-cut{r['cut']}", tags={
            "mlflow.parentRunId": parent.info.run_id, "sweep.trial_id": r["trial_id"], "sweep.name": name,
            "sweep.baseline": str(bool(r["baseline"])).lower(), "sweep.status": r["status"],
            "sweep.recommended": str(bool(r["recommended"])).lower(),
            "pareto.fid_gflops": str(bool(r["pareto_fid_gflops"])).lower()})
        params = {"clock.period": r["clock"], "adaptor.kind": r["adaptor"], "sampling.steps": r["steps"]}
        if not r["baseline"]:
            params.update({"adaptor.width": int(r["width"]), "cut": int(r["cut"])})
        metrics = [Metric(k, float(r[k]), 0, 0) for k in ("fid", "fid_std", "kid", "clip", "gflops", "gflops_ratio",
                                                          "latency_ms", "adaptor_params") if pd.notna(r[k])]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("synthetic", "true")])
        client.set_terminated(run.info.run_id, "FAILED" if r["status"] == "error" else "FINISHED")
    client.set_terminated(parent.info.run_id)
    del mlflow
    return uri


def write_fixtures(root: str | Path, *, mlflow_store: bool = True, minimal: bool = False, seed: int = 0,
                   sweep_name: str = "smoke", old: bool = False, ablate_split: str = "val") -> Path:
    """Write SYNTHETIC metrics/, plots/, sweeps/, sensitivity.json (and an MLflow sqlite store) under ``root``.

    ``minimal``: only metrics/evaluate.json, to check that optional inputs may be missing. ``old``: evaluate.json and
    ablate.json as written before the stages computed vs_fewer_steps (:func:`old_format`). ``ablate_split``: the split
    of the ablation rows (configs/full.yaml: ``val``; params.yaml: ``heldout``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / SYNTHETIC_MARKER).write_text("Synthetic fixtures written by analysis/fixtures.py - not results.\n")
    ev = evaluate(rng)
    ab = None if minimal else ablate(rng, ablate_split)
    if old:
        ev, ab = old_format(ev, ab)
    (root / "metrics" / "evaluate.json").write_text(json.dumps(ev, indent=1))
    if minimal:
        return root
    (root / "metrics" / "ablate.json").write_text(json.dumps(ab, indent=1))
    (root / "sensitivity.json").write_text(json.dumps(sensitivity(rng), indent=1))
    (root / "metrics" / "distill.json").write_text(json.dumps(
        {"_synthetic": True, "final_loss": 0.0123, "heldout_mse": 0.0141, "steps": 600, "adaptor_params": 410_000}))
    (root / "plots").mkdir(exist_ok=True)
    steps = np.arange(0, 600, 10)
    pd.DataFrame({"step": steps, "loss": 0.012 + 0.2 * np.exp(-steps / 80) * (1 + 0.1 * rng.standard_normal(len(steps)))}
                 ).to_csv(root / "plots" / "distill_loss.csv", index=False)
    df = sweep(rng)
    (root / "sweeps" / sweep_name).mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "sweeps" / sweep_name / "results.csv", index=False)
    if mlflow_store:
        log_mlflow(root, df, sweep_name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--minimal", action="store_true")
    ap.add_argument("--old", action="store_true", help="files as written before vs_fewer_steps existed")
    a = ap.parse_args()
    print(write_fixtures(a.root, mlflow_store=not a.no_mlflow, minimal=a.minimal, old=a.old))


if __name__ == "__main__":
    main()
