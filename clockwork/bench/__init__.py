"""``clockwork bench``: wall-clock latency of the UNet sampling loop, eager and fast, with FLOPs beside it.

    clockwork bench --device cuda --models sd15,teacher --out reports/benchmarks          # one GPU
    clockwork bench --device cpu --models teacher --threads 2 --out reports/benchmarks     # a laptop

What is timed is the paper's latency: the denoising loop only (no text encoder, no VAE) - per step
``cat([x, x])`` (classifier-free guidance as one batch of 2), one UNet call, the guidance mix and
``scheduler.step`` (DPM++ 2M), for ``--steps`` steps. ``set_timesteps`` runs before the clock starts.
Rows, per model and mode:

- ``baseline``: the plain UNet;
- ``identity`` / ``resnet``: Clockwork through :func:`clockwork.enable` (the library path users take);
- ``authors``: the authors' style - one UNet whose low-resolution blocks are swapped at run time for
  stubs that return the cached output of the previous full call (identity adaptor, eager only;
  :class:`AuthorsStyleClockwork`, a few lines of our own, counting UNet calls like their wrapper).

Modes: ``eager`` and ``fast`` = ``clockwork.enable(..., fast=MODE)`` (two static graphs: the full step
and the adaptor step, each ``torch.compile``-d, with CUDA graphs under ``reduce-overhead``), on a UNet
prepared with channels_last weights and fused QKV projections. The fast baseline calls the same compiled
full-step function directly (``UNetCut.full_step`` replays ``unet.forward`` op for op), so baseline and
Clockwork share one compiled graph. Every fast row's final latents are compared with its eager row's.

Timing: CUDA events around each loop after warm-up (wall clock on CPU), median of ``--runs``.
FLOPs from :func:`clockwork.flops.clockwork_flops` (math attention, attention matmuls counted).
Results: ``<out>/bench_<tag>.json`` and ``.md`` (written after every row, so a cut-off run keeps
what it measured).

Modules: models (what is benchmarked), timing (the loop, timed and profiled), gpu (matmul peak, SDPA, fast-mode
preparation), report (JSON / Markdown, acceptance), run (the run and the command line).
"""

from clockwork.bench.gpu import (SDPA_SHAPES, choose_sdpa, matmul_peak, prepare_fast, sdpa_bench, sdpa_context,
                                 set_inductor_options)
from clockwork.bench.models import (METHODS, MODES, RESNET_WIDTH, SD_SCHEDULER, TINY, AuthorsStyleClockwork, ModelSpec,
                                    build_model, build_resnet_adaptor)
from clockwork.bench.report import Report, acceptance, to_markdown
from clockwork.bench.run import add_arguments, add_parser, bench_model, main, parse_args, run_bench
from clockwork.bench.timing import _stats, compare, kernel_category, make_loop, profile_loop, time_loop  # noqa: F401

__all__ = [
    "METHODS", "MODES", "RESNET_WIDTH", "SDPA_SHAPES", "SD_SCHEDULER", "TINY", "AuthorsStyleClockwork", "ModelSpec",
    "Report", "acceptance", "add_arguments", "add_parser", "bench_model", "build_model", "build_resnet_adaptor",
    "choose_sdpa", "compare", "kernel_category", "main", "make_loop", "matmul_peak", "parse_args", "prepare_fast",
    "profile_loop", "run_bench", "sdpa_bench", "sdpa_context", "set_inductor_options", "time_loop", "to_markdown",
]
