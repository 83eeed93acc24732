"""Sample grids: the same prompts and seeds under every method, one row each."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clockwork.viz import image_grid


def sample_grid(rows: dict[str, torch.Tensor], prompts: Sequence[str], n: int):
    """One row per method, the same prompts and seeds in every column, the prompt under each image."""
    names = list(rows)
    images = torch.cat([rows[k][:n] for k in names])
    captions = [p for _ in names for p in prompts[:n]]
    return image_grid(images, captions, ncols=n, row_titles=names)
