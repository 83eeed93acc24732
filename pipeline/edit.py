"""Stage `edit`: Plug-and-Play editing of held-out images, with and without Clockwork -> metrics/edit.json.

Held-out images 0..edit.n_images-1 get one edit each (colour, size, item in rotation; the target value drawn
from the others, seeded): DDIM inversion with the source caption, then generation with the target caption and
PnP's feature / self-attention injection (clockwork/editing.py). Methods (pipeline/common/editing.py): the full
UNet (`pnp`), the same inversion and regeneration without injection (`inversion_only`), the full UNet with fewer steps (`pnp_<k>steps`, the trivial alternative at the same FLOPs),
Clockwork in both passes at each clock with the identity adaptor, the distill stage's adaptor (models/adaptor) and
one distilled for editing (DDIM trajectories at edit.steps, data/edit/), and SDEdit.
Scores (clockwork/embedded/edits.py): the changed attribute read from pixels (item: the CLIP scorer), the
scorer's preference for the target prompt, and - for colour and size edits - mask IoU and gray-structure SSIM
against the exact target rendering. Every Clockwork row is compared, paired per edit, with `pnp` and with the
plain-steps front at its GFLOPs. plots/samples/edit.png shows sources, exact targets and every method's edits.
The injection settings were chosen on training-split images (scripts/edit_validation.py), not on these. world.kind sd: the stage writes a note
only (the measurement needs the embedded world's known attributes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402

METRICS = "metrics/edit.json"
HEADLINE = "metrics/headline/edit.json"  # the DVC metric: success and structure per method (pipeline.common.headline)
GRID = "plots/samples/edit.png"


def main() -> None:
    p = load_params("edit")
    e = p.edit
    from pipeline.common import log, save_png, write_json
    from pipeline.common.editing import WORK

    WORK.mkdir(parents=True, exist_ok=True)  # the stage's persistent cache (a DVC out), empty when nothing is distilled
    if p.world.kind != "embedded" or e.n_images == 0:
        why = "edit.n_images is 0" if e.n_images == 0 else "the edit measurement runs in the embedded world only"
        write_json(METRICS, {"status": "off", "why": why})
        write_json(HEADLINE, {"status": "off"})
        save_png(GRID, _blank())
        log(f"edit: off ({why})")
        return

    import torch

    from clockwork.adaptors import load_adaptor
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.embedded.edits import ideal_images, make_edits, score_edits
    from clockwork.viz import image_grid
    from pipeline import tracking
    from pipeline.common import ADAPTOR_DIR, Prepared, load_world, pick_device
    from pipeline.common.editing import edit_adaptor, edit_methods, log_row, paired, run_method, summarize, versus_plain
    from pipeline.common.headline import edit_headline, machine

    world = load_world(p.world, e.device)
    prepared = Prepared.load()
    table = prepared.table
    held = CaptionedFashion("heldout", root=p.world.data_root, limit=e.n_images)
    if len(held) < e.n_images:
        raise SystemExit(f"edit.n_images={e.n_images} but the held-out split has {len(held)} images")
    edits = make_edits(held.captions, tuple(e.attributes), seed=e.seed)
    ideal = ((ideal_images(held.gray, edits) + 1) * 127.5).round().to(torch.uint8)
    adaptors = {"distilled": load_adaptor(ADAPTOR_DIR) if "distilled" in e.adaptors else None,
                "edit-distilled": edit_adaptor(p, world, prepared, pick_device(p.distill.device))
                if "edit-distilled" in e.adaptors else None}
    clip = world.scorer(table)
    methods = edit_methods(e)
    images, raw, summary, cost = {}, {}, {}, {}
    t0 = time.perf_counter()
    with tracking.stage_run("edit", p.flat(), tags={"device": world.device, "torch_threads": torch.get_num_threads()}) as run:
        for name, m in methods.items():
            with run.child(name, {"kind": m.kind, "steps": m.steps, "adaptor": m.adaptor or "full", "clock": m.clock or 1}) as child:
                imgs, cost[name] = run_method(world, m, adaptors.get(m.adaptor), held, edits, table, e)
                raw[name] = score_edits(imgs, edits, ideal, clip)
                summary[name] = summarize(raw[name], edits)
                child.log_metrics({**{k: v["mean"] for k, v in summary[name].items() if v["mean"] is not None},
                                   **{k: v for k, v in cost[name].items() if isinstance(v, float)}})
            images[name] = imgs[:e.grid_images]
            log_row(name, summary[name], cost[name], cost["pnp"]["gflops"])
        gflops = {k: c["gflops"] for k, c in cost.items()}
        plain = [k for k, m in methods.items() if m.kind == "pnp" and m.adaptor is None]
        rows = {}
        for name, m in methods.items():
            row = {"method": {"kind": m.kind, "steps": m.steps, "adaptor": m.adaptor, "clock": m.clock},
                   **cost[name], "gflops_ratio": round(gflops[name] / gflops["pnp"], 4), "scores": summary[name]}
            if name != "pnp":
                row["vs_pnp"] = {k: paired(raw[name][k], raw["pnp"][k]) for k in raw[name]}
            if m.adaptor is not None:
                row["vs_fewer_steps"] = versus_plain(name, gflops, raw, plain)
            rows[name] = row
        reference = summarize(score_edits(ideal, edits, ideal, clip), edits)  # the exact renderings: the ceiling
        record = machine(world.precision, world.device)
        write_json(METRICS, {"n_edits": len(edits), "attributes": list(e.attributes), "settings": e.model_dump(),
                             **record, "exact_target": reference, "methods": rows})
        write_json(HEADLINE, edit_headline(rows, record))
        if e.grid_images:
            k = e.grid_images
            grid_rows = {"source": held.images_uint8(slice(0, k)), "exact target": ideal[:k], **images}
            caps = [ed.target.text for ed in edits[:k]]
            save_png(GRID, image_grid(torch.cat(list(grid_rows.values())), [c for _ in grid_rows for c in caps],
                                      ncols=k, row_titles=list(grid_rows)))
            run.log_artifact(GRID, "samples")
        run.log_artifact(METRICS)
    log(f"edit done in {time.perf_counter() - t0:.0f}s")


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8), "white")


if __name__ == "__main__":
    main()
