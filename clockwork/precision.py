"""bfloat16 autocast where it pays: CPUs with AMX tiles (Intel Sapphire Rapids and later).

On such a CPU, bf16 autocast samples the embedded teacher ~1.65x and runs the FID Inception ~2.1x faster than float32
(2-core measurements, 2026-12-03); elsewhere (older CPUs, GPUs) ``"auto"`` keeps float32, so GPU results do not
move. ``"fp32"`` and ``"bf16"`` force one or the other::

    from clockwork.precision import autocast
    with autocast("auto", "cpu"):
        images = pipe(...)
"""

from __future__ import annotations

import os

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units) that oneDNN may use: False where ``ONEDNN_MAX_CPU_ISA``
    caps it below AMX (e.g. ``AVX2``, the pin of the project's pipeline for bitwise-reproducible float32)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ("ALL", "DEFAULT") and "AMX" not in cap:
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def resolve_precision(precision: str = "fp32", device: str | torch.device = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is bf16 on a CPU with AMX tiles, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cpu" and cpu_has_amx() else "fp32"
    return precision


def no_autocast(device: str | torch.device = "cpu") -> torch.autocast:
    """Leave a caller's autocast for bookkeeping on recorded (float16) tensors: CPU autocast rejects float16 inputs
    to the ops it promotes (``torch.stack``, ``torch.cat``)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def stack_recorded(records: dict[str, list[torch.Tensor]], device: str | torch.device = "cpu", dim: int = 0,
                   cat: bool = False) -> dict[str, torch.Tensor]:
    """Each list of recorded tensors (float16 on the CPU, as the trajectory recorders keep them) stacked along a new
    ``dim`` (``cat``: concatenated along ``dim``), outside any autocast of the caller (:func:`no_autocast`)."""
    op = torch.cat if cat else torch.stack
    with no_autocast(device):
        return {k: op(v, dim=dim) for k, v in records.items()}


def autocast(precision: str = "fp32", device: str | torch.device = "cpu") -> torch.autocast:
    """``torch.autocast`` to bfloat16 when ``precision`` resolves to bf16 on ``device``, else a disabled one."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, dev) == "bf16")
