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

from collections.abc import Mapping
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
    # True for the training-free adaptors that return r_out_prev as is (identity, forecast): the hook may then keep
    # r_out after the boundary upsampler and skip that conv on adaptor steps, and they fit every UNet and cut.
    reuses_r_out = False

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
    """Reuse the previous step's r_out as is: DeepCache's cache. Training-free, 0 parameters (the authors'
    released wrapper)."""

    kind = "identity"
    reuses_r_out = True

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


FORECAST_ORDERS = (0, 1, 2)


def extrapolation_weights(full_steps, step) -> list[float]:
    """Lagrange weights that extrapolate values known at ``full_steps`` to ``step``.

    ``w_j = prod_{i != j} (step - k_i) / (k_j - k_i)``; ``sum_j w_j f(k_j)`` is the value at ``step`` of the
    polynomial of degree ``len(full_steps) - 1`` through the points, and the weights sum to 1 (a constant is
    reproduced). One step gives ``[1.0]`` (reuse); ``[0, 1]`` -> 2 gives ``[-1.0, 2.0]`` (``2 f(1) - f(0)``).
    Pure Python floats, so the result does not depend on any tensor's dtype.
    """
    ks = [float(k) for k in full_steps]
    if not ks:
        raise ValueError("extrapolation needs at least one full step")
    if len(set(ks)) != len(ks):
        raise ValueError(f"full steps must be distinct, got {list(full_steps)}")
    s = float(step)
    weights = []
    for j, kj in enumerate(ks):
        w = 1.0
        for i, ki in enumerate(ks):
            if i != j:
                w *= (s - ki) / (kj - ki)
        weights.append(w)
    return weights


class ForecastAdaptor(AdaptorBase):
    """Forecast r_out from the r_out of the last full steps (TaylorSeer-style, finite differences): training-free,
    0 parameters.

    On an adaptor step at sampler step ``s`` the hook passes as r_out_prev the polynomial extrapolation, in the
    sampler step index, of the r_out of the last ``order + 1`` full steps ``k_0 < ... < k_m`` of the same UNet
    call slot: ``sum_j w_j r_out(k_j)`` with :func:`extrapolation_weights` (they sum to 1). ``order=1`` with one
    earlier full step at equal spacing gives ``2 r_out(k_1) - r_out(k_0)``; with fewer full steps than
    ``order + 1`` so far it uses as many as there are, so with one it is the identity adaptor (DeepCache's reuse);
    ``order=0`` is the identity adaptor. The module itself returns the r_out_prev it is given (as the identity
    does): the extrapolation is :meth:`extrapolate`, a plain weighted sum outside the compiled graphs.

    Memory: it keeps ``cached_tensors = order + 1`` r_out tensors per UNet call slot (the identity adaptor keeps
    1) - after the boundary upsampler, as the identity does, since the weights sum to 1 and the upsampler is
    affine, so extrapolating after it equals upsampling the extrapolation (up to rounding). A sampler with several
    model evaluations per step (Heun) keeps that many per evaluation of the step.
    """

    kind = "forecast"
    reuses_r_out = True

    @register_to_config
    def __init__(self, r_in_channels: int = 0, r_out_channels: int = 0, temb_channels: int = 0, text_channels: int = 0,
                 cut: int = 1, order: int = 1, inputs: tuple = ("r_out_prev",)):
        super().__init__()
        if tuple(inputs) != ("r_out_prev",):
            raise ValueError("the forecast adaptor only uses 'r_out_prev'")
        if isinstance(order, bool) or not isinstance(order, int) or order not in FORECAST_ORDERS:
            raise ValueError(f"forecast adaptor order must be one of {list(FORECAST_ORDERS)} "
                             f"(0 = reuse as the identity adaptor, 1 = linear, 2 = quadratic), got {order!r}")

    @property
    def order(self) -> int:
        return int(self.config.order)

    @property
    def cached_tensors(self) -> int:
        """r_out tensors kept per UNet call slot: ``order + 1`` (the identity adaptor keeps 1)."""
        return self.order + 1

    def extrapolate(self, history, step) -> torch.Tensor:
        """r_out at sampler ``step`` from ``history``, a sequence of ``(full step, r_out)`` (oldest first): the
        weighted sum over its last ``cached_tensors`` entries. One entry is returned as is (the identity).
        Accumulates in float32 for 16-bit tensors and returns the tensors' dtype."""
        history = list(history)[-self.cached_tensors:]
        if not history:
            raise ValueError("the forecast adaptor needs r_out of at least one full step; step 0 can never be an adaptor step")
        if len(history) == 1:
            return history[0][1]
        weights = extrapolation_weights([k for k, _ in history], step)
        dtype = history[-1][1].dtype
        acc = None
        for w, (_, r) in zip(weights, history):
            term = r.float() * w if r.dtype in (torch.float16, torch.bfloat16) else r * w
            acc = term if acc is None else acc.add_(term)
        return acc.to(dtype)

    def forward(self, r_in=None, r_out_prev=None, temb=None, text=None):
        if r_out_prev is None:
            raise ValueError("the forecast adaptor needs r_out(t+1); step 0 can never be an adaptor step")
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
    "forecast": ForecastAdaptor,
    "resnet": ResNetAdaptor,
    "unet-light": UNetLightAdaptor,
}


def build_adaptor(kind: str, cut_or_dims, cut: int | None = None, **kwargs) -> AdaptorBase:
    """Build adaptor ``kind`` for a :class:`~clockwork.cut.UNetCut`, a dict of its ``signature()``, or a diffusers
    UNet and ``cut`` (default 1, the paper's): ``build_adaptor("resnet", pipe.unet, cut=1)``."""
    if kind not in ADAPTORS:
        raise ValueError(f"unknown adaptor {kind!r}; choose one of {sorted(ADAPTORS)}")
    if isinstance(cut_or_dims, nn.Module):  # a UNet: its cut's signature
        from clockwork.cut import UNetCut

        cut_or_dims = UNetCut(cut_or_dims, 1 if cut is None else cut)
    elif cut is not None:
        raise ValueError("cut= goes with a UNet; a UNetCut or a signature dict already fixes the cut")
    if hasattr(cut_or_dims, "signature"):
        sig = cut_or_dims.signature()
    elif isinstance(cut_or_dims, Mapping):
        sig = dict(cut_or_dims)
    else:
        raise TypeError(f"build_adaptor needs a diffusers UNet (with cut=), a clockwork.cut.UNetCut or its signature() "
                        f"dict, got {type(cut_or_dims).__name__}")
    if kind == "identity":
        if kwargs.get("inputs") not in (None, ("r_out_prev",), ["r_out_prev"]):
            raise ValueError("the identity adaptor only uses 'r_out_prev'")
        kwargs = {}
    elif kind == "forecast":
        if kwargs.get("inputs") not in (None, ("r_out_prev",), ["r_out_prev"]):
            raise ValueError("the forecast adaptor only uses 'r_out_prev'")
        other = sorted(k for k in kwargs if k not in ("order", "inputs"))
        if other:
            raise ValueError(f"the forecast adaptor takes only `order`, not {other}")
        kwargs = {k: v for k, v in kwargs.items() if k == "order"}
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
    cls = classes[name]
    if cls.reuses_r_out:  # identity, forecast: no parameters, so save_pretrained wrote config.json alone
        return cls.from_config(cls.load_config(path)).eval()
    return cls.from_pretrained(path)


def check_compatible(adaptor: nn.Module, signature: dict[str, Any]) -> None:
    """Raise ValueError if ``adaptor`` was made for another UNet or cut than ``signature``."""
    if isinstance(adaptor, (IdentityAdaptor, ForecastAdaptor)):
        return  # reuses (or extrapolates) r_out as is: fits every UNet and cut
    cfg = getattr(adaptor, "config", None)
    if cfg is None:
        return  # a user-supplied module: trust it, shapes will tell
    wrong = {k: (cfg.get(k), v) for k, v in signature.items() if k in cfg and cfg.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: adaptor has {a}, UNet cut needs {b}" for k, (a, b) in wrong.items())
        raise ValueError(f"this adaptor was made for another UNet or cut ({detail}); train one for this cut or change `cut`")
