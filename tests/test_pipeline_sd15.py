"""The SD v1.5 code path (world.kind: sd15) on a tiny *local* StableDiffusionPipeline: no downloads.

configs/sd15.yaml with every path pointing at tiny stand-ins built here (a 16x16-latent SD-1.x-shaped
pipeline saved with save_pretrained, a COCO-format captions file, reference PNGs, a tiny CLIP saved in
transformers format); prepare -> trajectories -> distill -> evaluate run as the stage scripts DVC calls.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.slow

CAPTIONS = ["a photo of a cat", "a cat on a sofa", "a red sneaker", "a dog in the park", "a bowl of fruit",
            "a photo of a lower tower", "a wider street", "a newer car", "a cat photo", "a low wall"]


def _tiny_world(tmp: Path) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from conftest import _VOCAB, tiny_sd_components, tiny_tokenizer

    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp / "tok"))
    pipe.save_pretrained(tmp / "sd")
    (tmp / "ref").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, c in enumerate(CAPTIONS):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp / "ref" / name)
        images.append({"id": i, "file_name": name})
        anns.append({"id": 100 + i, "image_id": i, "caption": c})
    (tmp / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(_VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=_VOCAB.index("<|startoftext|>"),
                         eos_token_id=_VOCAB.index("<|endoftext|>"), pad_token_id=_VOCAB.index("<|endoftext|>")),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2), projection_dim=8))
    clip.save_pretrained(tmp / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tiny_tokenizer(tmp / "tok2")).save_pretrained(tmp / "clip")
    return {"model": str(tmp / "sd"), "captions": str(tmp / "captions.json"), "reference_images": str(tmp / "ref"),
            "clip_model": str(tmp / "clip")}


def test_sd15_stages_on_a_tiny_local_pipeline(tmp_path: Path) -> None:
    from pipeline.config import read_yaml, validate

    world = _tiny_world(tmp_path / "assets")
    p = read_yaml(REPO / "configs" / "sd15.yaml")
    p["world"].update(world, distill_captions=None, resolution=32, dtype="float32")
    p["prepare"].update(distill_prompts=8, eval_prompts=4, reference_images=6)
    p["trajectories"].update(cuts=[1, 2], shard_size=4)
    p["adaptor"].update(width=8)
    p["ablate"].update(n_samples=4, distill_prompts=8)
    p["distill"].update(steps=3, batch_size=2, checkpoint_every=3, log_every=1, heldout_prompts=2)
    p["evaluate"].update(n_samples=4, batch_size=4, fid_bootstrap=2, kid_subsets=2, kid_subset_size=4, latency_runs=1,
                         grid_images=2)
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    validate(p, root=work, files_for="prepare")
    env = dict(os.environ, PYTHONPATH=str(REPO), CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for stage in ("prepare", "trajectories", "distill", "evaluate"):
        res = subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd=work, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{stage}:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    prompts = json.loads((work / "data/prepared/prompts.json").read_text())
    assert prompts["world"] == "sd15" and len(prompts["eval_prompts"]) == 4
    meta = json.loads((work / "data/trajectories/meta.json").read_text())
    assert meta["cuts"] == [1, 2] and meta["num_prompts"] == 6  # the captions left after the evaluation ones
    ev = json.loads((work / "metrics/evaluate.json").read_text())
    assert set(ev) == {"baseline", "clockwork", "clockwork_identity", *(f"baseline_{k}steps" for k in (3, 4, 5, 6, 7))}
    for m in ev.values():
        assert all(math.isfinite(m[k]) for k in ("fid", "kid", "clip", "gflops", "latency_ms"))
        v = m["vs_fewer_steps"]["fid"]  # against the plain-steps front (random weights: any status is possible)
        assert v["status"] in ("inside", "cheaper_than_front", "costlier_than_front")
        assert (v["delta"] is None) == (v["status"] != "inside")
    assert ev["clockwork"]["gflops"] < ev["baseline"]["gflops"]
    assert (work / "plots/samples/evaluate.png").is_file()
