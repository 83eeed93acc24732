"""A minimal diffusers text-to-image pipeline for the embedded pixel-space teacher.

It mirrors StableDiffusionPipeline's denoising loop (same scheduler calls, same CFG arithmetic),
minus the VAE: the UNet works on RGB pixels in [-1, 1]. Prompts come in as token states
(e.g. from :class:`clockwork.embedded.text.EmbeddingTable`), so sampling never runs the text encoder.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor


class EmbeddedPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int = 8,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        cfg_mode: str = "batch",
        output_type: str = "pt",
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample images; returns (B, 3, H, W) floats in [-1, 1] (``output_type="pt"``) or uint8 (``"uint8"``).

        ``cfg_mode="batch"`` runs the unconditional and conditional halves as one batch (as diffusers
        does); ``"two_calls"`` runs two UNet calls per step (as some pipelines and memory-saving modes do).
        """
        if cfg_mode not in ("batch", "two_calls"):
            raise ValueError(f"cfg_mode must be 'batch' or 'two_calls', got {cfg_mode!r}")
        if output_type not in ("pt", "uint8"):
            raise ValueError(f"output_type must be 'pt' or 'uint8', got {output_type!r}")
        unet, scheduler = self.unet, self.scheduler
        device, dtype = unet.device, unet.dtype
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.to(device, dtype)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            if negative_prompt_embeds is None:
                raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (the empty prompt's states)")
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype).expand_as(prompt_embeds)

        shape = (batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device, dtype)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * scheduler.init_noise_sigma

        for t in self.progress_bar(scheduler.timesteps) if progress else scheduler.timesteps:
            if do_cfg and cfg_mode == "batch":
                x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                out = unet(x, t, encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds])).sample
                out_uncond, out_text = out.chunk(2)
            elif do_cfg:
                x = scheduler.scale_model_input(latents, t)
                out_uncond = unet(x, t, encoder_hidden_states=negative_prompt_embeds).sample
                out_text = unet(x, t, encoder_hidden_states=prompt_embeds).sample
            else:
                x = scheduler.scale_model_input(latents, t)
                out_text = unet(x, t, encoder_hidden_states=prompt_embeds).sample
            out = out_uncond + guidance_scale * (out_text - out_uncond) if do_cfg else out_text
            latents = scheduler.step(out, t, latents, return_dict=False)[0]

        images = latents.float().clamp(-1, 1)
        if output_type == "uint8":
            return ((images + 1) * 127.5).round().to(torch.uint8)
        return images
