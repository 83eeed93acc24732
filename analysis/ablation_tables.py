"""The ablation tables from ablate.json: Tables 3a-c (adaptor type, schedule, cut), 4 (samplers) and 5 (adaptor
inputs), the levers against the plain-steps front (``table_levers``, ``fig_levers``' points), Fig. 7 (training on
unrolled trajectories vs forward-noised images) and the distillation summary.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.formatting import UNCERTAINTY, Table, _is_raw_cos, flops_unit, fmt, kid_scaled, params, pm, sig
from analysis.fronts import NA, VS_NOTES, _steps_list, fewer_steps_verdict, fmt_vs, front_steps, verdict_kind
from analysis.loader import clock_label, inputs_label, is_missing, vs_fewer


# -------------------------------------------------------------------------------------------- ablations


def _rows(ab: pd.DataFrame | None, ablation: str) -> pd.DataFrame:
    if ab is None:
        return pd.DataFrame()
    return ab[ab["ablation"] == ablation].copy()


def _matching(cands: pd.DataFrame, rows: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """``cands`` at the most common value of each key among ``rows`` (where both have it; ``split`` wherever the rows
    have one: a candidate on an unrecorded split may be on another)."""
    for k in keys:
        if k in rows and k in cands and rows[k].notna().any() and (cands[k].notna().any() or k == "split"):
            cands = cands[cands[k] == rows[k].dropna().mode().iloc[0]]
    return cands


def reference_baseline(ab_rows: pd.DataFrame, ev: pd.DataFrame | None, ab: pd.DataFrame | None = None) -> pd.Series | None:
    """The ablation's own baseline row, else a baseline row of another ablation run the same way (split, steps,
    sampler, sample count: FID depends on the prompts and the number of images), else evaluate.json's baseline at
    the same steps (and sampler) when it is on the same split (or the files do not say)."""
    if len(ab_rows) and ab_rows["is_baseline"].any():
        return ab_rows[ab_rows["is_baseline"]].iloc[0]
    if not len(ab_rows):
        return None
    if ab is not None and len(ab):
        other = _matching(ab[ab["is_baseline"]], ab_rows, ("split", "steps", "sampler", "n_samples"))
        if len(other):
            return other.iloc[0]
    if ev is None:
        return None
    b = _matching(ev[ev["kind"] == "baseline"], ab_rows, ("split", "steps", "sampler"))  # never across splits
    return b.iloc[0] if len(b) else None


def _metric_cols(r, base, scale, unit) -> dict:
    return {"FID ↓": pm(r["fid"], r.get("fid_std")), "KID×10³ ↓": pm(kid_scaled(r.get("kid")), kid_scaled(r.get("kid_std"))),
            "CLIP ↑": pm(r.get("clip"), r.get("clip_std"), 4),
            f"{unit}/image": sig(r["gflops"] / scale) if not is_missing(r.get("gflops")) else "-",
            "FLOPs vs baseline": ("-" if base is None or is_missing(r.get("gflops")) or is_missing(base.get("gflops"))
                                  else f"{r['gflops'] / base['gflops']:.3f}×")}


def split_caption(rows: pd.DataFrame) -> str:
    """What split the rows were measured on, for a caption (empty when the file does not say): the validation split
    (configs/full.yaml's ablate.split) is not comparable with evaluate.json's held-out FIDs."""
    splits = sorted({str(v) for v in rows.get("split", pd.Series(dtype=object)) if not is_missing(v)})
    if not splits:
        return ""
    if splits == ["val"]:
        return (" Measured on the validation split (training-split prompts and images not distilled on): these FIDs are "
                "not comparable with Table 1's (held-out evaluation prompts).")
    if splits == ["heldout"]:
        return " Measured on the held-out evaluation prompts, as Table 1 (compare FIDs only at the same image count)."
    return f" Measured on the splits {', '.join(splits)}: compare rows of one split only."


def ablation_note(rows: pd.DataFrame) -> str:
    """FID depends on the number of images: say how many each row used."""
    n = sorted({int(v) for v in rows.get("n_samples", pd.Series(dtype=float)).dropna()})
    imgs = f"FID/KID on {'/'.join(map(str, n))} generated images per row: " if n else ""
    return (imgs + "FID falls as the image count grows, so compare rows within one table (or with Table 1 only at "
            "the same count). " + UNCERTAINTY)


def _ablation_table(rows: pd.DataFrame, base, first_cols, caption, label, ablation) -> Table:
    allg = list(rows["gflops"]) + ([base["gflops"]] if base is not None else [])
    scale, unit = flops_unit(allg)
    out = []
    if base is not None and not rows["is_baseline"].any():
        out.append({**{k: "baseline (full UNet)" if i == 0 else "-" for i, k in enumerate(first_cols(None))},
                    **_metric_cols(base, base, scale, unit)})
    for _, r in rows.iterrows():
        out.append({**first_cols(r), **_metric_cols(r, base, scale, unit)})
    if _has_vs(rows):  # the stages' answer against the ablation run's plain-steps front, where the file has it
        col = [fmt_vs(vs_fewer(r)) if not r["is_baseline"] else "-" for _, r in rows.iterrows()]
        for o, c in zip(out[len(out) - len(rows):], col):
            o["ΔFID@FLOPs ↑"] = c
        for o in out[: len(out) - len(rows)]:
            o["ΔFID@FLOPs ↑"] = "-"
    if base is None or rows["is_baseline"].any():
        where = ""
    elif "ablation" in base.index:
        where = f"; baseline from metrics/ablate.json (ablation={base['ablation']}, the same steps, sampler and images)"
    else:
        where = "; baseline from metrics/evaluate.json"
    notes = ablation_note(rows) + (" " + VS_SHORT if _has_vs(rows) else "")
    return Table(pd.DataFrame(out), caption=caption + split_caption(rows), label=label, notes=notes,
                 source=f"metrics/ablate.json (ablation={ablation})" + where)


VS_SHORT = ("ΔFID@FLOPs: the FID of the ablation run's plain-steps front (its `front` rows) at the row's GFLOPs minus the "
            "row's FID, ± paired-bootstrap std; positive = better than taking fewer steps (n/a: no front for the row's "
            "sampler and guidance; outside: no plain step count costs as much).")


def _has_vs(rows: pd.DataFrame) -> bool:
    return "vs_fewer_steps" in rows and any(isinstance(v, dict) for v in rows["vs_fewer_steps"])


def _variant_first(extra):
    def cols(r):
        if r is None:
            return {"variant": "", **{k: "" for k in extra(None)}}
        return {"variant": "baseline (full UNet)" if r["is_baseline"] else str(r["variant"]), **extra(r)}
    return cols


def adaptor_type_table(ab, ev) -> Table | None:
    rows = _rows(ab, "adaptor_type")
    if rows.empty:
        return None
    extra = lambda r: {"adaptor": "", "params": ""} if r is None else {  # noqa: E731
        "adaptor": "-" if r["is_baseline"] else r["adaptor"],
        "params": "-" if r["is_baseline"] else params(r.get("adaptor_params"))}
    return _ablation_table(rows, reference_baseline(rows, ev, ab), _variant_first(extra),
                           "Table 3a: adaptor type (parameter count of the adaptor).", "tab:adaptor", "adaptor_type")


def schedule_table(ab, ev) -> Table | None:
    rows = _rows(ab, "schedule")
    if rows.empty:
        return None
    extra = lambda r: {"adaptor steps (1-based)": ""} if r is None else {  # noqa: E731
        "adaptor steps (1-based)": "-" if r["adaptor_steps"] is None
        else "{" + ",".join(str(s + 1) for s in r["adaptor_steps"]) + "}"}
    return _ablation_table(rows, reference_baseline(rows, ev, ab), _variant_first(extra),
                           "Table 3b: which sampler steps use the adaptor.", "tab:schedule", "schedule")


def cut_table(ab, ev) -> Table | None:
    rows = _rows(ab, "cut")
    if rows.empty:
        return None
    names = {1: "stage 1", 2: "stage 2", 3: "stage 3"}
    extra = lambda r: {"cut": ""} if r is None else {  # noqa: E731
        "cut": "-" if r["is_baseline"] or is_missing(r.get("cut")) else names.get(int(r["cut"]), str(r["cut"]))}
    return _ablation_table(rows, reference_baseline(rows, ev, ab), _variant_first(extra),
                           "Table 3c: where the UNet is cut.", "tab:cut", "cut")


def inputs_table(ab, ev) -> Table | None:
    rows = _rows(ab, "inputs")
    if rows.empty:
        return None
    extra = lambda r: {"adaptor inputs": "", "schedule": ""} if r is None else {  # noqa: E731
        "adaptor inputs": inputs_label(r["inputs"]),
        "schedule": "-" if r["is_baseline"] else clock_label(r.get("clock"), r.get("steps"))}
    return _ablation_table(rows, reference_baseline(rows, ev, ab), _variant_first(extra),
                           "Table 5: adaptor inputs.", "tab:inputs", "inputs")


# ------------------------------------------------------------------------------------------------ levers

TRAIN_WORDS = {"distill_steps": lambda v: f"{int(v)} distillation steps",
               "distill_prompts": lambda v: f"{int(v)} distillation prompts",
               "output_weight": lambda v: f"output-space loss w={float(v):g}",
               "rollout_steps": lambda v: f"{int(v)} own-rollout fine-tuning steps"}


def _int(v) -> str:
    return str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer() else str(v)


def lever_settings(r) -> dict[str, str]:
    """What a ``levers`` row runs, field by field, in words (``width 64``, ``clock 2``, ``20000 distillation steps``)."""
    d: dict[str, str] = {}
    if not is_missing(r.get("adaptor")):
        d["adaptor"] = f"{r['adaptor']} adaptor"
    for k in ("width", "depth"):
        if not is_missing(r.get(k)):
            d[k] = f"{k} {_int(r[k])}"
    if not is_missing(r.get("clock")):
        d["clock"] = clock_label(r.get("clock"), r.get("steps"))
    if not is_missing(r.get("cut")):
        d["cut"] = f"cut {_int(r['cut'])}"
    if not is_missing(r.get("steps")):
        d["steps"] = f"{_int(r['steps'])} steps"
    if r.get("inputs") is not None and not is_missing(r.get("inputs")):
        d["inputs"] = "inputs " + inputs_label(r["inputs"])
    train = r.get("train")
    for k, v in sorted((train if isinstance(train, dict) else {}).items()):
        d[f"train.{k}"] = TRAIN_WORDS[k](v) if k in TRAIN_WORDS else f"{k} {v}"
    return d


def lever_changes(r, ref) -> str:
    """What lever ``r`` changes from the ``reference`` lever ``ref`` (all its settings when it is the reference or there
    is none); where the rows do not record width/depth, a different adaptor size shows as its parameter count."""
    mine = lever_settings(r)
    if ref is None or r.name == ref.name:
        return ", ".join(mine.values()) or "-"
    theirs = lever_settings(ref)
    diff = [v for k, v in mine.items() if theirs.get(k) != v]
    diff += [f"default {k.split('.', 1)[1].replace('_', ' ')}" for k in theirs if k.startswith("train.") and k not in mine]
    if not any(k in mine or k in theirs for k in ("width", "depth")) and not is_missing(r.get("adaptor_params")) \
            and not is_missing(ref.get("adaptor_params")) and r["adaptor_params"] != ref["adaptor_params"]:
        diff.append(f"adaptor of {params(r['adaptor_params'])} params (reference {params(ref['adaptor_params'])})")
    return ", ".join(diff) if diff else "same settings as the reference"


def levers_table(ab: pd.DataFrame | None) -> Table | None:
    """Every ``levers`` row (a named variant of the Clockwork method that might make it pay) against the plain-steps
    front of the same ablation run (its ``front`` rows, listed below the levers): what it changes, FID, GFLOPs as a
    multiple of the front's row at the levers' step count, ΔFID@FLOPs and ΔCLIP@FLOPs, and the verdict."""
    levers = _rows(ab, "levers")
    if levers.empty:
        return None
    front = _rows(ab, "front").sort_values("steps", ascending=False)
    ref_row = levers[levers["variant"].astype(str) == "reference"]
    ref = ref_row.iloc[0] if len(ref_row) else None
    k = int(levers["steps"].mode().iloc[0]) if levers["steps"].notna().any() else None
    at = front[front["steps"] == k] if k is not None else front.iloc[:0]
    unit_row = at.iloc[0] if len(at) else (front.iloc[0] if len(front) else None)
    scale, unit = flops_unit(list(levers["gflops"]) + list(front["gflops"]))
    xcol = f"× {int(unit_row['steps'])}-step front" if unit_row is not None else "× front"
    raw = _is_raw_cos(levers)
    out, verdicts = [], {}
    for _, r in levers.iterrows():
        v = vs_fewer(r)
        verdict = fewer_steps_verdict(v)
        verdicts.setdefault(verdict_kind(verdict), []).append(str(r["variant"]))
        out.append({"lever": str(r["variant"]), "what it changes": lever_changes(r, ref),
                    "FID ↓": pm(r["fid"], r.get("fid_std")),
                    f"{unit}/image": sig(r["gflops"] / scale) if not is_missing(r.get("gflops")) else "-",
                    xcol: "-" if unit_row is None or is_missing(r.get("gflops")) else f"{r['gflops'] / unit_row['gflops']:.3f}×",
                    "ΔFID@FLOPs ↑": fmt_vs(v), "ΔCLIP@FLOPs ↑": fmt_vs(vs_fewer(r, "clip"), 4 if raw else 2),
                    "verdict": verdict})
    for _, r in front.iterrows():
        out.append({"lever": f"plain {int(r['steps'])} steps", "what it changes": "the plain-steps front: the full UNet, "
                    "no adaptor", "FID ↓": pm(r["fid"], r.get("fid_std")), f"{unit}/image": sig(r["gflops"] / scale),
                    xcol: "-" if unit_row is None else f"{r['gflops'] / unit_row['gflops']:.3f}×",
                    "ΔFID@FLOPs ↑": "-", "ΔCLIP@FLOPs ↑": "-", "verdict": "front"})
    words = {"beats": "beat fewer steps", "ties": "tie", "loses": "lose", "outside": "lie outside the front",
             NA: "have no answer (n/a)"}
    summary = "; ".join(f"{words[kd]}: {', '.join(verdicts[kd])}" for kd in ("beats", "ties", "loses", "outside", NA)
                        if kd in verdicts)
    n = sorted({int(x) for x in levers["n_samples"].dropna()})
    caption = ("Levers: variants of the Clockwork method that might make it pay, each against the plain-steps front of "
               "the same ablation run" + (f" ({'/'.join(map(str, n))} images per row)" if n else "") + ". "
               + (summary[0].upper() + summary[1:] + "." if summary else "") + split_caption(levers))
    fs = front_steps(front) if len(front) else []
    notes = (f"Plain-steps front of this run (FID): {_steps_list(fs)} steps"
             + (f" (of {_steps_list(sorted(int(x) for x in front['steps']))} run)" if len(front) else " (no front rows)")
             + ". 'what it changes': against the `reference` lever where there is one. " + VS_NOTES + " "
             + ablation_note(levers))
    return Table(pd.DataFrame(out), caption=caption, notes=notes, label="tab:levers",
                 source="metrics/ablate.json (ablation=levers, front; vs_fewer_steps)")


def levers_about(ab: pd.DataFrame | None) -> str:
    """``validation split, 2000 images per row; not comparable with Table 1's FIDs``: for the levers figure's title."""
    levers = _rows(ab, "levers")
    splits = sorted({str(v) for v in levers.get("split", pd.Series(dtype=object)) if not is_missing(v)})
    n = sorted({int(x) for x in levers.get("n_samples", pd.Series(dtype=float)).dropna()})
    parts = [{"val": "validation split (not comparable with Table 1's FIDs)", "heldout": "held-out evaluation prompts"}
             .get(sp, sp) for sp in splits]
    if n:
        parts.append(f"{'/'.join(map(str, n))} images per row")
    return ", ".join(parts)


def lever_points(ab: pd.DataFrame | None) -> pd.DataFrame:
    """The ``levers`` rows with their ΔFID@FLOPs answer (``delta``, ``delta_std``, ``verdict``) for :func:`plots.levers`."""
    levers = _rows(ab, "levers")
    if levers.empty:
        return levers
    vs = [vs_fewer(r) for _, r in levers.iterrows()]
    return levers.assign(delta=[math.nan if v is None or v.get("delta") is None else v["delta"] for v in vs],
                         delta_std=[math.nan if v is None or v.get("delta_std") is None else v["delta_std"] for v in vs],
                         verdict=[fewer_steps_verdict(v) for v in vs]).reset_index(drop=True)


def sampler_pairs(ab: pd.DataFrame | None) -> pd.DataFrame:
    """One row per sampler: baseline and Clockwork FID/CLIP side by side (Table 4)."""
    rows = _rows(ab, "sampler")
    if rows.empty:
        return pd.DataFrame()
    out = []
    for s, g in rows.groupby("sampler", sort=False):
        b, c = g[g["is_baseline"]], g[~g["is_baseline"]]
        if b.empty or c.empty:
            continue
        b, c = b.iloc[0], c.iloc[0]
        out.append(dict(sampler=s, fid_base=b["fid"], fid_base_std=b.get("fid_std"), fid_cw=c["fid"],
                        fid_cw_std=c.get("fid_std"), clip_base=b.get("clip"), clip_cw=c.get("clip"),
                        gflops_base=b.get("gflops"), gflops_cw=c.get("gflops"), steps=c.get("steps"),
                        vs_cw=vs_fewer(c), has_vs=isinstance(c.get("vs_fewer_steps"), dict)))
    return pd.DataFrame(out)


def sampler_table(ab) -> Table | None:
    p = sampler_pairs(ab)
    if p.empty:
        return None
    df = pd.DataFrame({
        "sampler": p["sampler"], "steps": [fmt(s, 0) for s in p["steps"]],
        "baseline FID": [pm(a, b) for a, b in zip(p["fid_base"], p["fid_base_std"])],
        "Clockwork FID": [pm(a, b) for a, b in zip(p["fid_cw"], p["fid_cw_std"])],
        "ΔFID": [f"{c - b:+.2f}" for b, c in zip(p["fid_base"], p["fid_cw"])],
        "baseline CLIP": [fmt(v, 4) for v in p["clip_base"]], "Clockwork CLIP": [fmt(v, 4) for v in p["clip_cw"]]})
    rows = _rows(ab, "sampler")
    if _has_vs(rows):
        df["Clockwork ΔFID@FLOPs ↑"] = [fmt_vs(v) for v in p["vs_cw"]]
    return Table(df, caption="Table 4: samplers, baseline -> Clockwork (lower FID is better)." + split_caption(rows),
                 notes=ablation_note(rows) + (" " + VS_SHORT if _has_vs(rows) else ""),
                 source="metrics/ablate.json (ablation=sampler)", label="tab:samplers")


def training_points(ab: pd.DataFrame | None, ev: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fig. 7: FID per (training method, steps); baselines per step count from ablate or evaluate.json."""
    rows = _rows(ab, "training")
    if rows.empty:
        return rows
    cols = ["steps", "fid", "fid_std", "clip", "gflops", "n_samples", "split"]
    pts = rows[~rows["is_baseline"]][["training", *cols]].copy()
    base = rows[rows["is_baseline"]][cols]
    if base.empty:  # another ablation's baselines (same image count first), else evaluate.json's
        extra = [_rows(ab, "steps"), _rows(ab, "front"),
                 None if ev is None else ev.assign(is_baseline=ev["kind"] == "baseline")]
        base = pd.concat([e[e["is_baseline"]][cols] for e in extra if e is not None and len(e)], ignore_index=True)
        base = base[base["steps"].isin(pts["steps"])]
        # the same split only (never a curve across splits), the same image count first
        same_split = base["split"].isin(pts["split"].dropna().unique()) | (base["split"].isna() & pts["split"].isna().all())
        same_n = base["n_samples"].isin(pts["n_samples"].dropna().unique())
        base = pd.concat([base[same_split & same_n], base[same_split & ~same_n]])
    if len(base):
        pts = pd.concat([pts, base.drop_duplicates("steps").assign(training="baseline (no adaptor)")])
    return pts.sort_values(["training", "steps"]).reset_index(drop=True)


def training_table(pts: pd.DataFrame) -> Table:
    wide = pts.assign(cell=[pm(a, b) for a, b in zip(pts["fid"], pts["fid_std"])]).pivot_table(
        index="steps", columns="training", values="cell", aggfunc="first").reset_index()
    wide["steps"] = wide["steps"].astype(int)
    wide.columns.name = None
    return Table(wide.fillna("-").rename(columns={c: f"FID, {c}" for c in wide.columns if c != "steps"}),
                 caption="Fig. 7: adaptor distilled on unrolled trajectories vs on forward-noised images, FID by step "
                         "count." + split_caption(pts[pts["training"] != "baseline (no adaptor)"]),
                 notes=ablation_note(pts), source="metrics/ablate.json (ablation=training)", label="tab:training")


def distill_table(summary: dict) -> Table:
    keys = [k for k in ("steps", "final_loss", "heldout_mse", "adaptor_params") if k in summary]
    keys += [k for k, v in summary.items() if k not in keys and isinstance(v, (int, float, str)) and not k.startswith("_")]
    val = {"adaptor_params": params}
    df = pd.DataFrame({"quantity": keys, "value": [
        val[k](summary[k]) if k in val else (sig(summary[k], 4) if isinstance(summary[k], float) else str(summary[k]))
        for k in keys]})
    return Table(df, caption="Adaptor distillation summary.", source="metrics/distill.json", label="tab:distill")
