"""The paper's tables built from loaded results, rendered as Markdown and LaTeX.

Builders take the DataFrames of :mod:`analysis.loader` and return a :class:`Table` whose cells are
already formatted strings (``23.21 ± 0.31``); numbers are never typed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.loader import (SPLIT_LABELS, clock_label, completed, inputs_label, is_missing, is_sweep_baseline, pareto,
                             vs_fewer)

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
                  "★": r"$\star$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "Δ": r"$\Delta$",
                  "α": r"$\alpha$", "ε": r"$\varepsilon$", "·": r"$\cdot$"}


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


# ------------------------------------------------------------------------------ versus taking fewer steps

# The question every report asks: does the method beat the plain UNet sampled with fewer steps at equal FLOPs?
# The stages answer it per row (vs_fewer_steps: clockwork.pareto.versus_fewer_steps against the plain-steps front);
# the verdict applies clockwork.pareto.beats_fewer_steps with this margin and these sigmas.
VS_MARGIN = 1.0  # FID points
VS_SIGMAS = 2.0
NA = "n/a"
BEATS, TIES, LOSES, OUTSIDE = "beats fewer steps", "ties", "loses", "outside the front"
OUTSIDE_WHY = {"cheaper_than_front": "cheaper than its fewest steps", "costlier_than_front": "costlier than its most steps"}


def fewer_steps_verdict(v: dict | None, margin: float = VS_MARGIN, sigmas: float = VS_SIGMAS) -> str:
    """The verdict of one ``vs_fewer_steps`` FID answer: ``beats fewer steps`` (ΔFID@FLOPs >= +margin and >= sigmas·σ:
    clockwork.pareto.beats_fewer_steps), ``ties`` (|Δ| < sigmas·σ; ``ties (below the +1.0 margin)`` when Δ is
    significant but smaller than the margin), ``loses`` (Δ <= -sigmas·σ), ``outside the front (...)`` when no plain
    step count costs as much, ``n/a`` when the file has no answer."""
    if v is None:
        return NA
    status = v.get("status")
    if status in OUTSIDE_WHY:
        return f"{OUTSIDE} ({OUTSIDE_WHY[status]})"
    if status != "inside" or v.get("delta") is None:
        return f"{NA} (no metrics)"
    if pareto().beats_fewer_steps(v, margin, sigmas):
        return BEATS
    d, sd = float(v["delta"]), float(v.get("delta_std") or 0.0)
    if d < 0 and d <= -sigmas * sd:
        return LOSES
    if abs(d) < sigmas * sd or d == 0:
        return TIES
    return f"{TIES} (below the +{margin:.1f} margin)"


def verdict_kind(verdict: str) -> str:
    """``beats`` / ``ties`` / ``loses`` / ``outside`` / ``n/a`` of a :func:`fewer_steps_verdict`."""
    for k, prefix in (("beats", BEATS), ("ties", TIES), ("loses", LOSES), ("outside", OUTSIDE)):
        if verdict.startswith(prefix):
            return k
    return NA


def fmt_vs(v: dict | None, digits: int = 2) -> str:
    """``+1.89 ± 0.21`` (Δ@FLOPs), ``outside (cheaper)`` / ``outside (costlier)``, or ``n/a``."""
    if v is None:
        return NA
    if v.get("status") in OUTSIDE_WHY:
        return "outside (" + v["status"].split("_")[0] + ")"
    if v.get("delta") is None:
        return NA
    d, sd = v["delta"], v.get("delta_std")
    return f"{d:+.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def fmt_front(v: dict | None, digits: int = 2) -> str:
    if v is None or v.get("front") is None:
        return NA if v is None or v.get("status") not in OUTSIDE_WHY else "-"
    return pm(v["front"], v.get("front_std"), digits)


def fmt_steps(v: dict | None) -> str:
    if v is None or v.get("steps") is None:
        return NA if v is None or v.get("status") not in OUTSIDE_WHY else "-"
    return f"{v['steps']:.1f}"


def front_steps(rows: pd.DataFrame, metric: str = "fid") -> list[int]:
    """Step counts of the plain-steps front (clockwork.pareto.plain_steps_front) of baseline ``rows``, fewest first."""
    recs = [r for r in rows[["steps", "gflops", metric]].to_dict("records")
            if not (is_missing(r[metric]) or is_missing(r["gflops"]))]
    if not recs:
        return []
    mode = "max" if metric == "clip" else "min"
    return [int(r["steps"]) for r in pareto().plain_steps_front(recs, metric, quality_mode=mode)]


def _steps_list(steps) -> str:
    return ", ".join(str(s) for s in steps) if steps else "-"


VS_NOTES = ("ΔFID@FLOPs: the FID of the plain-steps front (the full UNet sampled with fewer steps, same prompts and seeds; "
            "step counts that cost more and are no better dropped) interpolated linearly in GFLOPs at the method's cost, "
            "minus the method's FID: positive = better than taking fewer steps. ΔCLIP@FLOPs: the method's CLIP minus the "
            "front's. ±: std over paired bootstrap replicates (the same resampled prompts for every method) where the file "
            "has them, else the points' stds propagated. Verdict (clockwork.pareto.beats_fewer_steps): beats fewer steps "
            f"when ΔFID@FLOPs ≥ +{VS_MARGIN:.1f} and ≥ {VS_SIGMAS:g}σ; ties when |Δ| < {VS_SIGMAS:g}σ; loses when "
            f"Δ ≤ -{VS_SIGMAS:g}σ; outside the front when no plain step count costs as much. n/a: the results file "
            "has no vs_fewer_steps for the row (written before the stages computed it).")


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


def _is_raw_cos(ev: pd.DataFrame) -> bool:
    """CLIP as a raw cosine (~0.30, the paper's) rather than torchmetrics' 100·cos: more digits."""
    c = ev["clip"].dropna() if "clip" in ev else pd.Series(dtype=float)
    return bool(len(c)) and float(c.abs().max()) < 1.5


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


# -------------------------------------------------------------------------------------------- sensitivity

SENS_MODES = {"noise": "noise on r_out from step s on", "reuse": "r_out(t+1) reused from step s on",
              "reuse_once": "r_out(t+1) reused at step s only"}


def sens_variant(mode: str, alpha) -> str:
    return mode + ("" if is_missing(alpha) else f" α={float(alpha):g}")


def _cut_words(meta: dict, cut: int) -> str:
    pc = (meta.get("per_cut") or {}).get(str(cut)) or {}
    shape = pc.get("r_out_shape")
    share = (pc.get("flops") or {}).get("replaced_share")
    parts = [f"{shape[-2]}×{shape[-1]}" if shape and len(shape) >= 2 else None,
             f"{100 * float(share):.0f}% of the FLOPs" if share is not None else None]
    parts = [p for p in parts if p]
    return f"cut {cut}" + (f" ({', '.join(parts)})" if parts else "")


def sensitivity_about(meta: dict) -> str:
    """``dpm++, 8 steps, CFG 2, 64 images, seed 0, the embedded teacher``: how the sensitivity run was made."""
    parts = [meta.get("sampler") or meta.get("scheduler"),
             f"{meta['steps']} steps" if meta.get("steps") is not None else None,
             f"CFG {float(meta['guidance']):g}" if meta.get("guidance") is not None else None,
             f"{meta['n']} images" if meta.get("n") is not None else None,
             f"seed {meta['seed']}" if meta.get("seed") is not None else None, meta.get("source")]
    return ", ".join(str(p) for p in parts if p)


def sensitivity_table(meta: dict, rows: pd.DataFrame, source: str = "sensitivity.json") -> Table:
    """Fig. 2 as a table: one row per (cut, mode, α), one column per start step s: the mean relative L2 change of the
    final sample (± std over images) when r_out below the cut is changed from step s on."""
    starts = sorted({int(s) for s in rows["start_step"]})
    has_score = "score" in rows and rows["score"].notna().any()
    out = []
    keys = list(dict.fromkeys((int(c), m, None if is_missing(a) else float(a))
                              for c, m, a in zip(rows["cut"], rows["mode"], rows["alpha"])))
    for cut, mode, alpha in keys:
        g = rows[(rows["cut"] == cut) & (rows["mode"] == mode)
                 & (rows["alpha"].isna() if alpha is None else rows["alpha"] == alpha)]
        cells = {}
        for st in starts:
            hit = g[g["start_step"] == st]
            if hit.empty:
                cells[f"s={st}"] = "-"
                continue
            r = hit.iloc[0]
            cell = f"{r['rel_l2']:.3g}" + ("" if is_missing(r.get("rel_l2_std")) else f" ± {r['rel_l2_std']:.2g}")
            if has_score and not is_missing(r.get("score")):
                cell += f" (score {r['score']:.2f})"
            cells[f"s={st}"] = cell
        out.append({"cut": _cut_words(meta, cut), "change": sens_variant(mode, alpha), **cells})
    ref = meta.get("ref_score")
    notes = ("Cell: mean relative L2 change ||x - x_ref|| / ||x_ref|| of the final sample (latents) over the images, ± its "
             "std over images; s: the 0-based sampler step from which r_out (the UNet's output below the cut) is changed. "
             "noise: r_out + α·std(r_out)·ε on every step ≥ s; reuse: the previous step's r_out on every step ≥ s (the "
             "identity adaptor from s on); reuse_once: at step s only. Small values: the sample does not care about that "
             "level there, so an adaptor can stand in for it.")
    if has_score:
        notes += " score: the run's own score of the final samples" + (f" (reference {float(ref):.2f})." if ref is not None
                                                                      else ".")
    if meta.get("reference_equal_across_cuts") is False:
        notes += " The reference samples differ across cuts (they should not: UNetCut.full_step is exact)."
    about = sensitivity_about(meta)
    return Table(pd.DataFrame(out), label="tab:sensitivity", notes=notes, source=source,
                 caption="Fig. 2 (sensitivity): how much the final sample changes when the low-resolution features below "
                         "each cut are perturbed or reused from step s on" + (f" ({about})" if about else "") + ".")


# ------------------------------------------------------------------------------------------------- sweeps
# ------------------------------------------------------------------------------------------------- sweeps

RECOMMEND_REL_TOL = 0.05  # within 5% of the baseline's FID


def recommend(trials: pd.DataFrame, baseline_fid: float | None, sweep_rule: str | None = None) -> tuple[str | None, str]:
    """The recommended trial: the one the sweep recorded (``recommended`` column, ``summary.json``, the MLflow
    parent's ``sweep.recommended_trial`` tag), else the operating point rule of clockwork/pareto.py with a 5%
    relative tolerance: the cheapest completed trial whose FID is within 5% of the baseline's (of the best
    trial's without a baseline). A sweep that scored its trials against fewer steps (a ``beats_fewer_steps``
    column) and recommended none means none. ``sweep_rule`` (:meth:`analysis.loader.SweepInfo.rule`) names the rule the
    sweep applied, for a recorded recommendation."""
    recorded = "recorded by the sweep" + (f": {sweep_rule}" if sweep_rule else "")
    if "recommended" in trials and trials["recommended"].fillna(False).astype(bool).any():
        return str(trials[trials["recommended"].fillna(False).astype(bool)]["trial_id"].iloc[0]), recorded
    if "recommended_trial_id" in trials and trials["recommended_trial_id"].notna().any():
        rec = trials["recommended_trial_id"].dropna().astype(str)
        rec = rec[rec != ""]
        if len(rec):
            return rec.iloc[0], recorded
    if "beats_fewer_steps" in trials:  # the sweep scored every trial against fewer steps: its "none" stands
        return None, "no trial beats taking fewer steps, " + recorded
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


def _vs_fewer(df: pd.DataFrame) -> dict[str, list[str]]:
    """ΔFID@FLOPs against the sweep's plain-steps front (results.csv ``dfid_at_flops`` ± std) and whether the trial
    beats fewer steps; nothing for sweeps recorded before trials were scored so (or a baseline: it is the front)."""
    if "dfid_at_flops" not in df or not pd.to_numeric(df["dfid_at_flops"], errors="coerce").notna().any():
        return {}
    base = is_sweep_baseline(df).to_numpy()
    std = df["dfid_at_flops_std"] if "dfid_at_flops_std" in df else pd.Series([None] * len(df), index=df.index)
    beats = df["beats_fewer_steps"] if "beats_fewer_steps" in df else pd.Series([None] * len(df), index=df.index)
    return {"ΔFID@FLOPs ↑": ["-" if b or is_missing(v) else f"{float(v):+.2f} ± {float(e or 0):.2f}"
                            for v, e, b in zip(df["dfid_at_flops"], std, base)],
            "beats fewer steps": ["-" if b else ("yes" if str(v).lower() == "true" else "no") for v, b in zip(beats, base)]}


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
                       **_vs_fewer(front),
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
                       **_vs_fewer(t),
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
    """The sweep's own baseline trial at its most common step count (the largest of equally common ones: a space
    of {6, 8} steps compares with the 8-step baseline), else evaluate.json's baseline there."""
    done = completed(trials)
    own, rest = done[is_sweep_baseline(done)], done[~is_sweep_baseline(done)]
    steps = rest["steps"].mode().max() if "steps" in rest and rest["steps"].notna().any() else None
    if len(own):
        at = own[own["steps"] == steps] if steps is not None and "steps" in own else own
        return (at if len(at) else own).iloc[0]
    b = ev[ev["kind"] == "baseline"]
    if steps is not None:
        at = b[b["steps"] == steps]
        b = at if len(at) else b[b["method"] == "baseline"]
    return b.iloc[0] if len(b) else None
