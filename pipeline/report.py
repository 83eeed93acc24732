"""Stages `report`, `report_full` and `report_default`: execute the analysis notebooks headlessly (+ a summary).

    python pipeline/report.py                                                  # `report`: metrics/ -> reports/analysis/
    python pipeline/report.py --results reports/full --sweeps reports/sweeps --out reports/full/analysis --no-executed \
        --sensitivity reports/sensitivity/embedded/sensitivity.json           # `report_full` (report_default alike)

Every ``<report.notebooks>/*.ipynb`` runs with nbclient (kernel python3) in the notebooks' folder with the
repository on PYTHONPATH (as analysis/run_all.py does), ``CLOCKWORK_RESULTS`` = ``--results`` (default: the
repository, i.e. metrics/, plots/, sweeps/; a flat folder of evaluate.json, ablate.json, distill.json and
distill_loss.csv such as reports/full/ works too, see analysis/loader.py LAYOUT) and ``CLOCKWORK_REPORTS`` =
``--out`` (default: ``report.out``) for the tables and figures it writes, and ``CLOCKWORK_SWEEPS`` = ``--sweeps``
(a folder of ``<name>/results.csv`` + ``summary.json`` + ``sweep.json``, such as the committed reports/sweeps/;
default: ``<results>/sweeps``) for the sweep notebook, whose tables and figure say how each sweep ran (a sweep is
its own run, not the results folder's configuration), and ``CLOCKWORK_SENSITIVITY`` = ``--sensitivity`` (a
``sensitivity.json`` of ``clockwork sensitivity``; optional: Fig. 2, ``fig2_sensitivity`` and ``table_sensitivity``, is
written only when given). The executed notebooks and their HTML exports land in
``<out>/notebooks/`` unless ``--no-executed`` (committed outputs: small, and the same bytes on every rerun). A
results folder other than the repository gets no MLflow view (its sweeps, if any, come from its own ``sweeps/``,
``--sweeps`` or ``mlflow.db``), so the pipeline's runs never mix into another run's report.
A failing notebook fails the stage (nothing is swapped in). ``summary.md`` tabulates evaluate.json and
ablate.json whether or not notebooks exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return "" if v is None else str(v)


def _vs(m: dict, metric: str = "fid") -> str:
    """``+1.89 ± 0.11`` / ``cheaper_than_front`` / ``n/a`` (a file without vs_fewer_steps): the row's answer against the
    plain-steps front at equal GFLOPs (clockwork.pareto.versus_fewer_steps)."""
    v = (m.get("vs_fewer_steps") or {}).get(metric) if isinstance(m.get("vs_fewer_steps"), dict) else None
    if not isinstance(v, dict):
        return "n/a"
    if v.get("delta") is None:
        return str(v.get("status"))
    return f"{v['delta']:+.4g}" + ("" if v.get("delta_std") is None else f" ± {v['delta_std']:.2g}")


def summary_markdown(evaluate: dict | None, ablate: dict | None, distill: dict | None,
                     names: dict[str, str] | None = None) -> str:
    """The metrics files as plain tables; ``names`` says where each file was read from (for the headings).
    ΔFID@FLOPs / ΔCLIP@FLOPs: each row against the plain-steps front at its GFLOPs (positive = better than taking
    fewer steps; n/a for files written before the stages computed vs_fewer_steps)."""
    names = {"evaluate": "metrics/evaluate.json", "ablate": "metrics/ablate.json", "distill": "metrics/distill.json",
             **(names or {})}
    out = ["# Clockwork reproduction: metrics summary", ""]
    if evaluate:
        evaluate = {k: v for k, v in evaluate.items() if not k.startswith("_")}
        base = evaluate.get("baseline", {}).get("gflops") or 1.0
        cols = ["fid", "fid_std", "kid", "clip", "gflops", "latency_ms", "adaptor_params", "steps", "clock", "cut",
                "adaptor", "n_samples"]
        out += [f"## evaluate ({names['evaluate']})", "",
                "| method | " + " | ".join(cols) + " | GFLOPs ratio | split | ΔFID@FLOPs | ΔCLIP@FLOPs |",
                "|---" * (len(cols) + 5) + "|"]
        for name, m in evaluate.items():
            out.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + f" | {m['gflops'] / base:.3f} | "
                       f"{_fmt(m.get('split')) or 'n/a'} | {_vs(m)} | {_vs(m, 'clip')} |")
        out.append("")
    if distill:
        out += [f"## distill ({names['distill']})", "", "```", json.dumps(distill, indent=1), "```", ""]
    if ablate:
        cols = ["ablation", "variant", "fid", "fid_std", "clip", "gflops", "latency_ms", "adaptor_params", "training",
                "n_samples"]
        split = ablate.get("split")
        out += [f"## ablate ({names['ablate']}{', split ' + str(split) if split else ''})", "",
                "| " + " | ".join(cols) + " | train | ΔFID@FLOPs | ΔCLIP@FLOPs |", "|---" * (len(cols) + 3) + "|"]
        out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols)
                + f" | {_train(r.get('train'))} | {_vs(r)} | {_vs(r, 'clip')} |" for r in ablate.get("rows", [])]
        out.append("")
    return "\n".join(out)


def edit_verdict(v: dict | None) -> str:
    """A paired comparison of the `edit` stage in words (pipeline.common.editing.verdict)."""
    from pipeline.common.editing import verdict

    return verdict(v)


def edit_markdown(edit: dict, name: str) -> str:
    """The `edit` stage's table: cost, edit success per attribute, structure, and the paired comparisons."""
    rows = edit["methods"]
    base = rows["pnp"]
    mean = lambda r, k, a=None: (r["scores"][k].get(a) or {}).get("mean") if a else r["scores"][k]["mean"]  # noqa: E731
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731

    def pm(r, k):
        sc = r["scores"][k]
        return "-" if sc["mean"] is None else f"{sc['mean']:.3f} ± {sc['se'] or 0:.3f}"

    s = edit["settings"]
    out = [f"## edit ({name}: {edit['n_edits']} held-out edits, DDIM {s['steps']} steps, CFG {s['guidance']}, "
           f"features {s['feature_fraction']}, self-attention {s['attn_fraction']}, SDEdit strength {s['sdedit_strength']}; "
           f"{edit['device']})", "",
           "| method | GFLOPs/edit | × pnp | ms/edit | edit ok | colour ok | size ok | item ok | CLIP prefers target | "
           "mask IoU | gray SSIM | vs pnp | vs fewer steps |", "|" + "---|" * 13]
    for n, r in rows.items():
        out.append(f"| {n} | {r['gflops']:.1f} | {r['gflops'] / base['gflops']:.2f} | {r['ms_per_image']:.1f} | "
                   f"{pm(r, 'attribute_success')} | {f(mean(r, 'attribute_success', 'colour'))} | "
                   f"{f(mean(r, 'attribute_success', 'size'))} | {f(mean(r, 'attribute_success', 'item'))} | "
                   f"{f(mean(r, 'clip_preference'))} | {pm(r, 'mask_iou')} | {pm(r, 'structure_ssim')} | "
                   f"{edit_verdict(r.get('vs_pnp'))} | {edit_verdict(r.get('vs_fewer_steps'))} |")
    ex = edit.get("exact_target")
    if ex:
        out.append(f"| exact target rendering | | | | {f(ex['attribute_success']['mean'])} | "
                   f"{f(ex['attribute_success'].get('colour', {}).get('mean'))} | "
                   f"{f(ex['attribute_success'].get('size', {}).get('mean'))} | | {f(ex['clip_preference']['mean'])} | "
                   f"{f(ex['mask_iou']['mean'])} | {f(ex['structure_ssim']['mean'])} | | |")
    out += ["", "ok: the edited attribute read back from pixels (item: the CLIP scorer's choice of the ten items); IoU / "
            "SSIM against the exact target rendering (colour and size edits); ±: standard error over the edits. "
            "vs pnp / vs fewer steps (the full UNet with fewer DDIM steps, interpolated at the method's GFLOPs): paired "
            "per edit over success, CLIP preference, IoU and SSIM - 'worse' when a score is worse by 2 standard errors "
            "or more, 'better' when none is and one is better by 2, else 'within 2σ'; z: the lowest and highest "
            "difference in standard errors. The exact rendering's CLIP preference counts item edits, whose rendering "
            "keeps the source item.", ""]
    return "\n".join(out)


def _train(t) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(t.items())) if isinstance(t, dict) and t else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Execute the analysis notebooks on a results folder.")
    ap.add_argument("--results", type=Path, default=None,
                    help="results folder: the repository's metrics/ + plots/ layout or a flat folder of the same "
                         "files (default: the repository)")
    ap.add_argument("--sweeps", type=Path, default=None,
                    help="folder of recorded sweeps, <name>/results.csv (+ summary.json, sweep.json) each "
                         "(default: <results>/sweeps)")
    ap.add_argument("--sensitivity", type=Path, default=None,
                    help="sensitivity.json of `clockwork sensitivity` (Fig. 2: fig2_sensitivity, table_sensitivity); "
                         "default: none")
    ap.add_argument("--edit", type=Path, default=None,
                    help="edit.json of the `edit` stage (table_edit.md); default: metrics/edit.json when --results is the repository")
    ap.add_argument("--edit-only", action="store_true",
                    help="write only <out>/table_edit.md from --edit (e.g. the committed reports/edit run)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: params.yaml report.out)")
    ap.add_argument("--no-executed", action="store_true",
                    help="do not keep the executed notebooks and their HTML exports (only tables, figures, summary)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    p = load_params("report")
    from analysis.loader import results_file
    from pipeline import tracking
    from pipeline.common import atomic_dir, log

    r = p.report
    root = Path.cwd().resolve()
    results = (args.results or root).resolve()
    if not results.is_dir():
        raise SystemExit(f"error: --results {args.results} is not a folder")
    sweeps = args.sweeps.resolve() if args.sweeps else None
    if sweeps is not None and not sweeps.is_dir():
        raise SystemExit(f"error: --sweeps {args.sweeps} is not a folder")
    sensitivity = args.sensitivity.resolve() if args.sensitivity else None
    if sensitivity is not None and not sensitivity.is_file():
        raise SystemExit(f"error: --sensitivity {args.sensitivity} is not a file (run `clockwork sensitivity`)")
    if args.edit is not None and not args.edit.is_file():
        raise SystemExit(f"error: --edit {args.edit} is not a file (run the `edit` stage)")
    # the pipeline's own metrics/edit.json; another results folder's only when named (its report stage tracks it then)
    edit_file = (args.edit or (results_file(results, "edit.json") if results == root else results / "_none")).resolve()
    if args.edit_only:
        if args.edit is None:
            raise SystemExit("error: --edit-only needs --edit PATH/edit.json")
        out = args.out or Path(r.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table_edit.md").write_text(edit_markdown(json.loads(edit_file.read_text()), str(args.edit)))
        log(f"wrote {out / 'table_edit.md'}")
        return
    out_dir = args.out or Path(r.out)
    nb_dir = Path(r.notebooks)
    notebooks = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")) or sorted(nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    files = {k: results_file(results, f"{k}.json") for k in ("evaluate", "ablate", "distill")}
    load = lambda f: json.loads(f.read_text()) if f.is_file() else None  # noqa: E731
    rel = lambda f: str(f.relative_to(root)) if f.is_relative_to(root) else str(f)  # noqa: E731
    extra = {"report.sweeps": rel(sweeps)} if sweeps is not None else {}
    if sensitivity is not None:
        extra["report.sensitivity"] = rel(sensitivity)
    with tracking.stage_run("report", {**p.flat(), "report.results": rel(results), "report.out": str(out_dir), **extra},
                            run_name="report" if results == root else f"report {rel(results)}") as run:
        with atomic_dir(out_dir) as out:
            summary = summary_markdown(*(load(files[k]) for k in ("evaluate", "ablate", "distill")),
                                       names={k: rel(f) for k, f in files.items()})
            edit = load(edit_file)
            if edit and edit.get("methods"):
                table = edit_markdown(edit, rel(edit_file))
                (out / "table_edit.md").write_text(table)
                summary += "\n" + table
            (out / "summary.md").write_text(summary)
            if notebooks:
                import nbformat
                from nbclient import NotebookClient
                from nbconvert import HTMLExporter

                # Notebooks write their tables/plots into the (temporary, then swapped-in) output folder.
                os.environ["CLOCKWORK_RESULTS"] = str(results)
                os.environ["CLOCKWORK_REPORTS"] = str(out.resolve())
                if sweeps is not None:
                    os.environ["CLOCKWORK_SWEEPS"] = str(sweeps)
                else:
                    os.environ.pop("CLOCKWORK_SWEEPS", None)  # the results root's own sweeps/, whatever the caller set
                if sensitivity is not None:
                    os.environ["CLOCKWORK_SENSITIVITY"] = str(sensitivity)
                else:
                    os.environ.pop("CLOCKWORK_SENSITIVITY", None)  # Fig. 2 only when asked for
                if results != root and not (results / "mlflow.db").is_file():
                    os.environ["CLOCKWORK_MLFLOW_URI"] = "none"  # not the pipeline's MLflow runs: not these results
                os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
                os.environ.setdefault("MPLBACKEND", "Agg")
                os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
                if not args.no_executed:
                    (out / "notebooks").mkdir()
                for nb_path in notebooks:
                    t0 = time.perf_counter()
                    nb = nbformat.read(nb_path, as_version=4)
                    NotebookClient(nb, timeout=r.timeout_s, kernel_name="python3",
                                   resources={"metadata": {"path": str(nb_path.parent.resolve())}}).execute()
                    if not args.no_executed:
                        nbformat.write(nb, out / "notebooks" / nb_path.name)
                        html, _ = HTMLExporter().from_notebook_node(nb)
                        (out / "notebooks" / nb_path.with_suffix(".html").name).write_text(html)
                    log(f"executed {nb_path} in {time.perf_counter() - t0:.0f}s")
            else:
                log(f"no notebooks in {nb_dir}/ yet: wrote the metrics summary only")
            written = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
            index = {"results": rel(results), **({"sweeps": rel(sweeps)} if sweeps is not None else {}),
                     **({"sensitivity": rel(sensitivity)} if sensitivity is not None else {}),
                     "notebooks": [n.name for n in notebooks], "files": written}
            (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        run.log_artifact(out_dir, "report")


if __name__ == "__main__":
    main()
