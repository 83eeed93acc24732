"""What a person reads in a terminal: each stage's headline metrics, and the machine that made them.

Every stage that scores methods writes its detailed JSON (bootstraps, per-attribute scores, timings) as a plain
output and a small headline file as its DVC metric, so that ``dvc metrics show``, ``dvc metrics diff`` and
``dvc exp show`` read at a glance: per method FID +- std, CLIP, the GFLOPs ratio to the full sampler and
dFID@FLOPs (evaluate); FID per ablation row (ablate); success and structure per edit method (edit). Each file
also records the resolved precision and the CPU (:func:`machine`): a number made in bf16 never passes for fp32.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

HEADLINE_DIR = "metrics/headline"


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), with ``+AMX`` when it has
    AMX tiles (what ``precision: auto`` turns into bf16)."""
    from clockwork.precision import cpu_has_amx

    name = ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name} (+AMX)" if cpu_has_amx() else name


def machine(precision: str, device: str) -> dict[str, str]:
    """The record every metrics file carries: the *resolved* precision (fp32 | bf16), the device, the CPU and the
    CPU kernels' instruction set (``AVX2`` under the pipeline's pin, see pipeline/__init__.py)."""
    import torch

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"record the resolved precision (fp32 or bf16), not {precision!r}")
    return {"precision": precision, "device": str(device), "cpu": cpu_name(),
            "isa": torch.backends.cpu.get_cpu_capability()}


def _r(x: Any, nd: int) -> Any:
    return None if x is None else round(float(x), nd)


def evaluate_headline(results: dict[str, dict], record: dict[str, str]) -> dict[str, Any]:
    """Clockwork, the training-free identity adaptor and the full sampler: FID +- std, CLIP, GFLOPs ratio to the
    full sampler and dFID@FLOPs +- std against the plain-steps front (positive: better than fewer steps)."""
    full = results["baseline"]["gflops"]

    def row(m: dict, brief: bool = False) -> dict:
        v = m.get("vs_fewer_steps", {}).get("fid", {})
        out = {"fid": _r(m["fid"], 2), "fid_std": _r(m["fid_std"], 2), "clip": _r(m["clip"], 2),
               "gflops_x": _r(m["gflops"] / full, 3), "dfid_at_flops": _r(v.get("delta"), 2),
               "dfid_std": _r(v.get("delta_std"), 2)}
        return {k: out[k] for k in ("fid", "gflops_x", "dfid_at_flops")} if brief else out

    base = results["baseline"]
    out = {"clockwork": row(results["clockwork"]), "identity": row(results["clockwork_identity"], brief=True),
           "baseline": {"fid": _r(base["fid"], 2), "fid_std": _r(base["fid_std"], 2), "clip": _r(base["clip"], 2)}}
    fronts = front_winners(results)
    return {**out, **({"fronts": fronts} if fronts else {}), **record}


def front_winners(results: dict[str, dict]) -> dict[str, Any]:
    """Which Clockwork front wins at each budget (evaluate rows ``front_<adaptor>_b<budget>``), one value per budget
    so that ``dvc metrics show`` stays narrow: ``{"b<budget>": {<winning adaptor>: its dFID@FLOPs}}`` - the highest
    dFID@FLOPs against the plain-steps front (``{"none": null}`` where no row has an answer). Every adaptor's value is
    in metrics/evaluate.json."""
    by_budget: dict[int, dict[str, float]] = {}
    for m in results.values():
        if "front" in m:
            d = m.get("vs_fewer_steps", {}).get("fid", {}).get("delta")
            by_budget.setdefault(m["budget"], {})
            if d is not None:
                by_budget[m["budget"]][m["front"]] = _r(d, 2)
    out = {}
    for b in sorted(by_budget):
        answered = by_budget[b]
        best = max(answered, key=answered.get) if answered else None
        out[f"b{b}"] = {best: answered[best]} if best else {"none": None}
    return out


def ablate_headline(rows: list[dict], record: dict[str, str]) -> dict[str, Any]:
    """FID of every ablation row, keyed ``<ablation>/<variant>`` (the plain-steps front rows left to the detailed
    file: they repeat the `steps` ablation's baselines)."""
    return {"fid": {f"{r['ablation']}/{r['variant']}": _r(r["fid"], 1) for r in rows if r["ablation"] != "front"},
            **record}


def edit_headline(methods: dict[str, dict], record: dict[str, str]) -> dict[str, Any]:
    """Per edit method: attribute success (did the edit happen) and structure (mask IoU with the source)."""
    out = {}
    for name, m in methods.items():
        s = m["scores"]
        out[name] = {"success": _r(s["attribute_success"]["mean"], 3), "structure": _r(s["mask_iou"]["mean"], 3)}
    return {**out, **record}
