"""The frozen stages' commands (teacher, clip) still run: a couple of training steps each, exported where
world.teacher / world.scorer point, loadable by the library. DVC never runs them unless unfrozen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_teacher_and_clip_stage_commands(tmp_path: Path) -> None:
    from clockwork.embedded.data import all_prompt_strings
    from clockwork.embedded.scorer import load_scorer
    from clockwork.embedded.teacher import load_teacher
    from clockwork.embedded.text import EmbeddingTable

    EmbeddingTable.build(all_prompt_strings()).save(tmp_path / "data" / "prepared" / "embeddings.safetensors")
    p = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    p["world"].update(teacher=str(tmp_path / "teacher_out"), scorer=str(tmp_path / "scorer_out"))
    p["teacher"].update(max_steps=2, batch_size=8, warmup_steps=1, minutes=1.0, workdir="ckpt")
    p["clip"].update(steps=2, batch=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO), CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1")
    env.setdefault("CLOCKWORK_THREADS", "1")
    for stage in ("teacher", "clip"):
        res = subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{stage}:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert json.loads((tmp_path / "teacher_out" / "training_state.json").read_text())["step"] == 2
    assert load_teacher(tmp_path / "teacher_out").config.sample_size == 32
    assert (tmp_path / "ckpt" / "state.json").is_file()  # resumable training state (teacher.workdir)
    load_scorer(tmp_path / "scorer_out")
    assert "top1_template0" in json.loads((tmp_path / "scorer_out" / "metrics.json").read_text())
