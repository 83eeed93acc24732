"""Trial functions for the sweep tests, with the signature of pipeline.common.train_and_evaluate.

``tiny_trial`` is a real Clockwork trial built from the library on a tiny random pixel UNet: it reads a
trajectory store made once (``make_world``), distills an adaptor with ``clockwork.distill`` (reporting its
losses through ``on_log``), samples with ``clockwork.enable``, and measures FID/KID on pooled pixels,
a paired-fidelity stand-in for CLIP, FLOPs with ``clockwork.flops`` and the sampling latency.

``quick_trial`` is a trivial trial (no torch): metrics from a formula, a short sleep, and on request a
failure (once, or always), for the concurrency, retry and resume tests.

The sweep loads these by path (``sweep.trial: tests/test_sweep_trial.py:tiny_trial``) in Ray workers.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

TINY_UNET = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16, 16),
    norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
)
SEQ_LEN, N_PROMPTS, N_TRAIN, STEPS = 4, 24, 12, 4


def _scheduler():
    from diffusers import DDPMScheduler

    from clockwork.schedulers import make_scheduler

    return make_scheduler("dpm++", DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)


def make_world(root: str | os.PathLike) -> Path:
    """A tiny teacher, prompt states and its trajectory store (cuts 1 and 2, 4 DPM++ steps)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from clockwork.trajectories import unroll_to_store

    root = Path(root)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # default inits leave the low-res path nearly silent; make it matter
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    unet.save_pretrained(root / "unet")
    prompts = torch.randn(N_PROMPTS, SEQ_LEN, TINY_UNET["cross_attention_dim"], generator=g)
    negative = torch.zeros(1, SEQ_LEN, TINY_UNET["cross_attention_dim"])
    save_file({"prompts": prompts, "negative": negative}, str(root / "text.safetensors"))
    unroll_to_store(root / "traj", unet, _scheduler(), cuts=[1, 2], prompt_embeds=prompts[:N_TRAIN],
                    negative_embeds=negative, steps=STEPS, guidance=2.0, seed=0, shard_size=6, progress=False)
    return root


def tiny_trial(params: dict, workdir: str, on_log=None) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from clockwork import Clock, UNetCut, build_adaptor, disable, enable
    from clockwork.clock import adaptor_loop_indices
    from clockwork.distill import DistillConfig, PairDataset, distill, evaluate_mse
    from clockwork.embedded.pipeline import EmbeddedPipeline
    from clockwork.flops import meta_unet, step_flops
    from clockwork.metrics import fid_from_features, kid_from_features
    from clockwork.trajectories import TrajectoryStore

    torch.set_num_threads(1)
    root = Path(params["tiny_root"])
    clock, cut, steps = params["clock"], params.get("cut", 1), params.get("steps", STEPS)
    kind, width = params.get("adaptor", "resnet"), params.get("width", 8)
    adaptor_kwargs = {} if kind == "identity" else {"width": width, "depth": 1}
    unet = UNet2DConditionModel.from_pretrained(root / "unet").eval()
    sched = _scheduler()
    text = load_file(str(root / "text.safetensors"))

    adaptor, metrics = None, {"adaptor_params": 0}
    if clock > 1:
        adaptor = build_adaptor(kind, UNetCut(unet, cut), **adaptor_kwargs)
        data = PairDataset(TrajectoryStore(root / "traj").load(cut), adaptor_loop_indices(sched, steps, Clock(clock)))
        if kind != "identity":
            dcfg = DistillConfig(steps=params.get("distill_steps", 20), batch_size=4, log_every=5, checkpoint_every=10)
            hist = distill(adaptor, data, dcfg, checkpoint_dir=Path(workdir) / "adaptor", on_log=on_log, progress=False)
            metrics["distill_loss"] = hist[-1]["loss"]
        metrics["heldout_mse"] = evaluate_mse(adaptor, data)
        metrics["adaptor_params"] = sum(p.numel() for p in adaptor.parameters())

    pipe = EmbeddedPipeline(unet, sched)
    prompts, negative = text["prompts"][N_TRAIN:], text["negative"]

    def sample(seed):
        return pipe(prompts, negative, num_inference_steps=steps, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(seed))

    reference = sample(99)  # the teacher's distribution, other noise: the FID reference
    paired = sample(7)  # the teacher on the very noise the method gets
    if adaptor is not None:
        enable(pipe, adaptor=adaptor, clock=clock, cut=cut)
    t0 = time.perf_counter()
    generated = sample(7)
    latency_ms = (time.perf_counter() - t0) * 1000
    disable(pipe)

    def feats(x):
        return F.adaptive_avg_pool2d(x.double(), 2).flatten(1)

    fid = fid_from_features(feats(reference), feats(generated))
    kid, _ = kid_from_features(feats(reference), feats(generated), subsets=10, subset_size=8)
    # Stand-in for CLIP (higher is better): how close each image stays to the teacher's on the same noise.
    clip = float(F.cosine_similarity(generated.flatten(1), paired.flatten(1)).mean())
    boot = [fid_from_features(feats(reference), feats(generated)[torch.randint(0, len(generated), (len(generated),),
                              generator=torch.Generator().manual_seed(i))]) for i in range(3)]
    f = step_flops(meta_unet(TINY_UNET), cut if clock > 1 else 1, kind if clock > 1 else "identity", batch=2, seq_len=SEQ_LEN,
                   adaptor_kwargs=adaptor_kwargs)
    sched_ = Clock(clock).schedule(steps)
    total = sum(f["full"] if full else f["adapt"] for full in sched_)
    metrics.update(fid=fid, fid_std=float(torch.tensor(boot).std()), kid=kid, clip=clip, gflops=total * 1e-9,
                   gflops_ratio=total / (steps * f["full"]), latency_ms=latency_ms)
    return metrics


def quick_trial(params: dict, workdir: str, on_log=None) -> dict:
    """Metrics from a formula, after ``sleep`` seconds of loss reports (first attempt only, so that trials
    overlap but retries are quick). ``fail_once_width`` fails a trial's first attempt, ``fail_clock`` every
    attempt of that clock. With ``barrier: n``, a first attempt waits (up to a minute) until n trials have
    arrived in ``barrier_dir``, so they report at the same time however slowly the machine starts them.
    Each attempt's [start, end] goes to ``intervals.jsonl`` in its work folder. A schedule (a list of adaptor
    steps) counts as the clock 1 + its length; cost and FID scale with ``steps`` (default 4: unchanged)."""
    clock, cut, width = params["clock"], params.get("cut", 1), params.get("width", 0)
    clock = 1 + len(clock) if isinstance(clock, list) else clock
    steps = params.get("steps", 4)
    work = Path(workdir)
    first = not (work / "attempted").exists()
    (work / "attempted").write_text("x")
    start = time.time()
    if first and params.get("barrier"):
        gate = Path(params["barrier_dir"])
        gate.mkdir(parents=True, exist_ok=True)
        (gate / work.name).write_text(str(os.getpid()))
        while len(list(gate.iterdir())) < params["barrier"] and time.time() - start < 60:
            time.sleep(0.05)
    n = params.get("reports", 4)
    for s in range(1, n + 1):
        if first:
            time.sleep(params.get("sleep", 0.5) / n)
        if on_log is not None:
            on_log(10 * s, (0.2 * clock + 1.0 / (1 + width)) / s)
    with open(work / "intervals.jsonl", "a") as f:
        f.write(json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}) + "\n")
    if width and width == params.get("fail_once_width") and first:
        raise RuntimeError(f"flaky trial (width {width}): fails on its first attempt")
    if clock == params.get("fail_clock"):
        raise ValueError(f"broken trial (clock {clock}): always fails")
    gflops = (100.0 * (1 / clock + (1 - 1 / clock) * 0.3) + 0.1 * width) * steps / 4
    fid = 10 + 0.5 * (clock - 1) - 0.05 * width + 0.2 * (cut - 1) + 2.0 * (4 / steps - 1)
    return {"fid": fid, "fid_std": 0.1, "kid": 0.01,
            "clip": 0.30 - 0.002 * (clock - 1), "gflops": gflops, "gflops_ratio": gflops / 100.0,
            "latency_ms": 0.5 * gflops, "adaptor_params": 1000 * width}


def test_tiny_trial_runs_in_process(tmp_path):
    """The tiny trial itself (no Ray): distills, reports losses, and its metrics make sense."""
    root = make_world(tmp_path / "world")
    logs = []
    base = {"tiny_root": str(root), "distill_steps": 10, "steps": STEPS}
    m = tiny_trial({**base, "clock": 2, "cut": 1, "adaptor": "resnet", "width": 8}, str(tmp_path / "w"),
                   on_log=lambda s, v: logs.append((s, v)))
    b = tiny_trial({**base, "clock": 1, "adaptor": "none"}, str(tmp_path / "b"))
    assert [s for s, _ in logs] == [5, 10] and all(math.isfinite(v) for _, v in logs)
    assert m["gflops"] < b["gflops"] and b["gflops_ratio"] == 1.0 and 0 < m["gflops_ratio"] < 1
    assert b["clip"] > 0.999 and m["adaptor_params"] > 0 and b["adaptor_params"] == 0
    assert all(math.isfinite(v) for v in m.values()), json.dumps(m)
