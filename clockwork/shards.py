"""Trajectory shards read without loading them: safetensors headers, memory maps and a row-gathering view.

One cut of a trajectory store at real SD shapes is 45-181 MB per prompt, so a store of many prompts cannot be
loaded whole. :class:`ShardRows` presents one tensor of every shard, concatenated along its row axis, over
read-only memory maps of the files: gathering a batch the way :class:`clockwork.distill.PairDataset` does reads
and copies only those rows, and a row mask (a train/held-out split, a prompt subset) or the zero step in front
of a trajectory gives a new view. Gathered values are the stored ones bit for bit, so batches equal those of
the concatenated in-memory tensors.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

# safetensors dtype -> (numpy dtype to map it with, torch dtype); bf16 is mapped as uint16 and viewed
DTYPES = {"F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
          "BF16": (np.uint16, torch.bfloat16), "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32),
          "I16": (np.int16, torch.int16), "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8),
          "BOOL": (np.bool_, torch.bool)}


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """(``{name: {"dtype", "shape", "data_offsets"}}``, byte offset of the data) of a safetensors file.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for one that is truncated
    or not safetensors: the cheap check before a long run reads it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard missing; re-run `trajectories` to resume")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes); delete it and re-run "
                             "`trajectories` to resume")
        try:
            entries = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e}); delete it and re-run `trajectories`") from None
    entries.pop("__metadata__", None)
    end = max((e["data_offsets"][1] for e in entries.values()), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated ({size} bytes, its header needs {8 + n + end}); delete it and re-run "
                         "`trajectories` to resume")
    return entries, 8 + n


def entry_bytes(entry: dict) -> int:
    """Bytes of one tensor of a safetensors header."""
    return math.prod(entry["shape"]) * np.dtype(DTYPES[entry["dtype"]][0]).itemsize


def map_tensors(path: str | os.PathLike, names=None) -> dict[str, torch.Tensor]:
    """Tensors ``names`` (all by default) of a safetensors file as CPU tensors over one read-only memory map of
    it: nothing is read until indexed. Never write into them."""
    entries, start = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for k in entries if names is None else names:
        e = entries[k]
        np_dtype, dtype = DTYPES[e["dtype"]]
        b0, b1 = e["data_offsets"]
        arr = mm[start + b0:start + b1].view(np_dtype).reshape(e["shape"])
        with warnings.catch_warnings():  # "not writable": gathers copy, nothing writes into a map
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
        out[k] = t.view(dtype) if dtype == torch.bfloat16 else t
    return out


class ShardRows:
    """One tensor of every shard, concatenated along the row axis ``axis`` (1 for per-step tensors
    (S, rows, ...), 0 for per-row ones (rows, ...)), without loading it.

    ``rows`` (N, 2) maps each row of the view to (shard, row of that shard's tensor): a row mask selects
    from it, and a shard may list a stored row twice (its CFG halves share one x_t). ``pad`` zero steps
    stand in front of the stored ones (step s of the view is stored step s - pad; see :meth:`pad_step`) and
    ``steps`` limits the stored steps seen (a shard's latents hold one more, the final state).

    Indexing, as the trajectory code uses it: ``x[step, row]`` (index tensors or ints, broadcast) on per-step
    views and ``x[row]`` on per-row ones gather a tensor; ``x[:, rows]`` (bool mask, index tensor or slice) and,
    per row, ``x[mask]`` / ``x[slice]`` give a new view; ``x[i]`` on a per-step view gathers step i, every row
    of it. :meth:`materialize` gathers all. The view stays on the host: ``to("cpu")`` is itself; other devices
    take the gathered batches.
    """

    def __init__(self, parts: list[torch.Tensor], axis: int, rows: torch.Tensor | None = None, pad: int = 0,
                 steps: int | None = None):
        if axis not in (0, 1) or not parts:
            raise ValueError(f"ShardRows needs shard tensors and a row axis 0 or 1, got {len(parts)} and axis={axis}")
        tail, dtype = tuple(parts[0].shape[axis + 1:]), parts[0].dtype
        stored = parts[0].shape[0] if axis == 1 else 0
        for i, p in enumerate(parts):
            if tuple(p.shape[axis + 1:]) != tail or p.dtype != dtype or (axis == 1 and p.shape[0] != stored):
                raise ValueError(f"shard {i} holds {p.dtype} {tuple(p.shape)}, "
                                 f"unlike shard 0's {dtype} {tuple(parts[0].shape)}")
        if rows is None:
            rows = torch.cat([torch.stack([torch.full((p.shape[axis],), i), torch.arange(p.shape[axis])], 1)
                              for i, p in enumerate(parts)])
        self.parts, self.axis, self.rows, self.pad = parts, axis, rows, pad
        self.steps = stored if steps is None else steps
        self.dtype, self._tail = dtype, tail

    @property
    def shape(self) -> torch.Size:
        n = len(self.rows)
        return torch.Size((self.pad + self.steps, n, *self._tail) if self.axis == 1 else (n, *self._tail))

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardRows({self.dtype}, shape={tuple(self.shape)}, {len(self.parts)} shards)"

    def _view(self, rows: torch.Tensor | None = None, pad: int | None = None) -> ShardRows:
        return ShardRows(self.parts, self.axis, self.rows if rows is None else rows,
                         self.pad if pad is None else pad, self.steps)

    def pad_step(self) -> ShardRows:
        """The view with one more zero step in front (``torch.cat([zeros_like(x[:1]), x])`` of a tensor)."""
        if self.axis != 1:
            raise ValueError("only per-step views have steps to pad")
        return self._view(pad=self.pad + 1)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if self.axis == 0 and len(key) == 1:
            k = key[0]
            return self._view(self.rows[k]) if _selects(k) else self._gather(None, k)
        if self.axis == 1 and len(key) == 2 and isinstance(key[0], slice) and key[0] == slice(None):
            return self._view(self.rows[key[1]])  # a row mask, index tensor or slice: a new view
        if self.axis == 1 and len(key) == 2:
            return self._gather(*key)
        if self.axis == 1 and len(key) == 1 and isinstance(key[0], int):
            return self._gather(key[0], torch.arange(len(self.rows)))
        raise TypeError(f"{self!r} supports x[step, row], x[:, mask] and x[i] (per-step) or x[row] and x[mask] "
                        f"(per-row), not {key}")

    def _gather(self, step, row) -> torch.Tensor:
        """The rows ``self[step, row]`` (per-step view) or ``self[row]`` (per-row view) as one new tensor."""
        n = len(self.rows)
        row = torch.as_tensor(row).cpu().long()
        if self.axis == 1:
            step, row = torch.broadcast_tensors(torch.as_tensor(step).cpu().long(), row)
            step = torch.where(step < 0, step + self.pad + self.steps, step)
            if step.numel() and (step.min() < 0 or step.max() >= self.pad + self.steps):
                raise IndexError(f"step index out of range for {self!r}")
        if row.numel() and (row.min() < -n or row.max() >= n):
            raise IndexError(f"row index out of range for {self!r}")
        where = self.rows[torch.where(row < 0, row + n, row).reshape(-1)]
        out = torch.zeros((len(where), *self._tail), dtype=self.dtype)
        stored = step.reshape(-1) - self.pad if self.axis == 1 else torch.zeros(len(where), dtype=torch.long)
        live = stored >= 0  # the padded steps in front stay zero
        for p in where[live, 0].unique().tolist():
            sel = (live & (where[:, 0] == p)).nonzero()[:, 0]
            src = self.parts[p]
            out[sel] = src[stored[sel], where[sel, 1]] if self.axis == 1 else src[where[sel, 1]]
        return out.view(*row.shape, *self._tail)

    def materialize(self) -> torch.Tensor:
        """The whole view as one tensor: what ``TrajectoryStore.load(..., lazy=False)`` holds."""
        if self.axis == 0:
            return self._gather(None, torch.arange(len(self.rows)))
        return self._gather(torch.arange(len(self))[:, None], torch.arange(len(self.rows))[None, :])

    def to(self, device=None, dtype=None) -> ShardRows:
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if (device is None or torch.device(device).type == "cpu") and dtype in (None, self.dtype):
            return self
        raise TypeError(f"{self!r} stays on the host in its stored dtype; gather rows (x[step, row]) and move those")

    def cpu(self) -> ShardRows:
        return self


def _selects(k) -> bool:
    """Whether per-row index ``k`` selects rows (a mask, a slice: a new view) rather than gathering them."""
    return isinstance(k, slice) or (isinstance(k, torch.Tensor) and k.dtype == torch.bool)
