"""The sections of params.yaml as pydantic models, and the one error format every check reports in.

``extra="forbid"`` and strict types: an unknown key or a wrong type fails at once, as one
``(dotted key, message)`` problem of a :class:`ConfigError` (``params.yaml: distill.lr: ...``). The `sweep:`
section's models are in pipeline/config_sweep.py; pipeline/config.py composes them into ``Params``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clockwork.precision import PRECISIONS

DEFAULT_PARAMS = "params.yaml"

SAMPLERS = ("dpm++", "dpm", "pndm", "ddim", "euler", "heun")
ADAPTOR_KINDS = ("identity", "forecast", "resnet", "unet-light")  # identity, forecast (order 1): training-free
ADAPTOR_INPUTS = ("r_in", "r_out_prev", "time", "text")
ABLATIONS = ("adaptor_type", "schedule", "cut", "inputs", "training", "sampler", "steps", "levers")
SPLITS = ("heldout", "val")
TRAINING_FREE = ("identity", "forecast")  # adaptor kinds with nothing to distil
FRONT_ADAPTORS = ("distilled", *TRAINING_FREE)  # evaluate.fronts: the distill stage's adaptor, training-free ones
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")  # the SD family world.kind: sd loads


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Device = Literal["auto", "cpu", "cuda"]


# ---------------------------------------------------------------------------------------------- world
Precision = Literal[PRECISIONS]  # autocast / Inception precision (clockwork.precision): auto = bf16 on AMX CPUs


class EmbeddedWorld(Section):
    """The offline world: the committed 5 M-param teacher on captioned 32x32 Fashion-MNIST."""

    kind: Literal["embedded"]
    data_root: str = "/usr/share/datasets/fashion-mnist"
    teacher: str = "clockwork/assets/teacher"
    scorer: str = "clockwork/assets/scorer"
    precision: Precision = "fp32"  # sampling autocast (clockwork.precision): fp32 reproduces on every CPU; auto = bf16 on AMX CPUs


class SDWorld(Section):
    """An SD-family diffusers pipeline (SD 1.x, SD 2.x incl. v-prediction, SDXL) on COCO-format captions and images."""

    kind: Literal["sd"]
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or a local save_pretrained folder
    pipeline: Literal[("auto", *SD_PIPELINES)] = "auto"  # auto: the model's model_index.json _class_name
    captions: str  # COCO captions json (annotations/captions_val2017.json): evaluation prompts
    distill_captions: str | None = None  # captions json for distillation prompts (e.g. captions_train2017.json)
    reference_images: str  # folder of the captions' images (FID reference)
    clip_model: str = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"
    resolution: PosInt = 512  # square images of this size (SDXL: 1024); a multiple of the UNet's total downsampling
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # the pipeline's weights (float32 on a CPU)
    precision: Precision = "fp32"  # autocast on top of dtype: auto = bf16 on AMX CPUs only (results then depend on the CPU)


World = Annotated[Union[EmbeddedWorld, SDWorld], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------- stages
class Prepare(Section):
    distill_prompts: PosInt = 512  # training-split captions whose trajectories are unrolled
    eval_prompts: PosInt = 300  # held-out captions the methods are evaluated on
    reference_images: PosInt = 1000  # held-out real images for FID/KID
    val_prompts: NonNegInt = 0  # validation split: training-split captions not distilled on (0 = none)
    val_reference_images: NonNegInt = 0  # its FID reference: other training-split images
    seed: NonNegInt = 0
    # FID Inception: fp32 | bf16 | auto (bf16 on CPUs with AMX, ~2.1x faster, FID within ~0.3%; else fp32).
    # The reference statistics record it and every method's features follow them. fp32 (the default) gives the
    # same numbers on every CPU; auto makes them depend on whether the CPU has AMX.
    inception_precision: Precision = "fp32"
    device: Device = "auto"


class Teacher(Section):
    """Training of the embedded teacher (frozen stage; see scripts/gpu/teacher_gpu.py for the GPU runs)."""

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
    # explicit 0-based adaptor steps (overrides `period`), or auto: the distill stage trains the adaptor on every step
    # 1..steps-1, chooses the best `budget` of them on calibration prompts (clockwork.schedule), then fine-tunes on those
    adaptor_steps: list[int] | Literal["auto"] | None = None
    budget: PosInt | None = None  # auto: how many adaptor steps (fixes the GFLOPs)
    finetune_steps: NonNegInt = 0  # auto: distillation steps on the chosen schedule after the all-steps training
    # auto with finetune_steps: the all-steps adaptor's best `refine_top` schedules are each fine-tuned and scored again;
    # the best fine-tuned pair is kept (the schedule and its adaptor chosen together; 1 = the all-steps choice as is)
    refine_top: PosInt = 1
    # the schedule search (auto, evaluate.fronts) samples this many calibration prompts: the validation split's first
    # (prepare.val_prompts), else the distillation prompts held out of training (distill.heldout_prompts) - never the
    # evaluation prompts - from noise of this seed
    calibration_prompts: PosInt = 32
    calibration_seed: NonNegInt = 7
    # how a candidate schedule is scored: sample_change = MSE of the final sample against the full UNet's (cheap; one
    # batch); val_fid = FID of its images of the calibration prompts against the validation split's reference images
    # (what the evaluation measures; one sampling + Inception pass per candidate: a GPU's; needs prepare.val_*)
    schedule_score: Literal["sample_change", "val_fid"] = "sample_change"


class DistillOnline(Section):
    """``distill.source: online``: the teacher unrolls fresh pairs during training (clockwork.online.distill_online)."""

    prompts: NonNegInt = 0  # training captions streamed (0 = all: the prepared distillation prompts but the held-out
    #                         ones (embedded world), the world.distill_captions captions but the store's (sd world))
    buffer_prompts: PosInt = 256  # prompts whose pairs the on-device ring buffer holds
    unroll_batch: PosInt = 16  # prompts per teacher unroll (one refresh of the buffer)
    refresh_every: PosInt = 8  # adaptor steps between refreshes
    seed: NonNegInt | None = None  # prompt order and noise of the unrolls; null = distill.seed
    compile: Literal[True, False, "auto"] = "auto"  # torch.compile the teacher's step; auto = on CUDA only


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
    # store: train on data/trajectories (what `trajectories` unrolled); online: the teacher unrolls as training goes
    # (distill.online), data/trajectories then only gives the held-out prompts' pairs (heldout_mse)
    source: Literal["store", "online"] = "store"
    memory_cap_gb: PosFloat | None = 8.0  # store: a cut larger than this (GB) is memory-mapped, not loaded; null = load
    online: DistillOnline = DistillOnline()
    # data-parallel online distillation on Ray Train (docs/DISTRIBUTED.md): batch_size stays the global batch and
    # each worker unrolls 1/workers of the prompts; 1 = in process, no Ray. The cluster: $RAY_ADDRESS, else local.
    workers: PosInt = 1
    # the learning-rate rule: null = distill.lr at any batch_size; N = the linear rule, lr x batch_size / N
    lr_reference_batch: PosInt | None = None
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
    # Clockwork fronts: for each adaptor listed (distilled = the distill stage's; identity = DeepCache's cache;
    # forecast = TaylorSeer-style extrapolation) the best schedule per budget (clock.calibration_*), each evaluated
    fronts: list[Literal[FRONT_ADAPTORS]] = []
    front_budgets: list[PosInt] = []  # numbers of adaptor steps of the fronts
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


EDIT_ATTRIBUTES = ("colour", "size", "item")  # clockwork.embedded.edits.ATTRIBUTES
# distilled: the distill stage's adaptor (models/adaptor, made for sampling.sampler / sampling.steps);
# edit-distilled: the same architecture distilled on the editing sampler's own trajectories (DDIM edit.steps)
EDIT_ADAPTORS = ("identity", "distilled", "edit-distilled")


class Edit(Section):
    """Plug-and-Play editing of held-out images (stage `edit`, clockwork/editing.py); embedded world only."""

    n_images: NonNegInt = 48  # edits, one attribute each (in rotation); 0 = stage off
    attributes: list[Literal[EDIT_ATTRIBUTES]] = list(EDIT_ATTRIBUTES)
    steps: Annotated[int, Field(ge=2)] = 16  # DDIM steps of the inversion and of the generation
    guidance: PosFloat = 2.0
    # chosen for the embedded teacher on training-split images (reports/edit/validation.json); PnP's own: 0.8 / 0.5
    feature_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    attn_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    clocks: list[Annotated[int, Field(ge=2)]] = [2, 4]
    adaptors: list[Literal[EDIT_ADAPTORS]] = list(EDIT_ADAPTORS)
    # edit-distilled: trajectories of the first distill_prompts distillation prompts, distill_steps Adam steps
    # (the distill section's optimiser), the adaptor at every step but the first
    distill_prompts: PosInt = 128
    distill_steps: PosInt = 1500
    front_steps: list[Annotated[int, Field(ge=2)]] = [6, 8, 12]  # the full UNet with fewer steps: the trivial alternative
    sdedit_strength: Annotated[float, Field(gt=0, le=1)] = 0.9
    batch_size: PosInt = 48
    seed: NonNegInt = 0
    grid_images: NonNegInt = 8
    device: Device = "auto"


class Report(Section):
    notebooks: str = "analysis"
    out: str = "reports/analysis"
    timeout_s: PosInt = 600


class ConfigError(ValueError):
    """One or more problems in params.yaml; ``problems`` is a list of (dotted key, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str = DEFAULT_PARAMS):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {k}: {m}" for k, m in problems))


# Location parts pydantic adds for a union's member (world.embedded.teacher, sweep.space.width.list[int]).
_UNION_TAGS = ("list[", "dict[", "function-", "tagged-union[")


def problems_from(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """One ``(dotted key, message)`` per offending key; ``prefix`` names the section a model was validated as."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) > 1 and loc[0] == "world" and loc[1] in ("embedded", "sd"):
            loc = [loc[0]] + loc[2:]
        union = any(p.startswith(_UNION_TAGS) for p in loc)
        loc = [p for p in loc if not p.startswith(_UNION_TAGS)]
        key = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        if union and key in seen:  # a value that fits no member fails once per member: keep the first
            continue
        seen.add(key)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            where = "docs/SWEEP.md" if key.startswith("sweep.") else "params.yaml"
            msg = f"unknown key (typo? see {where} for the keys this section takes)"
        value = e.get("input")
        if isinstance(value, str) and e["type"] in ("float_type", "int_type"):
            msg += f" (got the string {value!r}; YAML reads 1e-4 as a string - write 1.0e-4)"
        elif e["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
            msg += f" (got {value!r})"
        out.append((key, msg))
    return out
