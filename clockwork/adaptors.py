"""Adaptors: light models that predict the low-resolution UNet output r_out(t) on adaptor steps.

Every adaptor is called as ``adaptor(r_in=..., r_out_prev=..., temb=..., text=...)`` and returns r_out_hat
with r_out's shape. ``inputs`` selects which of the four it may look at (the paper's Table 5):
``r_in`` (current high-res features at the cut), ``r_out_prev`` (previous step's r_out),
``time`` (the UNet's time embedding), ``text`` (pooled prompt embedding).

All adaptors are diffusers ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` writes config.json +
safetensors (no pickle) and ``from_pretrained`` rebuilds them without the code that trained them.
The config also records the UNet signature (cut, channels) the adaptor was made for, which
:func:`check_compatible` verifies before use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

INPUTS = ("r_in", "r_out_prev", "time", "text")


def _check_inputs(inputs) -> tuple[str, ...]:
    inputs = tuple(inputs)
    bad = [i for i in inputs if i not in INPUTS]
    if bad or not inputs:
        raise ValueError(f"adaptor inputs must be a non-empty subset of {list(INPUTS)}, got {list(inputs)}")
    if "r_in" not in inputs and "r_out_prev" not in inputs:
        raise ValueError("an adaptor needs at least one feature input: 'r_in' or 'r_out_prev'")
    return inputs


def _groups(ch: int) -> int:
    """GroupNorm groups: up to 32 (as SD), with at least 2 channels each. With one channel per group
    GroupNorm removes every per-channel constant, i.e. the time / text conditioning added before it."""
    for g in (32, 16, 8, 4, 2):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


class AdaptorBase(ModelMixin, ConfigMixin):
    """Shared helpers; subclasses define ``forward(r_in, r_out_prev, temb, text)``."""

    kind = "base"

    @property
    def uses_r_out_prev(self) -> bool:
        return "r_out_prev" in self.config.inputs

    @property
    def num_parameters_(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _features(self, r_in, r_out_prev):
        feats = []
        if "r_in" in self.config.inputs:
            feats.append(r_in)
        if "r_out_prev" in self.config.inputs:
            if r_out_prev is None:
                raise ValueError("this adaptor uses r_out(t+1) but none was given (is step 0 an adaptor step?)")
            feats.append(r_out_prev)
        return torch.cat(feats, dim=1) if len(feats) > 1 else feats[0]


class IdentityAdaptor(AdaptorBase):
    """Reuse the previous step's r_out as is: training-free, 0 parameters (the authors' released wrapper)."""

    kind = "identity"

    @register_to_config
    def __init__(self, r_in_channels: int = 0, r_out_channels: int = 0, temb_channels: int = 0, text_channels: int = 0,
                 cut: int = 1, inputs: tuple = ("r_out_prev",)):
        super().__init__()
        if tuple(inputs) != ("r_out_prev",):
            raise ValueError("the identity adaptor only uses 'r_out_prev'")

    def forward(self, r_in=None, r_out_prev=None, temb=None, text=None):
        if r_out_prev is None:
            raise ValueError("the identity adaptor needs r_out(t+1); step 0 can never be an adaptor step")
        return r_out_prev


class TimeTextResnet(nn.Module):
    """A ResNet block (GroupNorm-SiLU-conv x2) with an additive time(+text) conditioning, as in SD's ResnetBlock2D."""

    def __init__(self, ch: int, cond_ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(ch), ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.cond = nn.Linear(cond_ch, ch) if cond_ch else None
        self.norm2 = nn.GroupNorm(_groups(ch), ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, cond=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.cond is not None and cond is not None:
            h = h + self.cond(F.silu(cond))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class ResNetAdaptor(AdaptorBase):
    """The paper's adaptor: strided conv down -> + projected pooled text -> N time-conditioned ResNet blocks
    -> transposed conv up -> residual connection from the input.

    The residual adds the r_out-shaped input (r_out_prev when given, else a 1x1 projection of r_in),
    so an untrained adaptor starts as the identity adaptor (its last layer is zero-initialised).
    """

    kind = "resnet"

    @register_to_config
    def __init__(self, r_in_channels: int, r_out_channels: int, temb_channels: int = 0, text_channels: int = 0,
                 cut: int = 1, width: int = 128, depth: int = 2, inputs: tuple = ("r_in", "r_out_prev", "time", "text")):
        super().__init__()
        inputs = _check_inputs(inputs)
        in_ch = (r_in_channels if "r_in" in inputs else 0) + (r_out_channels if "r_out_prev" in inputs else 0)
        self.down = nn.Conv2d(in_ch, width, 3, stride=2, padding=1)
        self.text_proj = nn.Linear(text_channels, width) if "text" in inputs and text_channels else None
        cond_ch = temb_channels if "time" in inputs else 0
        self.blocks = nn.ModuleList([TimeTextResnet(width, cond_ch) for _ in range(depth)])
        self.norm_out = nn.GroupNorm(_groups(width), width)
        self.up = nn.ConvTranspose2d(width, r_out_channels, 4, stride=2, padding=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.skip = None if "r_out_prev" in inputs else nn.Conv2d(r_in_channels, r_out_channels, 1)

    def forward(self, r_in=None, r_out_prev=None, temb=None, text=None):
        x = self._features(r_in, r_out_prev)
        h = self.down(x)
        if self.text_proj is not None:
            h = h + self.text_proj(text.to(h.dtype))[:, :, None, None]
        cond = temb if "time" in self.config.inputs else None
        for blk in self.blocks:
            h = blk(h, cond)
        h = self.up(F.silu(self.norm_out(h)))
        if h.shape[-2:] != x.shape[-2:]:  # odd feature maps: transposed conv overshoots by one
            h = h[..., : x.shape[-2], : x.shape[-1]]
        base = r_out_prev if self.skip is None else self.skip(r_in)
        return base + h


class UNetLightAdaptor(AdaptorBase):
    """A small two-level UNet-style adaptor ("UNet-light" in the paper's adaptor ablation)."""

    kind = "unet-light"

    @register_to_config
    def __init__(self, r_in_channels: int, r_out_channels: int, temb_channels: int = 0, text_channels: int = 0,
                 cut: int = 1, width: int = 64, depth: int = 1, inputs: tuple = ("r_in", "r_out_prev", "time", "text")):
        super().__init__()
        inputs = _check_inputs(inputs)
        in_ch = (r_in_channels if "r_in" in inputs else 0) + (r_out_channels if "r_out_prev" in inputs else 0)
        cond_ch = temb_channels if "time" in inputs else 0
        self.conv_in = nn.Conv2d(in_ch, width, 3, padding=1)
        self.enc = nn.ModuleList([TimeTextResnet(width, cond_ch) for _ in range(depth)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.text_proj = nn.Linear(text_channels, 2 * width) if "text" in inputs and text_channels else None
        self.mid = nn.ModuleList([TimeTextResnet(2 * width, cond_ch) for _ in range(depth)])
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.dec = nn.ModuleList([TimeTextResnet(width, cond_ch) for _ in range(depth)])
        self.norm_out = nn.GroupNorm(_groups(width), width)
        self.conv_out = nn.Conv2d(width, r_out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.skip = None if "r_out_prev" in inputs else nn.Conv2d(r_in_channels, r_out_channels, 1)

    def forward(self, r_in=None, r_out_prev=None, temb=None, text=None):
        x = self._features(r_in, r_out_prev)
        cond = temb if "time" in self.config.inputs else None
        h0 = self.conv_in(x)
        for b in self.enc:
            h0 = b(h0, cond)
        h = self.down(h0)
        if self.text_proj is not None:
            h = h + self.text_proj(text.to(h.dtype))[:, :, None, None]
        for b in self.mid:
            h = b(h, cond)
        h = self.up(h)[..., : h0.shape[-2], : h0.shape[-1]] + h0
        for b in self.dec:
            h = b(h, cond)
        h = self.conv_out(F.silu(self.norm_out(h)))
        base = r_out_prev if self.skip is None else self.skip(r_in)
        return base + h


ADAPTORS: dict[str, type[AdaptorBase]] = {
    "identity": IdentityAdaptor,
    "resnet": ResNetAdaptor,
    "unet-light": UNetLightAdaptor,
}


def build_adaptor(kind: str, cut_or_dims, **kwargs) -> AdaptorBase:
    """Build adaptor ``kind`` for a :class:`~clockwork.cut.UNetCut` (or a dict of its ``signature()``)."""
    if kind not in ADAPTORS:
        raise ValueError(f"unknown adaptor {kind!r}; choose one of {sorted(ADAPTORS)}")
    sig = cut_or_dims.signature() if hasattr(cut_or_dims, "signature") else dict(cut_or_dims)
    if kind == "identity":
        if kwargs.get("inputs") not in (None, ("r_out_prev",), ["r_out_prev"]):
            raise ValueError("the identity adaptor only uses 'r_out_prev'")
        kwargs = {}
    if "inputs" in kwargs:
        kwargs["inputs"] = tuple(kwargs["inputs"])
    return ADAPTORS[kind](**sig, **kwargs)


def load_adaptor(path) -> AdaptorBase:
    """Load any adaptor saved with ``save_pretrained`` (the class is read from config.json)."""
    import json
    from pathlib import Path

    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no adaptor at {path} (expected config.json + diffusion_pytorch_model.safetensors)")
    name = json.loads(cfg_file.read_text()).get("_class_name")
    classes = {c.__name__: c for c in ADAPTORS.values()}
    if name not in classes:
        raise ValueError(f"{cfg_file} describes a {name!r}, not one of the adaptors {sorted(classes)}")
    return classes[name].from_pretrained(path)


def check_compatible(adaptor: nn.Module, signature: dict[str, Any]) -> None:
    """Raise ValueError if ``adaptor`` was made for another UNet or cut than ``signature``."""
    if isinstance(adaptor, IdentityAdaptor):
        return  # reuses r_out as is: fits every UNet and cut
    cfg = getattr(adaptor, "config", None)
    if cfg is None:
        return  # a user-supplied module: trust it, shapes will tell
    wrong = {k: (cfg.get(k), v) for k, v in signature.items() if k in cfg and cfg.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: adaptor has {a}, UNet cut needs {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"this adaptor was made for another UNet or cut ({detail}); train one for this cut or change `cut`")
