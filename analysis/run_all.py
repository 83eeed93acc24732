"""Execute the analysis notebooks headlessly (nbclient, kernel python3); exit non-zero if any fails.

    python analysis/run_all.py                                 # repo results -> reports/ (the `report` DVC stage)
    python analysis/run_all.py --results /tmp/fx --reports /tmp/fx/reports --only 01 04
    python analysis/run_all.py --save-executed out/notebooks   # keep the executed notebooks to look at
    python analysis/run_all.py --results reports/full --sweeps reports/sweeps --reports /tmp/r   # committed sweeps
    python analysis/run_all.py --sensitivity reports/sensitivity/embedded/sensitivity.json     # + Fig. 2

The notebooks read ``CLOCKWORK_RESULTS`` / ``CLOCKWORK_REPORTS`` / ``CLOCKWORK_SWEEPS`` / ``CLOCKWORK_SENSITIVITY``
(set here from --results / --reports / --sweeps / --sensitivity)
and run with analysis/ as their working directory. Committed notebooks carry no outputs; executed
copies are written only where --save-executed points.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KERNEL = "python3"


def notebooks(only: list[str] | None = None) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(o) or o in p.stem for o in only)]
    return found


def ensure_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL], check=True)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


async def execute(path: Path, timeout: int, save_to: Path | None, slots: asyncio.Semaphore) -> tuple[str | None, float]:
    """Run one notebook in its own kernel; returns (error text or None, seconds)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    async with slots:
        t0 = time.time()
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(HERE)}})
        err = None
        try:
            await client.async_execute()
        except CellExecutionError as e:
            err = ANSI.sub("", str(e))
        except Exception as e:  # kernel died, timeout, ...
            err = f"{type(e).__name__}: {e}"
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, save_to / path.name)
        return err, time.time() - t0


async def execute_all(nbs: list[Path], jobs: int, timeout: int, save_to: Path | None):
    slots = asyncio.Semaphore(jobs)  # notebooks are independent: each kernel is its own process
    return await asyncio.gather(*(execute(nb, timeout, save_to, slots) for nb in nbs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", help="results root (sets CLOCKWORK_RESULTS; default: env or the repo root)")
    ap.add_argument("--reports", help="output folder (sets CLOCKWORK_REPORTS; default: env or reports/)")
    ap.add_argument("--sweeps", help="folder of <name>/results.csv (sets CLOCKWORK_SWEEPS; default: env or "
                                     "<results>/sweeps)")
    ap.add_argument("--sensitivity", help="sensitivity.json of `clockwork sensitivity` (sets CLOCKWORK_SENSITIVITY; "
                                          "default: env or none): Fig. 2 (fig2_sensitivity, table_sensitivity)")
    ap.add_argument("--only", nargs="+", help="run only notebooks whose name starts with / contains these")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="notebooks run at once")
    ap.add_argument("--save-executed", type=Path, help="write executed notebooks (with outputs) here")
    args = ap.parse_args(argv)

    if args.results:
        os.environ["CLOCKWORK_RESULTS"] = str(Path(args.results).resolve())
    if args.reports:
        os.environ["CLOCKWORK_REPORTS"] = str(Path(args.reports).resolve())
    if args.sweeps:
        os.environ["CLOCKWORK_SWEEPS"] = str(Path(args.sweeps).resolve())
    if args.sensitivity:
        if not Path(args.sensitivity).is_file():
            print(f"error: --sensitivity {args.sensitivity} is not a file", file=sys.stderr)
            return 2
        os.environ["CLOCKWORK_SENSITIVITY"] = str(Path(args.sensitivity).resolve())
    # the kernel inherits this environment: make `import analysis` work from analysis/ as cwd
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.save_executed is None:  # no one looks at the outputs: skip rendering figures inline
        os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    nbs = notebooks(args.only)
    if not nbs:
        print(f"no notebooks match {args.only}", file=sys.stderr)
        return 2
    ensure_kernel()
    failed = []
    results = asyncio.run(execute_all(nbs, max(1, args.jobs), args.timeout, args.save_executed))
    for nb, (err, seconds) in zip(nbs, results):
        print(f"{nb.name}: {'ok' if err is None else 'FAILED'} in {seconds:.1f}s", flush=True)
        if err is not None:
            failed.append(nb.name)
            print(f"--- {nb.name} ---\n{err}", file=sys.stderr, flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
