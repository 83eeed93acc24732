"""Metrics: the committed embedded scorer, FID/KID on the offline Inception, bootstrap, caching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clockwork import metrics as M  # noqa: E402
from clockwork.precision import autocast, cpu_has_amx, resolve_precision  # noqa: E402
from clockwork.embedded import data as D  # noqa: E402
from clockwork.embedded.scorer import DEFAULT_SCORER_DIR, ContrastiveScorer, load_scorer, save_scorer  # noqa: E402
from clockwork.embedded.text import EmbeddingTable  # noqa: E402


@pytest.fixture(scope="module")
def heldout() -> D.CaptionedFashion:
    return D.CaptionedFashion("heldout", limit=1500)


@pytest.fixture(scope="module")
def table(heldout: D.CaptionedFashion) -> EmbeddingTable:
    # Only the prompts these tests use (all 160 contents in phrasing 0, and the first held-out
    # captions, which include the unseen phrasing): a quarter of the full table's encoding time.
    return EmbeddingTable.build([D.content_text(c, 0) for c in range(D.NUM_CONTENTS)] + heldout.texts[:65])


@pytest.fixture(scope="module")
def scorer() -> ContrastiveScorer:
    return load_scorer()


@pytest.fixture(scope="module")
def image_emb(scorer: ContrastiveScorer, heldout: D.CaptionedFashion) -> torch.Tensor:
    with torch.no_grad():
        return scorer.encode_image(heldout.images())


# ----------------------------------------------------------------------------------------------- scorer


def test_committed_scorer_is_small_and_documented() -> None:
    files = {f.name: f.stat().st_size for f in DEFAULT_SCORER_DIR.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "metrics.json"} <= set(files)
    assert sum(files.values()) <= 2 * 2**20
    metrics = json.loads((DEFAULT_SCORER_DIR / "metrics.json").read_text())
    assert metrics["top1_template0"] >= 0.70
    assert metrics["clip_score_own"] > metrics["clip_score_shuffled"]


def test_scorer_prefers_own_class_prompt(
    scorer: ContrastiveScorer, image_emb: torch.Tensor, heldout: D.CaptionedFashion, table: EmbeddingTable
) -> None:
    n_c, n_s = len(D.COLOURS), len(D.SIZES)
    own = heldout.content
    # Same colour and size, the next class: only the garment word differs.
    other = (own + n_c * n_s) % D.NUM_CONTENTS
    with torch.no_grad():
        txt = scorer.encode_text(table.lookup([D.content_text(c, 0) for c in range(D.NUM_CONTENTS)])[1])
    s_own = 100 * (image_emb * txt[own]).sum(-1).clamp(min=0)
    s_other = 100 * (image_emb * txt[other]).sum(-1).clamp(min=0)
    for label in range(len(D.CLASSES)):
        sel = heldout.labels == label
        assert s_own[sel].mean() > s_other[sel].mean() + 5, D.CLASSES[label]
    # clip_score is the same formula end to end.
    with torch.no_grad():
        direct = scorer.clip_score(heldout.images(slice(0, 8)), table.lookup(heldout.texts[:8])[1])
    assert direct.shape == (8,) and (direct >= 0).all() and (direct <= 100).all()
    torch.testing.assert_close(direct[:1], 100 * (image_emb[:1] * scorer.encode_text(
        table.lookup(heldout.texts[:1])[1]).detach()).sum(-1).clamp(min=0), atol=1e-3, rtol=0)


def test_scorer_retrieval_on_heldout(
    scorer: ContrastiveScorer, image_emb: torch.Tensor, heldout: D.CaptionedFashion, table: EmbeddingTable
) -> None:
    # Recomputed here rather than trusted from metrics.json (fewer images, same protocol).
    prompts = [D.content_text(c, 0) for c in range(D.NUM_CONTENTS)]
    with torch.no_grad():
        sims = image_emb @ scorer.encode_text(table.lookup(prompts)[1]).T
    assert (sims.argmax(1) == heldout.content).float().mean() >= 0.70


def test_scorer_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ContrastiveScorer(channels=(8, 16), embed_dim=16, text_hidden=32).eval()
    save_scorer(model, tmp_path, {"note": 1})
    loaded = load_scorer(tmp_path)
    assert tuple(loaded.config.channels) == (8, 16) and loaded.dtype == torch.float32
    x, p = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 384)
    with torch.no_grad():
        torch.testing.assert_close(loaded.clip_score(x, p), model.clip_score(x, p), atol=0.5, rtol=0)  # fp16 storage
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path / "nothing")


def test_embedded_clip_scorer_protocol(
    scorer: ContrastiveScorer, heldout: D.CaptionedFashion, table: EmbeddingTable
) -> None:
    scorer = M.clip_scorer("embedded", scorer=scorer, table=table)
    assert isinstance(scorer, M.CLIPScorer)
    imgs = heldout.images_uint8(slice(0, 64))
    own = scorer(imgs, heldout.texts[:64])
    shuffled = scorer(imgs, heldout.texts[1:65])
    assert own.shape == (64,) and own.mean() > shuffled.mean() + 10
    with pytest.raises(ValueError):
        scorer(imgs, heldout.texts[:3])


# ----------------------------------------------------------------------------------------------- FID math


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula (scipy sqrtm), independent of torchmetrics."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_fid_from_features_matches_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 1.0
    assert M.fid_from_features(a, b) == pytest.approx(_reference_fid(a, b), rel=1e-6)
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    # Large samples of N(0, I) vs N(d, I): FID -> |d|^2.
    x, y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + 2.0
    assert M.fid_from_features(x, y) == pytest.approx(16.0, rel=0.02)


def test_kid_and_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
    same, _ = M.kid_from_features(a, rng.normal(size=(300, 8)), subsets=20, subset_size=100)
    diff, diff_std = M.kid_from_features(a, b, subsets=20, subset_size=100)
    assert abs(same) < 0.02 and diff > 0.05 and diff_std >= 0
    assert M.kid_from_features(a, b, subsets=5, subset_size=10_000, seed=3) == M.kid_from_features(
        a, b, subsets=5, subset_size=10_000, seed=3)  # capped subset size; seeded
    est = M.fid_with_uncertainty(b, a, n_boot=8, seed=0)
    assert est.n_boot == 8 and est.n_gen == 300 and est.n_ref == 300
    assert est.fid == pytest.approx(M.fid_from_features(a, b))
    assert 0 < est.boot_std < 0.5 * est.fid and abs(est.boot_mean - est.fid) < 4 * est.boot_std + 0.1
    assert M.fid_with_uncertainty(b, a, n_boot=8, seed=0) == est


class _MeanColour(nn.Module):
    """A stand-in feature extractor (3-d) so caching logic is tested without Inception."""

    num_features = 3
    name = "mean-colour"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((2, 3))


def test_reference_stats_cached(tmp_path: Path) -> None:
    imgs = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    path = tmp_path / "ref.npz"
    stats = M.reference_stats(path, imgs, model=_MeanColour(), progress=False, key="k1")
    assert path.is_file() and stats.features.shape == (20, 3) and stats.sigma.shape == (3, 3)
    np.testing.assert_allclose(stats.mu, imgs.float().mean((2, 3)).mean(0).numpy(), rtol=1e-6)

    def must_not_render() -> torch.Tensor:
        raise AssertionError("cache should have been used")

    again = M.reference_stats(path, must_not_render, model=_MeanColour(), progress=False, key="k1")
    np.testing.assert_array_equal(again.features, stats.features)
    # A different key recomputes (and here must call the image source).
    with pytest.raises(AssertionError, match="cache"):
        M.reference_stats(path, must_not_render, model=_MeanColour(), progress=False, key="k2")
    # Default key = hash of the images.
    other = M.reference_stats(path, imgs[:10], model=_MeanColour(), progress=False)
    assert other.features.shape == (10, 3) and M.ReferenceStats.load(path).meta["n"] == 10


# ----------------------------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def inception() -> nn.Module:
    return M.fid_inception()


def test_fid_inception_module(inception: nn.Module, heldout: D.CaptionedFashion) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    assert inception.num_features == 2048 and not inception.training
    imgs = heldout.images_uint8(slice(0, 3))
    noise = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fa, fb = M.inception_features(imgs, batch_size=2, progress=False), M.inception_features(noise, progress=False)
    assert fa.shape == (3, 2048) and fa.dtype == torch.float64 and (fa >= 0).all()  # pool3 after ReLU
    # torchmetrics accepts the module as `feature=` and accumulates the same features (its FID
    # arithmetic is checked against scipy above; a 2048-d FID costs ~4 s of CPU, so not repeated here).
    fid = FrechetInceptionDistance(feature=inception)
    fid.update(imgs, real=True)
    fid.update(noise, real=False)
    assert int(fid.real_features_num_samples) == 3 and int(fid.fake_features_num_samples) == 3
    torch.testing.assert_close(fid.real_features_sum, fa.sum(0), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fid.fake_features_sum, fb.sum(0), rtol=1e-5, atol=1e-3)
    with pytest.raises(TypeError):
        inception(imgs.float())


def test_fid_real_halves_far_below_real_vs_noise(inception: nn.Module) -> None:
    # 32 + 32 real held-out images vs 32 uniform-noise images: small, as Inception runs only a few
    # images/s on one CPU thread. At this size FID carries a large bias (real vs real ~140; ~95 at
    # 96 + 96), yet noise stays far above (~440); KID is unbiased, so real vs real is ~0.
    n = 32
    real = D.CaptionedFashion("heldout", limit=2 * n).images_uint8()
    noise = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = M.inception_features(torch.cat([real, noise]), batch_size=32, progress=False, model=inception)
    a, b, z = feats[:n], feats[n : 2 * n], feats[2 * n :]
    real_real, real_noise = M.fid_from_features(a, b), M.fid_from_features(a, z)
    assert real_real < 0.5 * real_noise and real_noise > 300, (real_real, real_noise)
    kid_rr, kid_rn = M.kid_from_features(a, b, subsets=10)[0], M.kid_from_features(a, z, subsets=10)[0]
    assert abs(kid_rr) < 0.05 < 0.2 < kid_rn, (kid_rr, kid_rn)


def test_inception_precision(inception: nn.Module, heldout: D.CaptionedFashion, tmp_path: Path) -> None:
    imgs = heldout.images_uint8(slice(0, 4))
    f32 = M.inception_features(imgs, progress=False, model=inception)
    bf16 = M.inception_features(imgs, progress=False, model=inception, precision="bf16")
    rel = float((bf16 - f32).norm() / f32.norm())
    assert 1e-6 < rel < 0.06, rel  # bf16 autocast really ran, and stays close to fp32
    assert resolve_precision("auto", "cuda") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_amx() else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with autocast(precision, "cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    # The cached reference records its precision; asking for another one recomputes it.
    path = tmp_path / "ref.npz"
    stats = M.reference_stats(path, imgs, model=_MeanColour(), progress=False, key="k")
    assert stats.precision == "fp32" and M.ReferenceStats.load(path).precision == "fp32"
    again = M.reference_stats(path, lambda: imgs[:2], model=_MeanColour(), progress=False, key="k", precision="bf16")
    assert again.precision == "bf16" and again.features.shape[0] == 2


def test_bootstrap_fid_is_the_brute_force_resample_and_its_std_is_conservative() -> None:
    """On synthetic Gaussians: each bootstrap replicate equals torchmetrics' FID of the same resample (duplicates
    included); the bootstrap std of one sample never understates the std of FID over fresh samples of the same size,
    and overstates it where the feature dimension is large against the sample (resamples hold ~63% distinct rows, so
    FID's 1/n bias term moves between them): ~1.35x at d = 24, n = 200; several times at d = 256, n = 200 - the regime
    of every CPU configuration (2048 Inception features, 160-250 images). The sampling std itself shrinks about as
    1/sqrt(n) (200 vs 250 images: ~1.1x)."""
    import numpy as np

    from clockwork.metrics import (ReferenceStats, bootstrap_fid, bootstrap_fid_std, bootstrap_indices,
                                   fid_from_features, fid_low_rank)

    ratios, true = {}, {}
    for d in (24, 256):
        g = torch.Generator().manual_seed(0)
        ref = ReferenceStats.from_features(torch.randn(5000, d, generator=g, dtype=torch.float64))
        mu, sigma = torch.as_tensor(ref.mu), torch.as_tensor(ref.sigma)

        def draw(n):  # the "generated" distribution: wider and shifted
            return torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + 0.15

        feats = draw(200)
        brute = [fid_from_features(ref, feats[torch.from_numpy(i)]) for i in bootstrap_indices(200, 4, seed=3)]
        assert np.allclose(bootstrap_fid(feats, ref, 4, seed=3), brute, rtol=1e-6, atol=1e-9)
        for n in (200, 250):
            true[d, n] = float(np.std([fid_low_rank(mu, sigma, draw(n)) for _ in range(300)], ddof=1))
            boot = float(np.mean([bootstrap_fid_std(draw(n), ref, n_boot=60, seed=s) for s in range(6)]))
            ratios[d, n] = boot / true[d, n]
    assert all(r > 1.0 for r in ratios.values()), ratios  # conservative everywhere
    assert ratios[24, 200] < 1.7 and ratios[256, 200] > 3.0, ratios  # close at d << n, inflated at d ~ n
    assert 1.0 < true[24, 200] / true[24, 250] < 1.3, true
