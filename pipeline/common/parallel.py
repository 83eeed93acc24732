"""Online distillation on several workers: a Ray Train ``TorchTrainer`` (``distill.workers`` > 1).

Each worker loads the teacher on its own device and calls :func:`pipeline.common.training.distill_adaptor_online`,
i.e. :func:`clockwork.online.distill_online` inside the process group Ray Train sets up (NCCL on GPUs, gloo on
CPUs): it unrolls its share of every refresh and the adaptor's gradients are averaged, so the result is the
single-worker one up to floating point. Rank 0 writes the checkpoints in the single-process format into
``checkpoint_dir`` (shared storage when the workers span nodes), so a run resumes with any number of workers. The
cluster is ``$RAY_ADDRESS`` (or ``address``) when set, else a fresh local Ray of this machine's CPUs and GPUs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkersError(RuntimeError):
    """The cluster cannot run the asked workers, or a worker failed (the message names the key or the worker)."""


def start_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
              verbose: bool = True) -> bool:
    """Join ``address`` (or $RAY_ADDRESS; ``auto``: a ``ray start`` cluster here), else start a fresh local Ray of
    ``num_cpus`` / ``num_gpus`` (default: this machine's), its workers importing this repository; whether this call
    started it (the distill stage's workers and the sweep's trials)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    kwargs = {"runtime_env": {"env_vars": env}, "log_to_driver": verbose}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:  # a fresh local instance, even if some `ray start` cluster runs here
        kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    ray.init(**kwargs)
    return True


def plan_workers(workers: int, device: str, resources: dict) -> dict:
    """Ray Train's scaling for ``workers`` on a cluster with ``resources`` (``ray.cluster_resources()``): one GPU per
    worker when ``device`` asks for CUDA (or is auto and the cluster has GPUs), else one CPU per worker. Raises
    :class:`WorkersError` naming ``distill.workers`` when the cluster lacks them."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    need, have, unit = (workers, gpus, "GPUs") if use_gpu else (workers, cpus, "CPUs")
    if have < need:
        raise WorkersError(f"distill.workers={workers} needs {need} {unit} (one per worker) but the Ray cluster has "
                           f"{have:g}: lower distill.workers, or join a larger cluster ($RAY_ADDRESS)")
    return {"num_workers": workers, "use_gpu": use_gpu, "resources_per_worker": {"GPU" if use_gpu else "CPU": 1}}


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the world on this worker's device, then the online distillation."""
    os.chdir(config["repo"])  # the pipeline's paths are relative to the repository, as under `dvc repro`
    import ray.train
    import ray.train.torch

    from pipeline.common.training import distill_adaptor_online
    from pipeline.common.world import Prepared, load_world, make_sampler

    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    world = load_world(config["world"], str(device))
    scheduler = make_sampler(config["spec"].sampler, world.scheduler_config)
    log_times = []  # (step, seconds since the start) at every log: the throughput once the buffer is full
    t0 = time.perf_counter()
    _, history, stream = distill_adaptor_online(
        config["spec"], config["unet_config"], world, Prepared.load(), config["captions"], scheduler, config["cfg"],
        config["section"], str(device), config["checkpoint_dir"], progress=rank == 0,
        on_log=lambda step, loss: log_times.append((step, round(time.perf_counter() - t0, 3))))
    if rank == 0:  # beside its last checkpoint, where the driver reads the adaptor back
        tmp = Path(config["checkpoint_dir"]) / "workers_result.json.tmp"
        tmp.write_text(json.dumps({"history": history, "stream": stream, "log_times": log_times,
                                   "device": str(device)}))
        tmp.replace(tmp.with_suffix(""))


def distill_adaptor_workers(spec, unet_config: dict, world_params, prepared, captions, distill_cfg, section,
                            device: str, checkpoint_dir: str | os.PathLike, address: str | None = None):
    """:func:`distill_adaptor_online` on ``section.workers`` Ray Train workers. Returns (adaptor on the CPU, history,
    stream) as it does; the adaptor is read back from rank 0's last checkpoint."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    from pipeline.common.methods import build_adaptor_for

    del prepared  # each worker loads data/prepared itself
    ckpt = Path(checkpoint_dir).resolve()
    (ckpt / "workers_result.json").unlink(missing_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    started = start_ray(address)
    try:
        scaling = plan_workers(section.workers, str(device), ray.cluster_resources())
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"repo": str(Path.cwd()), "world": world_params, "spec": spec, "unet_config": unet_config,
                               "captions": captions, "cfg": distill_cfg, "section": section, "checkpoint_dir": str(ckpt)},
            scaling_config=ScalingConfig(**scaling),
            run_config=RunConfig(name="distill", storage_path=str(ckpt.parent / "ray")),
        )
        try:
            result = trainer.fit()
        except Exception as e:  # noqa: BLE001 - Ray wraps the worker's exception; say it in one line
            raise WorkersError(f"distillation on {section.workers} workers failed: {type(e).__name__}: {e}") from e
        if result.error:
            raise WorkersError(f"distillation on {section.workers} workers failed: {result.error}")
    finally:
        if started:
            ray.shutdown()
    done = json.loads((ckpt / "workers_result.json").read_text())
    adaptor = build_adaptor_for(spec, unet_config)
    adaptor.load_state_dict(load_file(str(ckpt / "diffusion_pytorch_model.safetensors")))
    return adaptor.eval(), done["history"], {**done["stream"], "workers": section.workers}
