"""Scaling of data-parallel online distillation (`distill.workers`) on the embedded world: workers 1, 2, ... each
a Ray Train worker (one CPU, or one GPU where the cluster has them), the same global batch, prompts and steps.

For each worker count: the distillation's wall time (Ray start-up, teacher load and buffer fill included), and once
the buffer is full (from the first log to the last) adaptor steps/s and prompts unrolled per second, with the
efficiency against N x one worker. Writes workers_bench.json and workers_bench.md to --out.

    python pipeline/prepare.py --prompts-only data/prepared     # once: the prompts and their embeddings
    python scripts/bench_workers.py --workers 1 2 --out reports/workers-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402
from scripts.provenance import git_commit  # noqa: E402


def steady(log_times: list, online, unroll_batch: int) -> dict:
    """Rates between the first and the last log (the buffer is full from the first step on)."""
    (s0, t0), (s1, t1) = log_times[0], log_times[-1]
    prompts = (online.refreshes_at(s1) - online.refreshes_at(s0)) * unroll_batch
    return {"from_step": s0, "to_step": s1, "seconds": round(t1 - t0, 2), "steps_per_s": round((s1 - s0) / (t1 - t0), 3),
            "prompts_per_s": round(prompts / (t1 - t0), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--unroll-batch", type=int, default=16)
    ap.add_argument("--refresh-every", type=int, default=2)
    ap.add_argument("--buffer-prompts", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (one GPU per worker)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from pipeline.common import MethodSpec, distill_config
    from pipeline.common.headline import machine
    from pipeline.common.parallel import distill_adaptor_workers
    from pipeline.common.training import online_config
    from pipeline.config import teacher_unet_config

    p = load_params("distill")
    if p.world.kind != "embedded":
        sys.exit("bench_workers.py: the embedded world only (its teacher ships with the repository)")
    if not (Path("data/prepared") / "embeddings.safetensors").is_file():
        sys.exit("bench_workers.py: data/prepared is missing: python pipeline/prepare.py --prompts-only data/prepared")
    spec = MethodSpec.from_params(p)
    unet_config = teacher_unet_config(p.world, Path.cwd())
    online = p.distill.online.model_copy(update={"unroll_batch": args.unroll_batch, "refresh_every": args.refresh_every,
                                                 "buffer_prompts": args.buffer_prompts, "compile": False})
    report = {"meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(),
                       "command": " ".join(["python"] + sys.argv), **machine("fp32", args.device),
                       "setting": {"steps": args.steps, "batch_size": p.distill.batch_size, **online.model_dump(),
                                   "adaptor": spec.adaptor, "width": spec.width, "cut": spec.cut}},
              "runs": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.workers:
        section = p.distill.model_copy(update={"workers": n, "source": "online", "steps": args.steps,
                                               "log_every": args.log_every, "checkpoint_every": args.steps,
                                               "online": online})
        ckpt = Path(tempfile.mkdtemp(prefix=f"bench_workers_{n}_")) / "latest"
        t0 = time.perf_counter()
        _, history, stream = distill_adaptor_workers(spec, unet_config, p.world, None, None, distill_config(section),
                                                     section, args.device, ckpt)
        wall = time.perf_counter() - t0
        done = json.loads((ckpt / "workers_result.json").read_text())
        report["runs"][str(n)] = {"workers": n, "wall_s": round(wall, 1), "device": done["device"],
                                  "final_loss": history[-1]["loss"],
                                  "steady": steady(done["log_times"], online_config(section, args.device),
                                                   args.unroll_batch)}
        shutil.rmtree(ckpt.parent, ignore_errors=True)
        print(json.dumps(report["runs"][str(n)]), flush=True)
    one = report["runs"].get("1")
    for r in report["runs"].values():
        if one:
            r["efficiency"] = round(r["steady"]["steps_per_s"] / (r["workers"] * one["steady"]["steps_per_s"]), 3)
    (args.out / "workers_bench.json").write_text(json.dumps(report, indent=1))
    m = report["meta"]
    lines = [f"# Data-parallel online distillation: {m['cpu'] if args.device == 'cpu' else m['device']}", "",
             f"{m['date']}, commit `{m['commit'][:12]}`, `{m['command']}`", "",
             f"embedded world, {args.steps} adaptor steps at global batch {p.distill.batch_size}, unroll batch "
             f"{args.unroll_batch}, refresh every {args.refresh_every}, buffer {args.buffer_prompts} prompts; one "
             f"{'CPU' if args.device == 'cpu' else 'device'} per Ray Train worker", "",
             "| workers | adaptor steps/s | prompts unrolled/s | efficiency vs N x 1 | wall (incl. Ray start, fill) | final loss |",
             "|---|---|---|---|---|---|"]
    for r in report["runs"].values():
        s = r["steady"]
        lines.append(f"| {r['workers']} | {s['steps_per_s']} | {s['prompts_per_s']} | {r.get('efficiency', '-')} | "
                     f"{r['wall_s']} s | {r['final_loss']:.6g} |")
    (args.out / "workers_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
