"""The `sweep:` section: parsing, the points a grid makes, and clear errors for every kind of mistake."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import config_sweep  # noqa: E402
from pipeline.tune import space  # noqa: E402
from pipeline.tune import driver  # noqa: E402
from pipeline import sweep  # noqa: E402

SPACE = {"clock": [2, 3, 4], "width": [64, 128], "cut": [1, 2]}


def parse(section):
    return config_sweep.parse_sweep({"sweep": section})


def problems(section):
    with pytest.raises(config_sweep.SweepConfigError) as e:
        parse(section)
    return dict(e.value.problems), str(e.value)


def test_defaults_and_grid_points():
    sp = parse({"space": SPACE})
    assert sp.search.algorithm == "grid" and sp.scheduler.name == "fifo" and sp.baseline == "trial"
    assert sp.trial == "pipeline.common:train_and_evaluate" and sp.resources.gpus_per_trial == 1.0
    pts = space.grid_points(sp)
    assert len(pts) == 12 and pts[0] == {"clock": 2, "width": 64, "cut": 1}
    assert {space.run_name(p) for p in pts} >= {"c2-w64-k1", "c4-w128-k2"}


def test_identity_adaptor_ignores_width():
    sp = parse({"space": {**SPACE, "adaptor": ["resnet", "identity"], "steps": [8]}})
    pts = space.grid_points(sp)
    # 3 clocks x 2 cuts x (2 resnet widths + 1 identity) - the identity has no width to sweep.
    assert len(pts) == 18
    assert {"clock": 2, "cut": 1, "steps": 8, "adaptor": "identity"} in pts
    assert space.run_name(pts[0]) == "c2-resnet-w64-k1-s8"


BASE = {"world": {"kind": "embedded"}, "cut": 1, "clock": {"period": 2, "adaptor_steps": [1, 3]},
        "sampling": {"sampler": "dpm++", "steps": 8}, "distill": {"steps": 1500, "lr": 1e-3},
        "adaptor": {"kind": "resnet", "width": 128, "depth": 2, "inputs": ["r_in", "r_out_prev"]},
        "teacher": {"lr": 4e-4}, "sweep": {"space": SPACE}}


def test_shorthands_and_baselines():
    sp = parse({"space": {**SPACE, "steps": [4, 8]}, "search": "random", "scheduler": "asha"})
    assert sp.search.algorithm == "random" and sp.scheduler.name == "asha"
    assert space.baseline_points(sp, BASE) == [{"clock": 1, "steps": 4, "adaptor": "none"},
                                               {"clock": 1, "steps": 8, "adaptor": "none"}]
    assert space.baseline_points(parse({"space": SPACE}), BASE) == [{"clock": 1, "steps": 8, "adaptor": "none"}]
    assert space.baseline_points(parse({"space": SPACE, "baseline": "none"}), BASE) == []


def test_points_take_defaults_from_the_params_file():
    sp = parse({"space": SPACE})
    pts = space.grid_points(sp, BASE)
    assert pts[0] == {"clock": 2, "width": 64, "cut": 1, "steps": 8, "adaptor": "resnet"}


def test_trial_params_are_what_train_and_evaluate_takes():
    sp = parse({"space": SPACE, "overrides": {"distill_steps": 300, "n_samples": 100}})
    point = {"clock": 3, "width": 64, "cut": 2, "steps": 8, "adaptor": "resnet"}
    p = space.trial_params(BASE, sp, point, "/repo/params.yaml")
    # the split every trial is scored on travels with it: sweep.split, the validation split by default
    assert p == {**point, "distill_steps": 300, "n_samples": 100, "split": "val", "params_file": "/repo/params.yaml"}
    # MLflow sees the trial in params.yaml's dotted names, on top of the file's other settings.
    flat = space.mlflow_params(BASE, p)
    assert flat["sweep.split"] == "val" and "split" not in flat
    assert space.trial_params(BASE, parse({"space": SPACE, "split": "heldout"}), point)["split"] == "heldout"
    assert flat["clock.period"] == 3 and flat["adaptor.width"] == 64 and flat["cut"] == 2
    assert flat["distill.steps"] == 300 and flat["evaluate.n_samples"] == 100 and flat["distill.lr"] == 1e-3
    assert flat["clock.adaptor_steps"] is None and "teacher.lr" not in flat
    base_flat = space.mlflow_params(BASE, space.trial_params(BASE, sp, {"clock": 1, "steps": 8, "adaptor": "none"}))
    assert base_flat["adaptor.kind"] == "none" and "adaptor.width" not in base_flat and "cut" not in base_flat
    nested = space.nested_params(BASE, {"clock": 1, "adaptor": "none"})
    assert nested["adaptor"]["inputs"] == ["r_out_prev"] and nested["adaptor"]["kind"] == "identity"
    assert "sweep" not in nested and BASE["adaptor"]["kind"] == "resnet"
    # The cache key changes with the params file's other settings and with the split, so a stale result is never
    # reused.
    k1 = space.point_key("m:f", p, BASE, point)
    k2 = space.point_key("m:f", p, {**BASE, "distill": {"steps": 1500, "lr": 1e-4}}, point)
    k3 = space.point_key("m:f", {**p, "split": "heldout"}, BASE, point)
    assert len({k1, k2, k3}) == 3 and k1.startswith("c3-resnet-w64-k2-s8-")


def test_random_space_distributions():
    pytest.importorskip("ray")
    sp = parse({"space": {"clock": {"randint": [2, 6]}, "width": {"choice": [32, 64]}, "cut": [1]},
                "search": {"algorithm": "random", "num_samples": 5}})
    tune_space = space.param_space(sp, [])
    assert set(tune_space) == {"clock", "width", "cut"}
    assert type(tune_space["clock"]).__name__ == "Integer" and tune_space["width"].categories == [32, 64]


@pytest.mark.parametrize("section, key, text", [
    ({"space": {"clock": [2], "width": [64]}}, "sweep.space.cut", "Field required"),
    ({"space": {**SPACE, "clock": [1, 2]}}, "sweep.space.clock", "clock 1 is the baseline"),
    ({"space": {**SPACE, "clock": []}}, "sweep.space.clock", "empty list"),
    ({"space": {**SPACE, "width": [64, 64]}}, "sweep.space.width", "duplicate"),
    ({"space": {**SPACE, "cut": [0, 1]}}, "sweep.space.cut", "cuts are integers >= 1"),
    ({"space": {**SPACE, "steps": [1]}}, "sweep.space.steps", ">= 2"),
    ({"space": {**SPACE, "adaptor": ["resnet", "transformer"]}}, "sweep.space.adaptor", "unknown adaptor kind"),
    ({"space": {**SPACE, "width": {"randint": [64]}}, "search": "random"}, "sweep.space.width", "randint takes"),
    ({"space": {**SPACE, "width": {"normal": [0, 1]}}, "search": "random"}, "sweep.space.width", "unknown distribution"),
    ({"space": {**SPACE, "width": {"randint": [64, 32]}}, "search": "random"}, "sweep.space.width", "below high"),
    ({"space": {**SPACE, "width": "64"}}, "sweep.space.width", "64"),
    ({"space": {**SPACE, "lr": [1e-4]}}, "sweep.space.lr", "unknown key"),
    ({"space": SPACE, "serach": "random"}, "sweep.serach", "unknown key"),
    ({"space": {**SPACE, "width": {"randint": [32, 128]}}}, "sweep", "a grid needs lists"),
    ({"space": SPACE, "search": {"num_samples": 4}}, "sweep", "a grid runs every point once"),
    ({"space": SPACE, "search": "simulated-annealing"}, "sweep.search.algorithm", "unknown search algorithm"),
    ({"space": SPACE, "search": {"algorithm": "random", "metric": ["fid", "gflops"], "mode": "min"}}, "sweep.search",
     "2 entries"),
    ({"space": SPACE, "scheduler": "pbt"}, "sweep.scheduler.name", "checkpoint"),
    ({"space": SPACE, "resources": {"gpus_per_trial": 1.5}}, "sweep.resources.gpus_per_trial", "whole number"),
    ({"space": SPACE, "resources": {"cpus_per_trial": 0}}, "sweep.resources.cpus_per_trial", "greater than 0"),
    ({"space": SPACE, "fid_tolerance": -1.0}, "sweep.fid_tolerance", "greater than or equal to 0"),
    ({"space": SPACE, "overrides": {"width": 32}}, "sweep", "which the space sweeps"),
    ({"space": SPACE, "overrides": {"distill.steps": 32}}, "sweep", "not parameters of pipeline.common"),
    ({"space": SPACE, "trial": "pipeline/common.py"}, "sweep.trial", "module:function"),
    ({"space": SPACE, "baseline": "evaluate"}, "sweep", "baseline must be"),
    ({"space": SPACE, "split": "test"}, "sweep.split", "'heldout' or 'val'"),
    ({"space": SPACE, "trial": "tests/test_sweep_trial.py:quick_trial", "overrides": {"split": "heldout"}}, "sweep",
     "`sweep.split`"),
    ({"space": SPACE, "name": "my sweep"}, "sweep.name", "pattern"),
])
def test_errors_name_the_key(section, key, text):
    found, message = problems(section)
    assert key in found, message
    assert text in found[key], message
    assert message.startswith(f"params.yaml: {key}: ") or f"\nparams.yaml: {key}: " in message


def test_missing_or_malformed_section(tmp_path):
    with pytest.raises(config_sweep.SweepConfigError, match="add a `sweep:` section"):
        config_sweep.parse_sweep({"cut": 1})
    with pytest.raises(config_sweep.SweepConfigError, match="must be a mapping"):
        config_sweep.parse_sweep({"sweep": [1, 2]})
    bad = tmp_path / "p.yaml"
    bad.write_text("sweep: [unclosed\n")
    with pytest.raises(config_sweep.SweepConfigError, match="not valid YAML"):
        driver.read_config(bad)


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"sweep": {"space": {**SPACE, "clock": [0]}}}))
    assert sweep.main(["--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml: sweep.space.clock: clock periods are integers >= 2" in err


def test_dry_run_lists_trials(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"sweep": {"space": SPACE, "trial": "tests/test_sweep_trial.py:quick_trial"}}))
    assert sweep.main(["--config", str(cfg), "--dry-run", "--sweeps-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12 trials + 1 baseline(s)" in out and "c4-w128-k2" in out and "baseline" in out


def test_full_params_yaml_points_are_checked_by_the_pipeline_validator(tmp_path):
    """With a full params.yaml, every trial's params go through pipeline/config.py: a cut the teacher
    cannot take is refused, with the trial named, before anything runs."""
    if not (ROOT / "params.yaml").is_file():
        pytest.skip("params.yaml is not there yet")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    with_val_split(raw)  # the default sweep.split: val needs one, whether or not params.yaml has it yet
    raw["sweep"] = {"space": {"clock": [2], "width": [32], "cut": [2, 9]}, "baseline": "none",
                    "overrides": {"n_samples": 8}}
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(config_sweep.SweepConfigError) as e:
        driver.run_sweep(cfg, dry_run=True, sweeps_dir=tmp_path)
    keys = [k for k, _ in e.value.problems]
    assert keys == ["trial c2-resnet-w32-k9-s8: cut"], e.value
    assert "valid cuts" in str(e.value)


def with_val_split(raw: dict, val_prompts: int = 100, val_reference_images: int = 250) -> dict:
    """params.yaml's dict with a validation split, keeping the one it has (the tests run with either)."""
    if not raw["prepare"].get("val_prompts"):
        raw["prepare"].update(val_prompts=val_prompts, val_reference_images=val_reference_images)
    return raw


def test_split_val_needs_a_validation_split_in_the_params_file(tmp_path, capsys):
    """sweep.split: val (the default) with a prepare section that makes no validation split stops the sweep, dry
    run included, before anything runs: one line naming sweep.split, prepare.val_prompts and
    prepare.val_reference_images. n_samples is checked against the validation split, not the evaluation prompts;
    heldout still runs on a file without one."""
    if not (ROOT / "params.yaml").is_file():
        pytest.skip("params.yaml is not there yet")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sweep"] = {"space": {"clock": [2], "width": [32], "cut": [1]}, "baseline": "none",
                    "overrides": {"n_samples": 8}}
    raw["prepare"].update(val_prompts=0, val_reference_images=0)
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert sweep.main(["--config", str(cfg), "--dry-run", "--sweeps-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: invalid sweep, nothing run" and len(err) == 2, err
    assert err[1].startswith("params.yaml: sweep.split: val scores every trial on the validation split")
    assert "prepare.val_prompts=0" in err[1] and "prepare.val_reference_images=0" in err[1]
    assert "sweep.split: heldout" in err[1] and not (tmp_path / "s").exists()

    raw["sweep"]["split"] = "heldout"  # the evaluation prompts: allowed, without a validation split
    cfg.write_text(yaml.safe_dump(raw))
    assert driver.run_sweep(cfg, dry_run=True, sweeps_dir=tmp_path / "s")["points"]

    raw["sweep"]["split"] = "val"
    small = max(16, (raw.get("clock") or {}).get("calibration_prompts") or 0)  # (a validation split this small)
    raw["sweep"]["overrides"]["n_samples"] = small + 1
    raw["prepare"].update(val_prompts=small, val_reference_images=16)
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(config_sweep.SweepConfigError) as e:
        driver.run_sweep(cfg, dry_run=True, sweeps_dir=tmp_path / "s")
    assert e.value.problems == [("sweep.overrides.n_samples", f"{small + 1} > prepare.val_prompts={small}: every "
                                 "trial evaluates n_samples validation prompts (sweep.split: val)")], e.value
    raw["prepare"].update(val_prompts=small + 1, eval_prompts=max(small + 1, raw["prepare"]["eval_prompts"]))
    cfg.write_text(yaml.safe_dump(raw))
    assert driver.run_sweep(cfg, dry_run=True, sweeps_dir=tmp_path / "s")["points"]


def test_a_training_free_adaptor_is_a_trial_without_width():
    """identity (and any kind pipeline.common.methods.TRAINING_FREE lists) is swept once per clock and cut, with
    no width, its inputs the r_out_prev it reuses - for the pipeline's validator and for MLflow."""
    from pipeline.common.methods import TRAINING_FREE

    sp = parse({"space": {"clock": [2], "width": [64, 128], "cut": [1], "adaptor": ["resnet", *TRAINING_FREE]}})
    pts = space.grid_points(sp, BASE)
    free = [p for p in pts if p["adaptor"] in TRAINING_FREE]
    assert len(pts) == 2 + len(TRAINING_FREE) and all("width" not in p for p in free)
    for p in free:
        params = space.trial_params(BASE, sp, p)
        assert space.nested_params(BASE, params)["adaptor"]["inputs"] == ["r_out_prev"]
        flat = space.mlflow_params(BASE, params)
        assert flat["adaptor.kind"] == p["adaptor"] and "adaptor.width" not in flat
        assert space.run_name(p) == f"c2-{p['adaptor']}-k1-s8"


def test_missing_validation_split_is_an_error_before_ray_starts(tmp_path):
    """sweep.split val on a data/prepared made without a validation split: one clear line, before Ray starts."""
    import json

    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "prompts.json").write_text(json.dumps({"eval_prompts": ["a"], "val_prompts": []}))
    for f in ("embeddings.safetensors", "reference_stats.npz"):
        (prepared / f).write_text("")
    driver.check_inputs(tmp_path, "heldout")
    with pytest.raises(FileNotFoundError) as e:
        driver.check_inputs(tmp_path, "val")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("sweep.split is val but") and "no validation split" in msg
    assert "prepare.val_prompts and prepare.val_reference_images" in msg and "nothing run" in msg
    (prepared / "prompts.json").write_text(json.dumps({"eval_prompts": ["a"], "val_prompts": ["b"]}))
    with pytest.raises(FileNotFoundError, match="val_reference_stats.npz missing"):
        driver.check_inputs(tmp_path, "val")
    (prepared / "val_reference_stats.npz").write_text("")
    driver.check_inputs(tmp_path, "val")


def test_sweep_stops_on_prepared_data_without_a_validation_split(tmp_path, capsys):
    """The whole command: a params file asking for a validation split (configs/smoke.yaml), a data/prepared made
    before it had one: exit code 2, one error line, no sweep folder, no trial."""
    import json

    raw = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    assert raw["prepare"]["val_prompts"] > 0 and raw["prepare"]["val_reference_images"] > 0
    root = tmp_path / "root"
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "prompts.json").write_text(json.dumps({"eval_prompts": ["a"] * 16}))  # no val_prompts
    for f in ("embeddings.safetensors", "reference_stats.npz"):
        (prepared / f).write_text("")
    raw["sweep"] = {"name": "noval", "space": {"clock": [2], "width": [8], "cut": [1]},
                    "overrides": {"n_samples": 4, "root": str(root)}}
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert sweep.main(["--config", str(cfg), "--sweeps-dir", str(tmp_path / "sweeps"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: sweep.split is val but {prepared} has no validation split"), err
    assert "prepare.val_prompts and prepare.val_reference_images > 0" in err[0] and "sweep.split: heldout" in err[0]
    assert not (tmp_path / "sweeps").exists()


def test_missing_prepared_data_is_an_error_before_ray_starts(tmp_path):
    """The default trial reads data/prepared: without it the sweep stops at once (no Ray, no sweep folder)."""
    with pytest.raises(FileNotFoundError, match="lacks prompts.json, embeddings.safetensors, reference_stats.npz"):
        driver.check_inputs(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    for f in ("prompts.json", "embeddings.safetensors"):
        (tmp_path / "data" / "prepared" / f).write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks reference_stats.npz: run `dvc repro trajectories`"):
        driver.check_inputs(tmp_path)
    (tmp_path / "data" / "prepared" / "reference_stats.npz").write_text("")
    driver.check_inputs(tmp_path)
