"""Finish data/prepared on a machine without the MiniLM text encoder (a GPU machine things are carried to).

`python pipeline/prepare.py` on a CPU machine makes prompts.json and embeddings.safetensors; the text encoder
(91 MB) does not travel, but those two files do. This script copies them from SRC into data/prepared and
computes the FID reference statistics here, from the same held-out reference images prepare.py uses
(prompts.json's ``reference_indices``; ``val_reference_indices`` for the validation split), so the result
equals prepare.py's output. Embedded world only.

    python scripts/gpu/gpu_prepare.py SRC        # SRC: a data/prepared made on the CPU machine (no reference stats)
    python scripts/gpu/gpu_prepare.py SRC --no-val-reference   # the validation split's prompts without its FID
        statistics (a machine that carries only the held-out images; nothing may then score FID on `val`)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.config import load_params  # noqa: E402


def main() -> None:
    src = Path(sys.argv[1])
    no_val_reference = "--no-val-reference" in sys.argv[2:]
    p = load_params("prepare")
    if p.world.kind != "embedded":
        sys.exit("gpu_prepare.py: embedded world only (world.kind=sd15 runs prepare.py where its text encoder is)")
    import torch

    from clockwork.embedded.data import CaptionedFashion
    from pipeline.common import PREPARED_DIR, atomic_dir, pick_device
    from pipeline.prepare import reference_stats

    info = json.loads((src / "prompts.json").read_text())
    if (len(info["eval_prompts"]), len(info["reference_indices"]), len(info.get("val_prompts", [])),
            len(info.get("val_reference_indices", []))) != (p.prepare.eval_prompts, p.prepare.reference_images,
                                                            p.prepare.val_prompts, p.prepare.val_reference_images):
        sys.exit(f"gpu_prepare.py: {src} was made with other prepare settings than {p.prepare}")
    with atomic_dir(PREPARED_DIR) as out:
        for f in ("prompts.json", "embeddings.safetensors"):
            shutil.copy(src / f, out / f)
        held = CaptionedFashion("heldout", root=p.world.data_root, seed=p.prepare.seed)
        device = pick_device(p.prepare.device)
        reference_stats(held, torch.tensor(info["reference_indices"]), device,
                        precision=p.prepare.inception_precision).save(out / "reference_stats.npz")
        if info.get("val_reference_indices") and no_val_reference:
            print("gpu_prepare.py: validation reference statistics skipped (--no-val-reference): the val split's "
                  "prompts are there, its FID is not")
        elif info.get("val_reference_indices"):
            train = CaptionedFashion("train", root=p.world.data_root, seed=p.prepare.seed)
            reference_stats(train, torch.tensor(info["val_reference_indices"]), device, "train",
                            p.prepare.inception_precision).save(
                out / "val_reference_stats.npz")


if __name__ == "__main__":
    main()
