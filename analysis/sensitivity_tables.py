"""Fig. 2 (sensitivity) as a table, from the ``sensitivity.json`` of ``clockwork sensitivity``: how much the final
sample changes when the features below each cut are perturbed or reused from step s on; the wording
(:data:`SENS_MODES`, :func:`sens_variant`, :func:`sensitivity_about`) is shared with :func:`analysis.plots.sensitivity`.
"""

from __future__ import annotations

import pandas as pd

from analysis.formatting import Table
from analysis.loader import is_missing


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
