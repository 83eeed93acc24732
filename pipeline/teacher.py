"""Stage `teacher` (frozen): train the embedded teacher and export it to world.teacher (clockwork/assets/teacher).

The committed teacher came from resumed GPU runs of scripts/gpu/teacher_gpu.py (same training code,
clockwork.embedded.training); this stage is the CPU/GPU entry DVC knows. It is frozen in dvc.yaml so
`dvc repro` uses the committed weights; to retrain: `dvc unfreeze teacher && dvc repro teacher`
(`teacher.minutes` bounds the wall clock; training resumes from `teacher.workdir`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def main() -> None:
    p = load_params("teacher")
    if p.world.kind != "embedded":
        raise SystemExit("the teacher stage trains the embedded teacher only; SD v1.5 comes pretrained (world.model)")
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.embedded.text import EmbeddingTable
    from clockwork.embedded.training import TeacherTrainConfig, export_teacher, train_teacher
    from pipeline import tracking
    from pipeline.common import PREPARED_DIR, atomic_dir, log, pick_device

    t = p.teacher
    device = pick_device(t.device)
    table = EmbeddingTable.load(Path(PREPARED_DIR) / "embeddings.safetensors")
    data = CaptionedFashion("train", root=p.world.data_root)
    cfg = TeacherTrainConfig(batch_size=t.batch_size, lr=t.lr, warmup_steps=t.warmup_steps, max_steps=t.max_steps,
                             ema_decay=t.ema_decay, seed=t.seed, compile=t.compile, deadline_s=t.minutes * 60)
    with tracking.stage_run("teacher", p.flat()) as run:
        res = train_teacher(t.workdir, table, data, cfg, device=device)
        for row in res["log"]:
            run.log_metrics({"loss": row["loss"], "lr": row["lr"]}, step=row["step"])
        with atomic_dir(p.world.teacher) as tmp:
            export_teacher(res["ema"], tmp)
            shutil.copy(Path(t.workdir) / "state.json", tmp / "training_state.json")
        log(f"teacher at step {res['step']} exported to {p.world.teacher}: "
            f"{json.loads((Path(t.workdir) / 'state.json').read_text())['step']} steps in total")


if __name__ == "__main__":
    main()
