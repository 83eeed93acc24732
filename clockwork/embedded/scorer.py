"""The embedded world's CLIP stand-in: a tiny contrastive image-text model for 32x32 captioned Fashion-MNIST.

No CLIP can be had offline, so prompt adherence in the embedded world is scored by this model instead.
Image tower: a small conv net (GroupNorm, so eval == train behaviour) whose 4x4 feature map is
flattened rather than pooled, because item *size* (a black border or not) is a spatial attribute.
Text tower: the frozen MiniLM pooled embedding (from an :class:`EmbeddingTable`) + a learned MLP.
Both map to a shared unit sphere; a learned temperature scales the logits during training.
The score follows torchmetrics' CLIPScore: ``100 * max(cos(image, text), 0)`` per image.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from tqdm.auto import tqdm

from clockwork.embedded.data import COLOURS, IMAGE_SIZE, NUM_CONTENTS, SIZES, CaptionedFashion, content_text
from clockwork.embedded.text import HIDDEN, EmbeddingTable

# The committed scorer lives inside the package, next to the teacher.
DEFAULT_SCORER_DIR = Path(__file__).resolve().parent.parent / "assets" / "scorer"


def _conv_block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.GroupNorm(min(groups, c_out), c_out),
        nn.SiLU(),
    )


class ContrastiveScorer(ModelMixin, ConfigMixin):
    """CLIP-style scorer: ``encode_image`` / ``encode_text`` give unit vectors in a shared ``embed_dim`` space."""

    @register_to_config
    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        embed_dim: int = 128,
        text_dim: int = HIDDEN,
        text_hidden: int = 256,
        image_size: int = IMAGE_SIZE,
        norm_groups: int = 8,
        init_temperature: float = 0.07,
    ):
        super().__init__()
        # Stage 0 keeps full resolution; every later stage halves it: 32 -> 16 -> 8 -> 4 for 4 stages.
        layers: list[nn.Module] = [_conv_block(3, channels[0], 1, norm_groups)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [_conv_block(c_in, c_out, 2, norm_groups), _conv_block(c_out, c_out, 1, norm_groups)]
        self.image_tower = nn.Sequential(*layers)
        side = image_size // 2 ** (len(channels) - 1)
        self.image_proj = nn.Linear(channels[-1] * side * side, embed_dim)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, text_hidden), nn.GELU(), nn.Linear(text_hidden, embed_dim))
        # CLIP's parameterisation: logit scale = exp(t), initialised to 1 / 0.07, clamped at 100 when used.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N, embed_dim) of RGB images in [-1, 1], (N, 3, 32, 32)."""
        h = self.image_tower(images.to(self.dtype))
        return F.normalize(self.image_proj(h.flatten(1)), dim=-1)

    def encode_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N, embed_dim) of MiniLM pooled prompt embeddings (N, 384)."""
        return F.normalize(self.text_proj(pooled.to(self.dtype)), dim=-1)

    def clip_score(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Per-image CLIP score (N,), torchmetrics' formula: 100 * max(cosine, 0)."""
        cos = (self.encode_image(images) * self.encode_text(pooled)).sum(-1)
        return 100.0 * cos.clamp(min=0)

    def logits(self, images: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Image-to-text logits (N_img, N_txt) at the learned temperature."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * self.encode_image(images) @ self.encode_text(pooled).T


def load_scorer(path: str | os.PathLike | None = None, dtype=torch.float32, device="cpu") -> ContrastiveScorer:
    """Load the committed scorer (stored fp16) or one at ``path``, cast to ``dtype``, in eval mode."""
    path = Path(path or DEFAULT_SCORER_DIR)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no scorer at {path} (expected config.json + diffusion_pytorch_model.safetensors); "
            "the repository ships one under clockwork/assets/scorer, or train one with "
            "`python -m clockwork.embedded.scorer`"
        )
    # low_cpu_mem_usage=False: the model is tiny, and it avoids a warning when `accelerate` is absent.
    model = ContrastiveScorer.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=False)
    return model.to(device).eval()


@dataclass
class ScorerTrainResult:
    steps: int
    seconds: float
    final_loss: float
    temperature: float


def _soft_targets(content: torch.Tensor) -> torch.Tensor:
    # With 160 contents a batch holds many pairs of the same content; counting those as negatives
    # would teach the model to separate identical captions, so every same-content pair is a positive.
    same = (content[:, None] == content[None, :]).float()
    return same / same.sum(1, keepdim=True)


def train_scorer(
    train: CaptionedFashion,
    table: EmbeddingTable,
    steps: int = 1200,
    batch: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    model: ContrastiveScorer | None = None,
    progress: bool = True,
) -> tuple[ContrastiveScorer, ScorerTrainResult]:
    """Train with symmetric InfoNCE on the training split's own captions (phrasings 0-2).

    Images are rendered per batch (cheap) with random horizontal flips (garments are roughly
    symmetric, and flips keep colour and size). AdamW with warm-up and cosine decay.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = (model or ContrastiveScorer()).to(device).train()
    pooled_all = table.pooled.float().to(device)
    text_idx = table.index(train.texts).to(device)
    content = train.content.to(device)
    gen = torch.Generator().manual_seed(seed)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases, norms, temperature
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )

    t0, loss_ema = time.perf_counter(), float("nan")
    bar = tqdm(range(steps), desc="scorer", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(train), (batch,), generator=gen)
        flip = (torch.rand(batch, generator=gen) < 0.5).to(device)
        images = train.images(idx).to(device)
        images[flip] = images[flip].flip(-1)
        idx = idx.to(device)
        logits = model.logits(images, pooled_all[text_idx[idx]])
        target = _soft_targets(content[idx])
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", T=f"{1 / model.logit_scale.detach().exp().item():.3f}")
    model.eval()
    result = ScorerTrainResult(
        steps=steps, seconds=time.perf_counter() - t0, final_loss=loss_ema,
        temperature=float(1 / model.logit_scale.detach().clamp(max=math.log(100.0)).exp()),
    )
    return model, result


@torch.no_grad()
def evaluate_scorer(
    model: ContrastiveScorer, data: CaptionedFashion, table: EmbeddingTable, batch: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Held-out retrieval and CLIP-score statistics.

    ``top1_template{t}``: fraction of images whose highest-scoring prompt among all 160 contents
    (each written in phrasing ``t``) is their own content; also per attribute (class, colour, size)
    for phrasing 0. ``clip_score_own`` / ``clip_score_shuffled``: mean CLIP score with each image's
    own caption versus a caption of a random other image.
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, float] = {"n_images": len(data)}
    emb = torch.cat([model.encode_image(data.images(torch.arange(i, min(i + batch, len(data)))).to(device)).float()
                     for i in range(0, len(data), batch)])
    for template in (0, 3):
        prompts = [content_text(c, template) for c in range(NUM_CONTENTS)]
        txt = model.encode_text(table.lookup(prompts, device=device)[1]).float()
        pred = (emb @ txt.T).argmax(1).cpu()
        out[f"top1_template{template}"] = (pred == data.content).float().mean().item()
        if template == 0:
            # content = (label * colours + colour) * sizes + size, see data.Caption.content.
            n_c, n_s = len(COLOURS), len(SIZES)
            out["top1_class"] = (pred // (n_c * n_s) == data.labels).float().mean().item()
            out["top1_colour"] = ((pred // n_s) % n_c == data.colour).float().mean().item()
            out["top1_size"] = (pred % n_s == data.size).float().mean().item()
    own = model.encode_text(table.lookup(data.texts, device=device)[1]).float()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    out["clip_score_own"] = (100 * (emb * own).sum(-1).clamp(min=0)).mean().item()
    out["clip_score_shuffled"] = (100 * (emb * own[perm.to(device)]).sum(-1).clamp(min=0)).mean().item()
    out["chance_top1"] = 1.0 / NUM_CONTENTS
    return out


def save_scorer(model: ContrastiveScorer, out_dir: str | os.PathLike, metrics: dict | None = None) -> list[Path]:
    """Save fp16 weights (safetensors) + config.json, and ``metrics.json`` when given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Save a half copy (keeps the caller's model in its dtype; fp16 halves the committed size), rebuilt
    # from the public config so private keys such as a load path (_name_or_path) do not leak into it.
    half = ContrastiveScorer(**{k: v for k, v in model.config.items() if not k.startswith("_")})
    half.load_state_dict(model.state_dict())
    half.half().save_pretrained(out_dir, safe_serialization=True)
    if metrics is not None:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return sorted(out_dir.iterdir())


def main(argv: list[str] | None = None) -> None:
    """Train the committed scorer: ``python -m clockwork.embedded.scorer [--out DIR] [--steps N]``."""
    import argparse

    from clockwork.embedded.data import all_prompt_strings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_SCORER_DIR))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    table = EmbeddingTable.build(all_prompt_strings())
    model, result = train_scorer(CaptionedFashion("train"), table, args.steps, args.batch, args.lr, args.seed, args.device)
    # Evaluate the fp16 weights as saved, i.e. what users of the committed asset get.
    save_scorer(model, args.out)
    saved = load_scorer(args.out, device=args.device)
    metrics = {
        **evaluate_scorer(saved, CaptionedFashion("heldout"), table),
        "train": {**asdict(result), "batch": args.batch, "lr": args.lr, "seed": args.seed, "device": str(args.device),
                  "torch_threads": torch.get_num_threads()},
        "parameters": sum(p.numel() for p in saved.parameters()),
        "bytes_on_disk": sum(f.stat().st_size for f in Path(args.out).iterdir() if f.name != "metrics.json"),
    }
    save_scorer(saved, args.out, metrics)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
