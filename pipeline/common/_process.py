"""Process-wide settings of every process that imports pipeline.common, applied once on its first import:
offline Hugging Face, the torch thread count, quieter warnings, and a usage line when a stage script exits."""

from __future__ import annotations

import atexit
import os
import sys
import time
import warnings
from pathlib import Path

import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

warnings.filterwarnings("ignore", message=".*algorithm_type.*deprecated.*", category=FutureWarning)
# On a shared CPU, two OpenMP threads per process spin-wait on each other and run several times slower
# than one; CLOCKWORK_THREADS=1 makes every stage single-threaded (default: torch's choice).
if os.environ.get("CLOCKWORK_THREADS"):
    torch.set_num_threads(int(os.environ["CLOCKWORK_THREADS"]))

_T0 = time.perf_counter()


def _report_usage() -> None:
    """One line per stage process: wall and CPU seconds (CPU time is what a shared machine cannot inflate)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = ""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the stage's peak, for real-model sizing
        gpu = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated / "
               f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB reserved")
    print(f"[usage] {Path(sys.argv[0]).stem}: wall {time.perf_counter() - _T0:.1f}s, cpu {r.ru_utime + r.ru_stime:.1f}s, "
          f"torch threads {torch.get_num_threads()}, load average {load:.1f}{gpu}", flush=True)


if Path(sys.argv[0]).parent.name in ("pipeline", "gpu"):  # a stage script or scripts/gpu/, not the sweep or a test
    atexit.register(_report_usage)
warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")
try:  # "accelerate not found" and similar notices on every from_pretrained
    from diffusers.utils import logging as _dlogging

    _dlogging.set_verbosity_error()
except Exception:  # noqa: BLE001
    pass
