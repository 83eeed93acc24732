"""Cut a diffusers ``UNet2DConditionModel`` into the always-run high-resolution part and the low-resolution part.

With ``cut=c`` (``1 <= c <= len(down_blocks) - 1``) the high-resolution part is ``conv_in``,
``down_blocks[:c]`` (with their downsamplers), the upsampler of ``up_blocks[n-1-c]``, ``up_blocks[n-c:]``
and the output head. The low-resolution part - ``down_blocks[c:]``, ``mid_block`` and the
resnets/attentions of ``up_blocks[:n-c]`` - is what an adaptor replaces on adaptor steps.

- ``r_in``  = output of ``down_blocks[c-1]`` after its downsampler (the input of the low-res part);
- ``r_out`` = output of ``up_blocks[n-1-c]`` *before* its upsampler (the output of the low-res part),
  so a learned adaptor works at r_in's resolution, as in the paper.

:meth:`UNetCut.full_step` and :meth:`UNetCut.adaptor_step` are pure functions of their inputs
(no state), so each is one static graph for ``torch.compile`` and the clock is decided outside.
The full step replays diffusers' forward op for op, so it is bitwise identical to ``unet(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import apply_freeu
from torch import nn


@dataclass
class StepInputs:
    """What every block needs besides the hidden states, computed once per UNet call."""

    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None
    encoder_attention_mask: torch.Tensor | None
    cross_attention_kwargs: dict[str, Any] | None
    forward_upsample_size: bool
    text: torch.Tensor  # pooled prompt embedding for adaptors
    sample: torch.Tensor  # the UNet input after center_input_sample (what conv_in sees)


def _num_res_outputs(block: nn.Module) -> int:
    return len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)


def _controlnet_residuals(down, mid):
    """ControlNet residuals as diffusers' forward reads them: both or none.

    diffusers treats ``down_block_additional_residuals`` without ``mid_block_additional_residual`` as the
    deprecated T2I-Adapter form (added *inside* the down blocks), which Clockwork does not support, and
    ignores a mid residual given without down residuals.
    """
    if down is not None and mid is None:
        raise ValueError(
            "down_block_additional_residuals without mid_block_additional_residual is diffusers' deprecated "
            "T2I-Adapter form, which Clockwork does not support; pass ControlNet residuals (both down and mid)"
        )
    if down is None:
        return None, None
    return down, mid


def valid_cuts(unet: nn.Module) -> list[int]:
    return list(range(1, len(unet.down_blocks)))


class UNetCut:
    """A view of ``unet`` split at ``cut``; holds no weights of its own and never modifies the UNet."""

    def __init__(self, unet: nn.Module, cut: int = 1):
        n = len(getattr(unet, "down_blocks", []))
        if not hasattr(unet, "up_blocks") or n == 0:
            raise ValueError(f"UNetCut needs a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        allowed = valid_cuts(unet)
        if not isinstance(cut, int) or cut not in allowed:
            raise ValueError(
                f"cut={cut!r} is not possible for this UNet with {n} resolution levels; valid cuts: {allowed} "
                "(cut=1 is the paper's default: keep conv_in, down_blocks[0], the last up block and the head)"
            )
        if len(unet.up_blocks) != n:
            raise ValueError(f"UNet has {n} down blocks but {len(unet.up_blocks)} up blocks; Clockwork needs a symmetric UNet")
        if unet.config.get("addition_embed_type") == "image_hint":
            raise ValueError("UNets with addition_embed_type='image_hint' are not supported")
        self.unet = unet
        self.cut = cut
        self.n = n
        self.kept_down = list(range(cut))
        self.replaced_down = list(range(cut, n))
        self.replaced_up = list(range(0, n - cut))
        self.kept_up = list(range(n - cut, n))
        self.boundary_up = n - 1 - cut  # the replaced up block whose upsampler stays in the high-res part
        for i in self.replaced_up:
            if type(unet.up_blocks[i]).__name__ not in ("UpBlock2D", "CrossAttnUpBlock2D"):
                raise ValueError(
                    f"up_blocks[{i}] is a {type(unet.up_blocks[i]).__name__}; only UpBlock2D and CrossAttnUpBlock2D can be cut"
                )
        if not getattr(unet.up_blocks[self.boundary_up], "upsamplers", None):
            raise ValueError(f"up_blocks[{self.boundary_up}] has no upsampler, so cut={cut} is not at a resolution change")
        # Skip connections: the replaced up blocks consume all skips of the replaced down blocks plus
        # `self.shared_skips` of the kept ones (for SD: r_in itself, the kept block's downsampler output).
        kept_skips = 1 + sum(_num_res_outputs(unet.down_blocks[i]) for i in self.kept_down)
        replaced_skips = sum(_num_res_outputs(unet.down_blocks[i]) for i in self.replaced_down)
        consumed_replaced = sum(len(unet.up_blocks[i].resnets) for i in self.replaced_up)
        consumed_kept = sum(len(unet.up_blocks[i].resnets) for i in self.kept_up)
        self.shared_skips = consumed_replaced - replaced_skips
        if self.shared_skips < 0 or consumed_kept + self.shared_skips != kept_skips:
            raise ValueError(f"cut={cut}: the skip connections of this UNet do not split cleanly at this level")

    # ---- shapes --------------------------------------------------------------------------------
    @property
    def r_in_channels(self) -> int:
        return self.unet.config.block_out_channels[self.cut - 1]

    @property
    def r_out_channels(self) -> int:
        boc = list(reversed(self.unet.config.block_out_channels))
        return boc[self.boundary_up]

    @property
    def temb_channels(self) -> int:
        return self.unet.time_embedding.linear_2.out_features

    @property
    def text_channels(self) -> int:
        if self.unet.config.get("addition_embed_type") == "text_time":
            return self.unet.add_embedding.linear_1.in_features - self.unet.config.addition_time_embed_dim * 6
        return self.unet.config.cross_attention_dim if isinstance(self.unet.config.cross_attention_dim, int) else self.unet.config.cross_attention_dim[0]

    def r_in_scale(self) -> int:
        """Down-sampling factor of r_in (and r_out) relative to the UNet's input."""
        return 2 ** sum(1 for i in self.kept_down if getattr(self.unet.down_blocks[i], "downsamplers", None))

    def adaptor_dims(self) -> dict[str, int]:
        return dict(r_in_channels=self.r_in_channels, r_out_channels=self.r_out_channels,
                    temb_channels=self.temb_channels, text_channels=self.text_channels)

    def signature(self) -> dict[str, Any]:
        """What an adaptor trained for this cut must match (stored with the adaptor)."""
        return {"cut": self.cut, **self.adaptor_dims()}

    # ---- the pieces ----------------------------------------------------------------------------
    def prepare(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        class_labels=None,
        timestep_cond=None,
        attention_mask=None,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
        encoder_attention_mask=None,
    ) -> StepInputs:
        u = self.unet
        factor = 2**u.num_upsamplers
        forward_upsample_size = any(d % factor != 0 for d in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = u.get_time_embed(sample=sample, timestep=timestep)
        emb = u.time_embedding(t_emb, timestep_cond)
        class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else emb + class_emb
        aug_emb = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        emb = emb + aug_emb if aug_emb is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        ehs = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        if added_cond_kwargs and "text_embeds" in added_cond_kwargs:
            text = added_cond_kwargs["text_embeds"]  # SDXL's pooled prompt embedding
        else:
            text = encoder_hidden_states.mean(dim=1)
        if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen") is not None:
            raise ValueError("GLIGEN cross_attention_kwargs are not supported by Clockwork")
        return StepInputs(emb, ehs, attention_mask, encoder_attention_mask, cross_attention_kwargs, forward_upsample_size,
                          text, sample)

    def _down(self, i: int, h: torch.Tensor, s: StepInputs):
        block = self.unet.down_blocks[i]
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=s.emb, encoder_hidden_states=s.encoder_hidden_states,
                         attention_mask=s.attention_mask, cross_attention_kwargs=s.cross_attention_kwargs,
                         encoder_attention_mask=s.encoder_attention_mask)
        return block(hidden_states=h, temb=s.emb)

    def _up_body(self, i: int, h: torch.Tensor, res: tuple, s: StepInputs) -> torch.Tensor:
        """up_blocks[i] without its upsampler (same op order as diffusers' forward)."""
        block = self.unet.up_blocks[i]
        freeu = all(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2"))
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            skip = res[-1]
            res = res[:-1]
            if freeu:  # as diffusers' up blocks do (FreeU acts on the first two stages only)
                h, skip = apply_freeu(block.resolution_idx, h, skip, s1=block.s1, s2=block.s2, b1=block.b1, b2=block.b2)
            h = torch.cat([h, skip], dim=1)
            h = resnet(h, s.emb)
            if attentions is not None:
                h = attentions[j](h, encoder_hidden_states=s.encoder_hidden_states,
                                  cross_attention_kwargs=s.cross_attention_kwargs, attention_mask=s.attention_mask,
                                  encoder_attention_mask=s.encoder_attention_mask, return_dict=False)[0]
        return h

    def _up(self, i: int, h: torch.Tensor, res: tuple, s: StepInputs, upsample_size) -> torch.Tensor:
        block = self.unet.up_blocks[i]
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=h, temb=s.emb, res_hidden_states_tuple=res,
                         encoder_hidden_states=s.encoder_hidden_states, cross_attention_kwargs=s.cross_attention_kwargs,
                         upsample_size=upsample_size, attention_mask=s.attention_mask,
                         encoder_attention_mask=s.encoder_attention_mask)
        return block(hidden_states=h, temb=s.emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

    def _encode(self, s: StepInputs, down_residuals=None):
        """conv_in + kept down blocks -> (r_in, skips of the kept part)."""
        h = self.unet.conv_in(s.sample)
        skips = (h,)
        for i in self.kept_down:
            h, res = self._down(i, h, s)
            skips += res
        if down_residuals is not None:
            skips = tuple(a + b for a, b in zip(skips, down_residuals[: len(skips)]))
        return h, skips

    def _upsample(self, r_out: torch.Tensor, skips: tuple, s: StepInputs) -> torch.Tensor:
        upsample_size = skips[-1].shape[2:] if s.forward_upsample_size else None
        for up in self.unet.up_blocks[self.boundary_up].upsamplers:
            r_out = up(r_out, upsample_size)
        return r_out

    def _decode(self, r_out: torch.Tensor, skips: tuple, s: StepInputs, upsampled: bool = False) -> torch.Tensor:
        """upsampler of the boundary block (unless ``upsampled``) + kept up blocks + head."""
        u = self.unet
        h = r_out if upsampled else self._upsample(r_out, skips, s)
        for i in self.kept_up:
            n_res = len(u.up_blocks[i].resnets)
            res, skips = skips[-n_res:], skips[:-n_res]
            is_final = i == self.n - 1
            upsample_size = skips[-1].shape[2:] if (s.forward_upsample_size and not is_final) else None
            h = self._up(i, h, res, s, upsample_size)
        if u.conv_norm_out:
            h = u.conv_norm_out(h)
            h = u.conv_act(h)
        return u.conv_out(h)

    def full_step(
        self, sample, timestep, encoder_hidden_states, down_block_additional_residuals=None,
        mid_block_additional_residual=None, upsampled: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole UNet; returns (output, r_in, r_out). Bitwise equal to ``unet(...).sample``.

        ``upsampled=True`` returns r_out after the boundary upsampler instead (what the identity
        adaptor reuses: upsampling an unchanged r_out again would recompute the same tensor).
        """
        down_block_additional_residuals, mid_block_additional_residual = _controlnet_residuals(
            down_block_additional_residuals, mid_block_additional_residual)
        s = self.prepare(sample, timestep, encoder_hidden_states, **kwargs)
        u = self.unet
        h = u.conv_in(s.sample)
        skips = (h,)
        r_in = None
        for i in range(self.n):
            h, res = self._down(i, h, s)
            skips += res
            if i == self.cut - 1:
                r_in = h
        if down_block_additional_residuals is not None:
            skips = tuple(a + b for a, b in zip(skips, down_block_additional_residuals))
        if u.mid_block is not None:
            if getattr(u.mid_block, "has_cross_attention", False):
                h = u.mid_block(h, s.emb, encoder_hidden_states=s.encoder_hidden_states, attention_mask=s.attention_mask,
                                cross_attention_kwargs=s.cross_attention_kwargs, encoder_attention_mask=s.encoder_attention_mask)
            else:
                h = u.mid_block(h, s.emb)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        for i in self.replaced_up[:-1]:
            n_res = len(u.up_blocks[i].resnets)
            res, skips = skips[-n_res:], skips[:-n_res]
            upsample_size = skips[-1].shape[2:] if s.forward_upsample_size else None
            h = self._up(i, h, res, s, upsample_size)
        n_res = len(u.up_blocks[self.boundary_up].resnets)
        res, skips = skips[-n_res:], skips[:-n_res]
        r_out = self._up_body(self.boundary_up, h, res, s)
        if upsampled:
            r_out = self._upsample(r_out, skips, s)
        return self._decode(r_out, skips, s, upsampled=upsampled), r_in, r_out

    def adaptor_step(
        self, adaptor: nn.Module, r_out_prev: torch.Tensor | None, sample, timestep, encoder_hidden_states,
        down_block_additional_residuals=None, mid_block_additional_residual=None, upsampled: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """High-res part only; the adaptor predicts r_out. Returns (output, r_in, r_out_hat).

        ``upsampled=True`` means r_out_prev was taken after the upsampler (identity adaptor only).
        """
        down_block_additional_residuals, _ = _controlnet_residuals(down_block_additional_residuals,
                                                                   mid_block_additional_residual)
        s = self.prepare(sample, timestep, encoder_hidden_states, **kwargs)
        r_in, skips = self._encode(s, down_block_additional_residuals)
        r_out = adaptor(r_in=r_in, r_out_prev=r_out_prev, temb=s.emb, text=s.text)
        kept = skips[: len(skips) - self.shared_skips]
        return self._decode(r_out, kept, s, upsampled=upsampled), r_in, r_out

    def replaced_modules(self) -> list[nn.Module]:
        """Modules that never run on an adaptor step (for tests and FLOPs accounting)."""
        u = self.unet
        mods = [u.down_blocks[i] for i in self.replaced_down]
        if u.mid_block is not None:
            mods.append(u.mid_block)
        for i in self.replaced_up:
            b = u.up_blocks[i]
            if i != self.boundary_up:  # the whole block, its upsampler included
                mods.append(b)
                continue
            mods.extend(b.resnets)  # the boundary block keeps its upsampler in the high-res part
            if getattr(b, "attentions", None) is not None:
                mods.extend(b.attentions)
        return mods
