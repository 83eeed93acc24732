"""What is benchmarked: the UNets (SD 1.5 and tiny with random weights, the committed teacher), the ResNet
adaptor, and the authors' style Clockwork (a UNet whose low-resolution blocks are swapped at run time)."""

from __future__ import annotations

import torch
from torch import nn

from clockwork.schedulers import SD_SCHEDULER


# A 4-level UNet in SD 1.5's layout with tiny widths (for the test suite and CPU smoke runs).
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 16, 32, 32),
    norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
# ResNet adaptor width per model: 384 x depth 2 is 13.8 M parameters on SD 1.5 (the paper's ~14 M).
RESNET_WIDTH = {"sd15": 384, "teacher": 128, "tiny": 16}
METHODS = ("baseline", "identity", "authors", "resnet")
MODES = ("eager", "fast")


class ModelSpec:
    def __init__(self, name, unet, scheduler, latent_shape, seq_len, ctx_dim, flops_config, guidance):
        self.name, self.unet, self.scheduler = name, unet, scheduler
        self.latent_shape, self.seq_len, self.ctx_dim = latent_shape, seq_len, ctx_dim
        self.flops_config, self.guidance = flops_config, guidance


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0, sample_size: int | None = None) -> ModelSpec:
    """``sd15`` (random weights built on the device), ``teacher`` (the committed embedded teacher) or ``tiny``."""
    from diffusers import UNet2DConditionModel

    from clockwork.schedulers import make_scheduler

    torch.manual_seed(seed)
    if name == "teacher":
        from clockwork.embedded.teacher import TEACHER_CONFIG, load_teacher, sampling_scheduler
        from clockwork.embedded.text import MAX_TOKENS

        unet = load_teacher(dtype=dtype, device=device)
        c = unet.config
        return ModelSpec(name, unet, sampling_scheduler("dpm++"), (c.in_channels, c.sample_size, c.sample_size),
                         MAX_TOKENS, c.cross_attention_dim, dict(TEACHER_CONFIG), guidance=2.0)
    if name == "sd15":
        from clockwork.flops import SD15

        cfg = dict(SD15)
    elif name == "tiny":
        cfg = dict(TINY)
    else:
        raise ValueError(f"unknown model {name!r}; choose sd15, teacher or tiny")
    if sample_size:
        cfg["sample_size"] = sample_size
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    unet = unet.to(dtype=dtype).eval()
    sched = make_scheduler("dpm++", SD_SCHEDULER)
    c = unet.config
    seq = 77 if name == "sd15" else 8
    return ModelSpec(name, unet, sched, (c.in_channels, c.sample_size, c.sample_size), seq, c.cross_attention_dim,
                     cfg, guidance=7.5)


def build_resnet_adaptor(unet, cut: int, width: int, depth: int, device, dtype, seed: int = 0):
    """The paper's ResNet adaptor with random weights (its zero-initialised last layer made random too,
    so the adaptor's output matters to the fast-vs-eager check and no kernel runs on zeros)."""
    from clockwork.adaptors import build_adaptor
    from clockwork.cut import UNetCut

    torch.manual_seed(seed + 1)
    ad = build_adaptor("resnet", UNetCut(unet, cut), width=width, depth=depth)
    with torch.no_grad():
        nn.init.normal_(ad.up.weight, std=0.01)
        nn.init.normal_(ad.up.bias, std=0.01)
    return ad.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------- the authors' style row
class _Stub(nn.Module):
    """Stands in for a low-resolution block on adaptor calls (diffusers reads ``len(block.resnets)`` and
    ``has_cross_attention``): down blocks pass their input through as output and skips, the mid block
    and the inner up blocks pass through, the boundary up block returns the cached output."""

    def __init__(self, block: nn.Module, role: str, owner: AuthorsStyleClockwork):
        super().__init__()
        self.role = role
        self.has_cross_attention = getattr(block, "has_cross_attention", False)
        self.resnets = [None] * len(getattr(block, "resnets", []))
        self.n_res = len(self.resnets) + (1 if getattr(block, "downsamplers", None) else 0)
        object.__setattr__(self, "owner", owner)  # not a submodule

    def forward(self, hidden_states, *args, **kwargs):
        if self.role == "down":
            return hidden_states, (hidden_states,) * self.n_res
        if self.role == "boundary":
            return self.owner.cache
        return hidden_states


class AuthorsStyleClockwork:
    """Identity-adaptor Clockwork the way the authors' release does it: count UNet calls, and on adaptor
    calls mutate the UNet - swap its low-resolution blocks for stubs returning the last full call's output
    of the boundary up block (after its upsampler). Eager only; needs ``reset()`` between generations."""

    def __init__(self, unet, clock: int = 2, cut: int = 1):
        n = len(unet.down_blocks)
        self.unet, self.clock, self.calls, self.cache = unet, clock, 0, None
        self.real, self.stubs = {}, {}
        for i in range(cut, n):
            self.real["down", i] = unet.down_blocks[i]
        self.real["mid", 0] = unet.mid_block
        for i in range(0, n - cut):
            self.real["up", i] = unet.up_blocks[i]
        for (kind, i), blk in self.real.items():
            role = "boundary" if (kind == "up" and i == n - 1 - cut) else kind
            self.stubs[kind, i] = _Stub(blk, role, self)
        self._handle = unet.up_blocks[n - 1 - cut].register_forward_hook(self._store)
        self._stubbed = False

    def _store(self, module, args, output):
        self.cache = output

    def _swap(self, stubs: bool) -> None:
        if stubs == self._stubbed:
            return
        for (kind, i), real in self.real.items():
            mod = self.stubs[kind, i] if stubs else real
            if kind == "down":
                self.unet.down_blocks[i] = mod
            elif kind == "up":
                self.unet.up_blocks[i] = mod
            else:
                self.unet.mid_block = mod
        self._stubbed = stubs

    def reset(self) -> None:
        self.calls = 0

    def __call__(self, sample, timestep, encoder_hidden_states):
        self._swap(self.calls % self.clock != 0)
        self.calls += 1
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    def close(self) -> None:
        self._swap(False)
        self._handle.remove()
