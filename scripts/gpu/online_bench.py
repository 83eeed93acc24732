"""Online distillation's throughput at the real SD 1.5 / SDXL UNet shapes, side by side in one process.

Random weights (``UNet2DConditionModel(**clockwork.flops.SD15 / SDXL)`` built on the GPU in seconds, fp16), random
prompt embeddings of the real shapes (SD 1.5: (B, 77, 768); SDXL: (B, 77, 2048) + pooled text_embeds (B, 1280) +
time_ids (B, 6)), the negative prompt's of the same shapes. Per kind, at the same batch (16 prompts, 8 DPM++ steps,
CFG 2, cut 1, clock 2: the adaptor at loop iterations 1, 3, 5, 7), in order of priority (``--budget-s`` skips the
sections that would start after the budget; a started one runs to its end):

- ``plain_eager`` / ``plain_compiled``: the plain sampling loop (scheduler + batch CFG, the UNet called directly),
  eager and ``torch.compile`` (default mode); images/s, CUDA-synchronised, median of ``--repeats`` after warm-up;
- ``online_eager`` / ``online_compiled``: ``OnlineUnroller.unroll(k)`` with ``OnlineConfig.compile`` off and on
  (a compile that fails is reported and the section runs eager; ``ran`` says which ran); the ratio to the
  compiled plain loop (the goal: >= 0.70);
- ``adaptor_training``: the resnet adaptor of configs/<kind>.yaml ``adaptor:`` trained on a PairBuffer, steps/s at
  ``--train-batch`` (the step of ``distill_online``: batch draw, forward, MSE, backward, clip, Adam);
- ``distill_online``: a short real ``distill_online`` run on a streaming source of 50 000 synthetic prompts: steady
  adaptor steps/s and images unrolled/s (between its first and last log, so compile and the buffer fill are
  excluded), peak GPU memory (allocated and reserved), host RSS (VmRSS / VmHWM) before and after;
- ``projection``: one 50 000-prompt epoch (50 000 / images unrolled per second), its training share, 120 epochs;
- ``rss``: host RSS after a brief eager ``distill_online`` with N = 1 000 and N = 50 000 streamed prompts (embeddings
  made per index on the fly, a generator seeded by the index): equal within noise if host memory is bounded;
- ``stored_unroll``: the stored path's ``clockwork.trajectories.unroll_batch`` (every step to host memory).

Writes ``online_bench.json`` (every number, device, torch version, commit, command line, date; rewritten after each
section, so a killed run keeps what it measured) and ``online_bench.md`` to ``--out``; progress lines carry
timestamps. Imports only torch, diffusers and clockwork.

GPU (torch there; diffusers travels as wheels: ``../shared/tools/gpu-carry base`` fills ``.whl/`` and prints the
prefix; carry ``.whl``; the machine's copy has no .git, so pass the commit)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/.site" \
        .whl/*.whl && export PYTHONPATH="$HOME/.site" || exit; \
    python3 scripts/gpu/online_bench.py --kind sd15 sdxl --budget-s 540 --commit <git rev-parse HEAD> --out $OUT

The budget is shared 3 : 4 between SD 1.5 and SDXL (what one kind leaves goes to the next); a compile section starts
only with ``--compile-reserve-s`` left in its kind's share. ``--skip stored_unroll rss`` (etc.) drops sections.

CPU smoke (tiny UNets of tests/conftest.py's shapes, float32, no compile; seconds)::

    python scripts/gpu/online_bench.py --tiny --kind sd15 sdxl --out out/online_bench_tiny
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

SRC = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(SRC))

from clockwork.bench.models import SD_SCHEDULER  # noqa: E402
from clockwork.bench.timing import make_loop, time_loop  # noqa: E402
from scripts.provenance import git_commit  # noqa: E402

T0 = time.time()
EPOCH_PROMPTS = 50_000  # the paper's distillation caption set
PAPER_EPOCHS = 120
KIND_WEIGHT = {"sd15": 3, "sdxl": 4}  # share of the budget (SD 1.5 ~3 min, SDXL ~4 min on one H100)

# tests/conftest.py's SD15_TINY / SDXL_TINY (copied: the script imports no test code)
SD15_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 16, 32, 32),
    norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SDXL_TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32, 32),
    norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=[1, 1, 2],
    attention_head_dim=[2, 4, 4], use_linear_projection=True, cross_attention_dim=16, addition_embed_type="text_time",
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
)


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def host_memory() -> dict:
    """VmRSS (now) and VmHWM (the process's peak so far) in MiB, from /proc/self/status."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key.lower() + "_mib"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def gpu_memory(device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_config(text: str) -> dict:
    """The YAML subset configs/*.yaml use (nested maps of scalars and inline lists; ints parsed, the rest strings),
    so the script needs no YAML package."""
    root: dict = {}
    stack = [(-1, root)]
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        indent = len(line) - len(line.lstrip())
        key, _, val = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        val = val.strip()
        if not val:
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif val.startswith("["):
            parent[key] = [v.strip() for v in val.strip("[]").split(",") if v.strip()]
        else:
            parent[key] = int(val) if re.fullmatch(r"-?\d+", val) else val
    return root


def read_config(kind: str) -> dict:
    """``adaptor:`` and ``distill: online:`` (empty when absent) of configs/<kind>.yaml."""
    root = parse_config((SRC / "configs" / f"{kind}.yaml").read_text())
    return {"adaptor": root.get("adaptor", {}), "online": (root.get("distill") or {}).get("online") or {}}


class SyntheticPrompts:
    """A streaming :class:`clockwork.online.PromptSource` of ``n`` prompts: prompt i's embeddings are drawn on the
    fly from a generator seeded by i (nothing is held, whatever ``n``)."""

    def __init__(self, n: int, tokens: int, dim: int, pooled: int | None = None, pixels: int = 1024, salt: int = 0):
        self.n, self.tokens, self.dim, self.pooled, self.pixels, self.salt = n, tokens, dim, pooled, pixels, salt

    def __len__(self) -> int:
        return self.n

    def one(self, i: int):
        g = torch.Generator().manual_seed(self.salt * 1_000_003 + int(i))
        emb = torch.randn(self.tokens, self.dim, generator=g)
        pooled = None if self.pooled is None else torch.randn(self.pooled, generator=g)
        return emb, pooled

    def embed(self, indices):
        rows = [self.one(i) for i in indices]
        embeds = torch.stack([r[0] for r in rows])
        if self.pooled is None:
            return embeds, None
        p = float(self.pixels)
        time_ids = torch.tensor([[p, p, 0.0, 0.0, p, p]] * len(rows))
        return embeds, {"text_embeds": torch.stack([r[1] for r in rows]), "time_ids": time_ids}


def build_world(kind: str, args) -> SimpleNamespace:
    """The random-weight UNet on the device, the DPM++ sampler, the adaptor's loop iterations and the prompts."""
    from diffusers import UNet2DConditionModel

    from clockwork.clock import Clock, adaptor_loop_indices
    from clockwork.flops import SD15, SDXL
    from clockwork.schedulers import make_scheduler

    device = torch.device(args.device)
    dtype = torch.float32 if args.tiny else torch.float16
    cfg = dict((SDXL_TINY if kind == "sdxl" else SD15_TINY) if args.tiny else (SDXL if kind == "sdxl" else SD15))
    torch.manual_seed(args.seed)
    t0 = time.time()
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    unet = unet.to(dtype=dtype).eval().requires_grad_(False)
    sync(device)
    c = unet.config
    tokens = 8 if args.tiny else 77
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim if kind == "sdxl" else None
    pixels = 8 * c.sample_size
    source = lambda n: SyntheticPrompts(n, tokens, c.cross_attention_dim, pooled, pixels)  # noqa: E731
    neg_src = SyntheticPrompts(1, tokens, c.cross_attention_dim, pooled, pixels, salt=1)
    neg_embeds, neg_added = neg_src.embed([0])
    negative = (neg_embeds, neg_added) if pooled else neg_embeds
    sched = make_scheduler("dpm++", SD_SCHEDULER)
    conf = read_config(kind)
    ad = conf["adaptor"]
    adaptor = dict(kind=ad.get("kind", "resnet"), width=args.adaptor_width or int(ad.get("width", 512)),
                   depth=args.adaptor_depth or int(ad.get("depth", 2)),
                   inputs=list(ad.get("inputs", ["r_in", "r_out_prev", "time", "text"])))
    uses_prev = "r_out_prev" in adaptor["inputs"]
    loops = adaptor_loop_indices(sched, args.steps, Clock(args.clock), uses_prev)
    online_conf = conf["online"]
    refresh_every = args.refresh_every or int(online_conf.get("refresh_every", 8))
    params = sum(p.numel() for p in unet.parameters())
    log(f"{kind}: UNet {params / 1e6:.0f} M params ({dtype}) on {device} in {time.time() - t0:.1f}s; adaptor loops "
        f"{loops}; adaptor {adaptor}; refresh_every {refresh_every}")
    return SimpleNamespace(kind=kind, unet=unet, device=device, dtype=dtype, sched=sched, loops=loops, source=source,
                           negative=negative, adaptor=adaptor, refresh_every=refresh_every,
                           refresh_every_from=("configs" if "refresh_every" in online_conf and not args.refresh_every
                                               else "flag" if args.refresh_every else "default"),
                           unet_params_m=round(params / 1e6, 1), cache={})


def timed(setup, run, device, warmup: int, repeats: int) -> dict:
    """``clockwork.bench.timing.time_loop`` (CUDA events after warm-up); milliseconds per run."""
    times, out, first_s, _, _, _ = time_loop(setup, run, device, warmup, repeats)
    del out
    return {"median_ms": round(statistics.median(times), 3), "times_ms": [round(t, 3) for t in times],
            "first_call_s": round(first_s, 3), "warmup": max(1, warmup), "repeats": repeats}


def compile_failure(e: BaseException) -> str:
    log(f"COMPILE FAILED ({type(e).__name__}): {str(e).splitlines()[0][:300] if str(e) else ''}")
    log(traceback.format_exc()[-3000:])
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass
    return f"{type(e).__name__}: {str(e)[:1500]}"


def dynamo_counters() -> dict:
    """Graph breaks and captured graphs so far (all compiles of this process), when torch exposes them."""
    try:
        from torch._dynamo.utils import counters

        return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "graph_break_reasons": sorted(counters["graph_break"])[:10]}
    except Exception:  # noqa: BLE001
        return {}


# ---- the measurements ---------------------------------------------------------------------------------------------

def plain_loop(w, args, compiled: bool) -> dict:
    """The plain sampling loop: scheduler + batch CFG, the UNet (or ``torch.compile(unet)``) called directly."""
    b = args.batch
    embeds, added = w.source(EPOCH_PROMPTS).embed(list(range(b)))
    neg, neg_added = w.negative if isinstance(w.negative, tuple) else (w.negative, None)
    from clockwork.trajectories import cfg_added

    ctx = torch.cat([neg.to(w.device, w.dtype).expand_as(embeds), embeds.to(w.device, w.dtype)])
    added = cfg_added(added, neg_added, b, w.device, w.dtype)
    c = w.unet.config
    lat0 = torch.randn(b, c.in_channels, c.sample_size, c.sample_size, generator=torch.Generator().manual_seed(0))
    lat0 = lat0.to(w.device, w.dtype)
    model = torch.compile(w.unet) if compiled else w.unet
    call = lambda x, t, ehs: model(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added).sample  # noqa: E731
    spec = SimpleNamespace(scheduler=w.sched, guidance=args.guidance)
    setup, run = make_loop(call, spec, lat0, ctx, args.steps)
    res = {"ran": "compiled" if compiled else "eager"}
    try:
        res.update(timed(setup, run, w.device, args.compile_warmup if compiled else args.warmup, args.repeats))
    except Exception as e:  # noqa: BLE001
        if not compiled:
            raise
        return {"ran": "none (compile failed; plain_eager is the eager number)", "compile_error": compile_failure(e)}
    res["images_per_s"] = round(b * 1e3 / res["median_ms"], 3)
    if compiled:
        res["compile_s_approx"] = res["first_call_s"]
        res["dynamo"] = dynamo_counters()
    return res


def _unroller(w, args, source, compile: bool, buffer_prompts: int | None = None):
    from clockwork.online import OnlineConfig, OnlineUnroller

    online = OnlineConfig(buffer_prompts=buffer_prompts or args.batch, unroll_batch=args.batch,
                          refresh_every=w.refresh_every, seed=0, compile=compile)
    return OnlineUnroller(w.unet, w.sched, source, w.negative, cut=args.cut, loop_indices=w.loops, steps=args.steps,
                          guidance=args.guidance, online=online)


def is_compiled(unroller) -> bool:
    return getattr(unroller._full_step, "__self__", None) is not unroller.view


def online_unroll(w, args, compile: bool) -> dict:
    """``OnlineUnroller.unroll(k)`` (one refresh: ``--batch`` prompts, the adaptor's pairs kept on the device)."""
    src = w.source(EPOCH_PROMPTS)
    res = {}
    for attempt in ((True, False) if compile else (False,)):
        un = _unroller(w, args, src, attempt)
        k = [0]

        def setup():
            k[0] += 1

        try:
            res.update(timed(setup, lambda: un.unroll(k[0]), w.device, args.compile_warmup if attempt else args.warmup,
                             args.repeats))
            res["ran"] = ("compiled" if is_compiled(un) else "eager (compile failed)" if compile and not attempt
                          else "eager (OnlineConfig.compile is CUDA only)" if compile else "eager")
            break
        except Exception as e:  # noqa: BLE001
            if not attempt:
                raise
            res["compile_error"] = compile_failure(e)
            log("online unroll: falling back to eager")
    res["images_per_s"] = round(args.batch * 1e3 / res["median_ms"], 3)
    if res["ran"] == "compiled":
        res["compile_s_approx"] = res["first_call_s"]
        res["dynamo"] = dynamo_counters()
    rec = un.unroll(0)
    w.cache["record"] = rec  # the adaptor-training section trains on these pairs
    w.cache["compile_ok"] = w.cache.get("compile_ok", False) or res["ran"] == "compiled"
    shapes = un.record_shapes()
    a = len(w.loops)
    elt = torch.finfo(w.dtype).bits // 8
    per_prompt = a * 2 * (math.prod(shapes["r_in"]) + 2 * math.prod(shapes["r_out"]) + shapes["temb"][0]) + \
        2 * shapes["text"][0]
    res["buffer_mb_per_prompt"] = round(per_prompt * elt / 1e6, 2)
    res["record_shapes"] = {k: list(v) for k, v in shapes.items()}
    w.cache["buffer_mb_per_prompt"] = res["buffer_mb_per_prompt"]
    return res


def stored_unroll(w, args) -> dict:
    """The stored path's ``unroll_batch`` (every step, cut ``--cut``, copied to host memory), for reference."""
    from clockwork.trajectories import unroll_batch

    embeds, added = w.source(EPOCH_PROMPTS).embed(list(range(args.batch)))
    neg, neg_added = w.negative if isinstance(w.negative, tuple) else (w.negative, None)

    def run():
        return unroll_batch(w.unet, w.sched, [args.cut], embeds, neg, args.steps, args.guidance,
                            torch.Generator().manual_seed(0), added_cond_kwargs=added,
                            negative_added_cond_kwargs=neg_added)

    res = {"ran": "eager"}
    res.update(timed(lambda: None, run, w.device, args.warmup, args.repeats))
    res["images_per_s"] = round(args.batch * 1e3 / res["median_ms"], 3)
    return res


def make_adaptor(w, args):
    from clockwork.adaptors import build_adaptor
    from clockwork.cut import UNetCut

    torch.manual_seed(args.seed + 1)
    a = w.adaptor
    return build_adaptor(a["kind"], UNetCut(w.unet, args.cut), width=a["width"], depth=a["depth"],
                         inputs=a["inputs"]).to(w.device)


def adaptor_training(w, args) -> dict:
    """Adaptor steps/s on a PairBuffer holding one refresh: ``distill_online``'s step (fp32 adaptor, as it trains)."""
    import torch.nn.functional as F

    from clockwork.online import PairBuffer

    rec = w.cache.pop("record", None)
    if rec is None:
        rec = _unroller(w, args, w.source(EPOCH_PROMPTS), False).unroll(0)
    shapes = {"r_in": rec["r_in"].shape[2:], "r_out": rec["target"].shape[2:], "temb": rec["temb"].shape[2:],
              "text": rec["text"].shape[1:]}
    buf = PairBuffer(args.batch, len(w.loops), shapes, w.device, w.dtype)
    buf.write(rec, 0)
    adaptor = make_adaptor(w, args).train()
    params = [p for p in adaptor.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    n = args.train_steps

    def run():
        for _ in range(n):
            idx = torch.randint(0, len(buf), (args.train_batch,), generator=gen)
            b = buf.batch(idx, w.device)
            pred = adaptor(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
            loss = F.mse_loss(pred.float(), b["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return loss.detach()

    res = {"ran": "eager", "steps_per_run": n, "train_batch": args.train_batch,
           "adaptor": dict(w.adaptor, params_m=round(sum(p.numel() for p in params) / 1e6, 2))}
    res.update(timed(lambda: None, run, w.device, args.warmup, args.repeats))
    res["steps_per_s"] = round(n * 1e3 / res["median_ms"], 3)
    w.cache["train_steps_per_s"] = res["steps_per_s"]
    return res


def run_distill(w, args, n_prompts: int, steps: int, buffer_prompts: int, compile: bool) -> dict:
    """One ``distill_online`` run; the steady rates come from its log calls (every ``refresh_every`` steps)."""
    from clockwork.distill import DistillConfig
    from clockwork.online import OnlineConfig, distill_online

    stamps: list[tuple[int, float]] = []

    def on_log(step, loss):
        stamps.append((step, time.perf_counter()))  # the loss was read back: the device is synchronised here

    online = OnlineConfig(buffer_prompts=buffer_prompts, unroll_batch=args.batch, refresh_every=w.refresh_every,
                          seed=0, compile=compile)
    cfg = DistillConfig(steps=steps, batch_size=args.train_batch, lr=1e-4, grad_clip=1.0, seed=0,
                        log_every=w.refresh_every, checkpoint_every=10**9)
    gc.collect()
    if w.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(w.device)
    host_before = host_memory()
    sync(w.device)
    t0 = time.perf_counter()
    hist = distill_online(make_adaptor(w, args), w.unet, w.sched, w.source(n_prompts), w.negative, cut=args.cut,
                          loop_indices=w.loops, steps=args.steps, guidance=args.guidance, cfg=cfg, online=online,
                          device=w.device, on_log=on_log, progress=False)
    sync(w.device)
    wall = time.perf_counter() - t0
    res = {"prompts": n_prompts, "adaptor_steps": steps, "buffer_prompts": buffer_prompts, "unroll_batch": args.batch,
           "refresh_every": w.refresh_every, "refreshes": online.refreshes_at(steps - 1) if steps else 0,
           "wall_s": round(wall, 3), "final_loss": hist[-1]["loss"] if hist else None,
           "host_before": host_before, "host_after": host_memory(), "gpu": gpu_memory(w.device)}
    if len(stamps) >= 2:
        (s0, t_0), (s1, t_1) = stamps[0], stamps[-1]
        dt = t_1 - t_0
        refreshes = online.refreshes_at(s1 - 1) - online.refreshes_at(s0 - 1)
        res["steady"] = {"from_step": s0, "to_step": s1, "seconds": round(dt, 4), "refreshes": refreshes,
                         "adaptor_steps_per_s": round((s1 - s0) / dt, 3),
                         "images_unrolled_per_s": round(refreshes * args.batch / dt, 3)}
    return res


def distill_end_to_end(w, args) -> dict:
    """A short real ``distill_online`` on 50 000 streamed prompts, compiled teacher step if that compiled before."""
    want = not args.no_compile and w.cache.get("compile_ok", False)  # the online_compiled section compiled
    res, err = None, None
    for compile in ((True, False) if want else (False,)):
        try:
            res = run_distill(w, args, EPOCH_PROMPTS, args.distill_steps, args.buffer_prompts, compile)
            res["ran"] = "compiled teacher step" if compile else "eager"
            break
        except Exception as e:  # noqa: BLE001
            if not compile:
                raise
            err = compile_failure(e)
    if want and res["ran"] == "eager":
        res["compile_error"] = err
    if res["ran"] != "eager":
        res["dynamo"] = dynamo_counters()
    if "buffer_mb_per_prompt" in w.cache:
        res["buffer_gb"] = round(res["buffer_prompts"] * w.cache["buffer_mb_per_prompt"] / 1e3, 3)
    if "steady" in res:
        tr = w.cache.get("train_steps_per_s")
        st = res["steady"]
        if tr:  # time the adaptor steps of the window take at the measured training rate
            st["training_share_est"] = round(min(1.0, (st["to_step"] - st["from_step"]) / tr / st["seconds"]), 4)
        w.cache["steady"] = st
    return res


def projection(w, args) -> dict:
    """One 50 000-prompt epoch and the paper's 120 at the end-to-end run's steady rate."""
    st = w.cache.get("steady")
    if not st:
        raise RuntimeError("no steady rate from the distill_online section (skipped, failed or too few steps)")
    epoch_s = EPOCH_PROMPTS / st["images_unrolled_per_s"]
    steps = EPOCH_PROMPTS / args.batch * w.refresh_every
    res = {"epoch_prompts": EPOCH_PROMPTS, "epoch_s": round(epoch_s, 1), "epoch_h": round(epoch_s / 3600, 3),
           "adaptor_steps_per_epoch": int(steps), "epochs": PAPER_EPOCHS,
           "total_h": round(PAPER_EPOCHS * epoch_s / 3600, 2), "total_days": round(PAPER_EPOCHS * epoch_s / 86400, 3)}
    if "training_share_est" in st:
        res["training_share_est"] = st["training_share_est"]
        res["teacher_share_est"] = round(1 - st["training_share_est"], 4)
    return res


def rss_bounded(w, args) -> dict:
    """Host RSS after a brief eager ``distill_online`` with N = 1 000 and N = 50 000 streamed prompts."""
    res = {"ran": "eager", "runs": {}}
    for n in args.rss_prompts:
        # one refresh fills the buffer; step k * refresh_every (< steps) starts refresh k after it
        r = run_distill(w, args, n, w.refresh_every * args.rss_refreshes + 1, args.batch, False)
        res["runs"][str(n)] = {k: r[k] for k in ("prompts", "adaptor_steps", "refreshes", "wall_s", "host_before",
                                                 "host_after")}
        log(f"  N={n}: host {r['host_after']}")
    vals = [v["host_after"].get("vmrss_mib") for v in res["runs"].values()]
    if len(vals) >= 2 and None not in vals:
        res["vmrss_after_spread_mib"] = round(max(vals) - min(vals), 1)
    return res


# ---- the run --------------------------------------------------------------------------------------------------------

SECTIONS = [  # (name, function, needs compile) in order of priority
    ("plain_eager", lambda w, a: plain_loop(w, a, False), False),
    ("plain_compiled", lambda w, a: plain_loop(w, a, True), True),
    ("online_eager", lambda w, a: online_unroll(w, a, False), False),
    ("online_compiled", lambda w, a: online_unroll(w, a, True), True),
    ("adaptor_training", adaptor_training, False),
    ("distill_online", distill_end_to_end, False),
    ("projection", projection, False),
    ("rss", rss_bounded, False),
    ("stored_unroll", stored_unroll, False),
]


def ratios(r: dict) -> dict:
    def ips(k):  # a compiled section that fell back to eager does not count as compiled
        s = r.get(k) or {}
        return s.get("images_per_s") if not k.endswith("_compiled") or s.get("ran") == "compiled" else None

    out = {}
    plain = ips("plain_compiled") or ips("plain_eager")
    if plain:
        out["plain_reference"] = "plain_compiled" if ips("plain_compiled") else "plain_eager"
        for k in ("online_compiled", "online_eager", "stored_unroll"):
            if ips(k):
                out[f"{k}_vs_plain"] = round(ips(k) / plain, 4)
        if ips("online_eager") and ips("plain_eager"):
            out["online_eager_vs_plain_eager"] = round(ips("online_eager") / ips("plain_eager"), 4)
        best = max(filter(None, (ips("online_compiled"), ips("online_eager"))), default=None)
        if best:
            out["best_online_vs_plain"] = round(best / plain, 4)
            out["goal"] = 0.70
            out["meets_goal"] = best / plain >= 0.70
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def to_markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Online distillation bench ({m['device']})", "",
             f"{m['date']}, torch {m['torch']}, diffusers {m['diffusers']}, commit `{m['commit']}`{' (tiny, CPU)' if m['tiny'] else ''}",
             f"`{m['command']}`", "",
             f"batch {m['args']['batch']} prompts, {m['args']['steps']} DPM++ steps, CFG {m['args']['guidance']}, "
             f"cut {m['args']['cut']}, clock {m['args']['clock']}", ""]
    for kind, r in report["kinds"].items():
        lines += [f"## {kind}", "", "| measurement | ran | value | |", "|---|---|---|---|"]
        for name in ("plain_eager", "plain_compiled", "online_eager", "online_compiled", "stored_unroll"):
            s = r.get(name) or {}
            val = f"{fmt(s['images_per_s'])} images/s ({fmt(s['median_ms'])} ms)" if "images_per_s" in s else \
                s.get("skipped") or s.get("error") or s.get("ran", "-")
            extra = f"compile+first {fmt(s.get('compile_s_approx'))} s" if "compile_s_approx" in s else \
                ("compile failed" if "compile_error" in s else "")
            lines.append(f"| {name} | {s.get('ran', '-')} | {val} | {extra} |")
        rt = r.get("ratios") or {}
        if "best_online_vs_plain" in rt:
            lines.append(f"| online / plain ({rt['plain_reference']}) | | {fmt(rt.get('online_compiled_vs_plain'))} "
                         f"compiled, {fmt(rt.get('online_eager_vs_plain'))} eager | goal 0.70: "
                         f"{'met' if rt['meets_goal'] else 'NOT met'} |")
        s = r.get("adaptor_training") or {}
        if "steps_per_s" in s:
            a = s["adaptor"]
            lines.append(f"| adaptor training | eager fp32 | {fmt(s['steps_per_s'])} steps/s | {a['kind']} w{a['width']} "
                         f"d{a['depth']} ({fmt(a['params_m'])} M), batch {s['train_batch']} |")
        s = r.get("distill_online") or {}
        if "steady" in s:
            st, g, h = s["steady"], s.get("gpu", {}), s["host_after"]
            lines.append(f"| distill_online | {s['ran']} | {fmt(st['adaptor_steps_per_s'])} steps/s, "
                         f"{fmt(st['images_unrolled_per_s'])} images/s | training share ~{fmt(st.get('training_share_est'))}, "
                         f"{s['adaptor_steps']} steps, buffer {s['buffer_prompts']}, refresh every {s['refresh_every']} |")
            lines.append(f"| memory | | GPU peak {fmt(g.get('peak_allocated_gib'))} GiB alloc / "
                         f"{fmt(g.get('peak_reserved_gib'))} GiB reserved | host VmRSS {fmt(h.get('vmrss_mib'))} MiB, "
                         f"VmHWM {fmt(h.get('vmhwm_mib'))} MiB (before: {fmt(s['host_before'].get('vmrss_mib'))}) |")
        elif s:
            lines.append(f"| distill_online | | {s.get('skipped') or s.get('error') or 'no steady window'} | |")
        s = r.get("projection") or {}
        if "epoch_s" in s:
            lines.append(f"| one 50k epoch | | {fmt(s['epoch_h'])} h ({s['adaptor_steps_per_epoch']} adaptor steps) | "
                         f"{s['epochs']} epochs: {fmt(s['total_h'])} h = {fmt(s['total_days'])} days |")
        s = r.get("rss") or {}
        if "runs" in s:
            vals = ", ".join(f"N={n}: {fmt(v['host_after'].get('vmrss_mib'))} MiB" for n, v in s["runs"].items())
            lines.append(f"| host RSS after | eager | {vals} | spread {fmt(s.get('vmrss_after_spread_mib'))} MiB |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    tmp = out / "online_bench.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out / "online_bench.json")
    (out / "online_bench.md").write_text(to_markdown(report))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--kind", nargs="+", choices=["sd15", "sdxl"], default=["sd15"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU, float32, tiny UNets, no compile: a smoke run in seconds")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="sections that would start later than this (s from the start) are skipped; shared between "
                         "kinds (SD 1.5 : SDXL = 3 : 4, time one kind leaves goes to the next)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile sections")
    ap.add_argument("--compile-reserve-s", type=float, default=90.0,
                    help="start a compile section only with this much of its kind's budget share left")
    ap.add_argument("--batch", type=int, default=None, help="prompts per loop / unroll (default 16; --tiny 4)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--cut", type=int, default=1)
    ap.add_argument("--clock", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs before timing (eager)")
    ap.add_argument("--compile-warmup", type=int, default=2, help="warm-up runs of compiled sections (the 1st compiles)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs; the median is reported (default 3; --tiny 2)")
    ap.add_argument("--train-steps", type=int, default=None, help="adaptor steps per timed run (default 20; --tiny 3)")
    ap.add_argument("--train-batch", type=int, default=16, help="adaptor batch (configs' distill.batch_size)")
    ap.add_argument("--adaptor-width", type=int, default=None, help="default: configs/<kind>.yaml (--tiny 32)")
    ap.add_argument("--adaptor-depth", type=int, default=None, help="default: configs/<kind>.yaml")
    ap.add_argument("--refresh-every", type=int, default=None,
                    help="default: configs/<kind>.yaml distill.online.refresh_every, else 8")
    ap.add_argument("--distill-steps", type=int, default=None,
                    help="adaptor steps of the end-to-end distill_online (default 64; --tiny 16)")
    ap.add_argument("--buffer-prompts", type=int, default=None, help="its buffer (default 2 x batch)")
    ap.add_argument("--rss-prompts", type=int, nargs="+", default=[1_000, 50_000])
    ap.add_argument("--rss-refreshes", type=int, default=1, help="refreshes after the fill in each RSS run")
    ap.add_argument("--skip", nargs="+", default=[], choices=[s[0] for s in SECTIONS], metavar="SECTION",
                    help="sections not to run: " + ", ".join(s[0] for s in SECTIONS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD, else 'unknown')")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.batch = args.batch or (4 if tiny else 16)
    args.repeats = args.repeats or (2 if tiny else 3)
    args.train_steps = args.train_steps or (3 if tiny else 20)
    args.distill_steps = args.distill_steps or (16 if tiny else 64)
    args.buffer_prompts = args.buffer_prompts or 2 * args.batch
    if tiny:
        args.adaptor_width = args.adaptor_width or 32
        args.no_compile = True
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device here: use --tiny (CPU) or --device cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers
    from clockwork.bench.run import _env

    device = torch.device(args.device)
    env = _env(device)
    report = {"meta": {"device": env.get("device_name", str(device)), "torch": torch.__version__,
                       "diffusers": diffusers.__version__, "commit": args.commit or git_commit(),
                       "command": " ".join([Path(sys.executable).name] + sys.argv), "date":
                       datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "tiny": tiny,
                       "env": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "budget_s": args.budget_s},
              "kinds": {}}
    log(f"online bench on {report['meta']['device']}: torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"commit {report['meta']['commit'][:12]}, kinds {args.kind}, budget {args.budget_s:.0f}s")
    write(report, args.out)
    for i, kind in enumerate(args.kind):
        left = args.budget_s - (time.time() - T0)
        share = KIND_WEIGHT[kind] / sum(KIND_WEIGHT[k] for k in args.kind[i:])
        deadline = time.time() + left * share
        r = report["kinds"][kind] = {"started_s": round(time.time() - T0, 1), "deadline_s": round(deadline - T0, 1)}
        try:
            w = build_world(kind, args)
        except Exception as e:  # noqa: BLE001
            r["error"] = f"build: {type(e).__name__}: {e}"
            log(traceback.format_exc())
            write(report, args.out)
            continue
        r["unet_params_m"], r["adaptor_loops"] = w.unet_params_m, w.loops
        r["refresh_every"], r["refresh_every_from"] = w.refresh_every, w.refresh_every_from
        for name, fn, needs_compile in SECTIONS:
            if name in args.skip:
                r[name] = {"skipped": "--skip"}
                continue
            if needs_compile and args.no_compile:
                r[name] = {"skipped": "--no-compile" + (" (--tiny)" if tiny else "")}
                continue
            if time.time() > deadline - (args.compile_reserve_s if needs_compile else 0.0):
                r[name] = {"skipped": f"budget ({kind} deadline at +{deadline - T0:.0f}s)"}
                log(f"{kind} {name}: skipped (budget)")
                write(report, args.out)
                continue
            log(f"{kind} {name} ...")
            t0 = time.time()
            try:
                r[name] = fn(w, args)
            except Exception as e:  # noqa: BLE001
                r[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
                log(traceback.format_exc()[-4000:])
            r[name]["section_s"] = round(time.time() - t0, 2)
            r["ratios"] = ratios(r)
            s = r[name]
            log(f"{kind} {name}: " + ", ".join(f"{k}={s[k]}" for k in ("ran", "images_per_s", "steps_per_s", "steady",
                                                                        "epoch_h", "vmrss_after_spread_mib", "error")
                                               if k in s) + f" ({s['section_s']:.1f}s)")
            write(report, args.out)
        del w
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["meta"]["wall_s"] = round(time.time() - T0, 1)
    write(report, args.out)
    log(f"done in {time.time() - T0:.0f}s: {args.out / 'online_bench.json'}, {args.out / 'online_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
