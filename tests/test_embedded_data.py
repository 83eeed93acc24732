"""The embedded world's data and text side: idx parsing, captions that match pixels, the embedding table."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clockwork.embedded import data as D  # noqa: E402
from clockwork.embedded.text import HIDDEN, MAX_TOKENS, EmbeddingTable  # noqa: E402


def _write_idx(path: Path, array: np.ndarray) -> None:
    # idx format: 2 zero bytes, type code 0x08 (uint8), ndim, then big-endian int32 dims and raw bytes.
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(root: Path, n_train: int = 12, n_test: int = 6) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


# ----------------------------------------------------------------------------------------------- idx files


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    out = D._read_idx(tmp_path / "x.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "float.gz", "wb") as f:  # type code 0x0D = float32, not supported
        f.write(bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + bytes(16))
    with pytest.raises(ValueError, match="unsigned bytes"):
        D._read_idx(tmp_path / "float.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:  # header promises 10 bytes, holds 3
        f.write(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match="header says"):
        D._read_idx(tmp_path / "short.gz")


def test_fake_dataset_loads_from_root(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    train = D.CaptionedFashion("train", root=tmp_path)
    held = D.CaptionedFashion("heldout", root=tmp_path)
    assert len(train) == 12 and len(held) == 6
    assert train.images().shape == (12, 3, 32, 32)
    assert train.labels.tolist() == [i % 10 for i in range(12)]


def test_missing_files_error_mentions_apt_get(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        D.fashion_root(tmp_path)
    msg = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg


# ----------------------------------------------------------------------------------------------- captions


@pytest.fixture(scope="module")
def train() -> D.CaptionedFashion:
    return D.CaptionedFashion("train", limit=3000)


@pytest.fixture(scope="module")
def heldout() -> D.CaptionedFashion:
    return D.CaptionedFashion("heldout", limit=3000)


def test_contents_are_many_and_distinct() -> None:
    texts = [D.content_text(c) for c in range(D.NUM_CONTENTS)]
    assert D.NUM_CONTENTS >= 100 and len(set(texts)) == D.NUM_CONTENTS
    prompts = D.all_prompt_strings()
    assert len(prompts) == len(set(prompts)) == D.NUM_CONTENTS * len(D.TEMPLATES)


def test_captions_use_many_contents(train: D.CaptionedFashion) -> None:
    assert len(set(train.content.tolist())) >= 100


def test_captions_are_deterministic(train: D.CaptionedFashion) -> None:
    again = D.CaptionedFashion("train", limit=3000)
    assert again.texts == train.texts
    torch.testing.assert_close(again.images(slice(0, 16)), train.images(slice(0, 16)))
    other_seed = D.CaptionedFashion("train", limit=3000, seed=1)
    assert other_seed.texts != train.texts


def test_limit_keeps_each_images_caption(heldout: D.CaptionedFashion) -> None:
    """`limit` truncates the split; image i keeps the caption (and the rendering) it has in the whole split."""
    short = D.CaptionedFashion("heldout", limit=200)
    assert short.texts == heldout.texts[:200]
    torch.testing.assert_close(short.images(slice(0, 16)), heldout.images(slice(0, 16)))


def test_heldout_phrasing_never_in_train(train: D.CaptionedFashion, heldout: D.CaptionedFashion) -> None:
    unseen = len(D.TEMPLATES) - 1
    assert unseen not in D.TRAIN_TEMPLATES
    assert {c.template for c in train.captions} == set(D.TRAIN_TEMPLATES)
    assert unseen in {c.template for c in heldout.captions}
    unseen_texts = {D.content_text(c, unseen) for c in range(D.NUM_CONTENTS)}
    assert not unseen_texts & set(train.texts)


def test_caption_text_names_its_attributes(train: D.CaptionedFashion) -> None:
    for cap, text in zip(train.captions[:200], train.texts[:200]):
        assert D.CLASSES[cap.label] in text and D.COLOUR_NAMES[cap.colour] in text and D.SIZES[cap.size] in text


def _word_index(texts: list[str], names: list[str]) -> torch.Tensor:
    """Which of ``names`` each caption says, read from the text itself (not from the attributes)."""
    out = []
    for text in texts:
        words = set(re.findall(r"[a-z]+", text))
        hits = [i for i, n in enumerate(names) if n in words]
        assert len(hits) == 1, text
        out.append(hits[0])
    return torch.tensor(out)


def test_colour_words_match_pixels(heldout: D.CaptionedFashion) -> None:
    x = heldout.images()
    # Mean channel value over the item's lit pixels (background is black: -1).
    lit = (x.max(1, keepdim=True).values > -0.8).float()
    rgb = ((x + 1) / 2 * lit).sum((2, 3)) / lit.sum((2, 3)).clamp(min=1)
    colour = _word_index(heldout.texts, D.COLOUR_NAMES)
    red, blue, green = (D.COLOUR_NAMES.index(c) for c in ("red", "blue", "green"))
    assert (rgb[colour == red, 0] > rgb[colour == red, 2]).float().mean() > 0.99
    assert (rgb[colour == blue, 2] > rgb[colour == blue, 0]).float().mean() > 0.99
    assert (rgb[colour == green, 1] > rgb[colour == green, 0]).float().mean() > 0.99
    # Per caption colour, the mean tint direction matches the palette entry best.
    palette = torch.tensor([D.COLOURS[c] for c in D.COLOUR_NAMES])
    for k in range(len(D.COLOUR_NAMES)):
        mean = torch.nn.functional.normalize(rgb[colour == k].mean(0), dim=0)
        assert (torch.nn.functional.normalize(palette, dim=1) @ mean).argmax() == k


def test_size_words_match_pixels(heldout: D.CaptionedFashion) -> None:
    x = heldout.images()
    o = (D.IMAGE_SIZE - D.SIZE_PIXELS["small"]) // 2
    border = torch.ones(D.IMAGE_SIZE, D.IMAGE_SIZE, dtype=torch.bool)
    border[o : o + D.SIZE_PIXELS["small"], o : o + D.SIZE_PIXELS["small"]] = False
    small = _word_index(heldout.texts, D.SIZES) == D.SIZES.index("small")
    # Small items sit on a black frame; large ones reach into it.
    assert torch.all(x[small][:, :, border] == -1)
    reaches = (x[~small][:, :, border] > -0.9).flatten(1).any(1)
    assert reaches.float().mean() > 0.95
    # And small items light fewer pixels than large ones.
    lit = (x.max(1).values > -0.8).float().mean((1, 2))
    assert lit[small].mean() < 0.5 * lit[~small].mean()


# ----------------------------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def table() -> EmbeddingTable:
    return EmbeddingTable.build(D.all_prompt_strings())


def test_embedding_table_shapes(table: EmbeddingTable) -> None:
    n = D.NUM_CONTENTS * len(D.TEMPLATES) + 1  # + the empty prompt at index 0
    assert table.states.shape == (n, MAX_TOKENS, HIDDEN) == (n, 16, 384)
    assert table.pooled.shape == (n, HIDDEN)
    assert table.states.dtype == table.pooled.dtype == torch.float16
    assert table.prompts[0] == "" and torch.isfinite(table.states.float()).all()
    # Different prompts get different embeddings; same content in other words stays closest to itself.
    p = torch.nn.functional.normalize(table.pooled.float(), dim=-1)
    a = table.index([D.content_text(c, 0) for c in range(D.NUM_CONTENTS)])
    b = table.index([D.content_text(c, 1) for c in range(D.NUM_CONTENTS)])
    assert ((p[a] @ p[b].T).argmax(1) == torch.arange(D.NUM_CONTENTS)).float().mean() > 0.5


def test_embedding_table_save_load(table: EmbeddingTable, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "emb.safetensors"
    table.save(path)
    loaded = EmbeddingTable.load(path)
    assert loaded.prompts == table.prompts
    assert torch.equal(loaded.states, table.states) and torch.equal(loaded.pooled, table.pooled)
    prompts = [D.content_text(5, 3), ""]
    for x, y in zip(loaded.lookup(prompts), table.lookup(prompts)):
        assert torch.equal(x, y)
    with pytest.raises(KeyError):
        loaded.index(["not a caption"])
    with pytest.raises(FileNotFoundError, match="prepare"):
        EmbeddingTable.load(tmp_path / "missing.safetensors")
