"""The paper's tables built from loaded results, rendered as Markdown and LaTeX.

Builders take the DataFrames of :mod:`analysis.loader` and return a :class:`Table` whose cells are
already formatted strings (``23.21 ± 0.31``); numbers are never typed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.loader import clock_label, completed, inputs_label, is_missing, is_sweep_baseline

# ------------------------------------------------------------------------------------------ formatting


def fmt(x, digits: int = 2) -> str:
    return "-" if is_missing(x) else f"{x:.{digits}f}"


def pm(mean, std=None, digits: int = 2) -> str:
    """``23.21 ± 0.31`` (or ``23.21`` without a std)."""
    if is_missing(mean):
        return "-"
    return f"{mean:.{digits}f}" if is_missing(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def sig(x, n: int = 3) -> str:
    """``n`` significant digits without exponent notation: 0.0123, 7.30, 10800."""
    if is_missing(x):
        return "-"
    if x == 0:
        return "0"
    digits = max(0, n - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{digits}f}"


def pct(new, ref) -> str:
    if is_missing(new) or is_missing(ref) or ref == 0:
        return "-"
    return f"{100 * (new / ref - 1):+.1f}%"


def params(n) -> str:
    if is_missing(n):
        return "-"
    n = float(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)}"


def flops_unit(gflops_values) -> tuple[float, str]:
    """Divide GFLOPs by the returned scale to get the unit named: TFLOPs when the values reach 1 TFLOP."""
    vals = [v for v in gflops_values if not is_missing(v)]
    return (1000.0, "TFLOPs") if vals and max(vals) >= 1000 else (1.0, "GFLOPs")


def kid_scaled(v) -> float:
    return v * 1e3 if not is_missing(v) else v


UNCERTAINTY = ("±: FID, std over bootstrap resamples of the generated images (same images, not new seeds); "
               "KID, std over subsets; CLIP, standard error over images.")

# ------------------------------------------------------------------------------------------------ Table

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\to$", "≈": r"$\approx$", "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$",
                  "−": "-", "σ": r"$\sigma$", "⁻": "-", "³": r"$^3$", "✓": r"\checkmark{}", "✗": r"$\times$",
                  "★": r"$\star$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "Δ": r"$\Delta$"}


def latex_escape(s: str) -> str:
    s = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in s)


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    df: pd.DataFrame  # formatted strings
    caption: str
    source: str = ""  # which files the numbers come from
    label: str = ""
    colspec: str | None = None  # LaTeX column spec; default r for numeric columns, l otherwise
    notes: str = ""  # how to read the table (below it in Markdown, in the caption in LaTeX)

    def to_markdown(self) -> str:
        cols = [md_escape(c) for c in self.df.columns]
        num = [self._numeric(c) for c in self.df.columns]
        lines = [f"**{self.caption}**", "", "| " + " | ".join(cols) + " |",
                 "|" + "|".join("---:" if n else ":---" for n in num) + "|"]
        for _, r in self.df.iterrows():
            lines.append("| " + " | ".join(md_escape(v) for v in r.values) + " |")
        if self.notes:
            lines += ["", self.notes]
        if self.source:
            lines += ["", f"<sub>{self.source}</sub>"]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        align = self.colspec or "".join("r" if self._numeric(c) else "l" for c in self.df.columns)
        lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                 " & ".join(latex_escape(c) for c in self.df.columns) + r" \\", r"\midrule"]
        for _, r in self.df.iterrows():
            lines.append(" & ".join(latex_escape(v) for v in r.values) + r" \\")
        cap = " ".join(x for x in (self.caption, self.notes, f"Source: {self.source}." if self.source else "") if x)
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(cap)}}}"]
        if self.label:
            lines.append(rf"\label{{{self.label}}}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def _numeric(self, col) -> bool:
        vals = [str(v) for v in self.df[col] if str(v) not in {"-", ""}]
        return bool(vals) and all(v[:1].isdigit() or v[:1] in "+-." for v in vals)

    def _repr_html_(self):  # notebooks show the formatted frame
        return f"<p><b>{self.caption}</b></p>" + self.df.to_html(index=False)


# ------------------------------------------------------------------------------------------------ Pareto


def pareto_mask(cost, value, higher_is_better: bool = False) -> np.ndarray:
    """Points not dominated by another (lower-or-equal cost and better-or-equal value, one strictly)."""
    c = np.asarray(cost, dtype=float)
    v = -np.asarray(value, dtype=float) if higher_is_better else np.asarray(value, dtype=float)
    ok = ~(np.isnan(c) | np.isnan(v))
    mask = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (c <= c[i]) & (v <= v[i]) & ((c < c[i]) | (v < v[i]))
        mask[i] = not dominated.any()
    return mask


# ---------------------------------------------------------------------------------------------- Table 1


def main_steps(ev: pd.DataFrame, teacher: str) -> int:
    """The step count of the teacher's ``baseline`` entry (8 in the paper)."""
    t = ev[(ev["teacher"] == teacher) & (ev["kind"] == "baseline")]
    named = t[t["method"] == "baseline"]
    return int((named if len(named) else t)["steps"].max())


def method_label(r, main: int | None = None) -> str:
    if r["kind"] == "baseline":
        fewer = main is not None and not is_missing(r["steps"]) and int(r["steps"]) != main
        return f"baseline (full UNet), {int(r['steps'])} steps" if fewer else "baseline (full UNet)"
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
        fewer = everything[(everything["kind"] == "baseline") & (everything["steps"] < steps)]
        for _, r in pd.concat([t[t["kind"] == "baseline"], t[t["kind"] == "clockwork"],
                               fewer.sort_values("steps", ascending=False)]).iterrows():
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
    named, trained = cw[cw["method"] == "clockwork"], cw[cw["adaptor"] != "identity"]
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
        fewer = ev[(ev["teacher"] == teacher) & (ev["kind"] == "baseline") & (ev["steps"] < base["steps"])]
        dear = fewer[fewer["gflops"] >= cw["gflops"]].sort_values("steps", ascending=False)
        for _, b in dear.iterrows():
            add(f"Clockwork ({int(cw['steps'])} steps) beats the baseline with {int(b['steps'])} steps, which costs "
                f"≥ its FLOPs (FID)",
                f"{pm(cw['fid'], cw['fid_std'])} at {sig(cw['gflops'] / scale)} {unit} vs "
                f"{pm(b['fid'], b['fid_std'])} at {sig(b['gflops'] / scale)} {unit}", "lower FID",
                _passed(cw["fid"] < b["fid"], _noisy(cw["fid"], b["fid"], cw["fid_std"], b["fid_std"])))
        if dear.empty:
            add("Clockwork beats a baseline with fewer steps at ≥ its FLOPs (FID)",
                "no baseline with fewer steps costs as many FLOPs as Clockwork", "lower FID", "not measured")
    if not rows:
        return None
    return Table(pd.DataFrame(rows), label="tab:acceptance",
                 caption="Acceptance checks: the trained Clockwork at the baseline's step count.",
                 notes=f"'(within noise)': the FID difference is below {NOISE_SIGMAS:g}σ of the bootstrap stds.",
                 source="metrics/evaluate.json")


def fig4_points(ev: pd.DataFrame, ab: pd.DataFrame | None) -> pd.DataFrame:
    """All (teacher, kind, adaptor, steps) points for FID vs FLOPs: evaluate.json plus ablate's ``steps`` rows.

    FID falls as the number of images grows, so points are grouped into panels by teacher and image count
    (``panel``) and the Pareto front is taken within a panel, never across image counts."""
    cols = ["teacher", "kind", "adaptor", "steps", "fid", "fid_std", "gflops", "clip", "latency_ms", "n_samples",
            "source"]
    pts = ev.assign(source="evaluate")[cols[:-1] + ["source"]]
    if ab is not None and len(ab[ab["ablation"] == "steps"]):
        s = ab[ab["ablation"] == "steps"].copy()
        s["kind"] = np.where(s["is_baseline"], "baseline", "clockwork")
        s["teacher"] = s["teacher"].fillna(ev["teacher"].iloc[0]) if "teacher" in s else ev["teacher"].iloc[0]
        s["source"] = "ablate"
        pts = pd.concat([pts, s[[c for c in cols if c in s]]], ignore_index=True)
    pts = pts.dropna(subset=["fid", "gflops"])
    pts["series"] = np.where(pts["kind"] == "baseline", "baseline",
                             "Clockwork (" + pts["adaptor"].fillna("?").astype(str) + ")")
    # evaluate.json wins over an ablation run of the same configuration with as many images
    pts["images"] = pts["n_samples"].map(lambda n: "?" if is_missing(n) else str(int(n)))
    pts = pts.drop_duplicates(subset=["teacher", "series", "steps", "images"], keep="first")
    counts = pts.groupby("teacher")["images"].nunique()
    pts["panel"] = [t if counts[t] == 1 else f"{t}, {n} images" for t, n in zip(pts["teacher"], pts["images"])]
    pts["pareto"] = False
    for _, g in pts.groupby("panel"):
        pts.loc[g.index, "pareto"] = pareto_mask(g["gflops"], g["fid"])
    order = {"evaluate": 0, "ablate": 1}
    pts["_o"] = pts["source"].map(order)
    return pts.sort_values(["teacher", "_o", "images", "series", "steps"]).drop(columns="_o").reset_index(drop=True)


def fig4_table(pts: pd.DataFrame) -> Table:
    scale, unit = flops_unit(pts["gflops"])
    df = pd.DataFrame({
        "teacher": pts["teacher"], "images": pts["images"], "method": pts["series"], "steps": pts["steps"].astype(int),
        "FID ↓": [pm(a, b) for a, b in zip(pts["fid"], pts["fid_std"])],
        f"{unit}/image": [sig(g / scale) for g in pts["gflops"]],
        "on Pareto front": np.where(pts["pareto"], "yes", "no"), "from": pts["source"]})
    return Table(df, caption="Fig. 4 points: FID vs FLOPs over step counts (Pareto front within each teacher and "
                             "image count).", notes=UNCERTAINTY,
                 source="metrics/evaluate.json, metrics/ablate.json (ablation=steps)", label="tab:fig4")


# -------------------------------------------------------------------------------------------- ablations


def _rows(ab: pd.DataFrame | None, ablation: str) -> pd.DataFrame:
    if ab is None:
        return pd.DataFrame()
    return ab[ab["ablation"] == ablation].copy()


def _matching(cands: pd.DataFrame, rows: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """``cands`` at the most common value of each key among ``rows`` (where both have it)."""
    for k in keys:
        if k in rows and k in cands and rows[k].notna().any() and cands[k].notna().any():
            cands = cands[cands[k] == rows[k].dropna().mode().iloc[0]]
    return cands


def reference_baseline(ab_rows: pd.DataFrame, ev: pd.DataFrame | None, ab: pd.DataFrame | None = None) -> pd.Series | None:
    """The ablation's own baseline row, else a baseline row of another ablation run the same way (steps,
    sampler, sample count: FID depends on the number of images), else evaluate.json's baseline at the same
    steps (and sampler)."""
    if len(ab_rows) and ab_rows["is_baseline"].any():
        return ab_rows[ab_rows["is_baseline"]].iloc[0]
    if not len(ab_rows):
        return None
    if ab is not None and len(ab):
        other = _matching(ab[ab["is_baseline"]], ab_rows, ("steps", "sampler", "n_samples"))
        if len(other):
            return other.iloc[0]
    if ev is None:
        return None
    b = _matching(ev[ev["kind"] == "baseline"], ab_rows, ("steps", "sampler"))
    return b.iloc[0] if len(b) else None


def _metric_cols(r, base, scale, unit) -> dict:
    return {"FID ↓": pm(r["fid"], r.get("fid_std")), "KID×10³ ↓": pm(kid_scaled(r.get("kid")), kid_scaled(r.get("kid_std"))),
            "CLIP ↑": pm(r.get("clip"), r.get("clip_std"), 4),
            f"{unit}/image": sig(r["gflops"] / scale) if not is_missing(r.get("gflops")) else "-",
            "FLOPs vs baseline": ("-" if base is None or is_missing(r.get("gflops")) or is_missing(base.get("gflops"))
                                  else f"{r['gflops'] / base['gflops']:.3f}×")}


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
    if base is None or rows["is_baseline"].any():
        where = ""
    elif "ablation" in base.index:
        where = f"; baseline from metrics/ablate.json (ablation={base['ablation']}, the same steps, sampler and images)"
    else:
        where = "; baseline from metrics/evaluate.json"
    return Table(pd.DataFrame(out), caption=caption, label=label, notes=ablation_note(rows),
                 source=f"metrics/ablate.json (ablation={ablation})" + where)


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
                        gflops_base=b.get("gflops"), gflops_cw=c.get("gflops"), steps=c.get("steps")))
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
    return Table(df, caption="Table 4: samplers, baseline -> Clockwork (lower FID is better).",
                 notes=ablation_note(_rows(ab, "sampler")),
                 source="metrics/ablate.json (ablation=sampler)", label="tab:samplers")


def training_points(ab: pd.DataFrame | None, ev: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fig. 7: FID per (training method, steps); baselines per step count from ablate or evaluate.json."""
    rows = _rows(ab, "training")
    if rows.empty:
        return rows
    cols = ["steps", "fid", "fid_std", "clip", "gflops", "n_samples"]
    pts = rows[~rows["is_baseline"]][["training", *cols]].copy()
    base = rows[rows["is_baseline"]][cols]
    if base.empty:  # another ablation's baselines (same image count first), else evaluate.json's
        extra = [_rows(ab, "steps"), None if ev is None else ev.assign(is_baseline=ev["kind"] == "baseline")]
        base = pd.concat([e[e["is_baseline"]][cols] for e in extra if e is not None and len(e)], ignore_index=True)
        base = base[base["steps"].isin(pts["steps"])]
        same_n = base["n_samples"].isin(pts["n_samples"].dropna().unique())
        base = pd.concat([base[same_n], base[~same_n]])
    if len(base):
        pts = pd.concat([pts, base.drop_duplicates("steps").assign(training="baseline (no adaptor)")])
    return pts.sort_values(["training", "steps"]).reset_index(drop=True)


def training_table(pts: pd.DataFrame) -> Table:
    wide = pts.assign(cell=[pm(a, b) for a, b in zip(pts["fid"], pts["fid_std"])]).pivot_table(
        index="steps", columns="training", values="cell", aggfunc="first").reset_index()
    wide["steps"] = wide["steps"].astype(int)
    wide.columns.name = None
    return Table(wide.fillna("-").rename(columns={c: f"FID, {c}" for c in wide.columns if c != "steps"}),
                 caption="Fig. 7: adaptor distilled on unrolled trajectories vs on forward-noised images, FID by step count.",
                 notes=ablation_note(pts), source="metrics/ablate.json (ablation=training)", label="tab:training")


def distill_table(summary: dict) -> Table:
    keys = [k for k in ("steps", "final_loss", "heldout_mse", "adaptor_params") if k in summary]
    keys += [k for k, v in summary.items() if k not in keys and isinstance(v, (int, float, str)) and not k.startswith("_")]
    val = {"adaptor_params": params}
    df = pd.DataFrame({"quantity": keys, "value": [
        val[k](summary[k]) if k in val else (sig(summary[k], 4) if isinstance(summary[k], float) else str(summary[k]))
        for k in keys]})
    return Table(df, caption="Adaptor distillation summary.", source="metrics/distill.json", label="tab:distill")


# ------------------------------------------------------------------------------------------------- sweeps

RECOMMEND_REL_TOL = 0.05  # within 5% of the baseline's FID


def recommend(trials: pd.DataFrame, baseline_fid: float | None, sweep_rule: str | None = None) -> tuple[str | None, str]:
    """The recommended trial: the one the sweep recorded (``recommended`` column, ``summary.json``, the MLflow
    parent's ``sweep.recommended_trial`` tag), else the operating point rule of clockwork/pareto.py with a 5%
    relative tolerance: the cheapest completed trial whose FID is within 5% of the baseline's (of the best
    trial's without a baseline). ``sweep_rule`` (:meth:`analysis.loader.SweepInfo.rule`) names the rule the
    sweep applied, for a recorded recommendation."""
    recorded = "recorded by the sweep" + (f": {sweep_rule}" if sweep_rule else "")
    if "recommended" in trials and trials["recommended"].fillna(False).astype(bool).any():
        return str(trials[trials["recommended"].fillna(False).astype(bool)]["trial_id"].iloc[0]), recorded
    if "recommended_trial_id" in trials and trials["recommended_trial_id"].notna().any():
        rec = trials["recommended_trial_id"].dropna().astype(str)
        rec = rec[rec != ""]
        if len(rec):
            return rec.iloc[0], recorded
    done = completed(trials)
    done = done[~is_sweep_baseline(done)]
    if done.empty:
        return None, "no completed trial"
    has_base = baseline_fid is not None and not is_missing(baseline_fid)
    ref = baseline_fid if has_base else done["fid"].min()
    what = "the baseline's" if has_base else "the best trial's"
    ok = done[done["fid"] <= ref * (1 + RECOMMEND_REL_TOL)]
    if ok.empty:
        return str(done.sort_values("fid")["trial_id"].iloc[0]), f"lowest FID (no trial within 5% of {what} FID)"
    best = ok.sort_values(["gflops", "fid"]).iloc[0]
    return str(best["trial_id"]), f"cheapest trial with FID within 5% of {what} ({ref:.2f}); computed here"


def _cfg(v) -> str:
    if is_missing(v):
        return "-"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def trial_label(r) -> str:
    """A trial's readable name: the sweep's run name (``c3-resnet-w64-k1-s8``), else its trial id."""
    name = r.get("run_name") if hasattr(r, "get") else None
    return str(r["trial_id"]) if is_missing(name) or name in (None, "") else str(name)


def _front_flags(done: pd.DataFrame) -> pd.DataFrame:
    """``front_fid`` / ``front_clip``: on the FID-GFLOPs / CLIP-GFLOPs Pareto front of the completed trials."""
    return done.assign(front_fid=pareto_mask(done["gflops"], done["fid"]),
                       front_clip=pareto_mask(done["gflops"], done["clip"], higher_is_better=True)
                       if "clip" in done else False)


def _front_name(a: bool, b: bool) -> str:
    return "FID+CLIP" if a and b else ("FID" if a else ("CLIP" if b else ""))


def _sweep_caption(name: str, what: str, info=None) -> str:
    about = info.about() if info is not None else ""
    return f"Sweep '{name}'" + (f" ({about})" if about else "") + f": {what}"


def _sweep_notes(baseline: pd.Series | None, rec: str | None, rule: str, trials: pd.DataFrame, info=None,
                 other: str | None = None) -> str:
    notes = []
    if baseline is not None:
        notes.append(f"Baseline: the full UNet at {int(baseline['steps'])} steps, FID {pm(baseline['fid'], baseline.get('fid_std'))}"
                     + (f", CLIP {fmt(baseline['clip'], 4)}" if not is_missing(baseline.get("clip")) else "")
                     + f", {sig(baseline['gflops'])} GFLOPs per image.")
    if rec is not None:
        r = trials[trials["trial_id"].astype(str) == str(rec)]
        notes.append(f"★ recommended: {trial_label(r.iloc[0]) if len(r) else rec} ({rule}).")
    if info is not None and info.caution():
        notes.append(info.caution())
    if info is not None and info.n_samples:
        notes.append(f"FID on {info.n_samples} images per trial: comparable within this sweep only"
                     + (f", not with {other}" if other else "") + ".")
    return " ".join(notes)


def _config_cols(d: pd.DataFrame) -> list[str]:
    """Configuration columns that vary across the sweep's own trials (the baseline aside)."""
    t = d[~is_sweep_baseline(d)]
    return [c for c in ("clock", "width", "cut", "adaptor", "steps") if c in d and t[c].nunique(dropna=True) > 1]


def _constant_config(d: pd.DataFrame) -> str:
    t = d[~is_sweep_baseline(d)]
    same = [(c, t[c].dropna().iloc[0]) for c in ("adaptor", "steps", "width", "cut", "clock")
            if c in d and t[c].nunique(dropna=True) == 1]
    return ", ".join(f"{c} {_cfg(v)}" for c, v in same)


def sweep_front_table(trials: pd.DataFrame, name: str, rec: str | None, baseline: pd.Series | None,
                      info=None, rule: str = "", other: str | None = None) -> Table:
    """The trials on the FID-GFLOPs or CLIP-GFLOPs Pareto front, cheapest first. ``info``: the sweep's
    :class:`analysis.loader.SweepInfo` (how it ran, for the caption); ``other``: what its FIDs are not comparable with."""
    done = _front_flags(completed(trials))
    front = done[done["front_fid"] | done["front_clip"]].sort_values("gflops")
    cfg_cols = [c for c in ("clock", "cut", "width", "adaptor", "steps") if c in front]
    df = pd.DataFrame({"trial": [trial_label(r) for _, r in front.iterrows()],
                       **{c: [_cfg(v) for v in front[c]] for c in cfg_cols},
                       "FID ↓": [pm(a, b) for a, b in zip(front["fid"], front.get("fid_std", [None] * len(front)))],
                       "CLIP ↑": [fmt(v, 4) for v in front.get("clip", [None] * len(front))],
                       "GFLOPs/image": [sig(g) for g in front["gflops"]],
                       "FLOPs vs baseline": [f"{g / baseline['gflops']:.3f}×" if baseline is not None else "-"
                                             for g in front["gflops"]],
                       "front": [_front_name(a, b) for a, b in zip(front["front_fid"], front["front_clip"])],
                       "baseline": np.where(is_sweep_baseline(front), "yes", ""),
                       "recommended": ["★" if str(t) == str(rec) else "" for t in front["trial_id"]]})
    return Table(df, caption=_sweep_caption(name, "trials on the FID-GFLOPs or CLIP-GFLOPs Pareto front "
                                                  f"({len(done)} completed of {len(trials)}).", info),
                 notes=_sweep_notes(baseline, rec, rule, trials, info, other),
                 source=info.source if info is not None else f"sweeps/{name}/results.csv or its MLflow runs",
                 label=f"tab:sweep-{name}")


def sweep_trials_table(trials: pd.DataFrame, name: str, rec: str | None, baseline: pd.Series | None,
                       info=None, rule: str = "", other: str | None = None) -> Table:
    """Every trial of the sweep (its baseline first, then by GFLOPs) with its Pareto fronts and the recommendation."""
    done = _front_flags(completed(trials))
    t = trials.merge(done[["trial_id", "front_fid", "front_clip"]], on="trial_id", how="left")
    t = t.assign(front_fid=t["front_fid"].fillna(False).astype(bool), front_clip=t["front_clip"].fillna(False).astype(bool),
                 _base=is_sweep_baseline(t).to_numpy())
    t = t.sort_values(["_base", "gflops", "trial_id"], ascending=[False, True, True], na_position="last")
    cols = _config_cols(t)
    base_g = baseline["gflops"] if baseline is not None else math.nan
    get = lambda c: t[c] if c in t else pd.Series([math.nan] * len(t), index=t.index)  # noqa: E731
    df = pd.DataFrame({"trial": [trial_label(r) for _, r in t.iterrows()],
                       **{c: [_cfg(v) for v in t[c]] for c in cols},
                       "FID ↓": [pm(a, b) for a, b in zip(t["fid"], get("fid_std"))],
                       "KID×10³ ↓": [fmt(kid_scaled(v)) for v in get("kid")],
                       "CLIP ↑": [fmt(v, 4) for v in get("clip")],
                       "GFLOPs/image": [sig(g) for g in t["gflops"]],
                       "FLOPs vs baseline": [f"{g / base_g:.3f}×" if not is_missing(g) and not is_missing(base_g) else "-"
                                             for g in t["gflops"]],
                       "latency (ms)": [sig(v) for v in get("latency_ms")],
                       "adaptor params": [params(v) if not b else "-" for v, b in zip(get("adaptor_params"), t["_base"])],
                       "status": [str(v) if not is_missing(v) else "-" for v in get("status")],
                       "Pareto front": [_front_name(a, b) for a, b in zip(t["front_fid"], t["front_clip"])],
                       "recommended": ["★" if str(x) == str(rec) else "" for x in t["trial_id"]]})
    const = _constant_config(t)
    what = f"all {len(t)} trials, the baseline (clock 1) first, then by GFLOPs" + (f"; every trial: {const}" if const else "")
    notes = _sweep_notes(baseline, rec, rule, trials, info, other)
    notes += (" " if notes else "") + ("Pareto front: FID vs GFLOPs and/or CLIP vs GFLOPs over the completed trials "
                                       "incl. the baseline; latency: the UNet loop on the machine that ran the trial.")
    return Table(df, caption=_sweep_caption(name, what + ".", info), notes=notes,
                 source=info.source if info is not None else f"sweeps/{name}/results.csv or its MLflow runs",
                 label=f"tab:sweep-{name}-trials")


def mlflow_crosscheck(csvs: dict[str, pd.DataFrame], ml: pd.DataFrame | None) -> Table | None:
    """Does the MLflow window show the same trials and numbers as the sweeps' results.csv?"""
    if ml is None or not len(ml):
        return None
    from analysis.loader import align_sweep_names

    ml = align_sweep_names(csvs, ml)
    names = sorted(set(csvs) | set(ml["sweep"].dropna().astype(str)))
    rows = []
    for name in names:
        c = csvs.get(name)
        m = ml[ml["sweep"].astype(str) == name]
        both = (c.merge(m, on="trial_id", suffixes=("_csv", "_mlflow")) if c is not None and len(m) else pd.DataFrame())
        diffs = {k: (both[f"{k}_csv"] - both[f"{k}_mlflow"]).abs().max() if f"{k}_csv" in both and f"{k}_mlflow" in both
                 else math.nan for k in ("fid", "gflops")}
        rec_csv = recommend(c, None)[0] if c is not None and ("recommended" in c or "recommended_trial_id" in c) else None
        rec_ml = recommend(m, None)[0] if len(m) else None
        rows.append({"sweep": name, "trials in results.csv": "-" if c is None else str(len(c)),
                     "child runs in MLflow": str(len(m)), "matched by trial_id": str(len(both)),
                     "max |ΔFID|": sig(diffs["fid"]) if not is_missing(diffs["fid"]) else "-",
                     "max |ΔGFLOPs|": sig(diffs["gflops"]) if not is_missing(diffs["gflops"]) else "-",
                     "recommended (CSV / MLflow)": f"{rec_csv or '-'} / {rec_ml or '-'}"})
    return Table(pd.DataFrame(rows), caption="Sweep results.csv vs its MLflow runs (the DAG reads the CSV; "
                 "MLflow is the window).", source="sweeps/*/results.csv, MLflow search_runs", label="tab:mlflow")


def sweep_baseline(ev: pd.DataFrame, trials: pd.DataFrame) -> pd.Series | None:
    """The sweep's own baseline trial at its most common step count, else evaluate.json's baseline there."""
    done = completed(trials)
    own, rest = done[is_sweep_baseline(done)], done[~is_sweep_baseline(done)]
    steps = rest["steps"].mode().iloc[0] if "steps" in rest and rest["steps"].notna().any() else None
    if len(own):
        at = own[own["steps"] == steps] if steps is not None and "steps" in own else own
        return (at if len(at) else own).iloc[0]
    b = ev[ev["kind"] == "baseline"]
    if steps is not None:
        at = b[b["steps"] == steps]
        b = at if len(at) else b[b["method"] == "baseline"]
    return b.iloc[0] if len(b) else None
