"""The benchmark's record: ``bench_<tag>.json`` and ``.md`` rewritten after every row, and the acceptance criteria."""

from __future__ import annotations

import json
from pathlib import Path


class Report:
    def __init__(self, out_dir: Path, tag: str, meta: dict):
        self.out_dir, self.tag = Path(out_dir), tag
        self.data = dict(meta, rows=[], acceptance={}, profile={}, notes=[])
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"bench_{self.tag}.json"

    @property
    def md_path(self) -> Path:
        return self.out_dir / f"bench_{self.tag}.md"

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.write()

    def find(self, model, method, mode):
        for r in self.data["rows"]:
            if r["model"] == model and r["method"] == method and r["mode"] == mode and r.get("latency_ms"):
                return r
        return None

    def write(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.json_path)
        self.md_path.write_text(to_markdown(self.data))


def _f(x, fmt="{:.1f}"):
    return "" if x is None else fmt.format(x)


def to_markdown(d: dict) -> str:
    env = d.get("env", {})
    cfg = d.get("config", {})
    lines = [
        f"# Clockwork benchmark ({env.get('device_name', '?')})", "",
        f"- date: {d.get('date')}; torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
        f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, python {env.get('python')}, threads {env.get('threads')}",
        f"- loop: {cfg.get('steps')} DPM++ 2M steps, clock {cfg.get('clock')}, cut {cfg.get('cut')}, "
        f"batch {cfg.get('batch')} (CFG), {cfg.get('dtype')}; UNet loop only (no text encoder / VAE)",
        f"- fast mode: `clockwork.enable(..., fast={cfg.get('fast_mode')!r})` + {', '.join(cfg.get('fast_prep', [])) or 'nothing'}; "
        f"SDPA backend: {cfg.get('sdpa')}; inductor options: {cfg.get('inductor') or 'defaults'}",
        f"- command: `{d.get('command')}`", "",
    ]
    if d.get("matmul_peak"):
        p = d["matmul_peak"]
        lines += [f"Measured matmul peak ({p['n']}^3): fp16 {p.get('fp16_tflops')} TFLOP/s, bf16 {p.get('bf16_tflops')} TFLOP/s.", ""]
    cpu_col = any("cpu_time_ms" in r for r in d["rows"])
    lines += [
        "| model | method | mode | median ms | p10-p90 ms | vs baseline (same mode) | GFLOPs | TFLOP/s | peak MiB | "
        "max abs diff vs eager (rel L2) | first call s |" + (" process CPU ms |" if cpu_col else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cpu_col else ""),
    ]
    for r in d["rows"]:
        if r.get("error") or r.get("skipped"):
            lines.append(f"| {r['model']} | {r['method']} | {r['mode']} | {r.get('error') or r.get('skipped')} |  |  |  |  |  |  |  |")
            continue
        diff = ""
        if r.get("max_abs_diff") is not None:
            diff = f"{r['max_abs_diff']:.2e} ({r['rel_l2_diff']:.1e})"
        lines.append(
            f"| {r['model']} | {r['label']} | {r['mode']} | {r['latency_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | "
            f"{_f(r.get('ratio_vs_baseline'), '{:.3f}x')} | {r['gflops']:.1f} | {_f(r.get('tflops'), '{:.3g}')} | "
            f"{_f(r.get('peak_alloc_mib'), '{:.0f}')} | {diff} | {_f(r.get('first_call_s'), '{:.1f}')} |"
            + (f" {_f(r.get('cpu_time_ms'), '{:.0f}')} |" if cpu_col else ""))
    lines.append("")
    lines.append("GFLOPs per loop (all steps, batch 2); TFLOP/s = GFLOPs / median; peak = max_memory_allocated from the "
                 "row's first call (compile and CUDA-graph capture included); diff = final latents vs the eager row of the "
                 "same method (authors' style vs our eager identity)."
                 + (" Process CPU ms = median CPU time of the process (all threads) per loop, which other load on the "
                    "machine does not inflate as it does wall time." if cpu_col else ""))
    la = env.get("load_average_at_start")
    if la:
        lines.append(f"Load average (1, 5, 15 min) at start {la}, at end {env.get('load_average_at_end')} "
                     f"on {env.get('cpu_count')} logical CPUs.")
    acc = d.get("acceptance") or {}
    if acc:
        lines += ["", "## Acceptance", ""]
        for k, v in acc.items():
            lines.append(f"- {k}: {v}")
    prof = d.get("profile") or {}
    for name, p in prof.items():
        if not isinstance(p, dict) or "top" not in p:
            continue
        lines += ["", f"## Profile: {name}", "",
                  (f"Device busy {p['busy_ms_per_loop']:.2f} ms per loop ({p.get('kernels_per_loop'):.0f} kernels); "
                   if p.get("kernels_per_loop") else f"Self CPU time of all ops {p['busy_ms_per_loop']:.2f} ms per loop; ")
                  + f"wall under the profiler {p['wall_ms_per_loop_under_profiler']:.2f} ms.", "",
                  "| category | ms per loop | share |", "|---|---|---|"]
        for c, v in p["categories"].items():
            lines.append(f"| {c} | {v['ms']:.3f} | {100 * v['share']:.1f}% |")
        lines += ["", "| kernel | calls/loop | ms/loop | share |", "|---|---|---|---|"]
        for t in p["top"]:
            nm = t["name"].replace("|", "/")[:100]
            lines.append(f"| `{nm}` | {t['calls_per_loop']:.0f} | {t['ms_per_loop']:.3f} | {100 * t['share']:.1f}% |")
    if d.get("sdpa_bench"):
        lines += ["", "## SDPA backends on SD 1.5's attention shapes (batch 2, fp16)", "",
                  "| shape | GFLOPs | default ms | flash ms | efficient ms | cudnn ms |", "|---|---|---|---|---|---|"]
        for label, row in d["sdpa_bench"].items():
            cells = []
            for b in ("default", "flash", "efficient", "cudnn"):
                x = row.get(b, {})
                cells.append(f"{x['ms']:.3f}" if "ms" in x else "n/a")
            lines.append(f"| {label} | {row['gflops']} | " + " | ".join(cells) + " |")
    if d.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in d["notes"]]
    return "\n".join(lines) + "\n"


def acceptance(report: Report) -> dict:
    """The issue's acceptance criteria, evaluated on the SD 1.5 rows of this run."""
    env = report.data["env"]
    acc = {}
    fb, fi = report.find("sd15", "baseline", "fast"), report.find("sd15", "identity", "fast")
    au = report.find("sd15", "authors", "eager")
    fr = report.find("sd15", "resnet", "fast")
    if fb and fi:
        r = fi["latency_ms"] / fb["latency_ms"]
        acc["fast Clockwork (identity) / fast baseline <= 0.72"] = f"{r:.3f} -> {'PASS' if r <= 0.72 else 'FAIL'}"
    if fb and fr:
        acc["fast Clockwork (resnet) / fast baseline (reported; FLOPs ratio %.3f)" % fr["flops_ratio"]] = \
            f"{fr['latency_ms'] / fb['latency_ms']:.3f}"
    if fi and au:
        s = au["latency_ms"] / fi["latency_ms"]
        acc["fast Clockwork (identity) speed-up over eager authors' style >= 3.4x"] = f"{s:.2f}x -> {'PASS' if s >= 3.4 else 'FAIL'}"
    if fb:
        h200 = "H200" in env.get("device_name", "")
        need = 250 if h200 else 200
        peak = (report.data.get("matmul_peak") or {}).get("fp16_tflops")
        frac = f", {100 * fb['tflops'] / peak:.0f}% of the measured fp16 matmul peak {peak}" if peak else ""
        acc[f"fast baseline >= {need} TFLOP/s ({'H200' if h200 else 'H100'} target, attention FLOPs counted)"] = \
            f"{fb['tflops']:.1f}{frac} -> {'PASS' if fb['tflops'] >= need else 'FAIL'}"
    diffs = [r for r in report.data["rows"] if r.get("mode") == "fast" and "matches_eager" in r]
    if diffs:
        ok = all(r["matches_eager"] for r in diffs)
        worst = max(r["rel_l2_diff"] for r in diffs)
        acc["fast rows give the eager images (final latents, rel L2 <= tolerance)"] = \
            f"worst rel L2 {worst:.1e}, max abs {max(r['max_abs_diff'] for r in diffs):.2e} -> {'PASS' if ok else 'FAIL'}"
    return acc
