"""Stage `prepare`: prompt sets, cached text embeddings and FID reference statistics -> data/prepared/.

- distillation prompts: captions of a seeded sample of the *training* split (their trajectories are unrolled);
- evaluation prompts: captions of a seeded sample of the *held-out* split;
- reference images: other held-out images (disjoint from the evaluation ones), as Inception statistics;
- validation split (``prepare.val_prompts`` > 0): captions of other *training* images (not distilled on) and
  the Inception statistics of yet other training images - where operating points and levers are chosen, so
  the held-out evaluation prompts are kept for the final numbers;
- embeddings: MiniLM token states of every caption the embedded world can produce (EmbeddingTable).
For world.kind=sd the same from COCO-format captions and images and the pipeline's own text encoder(s)
(SDXL: both, and the pooled embedding its UNet takes).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def reference_stats(held, index, device: str, split: str = "heldout", precision: str = "auto"):
    """FID reference statistics of the images ``index`` of a CaptionedFashion split (held-out by default), at the
    Inception ``precision`` (prepare.inception_precision) every method's features then follow."""
    from clockwork.metrics import compute_reference_stats
    from clockwork.precision import resolve_precision
    from pipeline.common import log

    log(f"Inception statistics of {len(index)} {split} reference images ({resolve_precision(precision, device)})")
    return compute_reference_stats(held.images_uint8(index), device=device, precision=precision, meta={"split": split})


def split_indices(p, n_train: int, n_held: int):
    """(distill, val prompt, val reference, eval, reference) image indices: seeded, pairwise disjoint.

    The distillation draw and the held-out draws are those of earlier versions (same generator calls), so
    adding a validation split does not change the distillation or evaluation prompts.
    """
    import torch

    g = torch.Generator().manual_seed(p.prepare.seed)
    train_perm = torch.randperm(n_train, generator=g)
    held_perm = torch.randperm(n_held, generator=g)
    a, b, c = p.prepare.distill_prompts, p.prepare.val_prompts, p.prepare.val_reference_images
    n_eval, n_ref = p.prepare.eval_prompts, p.prepare.reference_images
    return (train_perm[:a], train_perm[a:a + b], train_perm[a + b:a + b + c], held_perm[:n_eval],
            held_perm[n_eval:n_eval + n_ref])


def _embedded(p, out: Path, device: str, reference: bool = True) -> dict:
    import torch

    from clockwork.embedded.data import CaptionedFashion, all_prompt_strings
    from clockwork.embedded.text import EmbeddingTable, MiniLMEncoder
    from pipeline.common import log

    root = p.world.data_root
    train = CaptionedFashion("train", root=root, seed=p.prepare.seed)
    held = CaptionedFashion("heldout", root=root, seed=p.prepare.seed)
    train_idx, val_idx, val_ref_idx, eval_idx, ref_idx = split_indices(p, len(train), len(held))  # sizes: config.py

    log(f"encoding {len(all_prompt_strings())} captions with MiniLM")
    table = EmbeddingTable.build(all_prompt_strings(), encoder=MiniLMEncoder(device=device))
    table.save(out / "embeddings.safetensors")
    if reference:
        reference_stats(held, ref_idx, device, precision=p.prepare.inception_precision).save(out / "reference_stats.npz")
    if reference and len(val_idx):
        reference_stats(train, val_ref_idx, device, "train", p.prepare.inception_precision).save(
            out / "val_reference_stats.npz")
    return {
        "world": "embedded",
        "distill_prompts": [train.texts[int(i)] for i in train_idx],
        "distill_indices": train_idx.tolist(),
        "eval_prompts": [held.texts[int(i)] for i in eval_idx],
        "eval_indices": eval_idx.tolist(),
        "reference_indices": ref_idx.tolist(),
        "val_prompts": [train.texts[int(i)] for i in val_idx],
        "val_indices": val_idx.tolist(),
        "val_reference_indices": val_ref_idx.tolist(),
        "split": {"distill": "train", "eval": "heldout", "reference": "heldout", "val": "train", "val_reference": "train"},
    }


def _sd(p, out: Path, device: str) -> dict:
    """COCO-format captions (first caption per image), the pipeline's own text encoder(s), reference images resized
    and centre-cropped to world.resolution."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from clockwork.embedded.text import EmbeddingTable
    from clockwork.metrics import ReferenceStats, inception_features
    from clockwork.precision import resolve_precision
    from pipeline.common import World, log
    from pipeline.common.prompts import PipelineText, coco_captions

    w = p.world
    pairs = coco_captions(w.captions)
    g = torch.Generator().manual_seed(p.prepare.seed)
    perm = torch.randperm(len(pairs), generator=g).tolist()
    n_eval, n_ref, n_dist = p.prepare.eval_prompts, p.prepare.reference_images, p.prepare.distill_prompts
    eval_pairs = [pairs[i] for i in perm[:n_eval]]
    ref_pairs = [pairs[i] for i in perm[:n_ref]]  # COCO protocol: the evaluated captions' own images (and more)
    dist_src = coco_captions(w.distill_captions) if w.distill_captions else [pairs[i] for i in perm[n_eval:]]
    dperm = torch.randperm(len(dist_src), generator=g).tolist()[:n_dist]
    distill_prompts = [dist_src[i][1] for i in dperm]

    world = World(w, device)
    encoder = PipelineText(world.sd_pipe, device)
    log(f"encoding {len(set(distill_prompts + [c for _, c in eval_pairs]))} captions with "
        f"{type(world.sd_pipe).__name__}.encode_prompt")
    table = EmbeddingTable.build(distill_prompts + [c for _, c in eval_pairs], encoder=encoder)
    table.save(out / "embeddings.safetensors")
    res, pipeline_class = w.resolution, type(world.sd_pipe).__name__
    del world, encoder  # the pipeline is not needed for the reference statistics

    def load(name):
        im = Image.open(Path(w.reference_images) / name).convert("RGB")
        s = res / min(im.size)
        im = im.resize((max(res, round(im.width * s)), max(res, round(im.height * s))), Image.BICUBIC)
        left, top = (im.width - res) // 2, (im.height - res) // 2
        return np.asarray(im.crop((left, top, left + res, top + res))).transpose(2, 0, 1)

    precision = resolve_precision(p.prepare.inception_precision, device)
    feats = []
    chunk = 100
    for i in tqdm(range(0, len(ref_pairs), chunk), desc=f"Inception, {len(ref_pairs)} reference images ({precision})",
                  unit="chunk"):
        imgs = torch.from_numpy(np.stack([load(n) for n, _ in ref_pairs[i:i + chunk]]))
        feats.append(inception_features(imgs, device=device, progress=False, precision=precision))
    ReferenceStats.from_features(torch.cat(feats), {"source": w.reference_images, "n": len(ref_pairs),
                                                    "precision": precision}).save(out / "reference_stats.npz")
    return {"world": "sd", "pipeline": pipeline_class, "distill_prompts": distill_prompts,
            "eval_prompts": [c for _, c in eval_pairs], "eval_images": [n for n, _ in eval_pairs],
            "reference_images": [n for n, _ in ref_pairs]}


def prompts_only(out: str) -> None:
    """``python pipeline/prepare.py --prompts-only DIR``: prompts.json + embeddings only (no Inception statistics),
    for a machine without the MiniLM encoder that computes the statistics itself (scripts/gpu/gpu_prepare.py)."""
    from pipeline.common import atomic_dir, write_json

    p = load_params("prepare")
    if p.world.kind != "embedded":
        sys.exit("--prompts-only: embedded world only")
    with atomic_dir(out) as tmp:
        write_json(tmp / "prompts.json", _embedded(p, tmp, "cpu", reference=False))


def main() -> None:
    if sys.argv[1:2] == ["--prompts-only"] and len(sys.argv) == 3:
        return prompts_only(sys.argv[2])
    p = load_params("prepare")
    from pipeline import tracking
    from pipeline.common import PREPARED_DIR, atomic_dir, log, pick_device, write_json

    device = pick_device(p.prepare.device)
    with tracking.stage_run("prepare", p.flat()) as run, atomic_dir(PREPARED_DIR) as out:
        info = (_embedded if p.world.kind == "embedded" else _sd)(p, out, device)
        write_json(out / "prompts.json", info)
        stats = {"distill_prompts": len(info["distill_prompts"]), "eval_prompts": len(info["eval_prompts"]),
                 "distinct_distill_prompts": len(set(info["distill_prompts"])),
                 "distinct_eval_prompts": len(set(info["eval_prompts"]))}
        run.log_metrics(stats)
        log(f"prepared {stats}")


if __name__ == "__main__":
    main()
