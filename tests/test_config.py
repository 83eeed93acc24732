"""params.yaml validation: every problem names its key, the stage exits with code 2 and writes nothing."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import STAGE_SCRIPTS, STAGE_SECTIONS, ConfigError, read_yaml, validate  # noqa: E402


@pytest.fixture(scope="module")
def default() -> dict:
    return read_yaml(REPO / "params.yaml")


def problems(raw: dict, files_for: str | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        validate(raw, root=REPO, files_for=files_for)
    return e.value.problems


def edited(raw: dict, path: str, value) -> dict:
    out = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = out
    for k in parents:
        node = node[k]
    node[last] = value
    return out


def config_only_pipeline(folder: Path, kind: str) -> Path:
    """A pipeline folder of configs alone (no weights) at the real SD 1.5 or SDXL-base shapes: what validation reads."""
    import json

    from clockwork.flops import SD15, SDXL, meta_unet

    folder.mkdir(parents=True)
    cls = "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    for sub, cfg in (("unet", dict(meta_unet(SDXL if kind == "sdxl" else SD15).config)),
                     ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (folder / sub).mkdir()
        (folder / sub / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("name", ["params.yaml", "configs/smoke.yaml", "configs/full.yaml", "configs/sd15.yaml",
                                  "configs/sdxl.yaml"])
def test_shipped_configs_are_valid(name: str, tmp_path: Path) -> None:
    raw = read_yaml(REPO / name)
    if raw["world"]["kind"] == "sd":  # the hub model's configs, offline: a config-only folder of its shapes
        raw["world"]["model"] = str(config_only_pipeline(tmp_path / "model", "sdxl" if "sdxl" in name else "sd15"))
    p = validate(raw, root=REPO)
    assert p.cut in p.trajectories.cuts


def test_default_params_check_their_files(default: dict) -> None:
    for stage in STAGE_SECTIONS:
        validate(default, root=REPO, files_for=stage)


@pytest.mark.parametrize("path,value,key,words", [
    ("distill.lrr", 0.1, "distill.lrr", "unknown key"),
    ("adaptor.colour", "red", "adaptor.colour", "unknown key"),
    ("distill.lr", "fast", "distill.lr", "valid number"),
    ("distill.lr", "1e-4", "distill.lr", "write 1.0e-4"),
    ("distill.steps", 1.5, "distill.steps", "integer"),
    ("evaluate.n_samples", "300", "evaluate.n_samples", "integer"),
    ("adaptor.kind", "transformer", "adaptor.kind", "resnet"),
    ("adaptor.inputs", ["r_in", "colour"], "adaptor.inputs.1", "r_out_prev"),
    ("sampling.sampler", "lms", "sampling.sampler", "dpm++"),
    ("clock.period", 0, "clock.period", ">= 1"),
    ("clock.period", -2, "clock.period", ">= 1"),
    ("cut", 5, "cut", "valid cuts: [1, 2, 3]"),
    ("cut", 0, "cut", "greater than or equal to 1"),
    ("trajectories.cuts", [1, 7], "trajectories.cuts", "valid cuts"),
    ("clock.adaptor_steps", [1, 3, 9], "clock.adaptor_steps", "outside the schedule"),
    ("clock.adaptor_steps", [0, 2], "clock.adaptor_steps", "step 0"),
    ("ablate.schedules", {"late": [4, 5, 8]}, "ablate.schedules.late", "outside the schedule"),
    ("ablate.ablations", ["cut", "colour"], "ablate.ablations.1", "adaptor_type"),
    ("world.kind", "sdxl", "world", "embedded"),
    ("evaluate.n_samples", 5000, "evaluate.n_samples", "prepare.eval_prompts"),
    ("distill.heldout_prompts", 512, "distill.heldout_prompts", "no training prompts"),
    ("prepare.reference_images", 9900, "prepare.reference_images", "held-out images"),
    ("edit.attributes", ["colour", "shape"], "edit.attributes.1", "item"),
    ("edit.front_steps", [8, 16], "edit.front_steps", "fewer than edit.steps"),
    ("edit.clocks", [2, 32], "edit.clocks", "exceed edit.steps"),
    ("edit.distill_prompts", 100000, "edit.distill_prompts", "prepare.distill_prompts"),
    ("edit.adaptors", ["identity", "trained"], "edit.adaptors.1", "edit-distilled"),
    ("edit.feature_fraction", 1.5, "edit.feature_fraction", "less than or equal to 1"),
    ("edit.sdedit_strength", 0.0, "edit.sdedit_strength", "greater than 0"),
])
def test_bad_values_name_their_key(default: dict, path: str, value, key: str, words: str) -> None:
    found = problems(edited(default, path, value))
    keys = [k for k, _ in found]
    assert key in keys, found
    msg = dict(found)[key]
    assert words in msg, msg


def test_unknown_section_and_missing_section(default: dict) -> None:
    raw = dict(default, extra_stage={"a": 1})
    assert ("extra_stage" in [k for k, _ in problems(raw)])
    raw = {k: v for k, v in default.items() if k != "distill"}
    assert "distill" in [k for k, _ in problems(raw)]


def test_missing_files_name_their_key(default: dict, tmp_path: Path) -> None:
    raw = edited(default, "world.data_root", str(tmp_path / "nowhere"))
    found = dict(problems(raw, files_for="prepare"))
    assert "world.data_root" in found and "dataset-fashion-mnist" in found["world.data_root"]
    raw = edited(default, "world.scorer", str(tmp_path / "no_scorer"))
    assert "world.scorer" in dict(problems(raw, files_for="evaluate"))
    validate(raw, root=REPO, files_for="trajectories")  # the trajectories stage does not need the scorer
    raw = edited(default, "world.teacher", str(tmp_path / "no_teacher"))
    assert "world.teacher" in dict(problems(raw, files_for="distill"))


def test_sd15_missing_files(tmp_path: Path) -> None:
    raw = read_yaml(REPO / "configs/sd15.yaml")
    raw["world"]["model"] = str(config_only_pipeline(tmp_path / "model", "sd15"))
    raw["world"]["captions"] = str(tmp_path / "captions_val2017.json")
    raw["world"]["reference_images"] = str(tmp_path / "val2017")
    found = dict(problems(raw, files_for="prepare"))
    assert "world.captions" in found and "world.reference_images" in found
    raw["world"]["model"] = str(tmp_path / "sd15_local")  # a local path that is not a pipeline folder
    assert "world.model" in dict(problems(raw, files_for="trajectories"))


def _run_stage(stage: str, params: dict, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(REPO), CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage,path,value,key", [
    ("distill", "distill.lr", "fast", "distill.lr"),
    ("prepare", "prepare.colour", 1, "prepare.colour"),
    ("trajectories", "clock.period", 0, "clock.period"),
    ("evaluate", "cut", 5, "cut"),
    ("prepare", "world.data_root", "/nonexistent/fashion", "world.data_root"),
])
def test_stage_exits_2_and_writes_nothing(default: dict, tmp_path: Path, stage: str, path: str, value, key: str) -> None:
    raw = edited(default, path, value)
    for k in ("teacher", "scorer"):  # absolute, so only the edited key can be wrong from this cwd
        raw["world"][k] = str(REPO / raw["world"][k])
    res = _run_stage(stage, raw, tmp_path)
    assert res.returncode == 2, res.stderr
    assert f"params.yaml: {key}:" in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "a stage wrote something before failing"


def test_config_cli(tmp_path: Path, default: dict) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(edited(default, "adaptor.width", "wide")))
    res = subprocess.run([sys.executable, str(REPO / "pipeline" / "config.py"), str(bad)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 2 and "params.yaml: adaptor.width:" in res.stderr


def test_dvc_yaml_declares_exactly_the_sections_each_stage_reads() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(dvc) == set(STAGE_SECTIONS)
    for stage, spec in dvc.items():
        assert tuple(spec["params"]) == STAGE_SECTIONS[stage], stage
        name = STAGE_SCRIPTS.get(stage, stage)  # report_full runs report.py on other files: the same sections
        script = REPO / "pipeline" / f"{name}.py"
        assert f"pipeline/{name}.py" in spec["deps"]
        assert spec["cmd"] == f"python pipeline/{name}.py" if name == stage else spec["cmd"].startswith(
            f"python pipeline/{name}.py "), (stage, spec["cmd"])
        assert STAGE_SECTIONS[name] == STAGE_SECTIONS[stage], stage
        assert f'load_params("{name}")' in script.read_text(), f"{script} must call load_params({name!r})"
    assert dvc["teacher"].get("frozen") is True and dvc["clip"].get("frozen") is True
