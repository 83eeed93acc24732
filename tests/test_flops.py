"""FLOPs accounting from a config alone (meta device) and the ``clockwork flops`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import SD15_TINY, SDXL_TINY
from torch.utils.flop_counter import FlopCounterMode

from clockwork.cli import main as cli_main
from clockwork.cut import UNetCut
from clockwork.flops import _inputs, clockwork_flops, meta_unet, step_flops

KEYS = {"full_step_gflops", "adaptor_step_gflops", "total_gflops", "baseline_total_gflops", "ratio", "adaptor_params"}


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    rc = cli_main(["flops", *args])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 and "--json" in args else None), err


def test_sd15_command_matches_measured_numbers():
    """`python -m clockwork.cli flops --unet-config sd15 --json`: < 60 s on 2 CPU cores, numbers of the notes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "clockwork.cli", "flops", "--unet-config", "sd15", "--steps", "8",
                           "--clock", "2", "--cut", "1", "--adaptor", "identity", "--batch", "2", "--json"],
                          capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert elapsed < 60, f"flops took {elapsed:.1f} s"
    assert KEYS <= set(res)
    assert res["full_step_gflops"] == pytest.approx(1606.5, abs=1)
    assert res["adaptor_step_gflops"] == pytest.approx(614.6, abs=1)
    assert res["ratio"] == pytest.approx(0.691, abs=0.002)
    assert res["total_gflops"] == pytest.approx(4 * res["full_step_gflops"] + 4 * res["adaptor_step_gflops"], rel=1e-4)
    assert res["baseline_total_gflops"] == pytest.approx(8 * res["full_step_gflops"], rel=1e-4)
    assert res["adaptor_params"] == 0 and res["full_steps"] == 4 and res["adaptor_steps"] == 4
    assert res["unet_params"] == pytest.approx(859.5e6, rel=0.01)  # the paper's SD 1.5 UNet


@pytest.mark.parametrize("name", ["sd21", "sdxl", "embedded"])
def test_other_configs_run(capsys, name):
    rc, res, err = run_cli(capsys, "--unet-config", name, "--json")
    assert rc == 0, err
    assert KEYS <= set(res)
    assert 0 < res["adaptor_step_gflops"] < res["full_step_gflops"]
    assert 0.5 < res["ratio"] < 1
    assert res["total_gflops"] == pytest.approx(4 * res["full_step_gflops"] + 4 * res["adaptor_step_gflops"], abs=0.01)
    if name == "embedded":  # batch 1 is half of batch 2 (CFG doubles the batch)
        rc, res1, err = run_cli(capsys, "--unet-config", name, "--batch", "1", "--json")
        assert res1["full_step_gflops"] == pytest.approx(res["full_step_gflops"] / 2, rel=0.01)


def _module_flops(counts: dict, names: list[str]) -> int:
    return sum(sum(counts.get(n, {}).values()) for n in names)


@pytest.mark.parametrize("cfg_name,cfg", [("sd15", SD15_TINY), ("sdxl", SDXL_TINY)])
@pytest.mark.parametrize("cut", [1, 2])
def test_step_flops_against_an_independent_count(tmp_path, capsys, cfg_name, cfg, cut):
    """full step = FLOPs of diffusers' own forward; identity step = full - replaced blocks - boundary upsampler."""
    unet = meta_unet(cfg)
    sample, t, ehs, kw = _inputs(unet, 2, 77)
    with FlopCounterMode(unet, display=False) as counter, torch.no_grad():
        unet(sample, t, ehs, **kw)
    total = counter.get_total_flops()
    counts = counter.get_flop_counts()
    ucut = UNetCut(unet, cut)
    root = "UNet2DConditionModel"
    replaced = [f"{root}.down_blocks.{i}" for i in ucut.replaced_down] + [f"{root}.mid_block"]
    for i in ucut.replaced_up:  # whole up blocks, except the boundary one which keeps its upsampler
        b = unet.up_blocks[i]
        if i != ucut.boundary_up:
            replaced.append(f"{root}.up_blocks.{i}")
            continue
        replaced += [f"{root}.up_blocks.{i}.resnets.{j}" for j in range(len(b.resnets))]
        replaced += [f"{root}.up_blocks.{i}.attentions.{j}" for j in range(len(getattr(b, "attentions", None) or []))]
    upsampler = [f"{root}.up_blocks.{ucut.boundary_up}.upsamplers.0"]
    expected_identity = total - _module_flops(counts, replaced) - _module_flops(counts, upsampler)
    assert 0 < _module_flops(counts, replaced) < total
    f = step_flops(unet, cut, "identity", batch=2, seq_len=77)
    assert f["full"] == total
    assert f["adapt"] == expected_identity

    # through the command, with the config read from a file (GFLOPs rounded to 3 decimals)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **cfg}))
    rc, res, err = run_cli(capsys, "--unet-config", str(tmp_path / "config.json"), "--cut", str(cut), "--json")
    assert rc == 0, err
    assert res["full_step_gflops"] == pytest.approx(total * 1e-9, abs=1e-3)
    assert res["adaptor_step_gflops"] == pytest.approx(expected_identity * 1e-9, abs=1e-3)
    # a learned adaptor costs its own FLOPs on top, and the upsampler runs again
    f = step_flops(unet, cut, "resnet", batch=2, seq_len=77, adaptor_kwargs={"width": 32})
    assert f["adaptor_only"] > 0 and f["adaptor_params"] > 0
    assert f["adapt"] == expected_identity + _module_flops(counts, upsampler) + f["adaptor_only"]
    assert all(p.device.type == "meta" for p in unet.parameters())


def test_clock_and_adaptor_options():
    one = clockwork_flops(SD15_TINY, steps=8, clock=1)
    assert one["ratio"] == 1.0 and one["adaptor_steps"] == 0
    four = clockwork_flops(SD15_TINY, steps=8, clock=4)
    assert four["full_steps"] == 2 and four["adaptor_steps"] == 6
    assert four["ratio"] == pytest.approx((2 * four["full_step_gflops"] + 6 * four["adaptor_step_gflops"])
                                          / (8 * four["full_step_gflops"]), abs=0.005)  # rounded GFLOPs
    small = clockwork_flops(SD15_TINY, adaptor="resnet", adaptor_kwargs={"width": 16})
    big = clockwork_flops(SD15_TINY, adaptor="resnet", adaptor_kwargs={"width": 64})
    assert 0 < small["adaptor_params"] < big["adaptor_params"]
    assert small["adaptor_only_gflops"] < big["adaptor_only_gflops"]
    assert small["ratio"] < big["ratio"] < 1


def test_command_errors(capsys):
    rc, _, err = run_cli(capsys, "--unet-config", "sd99", "--json")
    assert rc == 2 and "not one of sd15, sd21, sdxl, embedded" in err
    rc, _, err = run_cli(capsys, "--unet-config", "embedded", "--clock", "0")
    assert rc == 2 and "integer >= 1" in err
    rc, _, err = run_cli(capsys, "--unet-config", "embedded", "--cut", "4")
    assert rc == 2 and "valid cuts: [1, 2, 3]" in err
    with pytest.raises(SystemExit):
        cli_main(["flops", "--adaptor", "nope"])
    capsys.readouterr()


def test_text_output(capsys):
    rc = cli_main(["flops", "--unet-config", "embedded"])
    out = capsys.readouterr().out
    assert rc == 0 and "full step" in out and "saved" in out
