"""``clockwork bench``: wall-clock latency of the UNet sampling loop, eager and fast, with FLOPs beside it.

    clockwork bench --device cuda --models sd15,teacher --out reports/benchmarks          # one GPU
    clockwork bench --device cpu --models teacher --threads 2 --out reports/benchmarks     # a laptop

What is timed is the paper's latency: the denoising loop only (no text encoder, no VAE) - per step
``cat([x, x])`` (classifier-free guidance as one batch of 2), one UNet call, the guidance mix and
``scheduler.step`` (DPM++ 2M), for ``--steps`` steps. ``set_timesteps`` runs before the clock starts.
Rows, per model and mode:

- ``baseline``: the plain UNet;
- ``identity`` / ``resnet``: Clockwork through :func:`clockwork.enable` (the library path users take);
- ``authors``: the authors' style - one UNet whose low-resolution blocks are swapped at run time for
  stubs that return the cached output of the previous full call (identity adaptor, eager only;
  :class:`AuthorsStyleClockwork`, a few lines of our own, counting UNet calls like their wrapper).

Modes: ``eager`` and ``fast`` = ``clockwork.enable(..., fast=MODE)`` (two static graphs: the full step
and the adaptor step, each ``torch.compile``-d, with CUDA graphs under ``reduce-overhead``), on a UNet
prepared with channels_last weights and fused QKV projections. The fast baseline calls the same compiled
full-step function directly (``UNetCut.full_step`` replays ``unet.forward`` op for op), so baseline and
Clockwork share one compiled graph. Every fast row's final latents are compared with its eager row's.

Timing: CUDA events around each loop after warm-up (wall clock on CPU), median of ``--runs``.
FLOPs from :func:`clockwork.flops.clockwork_flops` (math attention, attention matmuls counted).
Results: ``<out>/bench_<tag>.json`` and ``.md`` (written after every row, so a cut-off run keeps
what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

# A 4-level UNet in SD 1.5's layout with tiny widths (for the test suite and CPU smoke runs).
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 16, 32, 32),
    norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon")
# ResNet adaptor width per model: 384 x depth 2 is 13.8 M parameters on SD 1.5 (the paper's ~14 M).
RESNET_WIDTH = {"sd15": 384, "teacher": 128, "tiny": 16}
METHODS = ("baseline", "identity", "authors", "resnet")
MODES = ("eager", "fast")


# ------------------------------------------------------------------------------------------- models
class ModelSpec:
    def __init__(self, name, unet, scheduler, latent_shape, seq_len, ctx_dim, flops_config, guidance):
        self.name, self.unet, self.scheduler = name, unet, scheduler
        self.latent_shape, self.seq_len, self.ctx_dim = latent_shape, seq_len, ctx_dim
        self.flops_config, self.guidance = flops_config, guidance


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0, sample_size: int | None = None) -> ModelSpec:
    """``sd15`` (random weights built on the device), ``teacher`` (the committed embedded teacher) or ``tiny``."""
    from diffusers import UNet2DConditionModel

    from clockwork.schedulers import make_scheduler

    torch.manual_seed(seed)
    if name == "teacher":
        from clockwork.embedded.teacher import TEACHER_CONFIG, load_teacher, sampling_scheduler
        from clockwork.embedded.text import MAX_TOKENS

        unet = load_teacher(dtype=dtype, device=device)
        c = unet.config
        return ModelSpec(name, unet, sampling_scheduler("dpm++"), (c.in_channels, c.sample_size, c.sample_size),
                         MAX_TOKENS, c.cross_attention_dim, dict(TEACHER_CONFIG), guidance=2.0)
    if name == "sd15":
        from clockwork.flops import SD15

        cfg = dict(SD15)
    elif name == "tiny":
        cfg = dict(TINY)
    else:
        raise ValueError(f"unknown model {name!r}; choose sd15, teacher or tiny")
    if sample_size:
        cfg["sample_size"] = sample_size
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    unet = unet.to(dtype=dtype).eval()
    sched = make_scheduler("dpm++", SD_SCHEDULER)
    c = unet.config
    seq = 77 if name == "sd15" else 8
    return ModelSpec(name, unet, sched, (c.in_channels, c.sample_size, c.sample_size), seq, c.cross_attention_dim,
                     cfg, guidance=7.5)


def build_resnet_adaptor(unet, cut: int, width: int, depth: int, device, dtype, seed: int = 0):
    """The paper's ResNet adaptor with random weights (its zero-initialised last layer made random too,
    so the adaptor's output matters to the fast-vs-eager check and no kernel runs on zeros)."""
    from clockwork.adaptors import build_adaptor
    from clockwork.cut import UNetCut

    torch.manual_seed(seed + 1)
    ad = build_adaptor("resnet", UNetCut(unet, cut), width=width, depth=depth)
    with torch.no_grad():
        nn.init.normal_(ad.up.weight, std=0.01)
        nn.init.normal_(ad.up.bias, std=0.01)
    return ad.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------- the authors' style row
class _Stub(nn.Module):
    """Stands in for a low-resolution block on adaptor calls (diffusers reads ``len(block.resnets)`` and
    ``has_cross_attention``): down blocks pass their input through as output and skips, the mid block
    and the inner up blocks pass through, the boundary up block returns the cached output."""

    def __init__(self, block: nn.Module, role: str, owner: AuthorsStyleClockwork):
        super().__init__()
        self.role = role
        self.has_cross_attention = getattr(block, "has_cross_attention", False)
        self.resnets = [None] * len(getattr(block, "resnets", []))
        self.n_res = len(self.resnets) + (1 if getattr(block, "downsamplers", None) else 0)
        object.__setattr__(self, "owner", owner)  # not a submodule

    def forward(self, hidden_states, *args, **kwargs):
        if self.role == "down":
            return hidden_states, (hidden_states,) * self.n_res
        if self.role == "boundary":
            return self.owner.cache
        return hidden_states


class AuthorsStyleClockwork:
    """Identity-adaptor Clockwork the way the authors' release does it: count UNet calls, and on adaptor
    calls mutate the UNet - swap its low-resolution blocks for stubs returning the last full call's output
    of the boundary up block (after its upsampler). Eager only; needs ``reset()`` between generations."""

    def __init__(self, unet, clock: int = 2, cut: int = 1):
        n = len(unet.down_blocks)
        self.unet, self.clock, self.calls, self.cache = unet, clock, 0, None
        self.real, self.stubs = {}, {}
        for i in range(cut, n):
            self.real["down", i] = unet.down_blocks[i]
        self.real["mid", 0] = unet.mid_block
        for i in range(0, n - cut):
            self.real["up", i] = unet.up_blocks[i]
        for (kind, i), blk in self.real.items():
            role = "boundary" if (kind == "up" and i == n - 1 - cut) else kind
            self.stubs[kind, i] = _Stub(blk, role, self)
        self._handle = unet.up_blocks[n - 1 - cut].register_forward_hook(self._store)
        self._stubbed = False

    def _store(self, module, args, output):
        self.cache = output

    def _swap(self, stubs: bool) -> None:
        if stubs == self._stubbed:
            return
        for (kind, i), real in self.real.items():
            mod = self.stubs[kind, i] if stubs else real
            if kind == "down":
                self.unet.down_blocks[i] = mod
            elif kind == "up":
                self.unet.up_blocks[i] = mod
            else:
                self.unet.mid_block = mod
        self._stubbed = stubs

    def reset(self) -> None:
        self.calls = 0

    def __call__(self, sample, timestep, encoder_hidden_states):
        self._swap(self.calls % self.clock != 0)
        self.calls += 1
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    def close(self) -> None:
        self._swap(False)
        self._handle.remove()


# --------------------------------------------------------------------------------------- the loop
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


# ----------------------------------------------------------------------------- GPU side measures
def matmul_peak(device, n: int = 8192, runs: int = 20) -> dict:
    """Dense n^3 matmul throughput in fp16 and bf16 (random data, CUDA events, median)."""
    res = {"n": n}
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dt, generator=g)
        b = torch.randn(n, n, device=device, dtype=dt, generator=g)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(runs):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        ms = statistics.median(times)
        res[f"{name}_tflops"] = round(2 * n**3 / (ms * 1e-3) / 1e12, 1)
        del a, b
    return res


SDPA_SHAPES = [  # SD 1.5 at 64x64 latents, batch 2: (label, heads, q len, kv len, head dim, layers per step)
    ("self 64x64", 8, 4096, 4096, 40, 5), ("cross 64x64", 8, 4096, 77, 40, 5),
    ("self 32x32", 8, 1024, 1024, 80, 5), ("self 16x16", 8, 256, 256, 160, 5),
]


def sdpa_bench(device, dtype, runs: int = 20) -> dict:
    """Time each SDPA backend on SD 1.5's attention shapes (diffusers' strided q/k/v layout)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    out = {}
    for label, h, lq, lk, d, n_layers in SDPA_SHAPES:
        g = torch.Generator(device=device).manual_seed(0)
        # as diffusers builds them: (b, L, h*d) projections viewed as (b, h, L, d)
        q = torch.randn(2, lq, h * d, device=device, dtype=dtype, generator=g).view(2, lq, h, d).transpose(1, 2)
        k = torch.randn(2, lk, h * d, device=device, dtype=dtype, generator=g).view(2, lk, h, d).transpose(1, 2)
        v = torch.randn(2, lk, h * d, device=device, dtype=dtype, generator=g).view(2, lk, h, d).transpose(1, 2)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        row = {"layers_per_step": n_layers, "gflops": round(4 * 2 * h * lq * lk * d / 1e9, 3)}
        for name, be in backends.items():
            try:
                ctx = sdpa_kernel(be) if be is not None else contextlib.nullcontext()
                with ctx:
                    for _ in range(3):
                        o = F.scaled_dot_product_attention(q, k, v)
                    times = []
                    for _ in range(runs):
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()
                        o = F.scaled_dot_product_attention(q, k, v)
                        e.record()
                        e.synchronize()
                        times.append(s.elapsed_time(e))
                ms = statistics.median(times)
                err = float((o.float() - ref).norm() / ref.norm())
                row[name] = {"ms": round(ms, 4), "tflops": round(row["gflops"] / ms, 1), "rel_err": round(err, 5)}
            except Exception as ex:  # backend not available for this shape
                row[name] = {"error": f"{type(ex).__name__}: {str(ex)[:120]}"}
        out[label] = row
    return out


def choose_sdpa(bench: dict, device, dtype, margin: float = 0.05) -> tuple[str, str]:
    """The backend with the least attention time per step over SD 1.5's shapes, if it beats the default by
    ``margin``, is accurate on every shape, and also runs inside a compiled graph (fused-QKV strides)."""
    totals = {}
    for b in ("default", "flash", "efficient", "cudnn"):
        tot = 0.0
        for row in bench.values():
            x = row.get(b, {})
            if "ms" not in x or x.get("rel_err", 1.0) > 5e-3:
                tot = math.inf
                break
            tot += x["ms"] * row["layers_per_step"]
        totals[b] = tot
    if not bench or not math.isfinite(totals["default"]):
        return "default", "no SDPA timings"
    best = min(totals, key=totals.get)
    if best == "default" or totals[best] > (1 - margin) * totals["default"]:
        return "default", f"attention ms per step: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items())
    try:  # the compiled graph passes other strides than eager (q, k, v as views of one fused projection)
        import torch.nn.functional as F

        h, L, d = 8, 4096, 40
        qkv = torch.randn(2, L, 3 * h * d, device=device, dtype=dtype)
        ctx = torch.randn(2, 77, 2 * h * d, device=device, dtype=dtype)

        def attn(qkv, ctx):
            q, k, v = (t.view(2, -1, h, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
            o1 = F.scaled_dot_product_attention(q, k, v)
            k2, v2 = (t.view(2, -1, h, d).transpose(1, 2) for t in ctx.chunk(2, dim=-1))
            o2 = F.scaled_dot_product_attention(q, k2, v2)
            return o1 + o2

        ref = attn(qkv.float(), ctx.float())
        with sdpa_context(best):
            got = torch.compile(attn, fullgraph=True, dynamic=False)(qkv, ctx)
        err = float((got.float() - ref).norm() / ref.norm())
        torch._dynamo.reset()
        if not math.isfinite(err) or err > 5e-3:
            return "default", f"{best} was faster but wrong when compiled (rel err {err:.1e})"
    except Exception as e:
        return "default", f"{best} was faster but failed when compiled: {type(e).__name__}"
    return best, "attention ms per step: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items())


def sdpa_context(choice: str):
    """A context that makes ``choice`` the preferred SDPA backend (falling back to the others)."""
    if choice in ("default", "", None):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    order = [names[choice]] + [b for k, b in names.items() if k != choice]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # older torch: no priorities, only the allowed set
        return sdpa_kernel(order)


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


# ------------------------------------------------------------------------------------- fast mode
def prepare_fast(unet, adaptors, channels_last: bool, fuse_qkv: bool) -> list[str]:
    """What the fast rows add to the UNet before compiling; numerically the same function."""
    done = []
    if fuse_qkv and hasattr(unet, "fuse_qkv_projections"):
        try:
            unet.fuse_qkv_projections()
            done.append("fused QKV projections")
        except Exception as e:  # e.g. added-KV processors
            done.append(f"fuse_qkv skipped ({type(e).__name__})")
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        for a in adaptors:
            a.to(memory_format=torch.channels_last)
        done.append("channels_last weights")
    return done


def set_inductor_options(spec: str) -> dict:
    """``"conv_1x1_as_mm=1,coordinate_descent_tuning=0"`` -> torch._inductor.config."""
    import torch._inductor.config as ic

    applied = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        k, _, v = item.partition("=")
        val: object = v
        if v.lower() in ("1", "true", "yes"):
            val = True
        elif v.lower() in ("0", "false", "no"):
            val = False
        obj, attr = ic, k
        if "." in k:
            head, attr = k.rsplit(".", 1)
            for part in head.split("."):
                obj = getattr(obj, part)
        setattr(obj, attr, val)
        applied[k] = val
    return applied


# ---------------------------------------------------------------------------------------- writer
class Report:
    def __init__(self, out_dir: Path, tag: str, meta: dict):
        self.out_dir, self.tag = Path(out_dir), tag
        self.data = dict(meta, rows=[], acceptance={}, profile={}, notes=[])
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"bench_{self.tag}.json"

    @property
    def md_path(self) -> Path:
        return self.out_dir / f"bench_{self.tag}.md"

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.write()

    def find(self, model, method, mode):
        for r in self.data["rows"]:
            if r["model"] == model and r["method"] == method and r["mode"] == mode and r.get("latency_ms"):
                return r
        return None

    def write(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.json_path)
        self.md_path.write_text(to_markdown(self.data))


def _f(x, fmt="{:.1f}"):
    return "" if x is None else fmt.format(x)


def to_markdown(d: dict) -> str:
    env = d.get("env", {})
    cfg = d.get("config", {})
    lines = [
        f"# Clockwork benchmark ({env.get('device_name', '?')})", "",
        f"- date: {d.get('date')}; torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
        f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, python {env.get('python')}, threads {env.get('threads')}",
        f"- loop: {cfg.get('steps')} DPM++ 2M steps, clock {cfg.get('clock')}, cut {cfg.get('cut')}, "
        f"batch {cfg.get('batch')} (CFG), {cfg.get('dtype')}; UNet loop only (no text encoder / VAE)",
        f"- fast mode: `clockwork.enable(..., fast={cfg.get('fast_mode')!r})` + {', '.join(cfg.get('fast_prep', [])) or 'nothing'}; "
        f"SDPA backend: {cfg.get('sdpa')}; inductor options: {cfg.get('inductor') or 'defaults'}",
        f"- command: `{d.get('command')}`", "",
    ]
    if d.get("matmul_peak"):
        p = d["matmul_peak"]
        lines += [f"Measured matmul peak ({p['n']}^3): fp16 {p.get('fp16_tflops')} TFLOP/s, bf16 {p.get('bf16_tflops')} TFLOP/s.", ""]
    cpu_col = any("cpu_time_ms" in r for r in d["rows"])
    lines += [
        "| model | method | mode | median ms | p10-p90 ms | vs baseline (same mode) | GFLOPs | TFLOP/s | peak MiB | "
        "max abs diff vs eager (rel L2) | first call s |" + (" process CPU ms |" if cpu_col else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cpu_col else ""),
    ]
    for r in d["rows"]:
        if r.get("error") or r.get("skipped"):
            lines.append(f"| {r['model']} | {r['method']} | {r['mode']} | {r.get('error') or r.get('skipped')} |  |  |  |  |  |  |  |")
            continue
        diff = ""
        if r.get("max_abs_diff") is not None:
            diff = f"{r['max_abs_diff']:.2e} ({r['rel_l2_diff']:.1e})"
        lines.append(
            f"| {r['model']} | {r['label']} | {r['mode']} | {r['latency_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
            f"{_f(r.get('ratio_vs_baseline'), '{:.3f}x')} | {r['gflops']:.1f} | {_f(r.get('tflops'), '{:.3g}')} | "
            f"{_f(r.get('peak_alloc_mib'), '{:.0f}')} | {diff} | {_f(r.get('first_call_s'), '{:.1f}')} |"
            + (f" {_f(r.get('cpu_time_ms'), '{:.0f}')} |" if cpu_col else ""))
    lines.append("")
    lines.append("GFLOPs per loop (all steps, batch 2); TFLOP/s = GFLOPs / median; peak = max_memory_allocated from the "
                 "row's first call (compile and CUDA-graph capture included); diff = final latents vs the eager row of the "
                 "same method (authors' style vs our eager identity)."
                 + (" Process CPU ms = median CPU time of the process (all threads) per loop, which other load on the "
                    "machine does not inflate as it does wall time." if cpu_col else ""))
    la = env.get("load_average_at_start")
    if la:
        lines.append(f"Load average (1, 5, 15 min) at start {la}, at end {env.get('load_average_at_end')} "
                     f"on {env.get('cpu_count')} logical CPUs.")
    acc = d.get("acceptance") or {}
    if acc:
        lines += ["", "## Acceptance", ""]
        for k, v in acc.items():
            lines.append(f"- {k}: {v}")
    prof = d.get("profile") or {}
    for name, p in prof.items():
        if not isinstance(p, dict) or "top" not in p:
            continue
        lines += ["", f"## Profile: {name}", "",
                  (f"Device busy {p['busy_ms_per_loop']:.2f} ms per loop ({p.get('kernels_per_loop'):.0f} kernels); "
                   if p.get("kernels_per_loop") else f"Self CPU time of all ops {p['busy_ms_per_loop']:.2f} ms per loop; ")
                  + f"wall under the profiler {p['wall_ms_per_loop_under_profiler']:.2f} ms.", "",
                  "| category | ms per loop | share |", "|---|---|---|"]
        for c, v in p["categories"].items():
            lines.append(f"| {c} | {v['ms']:.3f} | {100 * v['share']:.1f}% |")
        lines += ["", "| kernel | calls/loop | ms/loop | share |", "|---|---|---|---|"]
        for t in p["top"]:
            nm = t["name"].replace("|", "/")[:100]
            lines.append(f"| `{nm}` | {t['calls_per_loop']:.0f} | {t['ms_per_loop']:.3f} | {100 * t['share']:.1f}% |")
    if d.get("sdpa_bench"):
        lines += ["", "## SDPA backends on SD 1.5's attention shapes (batch 2, fp16)", "",
                  "| shape | GFLOPs | default ms | flash ms | efficient ms | cudnn ms |", "|---|---|---|---|---|---|"]
        for label, row in d["sdpa_bench"].items():
            cells = []
            for b in ("default", "flash", "efficient", "cudnn"):
                x = row.get(b, {})
                cells.append(f"{x['ms']:.3f}" if "ms" in x else "n/a")
            lines.append(f"| {label} | {row['gflops']} | " + " | ".join(cells) + " |")
    if d.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in d["notes"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ the bench
def _env(device) -> dict:
    import diffusers

    env = dict(torch=torch.__version__, diffusers=diffusers.__version__, python=platform.python_version(),
               threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), capability=f"{p.major}.{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        env.update(device_name=f"CPU ({env['cpu']}, {env['threads']} threads)", cuda=None, cudnn=None)
    return env


def bench_model(name: str, args, device, dtype, report: Report, t_start: float) -> None:
    from clockwork.clock import Clock
    from clockwork.flops import clockwork_flops
    from clockwork.hook import disable, enable

    cuda = device.type == "cuda"
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {name}: {msg}", flush=True)  # noqa: E731
    spec = build_model(name, device, dtype, seed=args.seed, sample_size=args.sample_size if name != "teacher" else None)
    unet = spec.unet
    width = args.resnet_width or RESNET_WIDTH.get(name, 128)
    cfg = spec.flops_config
    if args.sample_size and name != "teacher":
        cfg = dict(cfg, sample_size=args.sample_size)
    f_id = clockwork_flops(cfg, steps=args.steps, clock=args.clock, cut=args.cut, adaptor="identity",
                           batch=args.batch, seq_len=spec.seq_len)
    f_res = clockwork_flops(cfg, steps=args.steps, clock=args.clock, cut=args.cut, adaptor="resnet",
                            batch=args.batch, seq_len=spec.seq_len, adaptor_kwargs=dict(width=width, depth=args.resnet_depth))
    gflops = {"baseline": f_id["baseline_total_gflops"], "identity": f_id["total_gflops"],
              "authors": f_id["total_gflops"], "resnet": f_res["total_gflops"]}
    report.data.setdefault("flops", {})[name] = {"identity": f_id, "resnet": f_res}
    resnet = build_resnet_adaptor(unet, args.cut, width, args.resnet_depth, device, dtype, seed=args.seed)
    n_params = sum(p.numel() for p in resnet.parameters())
    log(f"UNet {f_id['unet_params'] / 1e6:.1f} M params; full step {f_id['full_step_gflops']:.1f} GFLOPs, identity step "
        f"{f_id['adaptor_step_gflops']:.1f}, resnet step {f_res['adaptor_step_gflops']:.1f}; resnet adaptor width {width} "
        f"depth {args.resnet_depth}: {n_params / 1e6:.2f} M params")
    gen = torch.Generator().manual_seed(args.seed + 7)
    n_img = max(1, args.batch // 2)
    lat0 = (torch.randn(n_img, *spec.latent_shape, generator=gen) * spec.scheduler.init_noise_sigma).to(device, dtype)
    ehs = torch.randn(2 * n_img, spec.seq_len, spec.ctx_dim, generator=gen).to(device, dtype)
    labels = {"baseline": "baseline UNet", "identity": "Clockwork identity", "resnet": f"Clockwork resnet ({n_params / 1e6:.1f} M)",
              "authors": "authors' style (mutating, identity)"}
    eager_out: dict[str, torch.Tensor] = {}
    clock = Clock(args.clock)

    def plain(x, t, e):
        return unet(x, t, e, return_dict=False)[0]

    def record(method, mode, setup, run, extra=None):
        row = dict(model=name, method=method, mode=mode, label=labels[method], gflops=gflops[method],
                   flops_ratio=round(gflops[method] / gflops["baseline"], 4),
                   adaptor_params=n_params if method == "resnet" else 0)
        if extra:
            row.update(extra)
        try:
            with torch.no_grad():
                times, out, first_s, pw, ps, cpu_times = time_loop(setup, run, device, args.warmup, args.runs)
        except Exception as e:  # record and go on: one broken row must not cost the others
            import traceback

            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            report.add(row)
            log(f"{method} {mode}: ERROR {row['error']}")
            return None
        row.update(_stats(times))
        row["times_ms"] = [round(t, 3) for t in times]
        if not cuda:  # on a shared CPU box the process's CPU time is steadier than wall time
            row["cpu_time_ms"] = statistics.median(cpu_times)
        row["first_call_s"] = round(first_s, 2)
        row["tflops"] = float(f"{gflops[method] / row['latency_ms']:.4g}")
        if pw is not None:
            row["peak_alloc_mib"] = round(max(pw, ps) / 2**20, 1)
            row["steady_peak_alloc_mib"] = round(ps / 2**20, 1)
        ref_key = "identity" if method == "authors" else method
        if mode == "eager" and method != "authors":
            eager_out[method] = out.detach().clone()
        if (mode != "eager" or method == "authors") and ref_key in eager_out:
            row.update(compare(out, eager_out[ref_key]))
            tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
            row["matches_eager"] = bool(row["finite"] and row["rel_l2_diff"] <= tol)
            row["tolerance_rel_l2"] = tol
        base = report.find(name, "baseline", mode)
        if base is not None:
            row["ratio_vs_baseline"] = round(row["latency_ms"] / base["latency_ms"], 4)
        auth = report.find(name, "authors", "eager")
        if auth is not None:
            row["speedup_vs_authors_eager"] = round(auth["latency_ms"] / row["latency_ms"], 3)
        report.add(row)
        log(f"{labels[method]:38s} {mode:5s} {row['latency_ms']:9.2f} ms  {row['tflops']:7.2f} TFLOP/s"
            + (f"  x{row['ratio_vs_baseline']:.3f} of baseline" if "ratio_vs_baseline" in row else "")
            + (f"  rel diff {row['rel_l2_diff']:.1e}" if "rel_l2_diff" in row else "")
            + f"  (first call {first_s:.1f}s)")
        return row

    def skip(method, mode, why):
        report.add(dict(model=name, method=method, mode=mode, label=labels[method], gflops=gflops[method], skipped=why))
        log(f"{method} {mode}: skipped ({why})")

    methods = [m for m in METHODS if m in args.methods]
    # ---- eager rows: the plain UNet and the library's hook, then the authors' style
    if "eager" in args.modes:
        for method in methods:
            if method == "baseline":
                record(method, "eager", *make_loop(plain, spec, lat0, ehs, args.steps))
            elif method == "authors":
                w = AuthorsStyleClockwork(unet, clock=args.clock, cut=args.cut)
                try:
                    record(method, "eager", *make_loop(w, spec, lat0, ehs, args.steps, on_setup=w.reset))
                finally:
                    w.close()
            else:
                enable(unet, adaptor="identity" if method == "identity" else resnet, clock=clock, cut=args.cut,
                       scheduler=spec.scheduler, fast=False)
                try:
                    record(method, "eager", *make_loop(plain, spec, lat0, ehs, args.steps))
                finally:
                    disable(unet)
    # ---- fast rows: two static graphs per adaptor; the baseline reuses the compiled full step
    if "fast" in args.modes:
        fast = True if args.fast_mode in ("default", "true", "") else args.fast_mode
        if cuda and args.profile and not report.data.get("_cupti_ready"):
            # Load CUPTI before the first CUDA graph is captured (here, after the eager rows, so they run
            # without it): a profiler that first attaches after capture misses or breaks captured graphs.
            try:
                from torch.profiler._utils import _init_for_cuda_graphs

                _init_for_cuda_graphs()
                report.data["_cupti_ready"] = True
            except Exception as e:
                report.data["notes"].append(f"profiler warm-up for CUDA graphs failed: {e!r}"[:200])
        prep = prepare_fast(unet, [resnet], args.channels_last, args.fuse_qkv)
        report.data["config"]["fast_prep"] = prep
        budget_left = lambda: args.time_budget - (time.time() - t_start) if args.time_budget else math.inf  # noqa: E731
        hook = None
        try:
            hook = enable(unet, adaptor="identity", clock=clock, cut=args.cut, scheduler=spec.scheduler, fast=fast)
            compiled_full = hook._full
            for method in [m for m in methods if m != "authors"]:
                need = args.compile_reserve.get((name, method), args.compile_reserve.get(name, 60.0))
                if budget_left() < need:
                    skip(method, "fast", f"time budget ({args.time_budget:.0f}s) nearly spent")
                    continue
                if method == "baseline":
                    def full_only(x, t, e):
                        return compiled_full(x, t, e, upsampled=False)[0]
                    setup, run = make_loop(full_only, spec, lat0, ehs, args.steps)
                    row = record("baseline", "fast", setup, run)
                    if row is not None and args.profile:
                        try:
                            with torch.no_grad():
                                report.data["profile"][f"{name} fast baseline"] = profile_loop(setup, run, device)
                            report.write()
                        except Exception as e:
                            report.data["profile"][f"{name} fast baseline"] = {"error": repr(e)[:300]}
                elif method == "identity":
                    hook = enable(unet, adaptor="identity", clock=clock, cut=args.cut, scheduler=spec.scheduler, fast=fast)
                    hook._full = compiled_full  # one compiled full step per UNet (a pure function of unet and cut)
                    record("identity", "fast", *make_loop(plain, spec, lat0, ehs, args.steps))
                    if args.profile and cuda:
                        try:
                            setup, run = make_loop(plain, spec, lat0, ehs, args.steps)
                            with torch.no_grad():
                                report.data["profile"][f"{name} fast Clockwork identity"] = profile_loop(setup, run, device)
                            report.write()
                        except Exception as e:
                            report.data["profile"][f"{name} fast Clockwork identity"] = {"error": repr(e)[:300]}
                elif method == "resnet":
                    hook = enable(unet, adaptor=resnet, clock=clock, cut=args.cut, scheduler=spec.scheduler, fast=fast)
                    hook._full = compiled_full
                    record("resnet", "fast", *make_loop(plain, spec, lat0, ehs, args.steps))
        finally:
            disable(unet)
            del hook
            try:  # what was compiled, graph breaks, CUDA-graph skips (for the notes)
                from torch._dynamo.utils import counters

                report.data.setdefault("compile_counters", {})[name] = {
                    k: {str(kk): vv for kk, vv in counters[k].items()} for k in ("stats", "graph_break", "inductor")
                    if k in counters}
                report.write()
            except Exception:
                pass
            torch._dynamo.reset()
    del spec, unet, resnet
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def acceptance(report: Report) -> dict:
    """The issue's acceptance criteria, evaluated on the SD 1.5 rows of this run."""
    env = report.data["env"]
    acc = {}
    fb, fi = report.find("sd15", "baseline", "fast"), report.find("sd15", "identity", "fast")
    au = report.find("sd15", "authors", "eager")
    fr = report.find("sd15", "resnet", "fast")
    if fb and fi:
        r = fi["latency_ms"] / fb["latency_ms"]
        acc["fast Clockwork (identity) / fast baseline <= 0.72"] = f"{r:.3f} -> {'PASS' if r <= 0.72 else 'FAIL'}"
    if fb and fr:
        acc["fast Clockwork (resnet) / fast baseline (reported; FLOPs ratio %.3f)" % fr["flops_ratio"]] = \
            f"{fr['latency_ms'] / fb['latency_ms']:.3f}"
    if fi and au:
        s = au["latency_ms"] / fi["latency_ms"]
        acc["fast Clockwork (identity) speed-up over eager authors' style >= 3.4x"] = f"{s:.2f}x -> {'PASS' if s >= 3.4 else 'FAIL'}"
    if fb:
        h200 = "H200" in env.get("device_name", "")
        need = 250 if h200 else 200
        peak = (report.data.get("matmul_peak") or {}).get("fp16_tflops")
        frac = f", {100 * fb['tflops'] / peak:.0f}% of the measured fp16 matmul peak {peak}" if peak else ""
        acc[f"fast baseline >= {need} TFLOP/s ({'H200' if h200 else 'H100'} target, attention FLOPs counted)"] = \
            f"{fb['tflops']:.1f}{frac} -> {'PASS' if fb['tflops'] >= need else 'FAIL'}"
    diffs = [r for r in report.data["rows"] if r.get("mode") == "fast" and "matches_eager" in r]
    if diffs:
        ok = all(r["matches_eager"] for r in diffs)
        worst = max(r["rel_l2_diff"] for r in diffs)
        acc["fast rows give the eager images (final latents, rel L2 <= tolerance)"] = \
            f"worst rel L2 {worst:.1e}, max abs {max(r['max_abs_diff'] for r in diffs):.2e} -> {'PASS' if ok else 'FAIL'}"
    return acc


def parse_args(argv=None, parser=None):
    ap = parser or argparse.ArgumentParser(prog="clockwork bench", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return _finish(ap.parse_args(argv))


def add_arguments(ap) -> None:
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="sd15,teacher", help="comma list of sd15, teacher, tiny")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    ap.add_argument("--modes", default="eager,fast", help="eager, fast or both")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--clock", type=int, default=2)
    ap.add_argument("--cut", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2, help="2 = one image with classifier-free guidance")
    ap.add_argument("--dtype", default=None, help="fp16 | bf16 | fp32 (default: fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resnet-width", type=int, default=None, help="default: 384 for sd15 (13.8 M params), 128 teacher")
    ap.add_argument("--resnet-depth", type=int, default=2)
    ap.add_argument("--sample-size", type=int, default=None, help="override sd15/tiny latent size (smoke tests)")
    ap.add_argument("--fast-mode", default=None,
                    help="torch.compile mode of the fast rows: reduce-overhead (GPU default: CUDA graphs), default, "
                         "max-autotune, max-autotune-no-cudagraphs")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--no-fuse-qkv", dest="fuse_qkv", action="store_false")
    ap.add_argument("--sdpa", default="default",
                    help="preferred SDPA backend: default, flash, efficient, cudnn, or auto (time them on SD 1.5's "
                         "attention shapes first and take the fastest that is accurate and compiles)")
    ap.add_argument("--sdpa-bench", action="store_true", help="time the SDPA backends on SD 1.5's shapes first (GPU)")
    ap.add_argument("--inductor", default=None, help="torch._inductor.config options, e.g. conv_1x1_as_mm=1")
    ap.add_argument("--no-peak", dest="peak", action="store_false", help="skip the 8192^3 matmul peak (GPU)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds; skip fast rows that would not fit")
    ap.add_argument("--tag", default=None, help="output name: bench_<tag>.json (default gpu or cpu)")
    ap.add_argument("--out", default="reports/benchmarks")
    ap.add_argument("--command", default=None, help="the command line to record (default: sys.argv)")


def _finish(args):
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [m for m in args.modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown method/mode {bad}; methods {list(METHODS)}, modes {list(MODES)}")
    cuda = str(args.device).startswith("cuda")
    if args.fast_mode is None:
        args.fast_mode = "reduce-overhead" if cuda else "default"
    if args.inductor is None:
        args.inductor = "conv_1x1_as_mm=1" if cuda else ""
    # seconds a fast row needs (compile + capture + runs) before it is started under --time-budget
    args.compile_reserve = {("sd15", "baseline"): 150.0, ("sd15", "identity"): 120.0, ("sd15", "resnet"): 60.0,
                            "sd15": 120.0, "teacher": 40.0, "tiny": 20.0}
    return args


def run_bench(args) -> dict:
    t_start = time.time()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]
    dtype = dtype or (torch.float16 if cuda else torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    from torch import _dynamo  # noqa: F401  (loads torch._dynamo)

    # Several UNets and adaptors compile the same UNetCut methods: allow more than 8 cached graphs per function.
    for k in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, k):
            setattr(torch._dynamo.config, k, max(64, getattr(torch._dynamo.config, k)))
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(512, torch._dynamo.config.accumulated_cache_size_limit)
    inductor = set_inductor_options(args.inductor) if "fast" in args.modes else {}
    tag = args.tag or ("gpu" if cuda else "cpu")
    meta = dict(
        date=datetime.date.today().isoformat(),
        command=args.command or "clockwork bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        env=_env(device),
        config=dict(steps=args.steps, clock=args.clock, cut=args.cut, batch=args.batch, dtype=str(dtype).replace("torch.", ""),
                    sampler="DPMSolverMultistepScheduler (dpmsolver++, order 2)", runs=args.runs, warmup=args.warmup,
                    models=args.models, fast_mode=args.fast_mode, channels_last=args.channels_last, fuse_qkv=args.fuse_qkv,
                    sdpa=args.sdpa, inductor=inductor, resnet_depth=args.resnet_depth),
    )
    report = Report(Path(args.out), tag, meta)
    print(f"clockwork bench on {meta['env']['device_name']}: torch {meta['env']['torch']}, diffusers "
          f"{meta['env']['diffusers']}, dtype {dtype}", flush=True)
    if cuda and args.peak:
        try:
            report.data["matmul_peak"] = matmul_peak(device)
        except Exception as e:
            report.data["notes"].append(f"matmul peak failed: {e!r}"[:300])
        print(f"matmul peak: {report.data.get('matmul_peak')}", flush=True)
        report.write()
    if cuda and (args.sdpa_bench or args.sdpa == "auto"):
        try:
            report.data["sdpa_bench"] = sdpa_bench(device, dtype)
        except Exception as e:
            report.data["sdpa_bench"] = {}
            report.data["notes"].append(f"SDPA bench failed: {e!r}"[:300])
        for k, v in report.data["sdpa_bench"].items():
            print(f"sdpa {k}: " + ", ".join(f"{b}={x.get('ms', 'n/a')}" for b, x in v.items() if isinstance(x, dict)), flush=True)
        report.write()
    if args.sdpa == "auto":
        try:
            choice, why = choose_sdpa(report.data.get("sdpa_bench") or {}, device, dtype) if cuda else ("default", "CPU")
        except Exception as e:
            choice, why = "default", f"choice failed: {e!r}"[:200]
        report.data["config"]["sdpa"] = f"{choice} (auto: {why})"
        report.data["notes"].append(f"SDPA backend chosen: {choice} ({why})")
        print(f"SDPA backend: {choice} ({why})", flush=True)
        args.sdpa = choice
        report.write()
    with sdpa_context(args.sdpa):
        for name in args.models:
            try:
                bench_model(name, args, device, dtype, report, t_start)
            except Exception as e:
                import traceback

                traceback.print_exc()
                report.data["notes"].append(f"{name}: aborted with {type(e).__name__}: {str(e)[:300]}")
                report.write()
    report.data["acceptance"] = acceptance(report)
    report.data["total_s"] = round(time.time() - t_start, 1)
    if hasattr(os, "getloadavg"):
        report.data["env"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.write()
    print(to_markdown(report.data), flush=True)
    return report.data


def _cli(args) -> int:
    run_bench(_finish(args))
    return 0


def add_parser(sub) -> None:
    """Register ``clockwork bench`` on the ``clockwork`` command's subparsers."""
    p = sub.add_parser("bench", help="latency of the UNet loop: baseline vs Clockwork, eager vs fast (GPU or CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(fn=_cli)


def main(argv=None) -> int:
    run_bench(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
