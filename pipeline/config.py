"""params.yaml, validated before any work starts.

Every section is a pydantic model (pipeline/config_sections.py; the `sweep:` section's in
pipeline/config_sweep.py) with ``extra="forbid"`` and strict types, so an unknown key or a wrong type fails at
once. Cross-field rules (a cut the teacher cannot take, adaptor steps outside the schedule, more evaluation
images than prepared prompts, ...) and missing input files are checked next. Any problem gives one message per
offending key, ``params.yaml: distill.lr: ...``, and exit code 2 - before a stage writes anything.

A stage calls ``load_params("distill")`` and gets only the sections it declares in dvc.yaml
(:data:`STAGE_SECTIONS`; a test keeps the two in sync), so what a stage reads is what DVC tracks.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

if __package__ in (None, ""):  # run as `python pipeline/config.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config_sections import (  # noqa: F401 - the sections are part of this module's interface
    ABLATIONS, ADAPTOR_INPUTS, ADAPTOR_KINDS, DEFAULT_PARAMS, SAMPLERS, SD_PIPELINES, SPLITS, Ablate, Adaptor, Clip,
    ClockParams, ConfigError, Device, Distill, DistillOnline, Edit, EmbeddedWorld, Evaluate, Lever, NonNegInt, PosFloat, PosInt, Prepare,
    Report, Sampling, SDWorld, Section, Teacher, Trajectories, TRAINING_FREE, World, problems_from,
)
from pipeline.config_sweep import SweepParams

PARAMS_ENV = "CLOCKWORK_PARAMS"
TRAIN_IMAGES = 60_000  # Fashion-MNIST train: distillation prompts and the validation split are disjoint draws from it
HELDOUT_IMAGES = 10_000  # Fashion-MNIST t10k: evaluation prompts and reference images are disjoint draws from it
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class Params(Section):
    world: World
    prepare: Prepare
    teacher: Teacher
    clip: Clip
    sampling: Sampling
    trajectories: Trajectories
    cut: PosInt
    adaptor: Adaptor
    clock: ClockParams
    distill: Distill
    evaluate: Evaluate
    ablate: Ablate
    edit: Edit = Edit()  # absent = the defaults (configs for world.kind sd need none: the stage is embedded-only)
    report: Report
    sweep: SweepParams | None = None  # Ray Tune (python pipeline/sweep.py); no DVC stage reads it; absent = no sweep


# What each stage reads; dvc.yaml declares exactly these params (tests/test_config.py checks).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("world", "prepare"),
    "teacher": ("world", "teacher"),
    "clip": ("world", "clip"),
    "trajectories": ("world", "sampling", "trajectories"),
    "distill": ("world", "sampling", "cut", "adaptor", "clock", "distill"),
    "evaluate": ("world", "sampling", "cut", "clock", "evaluate"),
    "ablate": ("world", "sampling", "trajectories", "cut", "adaptor", "clock", "distill", "ablate"),
    "edit": ("world", "trajectories", "cut", "adaptor", "distill", "edit"),
    "report": ("report",),
    "report_full": ("report",),
    "report_default": ("report",),
}
# Stages that run another stage's script with arguments (pipeline/<script>.py ...): they read its sections.
STAGE_SCRIPTS: dict[str, str] = {"report_full": "report", "report_default": "report"}
# Files a stage needs that no earlier stage of the DAG makes (or that it reads before the DAG can).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "prepare": ("world.data_root", "world.captions", "world.distill_captions", "world.reference_images", "world.model"),
    "teacher": ("world.data_root",),
    "clip": ("world.data_root",),
    "trajectories": ("world.teacher", "world.model"),
    "distill": ("world.teacher", "world.model"),
    "evaluate": ("world.teacher", "world.scorer", "world.model"),
    "ablate": ("world.teacher", "world.scorer", "world.data_root", "world.model"),
    "edit": ("world.teacher", "world.scorer", "world.data_root"),
    "report": (),
    "report_full": (),
    "report_default": (),
}


# ------------------------------------------------------------------------------------------ checking
def public_config(cfg) -> dict:
    """A diffusers config without its private keys (``_class_name``, ``_diffusers_version``, ...)."""
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def resolve_path(path: str | os.PathLike, root: str | os.PathLike = ".") -> Path:
    """A params path as the stages read it: absolute as is, else relative to ``root`` (the repository)."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def model_source(model: str, root: str | os.PathLike = ".") -> str:
    """What diffusers loads for ``world.model``: the local folder where it exists (relative to ``root``), else the
    hub id (from the Hugging Face cache when offline)."""
    local = resolve_path(model, root)
    return str(local) if local.exists() else model


def sd_model(world: SDWorld, root: Path) -> tuple[str, dict, int]:
    """(pipeline class, UNet config, VAE scale factor) of an SD-family model, from its configs alone (a local
    folder, or a hub id through the Hugging Face cache); a :class:`ConfigError` naming the key otherwise."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pipeline.common.world import sd_pipeline_class

    local = resolve_path(world.model, root)
    if _looks_local(world.model) and not (local / "model_index.json").is_file():
        raise ConfigError([("world.model", f"{local} is not a diffusers pipeline folder (model_index.json missing)")])
    model = model_source(world.model, root)
    try:
        cls = sd_pipeline_class(model, world.pipeline)
        unet = public_config(UNet2DConditionModel.load_config(model, subfolder="unet"))
        vae = AutoencoderKL.load_config(model, subfolder="vae")
    except Exception as e:  # noqa: BLE001 - any failure to find or read the model is this key's problem
        offline = " (HF_HUB_OFFLINE=1: a hub id must be in the local cache)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ConfigError([("world.model", f"cannot read the pipeline {world.model!r}{offline}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]) from None
    if cls not in SD_PIPELINES:
        key = "world.pipeline" if world.pipeline != "auto" else "world.model"
        raise ConfigError([(key, f"{world.model} is a {cls}; world.kind sd runs {', '.join(SD_PIPELINES)} "
                            "(set world.pipeline to load the model as one of them)")])
    return cls, unet, 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def teacher_unet_config(world: EmbeddedWorld | SDWorld, root: Path) -> dict:
    """The teacher's UNet config, read without loading weights (for cut validation and FLOPs)."""
    import json

    if isinstance(world, EmbeddedWorld):
        cfg_file = resolve_path(world.teacher, root) / "config.json"
        if cfg_file.is_file():
            return public_config(json.loads(cfg_file.read_text()))
        from clockwork.embedded.teacher import TEACHER_CONFIG

        return dict(TEACHER_CONFIG)
    return sd_model(world, root)[1]


def valid_teacher_cuts(world, root: Path) -> list[int]:
    from clockwork.cut import UNetCut, valid_cuts
    from clockwork.flops import meta_unet

    unet = meta_unet(teacher_unet_config(world, root))
    ok = []
    for c in valid_cuts(unet):
        try:
            UNetCut(unet, c)
            ok.append(c)
        except ValueError:
            pass
    return ok


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.sep in path and Path(path).exists() or Path(path).exists()


def _clock_problems(key: str, steps: int, period: int | None, adaptor_steps: list[int] | None,
                    uses_r_out_prev: bool) -> list[tuple[str, str]]:
    if period is not None and period < 1:  # a bad value even where adaptor_steps overrides it
        return [(f"{key}.period", f"clock period must be an integer >= 1 (1 = never use the adaptor), got {period}")]
    if adaptor_steps is not None:
        outside = sorted(s for s in adaptor_steps if s < 0 or s >= steps)
        if outside:
            return [(f"{key}.adaptor_steps" if key == "clock" else key,
                     f"adaptor steps {outside} are outside the schedule of sampling.steps={steps} "
                     f"(0-based: allowed 1..{steps - 1})")]
        if 0 in adaptor_steps and uses_r_out_prev:
            return [(f"{key}.adaptor_steps" if key == "clock" else key,
                     "step 0 cannot be an adaptor step: there is no r_out(t+1) yet (allowed 1.."
                     f"{steps - 1}), unless adaptor.inputs leaves out r_out_prev")]
        return []
    return []


def _sd_problems(p: Params, root: Path) -> list[tuple[str, str]]:
    """What an SD-family world cannot do: resolutions its UNet cannot take, and the pieces built for the embedded
    world only (forward-noised training images, the output-space loss and rollouts with SDXL's added conditioning)."""
    cls, unet, vae_scale = sd_model(p.world, root)
    problems = []
    levels = len(unet.get("block_out_channels", ())) or 4
    step = vae_scale * 2 ** (levels - 1)
    if p.world.resolution % step:
        problems.append(("world.resolution", f"{p.world.resolution} is not a multiple of {step} (VAE factor {vae_scale} x "
                         f"the UNet's {levels - 1} downsamplings); e.g. {max(step, p.world.resolution // step * step)}"))
    if "training" in p.ablate.ablations:
        problems.append(("ablate.ablations", "`training` (forward-noised images) is built for the embedded world only"))
    if cls == "StableDiffusionXLPipeline":
        for key, v in (("distill.output_weight", p.distill.output_weight), ("distill.rollout_steps", p.distill.rollout_steps)):
            if v:
                problems.append((key, f"{v}: the output-space loss and rollouts do not pass SDXL's added conditioning "
                                 "yet; use 0"))
    return problems


def _edit_problems(p: Params) -> list[tuple[str, str]]:
    e, problems = p.edit, []
    if not e.attributes:
        problems.append(("edit.attributes", "empty list: name at least one of colour, size, item"))
    bad = [k for k in e.front_steps if k >= e.steps]
    if bad:
        problems.append(("edit.front_steps", f"{bad} are not fewer than edit.steps={e.steps}"))
    if "edit-distilled" in e.adaptors and e.n_images and p.world.kind == "embedded" and \
            e.distill_prompts > p.prepare.distill_prompts:
        problems.append(("edit.distill_prompts", f"{e.distill_prompts} > prepare.distill_prompts={p.prepare.distill_prompts}"))
    bad = [c for c in e.clocks if c > e.steps]
    if bad:
        problems.append(("edit.clocks", f"{bad} exceed edit.steps={e.steps}: no adaptor step would run"))
    return problems


def stochastic_sampler(name: str) -> bool:
    """Whether sampler ``name``'s step draws fresh noise (ancestral, SDE, DDPM, DDIM with eta > 0, Euler with churn):
    its trajectories are then not a function of the initial noise alone, so an online distillation that resumes by
    re-unrolling (clockwork.online) would not continue the same run."""
    from clockwork.schedulers import SAMPLERS as BUILT

    cls, overrides = BUILT[name]
    return (any(w in cls.__name__ for w in ("Ancestral", "SDE", "DDPM", "LCM"))
            or "sde" in str(overrides.get("algorithm_type", "")) or bool(overrides.get("eta", 0))
            or bool(overrides.get("s_churn", 0)))


def online_prompts(p: Params) -> int | None:
    """How many captions ``distill.source: online`` streams, where the params alone tell (embedded world); None for
    an SD world with ``distill.online.prompts: 0`` (all of world.distill_captions but the store's: the stage counts)."""
    o = p.distill.online
    if isinstance(p.world, EmbeddedWorld):
        return o.prompts or p.prepare.distill_prompts - p.distill.heldout_prompts
    return o.prompts or None


def _online_problems(p: Params) -> list[tuple[str, str]]:
    """What ``distill.source: online`` cannot do (clockwork.online.distill_online): checked before any work."""
    d, o = p.distill, p.distill.online
    if d.source != "online":
        if d.workers > 1:
            return [("distill.workers", f"{d.workers}: several workers distil online only (each unrolls its share of "
                     "the prompt stream); set distill.source: online, or distill.workers: 1")]
        return []
    problems = []
    if d.workers > 1:
        for key, v in (("distill.online.unroll_batch", o.unroll_batch), ("distill.online.buffer_prompts", o.buffer_prompts)):
            if v % d.workers:
                problems.append((key, f"{v} does not divide by distill.workers={d.workers}: each worker unrolls and "
                                 "holds an equal share of every refresh"))
    if isinstance(p.world, EmbeddedWorld):
        avail = p.prepare.distill_prompts - d.heldout_prompts
        if o.prompts > avail:
            problems.append(("distill.online.prompts", f"{o.prompts} > the {avail} prepared distillation prompts that "
                             f"are not held out (prepare.distill_prompts={p.prepare.distill_prompts} - "
                             f"distill.heldout_prompts={d.heldout_prompts}); 0 = all of them"))
    elif p.world.distill_captions is None:
        problems.append(("world.distill_captions", "distill.source: online streams its training captions from this "
                         "COCO captions json (annotations/captions_train2017.json); set it"))
    n = online_prompts(p)
    if n is not None and o.buffer_prompts > n:
        problems.append(("distill.online.buffer_prompts", f"{o.buffer_prompts} > the {n} prompts streamed "
                         "(distill.online.prompts): the buffer would hold a prompt twice"))
    if o.unroll_batch > o.buffer_prompts:
        problems.append(("distill.online.unroll_batch", f"{o.unroll_batch} > distill.online.buffer_prompts="
                         f"{o.buffer_prompts}: one refresh must fit in the buffer"))
    for key, v in (("distill.output_weight", d.output_weight), ("distill.rollout_steps", d.rollout_steps)):
        if v:
            problems.append((key, f"{v}: not supported with distill.source: online (the output-space loss and "
                             "rollouts train on a trajectory store); use 0, or distill.source: store"))
    if stochastic_sampler(p.sampling.sampler):
        problems.append(("sampling.sampler", f"{p.sampling.sampler}'s step draws random noise: distill.source: online "
                         "resumes by re-unrolling, which would not give the same trajectories; use a deterministic "
                         "sampler or distill.source: store"))
    if p.world.precision == "bf16":
        problems.append(("world.precision", "bf16: distill.source: online unrolls the teacher in the UNet's own dtype, "
                         "so its pairs would not be the bf16 trajectories the store holds; use fp32 (auto is checked "
                         "by the stage on its device)"))
    return problems


def _schedule_problems(p: Params) -> list[tuple[str, str]]:
    """``clock.adaptor_steps: auto`` and ``evaluate.fronts``: budgets inside the schedule, calibration prompts that
    exist and are not evaluation prompts."""
    problems, steps = [], p.sampling.steps
    auto = p.clock.adaptor_steps == "auto"
    if auto and p.clock.budget is None:
        problems.append(("clock.budget", "clock.adaptor_steps: auto needs the number of adaptor steps to choose"))
    if auto and p.clock.budget is not None and not 1 <= p.clock.budget <= steps - 1:
        problems.append(("clock.budget", f"{p.clock.budget} adaptor steps do not fit sampling.steps={steps} (allowed "
                         f"1..{steps - 1}: step 0 always runs the full UNet)"))
    if auto and p.distill.source == "online":
        problems.append(("clock.adaptor_steps", "auto trains on every step of the trajectory store: use distill.source: "
                         "store (online distillation needs the schedule before it unrolls)"))
    if not auto and p.clock.budget is not None:
        problems.append(("clock.budget", "only read with clock.adaptor_steps: auto; remove it or set auto"))
    if p.clock.refine_top > 1 and not (auto and p.clock.finetune_steps):
        problems.append(("clock.refine_top", "fine-tunes the best schedules of clock.adaptor_steps: auto: it needs auto "
                         "and clock.finetune_steps > 0 (or set it to 1)"))
    if auto and p.clock.budget is not None and p.clock.refine_top > math.comb(steps - 1, p.clock.budget):
        problems.append(("clock.refine_top", f"{p.clock.refine_top} > the {math.comb(steps - 1, p.clock.budget)} "
                         f"schedules of {p.clock.budget} adaptor steps in {steps} sampler steps"))
    bad = sorted(b for b in p.evaluate.front_budgets if not 1 <= b <= steps - 1)
    if bad:
        problems.append(("evaluate.front_budgets", f"{bad} do not fit sampling.steps={steps} (allowed 1..{steps - 1})"))
    if bool(p.evaluate.fronts) != bool(p.evaluate.front_budgets):
        problems.append(("evaluate.front_budgets", "evaluate.fronts and evaluate.front_budgets go together (both empty "
                         "= no fronts)"))
    if "distilled" in p.evaluate.fronts and p.adaptor.kind in TRAINING_FREE:
        problems.append(("evaluate.fronts", f"`distilled` needs a trained adaptor (adaptor.kind is {p.adaptor.kind})"))
    if (auto or p.evaluate.fronts) and p.clock.schedule_score == "val_fid" and not p.prepare.val_prompts:
        problems.append(("clock.schedule_score", "val_fid scores schedules on the validation split: set "
                         "prepare.val_prompts and prepare.val_reference_images (or use sample_change)"))
    if auto or p.evaluate.fronts:
        pool = p.prepare.val_prompts or min(p.distill.heldout_prompts, p.prepare.distill_prompts)
        if p.clock.calibration_prompts > pool:
            where = "prepare.val_prompts" if p.prepare.val_prompts else "distill.heldout_prompts (no validation split)"
            problems.append(("clock.calibration_prompts", f"{p.clock.calibration_prompts} > {where}={pool}: the schedule "
                             "search samples validation prompts only, never the evaluation ones"))
    return problems


def cross_check(p: Params, root: Path) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    steps = p.sampling.steps
    auto = p.clock.adaptor_steps == "auto"
    problems += _clock_problems("clock", steps, p.clock.period, None if auto else p.clock.adaptor_steps,
                                "r_out_prev" in p.adaptor.inputs)
    problems += _schedule_problems(p)
    if p.clock.adaptor_steps is None and p.clock.period == 1 and p.adaptor.kind not in TRAINING_FREE:
        problems.append(("clock.period", "clock 1 never runs the adaptor, so there is nothing to distill; use >= 2"))
    if p.clock.adaptor_steps is not None and not p.clock.adaptor_steps:
        problems.append(("clock.adaptor_steps", "empty list: no adaptor steps (use null to clock by `period`)"))
    if "r_in" not in p.adaptor.inputs and "r_out_prev" not in p.adaptor.inputs:
        problems.append(("adaptor.inputs", "needs at least one feature input: r_in or r_out_prev"))
    if len(set(p.adaptor.inputs)) != len(p.adaptor.inputs):
        problems.append(("adaptor.inputs", f"duplicate entries in {p.adaptor.inputs}"))
    if p.adaptor.kind in TRAINING_FREE and list(p.adaptor.inputs) != ["r_out_prev"]:
        problems.append(("adaptor.inputs", f"the {p.adaptor.kind} adaptor only uses [r_out_prev]"))
    cuts_ok = None
    try:
        if isinstance(p.world, SDWorld):
            problems += _sd_problems(p, root)
        cuts_ok = valid_teacher_cuts(p.world, root)
    except ConfigError as e:
        problems += e.problems
    except Exception as e:  # a broken teacher config is itself a params problem
        problems.append(("world.teacher" if isinstance(p.world, EmbeddedWorld) else "world.model",
                         f"cannot read the teacher's UNet config: {e}"))
    if cuts_ok is not None:
        if p.cut not in cuts_ok:
            problems.append(("cut", f"cut={p.cut} is not possible for this teacher; valid cuts: {cuts_ok} "
                             "(1 = the paper's default)"))
        bad = [c for c in p.trajectories.cuts if c not in cuts_ok]
        if bad:
            problems.append(("trajectories.cuts", f"{bad} not possible for this teacher; valid cuts: {cuts_ok}"))
        bad = [c for c in p.ablate.cuts if c not in cuts_ok]
        if bad and "cut" in p.ablate.ablations:
            problems.append(("ablate.cuts", f"{bad} not possible for this teacher; valid cuts: {cuts_ok}"))
    if p.cut not in p.trajectories.cuts:
        problems.append(("trajectories.cuts", f"must include cut={p.cut} (the cut distill trains at); got {p.trajectories.cuts}"))
    if not p.trajectories.cuts:
        problems.append(("trajectories.cuts", "empty list"))
    if p.distill.heldout_prompts >= p.prepare.distill_prompts:
        problems.append(("distill.heldout_prompts", f"{p.distill.heldout_prompts} leaves no training prompts out of "
                         f"prepare.distill_prompts={p.prepare.distill_prompts}"))
    problems += _online_problems(p)
    problems += _edit_problems(p)
    if p.evaluate.n_samples > p.prepare.eval_prompts:
        problems.append(("evaluate.n_samples", f"{p.evaluate.n_samples} > prepare.eval_prompts={p.prepare.eval_prompts}"))
    pool = p.prepare.eval_prompts if p.ablate.split == "heldout" else p.prepare.val_prompts
    if p.ablate.n_samples > pool:
        problems.append(("ablate.n_samples", f"{p.ablate.n_samples} > prepare.{'eval' if p.ablate.split == 'heldout' else 'val'}"
                         f"_prompts={pool} (ablate.split: {p.ablate.split})"))
    if (p.prepare.val_prompts == 0) != (p.prepare.val_reference_images == 0):
        problems.append(("prepare.val_reference_images", "a validation split needs both prepare.val_prompts and "
                         "prepare.val_reference_images > 0 (or both 0)"))
    if isinstance(p.world, EmbeddedWorld) and p.prepare.distill_prompts + p.prepare.val_prompts + \
            p.prepare.val_reference_images > TRAIN_IMAGES:
        problems.append(("prepare.val_reference_images", f"distill_prompts + val_prompts + val_reference_images > "
                         f"{TRAIN_IMAGES} training images"))
    if not isinstance(p.world, EmbeddedWorld) and p.prepare.val_prompts:
        problems.append(("prepare.val_prompts", "the validation split is built for the embedded world only"))
    if p.sampling.steps not in p.evaluate.front_steps:
        problems.append(("evaluate.front_steps", f"must include sampling.steps={p.sampling.steps} (the baseline)"))
    if "levers" in p.ablate.ablations:
        for name, lv in p.ablate.levers.items():
            steps_l = lv.steps or steps
            period = lv.period if lv.period is not None else (p.clock.period if lv.adaptor_steps is None else None)
            a_steps = lv.adaptor_steps if lv.adaptor_steps is not None else (None if lv.period is not None else p.clock.adaptor_steps)
            a_steps = None if a_steps == "auto" else a_steps
            problems += _clock_problems(f"ablate.levers.{name}", steps_l, period, a_steps,
                                        "r_out_prev" in (lv.inputs or p.adaptor.inputs))
            if lv.cut is not None and lv.cut not in p.trajectories.cuts:
                problems.append((f"ablate.levers.{name}.cut", f"{lv.cut} not in trajectories.cuts={p.trajectories.cuts}"))
            if (lv.distill_prompts or 0) > p.prepare.distill_prompts:
                problems.append((f"ablate.levers.{name}.distill_prompts", f"> prepare.distill_prompts={p.prepare.distill_prompts}"))
    if p.ablate.distill_prompts > p.prepare.distill_prompts:
        problems.append(("ablate.distill_prompts", f"{p.ablate.distill_prompts} > prepare.distill_prompts="
                         f"{p.prepare.distill_prompts}"))
    if isinstance(p.world, EmbeddedWorld) and p.prepare.eval_prompts + p.prepare.reference_images > HELDOUT_IMAGES:
        problems.append(("prepare.reference_images", f"eval_prompts + reference_images = "
                         f"{p.prepare.eval_prompts + p.prepare.reference_images} > {HELDOUT_IMAGES} held-out images"))
    if p.evaluate.grid_images > p.evaluate.n_samples:
        problems.append(("evaluate.grid_images", f"{p.evaluate.grid_images} > evaluate.n_samples={p.evaluate.n_samples}"))
    if p.evaluate.batch_size > 0 and p.evaluate.kid_subset_size < 2:
        problems.append(("evaluate.kid_subset_size", "must be >= 2"))
    if "schedule" in p.ablate.ablations:
        for name, s in p.ablate.schedules.items():
            problems += _clock_problems(f"ablate.schedules.{name}", steps, None, s, True)
    for k in ("step_counts", "training_steps"):
        if (("steps" in p.ablate.ablations and k == "step_counts") or ("training" in p.ablate.ablations and k == "training_steps")):
            short = [s for s in getattr(p.ablate, k) if s < 2]
            if short:
                problems.append((f"ablate.{k}", f"{short}: Clockwork needs >= 2 steps"))
    return problems


def file_problems(p: Params, keys: tuple[str, ...], root: Path) -> list[tuple[str, str]]:
    problems = []
    w = p.world
    for key in keys:
        field = key.split(".", 1)[1]
        if not hasattr(w, field):
            continue  # a key of the other world kind
        value = getattr(w, field)
        if value is None:
            continue
        path = resolve_path(value, root)
        if field == "data_root":
            missing = [f for f in FASHION_FILES if not (path / f).is_file()]
            if missing:
                problems.append((key, f"{path} lacks {', '.join(missing)} (install Debian's dataset-fashion-mnist: "
                                 "apt-get install -y dataset-fashion-mnist)"))
        elif field in ("teacher", "scorer"):
            if not (path / "config.json").is_file():
                stage = "teacher" if field == "teacher" else "clip"
                problems.append((key, f"no model at {path} (config.json missing); it is committed with the repository, "
                                 f"or train one with `dvc unfreeze {stage} && dvc repro {stage}`"))
        elif field == "model":
            if _looks_local(value) and not (path / "model_index.json").is_file():
                problems.append((key, f"{path} is not a diffusers pipeline folder (model_index.json missing)"))
        elif field in ("captions", "distill_captions"):
            if not path.is_file():
                problems.append((key, f"no such file: {path} (COCO 2017 annotations/captions_val2017.json)"))
        elif field == "reference_images":
            if not path.is_dir():
                problems.append((key, f"no such folder: {path} (COCO 2017 val2017 images)"))
    return problems


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([("(file)", f"{path} not found")], source=str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([("(file)", f"not valid YAML: {e}")], source=str(path)) from e
    if not isinstance(raw, dict):
        raise ConfigError([("(file)", "must be a mapping of sections")], source=str(path))
    return raw


def validate(raw: dict, root: str | os.PathLike = ".", files_for: str | None = None,
             source: str = DEFAULT_PARAMS) -> Params:
    """Validate a params dict; raise :class:`ConfigError` naming every offending key."""
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(problems_from(e), source) from None
    root = Path(root)
    problems = cross_check(p, root)
    if not problems and files_for is not None:
        problems = file_problems(p, STAGE_FILES[files_for], root)
    if problems:
        raise ConfigError(problems, source)
    return p


class StageParams:
    """The sections one stage declared; reading any other section is a bug (it would not be tracked)."""

    def __init__(self, stage: str, params: Params):
        self._stage = stage
        self._params = params
        self._sections = STAGE_SECTIONS[stage]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._sections:
            raise AttributeError(f"stage {self._stage!r} does not declare params section {name!r} "
                                 f"(declared: {list(self._sections)}); add it to STAGE_SECTIONS and dvc.yaml")
        return getattr(self._params, name)

    def flat(self) -> dict[str, Any]:
        """Flat dotted params of the declared sections (for MLflow)."""
        out: dict[str, Any] = {}
        for s in self._sections:
            v = getattr(self._params, s)
            _flatten(s, v.model_dump() if isinstance(v, BaseModel) else v, out)
        return out


def _flatten(prefix: str, v: Any, out: dict) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flatten(f"{prefix}.{k}", x, out)
    else:
        out[prefix] = v


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))


def load_params(stage: str, path: str | os.PathLike | None = None, exit_on_error: bool = True) -> StageParams:
    """Validate the whole params file, check the stage's input files, return the stage's sections.

    On a problem: print ``params.yaml: key: message`` lines to stderr and exit with code 2
    (or raise :class:`ConfigError` with ``exit_on_error=False``).
    """
    if stage not in STAGE_SECTIONS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_SECTIONS)}")
    path = Path(path) if path is not None else params_path()
    try:
        raw = read_yaml(path)
        params = validate(raw, root=Path.cwd(), files_for=stage, source=path.name)
    except ConfigError as e:
        if not exit_on_error:
            raise
        print(f"error: invalid parameters, stage {stage!r} not run\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    return StageParams(stage, params)


def main(argv: list[str] | None = None) -> int:
    """``python pipeline/config.py [params.yaml]``: validate a params file (exit 2 on a problem)."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else params_path()
    try:
        validate(read_yaml(path), root=Path.cwd(), source=path.name)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
