"""Model-step distillation: train an adaptor to predict the teacher's r_out(t) at adaptor steps.

Loss = MSE(adaptor(r_in(t), r_out(t+1), temb(t), text), r_out(t)), with r_in(t) and r_out(t+1)
from the teacher trajectory (teacher forcing), only at the loop iterations where the clock runs the
adaptor. Adam, lr 1e-4 by default (the paper). Checkpoints are adaptor folders (safetensors) plus an
optimizer state, written atomically; training resumes from the latest one. A NaN/Inf loss aborts
with a clear error before anything is overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class DistillConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 25
    grad_clip: float | None = 1.0


class PairDataset:
    """(r_in(t_i), r_out(t_{i-1}), temb(t_i), text, r_out(t_i)) for the given loop iterations i >= 1."""

    def __init__(self, traj: dict[str, torch.Tensor], loop_indices: Sequence[int]):
        steps = traj["r_in"].shape[0]
        bad = [i for i in loop_indices if i < 1 or i >= steps]
        if bad:
            raise ValueError(f"adaptor loop indices {bad} are outside 1..{steps - 1} of these trajectories")
        if not loop_indices:
            raise ValueError("no adaptor steps to train on (clock 1 never uses the adaptor)")
        self.traj = traj
        self.loop_indices = torch.tensor(list(loop_indices))
        self.per_step = traj["r_in"].shape[1]

    def __len__(self) -> int:
        return len(self.loop_indices) * self.per_step

    def batch(self, idx: torch.Tensor, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
        step = self.loop_indices[idx // self.per_step]
        j = idx % self.per_step
        t = self.traj
        return {
            "r_in": t["r_in"][step, j].to(device, dtype),
            "r_out_prev": t["r_out"][step - 1, j].to(device, dtype),
            "temb": t["temb"][step].to(device, dtype),
            "text": t["text"][j].to(device, dtype),
            "target": t["r_out"][step, j].to(device, dtype),
        }


def _atomic_save(adaptor, optimizer, step: int, history: list, ckpt_dir: Path, gen: torch.Generator,
                 acc: tuple[float, int]) -> None:
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    adaptor.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(gen.get_state(), tmp / "rng_state.pt")  # the batch sampler's state: a resumed run draws the same batches
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history, "loss_acc": list(acc)}))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def distill(
    adaptor: torch.nn.Module,
    data: PairDataset,
    cfg: DistillConfig,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``adaptor`` in place; returns the loss history [{"step", "loss"}]. Resumes from ``checkpoint_dir``."""
    device = torch.device(device)
    adaptor.to(device).train()
    params = [p for p in adaptor.parameters() if p.requires_grad]
    if not params:
        raise ValueError("this adaptor has no trainable parameters (the identity adaptor needs no distillation)")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    gen = torch.Generator().manual_seed(cfg.seed * 7919)
    acc, acc_n = 0.0, 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt and (ckpt / "trainer_state.json").is_file():
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        adaptor.load_state_dict(load_file(str(ckpt / "diffusion_pytorch_model.safetensors")))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
        step, history = int(state["step"]), list(state["history"])
        if (ckpt / "rng_state.pt").is_file():  # same batches as an uninterrupted run (bitwise on a CPU)
            gen.set_state(torch.load(ckpt / "rng_state.pt"))
            acc, acc_n = state.get("loss_acc", [0.0, 0])
        else:  # a checkpoint written before the sampler state was saved
            gen.manual_seed(cfg.seed * 7919 + step)
    pbar = tqdm(total=cfg.steps, initial=step, desc="distill", disable=not progress, mininterval=2)
    while step < cfg.steps:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        b = data.batch(idx, device)
        pred = adaptor(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
        loss = F.mse_loss(pred.float(), b["target"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"distillation loss is {loss.item()} at step {step}: lower distill.lr or check the trajectories; "
                "the last good checkpoint is kept"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        acc += loss.item()
        acc_n += 1
        pbar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = acc / acc_n
            history.append({"step": step, "loss": mean})
            pbar.set_postfix(loss=f"{mean:.4g}")
            if on_log:
                on_log(step, mean)
            acc, acc_n = 0.0, 0
        if ckpt and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _atomic_save(adaptor, opt, step, history, ckpt, gen, (acc, acc_n))
    pbar.close()
    adaptor.eval()
    return history


@torch.no_grad()
def evaluate_mse(adaptor, data: PairDataset, device="cpu", batch_size: int = 256) -> float:
    """Mean squared error of the adaptor on all pairs of ``data`` (e.g. held-out trajectories)."""
    adaptor.to(device).eval()
    total, n = 0.0, 0
    for s in range(0, len(data), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(data)))
        b = data.batch(idx, device)
        pred = adaptor(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
        total += F.mse_loss(pred.float(), b["target"], reduction="sum").item()
        n += b["target"].numel()
    return total / max(n, 1)
