"""The SD-family world (world.kind: sd) on tiny *local* pipelines: no downloads.

Tiny stand-ins built here, saved with save_pretrained: SD 1.x (StableDiffusionPipeline, epsilon), SD 2.x (list-valued
heads, linear projections, v-prediction) and SDXL (StableDiffusionXLPipeline: 3 levels, two text encoders, pooled
text_embeds + time_ids), with a COCO-format captions file, reference images and a tiny CLIP in transformers format.
configs/sd15.yaml runs prepare -> trajectories -> distill -> evaluate as the stage scripts DVC calls (SD 1.x, 2.x);
configs/sdxl.yaml runs through real ``dvc repro`` in a copy of the repository, every stage up to the report.
Bad worlds (a wrong model path, a pipeline class the world cannot run, a cut or a resolution the UNet cannot take)
fail validation naming the key.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CAPTIONS = ["a photo of a cat", "a cat on a sofa", "a red sneaker", "a dog in the park", "a bowl of fruit",
            "a photo of a lower tower", "a wider street", "a newer car", "a cat photo", "a low wall"]
ENV = dict(os.environ, PYTHONPATH=str(REPO), CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _tiny_world(tmp: Path, kind: str = "sd15") -> dict:
    """A tiny local pipeline of ``kind`` (sd15 | sd21 | sdxl) + captions, reference images and a CLIP: world.* paths."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from conftest import _VOCAB, tiny_sd2_components, tiny_sd_components, tiny_sdxl_components, tiny_tokenizer

    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(tmp / "tok"))
    else:
        pipe = StableDiffusionPipeline(**(tiny_sd2_components if kind == "sd21" else tiny_sd_components)(tmp / "tok"))
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


def tiny_params(config: str, world: dict) -> dict:
    """configs/<config> shrunk to the tiny stand-ins (32 px images, a few prompts, a few steps of everything)."""
    from pipeline.config import read_yaml

    p = read_yaml(REPO / "configs" / config)
    p["world"].update(world, distill_captions=None, resolution=32, dtype="float32")
    p["prepare"].update(distill_prompts=8, eval_prompts=4, reference_images=6)
    p["trajectories"].update(cuts=[1, 2], shard_size=4)
    p["adaptor"].update(width=8)
    # the configs distil online from world.distill_captions (tests/test_distill_online_stage.py); these worlds from the store
    p["distill"].update(steps=3, batch_size=2, checkpoint_every=3, log_every=1, heldout_prompts=2, source="store")
    p["evaluate"].update(n_samples=4, batch_size=4, fid_bootstrap=2, kid_subsets=2, kid_subset_size=4, latency_runs=1,
                         grid_images=2)
    p["ablate"].update(n_samples=2, distill_prompts=4, distill_steps=2, batch_size=2, latency_runs=1, fid_bootstrap=2,
                       resnet_wide_width=12, unet_light_width=8, samplers=["dpm++", "ddim"], step_counts=[4, 8],
                       front_steps=[4, 8])
    return p


def _run_stages(work: Path, stages) -> None:
    for stage in stages:
        res = subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd=work, env=ENV,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{stage}:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"


def _check_evaluate(work: Path) -> dict:
    ev = json.loads((work / "metrics/evaluate.json").read_text())
    assert set(ev) == {"baseline", "clockwork", "clockwork_identity", *(f"baseline_{k}steps" for k in (3, 4, 5, 6, 7))}
    for m in ev.values():
        assert all(math.isfinite(m[k]) for k in ("fid", "kid", "clip", "gflops", "latency_ms"))
        v = m["vs_fewer_steps"]["fid"]  # against the plain-steps front (random weights: any status is possible)
        assert v["status"] in ("inside", "cheaper_than_front", "costlier_than_front")
        assert (v["delta"] is None) == (v["status"] != "inside")
    assert ev["clockwork"]["gflops"] < ev["baseline"]["gflops"]
    assert (work / "plots/samples/evaluate.png").is_file()
    return ev


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd15", "sd21"])
def test_sd_stages_on_a_tiny_local_pipeline(tmp_path: Path, kind: str) -> None:
    from pipeline.config import validate

    world = _tiny_world(tmp_path / "assets", kind)
    p = tiny_params("sd15.yaml", world)
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    validate(p, root=work, files_for="prepare")
    _run_stages(work, ("prepare", "trajectories", "distill", "evaluate"))
    prompts = json.loads((work / "data/prepared/prompts.json").read_text())
    assert prompts["world"] == "sd" and prompts["pipeline"] == "StableDiffusionPipeline"
    assert len(prompts["eval_prompts"]) == 4
    meta = json.loads((work / "data/trajectories/meta.json").read_text())
    assert meta["cuts"] == [1, 2] and meta["num_prompts"] == 6  # the captions left after the evaluation ones
    assert meta["latent_size"] == 16  # world.resolution 32 through the tiny VAE's factor 2
    ev = _check_evaluate(work)
    # the world's own schedule reached the samplers: SD 2.x's v-prediction shows in the trajectories' sampler
    from pipeline.common.world import scheduler_config_of
    from pipeline.config import validate as _v

    assert scheduler_config_of(_v(p, root=work).world)["prediction_type"] == ("v_prediction" if kind == "sd21" else "epsilon")
    assert ev["clockwork"]["n_samples"] == 4


@pytest.mark.slow
def test_sdxl_through_dvc_repro(tmp_path: Path) -> None:
    """cp configs/sdxl.yaml params.yaml && dvc repro report (every stage of the world) on a tiny SDXL pipeline."""
    from safetensors.torch import load_file

    from test_pipeline import copy_repo, dvc, ran

    world = _tiny_world(tmp_path / "assets", "sdxl")
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params("sdxl.yaml", world), sort_keys=False))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "sdxl copy"], cwd=repo, check=True)
    res = dvc(repo, "repro", "report", timeout=1500)
    assert {"prepare", "trajectories", "distill", "evaluate", "ablate", "report"} <= ran(res.stdout)
    prompts = json.loads((repo / "data/prepared/prompts.json").read_text())
    assert prompts["pipeline"] == "StableDiffusionXLPipeline"
    table = load_file(str(repo / "data/prepared/embeddings.safetensors"))
    pooled = [v for k, v in table.items() if "pooled" in k][0]
    assert pooled.shape[1] == 16 and float(pooled[0].abs().max()) == 0.0  # text_embeds; the empty prompt: zeros
    shard = load_file(str(repo / "data/trajectories/shard-00000.safetensors"))
    steps, rows = shard["r_in.c1"].shape[:2]
    assert shard["temb"].shape[:2] == (steps, rows)  # SDXL's embedding differs per row (pooled text + time ids)
    assert shard["text"].shape == (rows, 16)  # the pooled text_embeds, not the mean token state
    _check_evaluate(repo)
    ab = json.loads((repo / "metrics/ablate.json").read_text())
    assert {r["ablation"] for r in ab["rows"]} >= {"adaptor_type", "schedule", "cut", "sampler", "steps"}
    assert all(math.isfinite(r["fid"]) for r in ab["rows"])
    assert (repo / "reports/analysis/summary.md").is_file()


# ---------------------------------------------------------------------------------------------- bad worlds
@pytest.fixture(scope="module")
def sdxl_assets(tmp_path_factory) -> dict:
    return _tiny_world(tmp_path_factory.mktemp("sdxl_assets"), "sdxl")


def _problems(p: dict, root: Path) -> list[tuple[str, str]]:
    from pipeline.config import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(p, root=root, files_for="prepare")
    return e.value.problems


def test_sdxl_params_validate(sdxl_assets, tmp_path: Path) -> None:
    from pipeline.config import validate

    p = validate(tiny_params("sdxl.yaml", sdxl_assets), root=tmp_path, files_for="prepare")
    assert p.world.kind == "sd"


def test_a_wrong_model_path_names_world_model(sdxl_assets, tmp_path: Path) -> None:
    p = tiny_params("sdxl.yaml", dict(sdxl_assets, model=str(tmp_path / "nowhere")))
    probs = _problems(p, tmp_path)
    assert [k for k, _ in probs] == ["world.model"] and "model_index.json" in probs[0][1]
    p = tiny_params("sdxl.yaml", dict(sdxl_assets, model="no-such-owner/no-such-model"))
    probs = _problems(p, tmp_path)
    assert [k for k, _ in probs] == ["world.model"] and "cannot read" in probs[0][1]


def test_an_unsupported_pipeline_class_names_the_key(sdxl_assets, tmp_path: Path) -> None:
    model = tmp_path / "kandinsky"
    shutil.copytree(sdxl_assets["model"], model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyV22Pipeline"}))
    probs = _problems(tiny_params("sdxl.yaml", dict(sdxl_assets, model=str(model))), tmp_path)
    assert [k for k, _ in probs] == ["world.model"] and "KandinskyV22Pipeline" in probs[0][1]
    p = tiny_params("sdxl.yaml", sdxl_assets)
    p["world"]["pipeline"] = "StableDiffusion3Pipeline"
    probs = _problems(p, tmp_path)
    assert [k for k, _ in probs] == ["world.pipeline"]


def test_a_cut_or_resolution_the_unet_cannot_take_names_the_key(sdxl_assets, tmp_path: Path) -> None:
    p = tiny_params("sdxl.yaml", sdxl_assets)
    p["cut"] = 3  # SDXL has 3 levels: cuts 1 and 2
    p["trajectories"]["cuts"] = [1, 3]
    probs = dict(_problems(p, tmp_path))
    assert "valid cuts: [1, 2]" in probs["cut"] and "trajectories.cuts" in probs
    p = tiny_params("sdxl.yaml", sdxl_assets)
    p["world"]["resolution"] = 36  # VAE factor 2 x 2 downsamplings: multiples of 8
    assert [k for k, _ in _problems(p, tmp_path)] == ["world.resolution"]
    p = tiny_params("sdxl.yaml", sdxl_assets)
    p["distill"]["rollout_steps"] = 10
    assert [k for k, _ in _problems(p, tmp_path)] == ["distill.rollout_steps"]
