"""GPU-side measures and settings besides the loop: the matmul peak, SDPA backends (timed, chosen, preferred),
and what the fast rows do to the UNet and to inductor before compiling."""

from __future__ import annotations

import contextlib
import math
import statistics

import torch


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
