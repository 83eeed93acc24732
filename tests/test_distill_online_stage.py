"""The distill stage's `distill.source: online` and `memory_cap_gb` on the smoke configuration, and the params checks
of the online regime.

One temporary copy of the repository per module: prepare (--prompts-only) and trajectories of configs/smoke.yaml
(24 prompts, ~20 s), then the distill stage as DVC calls it: from the store in memory, from the store lazily
(memory_cap_gb tiny), and online. The online run must equal a direct clockwork.online.distill_online call on the
prepared prompts but the held-out ones, and its teacher must unroll exactly the pairs the store holds for the same
prompts and noise.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from pipeline.config import ConfigError, read_yaml, validate  # noqa: E402

ONLINE = {"buffer_prompts": 8, "unroll_batch": 4, "refresh_every": 2}
ENV = dict(os.environ, CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *args], cwd=repo, env=dict(ENV, PYTHONPATH=str(repo)), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"{args}:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def _params(repo: Path, **distill) -> None:
    p = read_yaml(repo / "configs" / "smoke.yaml")
    p["distill"].update(distill)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def smoke_repo(repo: Path) -> Path:
    """A copy of the repository with configs/smoke.yaml's prompts prepared and trajectories unrolled (~20 s)."""
    from test_pipeline import copy_repo

    copy_repo(repo)
    _params(repo)
    _run(repo, "pipeline/prepare.py", "--prompts-only", "data/prepared")
    _run(repo, "pipeline/trajectories.py")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return smoke_repo(tmp_path_factory.mktemp("online_repo"))


def _distill(repo: Path, **distill) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    _params(repo, **distill)
    _run(repo, "pipeline/distill.py")
    return (json.loads((repo / "metrics/distill.json").read_text()),
            load_file(str(repo / "models/adaptor/diffusion_pytorch_model.safetensors")))


def test_store_lazily_gives_the_in_memory_adaptor(repo: Path) -> None:
    from pipeline.common.store import load_trajectories

    base_m, base = _distill(repo)
    lazy_m, lazy = _distill(repo, memory_cap_gb=1e-6)
    assert not isinstance(load_trajectories(repo / "data/trajectories", 1, memory_cap_gb=1e-6)["r_in"], torch.Tensor)
    assert isinstance(load_trajectories(repo / "data/trajectories", 1, memory_cap_gb=8.0)["r_in"], torch.Tensor)
    assert base.keys() == lazy.keys() and all(torch.equal(base[k], lazy[k]) for k in base)
    assert lazy_m["heldout_mse"] == base_m["heldout_mse"] and lazy_m["final_loss"] == base_m["final_loss"]
    assert "source" not in base_m  # the store path's metrics are what they were


def test_online_stage_writes_the_adaptor_and_metrics(repo: Path) -> None:
    from clockwork.distill import DistillConfig
    from clockwork.online import OnlineConfig, TensorPrompts, distill_online
    from pipeline.common import MethodSpec, Prepared, adaptor_loop_indices, build_adaptor_for, load_world
    from pipeline.config import teacher_unet_config

    store_m, _ = _distill(repo)
    m, weights = _distill(repo, source="online", online=ONLINE)
    n_train = 24 - 8  # smoke: prepare.distill_prompts - distill.heldout_prompts
    streamed = (8 // 4 + (20 - 1) // 2) * 4  # the buffer's fill, then one refresh of 4 every 2 of the 20 steps
    assert m["source"] == "online" and m["buffer_prompts"] == 8 and m["prompts_streamed"] == streamed
    assert m["epochs"] == pytest.approx(streamed / n_train) and m["train_prompts"] == n_train
    assert 0 < m["buffer_gb"] < 1 and math.isfinite(m["final_loss"]) and m["steps"] == 20
    assert m["heldout_prompts"] == 8 and m["heldout_mse_identity"] == store_m["heldout_mse_identity"]
    assert math.isfinite(m["heldout_mse"]) and m["heldout_mse"] != store_m["heldout_mse"]
    assert set(store_m) < set(m)
    state = json.loads((repo / "models/distill_ckpt/latest/trainer_state.json").read_text())
    assert state["step"] == 20 and state["online"]["prompts_unrolled"] == streamed
    # the stage is one distill_online call on the prepared prompts but the held-out ones, from the table
    p = validate(read_yaml(repo / "params.yaml"), root=repo)
    prepared = Prepared.load(repo / "data/prepared")
    world = load_world(p.world, "cpu", repo)
    spec = MethodSpec(sampler="dpm++", steps=8, guidance=2.0, adaptor="resnet", clock=2, cut=1, width=32, depth=2)
    adaptor = build_adaptor_for(spec, teacher_unet_config(p.world, repo))
    sched = world.sampler("dpm++")
    ctx = prepared.table.lookup(prepared.distill_prompts[:n_train])[0]
    distill_online(adaptor, world.unet, sched, TensorPrompts(ctx), prepared.table.uncond(1)[0], cut=1,
                   loop_indices=adaptor_loop_indices(sched, 8, spec.clock_obj(), True), steps=8, guidance=2.0,
                   cfg=DistillConfig(steps=20, batch_size=8, lr=1e-3, grad_clip=1.0, seed=0, checkpoint_every=10,
                                     log_every=5),
                   online=OnlineConfig(**ONLINE, seed=0), progress=False)
    direct = adaptor.state_dict()
    assert weights.keys() == direct.keys() and all(torch.equal(weights[k], direct[k]) for k in weights)


def test_online_pairs_are_the_stores_pairs(repo: Path) -> None:
    """The stage's prompt source and negative prompt make the teacher unroll shard 0 of data/trajectories."""
    from clockwork.online import OnlineConfig, OnlineUnroller
    from clockwork.trajectories import TrajectoryStore
    from pipeline.common import Prepared, adaptor_loop_indices, load_world
    from pipeline.common.training import online_source

    _params(repo, source="online", online=ONLINE)
    p = validate(read_yaml(repo / "params.yaml"), root=repo)
    prepared = Prepared.load(repo / "data/prepared")
    world = load_world(p.world, "cpu", repo)
    source, neg = online_source(world, prepared, p.distill)
    sched = world.sampler("dpm++")
    loops = adaptor_loop_indices(sched, 8, __import__("clockwork.clock", fromlist=["Clock"]).Clock(2), True)
    un = OnlineUnroller(world.unet, sched, source, neg, cut=1, loop_indices=loops, steps=8, guidance=2.0,
                        online=OnlineConfig(buffer_prompts=8, unroll_batch=8, refresh_every=1, seed=0))
    un.prompts = lambda k: list(range(8 * k, 8 * k + 8))  # the store's order: refresh k = shard k
    rec = un.unroll(0)
    shard = TrajectoryStore(repo / "data/trajectories").load(1, max_shards=1)
    assert torch.equal(rec["target"].half(), shard["r_out"][loops])
    assert torch.equal(rec["r_in"].half(), shard["r_in"][loops])
    assert torch.equal(rec["text"].half(), shard["text"])


def _problems(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        validate(raw, root=REPO)
    return dict(e.value.problems)


@pytest.mark.parametrize("edit,key,words", [
    ({"online": {"buffer_prompts": 17}}, "distill.online.buffer_prompts", "17 > the 16 prompts streamed"),
    ({"online": {"prompts": 6, "buffer_prompts": 8, "unroll_batch": 4}}, "distill.online.buffer_prompts", "8 > the 6"),
    ({"online": {"prompts": 17}}, "distill.online.prompts", "not held out"),
    ({"online": {"buffer_prompts": 8, "unroll_batch": 9}}, "distill.online.unroll_batch", "one refresh must fit"),
    ({"output_weight": 1.0}, "distill.output_weight", "not supported with distill.source: online"),
    ({"rollout_steps": 5}, "distill.rollout_steps", "not supported with distill.source: online"),
    ({"online": {"compile": "yes"}}, "distill.online.compile", "True, False or 'auto'"),
    ({"source": "stream"}, "distill.source", "'store' or 'online'"),
    ({"memory_cap_gb": 0.0}, "distill.memory_cap_gb", "greater than 0"),
])
def test_online_params_name_their_key(edit: dict, key: str, words: str) -> None:
    raw = read_yaml(REPO / "configs" / "smoke.yaml")
    raw["distill"].update(source="online", online=dict(ONLINE))
    validate(raw, root=REPO)  # the base is valid
    for k, v in edit.items():
        if isinstance(v, dict):
            raw["distill"][k].update(v)
        else:
            raw["distill"][k] = v
    found = _problems(raw)
    assert key in found and words in found[key], found


def test_online_refuses_what_would_not_resume_exactly(monkeypatch) -> None:
    import clockwork.schedulers as sch
    from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler

    from pipeline import config

    assert not any(config.stochastic_sampler(n) for n in sch.SAMPLERS)  # every sampler params offer is deterministic
    monkeypatch.setitem(sch.SAMPLERS, "euler-a", (EulerAncestralDiscreteScheduler, {}))
    monkeypatch.setitem(sch.SAMPLERS, "ddpm", (DDPMScheduler, {}))
    monkeypatch.setitem(sch.SAMPLERS, "sde-dpm++", (sch.SAMPLERS["dpm++"][0], {"algorithm_type": "sde-dpmsolver++"}))
    assert all(config.stochastic_sampler(n) for n in ("euler-a", "ddpm", "sde-dpm++"))
    raw = read_yaml(REPO / "configs" / "smoke.yaml")
    raw["distill"].update(source="online", online=dict(ONLINE))
    monkeypatch.setitem(sch.SAMPLERS, "dpm++", (EulerAncestralDiscreteScheduler, {}))  # as if dpm++ drew noise
    found = _problems(raw)
    assert "sampling.sampler" in found and "draws random noise" in found["sampling.sampler"]
    raw["distill"]["source"] = "store"
    validate(raw, root=REPO)  # the store path does not resume by re-unrolling
    monkeypatch.undo()
    bad = copy.deepcopy(raw)
    bad["distill"]["source"] = "online"
    bad["world"]["precision"] = "bf16"
    assert "world.precision" in _problems(bad)
    bad["world"]["precision"] = "fp32"
    bad["cut"] = 5  # the cut check covers the online regime
    assert "valid cuts" in _problems(bad)["cut"]


def test_online_stage_exits_2_before_any_work(tmp_path: Path) -> None:
    """A bad online value stops the stage with code 2 naming the key, nothing written."""
    raw = read_yaml(REPO / "configs" / "smoke.yaml")
    for k in ("teacher", "scorer"):
        raw["world"][k] = str(REPO / raw["world"][k])
    raw["distill"].update(source="online", online=dict(ONLINE, buffer_prompts=64))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, str(REPO / "pipeline" / "distill.py")], cwd=tmp_path,
                         env=dict(ENV, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "params.yaml: distill.online.buffer_prompts:" in res.stderr, res.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["params.yaml"]


def test_sd_online_captions_leave_out_the_stores(tmp_path: Path) -> None:
    from pipeline.common.prompts import sd_online_captions

    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(6)]
    anns = [{"id": 10 + i, "image_id": i, "caption": f" cap {i} "} for i in range(6)] + \
        [{"id": 30, "image_id": 0, "caption": "second caption of image 0"}]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    assert sd_online_captions(str(path), ["cap 1", "cap 4"]) == ["cap 0", "cap 2", "cap 3", "cap 5"]
    assert sd_online_captions(str(path), ["cap 1"], 2) == ["cap 0", "cap 2"]
    with pytest.raises(ValueError, match="distill.online.prompts=6 > the 5 captions"):
        sd_online_captions(str(path), ["cap 1"], 6)


def test_sd_configs_distil_online_at_the_papers_scale(tmp_path: Path) -> None:
    from test_config import config_only_pipeline

    for name in ("sd15", "sdxl"):
        raw = read_yaml(REPO / "configs" / f"{name}.yaml")
        raw["world"]["model"] = str(config_only_pipeline(tmp_path / name, name))
        d = validate(raw, root=REPO).distill
        assert d.source == "online" and d.online.prompts == 50_000 and d.lr == 1e-4 and d.batch_size == 16
        raw["world"]["distill_captions"] = None
        assert "world.distill_captions" in _problems(raw)
