"""Running the benchmark: every row of one model, the whole run, and the ``clockwork bench`` command line."""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from clockwork.bench.gpu import choose_sdpa, matmul_peak, prepare_fast, sdpa_bench, sdpa_context, set_inductor_options
from clockwork.bench.models import METHODS, MODES, RESNET_WIDTH, AuthorsStyleClockwork, build_model, build_resnet_adaptor
from clockwork.bench.report import Report, acceptance, to_markdown
from clockwork.bench.timing import _stats, compare, make_loop, profile_loop, time_loop

_DOC = sys.modules[__package__].__doc__  # the package's docstring is the command's help


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

    def profile(row, setup, run):  # a failed profile is noted, the rows stand
        try:
            with torch.no_grad():
                report.data["profile"][f"{name} {row}"] = profile_loop(setup, run, device)
            report.write()
        except Exception as e:
            report.data["profile"][f"{name} {row}"] = {"error": repr(e)[:300]}

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
                        profile("fast baseline", setup, run)
                elif method == "identity":
                    hook = enable(unet, adaptor="identity", clock=clock, cut=args.cut, scheduler=spec.scheduler, fast=fast)
                    hook._full = compiled_full  # one compiled full step per UNet (a pure function of unet and cut)
                    record("identity", "fast", *make_loop(plain, spec, lat0, ehs, args.steps))
                    if args.profile and cuda:
                        profile("fast Clockwork identity", *make_loop(plain, spec, lat0, ehs, args.steps))
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


def parse_args(argv=None, parser=None):
    ap = parser or argparse.ArgumentParser(prog="clockwork bench", description=_DOC,
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
                       description=_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(fn=_cli)


def main(argv=None) -> int:
    run_bench(parse_args(argv))
    return 0
