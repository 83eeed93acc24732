"""``clockwork bench`` on the CPU: it runs on a tiny config and writes well-formed JSON / Markdown; the
authors'-style reference row and the fast mode (torch.compile of the two step functions) give the eager
images. No timing is asserted anywhere."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from clockwork import bench
from clockwork.clock import Clock
from clockwork.hook import disable, enable

# Two resolution levels, one layer each: the smallest UNet that Clockwork can cut (cut=1), so that
# compiling it on a CPU stays quick.
MINI = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
    cross_attention_dim=8, attention_head_dim=2,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)


def _mini_spec(seed: int = 0) -> bench.ModelSpec:
    from diffusers import UNet2DConditionModel

    from clockwork.schedulers import make_scheduler

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**MINI).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # make every layer matter (some default inits are near zero)
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    sched = make_scheduler("dpm++", bench.SD_SCHEDULER)
    return bench.ModelSpec("mini", unet, sched, (4, 8, 8), 3, 8, dict(MINI), guidance=3.0)


def _inputs(spec: bench.ModelSpec, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, *spec.latent_shape, generator=g), torch.randn(2, spec.seq_len, spec.ctx_dim, generator=g)


def _sample(spec, call, steps=4, on_setup=None):
    lat0, ehs = _inputs(spec)
    setup, run = bench.make_loop(call, spec, lat0, ehs, steps, on_setup=on_setup)
    with torch.no_grad():
        setup()
        return run()


def test_bench_cpu_tiny_writes_json(tmp_path):
    out = tmp_path / "bench"
    args = bench.parse_args(["--device", "cpu", "--models", "tiny", "--modes", "eager", "--steps", "2", "--runs", "2",
                             "--warmup", "1", "--out", str(out), "--tag", "t", "--threads", "1"])
    data = bench.run_bench(args)
    path = out / "bench_t.json"
    assert path.is_file() and (out / "bench_t.md").is_file()
    loaded = json.loads(path.read_text())
    assert loaded["config"]["steps"] == 2 and loaded["config"]["batch"] == 2
    assert {"torch", "diffusers", "device_name"} <= set(loaded["env"])
    rows = {(r["method"], r["mode"]): r for r in loaded["rows"]}
    assert set(rows) == {(m, "eager") for m in bench.METHODS}
    for r in rows.values():
        assert "error" not in r, r
        assert r["runs"] == 2 and r["latency_ms"] > 0 and r["gflops"] > 0 and r["tflops"] > 0
        assert r["p10_ms"] <= r["latency_ms"] <= r["p90_ms"] + 1e-9
    base = rows["baseline", "eager"]
    assert rows["identity", "eager"]["gflops"] < base["gflops"] and rows["identity", "eager"]["flops_ratio"] < 1
    assert rows["resnet", "eager"]["adaptor_params"] > 0
    # the authors' style reference is the identity adaptor by other means: same latents
    assert rows["authors", "eager"]["max_abs_diff"] <= 1e-5 and rows["authors", "eager"]["matches_eager"]
    assert data["flops"]["tiny"]["identity"]["ratio"] < 1
    md = (out / "bench_t.md").read_text()
    assert md.count("| tiny |") == 4 and "median ms" in md


def test_bench_subcommand_is_registered(tmp_path):
    from clockwork.cli import main

    out = tmp_path / "b"
    rc = main(["bench", "--device", "cpu", "--models", "tiny", "--methods", "baseline,identity", "--modes", "eager",
               "--steps", "2", "--runs", "1", "--warmup", "1", "--out", str(out), "--tag", "cli"])
    assert rc == 0
    rows = json.loads((out / "bench_cli.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", "identity"]


def test_authors_style_equals_identity_hook_and_restores_the_unet():
    spec = _mini_spec()
    unet = spec.unet
    before = [id(m) for m in unet.modules()]
    plain = lambda x, t, e: unet(x, t, e, return_dict=False)[0]  # noqa: E731
    enable(unet, adaptor="identity", clock=2, cut=1, scheduler=spec.scheduler)
    try:
        ref = _sample(spec, plain)
    finally:
        disable(unet)
    w = bench.AuthorsStyleClockwork(unet, clock=2, cut=1)
    try:
        got = _sample(spec, w, on_setup=w.reset)
        assert w.calls == 4 and w.cache is not None
    finally:
        w.close()
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert [id(m) for m in unet.modules()] == before  # the real blocks are back
    full = _sample(spec, plain)
    assert not torch.allclose(full, ref)  # and Clockwork did skip something


def _compile_works() -> bool:
    if not hasattr(torch, "compile") or not any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++")):
        return False
    try:
        f = torch.compile(lambda x: x * 2 + 1, fullgraph=True)
        return bool(torch.equal(f(torch.ones(3)), torch.full((3,), 3.0)))
    except Exception:
        return False


@pytest.mark.skipif(os.environ.get("CLOCKWORK_SKIP_COMPILE") == "1", reason="CLOCKWORK_SKIP_COMPILE=1")
def test_fast_mode_equals_eager_on_cpu():
    if not _compile_works():
        pytest.skip("torch.compile (inductor + a C compiler) is not available here")
    spec = _mini_spec(seed=3)
    unet = spec.unet
    resnet = bench.build_resnet_adaptor(unet, 1, 8, 1, "cpu", torch.float32, seed=3)
    plain = lambda x, t, e: unet(x, t, e, return_dict=False)[0]  # noqa: E731
    results = {}
    for fast in (False, True):
        if fast:  # what the benchmark's fast rows do to the UNet: numerically the same function
            bench.prepare_fast(unet, [resnet], channels_last=True, fuse_qkv=True)
        for name, adaptor in (("identity", "identity"), ("resnet", resnet)):
            enable(unet, adaptor=adaptor, clock=Clock(2), cut=1, scheduler=spec.scheduler, fast=fast)
            try:
                results[name, fast] = [_sample(spec, plain, steps=3) for _ in range(2)]
            finally:
                disable(unet)
    torch._dynamo.reset()
    for name in ("identity", "resnet"):
        eager, fast = results[name, False][0], results[name, True]
        for got in fast:  # the second generation reuses the compiled graphs
            cmp = bench.compare(got, eager)
            assert cmp["finite"] and cmp["rel_l2_diff"] < 1e-4, (name, cmp)
    assert not torch.allclose(results["identity", False][0], results["resnet", False][0])


def test_markdown_and_helpers():
    assert bench.kernel_category("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc") == "convolution (cuDNN)"
    assert bench.kernel_category("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNN") == "matmul (cuBLAS)"
    assert bench.kernel_category("void pytorch_flash::flash_fwd_kernel<...>") == "attention"
    assert bench.kernel_category("triton_per_fused_native_group_norm_silu_3") == "triton (fused norm/pointwise)"
    st = bench._stats([3.0, 1.0, 2.0])
    assert st["latency_ms"] == 2.0 and st["min_ms"] == 1.0 and st["runs"] == 3
    c = bench.compare(torch.ones(4), torch.ones(4))
    assert c["max_abs_diff"] == 0 and c["rel_l2_diff"] == 0 and c["finite"]
    data = dict(date="2026-11-26", command="x", env={"device_name": "cpu"}, config={}, notes=["n"],
                rows=[dict(model="m", method="baseline", mode="eager", label="b", latency_ms=2.0, p10_ms=1.0, p90_ms=3.0,
                           gflops=4.0, tflops=0.002), dict(model="m", method="identity", mode="fast", skipped="budget")],
                acceptance={"a": "PASS"}, profile={})
    md = bench.to_markdown(data)
    assert "| m | b | eager | 2.00 |" in md and "budget" in md and "## Acceptance" in md
