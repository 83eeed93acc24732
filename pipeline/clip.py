"""Stage `clip` (frozen): train the embedded CLIP stand-in and save it to world.scorer (clockwork/assets/scorer).

No CLIP can be had offline; prompt adherence in the embedded world is scored by this small contrastive
model (clockwork.embedded.scorer). Frozen in dvc.yaml so `dvc repro` uses the committed weights;
to retrain: `dvc unfreeze clip && dvc repro clip`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def main() -> None:
    p = load_params("clip")
    if p.world.kind != "embedded":
        raise SystemExit("the clip stage trains the embedded scorer only; SD v1.5 is scored with world.clip_model")
    import torch

    from clockwork.embedded.data import CaptionedFashion
    from clockwork.embedded.scorer import evaluate_scorer, load_scorer, save_scorer, train_scorer
    from clockwork.embedded.text import EmbeddingTable
    from pipeline import tracking
    from pipeline.common import PREPARED_DIR, atomic_dir, log, pick_device

    c = p.clip
    device = pick_device(c.device)
    table = EmbeddingTable.load(Path(PREPARED_DIR) / "embeddings.safetensors")
    with tracking.stage_run("clip", p.flat()) as run:
        model, result = train_scorer(CaptionedFashion("train", root=p.world.data_root), table, c.steps, c.batch, c.lr,
                                     c.seed, device)
        with atomic_dir(p.world.scorer) as tmp:
            save_scorer(model, tmp)
            saved = load_scorer(tmp, device=device)  # evaluate the fp16 weights users of the asset get
            metrics = {**evaluate_scorer(saved, CaptionedFashion("heldout", root=p.world.data_root), table),
                       "train": {**asdict(result), "batch": c.batch, "lr": c.lr, "seed": c.seed, "device": device,
                                 "torch_threads": torch.get_num_threads()},
                       "parameters": sum(q.numel() for q in saved.parameters())}
            save_scorer(saved, tmp, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        log(f"scorer saved to {p.world.scorer}: top-1 {metrics['top1_template0']:.3f}, "
            f"CLIP own {metrics['clip_score_own']:.1f} vs shuffled {metrics['clip_score_shuffled']:.1f}")


if __name__ == "__main__":
    main()
