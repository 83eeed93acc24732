"""Lazy trajectory stores (``TrajectoryStore.load(..., lazy=True)``): memory-mapped views gather the same batches as
the loaded store, bit for bit, so distillation gives the same adaptor; splits, prompt subsets and the zero step in
front stay views; a store bigger than the memory the process may use still trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import PIXEL_TINY, build_unet, make_sampler
from safetensors.torch import save_file

from clockwork.distill import DistillConfig, PairDataset
from clockwork.shards import ShardRows
from clockwork.trajectories import TrajectoryStore, unroll_to_store

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline import common  # noqa: E402
from pipeline.common import MethodSpec  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def teacher():
    """(unet, prompts, negative) of the store: 7 prompts in shards of 3 (the last holds one), the tiny pixel UNet."""
    g = torch.Generator().manual_seed(0)
    prompts, negative = torch.randn(7, 5, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    return build_unet("pixel", seed=21), prompts, negative


@pytest.fixture(scope="module")
def store(teacher, tmp_path_factory) -> TrajectoryStore:
    unet, prompts, negative = teacher
    return unroll_to_store(tmp_path_factory.mktemp("traj"), unet, make_sampler("dpm++"), [1], prompts, negative,
                           STEPS, 2.0, shard_size=3, progress=False)


def dense(traj: dict) -> dict:
    return {k: v if isinstance(v, torch.Tensor) else v.materialize() for k, v in traj.items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture
def no_whole_cut(monkeypatch):
    """Fail on materializing a view, and record the most rows one gather copied."""
    most = [0]
    gather = ShardRows._gather

    def counted(self, step, row):
        out = gather(self, step, row)
        most[0] = max(most[0], torch.as_tensor(row).numel() if step is None else
                      torch.broadcast_tensors(torch.as_tensor(step), torch.as_tensor(row))[0].numel())
        return out

    monkeypatch.setattr(ShardRows, "_gather", counted)
    monkeypatch.setattr(ShardRows, "materialize", lambda self: pytest.fail("a whole view was materialized"))
    return most


def test_lazy_views_hold_the_loaded_store(store) -> None:
    for with_latents in (False, True):
        mem, lazy = store.load(1, with_latents=with_latents), store.load(1, with_latents=with_latents, lazy=True)
        assert isinstance(lazy["r_in"], ShardRows) and isinstance(lazy["text"], ShardRows)
        assert_same(mem, dense(lazy))
        assert store.cut_bytes(1, with_latents=with_latents) == sum(v.nbytes for v in mem.values())
    assert_same(store.load(1, max_shards=2), dense(store.load(1, max_shards=2, lazy=True)))
    g = torch.Generator().manual_seed(1)
    step, row = torch.randint(0, STEPS, (9,), generator=g), torch.randint(-14, 14, (9,), generator=g)
    mask = torch.rand(14, generator=g) > 0.5
    for k in ("r_in", "r_out", "latents"):
        m, v = mem[k], lazy[k]
        assert v.shape == m.shape and v.dim() == m.dim() and v.to("cpu") is v
        assert torch.equal(v[step, row], m[step, row]) and torch.equal(v[3], m[3]) and torch.equal(v[-1, 2], m[-1, 2])
        assert torch.equal(v[:, mask].materialize(), m[:, mask]) and torch.equal(v[:, 2:9][step, 4], m[:, 2:9][step, 4])
        assert torch.equal(v.pad_step()[step, row], torch.cat([torch.zeros_like(m[:1]), m])[step, row])
    assert torch.equal(lazy["text"][row], mem["text"][row]) and torch.equal(lazy["text"][5], mem["text"][5])
    assert torch.equal(lazy["text"][mask].materialize(), mem["text"][mask])
    with pytest.raises(TypeError, match="stays on the host"):
        lazy["r_in"].to("meta")


def test_per_row_temb_views(tmp_path) -> None:
    """SDXL's layout: temb per row (S, rows, D); a shard with as many latents as rows (no CFG halves)."""
    (tmp_path / "meta.json").write_text(json.dumps({"num_prompts": 5, "num_shards": 2, "shard_size": 3, "cuts": [2]}))
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate((3, 2)):
        save_file({"r_in.c2": torch.randn(4, n, 2, 4, 4, generator=g).half(),
                   "r_out.c2": torch.randn(4, n, 3, 2, 2, generator=g).half(),
                   "text": torch.randn(n, 5, generator=g).half(), "temb": torch.randn(4, n, 6, generator=g).half(),
                   "latents": torch.randn(5, n, 1, 8, 8, generator=g).half(), "timesteps": torch.arange(4.0)},
                  str(tmp_path / f"shard-{i:05d}.safetensors"))
    s = TrajectoryStore(tmp_path)
    mem, lazy = s.load(2, with_latents=True), s.load(2, with_latents=True, lazy=True)
    assert isinstance(lazy["temb"], ShardRows) and lazy["temb"].dim() == 3
    assert_same(mem, dense(lazy))
    assert s.cut_bytes(2, with_latents=True) == sum(v.nbytes for v in mem.values())
    ctx = torch.randn(5, 3, 5)
    a, b = PairDataset({**mem, "ctx": ctx}, [1, 3]), PairDataset({**lazy, "ctx": ctx}, [1, 3])
    assert b.has_inputs and b.to("meta") is b  # the views stay on the host; batches move
    idx = torch.arange(len(a))
    assert_same(a.batch(idx, "cpu"), b.batch(idx, "cpu"))
    # non-finite stored latents (fp16 overflow) are refused on both, the lazy view read a row at a time
    lat = mem["latents"].clone()
    lat[3, 4, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"loop indices \[3\] are not finite"):
        PairDataset({**mem, "latents": lat, "ctx": ctx}, [1, 3])
    shard = tmp_path / "shard-00001.safetensors"
    from safetensors.torch import load_file

    t = load_file(str(shard))
    t["latents"][3, 1, 0, 1, 1] = float("inf")  # row 4 is the second shard's row 1
    save_file(t, str(shard))
    lazy = s.load(2, with_latents=True, lazy=True)
    with pytest.raises(ValueError, match=r"loop indices \[3\] are not finite"):
        PairDataset({**lazy, "ctx": ctx}, [1, 3])
    from clockwork.distill import _finite_at

    assert [_finite_at(lazy["latents"], i, chunk_bytes=1) for i in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("spec", [MethodSpec(adaptor="resnet", clock=2, steps=STEPS),  # r_out(t+1) from step 1 on
                                  MethodSpec(adaptor="resnet", adaptor_steps=tuple(range(STEPS)), steps=STEPS,
                                             inputs=("r_in", "time", "text"))],  # step 0 too: a zero step in front
                         ids=["clock2", "every-step"])
def test_pair_batches_are_bitwise_the_loaded_ones(store, spec, no_whole_cut) -> None:
    sched = make_sampler("dpm++")
    mem = common.load_trajectories(store.root, 1, with_latents=True)
    lazy = common.load_trajectories(store.root, 1, with_latents=True, memory_cap_gb=0)
    assert isinstance(lazy["r_in"], ShardRows) and isinstance(lazy["latents"], ShardRows)
    a, b = common.pair_dataset(mem, spec, sched), common.pair_dataset(lazy, spec, sched)
    assert len(a) == len(b) and a.loop_indices.tolist() == b.loop_indices.tolist()
    idx = torch.randperm(len(a), generator=torch.Generator().manual_seed(2))
    for chunk in idx.split(16):
        assert_same(a.batch(chunk, "cpu"), b.batch(chunk, "cpu"))
    assert no_whole_cut[0] <= 16


def test_split_and_prompt_subsets_stay_lazy(store, no_whole_cut) -> None:
    for max_prompts in (None, 5, 1):
        mem = common.load_trajectories(store.root, 1, max_prompts=max_prompts, with_latents=True)
        lazy = common.load_trajectories(store.root, 1, max_prompts=max_prompts, with_latents=True, memory_cap_gb=1e-6)
        assert isinstance(lazy["r_out"], ShardRows) and torch.equal(lazy["prompt"], mem["prompt"])
        for (m, v) in zip(common.split_trajectories(mem, 2 if max_prompts != 1 else 0),
                          common.split_trajectories(lazy, 2 if max_prompts != 1 else 0)):
            if m is None:
                continue
            assert common.num_prompts(m) == common.num_prompts(v) and m.keys() == v.keys()
            for k in m:  # compared through gathers of every (step, row): the views are never materialized whole
                x, y = m[k], v[k]
                assert x.shape == y.shape
                if isinstance(y, ShardRows) and y.axis == 1:
                    s, r = torch.meshgrid(torch.arange(x.shape[0]), torch.arange(x.shape[1]), indexing="ij")
                    assert torch.equal(x[s, r], y[s, r]), k
                else:
                    assert torch.equal(x, y if isinstance(y, torch.Tensor) else y[torch.arange(len(y))]), k
    # within the cap (or no cap): today's in-memory tensors
    assert isinstance(common.load_trajectories(store.root, 1, memory_cap_gb=1.0)["r_in"], torch.Tensor)


def test_distillation_on_the_lazy_store_is_bitwise_the_same(store) -> None:
    sched, cfg = make_sampler("dpm++"), DistillConfig(steps=4, batch_size=8, lr=1e-3, log_every=2, checkpoint_every=4)
    spec = MethodSpec(adaptor="resnet", clock=2, steps=STEPS, width=8, depth=1)
    out = []
    for cap in (None, 0):
        train, _ = common.split_trajectories(common.load_trajectories(store.root, 1, memory_cap_gb=cap), 2)
        adaptor, history = common.distill_adaptor(spec, PIXEL_TINY, train, sched, cfg, progress=False)
        out.append((adaptor.state_dict(), history))
    (w0, h0), (w1, h1) = out
    assert h0 == h1 and w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_output_space_distillation_on_the_lazy_store_is_bitwise_the_same(teacher, store) -> None:
    """The output-space loss reads latents and per-row text contexts (row_contexts) from the views as well."""
    from clockwork.embedded.text import EmbeddingTable
    from pipeline.config import Distill

    unet, prompts, negative = teacher
    names = [f"prompt {i}" for i in range(7)]
    table = EmbeddingTable([""] + names, torch.cat([negative, prompts]).half(), torch.zeros(8, 4).half())
    cfg = common.distill_config(Distill(steps=3, batch_size=4, log_every=1, output_weight=0.5))
    spec = MethodSpec(steps=STEPS, adaptor="resnet", clock=2, cut=1, width=8, depth=1)
    out = []
    for cap in (None, 0):
        traj = common.load_trajectories(store.root, 1, with_latents=True, memory_cap_gb=cap)
        assert isinstance(traj["latents"], ShardRows) == (cap == 0)
        adaptor, history = common.distill_adaptor(spec, PIXEL_TINY, traj, make_sampler("dpm++"), cfg, progress=False,
                                                  teacher_unet=unet, table=table, prompts=names)
        out.append((adaptor.state_dict(), history))
    (w0, h0), (w1, h1) = out
    assert h0 == h1 and "output_mse" in h0[-1] and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_missing_or_truncated_shard_fails_before_training(store, tmp_path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(store.root, root)
    shard = root / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) - 100])
    for cap in (None, 0):
        with pytest.raises(ValueError, match="shard-00001.safetensors: truncated"):
            common.load_trajectories(root, 1, memory_cap_gb=cap)
    shard.write_bytes(data[:5])
    with pytest.raises(ValueError, match="shard-00001.safetensors: truncated"):
        TrajectoryStore(root).load(1, lazy=True)
    shard.unlink()
    for cap in (None, 0):
        with pytest.raises(FileNotFoundError, match="shard-00001"):
            common.load_trajectories(root, 1, memory_cap_gb=cap)


TRAIN_UNDER_A_CAP = textwrap.dedent("""
    import resource, sys
    import torch
    torch.set_num_threads(1)
    from clockwork.distill import DistillConfig, PairDataset, distill
    from clockwork.adaptors import build_adaptor
    from pipeline.common import load_trajectories

    root, sig = sys.argv[1], dict(r_in_channels=16, r_out_channels=16, temb_channels=64, text_channels=16, cut=1)
    cfg = DistillConfig(steps=3, batch_size=4, log_every=3, checkpoint_every=3)

    def train(traj):
        torch.manual_seed(0)
        adaptor = build_adaptor("resnet", sig, width=8, depth=1)
        return distill(adaptor, PairDataset(traj, [1, 3]), cfg, progress=False)

    def status(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

    small = {"r_in": torch.zeros(4, 2, 16, 64, 64, dtype=torch.half), "r_out": torch.zeros(4, 2, 16, 64, 64, dtype=torch.half),
             "temb": torch.zeros(4, 64, dtype=torch.half), "text": torch.zeros(2, 16, dtype=torch.half)}
    train(small)  # warm up: the allocations training itself needs
    cap = status("VmData:") + 64 * 2**20  # anonymous memory: what the process has + 64 MiB, far below the store
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    history = train(load_trajectories(root, 1, memory_cap_gb=0.05))
    print("lazy trained", history[-1]["loss"], flush=True)
    whole = (lambda: load_trajectories(root, 1),  # today's path
             lambda: load_trajectories(root, 1, memory_cap_gb=0.05)["r_in"].materialize())
    for load in whole:
        try:
            load()
        except (MemoryError, RuntimeError) as e:
            print("whole cut failed:", type(e).__name__, str(e)[:80])
        else:
            print("whole cut loaded")
""")


def test_a_store_bigger_than_the_memory_cap_trains(tmp_path) -> None:
    """~200 MB of shards; the process may add 64 MiB of anonymous memory (RLIMIT_DATA): the lazy store trains
    (read-only maps of files don't count), and loading it whole (today's load, or materializing a view) fails under
    the same limit."""
    shards, n, steps = 3, 32, 4
    (tmp_path / "meta.json").write_text(json.dumps({"num_prompts": shards * n, "num_shards": shards, "shard_size": n,
                                                    "cuts": [1], "steps": steps}))
    g = torch.Generator().manual_seed(0)
    for i in range(shards):
        save_file({"r_in.c1": torch.randn(steps, 2 * n, 16, 64, 64, generator=g, dtype=torch.half),
                   "r_out.c1": torch.randn(steps, 2 * n, 16, 64, 64, generator=g, dtype=torch.half),
                   "text": torch.randn(2 * n, 16, generator=g).half(), "temb": torch.randn(steps, 64, generator=g).half(),
                   "timesteps": torch.arange(float(steps))}, str(tmp_path / f"shard-{i:05d}.safetensors"))
    size = TrajectoryStore(tmp_path).cut_bytes(1)
    assert size > 3 * 64 * 2**20 - 2**20 and size > 0.05e9
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", TRAIN_UNDER_A_CAP, str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lazy trained" in r.stdout, r.stdout
    assert r.stdout.count("whole cut failed") == 2, r.stdout  # the limit binds: today's path, or a whole view, fails
