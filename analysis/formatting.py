"""Cell formatting and the :class:`Table` every report table is (its Markdown and LaTeX rendering).

Builders (:mod:`analysis.main_tables`, :mod:`analysis.ablation_tables`, :mod:`analysis.sensitivity_tables`,
:mod:`analysis.sweep_tables`) take the DataFrames of :mod:`analysis.loader` and return a :class:`Table` whose cells are
already formatted strings (``23.21 ± 0.31``, made by the helpers here); numbers are never typed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.loader import is_missing


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


def _is_raw_cos(ev: pd.DataFrame) -> bool:
    """CLIP as a raw cosine (~0.30, the paper's) rather than torchmetrics' 100·cos: more digits."""
    c = ev["clip"].dropna() if "clip" in ev else pd.Series(dtype=float)
    return bool(len(c)) and float(c.abs().max()) < 1.5


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
