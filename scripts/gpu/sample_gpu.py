"""Sample the committed embedded teacher on a GPU for held-out prompts (FID is computed on the CPU machine).

  python scripts/gpu/sample_gpu.py --out $OUT --samples 5000 --guidance 1.5 2.0 --steps 8
Writes one compressed uint8 array per (guidance, steps) setting, with the prompt of each image:
samples_g{g}_s{steps}.npz (images, prompts).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from clockwork.embedded.data import CaptionedFashion
from clockwork.embedded.pipeline import EmbeddedPipeline
from clockwork.embedded.teacher import load_teacher, sampling_scheduler
from clockwork.embedded.text import EmbeddingTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default=".carry/fashion-mnist")
    ap.add_argument("--embeddings", default=".carry/embeddings.safetensors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[8])
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    table = EmbeddingTable.load(args.embeddings)
    held = CaptionedFashion("heldout", root=args.data_root, limit=args.samples)
    unet = load_teacher(dtype=torch.float16 if dev == "cuda" else torch.float32, device=dev)
    pipe = EmbeddedPipeline(unet, sampling_scheduler(args.sampler))
    dtype = unet.dtype
    ctx, _ = table.lookup(held.texts, dtype=dtype, device=dev)
    neg, _ = table.uncond(1, dtype=dtype, device=dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for steps in args.steps:
        for g in args.guidance:
            gen = torch.Generator(device=dev).manual_seed(args.seed)
            imgs = [pipe(ctx[i:i + 1000], neg, num_inference_steps=steps, guidance_scale=g, generator=gen,
                         output_type="uint8").cpu() for i in range(0, len(held), 1000)]
            np.savez_compressed(out / f"samples_g{g}_s{steps}.npz", images=torch.cat(imgs).numpy(), prompts=np.array(held.texts))
            print(f"g={g} steps={steps}: {len(held)} samples, {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
