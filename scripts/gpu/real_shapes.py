"""The SD-family world at real shapes on a GPU: random weights saved with ``save_pretrained`` at the SD 1.5 or
SDXL-base UNet/VAE shapes diffusers ships (small text encoders of the real widths), a handful of captions and
reference images, then the stage scripts prepare -> trajectories -> distill -> evaluate under configs/sd15.yaml or
configs/sdxl.yaml. Metrics of random weights mean nothing; the shapes, the wall time and the peak GPU memory of each
stage (their ``[usage]`` lines) and the absence of errors do. Written to OUT/<kind>/: stages.json, stage logs,
metrics, the trajectory meta.

    python scripts/gpu/real_shapes.py build --kind sdxl --workdir /root/rs          # the random-weight pipeline
    python scripts/gpu/real_shapes.py run --kind sdxl --workdir /root/rs --out $OUT  # the stages
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(SRC))

WORDS = ["a", "photo", "of", "cat", "dog", "on", "sofa", "red", "blue", "car", "street", "bowl", "fruit", "table"]


def _tokenizer(folder: Path, max_len: int = 77):
    """A CLIPTokenizer over a small word vocabulary (no download); the real context length, 77."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<unk>", "<|startoftext|>", "<|endoftext|>"] + sorted(set(ch for w in WORDS for ch in w)) + \
        [w + "</w>" for w in WORDS] + [ch + "</w>" for ch in sorted(set("".join(WORDS)))]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<unk>",
                         model_max_length=max_len)


def _text(hidden: int, vocab: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                         num_attention_heads=hidden // 64, max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, **({"projection_dim": projection} if projection else {}))
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def build(kind: str, work: Path) -> None:
    import torch
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    from clockwork.flops import SD15, SDXL

    t0 = time.time()
    torch.manual_seed(0)
    res = 1024 if kind == "sdxl" else 512
    with torch.device("cuda"):  # random init of 2.6 B parameters is minutes on a CPU, seconds here
        unet = UNet2DConditionModel(**(SDXL if kind == "sdxl" else SD15)).half()
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=res, scaling_factor=0.13025 if kind == "sdxl" else 0.18215,
                            force_upcast=kind == "sdxl").half()
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        steps_offset=1, timestep_spacing="leading")
    tok = _tokenizer(work / "tok")
    vocab = len(tok)
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=_text(768, vocab), text_encoder_2=_text(1280, vocab, 1280),
                                         tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=_text(768, vocab), tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(work / kind / "model")
    # a small CLIP (transformers format) for the CLIP score, and COCO-format captions + reference images
    from PIL import Image
    import numpy as np
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    clip = CLIPModel(CLIPConfig(text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                                 bos_token_id=1, eos_token_id=2, pad_token_id=2),
                                vision_config=dict(image_size=224, patch_size=32, hidden_size=64, intermediate_size=128,
                                                   num_hidden_layers=1, num_attention_heads=2), projection_dim=32))
    clip.save_pretrained(work / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(work / "clip")
    rng = np.random.default_rng(0)
    (work / "ref").mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(24):
        name = f"{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(work / "ref" / name)
        words = rng.choice(WORDS[3:], 3, replace=False)
        images.append({"id": i, "file_name": name})
        anns.append({"id": 100 + i, "image_id": i, "caption": f"a photo of a {words[0]} {words[1]} {words[2]}"})
    (work / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    print(f"built {kind} at real shapes in {time.time() - t0:.0f}s: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M "
          f"params, {sum(f.stat().st_size for f in (work / kind / 'model').rglob('*') if f.is_file()) / 2**30:.2f} GiB")


def run(kind: str, work: Path, out: Path, distill_steps: int, compile: bool = False) -> None:
    import yaml

    out = out / kind
    out.mkdir(parents=True, exist_ok=True)
    run_dir = work / kind / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    p = yaml.safe_load((SRC / "configs" / ("sdxl.yaml" if kind == "sdxl" else "sd15.yaml")).read_text())
    p["world"].update(model=str(work / kind / "model"), captions=str(work / "captions.json"),
                      distill_captions=str(work / "captions.json"),
                      reference_images=str(work / "ref"), clip_model=str(work / "clip"))
    p["prepare"].update(distill_prompts=12, eval_prompts=8, reference_images=16)
    p["distill"].update(steps=distill_steps, heldout_prompts=2, checkpoint_every=distill_steps, log_every=50)
    if p["distill"].get("source") == "online":  # the 10 streamed prompts: a buffer of 8, 4 per unroll, eager teacher
        p["distill"]["online"].update(prompts=0, buffer_prompts=8, unroll_batch=4, refresh_every=4, compile=compile)
    p["evaluate"].update(n_samples=8, batch_size=8, fid_bootstrap=2, kid_subsets=2, kid_subset_size=8, latency_runs=3,
                         grid_images=4)
    p["trajectories"]["shard_size"] = 4
    p["ablate"].update(n_samples=4, distill_prompts=8)  # not run here; sized to validate
    (run_dir / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               CLOCKWORK_MLFLOW="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    rows = []
    for stage in ("prepare", "trajectories", "distill", "evaluate"):
        t0 = time.time()
        res = subprocess.run([sys.executable, str(SRC / "pipeline" / f"{stage}.py")], cwd=run_dir, env=env,
                             capture_output=True, text=True)
        wall = time.time() - t0
        (out / f"{stage}.log").write_text(res.stdout[-20000:] + "\n--- stderr ---\n" + res.stderr[-20000:])
        usage = next((ln for ln in res.stdout.splitlines() if ln.startswith("[usage]")), "")
        m = re.search(r"peak GPU memory ([\d.]+) GiB allocated / ([\d.]+) GiB reserved", usage)
        rows.append({"stage": stage, "rc": res.returncode, "wall_s": round(wall, 1),
                     "peak_gpu_gib_allocated": float(m.group(1)) if m else None,
                     "peak_gpu_gib_reserved": float(m.group(2)) if m else None})
        print(json.dumps(rows[-1]), flush=True)
        if res.returncode:
            print(res.stderr[-3000:])
            break
    traj = run_dir / "data" / "trajectories"
    info = {"kind": kind, "stages": rows}
    if (traj / "meta.json").is_file():
        meta = json.loads((traj / "meta.json").read_text())
        size = sum(f.stat().st_size for f in traj.glob("*.safetensors"))
        info["trajectories"] = {"meta": meta, "mbytes": round(size / 2**20, 1),
                                "mbytes_per_prompt": round(size / 2**20 / meta["num_prompts"], 1)}
        from safetensors import safe_open

        with safe_open(str(traj / "shard-00000.safetensors"), "pt") as f:
            info["trajectories"]["shapes"] = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    for name in ("metrics/evaluate.json", "metrics/distill.json"):
        if (run_dir / name).is_file():
            info[Path(name).stem] = json.loads((run_dir / name).read_text())
    import torch

    info["device"] = torch.cuda.get_device_name(0)
    (out / "stages.json").write_text(json.dumps(info, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["build", "run"])
    ap.add_argument("--kind", choices=["sd15", "sdxl"], required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--compile", action="store_true", help="distill.online.compile on (default off: the stage record "
                    "then holds no compile time)")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    build(a.kind, a.workdir) if a.action == "build" else run(a.kind, a.workdir, a.out, a.distill_steps, a.compile)


if __name__ == "__main__":
    main()
