"""The embedded world's data: real Fashion-MNIST images, tinted and sized, with captions that say so.

Every caption describes attributes the rendered image really has: the garment class (the label),
the colour the item is tinted with and its size on the 32x32 canvas. 10 classes x 8 colours x 2 sizes
give 160 distinct prompt *contents*, each written in several phrasings. Attributes are drawn from a
seeded generator per image index, so the same index always renders the same image and caption.

Splits: the Fashion-MNIST ``train`` file is the training split (teacher, CLIP scorer, distillation
prompts); the ``t10k`` file is held out (evaluation prompts and FID reference images). Held-out
captions use one phrasing the training split never sees.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "Fashion-MNIST not found. Install Debian's package (`apt-get install -y dataset-fashion-mnist`, "
    "files land in /usr/share/datasets/fashion-mnist) or point `data.root` in params.yaml / "
    "the CLOCKWORK_FASHION_MNIST environment variable at a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz."
)

CLASSES = ["t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
COLOURS = {
    "red": (1.0, 0.15, 0.15),
    "green": (0.2, 0.9, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "purple": (0.7, 0.2, 0.95),
    "cyan": (0.1, 0.9, 0.95),
    "orange": (1.0, 0.55, 0.05),
    "white": (1.0, 1.0, 1.0),
}
COLOUR_NAMES = list(COLOURS)
SIZES = ["small", "large"]
SIZE_PIXELS = {"small": 18, "large": 32}
TEMPLATES = [
    "a {size} {colour} {item}",
    "a photo of a {size} {colour} {item}",
    "{colour} {item}, {size}",
    "a {item} in {colour}, {size} size",  # held-out phrasing: only evaluation prompts use it
]
TRAIN_TEMPLATES = (0, 1, 2)
HELDOUT_TEMPLATES = (0, 1, 2, 3)
IMAGE_SIZE = 32
NUM_CONTENTS = len(CLASSES) * len(COLOURS) * len(SIZES)


@dataclass(frozen=True)
class Caption:
    label: int
    colour: int
    size: int
    template: int

    @property
    def content(self) -> int:
        """Index of the prompt content (class, colour, size), independent of phrasing."""
        return (self.label * len(COLOURS) + self.colour) * len(SIZES) + self.size

    @property
    def text(self) -> str:
        return TEMPLATES[self.template].format(
            size=SIZES[self.size], colour=COLOUR_NAMES[self.colour], item=CLASSES[self.label]
        )


def content_text(content: int, template: int = 0) -> str:
    label, rest = divmod(content, len(COLOURS) * len(SIZES))
    colour, size = divmod(rest, len(SIZES))
    return Caption(label, colour, size, template).text


def all_prompt_strings() -> list[str]:
    """Every caption string the embedded world can produce (contents x phrasings), in a fixed order."""
    return [content_text(c, t) for c in range(NUM_CONTENTS) for t in range(len(TEMPLATES))]


SPLIT_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "heldout": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_root(root: str | os.PathLike | None = None, splits: tuple[str, ...] = ("train", "heldout")) -> Path:
    """The Fashion-MNIST folder, checked to hold the files of ``splits`` (a machine that only evaluates needs only
    the held-out pair)."""
    path = Path(root or os.environ.get("CLOCKWORK_FASHION_MNIST") or DEFAULT_ROOT)
    needed = [name for split in splits for name in SPLIT_FILES[split]]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{INSTALL_HINT} Looked in {path}; missing: {', '.join(missing)}.")
    return path


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def load_split(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gray images (N, 28, 28) uint8 and labels (N,) of ``split`` in {"train", "heldout"}."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    base = fashion_root(root, (split,))
    image_file, label_file = SPLIT_FILES[split]
    images = _read_idx(base / image_file)
    labels = _read_idx(base / label_file)
    if len(images) != len(labels):
        raise ValueError(f"{base}: {len(images)} images but {len(labels)} labels in {image_file}")
    return images, labels


def captions_for(labels: np.ndarray, split: str, seed: int = 0) -> list[Caption]:
    """Deterministic attributes and phrasing for each image of a split."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    n = len(labels)
    colours = rng.integers(0, len(COLOURS), n)
    sizes = rng.integers(0, len(SIZES), n)
    templates = np.asarray(TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES)[
        rng.integers(0, len(TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES), n)
    ]
    return [Caption(int(l), int(c), int(s), int(t)) for l, c, s, t in zip(labels, colours, sizes, templates)]


_COLOUR_TABLE = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=torch.float32)
_SIZE_TABLE = [SIZE_PIXELS[s] for s in SIZES]


def render(gray: torch.Tensor, colour: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Render gray items (N, 28, 28) uint8 as tinted RGB images in [-1, 1], (N, 3, 32, 32), on gray's device.

    ``colour`` and ``size`` are index tensors (N,). Small items are drawn centred on a black canvas.
    """
    x = gray.float().div(255.0).unsqueeze(1)
    out = torch.zeros(len(x), 1, IMAGE_SIZE, IMAGE_SIZE, device=x.device)
    for s_idx, px in enumerate(_SIZE_TABLE):
        sel = (size == s_idx).nonzero().flatten()
        if len(sel) == 0:
            continue
        resized = F.interpolate(x[sel], size=(px, px), mode="bilinear", align_corners=False, antialias=px < 28)
        o = (IMAGE_SIZE - px) // 2
        out[sel, :, o : o + px, o : o + px] = resized
    tint = _COLOUR_TABLE.to(x.device)[colour].view(-1, 3, 1, 1)
    return (out * tint).clamp(0, 1) * 2 - 1


class CaptionedFashion:
    """A split of the embedded world: gray items, their captions, and a renderer to RGB tensors."""

    def __init__(self, split: str, root: str | os.PathLike | None = None, seed: int = 0, limit: int | None = None):
        images, labels = load_split(split, root)
        captions = captions_for(labels, split, seed)  # of the whole split, so `limit` never changes image i's caption
        if limit is not None:
            images, labels, captions = images[:limit], labels[:limit], captions[:limit]
        self.split = split
        self.gray = torch.from_numpy(images.copy())
        self.captions = captions
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.colour = torch.tensor([c.colour for c in self.captions])
        self.size = torch.tensor([c.size for c in self.captions])
        self.content = torch.tensor([c.content for c in self.captions])
        self.texts = [c.text for c in self.captions]

    def __len__(self) -> int:
        return len(self.captions)

    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """RGB images in [-1, 1] for ``index`` (all when None)."""
        idx = slice(None) if index is None else index
        return render(self.gray[idx], self.colour[idx], self.size[idx])

    def images_uint8(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        return ((self.images(index) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
