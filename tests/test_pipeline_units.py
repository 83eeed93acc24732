"""Pipeline building blocks without DVC: FID shortcut, MLflow failure tolerance, atomic writes, method specs,
clock/loop bookkeeping, FLOPs per method, ablation rows, step-0 padding for adaptors without r_out(t+1)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import common, tracking  # noqa: E402
from pipeline.common import MethodSpec  # noqa: E402
from pipeline.config import StageParams, read_yaml, validate  # noqa: E402


# ----------------------------------------------------------------------------------------------- FID
def test_low_rank_fid_equals_clockwork_metrics() -> None:
    from clockwork.metrics import ReferenceStats, fid_from_features

    g = torch.Generator().manual_seed(0)
    ref = ReferenceStats.from_features(torch.randn(300, 64, generator=g, dtype=torch.float64) * 2)
    for n, shift in ((40, 0.3), (120, 0.0)):
        gen = torch.randn(n, 64, generator=g, dtype=torch.float64) + shift
        want = fid_from_features(ref, gen)
        got = common.fid_low_rank(torch.as_tensor(ref.mu), torch.as_tensor(ref.sigma), gen)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    std = common.bootstrap_fid_std(gen, ref, n_boot=5, seed=0)
    assert 0 < std < want
    # score_images takes this path below the feature dimension and the library's at or above it.
    scorer = lambda imgs, prompts: torch.zeros(len(imgs))  # noqa: E731
    for n in (40, 80):
        gen = torch.randn(n, 64, generator=g, dtype=torch.float64)
        m = common.score_images(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), ["p"] * n, ref, scorer, 2, 2, 10,
                                features=gen)
        assert m["fid"] == pytest.approx(fid_from_features(ref, gen), rel=1e-6)


def test_score_images_returns_every_metric() -> None:
    from clockwork.metrics import ReferenceStats

    g = torch.Generator().manual_seed(1)
    ref = ReferenceStats.from_features(torch.randn(50, 16, generator=g, dtype=torch.float64))
    feats = torch.randn(20, 16, generator=g, dtype=torch.float64)
    images = torch.zeros(20, 3, 8, 8, dtype=torch.uint8)
    scorer = lambda imgs, prompts: torch.full((len(imgs),), 30.0)  # noqa: E731
    m = common.score_images(images, ["p"] * 20, ref, scorer, fid_bootstrap=3, kid_subsets=4, kid_subset_size=10,
                            features=feats)
    assert {"fid", "fid_std", "kid", "kid_std", "clip", "clip_std", "n_samples"} <= set(m)
    assert m["clip"] == 30.0 and m["clip_std"] == 0.0 and m["n_samples"] == 20


# ------------------------------------------------------------------------------------------- tracking
def test_tracking_failure_warns_and_continues(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    monkeypatch.delenv("CLOCKWORK_MLFLOW", raising=False)
    with pytest.warns(RuntimeWarning, match="MLflow"):
        with tracking.stage_run("distill", {"adaptor.width": 128}) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            run.log_artifact(__file__)
            with run.child("row") as child:
                child.log_metrics({"fid": 1.0})
    assert not run.ok


def test_tracking_off(monkeypatch) -> None:
    monkeypatch.setenv("CLOCKWORK_MLFLOW", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tracking.stage_run("evaluate") as run:
            run.log_metrics({"fid": float("nan")})
    assert not run.ok and tracking.experiment_name("trajectories") == "clockwork-data"


def test_tracking_logs_flat_params(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("CLOCKWORK_MLFLOW", raising=False)
    with tracking.stage_run("distill", {"adaptor.width": 128, "clock.period": 2, "cut": 1}) as run:
        run.log_metrics({"loss": 0.5, "bad": float("inf"), "label": "x"}, step=3)
    assert run.ok
    got = mlflow.get_run(run.run_id)
    assert got.data.params == {"adaptor.width": "128", "clock.period": "2", "cut": "1"}
    assert got.data.metrics == {"loss": 0.5}
    assert mlflow.get_experiment(got.info.experiment_id).name == "clockwork-distill"


# ------------------------------------------------------------------------------------------ atomic io
def test_atomic_dir_keeps_old_contents_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "models" / "adaptor"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with common.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["adaptor"]
    with common.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    common.write_json(tmp_path / "m" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "m" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["x.json"]


# ---------------------------------------------------------------------------------------- method spec
def test_method_spec_keys_ignore_what_does_not_matter() -> None:
    a = MethodSpec(steps=8, cut=1, width=128)
    b = MethodSpec(steps=8, cut=2, width=64, clock=3)
    assert a.is_baseline and a.key() == b.key()
    i1 = MethodSpec(adaptor="identity", clock=2, width=128)
    i2 = MethodSpec(adaptor="identity", clock=2, width=16)
    assert i1.key() == i2.key() != MethodSpec(adaptor="identity", clock=3).key()
    f1, f2 = MethodSpec(adaptor="forecast", clock=2, width=128), MethodSpec(adaptor="forecast", clock=2, width=16)
    assert f1.key() == f2.key() != i1.key()  # training-free as identity, but another method
    assert not f1.needs_training and f1.uses_r_out_prev and f1.adaptor_kwargs() == {} and f1.normalized().width == 0
    r1, r2 = MethodSpec(adaptor="resnet", clock=2, width=128), MethodSpec(adaptor="resnet", clock=2, width=64)
    assert r1.key() != r2.key()
    assert r1.describe()["clock"] == 2 and MethodSpec(adaptor="resnet", adaptor_steps=(1, 2)).describe()["clock"] == [1, 2]


def _sched(name: str):
    from clockwork.embedded.teacher import training_scheduler

    return common.make_sampler(name, training_scheduler().config)


def test_adaptor_loop_indices() -> None:
    from clockwork.clock import Clock

    assert common.adaptor_loop_indices(_sched("dpm++"), 8, Clock(2)) == [1, 3, 5, 7]
    # PNDM evaluates twice in its first step: loops 0 and 1 are step 0.
    assert common.adaptor_loop_indices(_sched("pndm"), 8, Clock(2)) == [2, 4, 6, 8]
    every = Clock(adaptor_steps=range(8))
    assert common.adaptor_loop_indices(_sched("dpm++"), 8, every, uses_r_out_prev=False) == list(range(8))
    with pytest.raises(ValueError, match="step 0"):
        common.adaptor_loop_indices(_sched("dpm++"), 8, every, uses_r_out_prev=True)
    assert common.make_sampler("dpm", _sched("ddim").config) is not None  # DPM-Solver builds despite diffusers' check


def test_method_gflops_counts_unet_evaluations() -> None:
    from clockwork.embedded.teacher import TEACHER_CONFIG, training_scheduler

    cfg, sc = dict(TEACHER_CONFIG), dict(training_scheduler().config)
    base = common.method_gflops(cfg, MethodSpec(steps=8), sc, 16)
    assert common.method_gflops(cfg, MethodSpec(steps=4), sc, 16) == pytest.approx(base / 2)
    assert common.method_gflops(cfg, MethodSpec(sampler="pndm", steps=8), sc, 16) == pytest.approx(base * 9 / 8)
    ident = common.method_gflops(cfg, MethodSpec(adaptor="identity", clock=2), sc, 16)
    # forecast's weighted sum of cached r_out is elementwise, not counted: an identity step's cost
    assert common.method_gflops(cfg, MethodSpec(adaptor="forecast", clock=2), sc, 16) == ident
    resnet = common.method_gflops(cfg, MethodSpec(adaptor="resnet", clock=2, width=64), sc, 16)
    every = common.method_gflops(cfg, MethodSpec(adaptor="resnet", adaptor_steps=tuple(range(8)), width=64,
                                                 inputs=("r_in", "time")), sc, 16)
    assert every < ident < resnet < base and ident / base < 0.75


# ------------------------------------------------------------------------------------------- ablation
def test_ablation_rows_cover_the_paper() -> None:
    from pipeline.ablate import ablation_rows

    raw = read_yaml(REPO / "params.yaml")
    default = set(raw["ablate"]["ablations"])  # the default run leaves the sampler ablation to configs/full.yaml
    every_ablation = ["adaptor_type", "schedule", "cut", "inputs", "training", "sampler", "steps"]
    assert default <= set(every_ablation) and {"adaptor_type", "schedule", "cut", "training"} <= default
    raw["ablate"]["ablations"] = every_ablation
    p = StageParams("ablate", validate(raw, root=REPO))
    rows = ablation_rows(p)
    by = {(a, v): s for a, v, s in rows}
    assert {a for a, _, _ in rows} == {*every_ablation, "front"}
    front = [s for a, _, s in rows if a == "front"]  # the plain-steps front every row is compared with
    assert [s.steps for s in front] == sorted(raw["ablate"]["front_steps"]) and all(s.is_baseline for s in front)
    assert 8 in raw["ablate"]["front_steps"] and len(front) >= 3
    assert {v for a, v, _ in rows if a == "adaptor_type"} == {"baseline", "identity", "forecast", "resnet", "unet-light",
                                                              "resnet-wide"}
    fc = by[("adaptor_type", "forecast")]
    assert fc.adaptor == "forecast" and not fc.needs_training and fc.key() != by[("adaptor_type", "identity")].key()
    assert by[("schedule", "late_half")].adaptor_steps == (4, 5, 6, 7)
    assert by[("schedule", "early_middle")].adaptor_steps == (2, 3, 4, 5)
    assert by[("cut", "cut2")].cut == 2
    every = by[("inputs", "every_step_without_r_out_prev")]
    assert every.adaptor_steps == tuple(range(8)) and every.inputs == ("r_in", "time") and not every.uses_r_out_prev
    assert by[("inputs", "r_out_prev")].inputs == ("r_out_prev", "time")
    fn4 = by[("training", "forward_noised_4steps")]
    assert fn4.training == "forward_noised" and fn4.steps == 4 and fn4.clock == 2
    assert by[("sampler", "ddim/baseline")].is_baseline and by[("sampler", "ddim/clockwork")].sampler == "ddim"
    assert by[("steps", "6steps/clockwork")].steps == 6
    # The default row appears in several ablations and is computed once.
    assert by[("adaptor_type", "resnet")].key() == by[("cut", "cut1")].key() == by[("sampler", "dpm++/clockwork")].key()
    assert len({s.key() for _, _, s in rows}) < len(rows)


def test_lever_rows_change_only_what_they_name() -> None:
    from pipeline.ablate import ablation_rows

    raw = read_yaml(REPO / "params.yaml")
    raw["ablate"] = {**raw["ablate"], "ablations": ["levers"],
                     "levers": {"cheap": {"width": 64, "depth": 1}, "alt": {"period": 2},
                                "loss": {"output_weight": 1.0, "distill_steps": 50}}}
    p = StageParams("ablate", validate(raw, root=REPO))
    by = {v: s for a, v, s in ablation_rows(p) if a == "levers"}
    base = by["loss"]
    assert (by["cheap"].width, by["cheap"].depth, by["cheap"].adaptor_steps) == (64, 1, (2, 3, 4, 5))
    assert by["alt"].adaptor_steps is None and by["alt"].clock == 2 and by["alt"].clock_repr() == 2
    assert base.train_overrides == {"distill_steps": 50, "output_weight": 1.0} and base.width == 128
    assert len({s.key() for s in by.values()}) == 3  # the distillation overrides are part of a row's identity
    raw["ablate"]["levers"] = {"bad": {"adaptor_steps": [0, 9]}}
    with pytest.raises(Exception, match="ablate.levers.bad"):
        validate(raw, root=REPO)


def test_pair_dataset_pads_step_zero_for_adaptors_without_r_out_prev() -> None:
    s, n = 8, 3
    traj = {"r_in": torch.randn(s, n, 2, 4, 4), "r_out": torch.randn(s, n, 5, 4, 4), "temb": torch.randn(s, 6),
            "text": torch.randn(n, 7), "timesteps": torch.arange(s).float()}
    every = MethodSpec(adaptor="resnet", adaptor_steps=tuple(range(8)), inputs=("r_in", "time"))
    data = common.pair_dataset(traj, every, _sched("dpm++"))
    assert len(data) == 8 * n
    b = data.batch(torch.arange(n), "cpu")  # the first n pairs are step 0
    assert torch.equal(b["r_in"], traj["r_in"][0]) and torch.equal(b["target"], traj["r_out"][0])
    assert not b["r_out_prev"].any()
    alt = common.pair_dataset(traj, MethodSpec(adaptor="resnet", clock=2), _sched("dpm++"))
    b = alt.batch(torch.arange(n), "cpu")  # step 1 with r_out(t+1) from step 0
    assert torch.equal(b["r_out_prev"], traj["r_out"][0]) and torch.equal(b["target"], traj["r_out"][1])


def test_trajectory_rows_are_split_per_prompt(tmp_path: Path) -> None:
    """Shards hold each prompt twice (CFG halves, identical r_in at cut 1): held-out prompts must take both."""
    from safetensors.torch import save_file

    n, ss = 5, 2
    (tmp_path / "meta.json").write_text(json.dumps({"num_prompts": n, "num_shards": 3, "shard_size": ss, "cuts": [1]}))
    for i in range(3):
        prompts = list(range(i * ss, min((i + 1) * ss, n)))
        rows = torch.tensor(prompts + prompts, dtype=torch.float16)  # uncond half, then cond half
        save_file({"r_in.c1": rows.view(1, -1, 1, 1, 1).expand(2, -1, 1, 2, 2).contiguous(),
                   "r_out.c1": rows.view(1, -1, 1, 1, 1).expand(2, -1, 3, 2, 2).contiguous(),
                   "text": rows.view(-1, 1).expand(-1, 4).contiguous(), "temb": torch.zeros(2, 6),
                   "timesteps": torch.arange(2).float()}, str(tmp_path / f"shard-{i:05d}.safetensors"))
    traj = common.load_trajectories(tmp_path, 1)
    assert traj["prompt"].tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 4, 4]
    assert torch.equal(traj["r_in"][0, :, 0, 0, 0].long(), traj["prompt"])
    train, held = common.split_trajectories(traj, 2)
    assert sorted(held["prompt"].tolist()) == [3, 3, 4, 4] and held["r_in"].shape[1] == 4
    assert sorted(set(train["prompt"].tolist())) == [0, 1, 2] and train["text"].shape[0] == 6
    assert common.num_prompts(train) == 3 and common.num_prompts(held) == 2
    first3 = common.load_trajectories(tmp_path, 1, max_prompts=3)
    assert sorted(first3["prompt"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(first3["r_out"][0, :, 0, 0, 0].long(), first3["prompt"])


@pytest.mark.parametrize("sampler", ["dpm++", "dpm", "pndm", "ddim", "euler", "heun"])
def test_pipeline_samples_the_teacher_on_the_same_timesteps_as_the_library(sampler) -> None:
    """The stages build samplers from the committed teacher's scheduler_config.json; they must step exactly
    like clockwork.embedded.teacher.sampling_scheduler (generate, bench, the teacher's own evaluation).
    A saved DDPM default (timestep_spacing "leading") once made the pipeline's 8 DPM++ steps start at t=888."""
    from clockwork.embedded.teacher import DEFAULT_TEACHER_DIR, sampling_scheduler
    from clockwork.schedulers import make_scheduler

    saved = common.teacher_scheduler_config(DEFAULT_TEACHER_DIR)
    assert saved == json.loads((Path(DEFAULT_TEACHER_DIR) / "scheduler" / "scheduler_config.json").read_text())
    for steps in (4, 6, 8):
        a, b = make_scheduler(sampler, saved), sampling_scheduler(sampler)
        a.set_timesteps(steps)
        b.set_timesteps(steps)
        assert a.timesteps.tolist() == b.timesteps.tolist(), (sampler, steps)
    if sampler in ("dpm++", "dpm"):
        a.set_timesteps(8)
        assert int(a.timesteps[0]) == 999


def test_edit_verdict_words_the_paired_comparison() -> None:
    """The edit table's verdict: worse when any score is 2 standard errors worse, better when none is and one is
    2 better, else within 2σ; a missing comparison prints its status."""
    from pipeline.common.editing import paired
    from pipeline.report import edit_verdict

    def v(**deltas):
        out = {}
        for k in ("attribute_success", "clip_preference", "mask_iou", "structure_ssim"):
            d = deltas.get(k, 0.0)
            out[k] = paired(torch.tensor([d + 0.1, d - 0.1] * 8), torch.zeros(16))  # se ~0.026
        return out

    assert edit_verdict(v()).startswith("within 2σ")
    assert edit_verdict(v(mask_iou=0.2)).startswith("better")
    assert edit_verdict(v(mask_iou=0.2, structure_ssim=-0.2)).startswith("worse")
    assert edit_verdict(v(attribute_success=-0.03)).startswith("within 2σ")
    assert edit_verdict({"status": "no plain step count costs the same"}) == "no plain step count costs the same"
    assert edit_verdict(None) == ""
