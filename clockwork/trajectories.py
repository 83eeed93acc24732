"""Unrolled trajectories: what the teacher's low-res path sees and outputs along its own sampling runs.

The paper trains adaptors on trajectories unrolled from pure noise with the target sampler and step
count (no images needed). For every step we keep, per cut, the teacher's r_in(t) and r_out(t), plus the
time embedding and the pooled prompt embedding an adaptor may use: ``temb`` is (S, D), one per step, for
UNets whose embedding depends on the timestep alone (SD 1.x/2.x, the embedded teacher), and (S, rows, D)
for UNets with added conditioning (SDXL's ``text_time``: the pooled prompt and the size ids enter the
embedding every block sees); ``text`` is SDXL's pooled ``text_embeds`` there, the mean token state elsewhere. Shards are safetensors files written
atomically, so an interrupted unroll resumes at the first missing shard. One unroll serves every
adaptor width and every cut listed when it was made. A store too large to hold (45-181 MB per prompt at SD
shapes) is opened lazily: ``TrajectoryStore.load(..., lazy=True)`` gives views over memory maps of the shards
(:mod:`clockwork.shards`) that read only the rows a batch gathers.

:func:`forward_noised_shard` builds the same records from *forward-noised training images* instead
(the classic distillation the paper compares against in Fig. 7).
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from clockwork.cut import UNetCut
from clockwork.precision import stack_recorded
from clockwork.shards import ShardRows, entry_bytes, map_tensors, read_header


def _time_embedding(unet, sample: torch.Tensor, t) -> torch.Tensor:
    u = unet
    emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=t), None)
    return u.time_embed_act(emb) if u.time_embed_act is not None else emb


def per_row_embedding(unet) -> bool:
    """Whether the embedding the blocks see differs per row (added or class conditioning), so trajectories keep
    ``temb`` per row: (S, rows, D) instead of (S, D)."""
    c = unet.config
    return c.get("addition_embed_type") is not None or c.get("class_embed_type") is not None


def cfg_added(added_cond_kwargs: dict | None, negative_added_cond_kwargs: dict | None, b: int, dev, dtype) -> dict | None:
    """The added conditioning of a CFG batch (the negative prompt's rows, then the prompts'), as ``ctx`` is built."""
    if added_cond_kwargs is None:
        return None
    if negative_added_cond_kwargs is None:
        raise ValueError("added_cond_kwargs given without negative_added_cond_kwargs (the unconditional rows' own)")
    out = {}
    for k, v in added_cond_kwargs.items():
        neg = negative_added_cond_kwargs[k].to(dev, dtype)
        out[k] = torch.cat([neg.expand(b, *neg.shape[1:]), v.to(dev, dtype)])
    return out


def step_records(view: UNetCut, x: torch.Tensor, t, ctx: torch.Tensor, added: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(temb, text) an adaptor sees at this step: what :meth:`UNetCut.prepare` gives it (temb per row or the first
    row's, as :func:`per_row_embedding` says; text per row)."""
    if added is None:
        return _time_embedding(view.unet, x, t)[:1], ctx.mean(dim=1)
    s = view.prepare(x, t, ctx, added_cond_kwargs=added)
    return (s.emb if per_row_embedding(view.unet) else s.emb[:1]), s.text


@torch.no_grad()
def unroll_batch(
    unet,
    scheduler,
    cuts: Sequence[int],
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    negative_added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    latent_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Sample ``len(prompt_embeds)`` trajectories with batch CFG; return the per-step features (fp16).

    ``added_cond_kwargs`` (SDXL: ``text_embeds`` (B, D) and ``time_ids`` (B, 6)) and the negative prompt's
    (1, ...) go to the UNet with the token states; ``latent_size`` overrides ``unet.config.sample_size``.
    """
    dev, dtype = unet.device, unet.dtype
    b = prompt_embeds.shape[0]
    views = {c: UNetCut(unet, c) for c in cuts}
    ctx = torch.cat([negative_embeds.to(dev, dtype).expand_as(prompt_embeds), prompt_embeds.to(dev, dtype)])
    added = cfg_added(added_cond_kwargs, negative_added_cond_kwargs, b, dev, dtype)
    size = latent_size or unet.config.sample_size
    shape = (b, unet.config.in_channels, size, size)
    latents = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(dev, dtype)
    scheduler.set_timesteps(steps, device=dev)
    latents = latents * scheduler.init_noise_sigma
    rec: dict[str, list] = {"latents": [], "temb": []}
    for c in cuts:
        rec[f"r_in.c{c}"], rec[f"r_out.c{c}"] = [], []
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        rec["latents"].append(latents.half().cpu())
        with capture_cuts(unet, views) as feats:  # one teacher pass gives r_in / r_out at every cut
            out = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        for k, v in feats.items():
            rec[k].append(v.half().cpu())
        temb, text = step_records(next(iter(views.values())), x, t, ctx, added)
        rec["temb"].append(temb.half().cpu())
        u, c_ = out.chunk(2)
        latents = scheduler.step(u + guidance * (c_ - u), t, latents, return_dict=False)[0]
    rec["latents"].append(latents.half().cpu())
    res = stack_recorded(rec, dev)
    if res["temb"].shape[1] == 1:  # one embedding per step, shared by every row
        res["temb"] = res["temb"][:, 0]
    res["text"] = text.half().cpu()
    res["timesteps"] = scheduler.timesteps.detach().cpu().to(torch.float32)
    return res


@contextmanager
def capture_cuts(unet, views: dict[int, UNetCut]):
    """Record r_in / r_out of every cut during one plain ``unet(...)`` call, with forward hooks."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for c, v in views.items():
        handles.append(unet.down_blocks[c - 1].register_forward_hook(
            lambda m, a, out, c=c: feats.__setitem__(f"r_in.c{c}", out[0])))
        handles.append(unet.up_blocks[v.boundary_up].upsamplers[0].register_forward_pre_hook(
            lambda m, a, c=c: feats.__setitem__(f"r_out.c{c}", a[0])))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


class TrajectoryStore:
    """A folder of trajectory shards + ``meta.json``; written by :func:`unroll_to_store`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def meta(self) -> dict:
        f = self.root / "meta.json"
        if not f.is_file():
            raise FileNotFoundError(f"no trajectories at {self.root} (meta.json missing); run the `trajectories` stage")
        return json.loads(f.read_text())

    def shard_path(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.safetensors"

    def shards(self) -> list[Path]:
        n = self.meta["num_shards"]
        paths = [self.shard_path(i) for i in range(n)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root}: {len(missing)} shard(s) missing, e.g. {missing[0]}; re-run `trajectories` to resume")
        return paths

    def headers(self, cut: int, max_shards: int | None = None) -> list[dict[str, dict]]:
        """The safetensors header of each shard (read, not loaded): raises before a long run if a shard is
        missing (FileNotFoundError), truncated or lacks this cut (ValueError), naming the shard."""
        meta = self.meta
        if cut not in meta["cuts"]:
            raise ValueError(f"trajectories at {self.root} hold cuts {meta['cuts']}, not cut={cut}; add it to trajectories.cuts")
        heads = []
        for p in self.shards()[:max_shards]:
            entries, _ = read_header(p)
            missing = [k for k in (f"r_in.c{cut}", f"r_out.c{cut}", "text", "temb", "timesteps") if k not in entries]
            if missing:
                raise ValueError(f"{p}: no {missing}; re-run `trajectories`")
            heads.append(entries)
        return heads

    def cut_bytes(self, cut: int, max_shards: int | None = None, with_latents: bool = False) -> int:
        """Bytes the tensors of ``load(cut, max_shards, with_latents)`` hold in memory, from the shards' headers
        alone (loading peaks at about twice that: the shards, then their concatenation)."""
        heads = self.headers(cut, max_shards)
        total = entry_bytes(heads[0]["timesteps"]) + sum(
            entry_bytes(h[f"r_in.c{cut}"]) + entry_bytes(h[f"r_out.c{cut}"]) + entry_bytes(h["text"]) for h in heads)
        per_row = len(heads[0]["temb"]["shape"]) == 3
        total += sum(entry_bytes(h["temb"]) for h in (heads if per_row else heads[:1]))
        for h in heads if with_latents else ():  # every r_in row gets its x_t at each step, and a cond flag
            if "latents" not in h:
                raise ValueError(f"{self.root}: a shard has no latents; re-run `trajectories`")
            lat, rows = h["latents"], h[f"r_in.c{cut}"]["shape"][1]
            total += entry_bytes(lat) // (lat["shape"][0] * lat["shape"][1]) * (lat["shape"][0] - 1) * rows + rows
        return total

    def load(self, cut: int, max_shards: int | None = None, with_latents: bool = False,
             lazy: bool = False) -> dict[str, torch.Tensor]:
        """All shards of one cut, concatenated along the batch axis (dim 1 of per-step tensors).

        ``with_latents``: also ``latents`` (S, N, C, H, W), the sampler state x_t at every step *before*
        ``scheduler.scale_model_input``, one per r_in row (a shard stores each prompt's x_t once; its
        unconditional and conditional rows share it), and ``cond`` (N,) bool, True for the conditional rows.

        ``lazy``: the per-row tensors (``r_in``, ``r_out``, ``text``, ``latents``, a per-row ``temb``) are
        :class:`clockwork.shards.ShardRows` views over memory maps of the shards instead, which read only the
        rows a batch gathers, with the same values bit for bit; the small rest is loaded. For stores too large
        to hold (see :meth:`cut_bytes`).
        """
        heads = self.headers(cut, max_shards)
        if lazy:
            return self._open(cut, heads, with_latents)
        parts = [load_file(str(p)) for p in self.shards()[:max_shards]]
        out = {
            "r_in": torch.cat([p[f"r_in.c{cut}"] for p in parts], dim=1),
            "r_out": torch.cat([p[f"r_out.c{cut}"] for p in parts], dim=1),
            "text": torch.cat([p["text"] for p in parts], dim=0),
            # (S, D) shared by every row, or (S, rows, D) per row (added conditioning: SDXL)
            "temb": parts[0]["temb"] if parts[0]["temb"].dim() == 2 else torch.cat([p["temb"] for p in parts], dim=1),
            "timesteps": parts[0]["timesteps"],
        }
        if with_latents:
            lat, cond = [], []
            for i, p in enumerate(parts):
                if "latents" not in p:
                    raise ValueError(f"{self.root}: shard {i} has no latents; re-run `trajectories`")
                x = p["latents"][:-1]  # (S+1, b, ...): the state fed at each of the S steps, then the final one
                b, rows = x.shape[1], p[f"r_in.c{cut}"].shape[1]
                if rows == 2 * b:  # CFG as one batch: the unconditional half, then the conditional half
                    lat.append(torch.cat([x, x], dim=1))
                    cond.append(torch.arange(rows) >= b)
                elif rows == b:
                    lat.append(x)
                    cond.append(torch.ones(rows, dtype=torch.bool))
                else:
                    raise ValueError(f"{self.root}: shard {i} has {b} latents for {rows} rows")
            out["latents"] = torch.cat(lat, dim=1)
            out["cond"] = torch.cat(cond)
        return out


    def _open(self, cut: int, heads: list[dict], with_latents: bool) -> dict:
        """:meth:`load`'s dict with per-row tensors as :class:`ShardRows` views (``lazy=True``)."""
        keys = [f"r_in.c{cut}", f"r_out.c{cut}", "text", "temb", "timesteps"] + (["latents"] if with_latents else [])
        for i, h in enumerate(heads if with_latents else ()):
            if "latents" not in h:
                raise ValueError(f"{self.root}: shard {i} has no latents; re-run `trajectories`")
        maps = [map_tensors(p, keys) for p in self.shards()[:len(heads)]]
        temb = [m["temb"] for m in maps]
        out = {
            "r_in": ShardRows([m[f"r_in.c{cut}"] for m in maps], 1),
            "r_out": ShardRows([m[f"r_out.c{cut}"] for m in maps], 1),
            "text": ShardRows([m["text"] for m in maps], 0),
            "temb": temb[0].clone() if temb[0].dim() == 2 else ShardRows(temb, 1),
            "timesteps": maps[0]["timesteps"].clone(),
        }
        if with_latents:
            rows, cond = [], []
            for i, m in enumerate(maps):
                b, n = m["latents"].shape[1], m[f"r_in.c{cut}"].shape[1]
                if n not in (b, 2 * b):
                    raise ValueError(f"{self.root}: shard {i} has {b} latents for {n} rows")
                local = torch.arange(n) % b  # CFG as one batch: both halves share the prompt's x_t
                rows.append(torch.stack([torch.full((n,), i), local], 1))
                cond.append(torch.arange(n) >= b if n == 2 * b else torch.ones(n, dtype=torch.bool))
            lat = [m["latents"] for m in maps]
            out["latents"] = ShardRows(lat, 1, torch.cat(rows), steps=lat[0].shape[0] - 1)  # not the final state
            out["cond"] = torch.cat(cond)
        return out

def unroll_to_store(
    root: str | os.PathLike,
    unet,
    scheduler,
    cuts: Iterable[int],
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    steps: int,
    guidance: float,
    seed: int = 0,
    shard_size: int = 64,
    meta_extra: dict | None = None,
    progress: bool = True,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    negative_added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    latent_size: int | None = None,
) -> TrajectoryStore:
    """Unroll trajectories for every prompt into shards; skips shards already on disk (resume).

    ``added_cond_kwargs`` holds per-prompt tensors (N, ...) sliced like ``prompt_embeds``; see :func:`unroll_batch`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cuts = sorted(set(int(c) for c in cuts))
    for c in cuts:
        UNetCut(unet, c)  # validates early, before any work
    n = prompt_embeds.shape[0]
    num_shards = (n + shard_size - 1) // shard_size
    meta = {"num_prompts": n, "num_shards": num_shards, "shard_size": shard_size, "cuts": cuts, "steps": steps,
            "guidance": guidance, "seed": seed, "sampler": type(scheduler).__name__, **(meta_extra or {})}
    meta_file = root / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) != meta:
        for p in root.glob("shard-*.safetensors"):  # made with other settings: start over
            p.unlink()
    _atomic_write(meta_file, json.dumps(meta, indent=1).encode())
    store = TrajectoryStore(root)
    todo = [i for i in range(num_shards) if not store.shard_path(i).is_file()]
    for i in tqdm(todo, desc="trajectories", unit="shard", disable=not progress):
        gen = torch.Generator(device="cpu").manual_seed(seed * 100_003 + i)
        sl = slice(i * shard_size, (i + 1) * shard_size)
        rec = unroll_batch(unet, scheduler, cuts, prompt_embeds[sl], negative_embeds, steps, guidance, gen,
                           {k: v[sl] for k, v in added_cond_kwargs.items()} if added_cond_kwargs is not None else None,
                           negative_added_cond_kwargs, latent_size)
        rec = {k: v.contiguous() for k, v in rec.items()}
        tmp = _tmp_name(store.shard_path(i))
        save_file(rec, str(tmp))
        os.replace(tmp, store.shard_path(i))
    return store


def _tmp_name(path: Path) -> Path:
    """A temporary name no other process uses: concurrent unrolls of one store (sweep trials) never collide."""
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


@torch.no_grad()
def forward_noised_shard(unet, scheduler, cut: int, images: torch.Tensor, prompt_embeds: torch.Tensor,
                         negative_embeds: torch.Tensor, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Classic distillation data: noise real images to each sampler timestep (same noise along the steps)
    and record the teacher's r_in / r_out there, in the layout of :func:`unroll_batch`."""
    dev, dtype = unet.device, unet.dtype
    view = UNetCut(unet, cut)
    b = images.shape[0]
    ctx = torch.cat([negative_embeds.to(dev, dtype).expand_as(prompt_embeds), prompt_embeds.to(dev, dtype)])
    scheduler.set_timesteps(steps, device=dev)
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(dev, dtype)
    x0 = images.to(dev, dtype)
    r_in, r_out, temb = [], [], []
    for t in scheduler.timesteps:
        x_t = scheduler.add_noise(x0, noise, t.reshape(1).expand(b)) if hasattr(scheduler, "add_noise") else x0
        x = scheduler.scale_model_input(torch.cat([x_t] * 2), t)
        _, ri, ro = view.full_step(x, t, ctx)
        r_in.append(ri.half().cpu())
        r_out.append(ro.half().cpu())
        temb.append(_time_embedding(unet, x, t)[:1].half().cpu())
    res = stack_recorded({f"r_in.c{cut}": r_in, f"r_out.c{cut}": r_out, "temb": temb}, dev)
    return {**res, "temb": res["temb"][:, 0], "text": ctx.mean(dim=1).half().cpu(),
            "timesteps": scheduler.timesteps.detach().cpu().to(torch.float32)}
