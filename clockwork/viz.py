"""Pictures people look at: image grids with a caption under each image."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def image_grid(images_uint8: torch.Tensor | np.ndarray, captions: Sequence[str] | None = None, ncols: int = 8,
               scale: int = 4, caption_lines: int = 2, row_titles: Sequence[str] | None = None) -> Image.Image:
    """Tile uint8 images (N, 3, H, W) into one picture, each scaled ``scale``x, with its caption below."""
    imgs = np.asarray(torch.as_tensor(images_uint8).cpu())
    if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {imgs.dtype} {imgs.shape}")
    n, _, h, w = imgs.shape
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    font = ImageFont.load_default()
    cw, ch = w * scale, h * scale
    chars = max(8, cw // 6)
    cap_h = 12 * caption_lines + 4 if captions else 0
    title_w = 110 if row_titles else 0
    grid = Image.new("RGB", (title_w + ncols * cw, nrows * (ch + cap_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, ncols)
        x, y = title_w + c * cw, r * (ch + cap_h)
        tile = Image.fromarray(imgs[i].transpose(1, 2, 0)).resize((cw, ch), Image.NEAREST)
        grid.paste(tile, (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], chars)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + ch + 2 + 12 * j), line, fill="black", font=font)
    if row_titles:
        for r, title in enumerate(row_titles[:nrows]):
            for j, line in enumerate(textwrap.wrap(title, 17)[:4]):
                draw.text((4, r * (ch + cap_h) + ch // 2 - 12 + 12 * j), line, fill="black", font=font)
    return grid
