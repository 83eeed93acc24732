"""params.yaml, validated before any work starts.

Every section is a pydantic model with ``extra="forbid"`` and strict types, so an unknown key or a wrong
type fails at once. Cross-field rules (a cut the teacher cannot take, adaptor steps outside the schedule,
more evaluation images than prepared prompts, ...) and missing input files are checked next. Any problem
gives one message per offending key, ``params.yaml: distill.lr: ...``, and exit code 2 - before a stage
writes anything.

A stage calls ``load_params("distill")`` and gets only the sections it declares in dvc.yaml
(:data:`STAGE_SECTIONS`; a test keeps the two in sync), so what a stage reads is what DVC tracks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PARAMS_ENV = "CLOCKWORK_PARAMS"
DEFAULT_PARAMS = "params.yaml"

SAMPLERS = ("dpm++", "dpm", "pndm", "ddim", "euler", "heun")
ADAPTOR_KINDS = ("identity", "resnet", "unet-light")
ADAPTOR_INPUTS = ("r_in", "r_out_prev", "time", "text")
ABLATIONS = ("adaptor_type", "schedule", "cut", "inputs", "training", "sampler", "steps", "levers")
SPLITS = ("heldout", "val")
TRAIN_IMAGES = 60_000  # Fashion-MNIST train: distillation prompts and the validation split are disjoint draws from it
HELDOUT_IMAGES = 10_000  # Fashion-MNIST t10k: evaluation prompts and reference images are disjoint draws from it
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Device = Literal["auto", "cpu", "cuda"]


# ---------------------------------------------------------------------------------------------- world
class EmbeddedWorld(Section):
    """The offline world: the committed 5 M-param teacher on captioned 32x32 Fashion-MNIST."""

    kind: Literal["embedded"]
    data_root: str = "/usr/share/datasets/fashion-mnist"
    teacher: str = "clockwork/assets/teacher"
    scorer: str = "clockwork/assets/scorer"


class SD15World(Section):
    """Stable Diffusion v1.5 on MS-COCO 2017 (GPU; downloads unless every path is local)."""

    kind: Literal["sd15"]
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or a local StableDiffusionPipeline folder
    captions: str  # COCO captions json (annotations/captions_val2017.json): evaluation prompts
    distill_captions: str | None = None  # captions json for distillation prompts (e.g. captions_train2017.json)
    reference_images: str  # folder of COCO val2017 images (FID reference)
    clip_model: str = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"
    resolution: PosInt = 512
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"


World = Annotated[Union[EmbeddedWorld, SD15World], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------- stages
class Prepare(Section):
    distill_prompts: PosInt = 512  # training-split captions whose trajectories are unrolled
    eval_prompts: PosInt = 300  # held-out captions the methods are evaluated on
    reference_images: PosInt = 1000  # held-out real images for FID/KID
    val_prompts: NonNegInt = 0  # validation split: training-split captions not distilled on (0 = none)
    val_reference_images: NonNegInt = 0  # its FID reference: other training-split images
    seed: NonNegInt = 0
    device: Device = "auto"


class Teacher(Section):
    """Training of the embedded teacher (frozen stage; see pipeline/teacher_gpu.py for the GPU runs)."""

    batch_size: PosInt = 512
    lr: PosFloat = 4e-4
    warmup_steps: NonNegInt = 500
    max_steps: PosInt = 100_000
    minutes: PosFloat = 8.0
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.9995
    seed: NonNegInt = 0
    compile: bool = False
    workdir: str = "models/teacher_ckpt"
    device: Device = "auto"


class Clip(Section):
    """Training of the embedded CLIP stand-in (frozen stage)."""

    steps: PosInt = 1500
    batch: PosInt = 256
    lr: PosFloat = 2e-3
    seed: NonNegInt = 0
    device: Device = "auto"


class Sampling(Section):
    sampler: Literal[SAMPLERS] = "dpm++"
    steps: Annotated[int, Field(ge=2)] = 8
    guidance: Annotated[float, Field(ge=1.0)] = 2.0


class Trajectories(Section):
    cuts: list[PosInt] = [1, 2]
    shard_size: PosInt = 64
    seed: NonNegInt = 0
    device: Device = "auto"


class Adaptor(Section):
    kind: Literal[ADAPTOR_KINDS] = "resnet"
    width: PosInt = 128
    depth: PosInt = 2
    inputs: list[Literal[ADAPTOR_INPUTS]] = list(ADAPTOR_INPUTS)


class ClockParams(Section):
    period: int = 2  # full UNet every `period`-th sampler step (0-based step % period == 0)
    adaptor_steps: list[int] | None = None  # explicit 0-based adaptor steps; overrides `period`


class Distill(Section):
    steps: PosInt = 1500
    batch_size: PosInt = 16
    lr: PosFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: PosFloat | None = 1.0
    seed: NonNegInt = 0
    checkpoint_every: PosInt = 250
    log_every: PosInt = 25
    heldout_prompts: NonNegInt = 64  # last trajectories kept out of training for heldout_mse
    rollout_steps: NonNegInt = 0  # then this many more steps on the teacher's + Clockwork's own rollouts (0 = off)
    # weight w of the output-space term: loss = MSE(r_out) + w * MSE(UNet output through the teacher's
    # high-res decoder); 0 = r_out MSE only. > 0 loads the teacher and data/prepared in the distill stage.
    output_weight: Annotated[float, Field(ge=0)] = 0.0
    device: Device = "auto"


class Evaluate(Section):
    n_samples: PosInt = 300
    seed: NonNegInt = 1234
    batch_size: PosInt = 100
    fid_bootstrap: Annotated[int, Field(ge=2)] = 10
    kid_subsets: PosInt = 50
    kid_subset_size: PosInt = 100
    latency_runs: PosInt = 5
    grid_images: PosInt = 8
    front_steps: list[Annotated[int, Field(ge=1)]] = [3, 4, 5, 6, 7, 8]  # the plain baseline's step counts: the front
    device: Device = "auto"


class Lever(Section):
    """One row of the `levers` ablation: what it changes from the default Clockwork method (unset = unchanged)."""

    adaptor: Literal[ADAPTOR_KINDS] | None = None
    width: PosInt | None = None
    depth: PosInt | None = None
    inputs: list[Literal[ADAPTOR_INPUTS]] | None = None
    period: PosInt | None = None
    adaptor_steps: list[int] | None = None
    cut: PosInt | None = None
    steps: Annotated[int, Field(ge=2)] | None = None  # sampler steps (the adaptor is distilled for them)
    distill_steps: PosInt | None = None
    distill_prompts: PosInt | None = None
    output_weight: Annotated[float, Field(ge=0)] | None = None
    rollout_steps: NonNegInt | None = None


class Ablate(Section):
    ablations: list[Literal[ABLATIONS]] = list(ABLATIONS)
    n_samples: PosInt = 100
    distill_steps: PosInt = 400  # distillation budget per ablation row
    distill_prompts: PosInt = 128  # prompts unrolled for rows that need their own trajectories
    forward_noised_images: PosInt = 128  # training images for the forward-noised (classic) rows
    resnet_wide_width: PosInt = 384
    unet_light_width: PosInt = 32
    schedules: dict[str, list[int]] = {"late_half": [4, 5, 6, 7], "early_middle": [2, 3, 4, 5]}
    samplers: list[Literal[SAMPLERS]] = ["dpm++", "dpm", "pndm", "ddim"]
    step_counts: list[Annotated[int, Field(ge=2)]] = [4, 6, 8]
    training_steps: list[Annotated[int, Field(ge=2)]] = [4, 8]
    cuts: list[PosInt] = [1, 2]
    latency_runs: PosInt = 3
    fid_bootstrap: Annotated[int, Field(ge=2)] = 10
    batch_size: PosInt = 50
    seed: NonNegInt = 1234  # initial noise of the evaluated images (and the forward-noised training images)
    split: Literal[SPLITS] = "heldout"  # heldout: the evaluation prompts | val: the validation split (prepare.val_*)
    front_steps: list[Annotated[int, Field(ge=1)]] = [3, 4, 5, 6, 7, 8]  # plain baseline rows every row is compared with
    levers: dict[str, Lever] = {}  # the `levers` ablation: named variants of the default Clockwork method
    device: Device = "auto"


class Report(Section):
    notebooks: str = "analysis"
    out: str = "reports/analysis"
    timeout_s: PosInt = 600


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
    report: Report
    # Ray Tune sweep settings: validated by pipeline/sweep.py (parse_sweep), read by no DVC stage.
    sweep: dict[str, Any] | None = None
    # `sweep:` belongs to pipeline/sweep.py (no DVC stage reads it); it is validated there by SweepParams,
    # kept opaque here so this module does not import the Ray-side code. Optional: absent = no sweep.
    sweep: dict[str, Any] | None = None


# What each stage reads; dvc.yaml declares exactly these params (tests/test_config.py checks).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("world", "prepare"),
    "teacher": ("world", "teacher"),
    "clip": ("world", "clip"),
    "trajectories": ("world", "sampling", "trajectories"),
    "distill": ("world", "sampling", "cut", "adaptor", "clock", "distill"),
    "evaluate": ("world", "sampling", "cut", "clock", "evaluate"),
    "ablate": ("world", "sampling", "trajectories", "cut", "adaptor", "clock", "distill", "ablate"),
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
    "report": (),
    "report_full": (),
    "report_default": (),
}


class ConfigError(ValueError):
    """One or more problems in params.yaml; ``problems`` is a list of (dotted key, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = DEFAULT_PARAMS):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {k}: {m}" for k, m in problems))


# ------------------------------------------------------------------------------------------ checking
def _pydantic_problems(err: ValidationError, raw: dict) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # A discriminated union puts the tag in the location (world.embedded.teacher); drop it.
        if len(loc) > 1 and loc[0] == "world" and loc[1] in ("embedded", "sd15"):
            loc = [loc[0]] + loc[2:]
        key = ".".join(loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo? see params.yaml for the keys this section takes)"
        value = e.get("input")
        if isinstance(value, str) and e["type"] in ("float_type", "int_type"):
            msg += f" (got the string {value!r}; YAML reads 1e-4 as a string - write 1.0e-4)"
        elif e["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
            msg += f" (got {value!r})"
        out.append((key, msg))
    return out


def teacher_unet_config(world: EmbeddedWorld | SD15World, root: Path) -> dict:
    """The teacher's UNet config, read without loading weights (for cut validation and FLOPs)."""
    import json

    if isinstance(world, EmbeddedWorld):
        cfg_file = _resolve(world.teacher, root) / "config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            return {k: v for k, v in cfg.items() if not k.startswith("_")}
        from clockwork.embedded.teacher import TEACHER_CONFIG

        return dict(TEACHER_CONFIG)
    local = _resolve(world.model, root) / "unet" / "config.json"
    if local.is_file():
        cfg = json.loads(local.read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    from clockwork.flops import SD15

    return dict(SD15)


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


def _resolve(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


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


def cross_check(p: Params, root: Path) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    steps = p.sampling.steps
    problems += _clock_problems("clock", steps, p.clock.period, p.clock.adaptor_steps, "r_out_prev" in p.adaptor.inputs)
    if p.clock.adaptor_steps is None and p.clock.period == 1 and p.adaptor.kind != "identity":
        problems.append(("clock.period", "clock 1 never runs the adaptor, so there is nothing to distill; use >= 2"))
    if p.clock.adaptor_steps is not None and not p.clock.adaptor_steps:
        problems.append(("clock.adaptor_steps", "empty list: no adaptor steps (use null to clock by `period`)"))
    if "r_in" not in p.adaptor.inputs and "r_out_prev" not in p.adaptor.inputs:
        problems.append(("adaptor.inputs", "needs at least one feature input: r_in or r_out_prev"))
    if len(set(p.adaptor.inputs)) != len(p.adaptor.inputs):
        problems.append(("adaptor.inputs", f"duplicate entries in {p.adaptor.inputs}"))
    if p.adaptor.kind == "identity" and list(p.adaptor.inputs) != ["r_out_prev"]:
        problems.append(("adaptor.inputs", "the identity adaptor only uses [r_out_prev]"))
    try:
        cuts_ok = valid_teacher_cuts(p.world, root)
    except Exception as e:  # a broken teacher config is itself a params problem
        problems.append(("world.teacher" if isinstance(p.world, EmbeddedWorld) else "world.model",
                         f"cannot read the teacher's UNet config: {e}"))
        cuts_ok = None
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
        path = _resolve(value, root)
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
        raise ConfigError(_pydantic_problems(e, raw), source) from None
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
