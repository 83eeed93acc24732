"""Stage `trajectories`: unroll the teacher from pure noise for every distillation prompt -> data/trajectories/.

The paper's "unrolled trajectories": the target sampler, step count and guidance, no images. One pass of
the teacher records r_in / r_out at every cut in `trajectories.cuts`, so every adaptor width and cut
trains from the same store. Shards are written atomically and the output is `persist: true` in dvc.yaml,
so a killed run resumes at the first missing shard (the store's meta.json holds a hash of the prompts,
the teacher and the settings; a change starts over).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_params  # noqa: E402


def main() -> None:
    p = load_params("trajectories")
    from pipeline import tracking
    from pipeline.common import TRAJECTORIES_DIR, Prepared, ensure_trajectories, load_world, log

    world = load_world(p.world, p.trajectories.device)
    prepared = Prepared.load()
    with tracking.stage_run("trajectories", p.flat()) as run:
        t0 = time.perf_counter()
        store = ensure_trajectories(TRAJECTORIES_DIR, world, prepared.table, prepared.distill_prompts, p.sampling.sampler,
                                    p.sampling.steps, p.sampling.guidance, p.trajectories.cuts, p.trajectories.seed,
                                    p.trajectories.shard_size)
        meta = store.meta
        size = sum(f.stat().st_size for f in Path(TRAJECTORIES_DIR).glob("*.safetensors"))
        run.log_metrics({"num_prompts": meta["num_prompts"], "num_shards": meta["num_shards"], "mbytes": size / 2**20,
                         "seconds": time.perf_counter() - t0})
        log(f"{meta['num_prompts']} trajectories x {meta['steps']} steps ({meta['sampler_name']}), cuts {meta['cuts']}: "
            f"{size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
