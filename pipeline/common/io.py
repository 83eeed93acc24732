"""Files and fingerprints: atomic writes, content hashes that key caches and checkpoints, the device, a log line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARED_DIR = "data/prepared"
TRAJECTORIES_DIR = "data/trajectories"
ADAPTOR_DIR = "models/adaptor"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (tmp + os.replace): a killed stage never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_png(path: str | os.PathLike, image) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it in only when the block succeeds."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def file_sha(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha1()
    p = Path(path)
    # bytecode caches are not content: a package folder hashes the same before and after its first import
    files = sorted(q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.relative_to(p).parts) \
        if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]


def code_sha(*paths: str) -> str:
    """Hash of source files (relative to the repo): persisted caches made by other code are not reused."""
    return obj_sha([file_sha(REPO_ROOT / p) for p in paths])


def obj_sha(obj: Any, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def pick_device(pref: str = "auto") -> str:
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested in params.yaml but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return pref


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None
