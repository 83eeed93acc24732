"""Reusable stage logic, one concern a module; stages (``pipeline/<stage>.py``) and the Ray Tune sweep compose
these, and nothing here knows about DVC. ``pipeline.common:train_and_evaluate`` is the sweep's trial entry.

io (files, hashes, device, log) · world (teacher, prompts, samplers) · methods (a method spec, its FLOPs) ·
evaluation (sampling, latency, scores) · store (teacher trajectories) · training (distilling an adaptor) ·
grids (sample pictures) · trial (the sweep's entry).
"""

from pipeline.common import _process  # noqa: F401  (before anything below imports diffusers)
from pipeline.common.io import (ADAPTOR_DIR, PREPARED_DIR, REPO_ROOT, TRAJECTORIES_DIR, atomic_dir, code_sha, file_sha,
                                finite, log, obj_sha, pick_device, save_png, write_json, write_text)
from pipeline.common.world import Prepared, World, load_world, make_sampler, teacher_scheduler_config
from pipeline.common.methods import (MethodSpec, adaptor_loop_indices, adaptor_params, build_adaptor_for,
                                     cut_signature, method_gflops)
from pipeline.common.evaluation import (EvalContext, evaluate_method, inception, measure_latency, sample_images,
                                        score_images, vs_fewer_steps)
from pipeline.common.store import (ensure_trajectories, load_trajectories, num_prompts, row_contexts, row_prompts,
                                   split_trajectories, store_matches)
from pipeline.common.training import (distill_adaptor, distill_config, forward_noised_data, pair_dataset,
                                      rollout_finetune)
from pipeline.common.grids import sample_grid
from pipeline.common.trial import train_and_evaluate
from clockwork.metrics import bootstrap_fid, bootstrap_fid_std, bootstrap_indices, fid_low_rank

__all__ = [
    "ADAPTOR_DIR", "PREPARED_DIR", "REPO_ROOT", "TRAJECTORIES_DIR", "EvalContext", "MethodSpec", "Prepared", "World",
    "adaptor_loop_indices", "adaptor_params", "atomic_dir", "bootstrap_fid", "bootstrap_fid_std", "bootstrap_indices",
    "build_adaptor_for", "code_sha", "cut_signature", "distill_adaptor", "distill_config", "ensure_trajectories",
    "evaluate_method", "fid_low_rank", "file_sha", "finite", "forward_noised_data", "inception", "load_trajectories",
    "load_world", "log", "make_sampler", "measure_latency", "method_gflops", "num_prompts", "obj_sha", "pair_dataset",
    "pick_device", "rollout_finetune", "row_contexts", "row_prompts", "sample_grid", "sample_images", "save_png",
    "score_images", "split_trajectories", "store_matches", "teacher_scheduler_config", "train_and_evaluate",
    "vs_fewer_steps", "write_json", "write_text",
]
