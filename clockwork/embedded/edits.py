"""Attribute edits in the embedded world, and how to score them from pixels.

An edit changes one attribute of a held-out image's caption - its colour, its size or the item - and asks an
editing method to change the image accordingly. Because the world renders every image from a gray item, a tint
and a size, the ideal result of a colour or size edit is known exactly: the same gray item rendered with the
target attributes (:func:`ideal_images`). Scores (:func:`score_edits`):

- edit success: the changed attribute read back from pixels (colour: the foreground's mean chroma, nearest of
  the world's colours; size: the foreground's extent; item: the embedded CLIP scorer's choice among the ten
  items) and the scorer's preference for the target over the source prompt;
- structure kept (colour and size edits, where the item does not change): IoU of the edited and the ideal
  foreground masks, and SSIM of their gray structure (the maximum over the colour channels, which undoes the tint).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clockwork.embedded.data import CLASSES, COLOUR_NAMES, COLOURS, SIZE_PIXELS, SIZES, Caption, render

ATTRIBUTES = ("colour", "size", "item")
_CHOICES = {"colour": COLOUR_NAMES, "size": SIZES, "item": CLASSES}
_FIELD = {"colour": "colour", "size": "size", "item": "label"}
MASK_THRESHOLD = 0.2  # foreground: max channel above this (in [0, 1]); the world's background is black
SIZE_SPLIT = (SIZE_PIXELS["small"] + SIZE_PIXELS["large"]) / 2  # extent in px between a small and a large item


@dataclass(frozen=True)
class Edit:
    index: int  # held-out image
    attribute: str
    source: Caption
    target: Caption


def edit_caption(caption: Caption, attribute: str, value: str) -> Caption:
    """``caption`` with one attribute set to ``value`` (same phrasing)."""
    if attribute not in _CHOICES:
        raise ValueError(f"unknown attribute {attribute!r}; editable attributes: {list(ATTRIBUTES)}")
    choices = _CHOICES[attribute]
    if value not in choices:
        raise ValueError(f"unknown {attribute} {value!r}; the embedded world's {attribute}s: {choices}")
    fields = {"label": caption.label, "colour": caption.colour, "size": caption.size, "template": caption.template}
    fields[_FIELD[attribute]] = choices.index(value)
    return Caption(**fields)


def make_edits(captions: list[Caption], attributes: tuple[str, ...] = ATTRIBUTES, seed: int = 0) -> list[Edit]:
    """One edit per caption: the attributes in rotation, the target value drawn (seeded) among the other values."""
    unknown = [a for a in attributes if a not in _CHOICES]
    if unknown or not attributes:
        raise ValueError(f"unknown edit attributes {unknown}; choose among {list(ATTRIBUTES)}")
    rng = np.random.default_rng(seed)
    edits = []
    for i, cap in enumerate(captions):
        attr = attributes[i % len(attributes)]
        current = getattr(cap, _FIELD[attr])
        others = [v for v in range(len(_CHOICES[attr])) if v != current]
        value = _CHOICES[attr][others[int(rng.integers(len(others)))]]
        edits.append(Edit(i, attr, cap, edit_caption(cap, attr, value)))
    return edits


def ideal_images(gray: torch.Tensor, edits: list[Edit]) -> torch.Tensor:
    """The exact result of each edit that keeps the item: the gray item with the target colour and size, [-1, 1]."""
    colour = torch.tensor([e.target.colour for e in edits])
    size = torch.tensor([e.target.size for e in edits])
    return render(gray, colour, size)


# ---- reading attributes back from pixels ------------------------------------------------------------------------
def _unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 255.0


def gray_structure(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1]: the max over the channels, which undoes the world's tints (each has a channel ~1)."""
    return _unit(images_uint8).amax(dim=1, keepdim=True)


def foreground(images_uint8: torch.Tensor) -> torch.Tensor:
    return gray_structure(images_uint8)[:, 0] > MASK_THRESHOLD


def measured_colour(images_uint8: torch.Tensor) -> torch.Tensor:
    """Index into the world's colours of each image's foreground chroma (mean colour over the mask, max-normalised)."""
    x = _unit(images_uint8)
    mask = foreground(images_uint8).unsqueeze(1).float()
    mean = (x * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)
    chroma = mean / mean.amax(dim=1, keepdim=True).clamp_min(1e-6)
    table = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])
    table = table / table.amax(dim=1, keepdim=True)
    return torch.cdist(chroma, table).argmin(dim=1)


def measured_size(images_uint8: torch.Tensor) -> torch.Tensor:
    """Index into SIZES: the foreground's extent (the larger side of its bounding box) against the world's sizes."""
    mask = foreground(images_uint8)
    rows, cols = mask.any(dim=2), mask.any(dim=1)

    def extent(m):
        idx = torch.arange(m.shape[1]).expand_as(m)
        hi = torch.where(m, idx, -1).amax(dim=1)
        lo = torch.where(m, idx, m.shape[1]).amin(dim=1)
        return (hi - lo + 1).clamp_min(0)

    ext = torch.maximum(extent(rows), extent(cols))
    return (ext.float() > SIZE_SPLIT).long()


def measured_item(images_uint8: torch.Tensor, colour: list[int], size: list[int], clip) -> torch.Tensor:
    """Index into CLASSES: the CLIP scorer's best of the ten item captions with the given colour and size."""
    scores = []
    for label in range(len(CLASSES)):
        prompts = [Caption(label, c, s, 0).text for c, s in zip(colour, size)]
        scores.append(clip(images_uint8, prompts))
    return torch.stack(scores, dim=1).argmax(dim=1)


def mask_iou(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
    a, b = foreground(a_uint8), foreground(b_uint8)
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def structure_ssim(a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of the gray structures (torchmetrics, 7x7 Gaussian window, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    return ssim(gray_structure(a_uint8), gray_structure(b_uint8), data_range=1.0, reduction="none", kernel_size=7)


def score_edits(edited_uint8: torch.Tensor, edits: list[Edit], ideal_uint8: torch.Tensor, clip) -> dict[str, torch.Tensor]:
    """Per-edit scores (tensors of length N; NaN where a score does not apply to the edit's attribute).

    ``clip(images_uint8, prompts)`` is a CLIP scorer (e.g. :class:`clockwork.metrics.EmbeddedCLIPScorer`).
    """
    if len(edited_uint8) != len(edits) or len(ideal_uint8) != len(edits):
        raise ValueError(f"{len(edited_uint8)} edited and {len(ideal_uint8)} ideal images for {len(edits)} edits")
    n = len(edits)
    nan = torch.full((n,), float("nan"))
    attr = [e.attribute for e in edits]
    s_t = clip(edited_uint8, [e.target.text for e in edits])
    s_s = clip(edited_uint8, [e.source.text for e in edits])
    colour, size = measured_colour(edited_uint8), measured_size(edited_uint8)
    success = nan.clone()
    for a, got in (("colour", colour), ("size", size)):
        sel = torch.tensor([x == a for x in attr])
        want = torch.tensor([getattr(e.target, _FIELD[a]) for e in edits])
        success[sel] = (got == want)[sel].float()
    item_sel = [i for i, a in enumerate(attr) if a == "item"]
    if item_sel:
        tgt = [edits[i].target for i in item_sel]
        got = measured_item(edited_uint8[item_sel], [c.colour for c in tgt], [c.size for c in tgt], clip)
        success[item_sel] = (got == torch.tensor([c.label for c in tgt])).float()
    keeps = torch.tensor([a != "item" for a in attr])
    iou, ssim = nan.clone(), nan.clone()
    if keeps.any():
        iou[keeps] = mask_iou(edited_uint8[keeps], ideal_uint8[keeps])
        ssim[keeps] = structure_ssim(edited_uint8[keeps], ideal_uint8[keeps]).float()
    return {"attribute_success": success, "clip_preference": (s_t > s_s).float(), "clip_margin": s_t - s_s,
            "mask_iou": iou, "structure_ssim": ssim}


__all__ = ["ATTRIBUTES", "Edit", "edit_caption", "foreground", "gray_structure", "ideal_images", "make_edits",
           "mask_iou", "measured_colour", "measured_item", "measured_size", "score_edits", "structure_ssim"]
