"""Train the embedded teacher: v-prediction MSE, classifier-free-guidance dropout, EMA, resumable.

Runs on whatever device is given; on a GPU it uses bf16 autocast, channels_last and (optionally)
torch.compile. Training stops at ``max_steps`` or at a wall-clock ``deadline_s``, whichever comes first,
and writes a resumable checkpoint (EMA weights + step + data-order seed) atomically.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from clockwork.embedded.data import CaptionedFashion
from clockwork.embedded.teacher import build_teacher, save_scheduler_config, training_scheduler
from clockwork.embedded.text import EmbeddingTable


@dataclass
class TeacherTrainConfig:
    batch_size: int = 512
    lr: float = 4e-4
    warmup_steps: int = 500
    max_steps: int = 100_000
    ema_decay: float = 0.9995
    cfg_dropout: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    compile: bool = False
    deadline_s: float | None = None
    log_every: int = 200


def _shard_save(state: dict[str, torch.Tensor], prefix: Path, max_bytes: int = 12 * 2**20, metadata=None) -> list[Path]:
    """Save a state dict as safetensors shards of at most ``max_bytes`` (device transfers cap file sizes)."""
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v.detach().contiguous().cpu()
        size += nbytes
    if cur:
        shards.append(cur)
    paths = []
    for i, shard in enumerate(shards):
        p = prefix.parent / f"{prefix.name}-{i:02d}.safetensors"
        tmp = p.with_suffix(".tmp")
        save_file(shard, str(tmp), metadata=metadata)
        os.replace(tmp, p)
        paths.append(p)
    return paths


def _shard_load(prefix: Path) -> dict[str, torch.Tensor]:
    paths = sorted(prefix.parent.glob(f"{prefix.name}-*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no checkpoint shards {prefix}-*.safetensors")
    state = {}
    for p in paths:
        state.update(load_file(str(p)))
    return state


def train_teacher(
    out_dir: str | os.PathLike,
    embeddings: EmbeddingTable,
    data: CaptionedFashion,
    cfg: TeacherTrainConfig,
    device: str = "cpu",
    resume: bool = True,
) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    unet = build_teacher().to(dev)
    step = 0
    state_file = out_dir / "state.json"
    if resume and state_file.is_file():
        st = json.loads(state_file.read_text())
        unet.load_state_dict(_shard_load(out_dir / "ema"))
        step = int(st["step"])
        print(f"resumed from step {step}")
    sched = training_scheduler()
    alphas = sched.alphas_cumprod.to(dev)

    gray = data.gray.to(dev)
    colour, size = data.colour.to(dev), data.size.to(dev)
    text_idx = embeddings.index(data.texts).to(dev)
    states = embeddings.states.to(dev, torch.float32)
    amp = dev.type == "cuda"
    if amp:
        unet = unet.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), fused=amp)
    ema_params = list(ema.parameters())
    model_params = [p.detach() for p in unet.parameters()]

    def loss_fn(x0, ctx, t, noise):
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            pred = unet(xt, t, encoder_hidden_states=ctx).sample
        return F.mse_loss(pred.float(), v)

    step_fn = torch.compile(loss_fn) if cfg.compile else loss_fn
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step)
    log = []
    n = len(data)
    pbar = tqdm(total=cfg.max_steps, initial=step, desc="teacher", mininterval=5)
    running = None
    from clockwork.embedded.data import render

    while step < cfg.max_steps:
        if cfg.deadline_s is not None and time.time() - t_start > cfg.deadline_s:
            break
        idx = torch.randint(0, n, (cfg.batch_size,), device=dev, generator=gen)
        x0 = render(gray[idx], colour[idx], size[idx])
        tix = text_idx[idx]
        drop = torch.rand(cfg.batch_size, device=dev, generator=gen) < cfg.cfg_dropout
        tix = torch.where(drop, torch.zeros_like(tix), tix)
        ctx = states[tix]
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), device=dev, generator=gen)
        noise = torch.randn(x0.shape, device=dev, generator=gen)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        try:
            loss = step_fn(x0, ctx, t, noise)
        except Exception as e:  # torch.compile is an optimisation: never let it cost a training run
            if step_fn is loss_fn:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {e}); continuing eagerly")
            step_fn = loss_fn
            loss = step_fn(x0, ctx, t, noise)
        if step % 50 == 0 and not torch.isfinite(loss):  # checked sparsely: a sync per step costs throughput
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {step}; lower teacher.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        step += 1
        pbar.update(1)
        if step % cfg.log_every == 0:
            lv = loss.item()
            running = lv if running is None else 0.9 * running + 0.1 * lv
            log.append({"step": step, "loss": lv, "lr": lr, "elapsed_s": round(time.time() - t_start, 1)})
            pbar.set_postfix(loss=f"{running:.4f}")
    pbar.close()
    _shard_save(ema.state_dict(), out_dir / "ema")
    state_file.write_text(json.dumps({"step": step, "config": asdict(cfg)}))
    with open(out_dir / "log.jsonl", "a") as f:
        for row in log:
            f.write(json.dumps(row) + "\n")
    return {"step": step, "log": log, "ema": ema}


def export_teacher(ema, out_dir: str | os.PathLike, dtype=torch.float16) -> None:
    """Write a diffusers folder (config.json + fp16 safetensors) that ``UNet2DConditionModel.from_pretrained`` reads."""
    out_dir = Path(out_dir)
    m = copy.deepcopy(ema).to("cpu", dtype=dtype)
    m.save_pretrained(out_dir, safe_serialization=True)
    save_scheduler_config(out_dir / "scheduler")
