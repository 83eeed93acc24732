"""Evaluating a method as the evaluate stage reports it: sampling the prompts, latency, and scoring the images
(FID, KID, CLIP with their uncertainties; :class:`EvalContext`, :func:`evaluate_method`), and the answer
against taking fewer plain steps (:func:`vs_fewer_steps`)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clockwork.metrics import bootstrap_fid, bootstrap_indices, fid_low_rank
from pipeline.common.io import log
from pipeline.common.methods import TRAINING_FREE, MethodSpec, adaptor_params, build_adaptor_for, method_gflops
from pipeline.common.world import Prepared, World


@torch.no_grad()
def sample_images(world: World, spec: MethodSpec, adaptor, ctx: torch.Tensor, neg: torch.Tensor,
                  latents: torch.Tensor, batch_size: int = 100, progress: bool = True, desc: str = "",
                  pooled: torch.Tensor | None = None, neg_pooled: torch.Tensor | None = None) -> torch.Tensor:
    """Images for every prompt (``ctx``, token states; ``pooled``: the pooled embeddings SDXL also takes) with
    Clockwork on (``spec``) or off (baseline)."""
    import clockwork
    from tqdm.auto import tqdm

    pipe = world.pipeline(spec.sampler)
    if not spec.is_baseline:
        clockwork.enable(pipe, adaptor=adaptor if adaptor is not None else spec.adaptor, clock=spec.clock_obj(), cut=spec.cut)
    try:
        out = []
        for i in tqdm(range(0, len(ctx), batch_size), desc=desc or "sample", unit="batch", disable=not progress,
                      mininterval=5):
            out.append(world.generate(pipe, ctx[i:i + batch_size], neg, latents[i:i + batch_size], spec.steps,
                                      spec.guidance, pooled=None if pooled is None else pooled[i:i + batch_size],
                                      neg_pooled=neg_pooled))
        return torch.cat(out)
    finally:
        clockwork.disable(pipe)


@torch.no_grad()
def measure_latency(world: World, spec: MethodSpec, adaptor, ctx1: torch.Tensor, neg: torch.Tensor,
                    latents1: torch.Tensor, runs: int = 5, pooled1: torch.Tensor | None = None,
                    neg_pooled: torch.Tensor | None = None) -> float:
    """Mean wall-clock ms of the UNet loop for one prompt with CFG (batch 2), after one warm-up run.

    No text encoder (prompts are pre-encoded) and no VAE decode (latents out), as in the paper. In the model's own
    dtype, without ``world.precision``'s autocast: at batch 2 on a CPU, bf16 autocast costs more than it saves
    (the embedded baseline: ~0.8 s vs ~0.5 s in float32), so a user would not run it there.
    """
    import clockwork

    pipe = world.pipeline(spec.sampler)
    if not spec.is_baseline:
        clockwork.enable(pipe, adaptor=adaptor if adaptor is not None else spec.adaptor, clock=spec.clock_obj(), cut=spec.cut)
    try:
        sync = torch.cuda.synchronize if world.device == "cuda" else (lambda: None)
        kw = dict(decode=False, autocast=False, pooled=pooled1, neg_pooled=neg_pooled)
        world.generate(pipe, ctx1, neg, latents1, spec.steps, spec.guidance, **kw)
        times = []
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            world.generate(pipe, ctx1, neg, latents1, spec.steps, spec.guidance, **kw)
            sync()
            times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.mean(times))
    finally:
        clockwork.disable(pipe)


def inception(images: torch.Tensor, device: str = "cpu", progress: bool = True, precision: str = "fp32") -> torch.Tensor:
    from clockwork.metrics import inception_features

    return inception_features(images, batch_size=50, progress=progress, device=device, precision=precision)


def fid_against(feats: torch.Tensor, reference) -> float:
    """FID of Inception features ``feats`` (n, d) against reference statistics: exact by :func:`fid_low_rank` when
    n < d (every CPU configuration), else torchmetrics' (clockwork.metrics.fid_from_features)."""
    from clockwork.metrics import fid_from_features

    feats = feats.to(torch.float64)
    if len(feats) < feats.shape[1]:
        return fid_low_rank(torch.as_tensor(reference.mu, dtype=torch.float64),
                            torch.as_tensor(reference.sigma, dtype=torch.float64), feats)
    return fid_from_features(reference, feats)


def score_images(images: torch.Tensor, prompts: Sequence[str], reference, scorer, fid_bootstrap: int = 10,
                 kid_subsets: int = 50, kid_subset_size: int = 100, seed: int = 0, device: str = "cpu",
                 progress: bool = True, features: torch.Tensor | None = None) -> dict:
    """FID + bootstrap std, KID + std over subsets (clockwork.metrics), CLIP score + its standard error.

    With fewer generated images than feature dimensions (every CPU configuration) FID is computed exactly
    by :func:`fid_low_rank` - the value of clockwork.metrics.fid_from_features to ~1e-9, at a fraction of
    the cost of its 2048 x 2048 general eigen-decomposition (seconds per call on a CPU).
    """
    from clockwork.metrics import kid_from_features

    # at the reference's own Inception precision (prepare.inception_precision): one comparison, one precision
    feats = inception(images, device, progress, reference.precision) if features is None else features
    feats = feats.to(torch.float64)
    n_ref = len(reference.features)
    fid = fid_against(feats, reference)
    fid_boot = bootstrap_fid(feats, reference, fid_bootstrap, seed)
    fid_std = float(np.std(fid_boot, ddof=1)) if fid_bootstrap > 1 else 0.0
    kid, kid_std = kid_from_features(reference, feats, subsets=kid_subsets,
                                     subset_size=max(2, min(kid_subset_size, len(feats), n_ref)), seed=seed)
    clip = scorer(images, list(prompts)).double()
    clip_boot = [float(clip[torch.from_numpy(i)].mean()) for i in bootstrap_indices(len(clip), fid_bootstrap, seed)]
    return {"fid": fid, "fid_std": fid_std, "kid": kid, "kid_std": kid_std, "clip": float(clip.mean()),
            "clip_std": float(clip.std(unbiased=True) / math.sqrt(len(clip))) if len(clip) > 1 else 0.0,
            "n_samples": len(images), "n_reference": n_ref, "fid_boot": fid_boot, "clip_boot": clip_boot}


@dataclass
class EvalContext:
    """Everything evaluating a method needs, built once per stage (or per sweep trial)."""

    world: World
    prepared: Prepared
    n_samples: int
    seed: int
    batch_size: int = 100
    fid_bootstrap: int = 10
    kid_subsets: int = 50
    kid_subset_size: int = 100
    latency_runs: int = 5
    progress: bool = True
    split: str = "heldout"  # heldout: the evaluation prompts | val: validation prompts from the training split
    ctx: torch.Tensor = field(init=False)
    neg: torch.Tensor = field(init=False)
    pooled: torch.Tensor = field(init=False)  # pooled prompt embeddings (SDXL's text_embeds; unused elsewhere)
    neg_pooled: torch.Tensor = field(init=False)
    latents: torch.Tensor = field(init=False)
    prompts: list[str] = field(init=False)
    reference: Any = field(init=False)

    def __post_init__(self):
        pool, self.reference = self.prepared.split(self.split)
        if self.n_samples > len(pool):
            raise ValueError(f"{self.n_samples} samples asked of the {self.split} split, which has {len(pool)} prompts "
                             "(prepare.eval_prompts / prepare.val_prompts)")
        self.prompts = pool[: self.n_samples]
        self.ctx, self.pooled = self.prepared.table.lookup(self.prompts)
        self.neg, self.neg_pooled = self.prepared.table.uncond(1)
        self.latents = self.world.latents(self.n_samples, self.seed)

    @property
    def seq_len(self) -> int:
        return self.ctx.shape[1]


def evaluate_method(ec: EvalContext, spec: MethodSpec, adaptor=None, name: str = "") -> tuple[dict, torch.Tensor]:
    """Sample the held-out prompts with ``spec`` and score them: the metrics dict of metrics/evaluate.json."""
    w = ec.world
    if spec.needs_training and adaptor is None:
        raise ValueError(f"{name or spec}: a {spec.adaptor} adaptor must be distilled first")
    if spec.adaptor in TRAINING_FREE and adaptor is None:
        adaptor = build_adaptor_for(spec, w.unet_config)
    t0 = time.perf_counter()
    images = sample_images(w, spec, adaptor, ec.ctx, ec.neg, ec.latents, ec.batch_size, ec.progress, desc=f"sample {name}",
                           pooled=ec.pooled, neg_pooled=ec.neg_pooled)
    t_sample = time.perf_counter() - t0
    scores = score_images(images, ec.prompts, ec.reference, w.scorer(ec.prepared.table), ec.fid_bootstrap,
                          ec.kid_subsets, ec.kid_subset_size, seed=ec.seed, device=w.device, progress=ec.progress)
    latency = measure_latency(w, spec, adaptor, ec.ctx[:1], ec.neg, ec.latents[:1], ec.latency_runs, ec.pooled[:1],
                              ec.neg_pooled)
    gflops = method_gflops(w.unet_config, spec, w.scheduler_config, ec.seq_len)
    d = spec.describe()
    metrics = {
        "fid": scores["fid"], "fid_std": scores["fid_std"], "kid": scores["kid"], "kid_std": scores["kid_std"],
        "clip": scores["clip"], "clip_std": scores["clip_std"], "gflops": gflops, "latency_ms": round(latency, 3),
        "adaptor_params": adaptor_params(adaptor) if not spec.is_baseline else 0,
        "steps": d["steps"], "clock": d["clock"], "cut": d["cut"], "adaptor": d["adaptor"], "sampler": d["sampler"],
        "n_samples": scores["n_samples"], "split": ec.split, "precision": w.precision,
        "fid_boot": [round(x, 6) for x in scores["fid_boot"]], "clip_boot": [round(x, 6) for x in scores["clip_boot"]],
    }
    log(f"{name or spec.key()}: FID {metrics['fid']:.2f}±{metrics['fid_std']:.2f} KID {metrics['kid']:.4f} "
        f"CLIP {metrics['clip']:.2f} {gflops:.2f} GFLOPs {latency:.1f} ms (sampling {t_sample:.0f}s)")
    return metrics, images


def vs_fewer_steps(point: dict, plain_rows: Sequence[dict]) -> dict:
    """``point``'s FID and CLIP against the plain-steps front of ``plain_rows`` (the baseline at several step
    counts, same prompts and seeds) at equal GFLOPs: clockwork.pareto.versus_fewer_steps, positive = better.
    FID against the front (dominated step counts dropped); CLIP, which barely moves with the step count, against
    the plain curve of every step count (a noise-made front would hold only the cheapest one)."""
    from clockwork.pareto import plain_steps_front, versus_fewer_steps

    return {"fid": versus_fewer_steps(point, plain_steps_front(plain_rows, "fid"), "fid"),
            "clip": versus_fewer_steps(point, plain_steps_front(plain_rows, "clip", quality_mode="max",
                                                                drop_dominated=False), "clip", quality_mode="max")}
