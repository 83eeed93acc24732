"""Stage `report`: execute the analysis notebooks headlessly -> reports/analysis/ (+ a summary of the metrics).

Every ``<report.notebooks>/*.ipynb`` runs with nbclient (kernel python3) in the notebooks' folder with the
repository on PYTHONPATH (as analysis/run_all.py does), ``CLOCKWORK_RESULTS`` = the repository (metrics/,
plots/, sweeps/) and ``CLOCKWORK_REPORTS`` = ``report.out`` for the tables and figures it writes; the
executed notebook and an HTML export land there too. A failing notebook fails the stage (nothing is
swapped in). ``summary.md`` tabulates metrics/evaluate.json and
metrics/ablate.json whether or not notebooks exist.
"""

from __future__ import annotations

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


def summary_markdown(evaluate: dict | None, ablate: dict | None, distill: dict | None) -> str:
    out = ["# Clockwork reproduction: metrics summary", ""]
    if evaluate:
        base = evaluate.get("baseline", {}).get("gflops") or 1.0
        cols = ["fid", "fid_std", "kid", "clip", "gflops", "latency_ms", "adaptor_params", "steps", "clock", "cut", "adaptor"]
        out += ["## evaluate (metrics/evaluate.json)", "", "| method | " + " | ".join(cols) + " | GFLOPs ratio |",
                "|---" * (len(cols) + 2) + "|"]
        for name, m in evaluate.items():
            out.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + f" | {m['gflops'] / base:.3f} |")
        out.append("")
    if distill:
        out += ["## distill (metrics/distill.json)", "", "```", json.dumps(distill, indent=1), "```", ""]
    if ablate:
        cols = ["ablation", "variant", "fid", "fid_std", "clip", "gflops", "latency_ms", "adaptor_params", "training"]
        out += ["## ablate (metrics/ablate.json)", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in ablate.get("rows", [])]
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = load_params("report")
    from pipeline import tracking
    from pipeline.common import atomic_dir, log

    r = p.report
    root = Path.cwd()
    nb_dir = Path(r.notebooks)
    notebooks = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")) or sorted(nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    load = lambda f: json.loads(Path(f).read_text()) if Path(f).is_file() else None  # noqa: E731
    with tracking.stage_run("report", p.flat()) as run:
        with atomic_dir(r.out) as out:
            (out / "summary.md").write_text(summary_markdown(load("metrics/evaluate.json"), load("metrics/ablate.json"),
                                                             load("metrics/distill.json")))
            if notebooks:
                import nbformat
                from nbclient import NotebookClient
                from nbconvert import HTMLExporter

                # Notebooks write their tables/plots into the (temporary, then swapped-in) output folder.
                os.environ["CLOCKWORK_RESULTS"] = str(root.resolve())
                os.environ["CLOCKWORK_REPORTS"] = str(out.resolve())
                os.environ["PYTHONPATH"] = os.pathsep.join([str(root.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
                os.environ.setdefault("MPLBACKEND", "Agg")
                os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
                (out / "notebooks").mkdir()
                for nb_path in notebooks:
                    t0 = time.perf_counter()
                    nb = nbformat.read(nb_path, as_version=4)
                    NotebookClient(nb, timeout=r.timeout_s, kernel_name="python3",
                                   resources={"metadata": {"path": str(nb_path.parent.resolve())}}).execute()
                    nbformat.write(nb, out / "notebooks" / nb_path.name)
                    html, _ = HTMLExporter().from_notebook_node(nb)
                    (out / "notebooks" / nb_path.with_suffix(".html").name).write_text(html)
                    log(f"executed {nb_path} in {time.perf_counter() - t0:.0f}s")
            else:
                log(f"no notebooks in {nb_dir}/ yet: wrote the metrics summary only")
            (out / "index.json").write_text(json.dumps({"notebooks": [n.name for n in notebooks]}, indent=1) + "\n")
        run.log_artifact(r.out, "report")


if __name__ == "__main__":
    main()
