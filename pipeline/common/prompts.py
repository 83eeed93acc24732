"""Prompts for distillation: COCO captions, an SD-family pipeline's own text encoding, and the prompt sources
``distill.source: online`` streams to the teacher (:class:`clockwork.online.PromptSource`).

The sources give exactly the inputs the trajectories stage unrolls (:func:`pipeline.common.store.ensure_trajectories`):
token states as data/prepared's embedding table holds them (fp16, read back as float32), the UNet's added
conditioning from the pooled embeddings (:meth:`World.added_cond`: SDXL's text_embeds + time_ids, else None), and the
negative prompt's from the table's empty prompt - so an online and a stored pair of the same prompt, noise and step
agree. Only a batch of prompts is ever encoded at a time: 50 000 captions never sit in memory as embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def coco_captions(path: str) -> list[tuple[str, str]]:
    """(image file name, first caption) per image of a COCO captions json, in image-id order."""
    d = json.loads(Path(path).read_text())
    names = {im["id"]: im["file_name"] for im in d["images"]}
    first: dict[int, str] = {}
    for a in sorted(d["annotations"], key=lambda a: a["id"]):
        first.setdefault(a["image_id"], a["caption"].strip())
    return [(names[i], first[i]) for i in sorted(first) if i in names]


class PipelineText:
    """Prompts -> (token states, pooled) with an SD-family pipeline's own ``encode_prompt`` (SD: the CLIP text
    encoder's last states, pooled = their mean, unused; SDXL: both encoders' penultimate states concatenated,
    pooled = text_encoder_2's projection, the UNet's ``text_embeds``). The empty prompt gets what the pipeline
    uses as the negative prompt (SDXL with ``force_zeros_for_empty_prompt``: zeros)."""

    def __init__(self, pipe, device: str):
        self.pipe, self.device = pipe, device
        self.is_xl = type(pipe).__name__ == "StableDiffusionXLPipeline"

    def _encode(self, prompts: list[str], negative: bool = False):
        with torch.no_grad():
            out = self.pipe.encode_prompt(prompt=prompts, device=self.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=negative)
        if self.is_xl:  # (embeds, negative, pooled, negative pooled)
            states, pooled = (out[1], out[3]) if negative else (out[0], out[2])
        else:  # (embeds, negative)
            states = out[1] if negative else out[0]
            pooled = states.mean(1)
        return states.float().cpu(), pooled.float().cpu()

    def __call__(self, prompts: list[str], batch_size: int = 64):
        states, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            s, q = self._encode(prompts[i:i + batch_size])
            states.append(s)
            pooled.append(q)
        states, pooled = torch.cat(states), torch.cat(pooled)
        empty = [i for i, x in enumerate(prompts) if x == ""]
        if empty:
            s, q = self._encode(["-"], negative=True)  # negative_prompt=None: the pipeline's own unconditional input
            states[empty], pooled[empty] = s, q
        return states, pooled


AddedCond = Callable[[torch.Tensor], "dict[str, torch.Tensor] | None"]


class TablePrompts:
    """Prompts whose embeddings data/prepared's table holds (the embedded world's distillation prompts), looked up
    per batch as :func:`ensure_trajectories` looks them up."""

    def __init__(self, table, prompts: Sequence[str], added_cond: AddedCond):
        table.index(list(prompts))  # every prompt is in the table: fail now, not mid-training
        self.table, self.prompts, self.added_cond = table, list(prompts), added_cond

    def __len__(self) -> int:
        return len(self.prompts)

    def embed(self, indices: list[int]):
        ctx, pooled = self.table.lookup([self.prompts[i] for i in indices])
        return ctx, self.added_cond(pooled)


class EncodedPrompts:
    """Captions encoded per batch by ``encode`` (:class:`PipelineText`), rounded to fp16 as the embedding table
    stores them (:meth:`clockwork.embedded.text.EmbeddingTable.build`), so they match a prepared prompt's lookup."""

    def __init__(self, captions: Sequence[str], encode: Callable, added_cond: AddedCond):
        self.captions, self.encode, self.added_cond = list(captions), encode, added_cond

    def __len__(self) -> int:
        return len(self.captions)

    def embed(self, indices: list[int]):
        states, pooled = self.encode([self.captions[i] for i in indices])
        return states.half().float(), self.added_cond(pooled.half().float())


def embedded_online_prompts(distill_prompts: Sequence[str], heldout: int, n: int = 0) -> list[str]:
    """The embedded world's online training prompts: the prepared distillation prompts but the last ``heldout``
    (the store's held-out ones, :func:`split_trajectories`), the first ``n`` of them (0 = all)."""
    train = list(distill_prompts)[:len(distill_prompts) - heldout]
    if n > len(train):
        raise ValueError(f"distill.online.prompts={n} > the {len(train)} prepared distillation prompts not held out")
    return train[:n] if n else train


def sd_online_captions(path: str, exclude: Sequence[str], n: int = 0) -> list[str]:
    """An SD world's online training captions: the first caption of every image of the COCO captions json ``path``
    (world.distill_captions), in image-id order, but any caption of the trajectory store (``exclude``: data/prepared's
    distillation prompts, a seeded draw from the same file), the first ``n`` of them (0 = all)."""
    skip = set(exclude)
    caps = [c for _, c in coco_captions(path) if c not in skip and c != ""]
    if n > len(caps):
        raise ValueError(f"distill.online.prompts={n} > the {len(caps)} captions of {path} that are not the "
                         "trajectory store's")
    return caps[:n] if n else caps


def negative_prompt(table, added_cond: AddedCond):
    """The negative prompt as the trajectories stage gives it: the table's empty prompt (1, L, D), and for a UNet
    with added conditioning ``(embeds, added)``."""
    neg, neg_pooled = table.uncond(1)
    added = added_cond(neg_pooled)
    return neg if added is None else (neg, added)
