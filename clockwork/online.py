"""Online distillation: the teacher unrolls fresh trajectories inside the training loop; no trajectory store.

The stored path (:func:`clockwork.trajectories.unroll_to_store` + :class:`clockwork.distill.PairDataset` +
:func:`clockwork.distill.distill`) keeps r_in / r_out of every step and every cut on disk, which at the paper's scale
(50 000 prompts, SD 1.5 / SDXL) is terabytes. Here the frozen teacher runs on the training device, on prompts
streamed from a caption set of any size, and only what the adaptor trains on is kept, in a bounded on-device ring
buffer (:class:`PairBuffer`) that is refreshed as training goes:

- the prompt stream is a deterministic permutation of the caption set per epoch (seeded by ``OnlineConfig.seed``
  and the epoch), read ``unroll_batch`` prompts at a time; refresh k unrolls stream positions
  ``k * unroll_batch ...`` with noise from a CPU generator seeded by ``(seed, k)``, so its content is a pure function
  of ``(seed, k)``. With the identity order its refresh k is exactly shard k of ``unroll_to_store(seed=seed,
  shard_size=unroll_batch)``: same noise draw, same batch CFG (negative rows, then the prompts'), same sampler loop;
- one teacher pass per step (:meth:`clockwork.cut.UNetCut.full_step`, bitwise ``unet(...).sample``) gives r_in and
  r_out at the cut; only the adaptor's loop iterations i are kept: r_in(i), r_out(i) (the target), r_out(i-1) (zeros
  at i = 0, where only an adaptor that ignores it runs, as the stored path pads it), temb(i) and the pooled text per row, in
  the UNet's dtype on its device. The unroll stops after the last adaptor iteration;
- before training the buffer is filled (``ceil(buffer_prompts / unroll_batch)`` refreshes); then every
  ``refresh_every`` adaptor steps one more refresh overwrites the oldest ``unroll_batch`` prompts. Batches are drawn
  uniformly from the buffer with a CPU generator seeded from ``DistillConfig.seed``, as :func:`distill` does;
- checkpoints have :func:`distill`'s format (adaptor folder + ``optimizer.pt`` + ``rng_state.pt`` +
  ``trainer_state.json``, written atomically) with the number of refreshes done; a resumed run re-unrolls the
  refreshes that are in the buffer at that point instead of storing it, and continues bitwise as an uninterrupted
  run would (on a CPU).

Prompts reach the teacher through a :class:`PromptSource` (``__len__`` and ``embed(indices)``);
:class:`TensorPrompts` serves precomputed embeddings. Usage::

    from clockwork.clock import Clock, adaptor_loop_indices
    from clockwork.distill import DistillConfig
    from clockwork.online import OnlineConfig, TensorPrompts, distill_online

    loops = adaptor_loop_indices(scheduler, 8, Clock(2))
    history = distill_online(adaptor, unet, scheduler, TensorPrompts(prompt_embeds), negative_embeds, cut=1,
                             loop_indices=loops, steps=8, guidance=7.5, cfg=DistillConfig(steps=20_000),
                             online=OnlineConfig(buffer_prompts=512, unroll_batch=16, refresh_every=8),
                             device="cuda", checkpoint_dir="ckpt")
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clockwork.cut import UNetCut
from clockwork.distill import DistillConfig, _atomic_save, _optimizer_step, _resumable, _window_ends
from clockwork.trajectories import cfg_added, step_records


@dataclass
class OnlineConfig:
    """How the teacher feeds the adaptor during online distillation.

    ``buffer_prompts``: prompts whose pairs the buffer holds (each gives 2 rows, the CFG halves, per adaptor step);
    ``unroll_batch``: prompts per teacher unroll (one refresh); ``refresh_every``: adaptor steps between refreshes,
    so the teacher unrolls ``unroll_batch / refresh_every`` prompts per adaptor step and a prompt comes back every
    ``len(source)`` prompts unrolled (one epoch of the stream); ``seed``: noise and prompt order;
    ``compile``: ``torch.compile`` the teacher's full step (default mode; CUDA only, ignored elsewhere).
    """

    buffer_prompts: int = 256
    unroll_batch: int = 16
    refresh_every: int = 8
    seed: int = 0
    compile: bool = False

    def validate(self, num_prompts: int | None = None) -> None:
        """Raise ValueError naming the field; ``num_prompts`` is the size of the prompt source."""
        for k in ("buffer_prompts", "unroll_batch", "refresh_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"online.{k} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"online.seed must be an integer >= 0, got {self.seed!r}")
        if self.buffer_prompts < self.unroll_batch:
            raise ValueError(f"online.buffer_prompts={self.buffer_prompts} is smaller than online.unroll_batch="
                             f"{self.unroll_batch}: one refresh must fit in the buffer")
        if num_prompts is not None and self.buffer_prompts > num_prompts:
            raise ValueError(f"online.buffer_prompts={self.buffer_prompts} is larger than the prompt source "
                             f"({num_prompts} prompts): the buffer would hold a prompt twice")

    def refreshes_to_fill(self) -> int:
        return -(-self.buffer_prompts // self.unroll_batch)

    def refreshes_at(self, step: int) -> int:
        """Refreshes done before the adaptor step that follows ``step`` completed steps."""
        return self.refreshes_to_fill() + step // self.refresh_every


@runtime_checkable
class PromptSource(Protocol):
    """A caption set of any size: ``embed(indices)`` -> (prompt_embeds (B, L, D), added_cond_kwargs or None)."""

    def __len__(self) -> int: ...

    def embed(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]: ...


class TensorPrompts:
    """Precomputed prompt embeddings (N, L, D) and, for SDXL, added conditioning ``{"text_embeds": (N, D'),
    "time_ids": (N, 6)}``, as a :class:`PromptSource`."""

    def __init__(self, embeds: torch.Tensor, added: dict[str, torch.Tensor] | None = None):
        if embeds.dim() != 3:
            raise ValueError(f"embeds must be (prompts, tokens, dim), got {tuple(embeds.shape)}")
        bad = [k for k, v in (added or {}).items() if v.shape[0] != embeds.shape[0]]
        if bad:
            raise ValueError(f"added {bad} do not have one row per prompt ({embeds.shape[0]})")
        self.embeds, self.added = embeds, added

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def embed(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.embeds[idx], (None if self.added is None else {k: v[idx] for k, v in self.added.items()})


def stream_prompts(num_prompts: int, seed: int, start: int, count: int) -> list[int]:
    """Prompt indices at positions ``start .. start + count - 1`` of the stream: epoch e = position // num_prompts
    reads ``randperm(num_prompts)`` seeded by ``(seed, e)``."""
    out, perms = [], {}
    for p in range(start, start + count):
        e = p // num_prompts
        if e not in perms:
            perms[e] = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
        out.append(int(perms[e][p % num_prompts]))
    return out


def refresh_generator(seed: int, k: int) -> torch.Generator:
    """The noise generator of refresh k (the seeding of ``unroll_to_store``'s shard k)."""
    return torch.Generator(device="cpu").manual_seed(seed * 100_003 + k)


class OnlineUnroller:
    """Unrolls refresh k (a batch of streamed prompts) with the frozen teacher and records the adaptor's pairs.

    Validates ``cut``, ``loop_indices`` (the adaptor's loop iterations, :func:`clockwork.clock.adaptor_loop_indices`;
    empty = a ``clock`` that never runs the adaptor), ``online`` against the source, and the negative prompt, all
    before any teacher pass. ``negative`` is the negative prompt's embeds (1, L, D) or ``(embeds, added)``.
    The scheduler is copied (the caller's is not stepped).

    ``shard=(rank, workers)``: this worker unrolls prompts ``rank, rank + workers, ...`` of every refresh (with their
    rows of the refresh's noise) into a buffer of ``buffer_prompts / workers`` slots; the workers' buffers together
    hold exactly the single worker's pairs. ``unroll_batch`` and ``buffer_prompts`` must divide by ``workers``.
    """

    def __init__(self, unet, scheduler, source: PromptSource, negative, *, cut: int, loop_indices: Sequence[int],
                 steps: int, guidance: float, online: OnlineConfig, latent_size: int | None = None,
                 shard: tuple[int, int] = (0, 1)):
        if not isinstance(source, PromptSource):
            raise ValueError(f"source must have __len__ and embed(indices) (a PromptSource), got {type(source).__name__}")
        online.validate(len(source))
        rank, workers = shard
        if not 0 <= rank < workers:
            raise ValueError(f"shard must be (rank, workers) with 0 <= rank < workers, got {shard!r}")
        for key in ("unroll_batch", "buffer_prompts"):
            if getattr(online, key) % workers:
                raise ValueError(f"online.{key}={getattr(online, key)} does not divide by the {workers} workers: each "
                                 "worker unrolls and holds an equal share of every refresh")
        self.shard = (rank, workers)
        try:
            self.view = UNetCut(unet, cut)
        except ValueError as e:
            raise ValueError(f"cut={cut!r} cannot be taken from this UNet: {e}") from e
        neg, neg_added = negative if isinstance(negative, tuple) else (negative, None)
        if not isinstance(neg, torch.Tensor) or neg.dim() != 3 or neg.shape[0] != 1:
            raise ValueError(f"negative must be the negative prompt's embeds (1, tokens, dim) or (embeds, added), got "
                             f"{tuple(neg.shape) if isinstance(neg, torch.Tensor) else type(neg).__name__}")
        self.sched = copy.deepcopy(scheduler)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.sched.set_timesteps(steps)
        n_loops = len(self.sched.timesteps)
        loops = sorted(set(int(i) for i in loop_indices))
        if not loops:
            raise ValueError("loop_indices is empty: this clock never runs the adaptor (clock=1?), nothing to distill")
        if loops != [int(i) for i in loop_indices] or loops[0] < 0 or loops[-1] >= n_loops:
            raise ValueError(f"loop_indices {list(loop_indices)} must be increasing loop iterations in 0..{n_loops - 1} "
                             f"of {type(scheduler).__name__} with {steps} steps (clockwork.clock.adaptor_loop_indices)")
        self.unet, self.source, self.online = unet, source, online
        self.neg, self.neg_added = neg, neg_added
        self.loop_indices, self.steps, self.guidance = loops, steps, float(guidance)
        self.size = latent_size or unet.config.sample_size
        unet.requires_grad_(False).eval()
        step = self.view.full_step
        if online.compile and unet.device.type == "cuda":
            step = torch.compile(step)
        self._full_step = step

    # ---- what the buffer holds ------------------------------------------------------------------
    def record_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shapes of one pair: r_in, r_out (also r_out_prev and the target), temb, text."""
        s = self.size
        for i in self.view.kept_down:  # a stride-2 conv (padding 1) per downsampler: ceil(s / 2)
            if getattr(self.unet.down_blocks[i], "downsamplers", None):
                s = (s + 1) // 2
        return {"r_in": (self.view.r_in_channels, s, s), "r_out": (self.view.r_out_channels, s, s),
                "temb": (self.view.temb_channels,), "text": (self.view.text_channels,)}

    def new_buffer(self) -> "PairBuffer":
        """This worker's buffer: ``buffer_prompts / workers`` prompt slots."""
        return PairBuffer(self.online.buffer_prompts // self.shard[1], len(self.loop_indices), self.record_shapes(),
                          self.unet.device, self.unet.dtype)

    def prompts(self, k: int) -> list[int]:
        """The source indices refresh k unrolls."""
        b = self.online.unroll_batch
        return stream_prompts(len(self.source), self.online.seed, k * b, b)

    # ---- one refresh ----------------------------------------------------------------------------
    @torch.no_grad()
    def unroll(self, k: int) -> dict[str, torch.Tensor]:
        """Refresh k: {"r_in", "r_out_prev", "target"} (A, 2B, C, h, w), "temb" (A, 2B, D), "text" (2B, T), "prompt" (B,)
        for the A adaptor loop iterations, rows in CFG order (the B negative rows, then the B prompts'), on the
        UNet's device in its dtype. B = ``unroll_batch / workers``: this shard's prompts of the refresh."""
        unet, sched = self.unet, self.sched
        dev, dtype = unet.device, unet.dtype
        rank, workers = self.shard
        every = self.prompts(k)
        idx = every[rank::workers]
        embeds, added = self.source.embed(idx)
        b = embeds.shape[0]
        if b != len(idx):
            raise ValueError(f"source.embed returned {b} rows for {len(idx)} prompts")
        # as clockwork.trajectories.unroll_batch does: same noise draw, CFG concat order and sampler loop
        ctx = torch.cat([self.neg.to(dev, dtype).expand_as(embeds), embeds.to(dev, dtype)])
        added = cfg_added(added, self.neg_added, b, dev, dtype)
        gen = refresh_generator(self.online.seed, k)
        shape = (len(every), unet.config.in_channels, self.size, self.size)  # the whole refresh's noise, this shard's rows
        latents = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)[rank::workers].to(dev, dtype)
        sched.set_timesteps(self.steps, device=dev)
        latents = latents * sched.init_noise_sigma
        want, last = set(self.loop_indices), self.loop_indices[-1]
        rec: dict[str, list] = {"r_in": [], "r_out_prev": [], "target": [], "temb": []}
        prev = None
        for i, t in enumerate(sched.timesteps):
            x = sched.scale_model_input(torch.cat([latents] * 2), t)
            out, r_in, r_out = self._full_step(x, t, ctx, added_cond_kwargs=added)
            if i in want:
                temb, text = step_records(self.view, x, t, ctx, added)
                rec["r_in"].append(r_in)
                rec["target"].append(r_out)
                # i = 0 runs the adaptor only when it ignores r_out(t+1): zeros, as the stored path's padding
                rec["r_out_prev"].append(prev if prev is not None else torch.zeros_like(r_out))
                rec["temb"].append(temb.expand(2 * b, -1))
            if i == last:  # the rest of the trajectory is never trained on
                break
            prev = r_out
            u, c = out.chunk(2)
            latents = sched.step(u + self.guidance * (c - u), t, latents, return_dict=False)[0]
        res = {key: torch.stack(v).to(dtype) for key, v in rec.items()}
        res["text"] = text.to(dtype)
        res["prompt"] = torch.tensor(idx)
        return res


class PairBuffer:
    """Ring buffer on the training device of the pairs of the last ``capacity`` prompts.

    Prompt slot p holds, per adaptor loop iteration a and CFG half h (0 = negative row, 1 = the prompt's row):
    r_in, r_out_prev, target (r_out), temb, and per half the pooled text. Refresh k writes its prompts at slots
    ``(k * B + j) % capacity``, i.e. over the oldest ones. ``prompt`` / ``refresh`` tell which source prompt and
    refresh fill each slot (-1: empty). Memory is allocated once: :meth:`buffer_bytes`. In fp16 at cut 1 with 4 adaptor
    steps (8 steps, clock 2) a prompt takes 26.2 MB for SD 1.5 at 512 px (r_in 320x32x32, r_out 640x32x32) and 104.9 MB
    for SDXL at 1024 px (64x64), so 1024 SD 1.5 prompts or 256 SDXL prompts take about 27 GB; a refresh adds its own
    records (``unroll_batch / buffer_prompts`` of that) and the teacher's activations while it runs.
    """

    def __init__(self, capacity: int, num_loops: int, shapes: dict[str, tuple[int, ...]], device, dtype):
        p, a = capacity, num_loops
        dev = torch.device(device)
        self.capacity, self.num_loops = p, a
        self.r_in = torch.zeros(p, a, 2, *shapes["r_in"], device=dev, dtype=dtype)
        self.r_out_prev = torch.zeros(p, a, 2, *shapes["r_out"], device=dev, dtype=dtype)
        self.target = torch.zeros(p, a, 2, *shapes["r_out"], device=dev, dtype=dtype)
        self.temb = torch.zeros(p, a, 2, *shapes["temb"], device=dev, dtype=dtype)
        self.text = torch.zeros(p, 2, *shapes["text"], device=dev, dtype=dtype)
        self.prompt = torch.full((p,), -1, dtype=torch.long)
        self.refresh = torch.full((p,), -1, dtype=torch.long)
        self.written = 0  # prompts written so far (stream positions)

    def buffer_bytes(self) -> int:
        """Bytes the buffer's tensors take on the device."""
        return sum(t.numel() * t.element_size() for t in (self.r_in, self.r_out_prev, self.target, self.temb, self.text))

    @property
    def filled(self) -> int:
        """Prompt slots holding pairs."""
        return min(self.written, self.capacity)

    def __len__(self) -> int:
        return self.filled * self.num_loops * 2

    def write(self, rec: dict[str, torch.Tensor], k: int) -> None:
        """Put refresh k's records (:meth:`OnlineUnroller.unroll`) at its slots."""
        b = rec["prompt"].shape[0]
        slots = (k * b + torch.arange(b)) % self.capacity
        dev_slots = slots.to(self.r_in.device)

        def per_prompt(x):  # (A, 2B, ...) -> (B, A, 2, ...)
            return x.unflatten(1, (2, b)).movedim(2, 0)

        for name in ("r_in", "r_out_prev", "target", "temb"):
            dst = getattr(self, name)
            src = per_prompt(rec[name])
            if src.shape[1:] != dst.shape[1:]:
                raise ValueError(f"refresh {k}: {name} has per-prompt shape {tuple(src.shape[1:])}, the buffer "
                                 f"{tuple(dst.shape[1:])} (latent_size or cut differ from the buffer's?)")
            dst[dev_slots] = src.to(dst.dtype)
        self.text[dev_slots] = rec["text"].unflatten(0, (2, b)).movedim(1, 0).to(self.text.dtype)
        self.prompt[slots] = rec["prompt"]
        self.refresh[slots] = k
        self.written = max(self.written, (k + 1) * b)

    def batch(self, idx: torch.Tensor, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Pairs ``idx`` (in ``0 .. len(self) - 1``) as :meth:`clockwork.distill.PairDataset.batch` gives them."""
        idx = idx.to(self.r_in.device)
        h = idx % 2
        a = (idx // 2) % self.num_loops
        p = idx // (2 * self.num_loops)
        dev = device if device is not None else self.r_in.device
        return {"r_in": self.r_in[p, a, h].to(dev, dtype), "r_out_prev": self.r_out_prev[p, a, h].to(dev, dtype),
                "temb": self.temb[p, a, h].to(dev, dtype), "text": self.text[p, h].to(dev, dtype),
                "target": self.target[p, a, h].to(dev, dtype)}


def fill_buffer(unroller: OnlineUnroller, buffer: PairBuffer, refreshes: int) -> None:
    """Make ``buffer`` what it is after ``refreshes`` refreshes: re-unroll only those still in it (deterministic)."""
    b, cap = unroller.online.unroll_batch // unroller.shard[1], buffer.capacity  # this shard's prompts per refresh
    first = max(0, refreshes * b - cap) // b
    buffer.written = first * b
    for k in range(first, refreshes):
        buffer.write(unroller.unroll(k), k)


def _check_resume(state: dict, online: OnlineConfig, loop_indices: list[int]) -> None:
    saved = state.get("online")
    if saved is None:
        raise ValueError("this checkpoint was written by clockwork.distill.distill, not distill_online; use another "
                         "checkpoint_dir")
    now = {**{k: getattr(online, k) for k in ("buffer_prompts", "unroll_batch", "refresh_every", "seed")},
           "loop_indices": loop_indices}
    diff = [k for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise ValueError(f"the checkpoint was trained with other online settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); "
                         "resuming would not continue that run: restore them or use another checkpoint_dir")


def _process_group() -> tuple[int, int]:
    """(rank, workers) of the initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batch(idx: torch.Tensor, per_prompt: int, rank: int, workers: int) -> tuple[torch.Tensor, float]:
    """The rows of global batch ``idx`` (pair indices of the workers' joint buffer) that worker ``rank`` holds, as
    indices of its own buffer, and the weight of its mean loss: ``rows_here / len(idx) * workers``, so that averaging
    the workers' gradients gives the gradient of the whole batch's mean. A worker holding none of the rows computes
    one row with weight 0 (every worker takes part in the gradient average)."""
    slot, within = idx // per_prompt, idx % per_prompt  # slot s of the joint buffer is slot s // workers of worker s % workers
    mine = slot % workers == rank
    local = (slot // workers) * per_prompt + within
    n = int(mine.sum())
    if n == 0:
        return local[:1], 0.0
    return local[mine], n / len(idx) * workers


def distill_online(
    adaptor: torch.nn.Module,
    unet,
    scheduler,
    source: PromptSource,
    negative,
    *,
    cut: int,
    loop_indices: Sequence[int],
    steps: int,
    guidance: float,
    cfg: DistillConfig,
    online: OnlineConfig,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
    latent_size: int | None = None,
) -> list[dict]:
    """Train ``adaptor`` in place on pairs the frozen teacher ``unet`` (already on ``device``) unrolls as it goes.

    Same loss (r_out MSE), optimizer, batch sampling, log windows, NaN check, checkpoint format and returned
    history [{"step", "loss"}] as :func:`clockwork.distill.distill`; resumes from ``checkpoint_dir``.
    ``negative``: the negative prompt's embeds (1, L, D), or ``(embeds, added_cond_kwargs)`` for SDXL. Every
    argument is checked before the first teacher pass. The teacher is frozen here (``requires_grad_(False)``, eval) and
    runs under ``torch.no_grad`` in its own dtype; history entries are logged as :func:`distill` logs them, and
    ``trainer_state.json`` also records ``online`` = {refreshes, prompts_unrolled, epochs, loop_indices, the config}.

    Data-parallel: called by every worker of an initialised ``torch.distributed`` process group (Ray Train's
    ``TorchTrainer``, torchrun, ...), worker r unrolls its share of every refresh (``OnlineUnroller`` ``shard``), the
    adaptor is wrapped in ``DistributedDataParallel``, and each step's global batch (``cfg.batch_size`` rows, drawn as
    the single worker draws them) is split by where its rows live: each worker's loss is weighted so that the averaged
    gradient is the single worker's, so the same settings give the single-worker result up to floating point, with
    any number of workers. Rank 0 logs, shows progress and writes the checkpoints (the single-process format: a
    checkpoint resumes with any number of workers; on several nodes ``checkpoint_dir`` must be shared storage).
    """
    device = torch.device(device)
    rank, workers = _process_group()
    if cfg.output_weight:
        raise ValueError(f"distill.output_weight={cfg.output_weight}: the output-space loss is not supported by "
                         "distill_online yet; use 0")
    udev = unet.device
    if udev.type != device.type or (udev.index is not None and device.index is not None and udev.index != device.index):
        raise ValueError(f"the teacher unet is on {udev} but device={device}: move it there first (the teacher unrolls "
                         "on the training device)")
    unroller = OnlineUnroller(unet, scheduler, source, negative, cut=cut, loop_indices=loop_indices, steps=steps,
                              guidance=guidance, online=online, latent_size=latent_size, shard=(rank, workers))
    loops = unroller.loop_indices
    adaptor.to(device).train()
    params = [p for p in adaptor.parameters() if p.requires_grad]
    if not params:
        raise ValueError("this adaptor has no trainable parameters (the identity adaptor needs no distillation)")
    model = adaptor
    if workers > 1:  # gradients averaged over the workers; rank 0's initial weights broadcast
        # "cuda" without an index (torchrun users) is the current device, as CUDA itself reads it
        index = device.index if device.index is not None else torch.cuda.current_device() if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(adaptor, device_ids=[index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 7919)
    step, history, acc, acc_n = 0, [], 0.0, 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    resume = _resumable(ckpt, ("diffusion_pytorch_model.safetensors", "optimizer.pt", "rng_state.pt"))
    refreshes = online.refreshes_to_fill()
    if resume:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "trainer_state.json").read_text())
        _check_resume(state, online, loops)
        adaptor.load_state_dict(load_file(str(ckpt / "diffusion_pytorch_model.safetensors")))
        opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
        gen.set_state(torch.load(ckpt / "rng_state.pt"))
        step, history = int(state["step"]), list(state["history"])
        acc, acc_n = state.get("loss_acc", [0.0, 0])[:2]
        refreshes = int(state["online"]["refreshes"])
    buffer = unroller.new_buffer()
    fill_buffer(unroller, buffer, refreshes)
    pbar = tqdm(total=cfg.steps, initial=step, desc="distill online" + (f" ({workers} workers)" if workers > 1 else ""),
                disable=not progress or rank > 0, mininterval=2)
    per_prompt = 2 * len(loops)  # pairs per prompt slot: the buffer's index layout (PairBuffer.batch)
    window: list[torch.Tensor] = []  # this log window's per-step losses, read back once per window

    def drain() -> None:
        nonlocal acc, acc_n
        if not window:
            return
        vals = torch.stack(window)
        if workers > 1:  # each worker holds its weighted share of every step's loss
            torch.distributed.all_reduce(vals)
            vals = vals / workers
        vals = vals.double().cpu()
        bad = (~torch.isfinite(vals)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise FloatingPointError(f"distillation loss is {vals[i].item()} at step {step - len(window) + i}: lower "
                                     "distill.lr or check the teacher; the last good checkpoint is kept")
        for v in vals.tolist():
            acc += v
            acc_n += 1
        window.clear()

    def extra() -> dict:
        return {"online": {"refreshes": refreshes, "prompts_unrolled": refreshes * online.unroll_batch,
                           "epochs": refreshes * online.unroll_batch / len(source), "loop_indices": loops,
                           **{k: getattr(online, k) for k in ("buffer_prompts", "unroll_batch", "refresh_every", "seed")}}}

    while step < cfg.steps:
        while refreshes < online.refreshes_at(step):  # a pure function of the step: resumes land on the same buffer
            buffer.write(unroller.unroll(refreshes), refreshes)
            refreshes += 1
        idx = torch.randint(0, len(buffer) * workers, (cfg.batch_size,), generator=gen)  # the global batch
        if workers == 1:
            b = buffer.batch(idx, device)
            pred = model(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
            loss = F.mse_loss(pred.float(), b["target"])
        else:
            local, weight = shard_batch(idx, per_prompt, rank, workers)
            b = buffer.batch(local, device)
            pred = model(r_in=b["r_in"], r_out_prev=b["r_out_prev"], temb=b["temb"], text=b["text"])
            loss = F.mse_loss(pred.float(), b["target"]) * weight
        _optimizer_step(opt, loss, params, cfg.grad_clip)
        step += 1
        window.append(loss.detach())
        pbar.update(1)
        logs, saves = _window_ends(step, cfg, ckpt)
        if logs or saves:
            drain()
        if logs:
            mean = acc / acc_n
            history.append({"step": step, "loss": mean})
            pbar.set_postfix(loss=f"{mean:.4g}", refreshes=refreshes)
            if on_log and rank == 0:
                on_log(step, mean)
            acc, acc_n = 0.0, 0
        if saves and rank == 0:
            _atomic_save(adaptor, opt, step, history, ckpt, gen, (acc, acc_n), extra())
    pbar.close()
    adaptor.eval()
    return history


__all__ = ["OnlineConfig", "OnlineUnroller", "PairBuffer", "PromptSource", "TensorPrompts", "distill_online",
           "fill_buffer", "refresh_generator", "shard_batch", "stream_prompts"]
