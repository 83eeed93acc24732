"""Finished evaluation rows kept on disk (a persisted DVC out), so that a stage cut short - a GPU call's time limit, a
killed process - resumes where it stopped, and a run that only adds rows reuses the others.

A row is keyed by its method (``MethodSpec.key``), its adaptor's weights and the stage's context: everything else the
row depends on (:func:`stage_context`). A row counts once both its metrics (JSON) and its grid images (NumPy) exist.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.common.io import REPO_ROOT, code_sha, file_sha, obj_sha, write_json


def weights_sha(adaptor) -> str | None:
    """A hash of an adaptor's weights (``None`` for none: a baseline or a training-free adaptor built on the fly)."""
    if adaptor is None:
        return None
    h = hashlib.sha1()
    for k, v in sorted(adaptor.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stage_code_sha(stage: str) -> str:
    """A hash of ``stage``'s code: its Python deps in the repository's dvc.yaml (wherever the stage runs from)."""
    import yaml

    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    return code_sha(*[d for d in deps if d.endswith(".py") or d == "pipeline/common"])


def stage_context(stage: str, p, world, sections: tuple[str, ...], ignore: tuple[str, ...] = (), extra=None) -> str:
    """What every row of ``stage`` depends on besides its method and weights: the params ``sections`` (minus the
    keys in ``ignore`` and everything under them: which rows are asked for, what a row's own method already says,
    the device choice), the prepared data, the teacher, its precision and device, the scorer, the stage's code and
    ``extra`` (e.g. the trajectories' meta)."""
    flat = p.flat()
    keep = {k: flat[k] for k in sorted(flat) if k.startswith(tuple(f"{s}." for s in sections))
            and not any(k == i or k.startswith(f"{i}.") for i in ignore)}
    return obj_sha([keep, file_sha("data/prepared"), world.teacher_id, world.precision, world.device,
                    file_sha(p.world.scorer) if p.world.kind == "embedded" else p.world.clip_model, stage_code_sha(stage),
                    *([extra] if extra is not None else [])])


class RowCache:
    def __init__(self, folder: str | Path, context: str):
        self.folder, self.context, self.used = Path(folder), context, set()
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, spec, adaptor) -> str:
        key = obj_sha([spec.key(), weights_sha(adaptor), self.context])
        self.used |= {f"{key}.json", f"{key}.npy"}
        return key

    def load(self, key: str) -> tuple[dict, torch.Tensor] | None:
        js, npy = self.folder / f"{key}.json", self.folder / f"{key}.npy"
        if not (js.is_file() and npy.is_file()):
            return None
        return json.loads(js.read_text()), torch.from_numpy(np.load(npy))

    def save(self, key: str, metrics: dict, images: torch.Tensor) -> None:
        np.save(self.folder / f"{key}.npy", images.numpy())  # first: the JSON makes the row count
        write_json(self.folder / f"{key}.json", metrics)

    def forget_others(self) -> None:
        """Drop rows no key of this run asked for (made with other settings or weights)."""
        for f in self.folder.iterdir():
            if f.name not in self.used:
                f.unlink()
