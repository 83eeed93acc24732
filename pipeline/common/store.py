"""The teacher-trajectory store as the stages use it: unrolling (resumable), checking a store's settings,
loading one cut with each row's prompt (lazily, over memory maps, when it exceeds a memory cap), per-prompt
train/held-out splits and each row's text context."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.common.io import code_sha, obj_sha

if TYPE_CHECKING:
    from pipeline.common.world import World


def ensure_trajectories(root: str | os.PathLike, world: World, table, prompts: list[str], sampler: str, steps: int,
                        guidance: float, cuts: Sequence[int], seed: int, shard_size: int, progress: bool = True):
    """Unroll (or resume unrolling) teacher trajectories for ``prompts`` into ``root``."""
    from clockwork.trajectories import unroll_to_store

    ctx, pooled = table.lookup(prompts)
    neg, neg_pooled = table.uncond(1)
    with world.autocast():
        return unroll_to_store(root, world.unet, world.sampler(sampler), sorted(set(cuts)), ctx, neg, steps, guidance,
                               seed=seed, shard_size=shard_size, progress=progress,
                               added_cond_kwargs=world.added_cond(pooled),
                               negative_added_cond_kwargs=world.added_cond(neg_pooled), latent_size=world.latent_size,
                               meta_extra={"prompts_sha": obj_sha(prompts), "teacher": world.teacher_id,
                                           "precision": world.precision, "sampler_name": sampler,
                                           "latent_size": world.latent_size,
                                           "code": code_sha("clockwork/trajectories.py", "clockwork/cut.py",
                                                            "clockwork/schedulers.py")})


def store_matches(root: str | os.PathLike, sampler: str, steps: int, guidance: float, cut: int) -> bool:
    f = Path(root) / "meta.json"
    if not f.is_file():
        return False
    m = json.loads(f.read_text())
    return (m.get("sampler_name") == sampler and m.get("steps") == steps and m.get("guidance") == guidance
            and cut in m.get("cuts", []))


def row_prompts(meta: dict, rows: int) -> torch.Tensor:
    """The prompt index of every trajectory row of a store.

    Each shard holds its prompts' unconditional half, then their conditional half (CFG as one batch), so
    rows of one prompt are ``shard_size`` apart; the two halves share x_t (and r_in at cut 1 exactly), so
    train/held-out splits and prompt subsets must be taken per prompt, never per row.
    """
    n, ss = meta["num_prompts"], meta["shard_size"]
    if rows == n:
        return torch.arange(n)
    if rows != 2 * n:
        raise ValueError(f"a store of {n} prompts holds {rows} rows per step; expected {n} or {2 * n}")
    ids = []
    for i in range(meta["num_shards"]):
        base = torch.arange(i * ss, min((i + 1) * ss, n))
        ids += [base, base]
    return torch.cat(ids)


def _select(traj: dict, mask: torch.Tensor) -> dict:
    out = {**traj, "r_in": traj["r_in"][:, mask], "r_out": traj["r_out"][:, mask], "text": traj["text"][mask],
           "prompt": traj["prompt"][mask]}
    for k, dim in (("latents", 1), ("cond", 0), ("ctx", 0)):  # per-row extras, when present
        if k in traj:
            out[k] = traj[k][:, mask] if dim else traj[k][mask]
    if traj["temb"].dim() == 3:  # per row (added conditioning: SDXL)
        out["temb"] = traj["temb"][:, mask]
    return out


def load_trajectories(root: str | os.PathLike, cut: int, max_prompts: int | None = None,
                      with_latents: bool = False, memory_cap_gb: float | None = None) -> dict[str, torch.Tensor]:
    """One cut of a trajectory store (both CFG halves of every prompt), optionally its first ``max_prompts`` prompts.

    ``with_latents``: also each row's x_t per step and its ``cond`` flag (``TrajectoryStore.load``), what
    :func:`pair_dataset` needs for the output-space loss (``distill.output_weight > 0``).

    ``memory_cap_gb``: if the cut would take more memory than that (GB = 1e9 bytes, from the shards' headers:
    ``TrajectoryStore.cut_bytes``), its per-row tensors are lazy views over memory maps of the shards
    (``load(..., lazy=True)``: batches bitwise the same, only the rows gathered are read); None or a store
    within the cap loads it as always.
    """
    from clockwork.trajectories import TrajectoryStore

    store = TrajectoryStore(root)
    meta = store.meta
    shards = None if max_prompts is None else -(-max_prompts // meta["shard_size"])
    lazy = memory_cap_gb is not None and store.cut_bytes(cut, shards, with_latents) > memory_cap_gb * 1e9
    traj = store.load(cut, max_shards=shards, with_latents=with_latents, lazy=lazy)
    if shards is not None:
        meta = {**meta, "num_prompts": min(meta["num_prompts"], shards * meta["shard_size"]),
                "num_shards": min(meta["num_shards"], shards)}
    traj["prompt"] = row_prompts(meta, traj["r_in"].shape[1])
    if max_prompts is not None:
        traj = _select(traj, traj["prompt"] < max_prompts)
    return traj


def num_prompts(traj: dict) -> int:
    return int(traj["prompt"].unique().numel()) if "prompt" in traj else traj["r_in"].shape[1]


def split_trajectories(traj: dict, heldout: int) -> tuple[dict, dict | None]:
    """The last ``heldout`` prompts (both CFG halves) apart from the rest."""
    if heldout <= 0:
        return traj, None
    cut_at = int(traj["prompt"].max()) + 1 - heldout
    held = traj["prompt"] >= cut_at
    return _select(traj, ~held), _select(traj, held)


def row_contexts(traj: dict, table, prompts: Sequence[str]) -> torch.Tensor:
    """(rows, L, D) the text token states every trajectory row was sampled with: the negative (empty) prompt's
    ``table.uncond(1)[0]`` for unconditional rows, ``table.lookup([prompts[traj["prompt"][r]]])[0]`` for
    conditional ones (``traj`` from :func:`load_trajectories` with ``with_latents=True``, whose ``prompt``
    indices point into ``prompts``, the list the store was unrolled for). Checked against the pooled ``text``
    the store recorded, so a wrong prompt list or table fails here."""
    if "cond" not in traj or "prompt" not in traj:
        raise ValueError("per-row text contexts need trajectories loaded with_latents=True (their `cond` flags)")
    pid, cond = traj["prompt"], traj["cond"]
    if len(pid) and int(pid.max()) >= len(prompts):
        raise ValueError(f"trajectory rows of prompt {int(pid.max())} but only {len(prompts)} prompts given")
    used = sorted(set(pid[cond].tolist()))
    neg = table.uncond(1, dtype=torch.float16)[0]  # the table stores fp16 states: no rounding
    states = table.lookup([prompts[i] for i in used], dtype=torch.float16)[0] if used else neg[:0]
    where = torch.zeros(len(prompts), dtype=torch.long)
    where[torch.tensor(used, dtype=torch.long)] = torch.arange(1, len(used) + 1)
    ctx = torch.cat([neg, states])[torch.where(cond, where[pid], 0)]
    text = traj["text"]
    if not isinstance(text, torch.Tensor):  # a lazy store's view: (rows, D) is small beside ctx's (rows, L, D)
        text = text.materialize()
    text = text.float()
    if (ctx.float().mean(dim=1) - text).norm() > 1e-2 * text.norm() + 1e-6:
        raise ValueError("the prompt embeddings do not match the ones these trajectories were unrolled with "
                         "(wrong prompt list or embedding table)")
    return ctx
