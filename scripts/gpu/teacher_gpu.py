"""Train (or resume) the embedded teacher on a GPU within a wall-clock budget, then sample for evaluation.

Used for the committed teacher: several resumed runs of at most 10 minutes on the GPU machine.
  python scripts/gpu/teacher_gpu.py --workdir ckpt/teacher --minutes 8 --compile --out out/teacher   # repeat to resume
  (the committed teacher: 6.8 + 8.3 min at batch 512, then 8.4 min at batch 1024, lr 4e-4, one H200)
Writes EMA checkpoint shards + state.json (resumable), an fp16 diffusers export, training log,
and uint8 samples from held-out prompts (8 DPM++ steps, CFG) for FID on the CPU machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from clockwork.embedded.data import CaptionedFashion
from clockwork.embedded.pipeline import EmbeddedPipeline
from clockwork.embedded.teacher import sampling_scheduler
from clockwork.embedded.text import EmbeddingTable
from clockwork.embedded.training import TeacherTrainConfig, export_teacher, train_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's or $CLOCKWORK_FASHION_MNIST)")
    ap.add_argument("--embeddings", default="data/embeddings.safetensors",
                    help="cached MiniLM table of every prompt string; built here (CPU, seconds) when missing")
    ap.add_argument("--workdir", default="ckpt/teacher", help="resumable checkpoint (EMA shards + state.json)")
    ap.add_argument("--export", default=None, help="also write the fp16 diffusers teacher folder here")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=7.5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sample-split", default="heldout", choices=["heldout", "train"])
    args = ap.parse_args()

    t0 = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not Path(args.embeddings).is_file():
        from clockwork.embedded.data import all_prompt_strings

        EmbeddingTable.build(all_prompt_strings()).save(args.embeddings)
    table = EmbeddingTable.load(args.embeddings)
    train = CaptionedFashion("train", root=args.data_root)
    cfg = TeacherTrainConfig(batch_size=args.batch, lr=args.lr, compile=args.compile, deadline_s=args.minutes * 60)
    res = train_teacher(args.workdir, table, train, cfg, device=dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in Path(args.workdir).glob("ema-*.safetensors"):
        shutil.copy(p, out / p.name)
    shutil.copy(Path(args.workdir) / "state.json", out / "state.json")
    shutil.copy(Path(args.workdir) / "log.jsonl", out / "log.jsonl")
    print(f"trained to step {res['step']} in {time.time() - t0:.0f}s; last losses {[r['loss'] for r in res['log'][-5:]]}")
    if args.export:
        export_teacher(res["ema"], args.export)

    if args.samples:
        held = CaptionedFashion(args.sample_split, root=args.data_root, limit=args.samples)
        ema = res["ema"].to(dev, torch.float16)
        pipe = EmbeddedPipeline(ema, sampling_scheduler("dpm++"))
        ctx, _ = table.lookup(held.texts, dtype=torch.float16, device=dev)
        neg, _ = table.uncond(1, dtype=torch.float16, device=dev)
        arrays = {}
        for g in args.guidance:
            imgs = []
            gen = torch.Generator(device=dev).manual_seed(1234)
            for i in range(0, len(held), 1000):
                imgs.append(pipe(ctx[i : i + 1000], neg, num_inference_steps=args.steps, guidance_scale=g,
                                 generator=gen, output_type="uint8").cpu())
            arrays[f"g{g}"] = torch.cat(imgs).numpy()
        np.savez_compressed(out / "samples.npz", **arrays)
        print(f"sampled {args.samples} x {len(args.guidance)} in total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
