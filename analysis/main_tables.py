"""Table 1 and its companions from evaluate.json: the fewer-steps answer (``table1_fewer_steps``), Table 1
(``table1_main``), the project's acceptance checks (``table1_acceptance``) and Fig. 4's points (FID vs FLOPs over step
counts, with ablate.json's ``steps`` / ``front`` / ``levers`` rows).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.formatting import UNCERTAINTY, Table, _is_raw_cos, flops_unit, fmt, kid_scaled, pct, pm, sig
from analysis.fronts import (NA, VS_MARGIN, VS_NOTES, VS_SIGMAS, _steps_list, fewer_steps_verdict, fmt_front, fmt_steps,
                             fmt_vs, front_steps, pareto_mask, verdict_kind)
from analysis.loader import SPLIT_LABELS, clock_label, is_missing, pareto, vs_fewer


# ------------------------------------------------------------------------------ versus taking fewer steps


def _split_words(split) -> str:
    return SPLIT_LABELS.get(split, "split not recorded") if not is_missing(split) else "split not recorded"


def fewer_steps_table(ev: pd.DataFrame) -> Table:
    """Table 1, first: does each Clockwork method beat the plain-steps front at its own GFLOPs? One row per
    non-plain method of evaluate.json; the caption answers for the trained Clockwork of each teacher."""
    rows, answers = [], []
    scale, unit = flops_unit(ev["gflops"])
    for teacher in ev["teacher"].unique():
        steps = main_steps(ev, teacher)
        t = ev[ev["teacher"] == teacher]
        base, cw, _ = headline_rows(ev, teacher)
        methods = t[t["kind"] == "clockwork"].copy()
        methods["_o"] = [(0 if s == steps else 1, 0 if cw is not None and i == cw.name else 1, s)
                         for i, s in zip(methods.index, methods["steps"])]
        for _, r in methods.sort_values("_o").iterrows():
            v, c = vs_fewer(r, "fid"), vs_fewer(r, "clip")
            rows.append({
                "teacher": teacher, "method": method_label(r, steps), "steps": int(r["steps"]),
                "FID ↓": pm(r["fid"], r["fid_std"]),
                f"{unit}/image (× baseline)": f"{sig(r['gflops'] / scale)} ({r['gflops'] / base['gflops']:.3f}×)",
                "equivalent plain steps": fmt_steps(v), "front FID at equal FLOPs": fmt_front(v),
                "ΔFID@FLOPs ↑": fmt_vs(v), "ΔCLIP@FLOPs ↑": fmt_vs(c, 4 if _is_raw_cos(ev) else 2),
                "verdict": fewer_steps_verdict(v)})
        if cw is not None:
            answers.append(f"{teacher}: {_answer(cw)}")
    fronts = []
    for teacher in ev["teacher"].unique():
        plain = ev[(ev["teacher"] == teacher) & (ev["kind"] == "baseline")]
        fronts.append(f"{teacher}: {_steps_list(front_steps(plain))} steps (of {_steps_list(sorted(plain['steps']))} "
                      "evaluated)")
    splits = sorted({_split_words(s) for s in ev["split"]}) if "split" in ev else ["split not recorded"]
    n = sorted({int(x) for x in ev["n_samples"].dropna()})
    imgs = f"{'/'.join(map(str, n))} images per method" if n else ""
    about = ("Measured on the " + "; ".join(splits) if splits != ["split not recorded"] else "Split not recorded") + \
        (f", {imgs}" if imgs else "")
    notes = (f"Plain-steps front (FID): {'; '.join(fronts)}. {about}. " + VS_NOTES)
    return Table(pd.DataFrame(rows), label="tab:fewer-steps",
                 caption="Does Clockwork beat fewer steps here? " + ("; ".join(answers) if answers else
                                                                     "no trained Clockwork entry") + ".",
                 notes=notes, source="metrics/evaluate.json (vs_fewer_steps)")


def _answer(cw: pd.Series) -> str:
    v = vs_fewer(cw, "fid")
    verdict = fewer_steps_verdict(v)
    kind = verdict_kind(verdict)
    who = method_label(cw)
    if kind == NA:
        return f"not answered ({who}: the results file has no vs_fewer_steps, n/a)"
    if kind == "outside":
        return f"not answerable ({who} is {verdict}: no plain step count costs as much)"
    at = f"ΔFID@FLOPs {fmt_vs(v)} at ≈ {fmt_steps(v)} plain steps' cost"
    word = {"beats": "yes", "ties": "no, a tie", "loses": "no"}[kind]
    return f"{word} - {who} {verdict} ({at})"


# ---------------------------------------------------------------------------------------------- Table 1


def main_steps(ev: pd.DataFrame, teacher: str) -> int:
    """The step count of the teacher's ``baseline`` entry (8 in the paper)."""
    t = ev[(ev["teacher"] == teacher) & (ev["kind"] == "baseline")]
    named = t[t["method"] == "baseline"]
    return int((named if len(named) else t)["steps"].max())


def method_label(r, main: int | None = None) -> str:
    if r["kind"] == "baseline":
        other = main is not None and not is_missing(r["steps"]) and int(r["steps"]) != main
        return f"baseline (full UNet), {int(r['steps'])} steps" if other else "baseline (full UNet)"
    parts = [f"Clockwork ({r['adaptor']} adaptor" if not is_missing(r["adaptor"]) else "Clockwork ("]
    if not is_missing(r.get("clock")):
        parts.append(", " + clock_label(r.get("clock"), r["steps"]))
    return "".join(parts) + ")"


def table1(ev: pd.DataFrame) -> Table:
    """Table 1: per teacher, the baseline and every Clockwork variant at the baseline's step count, then the
    baselines with fewer steps (the plain way to save FLOPs); Δ columns are against the baseline."""
    scale, unit = flops_unit(ev["gflops"])
    rows = []
    for teacher in ev["teacher"].unique():
        steps = main_steps(ev, teacher)
        everything = ev[ev["teacher"] == teacher]
        t = everything[everything["steps"] == steps]
        base = t[t["kind"] == "baseline"].iloc[0]
        # every other plain step count (baseline_<k>steps: the front Clockwork has to beat), most steps first
        other = everything[(everything["kind"] == "baseline") & (everything["steps"] != steps)]
        for _, r in pd.concat([t[t["kind"] == "baseline"], t[t["kind"] == "clockwork"],
                               other.sort_values("steps", ascending=False)]).iterrows():
            rows.append({
                "teacher": teacher, "method": method_label(r, steps), "steps": int(r["steps"]),
                "sampler": "-" if is_missing(r.get("sampler")) else r["sampler"],
                "FID ↓": pm(r["fid"], r["fid_std"]), "KID×10³ ↓": pm(kid_scaled(r["kid"]), kid_scaled(r["kid_std"])),
                "CLIP ↑": pm(r["clip"], r["clip_std"], 4),
                f"{unit}/image": sig(r["gflops"] / scale), f"Δ{unit}": pct(r["gflops"], base["gflops"]) if
                r.name != base.name else "-",
                "latency (ms)": fmt(r["latency_ms"], 1),
                "Δlatency": pct(r["latency_ms"], base["latency_ms"]) if r.name != base.name else "-",
                "samples": "-" if is_missing(r["n_samples"]) else f"{int(r['n_samples'])}",
            })
    devices = sorted({str(d) for d in ev["device"] if not is_missing(d)}) if "device" in ev else []
    lat = (f"latency of the UNet loop on {', '.join(devices)}" if devices
           else "latency of the UNet loop on the machine that ran the evaluation")
    return Table(pd.DataFrame(rows), label="tab:main",
                 caption=f"Table 1: baseline vs Clockwork per teacher, and the baseline with fewer steps. FLOPs per "
                         f"image include CFG; Δ against the baseline; {lat}.",
                 notes=UNCERTAINTY, source="metrics/evaluate.json")


# --------------------------------------------------------------------------------------- acceptance checks

# The project's acceptance criteria for the headline comparison (issue 4): the trained Clockwork at the
# baseline's step count against the baseline.
ACCEPT_MAX_FLOPS_RATIO = 0.75
ACCEPT_MAX_FID_RATIO = 1.10
ACCEPT_MIN_CLIP_RATIO = 0.98
NOISE_SIGMAS = 2.0  # a strict "lower FID" whose difference is below 2σ of the difference is flagged


def _noisy(a, b, sa, sb) -> bool:
    return not (is_missing(sa) or is_missing(sb)) and abs(a - b) < NOISE_SIGMAS * math.hypot(sa, sb)


def _passed(ok: bool, noisy: bool = False) -> str:
    return ("pass" if ok else "FAIL") + (" (within noise)" if noisy else "")


def headline_rows(ev: pd.DataFrame, teacher: str) -> tuple[pd.Series, pd.Series | None, pd.Series | None]:
    """(baseline, trained Clockwork, identity Clockwork) at the teacher's main step count: the ``clockwork``
    entry (else the first trained adaptor) and the ``clockwork_identity`` entry (else the first identity)."""
    steps = main_steps(ev, teacher)
    t = ev[(ev["teacher"] == teacher) & (ev["steps"] == steps)]
    base = t[t["kind"] == "baseline"].iloc[0]
    cw = t[t["kind"] == "clockwork"]
    ident = cw[cw["adaptor"] == "identity"]
    named, trained = cw[cw["method"] == "clockwork"], cw[~cw["adaptor"].isin(["identity", "forecast"])]
    trained = named if len(named) else trained
    return base, (trained.iloc[0] if len(trained) else None), (ident.iloc[0] if len(ident) else None)


def acceptance_table(ev: pd.DataFrame) -> Table | None:
    """The acceptance checks, per teacher: the trained Clockwork vs the baseline (FLOPs, FID, CLIP ratios), vs
    the identity adaptor, and vs every baseline with fewer steps that costs at least as many FLOPs."""
    rows = []
    for teacher in ev["teacher"].unique():
        base, cw, ident = headline_rows(ev, teacher)
        if cw is None:
            continue
        scale, unit = flops_unit([base["gflops"]])

        def add(check, measured, criterion, result):
            rows.append({"teacher": teacher, "check": check, "measured": measured, "criterion": criterion,
                         "result": result})

        r = cw["gflops"] / base["gflops"]
        add("FLOPs per image, Clockwork / baseline",
            f"{sig(cw['gflops'] / scale)} / {sig(base['gflops'] / scale)} {unit} = {r:.3f}×",
            f"≤ {ACCEPT_MAX_FLOPS_RATIO:.2f}×", _passed(r <= ACCEPT_MAX_FLOPS_RATIO))
        r = cw["fid"] / base["fid"]
        add("FID, Clockwork / baseline", f"{pm(cw['fid'], cw['fid_std'])} / {pm(base['fid'], base['fid_std'])} = {r:.3f}×",
            f"≤ {ACCEPT_MAX_FID_RATIO:.2f}×", _passed(r <= ACCEPT_MAX_FID_RATIO))
        if not (is_missing(cw.get("clip")) or is_missing(base.get("clip"))):
            r = cw["clip"] / base["clip"]
            add("CLIP score, Clockwork / baseline", f"{fmt(cw['clip'])} / {fmt(base['clip'])} = {r:.3f}×",
                f"≥ {ACCEPT_MIN_CLIP_RATIO:.2f}×", _passed(r >= ACCEPT_MIN_CLIP_RATIO))
        if ident is not None:
            add(f"trained {cw['adaptor']} adaptor beats the identity adaptor (FID)",
                f"{pm(cw['fid'], cw['fid_std'])} vs {pm(ident['fid'], ident['fid_std'])}", "lower FID",
                _passed(cw["fid"] < ident["fid"], _noisy(cw["fid"], ident["fid"], cw["fid_std"], ident["fid_std"])))
        # the cheapest plain baseline with fewer steps that still costs >= Clockwork's FLOPs: the closest match in cost
        fewer = ev[(ev["teacher"] == teacher) & (ev["kind"] == "baseline") & (ev["steps"] < base["steps"])]
        dear = fewer[fewer["gflops"] >= cw["gflops"]].sort_values(["gflops", "steps"]).head(1)
        for _, b in dear.iterrows():
            add(f"Clockwork ({int(cw['steps'])} steps) beats the baseline with {int(b['steps'])} steps, which costs "
                f"≥ its FLOPs (FID)",
                f"{pm(cw['fid'], cw['fid_std'])} at {sig(cw['gflops'] / scale)} {unit} vs "
                f"{pm(b['fid'], b['fid_std'])} at {sig(b['gflops'] / scale)} {unit}", "lower FID",
                _passed(cw["fid"] < b["fid"], _noisy(cw["fid"], b["fid"], cw["fid_std"], b["fid_std"])))
        if dear.empty:
            add("Clockwork beats a baseline with fewer steps at ≥ its FLOPs (FID)",
                "no baseline with fewer steps costs as many FLOPs as Clockwork", "lower FID", "not measured")
        v = vs_fewer(cw, "fid")
        verdict = fewer_steps_verdict(v)
        kind = verdict_kind(verdict)
        if kind in ("beats", "ties", "loses"):
            measured = (f"ΔFID@FLOPs {fmt_vs(v)} vs the plain-steps front at {sig(cw['gflops'] / scale)} {unit} "
                        f"(≈ {fmt_steps(v)} steps; front FID {fmt_front(v)})")
            result = {"beats": "pass", "loses": "FAIL"}.get(kind) or (
                "FAIL" if "margin" in verdict else "FAIL (within noise)")
        elif kind == "outside":
            measured, result = f"Clockwork at {sig(cw['gflops'] / scale)} {unit} is {verdict}", "not measured"
        else:
            measured, result = f"{NA}: the results file has no vs_fewer_steps", f"not measured ({NA})"
        add(f"ΔFID@FLOPs ≥ +{VS_MARGIN:.1f} and ≥ {VS_SIGMAS:g}σ (beats fewer steps)", measured,
            f"≥ +{VS_MARGIN:.1f} and ≥ {VS_SIGMAS:g}σ", result)
    if not rows:
        return None
    return Table(pd.DataFrame(rows), label="tab:acceptance",
                 caption="Acceptance checks: the trained Clockwork at the baseline's step count.",
                 notes=f"'(within noise)': the FID difference is below {NOISE_SIGMAS:g}σ of the bootstrap stds. "
                       "ΔFID@FLOPs: the plain-steps front's FID at Clockwork's GFLOPs minus Clockwork's (positive = "
                       "better than taking fewer steps; table1_fewer_steps).",
                 source="metrics/evaluate.json")


# ---------------------------------------------------------------------------------------------- Fig. 4


def fig4_points(ev: pd.DataFrame, ab: pd.DataFrame | None) -> pd.DataFrame:
    """All (teacher, kind, adaptor, steps) points for FID vs FLOPs: evaluate.json plus ablate's ``steps`` rows and
    its plain-steps ``front`` rows (where a file has ``front`` rows, its front is made of them only).

    FID depends on the prompts, the reference images and the number of images, so points are grouped into panels by
    teacher, split (held-out evaluation prompts vs the validation split) and image count (``panel``); fronts are taken
    within a panel, never across splits or image counts. ``plain_front``: a baseline point on the plain-steps front
    (clockwork.pareto.plain_steps_front) of its panel, drawn from one results file only (``front_source``:
    evaluate.json where the panel has its points, else ablate.json)."""
    cols = ["teacher", "kind", "adaptor", "steps", "fid", "fid_std", "gflops", "clip", "clip_std", "latency_ms",
            "n_samples", "split", "vs_fewer_steps", "ablation", "variant", "source", "front", "budget", "clock"]
    e = ev.assign(source="evaluate", ablation=None)
    pts = e[[c for c in cols if c in e]]
    if ab is not None and len(ab[ab["ablation"].isin(["steps", "front", "levers"])]):
        s = ab[ab["ablation"].isin(["steps", "front", "levers"])].copy()
        # a front row first: pipeline/ablate.py runs a configuration once, so a steps baseline at a front step count
        # is the same run, and the front rows are the ones vs_fewer_steps was computed against
        s = s.sort_values("ablation", key=lambda a: a != "front", kind="stable")
        s["kind"] = np.where(s["is_baseline"], "baseline", "clockwork")
        s["teacher"] = s["teacher"].fillna(ev["teacher"].iloc[0]) if "teacher" in s else ev["teacher"].iloc[0]
        s["source"] = "ablate"
        pts = pd.concat([pts, s[[c for c in cols if c in s]]], ignore_index=True)
    for c in ("clip_std", "split", "vs_fewer_steps", "front", "budget", "clock"):
        if c not in pts:
            pts[c] = None
    pts = pts.dropna(subset=["fid", "gflops"])
    pts["series"] = np.where(pts["kind"] == "baseline", "baseline",
                             "Clockwork (" + pts["adaptor"].fillna("?").astype(str) + ")")
    if "variant" in pts:  # every lever is its own Clockwork variant
        lev = pts["ablation"] == "levers"
        pts.loc[lev, "series"] = "lever " + pts.loc[lev, "variant"].astype(str)
    fr = pts["front"].notna()  # evaluate.fronts: each adaptor's best schedule per budget, one line per adaptor
    pts.loc[fr, "series"] = "Clockwork front: " + pts.loc[fr, "front"].astype(str)
    pts["budget_"] = pts["budget"].map(lambda b: "-" if is_missing(b) else str(int(b)))
    # evaluate.json wins over an ablation run of the same configuration on the same split with as many images
    pts["images"] = pts["n_samples"].map(lambda n: "?" if is_missing(n) else str(int(n)))
    pts["split_"] = pts["split"].map(lambda v: "?" if is_missing(v) else str(v))
    pts = pts.drop_duplicates(subset=["teacher", "series", "steps", "budget_", "images", "split_"], keep="first")
    groups = pts.groupby("teacher")[["images", "split_"]].nunique()
    pts["panel"] = [_panel(t, sp, n, groups.loc[t]) for t, sp, n in zip(pts["teacher"], pts["split_"], pts["images"])]
    pts["pareto"] = False
    pts["plain_front"] = False
    pts["front_source"] = ""
    for _, g in pts.groupby("panel"):
        pts.loc[g.index, "pareto"] = pareto_mask(g["gflops"], g["fid"])
        src = "evaluate" if (g["source"] == "evaluate").any() else "ablate"
        plain = g[(g["kind"] == "baseline") & (g["source"] == src)]
        if (plain["ablation"] == "front").any():  # ablate.json's own front (what its vs_fewer_steps used)
            plain = plain[plain["ablation"] == "front"]
        recs = [{"i": i, "gflops": r["gflops"], "fid": r["fid"]} for i, r in plain.iterrows()]
        on = [r["i"] for r in pareto().plain_steps_front(recs, "fid")] if recs else []
        pts.loc[on, "plain_front"] = True
        pts.loc[g.index, "front_source"] = src
    order = {"evaluate": 0, "ablate": 1}
    pts["_o"] = pts["source"].map(order)
    return (pts.sort_values(["teacher", "_o", "split_", "images", "series", "steps", "gflops"])
            .drop(columns=["_o", "split_", "budget_"]).reset_index(drop=True))


def _panel(teacher, split, images, g) -> str:
    if g["images"] == 1 and g["split_"] == 1:
        return teacher
    parts = [teacher]
    if g["split_"] > 1:
        parts.append(f"{split} split" if split != "?" else "split not recorded")
    if g["images"] > 1:
        parts.append(f"{images} images")
    return ", ".join(parts)


def fig4_table(pts: pd.DataFrame) -> Table:
    scale, unit = flops_unit(pts["gflops"])
    df = pd.DataFrame({"teacher": pts["teacher"]})
    has_split = pts["split"].notna().any()
    if has_split:
        df["split"] = pts["split"].map(lambda v: "-" if is_missing(v) else str(v))
    method = [f"{sr} {{{','.join(map(str, c))}}}" if not is_missing(f) else sr
              for sr, f, c in zip(pts["series"], pts["front"], pts["clock"])]  # a front point names its schedule
    df = df.assign(**{"images": pts["images"], "method": method, "steps": pts["steps"].astype(int),
                      "FID ↓": [pm(a, b) for a, b in zip(pts["fid"], pts["fid_std"])],
                      f"{unit}/image": [sig(g / scale) for g in pts["gflops"]]})
    if any(vs_fewer(r) is not None for _, r in pts.iterrows()):
        df["ΔFID@FLOPs ↑"] = ["-" if k == "baseline" else fmt_vs(vs_fewer(r))
                              for k, (_, r) in zip(pts["kind"], pts.iterrows())]
    df["on plain-steps front"] = ["-" if k != "baseline" or src != fs else ("yes" if f else "no")
                                  for k, f, src, fs in zip(pts["kind"], pts["plain_front"], pts["source"],
                                                           pts["front_source"])]
    df["on Pareto front"] = np.where(pts["pareto"], "yes", "no")
    df["from"] = pts["source"]
    notes = ("Plain-steps front: the baseline's step counts that no cheaper step count matches in FID "
             "(clockwork.pareto.plain_steps_front), within one panel and one results file (evaluate.json where the panel "
             "has its points; '-': a baseline of the other file); the Pareto front is over every point of a panel. ")
    if has_split:
        notes += ("evaluate.json and ablate.json rows on different splits or image counts are in different panels and "
                  "are not comparable. ")
    return Table(df, caption="Fig. 4 points: FID vs FLOPs over step counts (fronts within each teacher, split and "
                             "image count).", notes=notes + UNCERTAINTY,
                 source="metrics/evaluate.json, metrics/ablate.json (ablation=steps, front)", label="tab:fig4")
