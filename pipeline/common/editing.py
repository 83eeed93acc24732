"""Edit held-out images with every editing method and score them (the `edit` stage's logic).

Methods: ``pnp`` (Plug-and-Play with the full UNet at edit.steps), ``inversion_only`` (the same DDIM inversion
and regeneration with the target prompt, no injection: what PnP's injection adds), ``pnp_<k>steps`` (the full UNet with fewer
steps: the alternative at the same FLOPs), ``pnp_<adaptor>_c<clock>`` (Clockwork in both passes) and ``sdedit``.
Adaptors: ``identity``, ``distilled`` (the distill stage's, made for the generation sampler) and ``edit-distilled``
(:func:`edit_adaptor`: the same architecture distilled on the editing sampler's own trajectories).
Every method edits the same images with the same prompts; scores come from clockwork.embedded.edits, costs from
clockwork.flops (per batch row of a full / an adaptor step, times the rows each step ran) and the UNet loop's
wall time. Comparisons are paired: the same edits, so the standard error is that of the per-edit differences.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

import numpy as np
import torch

from pipeline.common.io import atomic_dir, log, obj_sha

WORK = Path("data/edit")  # the edit-distilled adaptor's trajectories and the adaptor, cached by what makes them

SCORES = ("attribute_success", "clip_preference", "clip_margin", "mask_iou", "structure_ssim")
HIGHER_IS_BETTER = dict.fromkeys(SCORES, True)
VERDICT_SCORES = tuple(k for k in SCORES if k != "clip_margin")  # clip_margin is clip_preference's margin, not a verdict


@dataclass(frozen=True)
class EditMethod:
    kind: str  # "pnp" | "inversion" (PnP without injection) | "sdedit"
    steps: int
    adaptor: str | None = None  # None = full UNet | "identity" | "distilled"
    clock: int | None = None

    @property
    def name(self) -> str:
        if self.kind in ("sdedit", "inversion"):
            return {"sdedit": "sdedit", "inversion": "inversion_only"}[self.kind]
        if self.adaptor is None:
            return "pnp"
        return f"pnp_{self.adaptor}_c{self.clock}"


def edit_methods(e) -> dict[str, EditMethod]:
    out = {"pnp": EditMethod("pnp", e.steps)}
    for k in sorted(set(e.front_steps), reverse=True):
        out[f"pnp_{k}steps"] = EditMethod("pnp", k)
    for a in e.adaptors:
        for c in e.clocks:
            m = EditMethod("pnp", e.steps, a, c)
            out[m.name] = m
    out["inversion_only"] = EditMethod("inversion", e.steps)
    out["sdedit"] = EditMethod("sdedit", e.steps)
    return out


def edit_adaptor(p, world, prepared, device: str):
    """The ``edit-distilled`` adaptor: the distill stage's architecture and cut, distilled (teacher forcing, the
    distill section's optimiser, edit.distill_steps steps) on the teacher's DDIM trajectories at edit.steps and
    edit.guidance for the first edit.distill_prompts distillation prompts, with the adaptor at every step but the
    first - the clocks of both editing passes put adaptor steps anywhere, and the distill stage's adaptor (made for
    its own sampler, steps and schedule) does not carry over to them (reports/edit/adaptor_validation.json).
    Made once and cached under data/edit/ by its spec, the prompts, the teacher, the distill settings and the code."""
    from clockwork.adaptors import load_adaptor
    from pipeline.common.methods import MethodSpec
    from pipeline.common.store import ensure_trajectories, load_trajectories
    from pipeline.common.training import distill_adaptor, distill_config

    e, a = p.edit, p.adaptor
    spec = MethodSpec(sampler="ddim", steps=e.steps, guidance=e.guidance, adaptor=a.kind,
                      adaptor_steps=tuple(range(1, e.steps)), cut=p.cut, width=a.width, depth=a.depth,
                      inputs=tuple(a.inputs))
    prompts = prepared.distill_prompts[:e.distill_prompts]
    cfg = distill_config(p.distill, e.distill_steps)
    from pipeline.common.rows import stage_code_sha

    # an adaptor made by other code (the edit stage's deps in dvc.yaml) is made again
    key = obj_sha([spec.key(), prompts, world.teacher_id, world.precision, repr(cfg), p.trajectories.seed,
                   stage_code_sha("edit")])
    adir = WORK / "adaptors" / key
    if (adir / "config.json").is_file():
        log(f"edit-distilled adaptor: reused {adir}")
        return load_adaptor(adir)
    root = WORK / "trajectories" / f"ddim-{e.steps}steps-g{e.guidance}-{len(prompts)}"
    log(f"edit-distilled adaptor: {len(prompts)} DDIM {e.steps}-step trajectories, then {e.distill_steps} distillation steps")
    ensure_trajectories(root, world, prepared.table, prompts, "ddim", e.steps, e.guidance, [p.cut], p.trajectories.seed,
                        p.trajectories.shard_size)
    adaptor, _ = distill_adaptor(spec, world.unet_config, load_trajectories(root, p.cut), world.sampler("ddim"), cfg,
                                 device=device)
    with atomic_dir(adir) as tmp:
        adaptor.save_pretrained(tmp)
    return adaptor


def step_gflops(world, adaptor, seq_len: int) -> tuple[float, float]:
    """GFLOPs of one batch row through a full step and through an adaptor step of ``adaptor``."""
    from clockwork.clock import Clock
    from clockwork.flops import clockwork_flops

    kind = "identity" if adaptor is None or isinstance(adaptor, str) else adaptor.kind
    kw, cut = {}, 1
    if adaptor is not None and not isinstance(adaptor, str):
        cfg = adaptor.config
        cut = int(cfg.get("cut", 1))
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
              {"width": cfg.get("width"), "depth": cfg.get("depth"), "inputs": cfg.get("inputs")}.items() if v}
    f = clockwork_flops(world.unet_config, steps=2, clock=Clock(2), cut=cut, adaptor=kind, batch=1, seq_len=seq_len,
                        adaptor_kwargs=kw)
    return f["full_step_gflops"], f["adaptor_step_gflops"]


def run_method(world, method: EditMethod, adaptor, held, edits, table, e) -> tuple[torch.Tensor, dict]:
    """uint8 edited images of every edit, and the method's cost (GFLOPs and ms per image per pass)."""
    from tqdm.auto import tqdm

    from clockwork.editing import PnPSettings, pnp_edit, sdedit

    cw = None
    trained = method.adaptor not in (None, "identity")  # ``adaptor`` is then the trained adaptor to use
    if method.adaptor is not None:
        cw = {"adaptor": adaptor if trained else "identity", "clock": method.clock,
              "cut": int(adaptor.config.get("cut", 1)) if trained else 1}
    inject = method.kind == "pnp"
    settings = PnPSettings(steps=method.steps, guidance=e.guidance, feature_fraction=e.feature_fraction if inject else 0.0,
                           attn_fraction=e.attn_fraction if inject else 0.0)
    neg, _ = table.uncond(1)
    out, seconds, first = [], {}, None
    for start in tqdm(range(0, len(edits), e.batch_size), desc=method.name, leave=False, mininterval=10):
        chunk = edits[start:start + e.batch_size]
        idx = torch.tensor([ed.index for ed in chunk])
        x0 = held.images(idx)
        src, _ = table.lookup([ed.source.text for ed in chunk])
        tgt, _ = table.lookup([ed.target.text for ed in chunk])
        with world.autocast():
            if method.kind == "sdedit":
                gen = torch.Generator().manual_seed(e.seed * 1_000_003 + start)
                res = sdedit(world.unet, world.scheduler_config, x0, tgt, neg, steps=method.steps,
                             strength=e.sdedit_strength, guidance=e.guidance, generator=gen, clockwork=cw)
            else:
                res = pnp_edit(world.unet, world.scheduler_config, x0, src, tgt, neg, settings, clockwork=cw)
        out.append(((res.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        for k, rec in res.passes.items():
            seconds[k] = seconds.get(k, 0.0) + rec.seconds
        first = first or (res.passes, len(chunk))
    full_g, adapt_g = step_gflops(world, adaptor if trained else method.adaptor, int(table.states.shape[1]))
    passes, n0 = first
    cost = {"gflops": 0.0}
    for k, rec in passes.items():
        g = rec.flops(full_g, adapt_g) / n0
        cost[f"{k}_gflops"] = round(g, 4)
        cost["gflops"] += g
        cost[f"{k}_ms_per_image"] = round(1000 * seconds[k] / len(edits), 3)
        cost[f"{k}_full_steps"] = int(sum(rec.full))
        cost[f"{k}_adaptor_steps"] = int(len(rec.full) - sum(rec.full))
    cost["gflops"] = round(cost["gflops"], 4)
    cost["ms_per_image"] = round(sum(v for k, v in cost.items() if k.endswith("_ms_per_image")), 3)
    return torch.cat(out), cost


def _mean_se(x: torch.Tensor) -> tuple[float | None, float | None, int]:
    v = x[~torch.isnan(x)].double()
    if len(v) == 0:
        return None, None, 0
    se = float(v.std(unbiased=True) / np.sqrt(len(v))) if len(v) > 1 else None
    return float(v.mean()), se, len(v)


def summarize(scores: dict[str, torch.Tensor], edits) -> dict:
    """Mean and standard error of every score, overall and per edited attribute."""
    out = {}
    for k in SCORES:
        m, se, n = _mean_se(scores[k])
        out[k] = {"mean": m, "se": se, "n": n}
        for a in sorted({ed.attribute for ed in edits}):
            sel = torch.tensor([ed.attribute == a for ed in edits])
            m, se, n = _mean_se(scores[k][sel])
            if n:
                out[k][a] = {"mean": m, "se": se, "n": n}
    return out


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a - b over the edits both score: mean, standard error and z (:func:`verdict` reads a comparison's scores)."""
    m, se, n = _mean_se(a - b)
    if m is None:
        return {"delta": None, "se": None, "n": 0, "z": None}
    return {"delta": m, "se": se, "n": n, "z": m / se if se else None}


def verdict(v: dict | None) -> str:
    """A paired comparison (vs_pnp / vs_fewer_steps: :func:`paired` per score) in words: better when no score of
    :data:`VERDICT_SCORES` is worse by 2 standard errors and one is better by 2, worse when one is worse by 2, else
    within 2σ; with the extreme z's."""
    if not v or "status" in v:
        return (v or {}).get("status", "")
    z = {k: v[k]["delta"] / v[k]["se"] if v[k]["se"] else (0.0 if v[k]["delta"] == 0 else float("inf") * v[k]["delta"])
         for k in VERDICT_SCORES if v[k]["delta"] is not None}
    lo, hi = min(z.values()), max(z.values())
    word = "worse" if lo <= -2 else "better" if hi >= 2 else "within 2σ"
    return f"{word} (z {lo:+.1f} .. {hi:+.1f})"


def versus_plain(name: str, gflops: dict[str, float], scores: dict[str, dict], plain: list[str]) -> dict:
    """Each score against the full UNet with fewer steps interpolated at this method's GFLOPs (paired per edit)."""
    pts = sorted(plain, key=lambda k: gflops[k])
    g = gflops[name]
    if not pts or g < gflops[pts[0]] or g > gflops[pts[-1]]:
        return {"status": "no plain step count costs the same"}
    hi = next(k for k in pts if gflops[k] >= g)
    lo = pts[max(0, pts.index(hi) - 1)]
    w = 0.0 if gflops[hi] == gflops[lo] else (g - gflops[lo]) / (gflops[hi] - gflops[lo])
    out = {"between": [lo, hi], "weight": round(w, 4)}
    for k in SCORES:
        front = (1 - w) * scores[lo][k] + w * scores[hi][k]
        out[k] = paired(scores[name][k], front)
    return out


def log_row(name: str, s: dict, cost: dict, base_gflops: float) -> None:
    f = lambda k: f"{s[k]['mean']:.3f}" if s[k]["mean"] is not None else "-"  # noqa: E731
    log(f"{name:>20}: success {f('attribute_success')}  CLIP pref {f('clip_preference')}  IoU {f('mask_iou')}  "
        f"SSIM {f('structure_ssim')}  GFLOPs {cost['gflops']:.1f} ({cost['gflops'] / base_gflops:.2f}x)  "
        f"{cost['ms_per_image']:.1f} ms/image")
