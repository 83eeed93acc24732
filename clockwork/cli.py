"""The ``clockwork`` command: FLOPs accounting, sample grids, benchmarks.

    clockwork flops --unet-config sd15 --steps 8 --clock 2 --cut 1 --adaptor identity --batch 2 --json
    clockwork generate --prompt "a red sneaker" --clock 2 --out grid.png
    clockwork edit --image in.png --source "a small red sneaker" --target "a small blue sneaker" --clock 2
    clockwork sensitivity --steps 8 --n 16 --out reports/sensitivity/embedded
    clockwork schedule --steps 8 --n 16 --out reports/schedule/embedded
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _flops(args) -> int:
    from clockwork.flops import clockwork_flops

    adaptor_kwargs = {"width": args.width} if args.width and args.adaptor not in ("identity", "forecast") else {}
    res = clockwork_flops(args.unet_config, steps=args.steps, clock=args.clock, cut=args.cut, adaptor=args.adaptor,
                          batch=args.batch, adaptor_kwargs=adaptor_kwargs)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['unet_config']}: full step {res['full_step_gflops']:.1f} GFLOPs, adaptor step "
              f"{res['adaptor_step_gflops']:.1f} GFLOPs (batch {res['batch']}); {res['steps']} steps with "
              f"{res['clock']}: {res['total_gflops']:.1f} vs {res['baseline_total_gflops']:.1f} GFLOPs "
              f"= {res['ratio']:.3f}x ({100 * (1 - res['ratio']):.1f}% saved)")
    return 0


def _generate(args) -> int:
    from clockwork.generate import generate_grid

    path = generate_grid(prompts=args.prompt, clock=args.clock, cut=args.cut, adaptor=args.adaptor,
                         steps=args.steps, guidance=args.guidance, seed=args.seed, out=args.out,
                         teacher=args.teacher, n_per_prompt=args.n)
    print(f"wrote {path}")
    return 0


def _edit(args) -> int:
    from clockwork.generate import edit_file

    out, side = edit_file(args.image, args.source, args.target, clock=args.clock, cut=args.cut, adaptor=args.adaptor,
                          steps=args.steps, guidance=args.guidance, out=args.out, teacher=args.teacher,
                          resize=args.resize, feature_fraction=args.feature_fraction, attn_fraction=args.attn_fraction)
    print(f"wrote {out} and {side}")
    return 0


def _inputs(args, phrasing: str = "heldout"):
    """(device, clockwork.cli_inputs' inputs) of ``_sampling_args``: a config's shapes or the embedded teacher with
    prompts in ``phrasing``."""
    import torch

    from clockwork import cli_inputs

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.unet_config:
        return device, cli_inputs.config_inputs(args.unet_config, args.sampler, args.n, args.seed, args.sample_size, device)
    return device, cli_inputs.embedded_inputs(args.teacher, args.sampler, args.n, args.seed, device, phrasing=phrasing)


def _sensitivity(args) -> int:
    from clockwork import cli_inputs
    from clockwork import sensitivity as sens

    device, (unet, sched, cond, uncond, kw, _) = _inputs(args)
    out = Path(args.out)
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "clockwork" / "sensitivity_fid_ref.npz"
    score = cli_inputs.embedded_fid(cache, device=device) if args.fid and not args.unet_config else None
    res = sens.sensitivity(unet, sched, cond, uncond, steps=args.steps, guidance=args.guidance, seed=args.seed,
                           modes=args.modes.split(","), alphas=[float(a) for a in args.alphas.split(",")],
                           start_steps=[int(s) for s in args.start_steps.split(",")] if args.start_steps else None,
                           score=score, unet_kwargs=kw)
    res["meta"].update(sampler=args.sampler, source=args.unet_config or str(args.teacher or "embedded teacher"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(res, indent=1) + "\n")
    sens.plot_sensitivity(res, out / "sensitivity.png")
    print(sens.format_table(res))
    print(f"wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")
    return 0


def _schedule(args) -> int:
    import math

    from tqdm.auto import tqdm

    from clockwork import Clock
    from clockwork.flops import clockwork_flops
    from clockwork.schedule import plot_front, sample_change_scorer, search_schedules

    _, (unet, sched, cond, uncond, kw, _) = _inputs(args, phrasing="train")  # never the held-out evaluation prompts
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else None
    allowed = [int(s) for s in args.allowed.split(",")] if args.allowed else None
    n_allowed = len(allowed) if allowed else args.steps - 1
    total = sum(math.comb(n_allowed, k) if math.comb(n_allowed, k) <= args.exhaustive_limit else n_allowed - k + 1
                for k in range(1, max(budgets or [n_allowed]) + 1))
    score = sample_change_scorer(unet, sched, cond, uncond, adaptor=args.adaptor, cut=args.cut, steps=args.steps,
                                 guidance=args.guidance, seed=args.seed,
                                 added_cond_kwargs=(kw or {}).get("added_cond_kwargs"))
    bar = tqdm(total=total, desc="scoring schedules", unit="schedule")

    def counted(s):
        bar.update(1)
        return score(s)

    front = search_schedules(counted, args.steps, budgets, allowed=allowed, exhaustive_limit=args.exhaustive_limit)
    bar.close()
    config = args.unet_config or {k: v for k, v in unet.config.items() if not k.startswith("_")}
    rows = []
    for c in front:
        f = clockwork_flops(config, steps=args.steps, clock=Clock(adaptor_steps=c.adaptor_steps), cut=args.cut)
        rows.append({"budget": c.budget, "adaptor_steps": list(c.adaptor_steps), "score": c.score,
                     "gflops_ratio": f["ratio"], "method": c.method, "candidates": c.candidates,
                     "ranking": [[list(s), v] for s, v in c.ranking]})  # every candidate, best first: near-ties show
    res = {"meta": {"source": args.unet_config or str(args.teacher or "embedded teacher"), "adaptor": str(args.adaptor),
                    "cut": args.cut, "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                    "n": args.n, "seed": args.seed, "score": "MSE of the final latents against the full UNet's",
                    "flops": "identity adaptor's cost (a trained adaptor adds its own, ~1% of a step)",
                    "prompts": "random token states (shapes only)" if args.unet_config else "training phrasings"},
           "front": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedule.json").write_text(json.dumps(res, indent=1) + "\n")
    plot_front(res, out / "schedule.png")
    for r in rows:
        runners = "; ".join(f"{s} {v:.4g}" for s, v in r["ranking"][1:3])
        print(f"budget {r['budget']}: adaptor steps {r['adaptor_steps']}  score {r['score']:.4g}  "
              f"{r['gflops_ratio']:.3f}x GFLOPs  ({r['method']}, {r['candidates']} candidates"
              + (f"; next: {runners})" if runners else ")"))
    print(f"wrote {out / 'schedule.json'} and {out / 'schedule.png'}")
    return 0


def _sampling_args(p, n_help: str) -> None:
    """The UNet (embedded teacher, a folder, or a config's shapes) and the sampling loop, as sensitivity and
    schedule take them."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--teacher", default=None, help="UNet folder (default: the committed embedded teacher)")
    src.add_argument("--unet-config", default=None, help="sd15 | sd21 | sdxl | PATH/config.json: random weights, shapes only")
    p.add_argument("--sample-size", type=int, default=None, help="latent size for --unet-config (e.g. 32: faster)")
    p.add_argument("--sampler", default="dpm++", choices=["dpm++", "dpm", "pndm", "ddim", "euler", "heun"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--n", type=int, default=16, help=n_help)
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    ap = argparse.ArgumentParser(prog="clockwork", description="Clockwork Diffusion tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("flops", help="FLOPs of a Clockwork sampling loop vs the plain UNet, from a config alone")
    f.add_argument("--unet-config", default="sd15", help="sd15 | sd21 | sdxl | embedded | PATH/config.json")
    f.add_argument("--steps", type=int, default=8)
    f.add_argument("--clock", type=int, default=2)
    f.add_argument("--cut", type=int, default=1)
    f.add_argument("--adaptor", default="identity", choices=["identity", "forecast", "resnet", "unet-light"])
    f.add_argument("--width", type=int, default=None, help="adaptor width (resnet / unet-light)")
    f.add_argument("--batch", type=int, default=2, help="2 = one prompt with classifier-free guidance")
    f.add_argument("--json", action="store_true")
    f.set_defaults(fn=_flops)

    g = sub.add_parser("generate", help="an image grid with and without Clockwork (embedded teacher by default)")
    g.add_argument("--prompt", nargs="+", default=["a small red sneaker", "a large blue dress", "a photo of a large yellow bag"])
    g.add_argument("--clock", type=int, default=2)
    g.add_argument("--cut", type=int, default=1)
    g.add_argument("--adaptor", default="identity", help="identity | forecast | resnet | PATH to a trained adaptor folder")
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--guidance", type=float, default=2.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n", type=int, default=4, help="images per prompt")
    g.add_argument("--teacher", default=None, help="teacher folder (default: the committed embedded teacher)")
    g.add_argument("--out", default="clockwork_grid.png")
    g.set_defaults(fn=_generate)

    ed = sub.add_parser("edit", help="Plug-and-Play edit of an image with and without Clockwork (embedded teacher by default)")
    ed.add_argument("--image", required=True, help="the source image (the teacher's size: 32x32 for the embedded one)")
    ed.add_argument("--source", required=True, help="a caption of the source image, e.g. 'a red sneaker'")
    ed.add_argument("--target", required=True, help="the caption to edit towards, e.g. 'a blue sneaker'")
    ed.add_argument("--clock", type=int, default=2)
    ed.add_argument("--cut", type=int, default=1)
    ed.add_argument("--adaptor", default="identity", help="identity | forecast | PATH to a trained adaptor folder")
    ed.add_argument("--steps", type=int, default=16, help="DDIM steps of the inversion and of the generation")
    ed.add_argument("--guidance", type=float, default=2.0)
    ed.add_argument("--feature-fraction", type=float, default=None, help="share of steps with feature injection")
    ed.add_argument("--attn-fraction", type=float, default=None, help="share of steps with self-attention injection")
    ed.add_argument("--resize", action="store_true", help="scale an image of another size to the teacher's")
    ed.add_argument("--teacher", default=None, help="teacher folder (default: the committed embedded teacher)")
    ed.add_argument("--out", default="edited.png")
    ed.set_defaults(fn=_edit)

    sp = sub.add_parser("sensitivity", help="how much the final sample changes when each level's low-res output is "
                                           "perturbed or reused from step s on (the paper's Fig. 2)",
                        description="Every cut of the UNet (each level below which an adaptor could stand in) at every "
                                    "sampler step: the change of the final sample when that level's output is noised "
                                    "or reused. Writes sensitivity.json and sensitivity.png to --out.")
    _sampling_args(sp, n_help="images (prompts)")
    sp.add_argument("--modes", default="noise,reuse", help="comma list of noise, reuse, reuse_once")
    sp.add_argument("--alphas", default="0.1,0.3", help="relative noise strengths (mode noise)")
    sp.add_argument("--start-steps", default=None, help="comma list of 0-based start steps (default 1..steps-1)")
    sp.add_argument("--fid", action="store_true", help="embedded teacher only: FID of every row's samples vs 1000 held-out images (slow on a CPU)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--out", default="sensitivity")
    sp.set_defaults(fn=_sensitivity)

    sc = sub.add_parser("schedule", help="the best adaptor steps for every budget (the Clockwork front) from a "
                                         "calibration run: how far each schedule moves the final sample")
    _sampling_args(sc, n_help="calibration prompts")
    sc.add_argument("--adaptor", default="identity", help="identity (DeepCache's cache), forecast (extrapolates the "
                    "last full steps' r_out) or a trained adaptor's folder")
    sc.add_argument("--cut", type=int, default=1)
    sc.add_argument("--budgets", default=None, help="comma list of adaptor-step counts (default: all)")
    sc.add_argument("--allowed", default=None, help="comma list of steps the adaptor may take (default 1..steps-1)")
    sc.add_argument("--exhaustive-limit", type=int, default=256, help="search a budget exhaustively up to this "
                    "many schedules, greedily beyond")
    sc.add_argument("--device", default="auto")
    sc.add_argument("--out", default="schedule")
    sc.set_defaults(fn=_schedule)

    try:
        from clockwork.bench import add_parser as add_bench  # optional: the benchmark sub-command
        add_bench(sub)
    except ImportError:
        pass

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"clockwork {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
