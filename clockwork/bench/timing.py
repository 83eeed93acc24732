"""Timing the sampling loop: the loop itself, warm-up and timed runs, their statistics, output comparison,
and a profile of where the loop's device time goes."""

from __future__ import annotations

import gc
import statistics
import time

import torch

from clockwork.bench.models import ModelSpec


def make_loop(call, spec: ModelSpec, lat0: torch.Tensor, ehs: torch.Tensor, steps: int, on_setup=None):
    """(setup, run): ``setup`` resets the sampler (outside the timed region), ``run`` is the UNet loop."""
    sched, g = spec.scheduler, spec.guidance

    def setup():
        sched.set_timesteps(steps, device=lat0.device)
        sched.set_begin_index(0)  # the first step need not search the schedule (a GPU sync)
        if on_setup is not None:
            on_setup()

    def run():
        latents = lat0
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents, latents]), t)
            out = call(x, t, ehs)
            u, c = out.chunk(2)
            latents = sched.step(u + g * (c - u), t, latents, return_dict=False)[0]
        return latents

    return setup, run


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(setup, run, device, warmup: int, runs: int):
    """Warm up, then time ``runs`` loops. Returns (times in ms, last output, first-call seconds, peaks)."""
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = None
    first_s = None
    for i in range(max(1, warmup)):
        setup()
        out = run()
        _sync(device)
        if i == 0:
            first_s = time.perf_counter() - t0
    peak_warm = torch.cuda.max_memory_allocated(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(runs):
        setup()
        _sync(device)
        c0 = time.process_time()
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = run()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            out = run()
            times.append((time.perf_counter() - t) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)  # CPU time of all this process's threads
    peak_steady = torch.cuda.max_memory_allocated(device) if cuda else None
    return times, out, first_s, peak_warm, peak_steady, cpu_times


def _stats(times):
    s = sorted(times)
    q = lambda p: s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]  # noqa: E731
    return dict(latency_ms=statistics.median(s), mean_ms=statistics.fmean(s), min_ms=s[0], p10_ms=q(0.1),
                p90_ms=q(0.9), std_ms=statistics.pstdev(s) if len(s) > 1 else 0.0, runs=len(s))


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    a, b = out.double().flatten(), ref.double().flatten()
    diff = (a - b).abs()
    rel = (a - b).norm() / b.norm().clamp_min(1e-30)
    return dict(max_abs_diff=float(diff.max()), rel_l2_diff=float(rel), ref_max_abs=float(b.abs().max()),
                finite=bool(torch.isfinite(a).all()))


def kernel_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "sdpa", "attention", "softmax")):
        return "attention"
    if "triton" in n:
        return "triton (fused norm/pointwise)"
    if any(k in n for k in ("fprop", "conv", "implicit", "winograd", "nhwc", "dgrad", "wgrad")):
        return "convolution (cuDNN)"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "splitk")):
        return "matmul (cuBLAS)"
    if any(k in n for k in ("memcpy", "memset", "copy")):
        return "copies"
    return "other (eager pointwise, scheduler)"


def profile_loop(setup, run, device, loops: int = 2, top: int = 15) -> dict:
    """Where the loop's device time goes: top kernels and categories, per loop."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    setup()
    run()
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(loops):
            setup()
            run()
        _sync(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / loops
    rows = []
    for e in prof.key_averages():
        if cuda:
            if str(getattr(e, "device_type", "")).split(".")[-1] != "CUDA":
                continue
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = e.self_cuda_time_total
        else:
            us = e.self_cpu_time_total
        if us and us > 0:
            rows.append((e.key, int(e.count), us / 1e3 / loops))
    rows.sort(key=lambda r: -r[2])
    busy = sum(r[2] for r in rows)
    cats: dict[str, float] = {}
    for name, _, ms in rows:
        c = kernel_category(name) if cuda else "cpu op"
        cats[c] = cats.get(c, 0.0) + ms
    return {
        "loops": loops, "wall_ms_per_loop_under_profiler": round(wall_ms, 3), "busy_ms_per_loop": round(busy, 3),
        "kernels_per_loop": sum(r[1] for r in rows) / loops if cuda else None,
        "categories": {k: {"ms": round(v, 3), "share": round(v / busy, 4) if busy else 0.0}
                       for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top": [{"name": n[:160], "calls_per_loop": c / loops, "ms_per_loop": round(ms, 4),
                 "share": round(ms / busy, 4) if busy else 0.0,
                 "category": kernel_category(n) if cuda else "cpu op"} for n, c, ms in rows[:top]],
    }
