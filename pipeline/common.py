"""Reusable stage logic: the world (teacher, prompts, sampler), a method spec, sampling with or without
Clockwork, scoring a set of images, latency, FLOPs, distilling an adaptor, evaluating a method.

Stages (``pipeline/<stage>.py``) and the Ray Tune sweep compose these; nothing here knows about DVC.
:func:`train_and_evaluate` is the sweep's entry: one adaptor distilled and evaluated per trial.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
PREPARED_DIR = "data/prepared"
TRAJECTORIES_DIR = "data/trajectories"
ADAPTOR_DIR = "models/adaptor"

warnings.filterwarnings("ignore", message=".*algorithm_type.*deprecated.*", category=FutureWarning)
# On a shared CPU, two OpenMP threads per process spin-wait on each other and run several times slower
# than one; CLOCKWORK_THREADS=1 makes every stage single-threaded (default: torch's choice).
if os.environ.get("CLOCKWORK_THREADS"):
    torch.set_num_threads(int(os.environ["CLOCKWORK_THREADS"]))

_T0 = time.perf_counter()


def _report_usage() -> None:
    """One line per stage process: wall and CPU seconds (CPU time is what a shared machine cannot inflate)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[usage] {Path(sys.argv[0]).stem}: wall {time.perf_counter() - _T0:.1f}s, cpu {r.ru_utime + r.ru_stime:.1f}s, "
          f"torch threads {torch.get_num_threads()}, load average {load:.1f}", flush=True)


if Path(sys.argv[0]).parent.name == "pipeline":  # a stage script, not the sweep or a test
    atexit.register(_report_usage)
warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")
try:  # "accelerate not found" and similar notices on every from_pretrained
    from diffusers.utils import logging as _dlogging

    _dlogging.set_verbosity_error()
except Exception:  # noqa: BLE001
    pass


# ------------------------------------------------------------------------------------------------ io
def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (tmp + os.replace): a killed stage never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_png(path: str | os.PathLike, image) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it in only when the block succeeds."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def file_sha(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha1()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]


def code_sha(*paths: str) -> str:
    """Hash of source files (relative to the repo): persisted caches made by other code are not reused."""
    return obj_sha([file_sha(REPO_ROOT / p) for p in paths])


def obj_sha(obj: Any, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def pick_device(pref: str = "auto") -> str:
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested in params.yaml but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return pref


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# -------------------------------------------------------------------------------------------- samplers
def make_sampler(name: str, config) -> Any:
    """A diffusers sampler by the paper's name, built on the teacher's noise schedule."""
    from clockwork.schedulers import make_scheduler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return make_scheduler(name, dict(config))
        except ValueError:
            # DPM-Solver (not ++) refuses the default final_sigmas_type="zero" in diffusers >= 0.30.
            if name != "dpm":
                raise
            return make_scheduler(name, dict(config, final_sigmas_type="sigma_min"))


def adaptor_loop_indices(scheduler, steps: int, clock, uses_r_out_prev: bool = True) -> list[int]:
    """Loop iterations (UNet evaluations) that run the adaptor; step 0 only when r_out(t+1) is not used.

    Mirrors :class:`clockwork.hook.ClockworkHook`'s decision per call.
    """
    from clockwork.clock import loop_to_step

    scheduler.set_timesteps(steps)
    clock.validate(steps, first_step_may_be_adaptor=not uses_r_out_prev)
    out = []
    for i in range(len(scheduler.timesteps)):
        s = loop_to_step(scheduler, i)
        if not clock.is_full(s) and not (s == 0 and uses_r_out_prev):
            out.append(i)
    return out


# ----------------------------------------------------------------------------------------- method spec
@dataclass(frozen=True)
class MethodSpec:
    """One way to sample: a plain baseline (``adaptor="none"``) or Clockwork with an adaptor."""

    sampler: str = "dpm++"
    steps: int = 8
    guidance: float = 2.0
    adaptor: str = "none"  # none | identity | resnet | unet-light
    clock: int = 1  # period; ignored when adaptor_steps is given
    adaptor_steps: tuple[int, ...] | None = None
    cut: int = 1
    width: int = 128
    depth: int = 2
    inputs: tuple[str, ...] = ("r_in", "r_out_prev", "time", "text")
    training: str = "unrolled"  # unrolled | forward_noised | none
    train: tuple[tuple[str, Any], ...] = ()  # distillation overrides of a lever row, sorted (key, value) pairs

    @property
    def train_overrides(self) -> dict[str, Any]:
        return dict(self.train)

    @property
    def is_baseline(self) -> bool:
        return self.adaptor == "none"

    @property
    def needs_training(self) -> bool:
        return self.adaptor not in ("none", "identity")

    def normalized(self) -> "MethodSpec":
        """Fields that do not matter for this kind set to fixed values, so equal methods hash equal."""
        if self.is_baseline:
            return MethodSpec(self.sampler, self.steps, self.guidance, "none", 1, None, 0, 0, 0, (), "none", ())
        if self.adaptor == "identity":
            return dataclasses.replace(self, width=0, depth=0, inputs=("r_out_prev",), training="none", train=())
        return self

    def clock_obj(self):
        from clockwork.clock import Clock

        return Clock(adaptor_steps=self.adaptor_steps) if self.adaptor_steps is not None else Clock(self.clock)

    @property
    def uses_r_out_prev(self) -> bool:
        return "r_out_prev" in self.inputs or self.adaptor == "identity"

    def clock_repr(self):
        if self.is_baseline:
            return 1
        return list(self.adaptor_steps) if self.adaptor_steps is not None else self.clock

    def adaptor_kwargs(self) -> dict:
        if self.adaptor in ("none", "identity"):
            return {}
        return {"width": self.width, "depth": self.depth, "inputs": tuple(self.inputs)}

    def key(self) -> str:
        return obj_sha(dataclasses.asdict(self.normalized()))

    def describe(self) -> dict:
        n = self.normalized()
        return {"sampler": n.sampler, "steps": n.steps, "clock": n.clock_repr(), "cut": None if n.is_baseline else n.cut,
                "adaptor": n.adaptor, "inputs": list(n.inputs), "training": n.training, **({"train": dict(n.train)} if n.train else {})}

    def flat(self) -> dict:
        """Flat dotted params for MLflow."""
        d = self.describe()
        return {"sampler": d["sampler"], "steps": d["steps"], "clock.period": self.clock if self.adaptor_steps is None else "",
                "clock.adaptor_steps": "" if self.adaptor_steps is None else list(self.adaptor_steps),
                "cut": d["cut"], "adaptor.kind": d["adaptor"], "adaptor.width": self.width if self.needs_training else 0,
                "adaptor.depth": self.depth if self.needs_training else 0, "adaptor.inputs": ",".join(d["inputs"]),
                "training": d["training"], "guidance": self.guidance}


# ----------------------------------------------------------------------------------------------- world
@dataclass
class Prepared:
    """What the prepare stage wrote: prompt sets, the embedding table, reference FID statistics."""

    distill_prompts: list[str]
    eval_prompts: list[str]
    info: dict
    table: Any
    reference: Any
    val_prompts: list[str] = field(default_factory=list)  # training-split captions not distilled on
    val_reference: Any = None  # FID statistics of training-split images not distilled on

    @classmethod
    def load(cls, root: str | os.PathLike = PREPARED_DIR) -> "Prepared":
        from clockwork.embedded.text import EmbeddingTable
        from clockwork.metrics import ReferenceStats

        root = Path(root)
        if not (root / "prompts.json").is_file():
            raise FileNotFoundError(f"{root}/prompts.json missing; run the `prepare` stage (dvc repro prepare)")
        info = json.loads((root / "prompts.json").read_text())
        val = root / "val_reference_stats.npz"
        return cls(info["distill_prompts"], info["eval_prompts"], info, EmbeddingTable.load(root / "embeddings.safetensors"),
                   ReferenceStats.load(root / "reference_stats.npz"), info.get("val_prompts", []),
                   ReferenceStats.load(val) if val.is_file() else None)

    def split(self, name: str) -> tuple[list[str], Any]:
        """(prompts, FID reference statistics) of the ``heldout`` evaluation split or the ``val`` split."""
        if name == "heldout":
            return self.eval_prompts, self.reference
        if name == "val":
            if not self.val_prompts or self.val_reference is None:
                raise FileNotFoundError("data/prepared has no validation split; set prepare.val_prompts and "
                                        "prepare.val_reference_images > 0 and dvc repro prepare")
            return self.val_prompts, self.val_reference
        raise ValueError(f"split must be 'heldout' or 'val', got {name!r}")


def teacher_scheduler_config(teacher_dir: str | os.PathLike) -> dict:
    """The embedded teacher's noise schedule, from which every sampler is built: its saved
    ``scheduler/scheduler_config.json``, else the built-in one (:func:`clockwork.embedded.teacher.training_scheduler`)."""
    path = Path(teacher_dir) / "scheduler" / "scheduler_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    from clockwork.embedded.teacher import training_scheduler

    return dict(training_scheduler().config)


class World:
    """The teacher and everything needed to sample from it: embedded (offline) or SD v1.5 (diffusers)."""

    def __init__(self, world_params, device: str = "cpu", root: str | os.PathLike = "."):
        self.params = world_params
        self.kind = world_params.kind
        self.device = device
        self.root = Path(root)
        self._scorer = None
        if self.kind == "embedded":
            from clockwork.embedded.teacher import load_teacher

            self.unet = load_teacher(self._path(world_params.teacher), dtype=torch.float32, device=device)
            self.scheduler_config = teacher_scheduler_config(self._path(world_params.teacher))
            self.vae = None
            self.sd_pipe = None
            self.teacher_id = file_sha(self._path(world_params.teacher) / "diffusion_pytorch_model.safetensors")
        else:
            from diffusers import StableDiffusionPipeline

            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[world_params.dtype]
            if device == "cpu":
                dtype = torch.float32
            model = str(self._path(world_params.model)) if self._path(world_params.model).exists() else world_params.model
            self.sd_pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None,
                                                                   requires_safety_checker=False).to(device)
            self.sd_pipe.set_progress_bar_config(disable=True)
            self.unet = self.sd_pipe.unet.eval()
            self.vae = self.sd_pipe.vae
            self.scheduler_config = dict(self.sd_pipe.scheduler.config)
            self.teacher_id = obj_sha([world_params.model, world_params.dtype])
        self.unet.requires_grad_(False)

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.root / q

    @property
    def unet_config(self) -> dict:
        return {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}

    def sampler(self, name: str):
        return make_sampler(name, self.scheduler_config)

    def latents(self, n: int, seed: int) -> torch.Tensor:
        """Initial noise per image from its own seed: image i gets the same noise in every method and run."""
        c = self.unet.config
        shape = (c.in_channels, c.sample_size, c.sample_size)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                            for i in range(n)])

    def pipeline(self, sampler: str):
        """A diffusers pipeline (``.unet`` + ``.scheduler``) that ``clockwork.enable`` attaches to."""
        if self.kind == "embedded":
            from clockwork.embedded.pipeline import EmbeddedPipeline

            return EmbeddedPipeline(self.unet, self.sampler(sampler))
        self.sd_pipe.scheduler = self.sampler(sampler)
        return self.sd_pipe

    @torch.no_grad()
    def generate(self, pipe, ctx: torch.Tensor, neg: torch.Tensor, latents: torch.Tensor, steps: int, guidance: float,
                 decode: bool = True) -> torch.Tensor:
        """uint8 images (B, 3, H, W) from prompt token states ``ctx`` and initial noise ``latents``."""
        dtype = self.unet.dtype
        ctx, neg, latents = ctx.to(self.device, dtype), neg.to(self.device, dtype), latents.to(self.device, dtype)
        if self.kind == "embedded":
            return pipe(ctx, neg, num_inference_steps=steps, guidance_scale=guidance, latents=latents,
                        output_type="uint8" if decode else "pt").cpu()
        out = pipe(prompt_embeds=ctx, negative_prompt_embeds=neg.expand_as(ctx), latents=latents,
                   num_inference_steps=steps, guidance_scale=guidance, output_type="pt" if decode else "latent").images
        if not decode:
            return out
        return (out.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def scorer(self, table):
        """The CLIP scorer: the embedded contrastive model, or a real CLIP via torchmetrics (sd15)."""
        if self._scorer is None:
            from clockwork import metrics

            if self.kind == "embedded":
                from clockwork.embedded.scorer import load_scorer

                self._scorer = metrics.EmbeddedCLIPScorer(scorer=load_scorer(self._path(self.params.scorer)), table=table,
                                                          device=self.device)
            else:
                self._scorer = _PromptCLIP(metrics.TorchmetricsCLIPScorer(self.params.clip_model, device=self.device))
        return self._scorer


class _PromptCLIP:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, images, prompts):
        return self.inner(images, prompts)


def load_world(world_params, device: str = "auto", root: str | os.PathLike = ".") -> World:
    return World(world_params, pick_device(device), root)


# -------------------------------------------------------------------------------------------- adaptors
def cut_signature(unet_config: dict, cut: int) -> dict:
    from clockwork.cut import UNetCut
    from clockwork.flops import meta_unet

    return UNetCut(meta_unet(unet_config), cut).signature()


def build_adaptor_for(spec: MethodSpec, unet_config: dict):
    from clockwork.adaptors import build_adaptor

    torch.manual_seed(0)
    return build_adaptor(spec.adaptor, cut_signature(unet_config, spec.cut), **spec.adaptor_kwargs())


def adaptor_params(adaptor) -> int:
    return 0 if adaptor is None else sum(p.numel() for p in adaptor.parameters())


# ------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_images(world: World, spec: MethodSpec, adaptor, ctx: torch.Tensor, neg: torch.Tensor,
                  latents: torch.Tensor, batch_size: int = 100, progress: bool = True, desc: str = "") -> torch.Tensor:
    """Images for every prompt (``ctx``, token states) with Clockwork on (``spec``) or off (baseline)."""
    import clockwork
    from tqdm.auto import tqdm

    pipe = world.pipeline(spec.sampler)
    if not spec.is_baseline:
        clockwork.enable(pipe, adaptor=adaptor if adaptor is not None else spec.adaptor, clock=spec.clock_obj(), cut=spec.cut)
    try:
        out = []
        for i in tqdm(range(0, len(ctx), batch_size), desc=desc or "sample", unit="batch", disable=not progress,
                      mininterval=5):
            out.append(world.generate(pipe, ctx[i:i + batch_size], neg, latents[i:i + batch_size], spec.steps,
                                      spec.guidance))
        return torch.cat(out)
    finally:
        clockwork.disable(pipe)


@torch.no_grad()
def measure_latency(world: World, spec: MethodSpec, adaptor, ctx1: torch.Tensor, neg: torch.Tensor,
                    latents1: torch.Tensor, runs: int = 5) -> float:
    """Mean wall-clock ms of the UNet loop for one prompt with CFG (batch 2), after one warm-up run.

    No text encoder (prompts are pre-encoded) and no VAE decode (latents out), as in the paper.
    """
    import clockwork

    pipe = world.pipeline(spec.sampler)
    if not spec.is_baseline:
        clockwork.enable(pipe, adaptor=adaptor if adaptor is not None else spec.adaptor, clock=spec.clock_obj(), cut=spec.cut)
    try:
        sync = torch.cuda.synchronize if world.device == "cuda" else (lambda: None)
        world.generate(pipe, ctx1, neg, latents1, spec.steps, spec.guidance, decode=False)
        times = []
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            world.generate(pipe, ctx1, neg, latents1, spec.steps, spec.guidance, decode=False)
            sync()
            times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.mean(times))
    finally:
        clockwork.disable(pipe)


_STEP_FLOPS: dict[str, dict] = {}


def method_gflops(unet_config: dict, spec: MethodSpec, scheduler_config: dict, seq_len: int) -> float:
    """Total GFLOPs per image (CFG = batch 2) of the sampling loop, counted per UNet evaluation.

    Per-evaluation costs come from :func:`clockwork.flops.clockwork_flops` (FlopCounterMode on the meta
    device); the number of full and adaptor evaluations from the sampler's own loop (PNDM evaluates
    steps+1 times) and the clock, as the hook decides them.
    """
    from clockwork.clock import Clock
    from clockwork.flops import clockwork_flops

    adaptor = "identity" if spec.is_baseline else spec.adaptor
    cut = spec.cut if not spec.is_baseline else 1
    key = obj_sha([unet_config, adaptor, cut, spec.adaptor_kwargs(), seq_len])
    if key not in _STEP_FLOPS:
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.adaptor_kwargs().items()}
        _STEP_FLOPS[key] = clockwork_flops(unet_config, steps=2, clock=Clock(2), cut=cut, adaptor=adaptor, batch=2,
                                           seq_len=seq_len, adaptor_kwargs=kw)
    f = _STEP_FLOPS[key]
    sched = make_sampler(spec.sampler, scheduler_config)
    sched.set_timesteps(spec.steps)
    n_loops = len(sched.timesteps)
    n_adapt = 0 if spec.is_baseline else len(adaptor_loop_indices(sched, spec.steps, spec.clock_obj(), spec.uses_r_out_prev))
    return round((n_loops - n_adapt) * f["full_step_gflops"] + n_adapt * f["adaptor_step_gflops"], 4)


# ---------------------------------------------------------------------------------------------- scoring
def inception(images: torch.Tensor, device: str = "cpu", progress: bool = True) -> torch.Tensor:
    from clockwork.metrics import inception_features

    return inception_features(images, batch_size=50, progress=progress, device=device)


def fid_low_rank(mu_ref: torch.Tensor, sigma_ref: torch.Tensor, feats: torch.Tensor) -> float:
    """Exact FID of ``feats`` (n, d) against reference statistics, in O(n d^2) instead of O(d^3).

    The generated covariance is B^T B with B = centred feats / sqrt(n-1), so the non-zero eigenvalues of
    sigma_ref @ sigma_gen are those of the small symmetric n x n matrix B sigma_ref B^T. Same value as
    torchmetrics' eigvals-based formula (tests/test_pipeline_units.py checks), ~30x faster for n = 300,
    which is what makes bootstrap resamples affordable on a CPU.
    """
    f = feats.to(torch.float64)
    mu = f.mean(0)
    b = (f - mu) / math.sqrt(max(len(f) - 1, 1))
    m = b @ sigma_ref @ b.T
    ev = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0)
    return float((mu_ref - mu).square().sum() + sigma_ref.trace() + b.square().sum() - 2 * ev.sqrt().sum())


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """Resamples (with replacement) of ``n`` generated images; the same ``seed`` and ``n`` give the same
    resamples for every method, so bootstrap replicates are paired across methods (same prompts, same seeds)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(n_boot)]


def bootstrap_fid(feats: torch.Tensor, reference, n_boot: int = 10, seed: int = 0) -> list[float]:
    """FID of each of ``n_boot`` resamples of the generated set (:func:`bootstrap_indices`); the reference is fixed."""
    mu_ref = torch.as_tensor(reference.mu, dtype=torch.float64)
    sigma_ref = torch.as_tensor(reference.sigma, dtype=torch.float64)
    return [fid_low_rank(mu_ref, sigma_ref, feats[torch.from_numpy(i)]) for i in bootstrap_indices(len(feats), n_boot, seed)]


def bootstrap_fid_std(feats: torch.Tensor, reference, n_boot: int = 10, seed: int = 0) -> float:
    """Std of FID over ``n_boot`` resamples (with replacement) of the generated set; the reference is fixed."""
    return float(np.std(bootstrap_fid(feats, reference, n_boot, seed), ddof=1)) if n_boot > 1 else 0.0


def score_images(images: torch.Tensor, prompts: Sequence[str], reference, scorer, fid_bootstrap: int = 10,
                 kid_subsets: int = 50, kid_subset_size: int = 100, seed: int = 0, device: str = "cpu",
                 progress: bool = True, features: torch.Tensor | None = None) -> dict:
    """FID + bootstrap std, KID + std over subsets (clockwork.metrics), CLIP score + its standard error.

    With fewer generated images than feature dimensions (every CPU configuration) FID is computed exactly
    by :func:`fid_low_rank` - the value of clockwork.metrics.fid_from_features to ~1e-9, at a fraction of
    the cost of its 2048 x 2048 general eigen-decomposition (seconds per call on a CPU).
    """
    from clockwork.metrics import fid_from_features, kid_from_features

    feats = inception(images, device, progress) if features is None else features
    feats = feats.to(torch.float64)
    n_ref = len(reference.features)
    if len(feats) < feats.shape[1]:
        fid = fid_low_rank(torch.as_tensor(reference.mu, dtype=torch.float64),
                           torch.as_tensor(reference.sigma, dtype=torch.float64), feats)
    else:
        fid = fid_from_features(reference, feats)
    fid_boot = bootstrap_fid(feats, reference, fid_bootstrap, seed)
    fid_std = float(np.std(fid_boot, ddof=1)) if fid_bootstrap > 1 else 0.0
    kid, kid_std = kid_from_features(reference, feats, subsets=kid_subsets,
                                     subset_size=max(2, min(kid_subset_size, len(feats), n_ref)), seed=seed)
    clip = scorer(images, list(prompts)).double()
    clip_boot = [float(clip[torch.from_numpy(i)].mean()) for i in bootstrap_indices(len(clip), fid_bootstrap, seed)]
    return {"fid": fid, "fid_std": fid_std, "kid": kid, "kid_std": kid_std, "clip": float(clip.mean()),
            "clip_std": float(clip.std(unbiased=True) / math.sqrt(len(clip))) if len(clip) > 1 else 0.0,
            "n_samples": len(images), "n_reference": n_ref, "fid_boot": fid_boot, "clip_boot": clip_boot}


@dataclass
class EvalContext:
    """Everything evaluating a method needs, built once per stage (or per sweep trial)."""

    world: World
    prepared: Prepared
    n_samples: int
    seed: int
    batch_size: int = 100
    fid_bootstrap: int = 10
    kid_subsets: int = 50
    kid_subset_size: int = 100
    latency_runs: int = 5
    progress: bool = True
    split: str = "heldout"  # heldout: the evaluation prompts | val: validation prompts from the training split
    ctx: torch.Tensor = field(init=False)
    neg: torch.Tensor = field(init=False)
    latents: torch.Tensor = field(init=False)
    prompts: list[str] = field(init=False)
    reference: Any = field(init=False)

    def __post_init__(self):
        pool, self.reference = self.prepared.split(self.split)
        if self.n_samples > len(pool):
            raise ValueError(f"{self.n_samples} samples asked of the {self.split} split, which has {len(pool)} prompts "
                             "(prepare.eval_prompts / prepare.val_prompts)")
        self.prompts = pool[: self.n_samples]
        self.ctx = self.prepared.table.lookup(self.prompts)[0]
        self.neg = self.prepared.table.uncond(1)[0]
        self.latents = self.world.latents(self.n_samples, self.seed)

    @property
    def seq_len(self) -> int:
        return self.ctx.shape[1]


def evaluate_method(ec: EvalContext, spec: MethodSpec, adaptor=None, name: str = "") -> tuple[dict, torch.Tensor]:
    """Sample the held-out prompts with ``spec`` and score them: the metrics dict of metrics/evaluate.json."""
    w = ec.world
    if spec.needs_training and adaptor is None:
        raise ValueError(f"{name or spec}: a {spec.adaptor} adaptor must be distilled first")
    if spec.adaptor == "identity" and adaptor is None:
        adaptor = build_adaptor_for(spec, w.unet_config)
    t0 = time.perf_counter()
    images = sample_images(w, spec, adaptor, ec.ctx, ec.neg, ec.latents, ec.batch_size, ec.progress, desc=f"sample {name}")
    t_sample = time.perf_counter() - t0
    scores = score_images(images, ec.prompts, ec.reference, w.scorer(ec.prepared.table), ec.fid_bootstrap,
                          ec.kid_subsets, ec.kid_subset_size, seed=ec.seed, device=w.device, progress=ec.progress)
    latency = measure_latency(w, spec, adaptor, ec.ctx[:1], ec.neg, ec.latents[:1], ec.latency_runs)
    gflops = method_gflops(w.unet_config, spec, w.scheduler_config, ec.seq_len)
    d = spec.describe()
    metrics = {
        "fid": scores["fid"], "fid_std": scores["fid_std"], "kid": scores["kid"], "kid_std": scores["kid_std"],
        "clip": scores["clip"], "clip_std": scores["clip_std"], "gflops": gflops, "latency_ms": round(latency, 3),
        "adaptor_params": adaptor_params(adaptor) if not spec.is_baseline else 0,
        "steps": d["steps"], "clock": d["clock"], "cut": d["cut"], "adaptor": d["adaptor"], "sampler": d["sampler"],
        "n_samples": scores["n_samples"], "split": ec.split,
        "fid_boot": [round(x, 6) for x in scores["fid_boot"]], "clip_boot": [round(x, 6) for x in scores["clip_boot"]],
    }
    log(f"{name or spec.key()}: FID {metrics['fid']:.2f}±{metrics['fid_std']:.2f} KID {metrics['kid']:.4f} "
        f"CLIP {metrics['clip']:.2f} {gflops:.2f} GFLOPs {latency:.1f} ms (sampling {t_sample:.0f}s)")
    return metrics, images


def vs_fewer_steps(point: dict, plain_rows: Sequence[dict]) -> dict:
    """``point``'s FID and CLIP against the plain-steps front of ``plain_rows`` (the baseline at several step
    counts, same prompts and seeds) at equal GFLOPs: clockwork.pareto.versus_fewer_steps, positive = better.
    FID against the front (dominated step counts dropped); CLIP, which barely moves with the step count, against
    the plain curve of every step count (a noise-made front would hold only the cheapest one)."""
    from clockwork.pareto import plain_steps_front, versus_fewer_steps

    return {"fid": versus_fewer_steps(point, plain_steps_front(plain_rows, "fid"), "fid"),
            "clip": versus_fewer_steps(point, plain_steps_front(plain_rows, "clip", quality_mode="max",
                                                                drop_dominated=False), "clip", quality_mode="max")}


# ------------------------------------------------------------------------------------------ distillation
def ensure_trajectories(root: str | os.PathLike, world: World, table, prompts: list[str], sampler: str, steps: int,
                        guidance: float, cuts: Sequence[int], seed: int, shard_size: int, progress: bool = True):
    """Unroll (or resume unrolling) teacher trajectories for ``prompts`` into ``root``."""
    from clockwork.trajectories import unroll_to_store

    ctx = table.lookup(prompts)[0]
    neg = table.uncond(1)[0]
    return unroll_to_store(root, world.unet, world.sampler(sampler), sorted(set(cuts)), ctx, neg, steps, guidance,
                           seed=seed, shard_size=shard_size, progress=progress,
                           meta_extra={"prompts_sha": obj_sha(prompts), "teacher": world.teacher_id, "sampler_name": sampler,
                                       "code": code_sha("clockwork/trajectories.py", "clockwork/cut.py",
                                                        "clockwork/schedulers.py")})


def store_matches(root: str | os.PathLike, sampler: str, steps: int, guidance: float, cut: int) -> bool:
    f = Path(root) / "meta.json"
    if not f.is_file():
        return False
    m = json.loads(f.read_text())
    return (m.get("sampler_name") == sampler and m.get("steps") == steps and m.get("guidance") == guidance
            and cut in m.get("cuts", []))


def row_prompts(meta: dict, rows: int) -> torch.Tensor:
    """The prompt index of every trajectory row of a store.

    Each shard holds its prompts' unconditional half, then their conditional half (CFG as one batch), so
    rows of one prompt are ``shard_size`` apart; the two halves share x_t (and r_in at cut 1 exactly), so
    train/held-out splits and prompt subsets must be taken per prompt, never per row.
    """
    n, ss = meta["num_prompts"], meta["shard_size"]
    if rows == n:
        return torch.arange(n)
    if rows != 2 * n:
        raise ValueError(f"a store of {n} prompts holds {rows} rows per step; expected {n} or {2 * n}")
    ids = []
    for i in range(meta["num_shards"]):
        base = torch.arange(i * ss, min((i + 1) * ss, n))
        ids += [base, base]
    return torch.cat(ids)


def _select(traj: dict, mask: torch.Tensor) -> dict:
    out = {**traj, "r_in": traj["r_in"][:, mask], "r_out": traj["r_out"][:, mask], "text": traj["text"][mask],
           "prompt": traj["prompt"][mask]}
    for k, dim in (("latents", 1), ("cond", 0), ("ctx", 0)):  # per-row extras, when present
        if k in traj:
            out[k] = traj[k][:, mask] if dim else traj[k][mask]
    return out


def load_trajectories(root: str | os.PathLike, cut: int, max_prompts: int | None = None,
                      with_latents: bool = False) -> dict[str, torch.Tensor]:
    """One cut of a trajectory store (both CFG halves of every prompt), optionally its first ``max_prompts`` prompts.

    ``with_latents``: also each row's x_t per step and its ``cond`` flag (``TrajectoryStore.load``), what
    :func:`pair_dataset` needs for the output-space loss (``distill.output_weight > 0``).
    """
    from clockwork.trajectories import TrajectoryStore

    store = TrajectoryStore(root)
    meta = store.meta
    shards = None if max_prompts is None else -(-max_prompts // meta["shard_size"])
    traj = store.load(cut, max_shards=shards, with_latents=with_latents)
    if shards is not None:
        meta = {**meta, "num_prompts": min(meta["num_prompts"], shards * meta["shard_size"]),
                "num_shards": min(meta["num_shards"], shards)}
    traj["prompt"] = row_prompts(meta, traj["r_in"].shape[1])
    if max_prompts is not None:
        traj = _select(traj, traj["prompt"] < max_prompts)
    return traj


def num_prompts(traj: dict) -> int:
    return int(traj["prompt"].unique().numel()) if "prompt" in traj else traj["r_in"].shape[1]


def split_trajectories(traj: dict, heldout: int) -> tuple[dict, dict | None]:
    """The last ``heldout`` prompts (both CFG halves) apart from the rest."""
    if heldout <= 0:
        return traj, None
    cut_at = int(traj["prompt"].max()) + 1 - heldout
    held = traj["prompt"] >= cut_at
    return _select(traj, ~held), _select(traj, held)


def row_contexts(traj: dict, table, prompts: Sequence[str]) -> torch.Tensor:
    """(rows, L, D) the text token states every trajectory row was sampled with: the negative (empty) prompt's
    ``table.uncond(1)[0]`` for unconditional rows, ``table.lookup([prompts[traj["prompt"][r]]])[0]`` for
    conditional ones (``traj`` from :func:`load_trajectories` with ``with_latents=True``, whose ``prompt``
    indices point into ``prompts``, the list the store was unrolled for). Checked against the pooled ``text``
    the store recorded, so a wrong prompt list or table fails here."""
    if "cond" not in traj or "prompt" not in traj:
        raise ValueError("per-row text contexts need trajectories loaded with_latents=True (their `cond` flags)")
    pid, cond = traj["prompt"], traj["cond"]
    if len(pid) and int(pid.max()) >= len(prompts):
        raise ValueError(f"trajectory rows of prompt {int(pid.max())} but only {len(prompts)} prompts given")
    used = sorted(set(pid[cond].tolist()))
    neg = table.uncond(1, dtype=torch.float16)[0]  # the table stores fp16 states: no rounding
    states = table.lookup([prompts[i] for i in used], dtype=torch.float16)[0] if used else neg[:0]
    where = torch.zeros(len(prompts), dtype=torch.long)
    where[torch.tensor(used, dtype=torch.long)] = torch.arange(1, len(used) + 1)
    ctx = torch.cat([neg, states])[torch.where(cond, where[pid], 0)]
    text = traj["text"].float()
    if (ctx.float().mean(dim=1) - text).norm() > 1e-2 * text.norm() + 1e-6:
        raise ValueError("the prompt embeddings do not match the ones these trajectories were unrolled with "
                         "(wrong prompt list or embedding table)")
    return ctx


def pair_dataset(traj: dict, spec: MethodSpec, scheduler, table=None, prompts: Sequence[str] | None = None):
    """Teacher-forced (r_in(t), r_out(t+1)) -> r_out(t) pairs at the spec's adaptor steps.

    An adaptor that ignores r_out(t+1) may also run at step 0; PairDataset needs a previous step, so the
    trajectory gets a zero step in front (its r_out is never read by such an adaptor).

    With ``table`` and ``prompts`` (for the output-space loss; ``traj`` loaded ``with_latents=True``) the pairs
    also carry the teacher's UNet inputs: per-row text contexts (:func:`row_contexts`) and x_t scaled by the
    sampler's ``scale_model_input`` factors (:func:`clockwork.distill.model_input_scales`).
    """
    from clockwork.distill import PairDataset, model_input_scales

    loops = adaptor_loop_indices(scheduler, spec.steps, spec.clock_obj(), spec.uses_r_out_prev)
    if not loops:
        raise ValueError(f"{spec}: the clock never runs the adaptor, nothing to distill")
    scale = None
    if table is not None or prompts is not None:
        if table is None or prompts is None or "latents" not in traj:
            raise ValueError("the teacher's UNet inputs need table=, prompts= and trajectories loaded with_latents=True")
        traj = {**traj, "ctx": row_contexts(traj, table, prompts)}
        scale = model_input_scales(scheduler, spec.steps)
    if min(loops) == 0:
        pad = lambda x: torch.cat([torch.zeros_like(x[:1]), x])  # noqa: E731
        traj = {**traj, "r_in": pad(traj["r_in"]), "r_out": pad(traj["r_out"]), "temb": pad(traj["temb"]),
                **({"r_out_used": pad(traj["r_out_used"])} if "r_out_used" in traj else {})}
        for k in ("latents", "timesteps"):  # per-step inputs of the output-space loss, when present
            if k in traj:
                traj[k] = pad(traj[k])
        if scale is not None:
            scale = torch.cat([torch.ones(1), scale])
        loops = [i + 1 for i in loops]
    return PairDataset(traj, loops, input_scale=scale)


def distill_adaptor(spec: MethodSpec, unet_config: dict, traj: dict, scheduler, distill_cfg, device: str = "cpu",
                    checkpoint_dir: str | os.PathLike | None = None, on_log=None, progress: bool = True,
                    teacher_unet=None, table=None, prompts: Sequence[str] | None = None):
    """Build and distill the adaptor ``spec`` describes on trajectories ``traj``; returns (adaptor, history).

    ``distill_cfg.output_weight > 0`` (the output-space loss) needs the frozen ``teacher_unet`` on ``device``,
    the prepared embedding ``table`` and the ``prompts`` the store was unrolled for (``traj["prompt"]``
    indexes them), and ``traj`` loaded ``with_latents=True``; they are unused otherwise.
    """
    from clockwork.cut import UNetCut
    from clockwork.distill import distill

    adaptor = build_adaptor_for(spec, unet_config)
    if not spec.needs_training:
        return adaptor, []
    teacher = None
    if distill_cfg.output_weight > 0:
        if teacher_unet is None or table is None or prompts is None:
            raise ValueError(f"distill.output_weight={distill_cfg.output_weight} > 0 needs the teacher: "
                             "distill_adaptor(..., teacher_unet=world.unet, table=prepared.table, prompts=<unrolled prompts>)")
        data = pair_dataset(traj, spec, scheduler, table=table, prompts=prompts)
        teacher = UNetCut(teacher_unet, spec.cut)
    else:
        data = pair_dataset(traj, spec, scheduler)
    history = distill(adaptor, data, distill_cfg, device=device, checkpoint_dir=checkpoint_dir, on_log=on_log,
                      progress=progress, teacher=teacher)
    return adaptor.to("cpu").eval(), history


def rollout_finetune(spec: MethodSpec, adaptor, world: World, table, prompts: Sequence[str], teacher_traj: dict,
                     distill_cfg, steps: int, device: str = "cpu", checkpoint_dir: str | os.PathLike | None = None,
                     progress: bool = True):
    """One DAgger round (the `rollout_steps` lever): unroll Clockwork with ``adaptor`` in the loop for ``prompts``
    (:func:`clockwork.rollouts.unroll_clockwork`: the teacher's r_out as targets at Clockwork's own states),
    then distill ``steps`` more steps (fresh Adam, seed + 1) on the teacher's trajectories and these rollouts
    together. ``teacher_traj`` holds the rows of the same prompts (:func:`load_trajectories`). Returns
    (adaptor, history)."""
    from clockwork.distill import distill
    from clockwork.rollouts import unroll_clockwork

    if spec.training != "unrolled":
        raise ValueError(f"rollout fine-tuning continues unrolled-trajectory training, not {spec.training!r}")
    roll = unroll_clockwork(world.unet, adaptor, spec.cut, spec.clock_obj(), world.sampler(spec.sampler),
                            table.lookup(list(prompts))[0], table.uncond(1)[0], spec.steps, spec.guidance,
                            seed=distill_cfg.seed + 1, batch_size=512, progress=progress)
    t = teacher_traj
    both = {"r_in": torch.cat([t["r_in"], roll["r_in"]], 1), "r_out": torch.cat([t["r_out"], roll["r_out"]], 1),
            "r_out_used": torch.cat([t["r_out"], roll["r_out_used"]], 1), "temb": t["temb"],
            "text": torch.cat([t["text"], roll["text"]]), "timesteps": t["timesteps"],
            "prompt": torch.cat([t["prompt"], roll["prompt"]])}
    cfg = dataclasses.replace(distill_cfg, steps=steps, seed=distill_cfg.seed + 1)
    history = distill(adaptor, pair_dataset(both, spec, world.sampler(spec.sampler)), cfg, device=device,
                      checkpoint_dir=checkpoint_dir, progress=progress)
    return adaptor.to("cpu").eval(), history


def distill_config(section, steps: int | None = None):
    """A :class:`clockwork.distill.DistillConfig` from the params' ``distill`` section."""
    from clockwork.distill import DistillConfig

    s = steps if steps is not None else section.steps
    return DistillConfig(steps=s, batch_size=section.batch_size, lr=section.lr, weight_decay=section.weight_decay,
                         seed=section.seed, checkpoint_every=min(section.checkpoint_every, s),
                         log_every=min(section.log_every, s), grad_clip=section.grad_clip,
                         output_weight=section.output_weight)


@torch.no_grad()
def forward_noised_data(world: World, table, cut: int, sampler: str, steps: int, n_images: int, seed: int,
                        batch: int = 64) -> dict[str, torch.Tensor]:
    """Classic distillation data: real training images noised to each timestep (embedded world only)."""
    from clockwork.embedded.data import CaptionedFashion
    from clockwork.trajectories import forward_noised_shard

    if world.kind != "embedded":
        raise NotImplementedError("forward-noised training data is only built for the embedded world")
    train = CaptionedFashion("train", root=world.params.data_root)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_images]
    parts = []
    for i in range(0, n_images, batch):
        j = idx[i:i + batch]
        ctx = table.lookup([train.texts[int(k)] for k in j])[0]
        parts.append(forward_noised_shard(world.unet, world.sampler(sampler), cut, train.images(j), ctx,
                                          table.uncond(1)[0], steps, torch.Generator().manual_seed(seed + i)))
    return {"r_in": torch.cat([p[f"r_in.c{cut}"] for p in parts], 1), "r_out": torch.cat([p[f"r_out.c{cut}"] for p in parts], 1),
            "temb": parts[0]["temb"], "text": torch.cat([p["text"] for p in parts]), "timesteps": parts[0]["timesteps"]}


# ---------------------------------------------------------------------------------------------- grids
def sample_grid(rows: dict[str, torch.Tensor], prompts: Sequence[str], n: int):
    """One row per method, the same prompts and seeds in every column, the prompt under each image."""
    try:
        from clockwork.viz import image_grid
    except ImportError:  # pragma: no cover - older checkouts
        image_grid = _image_grid
    names = list(rows)
    images = torch.cat([rows[k][:n] for k in names])
    captions = [p for _ in names for p in prompts[:n]]
    return image_grid(images, captions, ncols=n, row_titles=names)


def _image_grid(images, captions, ncols=8, row_titles=None, scale=4):
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    imgs = np.asarray(images)
    n, _, h, w = imgs.shape
    rows = (n + ncols - 1) // ncols
    cw, ch, cap, tw = w * scale, h * scale, 28, 110 if row_titles else 0
    grid = Image.new("RGB", (tw + ncols * cw, rows * (ch + cap)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, ncols)
        x, y = tw + c * cw, r * (ch + cap)
        grid.paste(Image.fromarray(imgs[i].transpose(1, 2, 0)).resize((cw, ch), Image.NEAREST), (x, y))
        for j, line in enumerate(textwrap.wrap(captions[i], max(8, cw // 6))[:2]):
            draw.text((x + 2, y + ch + 2 + 12 * j), line, fill="black", font=font)
    for r, t in enumerate(row_titles or []):
        draw.text((4, r * (ch + cap) + ch // 2), t[:18], fill="black", font=font)
    return grid


# ------------------------------------------------------------------------------------ the sweep's entry
def train_and_evaluate(params: dict, workdir: str, on_log=None) -> dict:
    """Distill an adaptor for one configuration and evaluate it as the evaluate stage does.

    ``params``: ``clock`` (period, or a list of 0-based adaptor steps), ``width``, ``cut``, ``steps``,
    ``adaptor`` (identity | resnet | unet-light); optional ``depth``, ``inputs``, ``sampler``, ``guidance``,
    ``distill_steps``, ``n_samples``, ``latency_runs``, ``params_file`` (default: the repo's params.yaml,
    whose other settings apply), ``root`` (repo root; default: this checkout), ``device`` (auto | cpu | cuda:
    sampling, distillation and Inception all run there).
    Trajectories come from the trajectories stage when sampler/steps/guidance/cut match, else they are
    unrolled once into ``<root>/data/sweep_trajectories/`` (shared by trials; resumable).

    ``clock: 1`` or ``adaptor: "none"`` is the plain baseline (nothing distilled). ``on_log(step, loss)`` is
    called every ``distill.log_every`` distillation steps (the sweep reports it to Ray Tune's scheduler).

    Returns ``{fid, fid_std, kid, kid_std, clip, clip_std, gflops, gflops_ratio, latency_ms, adaptor_params,
    heldout_mse, ...}``; ``gflops_ratio`` is relative to the plain baseline with the same steps.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from pipeline.config import read_yaml, validate

    root = Path(params.get("root", REPO_ROOT)).resolve()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    p = validate(read_yaml(params.get("params_file", root / "params.yaml")), root=root)
    device = pick_device(params.get("device", "auto"))
    world = load_world(p.world, device, root)
    prepared = Prepared.load(root / PREPARED_DIR)
    n_samples = int(params.get("n_samples", p.evaluate.n_samples))
    if n_samples > len(prepared.eval_prompts):
        raise ValueError(f"n_samples={n_samples} but only {len(prepared.eval_prompts)} evaluation prompts were prepared "
                         "(prepare.eval_prompts)")
    clock = params.get("clock", p.clock.period if p.clock.adaptor_steps is None else list(p.clock.adaptor_steps))
    kind = params.get("adaptor", p.adaptor.kind)
    if clock == 1 or kind == "none":
        kind, clock = "none", 1
    default_inputs = p.adaptor.inputs if p.adaptor.kind != "identity" else ["r_in", "r_out_prev", "time", "text"]
    spec = MethodSpec(
        sampler=params.get("sampler", p.sampling.sampler), steps=int(params.get("steps", p.sampling.steps)),
        guidance=float(params.get("guidance", p.sampling.guidance)), adaptor=kind,
        clock=int(clock) if not isinstance(clock, (list, tuple)) else 1,
        adaptor_steps=tuple(int(s) for s in clock) if isinstance(clock, (list, tuple)) else None,
        cut=int(params.get("cut", p.cut)), width=int(params.get("width", p.adaptor.width)),
        depth=int(params.get("depth", p.adaptor.depth)),
        inputs=tuple(params.get("inputs", default_inputs)) if kind != "identity" else ("r_out_prev",),
    )
    if not spec.is_baseline:
        spec.clock_obj().validate(spec.steps, first_step_may_be_adaptor=not spec.uses_r_out_prev)
    t0 = time.perf_counter()
    adaptor, history, heldout_mse = None, [], None
    if not spec.is_baseline:
        if spec.needs_training:
            main = root / TRAJECTORIES_DIR
            if store_matches(main, spec.sampler, spec.steps, spec.guidance, spec.cut):
                troot = main
            else:
                troot = root / "data" / "sweep_trajectories" / obj_sha([spec.sampler, spec.steps, spec.guidance, spec.cut])
                ensure_trajectories(troot, world, prepared.table, prepared.distill_prompts, spec.sampler, spec.steps,
                                    spec.guidance, [spec.cut], p.trajectories.seed, p.trajectories.shard_size, progress=False)
            train, held = split_trajectories(load_trajectories(troot, spec.cut), p.distill.heldout_prompts)
            cfg = distill_config(p.distill, params.get("distill_steps"))
            adaptor, history = distill_adaptor(spec, world.unet_config, train, world.sampler(spec.sampler), cfg,
                                               device, workdir / "checkpoint", on_log=on_log,
                                               progress=False)
            if held is not None:
                from clockwork.distill import evaluate_mse

                heldout_mse = evaluate_mse(adaptor, pair_dataset(held, spec, world.sampler(spec.sampler)))
            adaptor.save_pretrained(workdir / "adaptor")
        else:
            adaptor = build_adaptor_for(spec, world.unet_config)
    t_distill = time.perf_counter() - t0
    ec = EvalContext(world, prepared, n_samples, p.evaluate.seed,
                     p.evaluate.batch_size, p.evaluate.fid_bootstrap, p.evaluate.kid_subsets, p.evaluate.kid_subset_size,
                     int(params.get("latency_runs", p.evaluate.latency_runs)), progress=False)
    metrics, _ = evaluate_method(ec, spec, adaptor, name=f"trial {spec.key()}")
    base = method_gflops(world.unet_config, MethodSpec(spec.sampler, spec.steps, spec.guidance), world.scheduler_config,
                         ec.seq_len)
    metrics.update(gflops_ratio=round(metrics["gflops"] / base, 4), width=spec.width if spec.needs_training else 0,
                   heldout_mse=heldout_mse, final_loss=history[-1]["loss"] if history else None,
                   distill_seconds=round(t_distill, 1), seconds=round(time.perf_counter() - t0, 1))
    write_json(workdir / "metrics.json", metrics)
    return metrics
