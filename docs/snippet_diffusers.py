"""Use Clockwork in your diffusers pipeline.

Runs offline as is (``python docs/snippet_diffusers.py``) on a tiny *random* StableDiffusionPipeline,
so it only shows the mechanics; swap ``load_pipeline`` for the commented ``from_pretrained`` line to
run real Stable Diffusion 1.5.
"""

import json
import tempfile

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import clockwork


def load_pipeline() -> StableDiffusionPipeline:
    # Real SD 1.5 (GPU):
    # return StableDiffusionPipeline.from_pretrained(
    #     "stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16).to("cuda")
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    vocab = ["a", "c", "t", "ca", "cat</w>", "a</w>", "t</w>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    json.dump({tok: i for i, tok in enumerate(vocab)}, open(f"{folder}/vocab.json", "w"))
    open(f"{folder}/merges.txt", "w").write("#version: 0.2\nc a\nca t</w>\n")
    tokenizer = CLIPTokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt", unk_token="<unk>", model_max_length=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                                bos_token_id=8, eos_token_id=9, pad_token_id=9))
    unet = UNet2DConditionModel(  # SD 1.5's layout, tiny widths
        sample_size=16, block_out_channels=(16, 16, 32, 32), norm_num_groups=8, cross_attention_dim=16,
        attention_head_dim=4, layers_per_block=1)
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            steps_offset=1)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def main() -> dict:
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # DPM++ 2M, as in the paper
    kwargs = dict(prompt="a cat", num_inference_steps=8, output_type="pt")

    baseline = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images

    # --- Clockwork: two lines ---------------------------------------------------------------------------
    # "identity" is training-free (reuse the previous step's low-res UNet output on every other step);
    # pass the folder of a trained adaptor (adaptor="out/adaptor") for the paper's distilled ResNet adaptor.
    hook = clockwork.enable(pipe, adaptor="identity", clock=2)
    fast = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    clockwork.disable(pipe)  # the original UNet, exactly
    # ------------------------------------------------------------------------------------------------------

    again = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    decisions = ["full" if full else "adaptor" for _, full in hook.trace]
    result = {"decisions": decisions, "max_abs_diff_vs_baseline": float((fast - baseline).abs().max()),
              "disable_restores_baseline": bool(torch.equal(again, baseline))}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
