"""Choose editing settings for the embedded teacher on a validation split, never on the held-out images the
`edit` stage reports: training-split images from 59000 on, one edit each, 16 DDIM steps, CFG 2.

- default: Plug-and-Play's feature / self-attention injection fractions and SDEdit strengths (full UNet);
- ``--adaptor NAME=DIR`` (repeatable): which adaptor to edit with - the full UNet, the identity adaptor and each
  named trained adaptor at every ``--clocks`` in both passes, with params.yaml's edit section's injection settings.

    python scripts/edit_validation.py --out reports/edit/validation.json     (needs data/prepared; ~8 min on 2 CPU cores)
    python scripts/edit_validation.py --n 96 --adaptor dpm8=models/adaptor --out reports/edit/adaptor_validation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.common import Prepared, load_world  # noqa: E402
from pipeline.common.editing import VERDICT_SCORES, EditMethod, run_method, summarize  # noqa: E402
from pipeline.config import read_yaml, validate  # noqa: E402
from scripts.provenance import git_commit  # noqa: E402

PNP = [(0.8, 0.5), (0.5, 0.5), (0.3, 0.3), (0.2, 0.2), (0.1, 0.5), (0.5, 0.0), (0.0, 0.0), (0.0, 0.3), (0.0, 0.5),
       (0.0, 0.8), (0.0, 1.0)]
SDEDIT = [0.6, 0.8, 0.9]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="reports/edit/validation.json")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--adaptor", action="append", default=[], metavar="NAME=DIR",
                    help="compare adaptors instead of injection settings (identity is always included)")
    ap.add_argument("--clocks", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    named = {}
    for a in args.adaptor:
        name, sep, path = a.partition("=")
        if not sep or not Path(path, "config.json").is_file():
            ap.error(f"--adaptor {a}: expected NAME=DIR with DIR a saved adaptor (config.json)")
        named[name] = path
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.embedded.edits import ideal_images, make_edits, score_edits

    p = validate(read_yaml("params.yaml"))
    world = load_world(p.world, "auto")
    table = Prepared.load().table
    clip = world.scorer(table)
    train = CaptionedFashion("train", root=p.world.data_root)
    idx = torch.arange(59000, 59000 + args.n)
    held = types.SimpleNamespace(images=lambda i: train.images(idx[i]))
    edits = make_edits([train.captions[i] for i in idx.tolist()], seed=1)
    ideal = ((ideal_images(train.gray[idx], edits) + 1) * 127.5).round().to(torch.uint8)
    rows = []
    t0 = time.time()
    if args.adaptor:
        from clockwork.adaptors import load_adaptor

        e = types.SimpleNamespace(guidance=2.0, feature_fraction=p.edit.feature_fraction, attn_fraction=p.edit.attn_fraction,
                                  batch_size=args.n, seed=0)
        runs = [("full UNet", None, EditMethod("pnp", args.steps))]
        runs += [("identity", None, EditMethod("pnp", args.steps, "identity", c)) for c in args.clocks]
        runs += [(name, load_adaptor(path), EditMethod("pnp", args.steps, "distilled", c))
                 for name, path in named.items() for c in args.clocks]
        for name, adaptor, m in runs:
            imgs, cost = run_method(world, m, adaptor, held, edits, table, e)
            s = summarize(score_edits(imgs, edits, ideal, clip), edits)
            row = {"adaptor": name, "path": named.get(name), "clock": m.clock, "gflops": cost["gflops"],
                   **{k: s[k]["mean"] for k in VERDICT_SCORES},
                   **{f"{k}_se": s[k]["se"] for k in ("attribute_success", "mask_iou", "structure_ssim")}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for kind, a, b in [] if args.adaptor else [("pnp", f, at) for f, at in PNP] + [("sdedit", s, None) for s in SDEDIT]:
        e = types.SimpleNamespace(guidance=2.0, feature_fraction=a if kind == "pnp" else 0.0,
                                  attn_fraction=b if kind == "pnp" else 0.0, batch_size=args.n, seed=0,
                                  sdedit_strength=a if kind == "sdedit" else 0.6)
        imgs, _ = run_method(world, EditMethod(kind, args.steps), None, held, edits, table, e)
        s = summarize(score_edits(imgs, edits, ideal, clip), edits)
        row = {"method": kind, **({"feature_fraction": a, "attn_fraction": b} if kind == "pnp" else {"strength": a}),
               **{f"success_{k}": s["attribute_success"][k]["mean"] for k in ("colour", "size", "item")},
               **{k: s[k]["mean"] for k in ("clip_preference", "mask_iou", "structure_ssim")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    commit = git_commit(short=True)
    out = {"split": f"training images {int(idx[0])}..{int(idx[-1])} (not the held-out split the edit stage reports)",
           "steps": args.steps, "guidance": 2.0, "device": world.device, "commit": commit,
           "command": " ".join(["python", *sys.argv]), "wall_s": round(time.time() - t0), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
