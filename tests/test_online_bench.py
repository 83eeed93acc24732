"""scripts/gpu/online_bench.py --tiny (CPU) for both kinds in a subprocess: every section is there with finite positive
numbers (compiled sections skipped), the RSS section ran N = 1 000 and 50 000; plus its synthetic prompt source,
config reader and budget."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu" / "online_bench.py"
MEASURED = {  # section -> keys that must be finite and > 0
    "plain_eager": ["images_per_s", "median_ms"],
    "online_eager": ["images_per_s", "median_ms", "buffer_mb_per_prompt"],
    "stored_unroll": ["images_per_s", "median_ms"],
    "adaptor_training": ["steps_per_s", "median_ms"],
    "distill_online": ["wall_s", "final_loss"],
    "projection": ["epoch_s", "epoch_h", "adaptor_steps_per_epoch", "total_h", "training_share_est"],
}


def _module():
    spec = importlib.util.spec_from_file_location("online_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finite_numbers(x, path="") -> list[str]:
    """Paths of the non-finite floats anywhere in ``x``."""
    if isinstance(x, float):
        return [] if math.isfinite(x) else [path]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _finite_numbers(v, f"{path}.{k}")]
    if isinstance(x, list):
        return [p for i, v in enumerate(x) for p in _finite_numbers(v, f"{path}[{i}]")]
    return []


def _positive(d: dict, key: str, where: str) -> None:
    v = d.get(key)
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, (where, key, v)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("online_bench")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--kind", "sd15", "sdxl", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "online_bench.json").read_text()), (out / "online_bench.md").read_text(), res.stdout


def test_tiny_run_has_every_section(tiny_run):
    report, md, stdout = tiny_run
    meta = report["meta"]
    for k in ("device", "torch", "diffusers", "commit", "command", "date", "wall_s"):
        assert meta.get(k), k
    assert "--tiny" in meta["command"] and meta["tiny"] is True
    assert not _finite_numbers(report), _finite_numbers(report)
    assert set(report["kinds"]) == {"sd15", "sdxl"}
    for kind, r in report["kinds"].items():
        assert "error" not in r, r.get("error")
        for name, keys in MEASURED.items():
            s = r[name]
            assert "error" not in s and "skipped" not in s, (kind, name, s)
            for key in keys:
                _positive(s, key, f"{kind}.{name}")
        for name in ("plain_compiled", "online_compiled"):  # --tiny never compiles
            assert r[name]["skipped"].startswith("--no-compile"), (kind, name, r[name])
        for name in ("plain_eager", "online_eager", "stored_unroll"):
            assert r[name]["ran"] == "eager" and len(r[name]["times_ms"]) == r[name]["repeats"] == 2
        assert r["adaptor_loops"] == [1, 3, 5, 7]
        assert r["adaptor_training"]["adaptor"]["depth"] == 2  # configs/<kind>.yaml adaptor.depth
        st = r["distill_online"]["steady"]
        for key in ("seconds", "refreshes", "adaptor_steps_per_s", "images_unrolled_per_s", "training_share_est"):
            _positive(st, key, f"{kind}.distill_online.steady")
        assert st["to_step"] > st["from_step"]
        assert r["distill_online"]["prompts"] == 50_000
        _positive(r["distill_online"]["host_after"], "vmrss_mib", kind)
        _positive(r["distill_online"]["host_after"], "vmhwm_mib", kind)
        rss = r["rss"]
        assert set(rss["runs"]) == {"1000", "50000"}
        for n, run in rss["runs"].items():
            assert run["prompts"] == int(n) and run["refreshes"] == 2  # the fill, then one refresh
            for key in ("vmrss_mib", "vmhwm_mib"):
                _positive(run["host_before"], key, f"{kind}.rss.{n}")
                _positive(run["host_after"], key, f"{kind}.rss.{n}")
        assert rss["vmrss_after_spread_mib"] < 64  # tiny: nothing scales with the number of prompts
        rt = r["ratios"]
        assert rt["plain_reference"] == "plain_eager" and rt["online_eager_vs_plain"] > 0
        assert "online_compiled_vs_plain" not in rt
        proj = r["projection"]
        assert proj["total_h"] == pytest.approx(120 * proj["epoch_s"] / 3600, rel=1e-2)
        assert proj["epoch_s"] == pytest.approx(50_000 / st["images_unrolled_per_s"], rel=1e-2)
        assert f"## {kind}" in md
    for word in ("plain_eager", "distill_online", "one 50k epoch", "host RSS after"):
        assert word in md
    assert "sdxl stored_unroll" in stdout and "done in" in stdout  # timestamped progress lines


def test_synthetic_prompts_are_per_index_and_config_is_read():
    mod = _module()
    src = mod.SyntheticPrompts(50_000, 77, 2048, pooled=1280)
    e, added = src.embed([3, 49_999])
    assert e.shape == (2, 77, 2048) and added["text_embeds"].shape == (2, 1280) and added["time_ids"].shape == (2, 6)
    e1, a1 = src.embed([49_999])
    assert torch.equal(e1[0], e[1]) and torch.equal(a1["text_embeds"][0], added["text_embeds"][1])
    assert not torch.equal(e[0], e[1])
    assert mod.SyntheticPrompts(10, 77, 768).embed([0])[1] is None
    for kind in ("sd15", "sdxl"):
        conf = mod.read_config(kind)
        assert conf["adaptor"]["kind"] == "resnet" and int(conf["adaptor"]["width"]) == 512
        assert conf["adaptor"]["inputs"] == ["r_in", "r_out_prev", "time", "text"]
    text = "distill:\n  steps: 20000   # c\n  online:\n    refresh_every: 4\n    buffer_prompts: 512\n  lr: 1.0e-4\nclock:\n  period: 2\n"
    assert mod.parse_config(text) == {"distill": {"steps": 20000, "online": {"refresh_every": 4, "buffer_prompts": 512},
                                                  "lr": "1.0e-4"}, "clock": {"period": 2}}


def test_budget_skips_sections(tmp_path):
    mod = _module()
    assert mod.main(["--tiny", "--kind", "sd15", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "online_bench.json").read_text())["kinds"]["sd15"]
    assert r["plain_eager"]["skipped"].startswith("budget") and r["rss"]["skipped"].startswith("budget")
