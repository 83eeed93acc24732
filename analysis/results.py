"""The notebooks' entry point: :class:`Results` says where results are read from and where reports go (from the
environment: ``CLOCKWORK_RESULTS``, ``CLOCKWORK_REPORTS``, ``CLOCKWORK_SWEEPS``, ``CLOCKWORK_SENSITIVITY``, MLflow; see
:mod:`analysis.loader`), reads them with the loaders and writes tables (.md/.tex) and figures (.png/.svg).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.loader import (LAYOUT, REPO_ROOT, SYNTHETIC_MARKER, ResultsError, _read_json, load_ablate, load_distill,
                             load_evaluate, load_sensitivity, results_file)
from analysis.sweep_loader import SweepInfo, align_sweep_names, load_sweep_csv, mlflow_runs, sweep_trials_from_mlflow


MLFLOW_OFF = {"none", "off", "0", "false"}


def _rel_repo(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass
class SavedFigure:
    png: Path

    def _repr_png_(self) -> bytes:
        return self.png.read_bytes()


@dataclass
class Results:
    """Where the results are read from and where the reports go; records what was written or skipped."""

    root: Path
    reports: Path
    mlflow_uri: str | None = None
    sweeps: Path | None = None  # folder of <name>/results.csv; None: <root>/sweeps
    sensitivity: Path | None = None  # sensitivity.json of `clockwork sensitivity` (CLOCKWORK_SENSITIVITY); None: none
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> "Results":
        root = Path(os.environ.get("CLOCKWORK_RESULTS") or REPO_ROOT).resolve()
        reports = Path(os.environ.get("CLOCKWORK_REPORTS") or REPO_ROOT / "reports").resolve()
        uri = os.environ.get("CLOCKWORK_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri and (root / "mlflow.db").is_file():
            uri = f"sqlite:///{root / 'mlflow.db'}"
        if uri and uri.strip().lower() in MLFLOW_OFF:
            uri = None
        sweeps = os.environ.get("CLOCKWORK_SWEEPS")
        sens = os.environ.get("CLOCKWORK_SENSITIVITY")
        res = cls(root=root, reports=reports, mlflow_uri=uri or None, sweeps=Path(sweeps).resolve() if sweeps else None,
                  sensitivity=Path(sens).resolve() if sens else None)
        res._guard_synthetic()
        return res

    def __repr__(self) -> str:
        syn = "  [SYNTHETIC fixtures]" if self.synthetic else ""
        sw = f", sweeps={self.sweeps}" if self.sweeps is not None else ""
        sw += f", sensitivity={self.sensitivity}" if self.sensitivity is not None else ""
        return f"Results(root={self.root}, reports={self.reports}, mlflow={self.mlflow_uri}{sw}){syn}"

    @property
    def synthetic(self) -> bool:
        return (self.root / SYNTHETIC_MARKER).exists()

    def _guard_synthetic(self) -> None:
        # Synthetic fixture numbers must never land in the committed reports/ folder.
        if self.synthetic and self.reports.is_relative_to((REPO_ROOT / "reports").resolve()):
            raise ResultsError(f"{self.root} holds SYNTHETIC fixtures; refusing to write them into {self.reports}. "
                               "Set CLOCKWORK_REPORTS to a scratch folder.")

    # ---- inputs
    def world(self) -> str | None:
        """``world.kind`` of the params file the results were made with (names the teacher when evaluate.json
        does not): ``CLOCKWORK_PARAMS`` or params.yaml under the results root."""
        p = Path(os.environ.get("CLOCKWORK_PARAMS") or "params.yaml")
        p = p if p.is_absolute() else self.root / p
        if not p.is_file():
            return None
        import yaml

        try:
            kind = (yaml.safe_load(p.read_text()) or {}).get("world", {}).get("kind")
        except (yaml.YAMLError, AttributeError):
            return None
        return str(kind) if kind else None

    def file(self, name: str) -> Path:
        """Where results file ``name`` (``evaluate.json``, ``ablate.json``, ...) is read from (:data:`LAYOUT`)."""
        return results_file(self.root, name)

    def source(self, name: str) -> str:
        """How tables name results file ``name``: the pipeline's ``metrics/evaluate.json`` in the pipeline
        layout, else the file's path from the repository (``reports/full/evaluate.json``)."""
        f = self.file(name)
        rel = LAYOUT[name][0]
        if f == self.root / rel:
            return rel
        try:
            return str(f.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(f)

    def evaluate(self) -> pd.DataFrame:
        return load_evaluate(self.file("evaluate.json"), default_teacher=self.world() or "teacher")

    def ablate(self) -> pd.DataFrame | None:
        df = load_ablate(self.file("ablate.json"))
        if df is None:
            self.note("metrics/ablate.json not found: skipping the ablation tables and figures")
        return df

    def distill(self) -> tuple[dict | None, pd.DataFrame | None]:
        summary, curve = load_distill(self.root)
        if summary is None:
            self.note("metrics/distill.json not found: skipping the distillation summary")
        if curve is None:
            self.note("plots/distill_loss.csv not found: skipping the distillation loss curve")
        return summary, curve

    def load_sensitivity(self) -> tuple[dict, pd.DataFrame] | None:
        """(meta, rows) of the sensitivity file when one was given (``--sensitivity`` / ``CLOCKWORK_SENSITIVITY``), else
        ``None`` with a note; a given file that is missing or malformed raises :class:`ResultsError`."""
        if self.sensitivity is None:
            self.note("no sensitivity file (--sensitivity / CLOCKWORK_SENSITIVITY): Fig. 2 skipped")
            return None
        return load_sensitivity(self.sensitivity)

    def sensitivity_source(self) -> str:
        return _rel_repo(self.sensitivity) if self.sensitivity is not None else "-"

    @property
    def sweeps_dir(self) -> Path:
        """Where ``<name>/results.csv`` of each sweep is read from: ``CLOCKWORK_SWEEPS``, else ``<root>/sweeps``."""
        return self.sweeps if self.sweeps is not None else self.root / "sweeps"

    def sweep_csvs(self) -> dict[str, pd.DataFrame]:
        found = {p.parent.name: load_sweep_csv(p) for p in sorted(self.sweeps_dir.glob("*/results.csv"))}
        if not found:
            self.note(f"no <name>/results.csv under {self.sweeps_dir}")
        return found

    def sweep_info(self, name: str, trials: pd.DataFrame | None = None) -> SweepInfo:
        """How sweep ``name`` ran, from its folder's sweep.json / summary.json (empty when it came from MLflow)."""
        folder = self.sweeps_dir / name
        if not (folder / "results.csv").is_file():
            return SweepInfo(name, source="its MLflow runs", trials=trials)
        state, summary = (_read_json(f) if f.is_file() else {} for f in (folder / "sweep.json", folder / "summary.json"))
        return SweepInfo(name, source=_rel_repo(folder / "results.csv"), state=state if isinstance(state, dict) else {},
                         summary=summary if isinstance(summary, dict) else {}, trials=trials)

    def sweep_mlflow(self) -> pd.DataFrame | None:
        if not self.mlflow_uri:
            self.note("no MLflow store (CLOCKWORK_MLFLOW_URI / MLFLOW_TRACKING_URI / mlflow.db): MLflow view skipped")
            return None
        if self.mlflow_uri.startswith("sqlite:///") and not Path(self.mlflow_uri[len("sqlite:///"):]).is_file():
            self.note(f"MLflow store {self.mlflow_uri} does not exist: MLflow view skipped")
            return None
        trials = sweep_trials_from_mlflow(mlflow_runs(self.mlflow_uri))
        if trials.empty:
            self.note(f"MLflow store {self.mlflow_uri} has no nested sweep runs")
            return None
        return trials

    def merge_sweeps(self, csvs: dict[str, pd.DataFrame], ml: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
        """Sweep trials by sweep name: results.csv (the DVC output) where it exists, else the MLflow runs.
        A recommendation recorded on the MLflow parent run is carried over to the CSV's trials."""
        out = dict(csvs)
        if ml is None:
            return out
        ml = align_sweep_names(csvs, ml)
        for name, g in ml.groupby(ml["sweep"].fillna("mlflow").astype(str)):
            if name in out:
                rec = g["recommended_trial_id"].dropna() if "recommended_trial_id" in g else pd.Series(dtype=str)
                if len(rec) and "recommended_trial_id" not in out[name]:
                    out[name] = out[name].assign(recommended_trial_id=str(rec.iloc[0]))
            elif {"fid", "gflops"} <= set(g.columns):
                self.note(f"sweep {name!r}: no results.csv, using its {len(g)} MLflow child runs")
                out[name] = g.assign(sweep=name)
        return out

    # ---- outputs
    def note(self, msg: str) -> None:
        self.skipped.append(msg)
        print(f"NOTE: {msg}")

    def _path(self, name: str, ext: str) -> Path:
        self.reports.mkdir(parents=True, exist_ok=True)
        p = self.reports / f"{name}.{ext}"
        self.written.append(p)
        return p

    def write_table(self, table, name: str, missing: str = "no input rows"):
        """Write ``name.md`` and ``name.tex`` and return the table (a notebook displays it); a ``None`` table
        (its input is missing) is noted and skipped."""
        if table is None:
            self.note(f"{name}: {missing}; skipped")
            return None
        if getattr(table, "source", None):  # name the files the numbers were read from (flat layout: their paths)
            for key, (rel, _) in LAYOUT.items():
                table.source = table.source.replace(rel, self.source(key))
        self._path(name, "md").write_text(table.to_markdown())
        self._path(name, "tex").write_text(table.to_latex())
        return table

    def save_figure(self, fig, name: str) -> "SavedFigure":
        """Write ``name.png`` and ``name.svg`` (metadata without dates so reruns give the same bytes), close the
        figure, and return the PNG for a notebook to show (whatever the matplotlib backend)."""
        import matplotlib
        import matplotlib.pyplot as plt

        matplotlib.rcParams["svg.hashsalt"] = "clockwork"
        png = self._path(name, "png")
        fig.savefig(png, dpi=150, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(self._path(name, "svg"), bbox_inches="tight", metadata={"Date": None, "Creator": None})
        plt.close(fig)
        return SavedFigure(png)

    def summary(self) -> pd.DataFrame:
        """What this notebook wrote and skipped."""
        rows = [("wrote", str(p.relative_to(self.reports))) for p in self.written]
        return pd.DataFrame(rows + [("skipped", s) for s in self.skipped], columns=["", "what"])
