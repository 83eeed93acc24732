"""Model-step distillation: train an adaptor to predict the teacher's r_out(t) at adaptor steps.

Loss = MSE(adaptor(r_in(t), r_out(t+1), temb(t), text), r_out(t)), with r_in(t) and r_out(t+1)
from the teacher trajectory (teacher forcing), only at the loop iterations where the clock runs the
adaptor. Adam, lr 1e-4 by default (the paper).

``DistillConfig.output_weight = w > 0`` adds an output-space term: ``w * MSE(D(r_out_hat), D(r_out))`` with
D the teacher's always-run high-resolution decoder (boundary upsampler, kept up blocks, head) fed with the
skips of its high-resolution encoder at the same x_t, timestep and text context, i.e. the MSE between the
UNet output of an adaptor step and the teacher's own output at that state (:func:`output_space_mse`).
The teacher is frozen; gradients reach the adaptor through D. It needs a :class:`PairDataset` built with
the UNet inputs (``latents`` + ``ctx``; see there) and ``distill(..., teacher=UNetCut(teacher_unet, cut))``.
w = 0 (the default) is the plain r_out MSE, computed exactly as before. Checkpoints are adaptor folders (safetensors) plus an
optimizer state, written atomically; training resumes from the latest one. A NaN/Inf loss aborts
with a clear error before anything is overwritten.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clockwork.shards import ShardRows


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
    output_weight: float = 0.0  # weight of the output-space term (0: r_out MSE only; > 0 needs distill(teacher=))


@torch.no_grad()
def model_input_scales(scheduler, steps: int) -> torch.Tensor:
    """(S,) the factor ``scheduler.scale_model_input`` applies to x_t at each of the S loop iterations.

    1 for DPM-Solver(++), DDIM and PNDM; 1/sqrt(sigma^2 + 1) for Euler/Heun. Found by running a copy of the
    sampler through its steps on a dummy state (the scheduler passed in is not touched), so it follows
    every sampler's own step counting; raises if a sampler's input scaling is not one factor per step.
    """
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    ones, state = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    out = []
    for t in s.timesteps:
        y = s.scale_model_input(ones.clone(), t)
        y2 = s.scale_model_input(2 * ones, t)
        c = y.flatten()[0]
        if not (torch.all(y == c) and torch.allclose(y2, 2 * y)):
            raise ValueError(f"{type(scheduler).__name__}.scale_model_input is not a scalar factor per step")
        out.append(float(c))
        state = s.step(torch.zeros_like(state), t, state, return_dict=False)[0]
    return torch.tensor(out, dtype=torch.float32)


class PairDataset:
    """(r_in(t_i), r_out(t_{i-1}), temb(t_i), text, r_out(t_i)) for the given loop iterations i >= 1.

    ``traj["r_out_used"]``, when present (Clockwork's own rollouts), gives r_out(t_{i-1}) instead of
    ``traj["r_out"]``: the r_out the sampler actually had at the previous step.

    With ``traj["latents"]`` (S, N, C, H, W: x_t per row *before* ``scale_model_input``, as
    ``TrajectoryStore.load(..., with_latents=True)`` returns it) and ``traj["ctx"]`` (N, L, D: each row's text
    token states, the negative prompt's for unconditional rows), :meth:`batch` also returns the teacher's
    UNet inputs for the output-space loss: ``sample`` = latents * ``input_scale[i]`` (what the UNet saw;
    pass ``input_scale`` = :func:`model_input_scales` for samplers that scale their input - Euler, Heun; None
    means 1 at every step, right for DPM-Solver(++), DDIM, PNDM), ``timestep`` = ``traj["timesteps"][i]``
    and ``ctx``. ``has_inputs`` says whether it does. Latents at the used steps must be finite (shards store
    fp16: Euler/Heun's first state, sigma_max * noise, can overflow it, so step 0 is refused there).
    """

    def __init__(self, traj: dict[str, torch.Tensor], loop_indices: Sequence[int],
                 input_scale: torch.Tensor | Sequence[float] | None = None):
        steps = traj["r_in"].shape[0]
        bad = [i for i in loop_indices if i < 1 or i >= steps]
        if bad:
            raise ValueError(f"adaptor loop indices {bad} are outside 1..{steps - 1} of these trajectories")
        if not loop_indices:
            raise ValueError("no adaptor steps to train on (clock 1 never uses the adaptor)")
        self.traj = traj
        self.loop_indices = torch.tensor(list(loop_indices))
        self.per_step = traj["r_in"].shape[1]
        self.has_inputs = "latents" in traj and "ctx" in traj
        self.input_scale = None
        if self.has_inputs:
            rows = self.per_step
            if tuple(traj["latents"].shape[:2]) != (steps, rows):
                raise ValueError(f"latents {tuple(traj['latents'].shape)} do not match r_in's (steps, rows) = {(steps, rows)}")
            if traj["ctx"].shape[0] != rows or traj["ctx"].dim() != 3:
                raise ValueError(f"ctx {tuple(traj['ctx'].shape)} is not (rows={rows}, tokens, dim)")
            if "timesteps" not in traj or traj["timesteps"].shape[0] != steps:
                raise ValueError(f"the UNet inputs need timesteps for all {steps} steps")
            scale = torch.ones(steps) if input_scale is None else torch.as_tensor(input_scale, dtype=torch.float32)
            if scale.shape != (steps,):
                raise ValueError(f"input_scale has shape {tuple(scale.shape)}, expected ({steps},)")
            self.input_scale = scale
            bad = [int(i) for i in self.loop_indices if not _finite_at(traj["latents"], int(i))]
            if bad:  # e.g. Euler/Heun's first state, sigma_max * noise, overflows the shards' fp16
                raise ValueError(f"the stored latents at loop indices {bad} are not finite (fp16 overflow of a large-sigma "
                                 "state?); the output-space loss cannot be computed there")

    def __len__(self) -> int:
        return len(self.loop_indices) * self.per_step

    def to(self, device) -> "PairDataset":
        """The same pairs with every tensor on ``device`` (batches are then gathered there: no host copies).

        Pairs over a store's memory maps (``TrajectoryStore.load(..., lazy=True)``) stay where they are:
        batches are gathered on the host and :meth:`batch` moves them."""
        if any(isinstance(v, ShardRows) for v in self.traj.values()):
            return self
        moved = copy.copy(self)
        moved.traj = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.traj.items()}
        moved.loop_indices = self.loop_indices.to(device)
        if self.input_scale is not None:
            moved.input_scale = self.input_scale.to(device)
        return moved

    def batch(self, idx: torch.Tensor, device, dtype=torch.float32) -> dict[str, torch.Tensor]:
        idx = idx.to(self.loop_indices.device)
        step = self.loop_indices[idx // self.per_step]
        j = idx % self.per_step
        t = self.traj
        out = {
            "r_in": t["r_in"][step, j].to(device, dtype),
            # what the sampler had as r_out at the previous step: the teacher's, or on Clockwork's own rollouts
            # (clockwork.rollouts) what Clockwork used there (the adaptor's prediction after an adaptor step)
            "r_out_prev": t.get("r_out_used", t["r_out"])[step - 1, j].to(device, dtype),
            "temb": (t["temb"][step] if t["temb"].dim() == 2 else t["temb"][step, j]).to(device, dtype),  # per row: SDXL
            "text": t["text"][j].to(device, dtype),
            "target": t["r_out"][step, j].to(device, dtype),
        }
        if self.has_inputs:
            scale = self.input_scale[step].view(-1, 1, 1, 1)
            out["sample"] = (t["latents"][step, j].float() * scale).to(device, dtype)
            out["timestep"] = t["timesteps"][step].to(device, torch.float32)
            out["ctx"] = t["ctx"][j].to(device, dtype)
        return out


def _finite_at(latents, i: int, chunk_bytes: int = 1 << 26) -> bool:
    """Whether every row's latents at step ``i`` are finite; a lazy view is read a chunk of rows at a time."""
    if not isinstance(latents, ShardRows):
        return bool(torch.isfinite(latents[i]).all())
    rows = latents.shape[1]
    n = max(1, chunk_bytes // max(1, latents.shape[2:].numel() * latents.dtype.itemsize))
    return all(bool(torch.isfinite(latents[i, torch.arange(s, min(s + n, rows))]).all()) for s in range(0, rows, n))


def _teacher_outputs(teacher, r_out_hat: torch.Tensor, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D(r_out_hat), D(r_out) = the teacher's output, the teacher's r_in) at the batch's UNet inputs."""
    dt = teacher.unet.dtype
    with torch.no_grad():
        s = teacher.prepare(b["sample"].to(dt), b["timestep"], b["ctx"].to(dt))
        r_in, skips = teacher._encode(s)
        kept = skips[: len(skips) - teacher.shared_skips]  # as in UNetCut.adaptor_step
        ref = teacher._decode(b["target"].to(dt), kept, s)
    return teacher._decode(r_out_hat.to(dt), kept, s), ref, r_in


def output_space_mse(teacher, r_out_hat: torch.Tensor, b: dict) -> torch.Tensor:
    """MSE between the UNet output with ``r_out_hat`` at the cut and the teacher's output (with the batch's
    r_out), both through ``teacher``'s (a :class:`clockwork.cut.UNetCut`) high-resolution part at the batch's
    ``sample`` / ``timestep`` / ``ctx``: the output of ``teacher.adaptor_step`` vs that of ``teacher.full_step``.
    Gradients flow into ``r_out_hat`` only."""
    out, ref, _ = _teacher_outputs(teacher, r_out_hat, b)
    return F.mse_loss(out.float(), ref.float())


def _check_teacher(teacher, data: PairDataset, device: torch.device, cfg: DistillConfig) -> None:
    from clockwork.cut import UNetCut

    if not isinstance(teacher, UNetCut):
        raise ValueError(f"distill.output_weight={cfg.output_weight} > 0 needs teacher=UNetCut(<frozen teacher UNet>, cut) "
                         f"on the training device, got {type(teacher).__name__}")
    if not data.has_inputs:
        raise ValueError("distill.output_weight > 0 needs the teacher's UNet inputs in the PairDataset: trajectories "
                         "loaded with_latents=True and per-row text token states traj['ctx']")
    dev = next(teacher.unet.parameters()).device
    if dev.type != device.type or (dev.index is not None and device.index is not None and dev.index != device.index):
        raise ValueError(f"the teacher is on {dev} but distillation runs on {device}; move it there first")
    r = data.traj
    if teacher.r_out_channels != r["r_out"].shape[2] or teacher.r_in_channels != r["r_in"].shape[2]:
        raise ValueError(f"the teacher's cut={teacher.cut} (r_in {teacher.r_in_channels}, r_out {teacher.r_out_channels} "
                         f"channels) does not match these trajectories ({r['r_in'].shape[2]}, {r['r_out'].shape[2]})")


def _atomic_save(adaptor, optimizer, step: int, history: list, ckpt_dir: Path, gen: torch.Generator,
                 acc: tuple, extra: dict | None = None) -> None:
    """Write the checkpoint folder (adaptor, optimizer, batch sampler state, trainer_state.json with ``extra``'s
    keys added) next to ``ckpt_dir`` and swap it in, so a kill leaves the previous checkpoint or this one."""
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    adaptor.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(gen.get_state(), tmp / "rng_state.pt")  # the batch sampler's state: a resumed run draws the same batches
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history, "loss_acc": list(acc),
                                                          **(extra or {})}))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def _resumable(ckpt: Path | None, files: tuple[str, ...]) -> bool:
    """Whether ``ckpt`` holds a whole checkpoint to resume from (warns and starts over where files are missing)."""
    if not (ckpt and (ckpt / "trainer_state.json").is_file()):
        return False
    missing = [f for f in files if not (ckpt / f).is_file()]
    if missing:  # checkpoints are written atomically, so only a copy that dropped files gets here
        warnings.warn(f"checkpoint {ckpt} lacks {missing}; distilling from step 0")
    return not missing


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def _window_ends(step: int, cfg: DistillConfig, ckpt: Path | None) -> tuple[bool, bool]:
    """(log, checkpoint) after ``step``: every ``log_every`` / ``checkpoint_every`` steps and at the last one."""
    last = step == cfg.steps
    return step % cfg.log_every == 0 or last, bool(ckpt) and (step % cfg.checkpoint_every == 0 or last)


def distill(
    adaptor: torch.nn.Module,
    data: PairDataset,
    cfg: DistillConfig,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
    teacher=None,
) -> list[dict]:
    """Train ``adaptor`` in place; returns the loss history [{"step", "loss"}]. Resumes from ``checkpoint_dir``.

    ``cfg.output_weight > 0`` needs ``teacher`` = a :class:`clockwork.cut.UNetCut` of the teacher on ``device``
    (frozen and put in eval mode here) and ``data.has_inputs``; "loss" is then the total loss
    (r_out MSE + w * output MSE) and each history entry also has "r_out_mse" and "output_mse".
    """
    device = torch.device(device)
    w = float(cfg.output_weight)
    if w < 0 or not torch.isfinite(torch.tensor(w)):
        raise ValueError(f"output_weight must be >= 0, got {cfg.output_weight}")
    if w > 0:
        _check_teacher(teacher, data, device, cfg)
        teacher.unet.requires_grad_(False).eval()
    adaptor.to(device).train()
    params = [p for p in adaptor.parameters() if p.requires_grad]
    if not params:
        raise ValueError("this adaptor has no trainable parameters (the identity adaptor needs no distillation)")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    gen = torch.Generator().manual_seed(cfg.seed * 7919)
    acc, acc_n = 0.0, 0
    acc_mse = acc_out = 0.0  # the two terms' sums when output_weight > 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    resume = _resumable(ckpt, ("diffusion_pytorch_model.safetensors", "optimizer.pt"))
    if resume:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        adaptor.load_state_dict(load_file(str(ckpt / "diffusion_pytorch_model.safetensors")))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
        step, history = int(state["step"]), list(state["history"])
        if (ckpt / "rng_state.pt").is_file():  # same batches as an uninterrupted run (bitwise on a CPU)
            gen.set_state(torch.load(ckpt / "rng_state.pt"))
            acc, acc_n, *terms = state.get("loss_acc", [0.0, 0])
            if terms:
                acc_mse, acc_out = terms
        else:  # a checkpoint written before the sampler state was saved
            gen.manual_seed(cfg.seed * 7919 + step)
    if device.type == "cuda":  # gather batches on the GPU when the pairs fit (same values, no host-device copies)
        try:
            data = data.to(device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    pbar = tqdm(total=cfg.steps, initial=step, desc="distill", disable=not progress, mininterval=2)
    checked = False
    window: list[torch.Tensor] = []  # this log window's per-step losses, read back once per window (no per-step sync)

    def drain() -> None:
        """Add the window's losses to the sums in step order (the same floats as per-step .item()); a NaN/Inf
        loss raises here, at the latest before the next checkpoint, so the last good checkpoint is kept."""
        nonlocal acc, acc_n, acc_mse, acc_out
        if not window:
            return
        vals = torch.stack(window).double().cpu()
        first = step - len(window)
        bad = (~torch.isfinite(vals)).any(dim=1).nonzero()
        if len(bad):
            i = int(bad[0])
            raise FloatingPointError(
                f"distillation loss is {vals[i, 0].item()} at step {first + i}: lower distill.lr or check the "
                "trajectories; the last good checkpoint is kept")
        for row in vals.tolist():
            acc += row[0]
            acc_n += 1
            if w > 0:
                acc_mse += row[1]
                acc_out += row[2]
        window.clear()

    while step < cfg.steps:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        b = data.batch(idx, device)
        pred = adaptor(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
        loss = F.mse_loss(pred.float(), b["target"])
        if w > 0:
            mse = loss
            out, ref, r_in = _teacher_outputs(teacher, pred, b)
            if not checked:  # the teacher re-encodes the recorded r_in: catches wrong latents / scaling / cut
                err = (r_in.float() - b["r_in"]).norm() / b["r_in"].norm().clamp_min(1e-12)
                if not err < 5e-2:
                    raise ValueError(f"the teacher's r_in at the batch's sample/timestep/ctx differs from the recorded "
                                     f"one by {err.item():.3g} (relative): wrong teacher, cut, latents or input_scale")
                checked = True
            out_mse = F.mse_loss(out.float(), ref.float())
            loss = mse + w * out_mse
        _optimizer_step(opt, loss, params, cfg.grad_clip)
        step += 1
        window.append(torch.stack([loss.detach(), mse.detach(), out_mse.detach()]) if w > 0 else loss.detach()[None])
        pbar.update(1)
        logs, saves = _window_ends(step, cfg, ckpt)
        if logs or saves:
            drain()
        if logs:
            mean = acc / acc_n
            entry = {"step": step, "loss": mean}
            if w > 0:
                entry.update(r_out_mse=acc_mse / acc_n, output_mse=acc_out / acc_n)
            history.append(entry)
            pbar.set_postfix(loss=f"{mean:.4g}")
            if on_log:
                on_log(step, mean)
            acc, acc_n = 0.0, 0
            acc_mse = acc_out = 0.0
        if saves:
            _atomic_save(adaptor, opt, step, history, ckpt, gen, (acc, acc_n, acc_mse, acc_out) if w > 0 else (acc, acc_n))
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
