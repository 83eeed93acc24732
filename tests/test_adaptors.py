"""Adaptors: save/load without pickle, parameter counts, zero-init = identity, the Table-5 input subsets."""

from __future__ import annotations

import pytest
import torch
from conftest import build_unet

from clockwork import ForecastAdaptor, IdentityAdaptor, ResNetAdaptor, UNetLightAdaptor, build_adaptor, load_adaptor
from clockwork.adaptors import check_compatible
from clockwork.cut import UNetCut

SUBSETS = [  # the paper's Table 5
    ("r_in",),
    ("r_out_prev",),
    ("r_in", "r_out_prev"),
    ("r_in", "r_out_prev", "text"),
    ("r_in", "r_out_prev", "time", "text"),
]
SIG = {"cut": 1, "r_in_channels": 16, "r_out_channels": 24, "temb_channels": 32, "text_channels": 12}


def feats(sig=SIG, batch=2, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(r_in=torch.randn(batch, sig["r_in_channels"], size, size, generator=g),
                r_out_prev=torch.randn(batch, sig["r_out_channels"], size, size, generator=g),
                temb=torch.randn(batch, sig["temb_channels"], generator=g),
                text=torch.randn(batch, sig["text_channels"], generator=g))


def randomize(adaptor, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return adaptor.eval()


@pytest.mark.parametrize("kind", ["resnet", "unet-light"])
def test_save_load_round_trip_without_pickle(tmp_path, kind):
    ad = randomize(build_adaptor(kind, SIG, width=16, depth=2, inputs=("r_in", "r_out_prev", "text")))
    ad.save_pretrained(tmp_path / kind)
    files = sorted(p.name for p in (tmp_path / kind).iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"], files
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt") for p in (tmp_path / kind).iterdir())
    loaded = load_adaptor(tmp_path / kind)
    assert type(loaded) is type(ad) and loaded.kind == kind
    assert tuple(loaded.config.inputs) == ("r_in", "r_out_prev", "text") and loaded.config.width == 16
    assert loaded.config.cut == 1 and loaded.config.r_out_channels == 24
    assert all(torch.equal(a, b) for a, b in zip(ad.state_dict().values(), loaded.state_dict().values()))
    x = feats()
    with torch.no_grad():
        assert torch.equal(ad(**x), loaded.eval()(**x))
    # the class's own from_pretrained works too, without clockwork's loader
    again = type(ad).from_pretrained(tmp_path / kind)
    assert again.num_parameters_ == ad.num_parameters_


def test_load_adaptor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_adaptor(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match=r"not one of the adaptors \['ForecastAdaptor', 'IdentityAdaptor', 'ResNetAdaptor', 'UNetLightAdaptor'\]"):
        load_adaptor(tmp_path)


@pytest.mark.parametrize("kind", ["resnet", "unet-light"])
def test_parameter_count_scales_with_width(kind):
    counts = [build_adaptor(kind, SIG, width=w).num_parameters_ for w in (16, 32, 64, 128)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    # the conv/ResNet body is quadratic in width: doubling the width roughly quadruples the count
    assert 3.0 < counts[3] / counts[2] < 4.5
    deeper = build_adaptor(kind, SIG, width=64, depth=3).num_parameters_
    assert deeper > counts[2]
    assert build_adaptor("identity", SIG).num_parameters_ == 0


def test_resnet_adaptor_size_for_sd15_is_the_papers_order():
    """The paper's ResNet adaptor has ~14 M parameters for SD 1.5's cut (r_in 320, r_out 640)."""
    sig = {"cut": 1, "r_in_channels": 320, "r_out_channels": 640, "temb_channels": 1280, "text_channels": 768}
    with torch.device("meta"):
        n = build_adaptor("resnet", sig, width=512, depth=2).num_parameters_
    assert 8e6 < n < 25e6, n


@pytest.mark.parametrize("kind", ["resnet", "unet-light"])
@pytest.mark.parametrize("size", [6, 5])
def test_untrained_adaptor_is_the_identity(kind, size):
    ad = build_adaptor(kind, SIG, width=16).eval()
    x = feats(size=size)
    with torch.no_grad():
        out = ad(**x)
    assert torch.equal(out, x["r_out_prev"])  # zero-initialised last layer: exactly r_out(t+1)
    assert torch.equal(IdentityAdaptor()(**x), x["r_out_prev"])
    # ... but the output layer is trainable, so it can move away from the identity
    out_layer = ad.up if kind == "resnet" else ad.conv_out
    assert out_layer.weight.requires_grad and torch.count_nonzero(out_layer.weight) == 0


@pytest.mark.parametrize("kind", ["resnet", "unet-light"])
@pytest.mark.parametrize("inputs", SUBSETS, ids=["+".join(s) for s in SUBSETS])
@pytest.mark.parametrize("width", [16, 32])
def test_input_subsets(kind, inputs, width):
    ad = randomize(build_adaptor(kind, SIG, width=width, inputs=inputs))
    assert tuple(ad.config.inputs) == inputs and ad.uses_r_out_prev == ("r_out_prev" in inputs)
    x = feats()
    with torch.no_grad():
        out = ad(**x)
        assert out.shape == x["r_out_prev"].shape and torch.isfinite(out).all()
        # the output depends on exactly the selected inputs
        for name in ("r_in", "r_out_prev", "temb", "text"):
            y = dict(x)
            y[name] = x[name] + torch.randn_like(x[name])
            changed = not torch.allclose(ad(**y), out, atol=1e-6)
            key = "time" if name == "temb" else name
            assert changed == (key in inputs), f"{name}: changed={changed} with inputs {inputs}"
        # an input it does not use may be missing altogether
        missing = {k: (None if (("time" if k == "temb" else k) not in inputs) else v) for k, v in x.items()}
        assert torch.equal(ad(**missing), out)


def test_input_subset_errors():
    for bad, msg in [(("r_in", "foo"), "non-empty subset of"), ((), "non-empty subset of"),
                     (("time", "text"), "at least one feature input")]:
        with pytest.raises(ValueError, match=msg):
            build_adaptor("resnet", SIG, inputs=bad)
    with pytest.raises(ValueError, match="identity adaptor only uses 'r_out_prev'"):
        build_adaptor("identity", SIG, inputs=("r_in",))
    with pytest.raises(ValueError, match=r"unknown adaptor 'resnet18'; choose one of \['forecast', 'identity', 'resnet', 'unet-light'\]"):
        build_adaptor("resnet18", SIG)
    ad = build_adaptor("resnet", SIG)
    with pytest.raises(ValueError, match="r_out"):
        ad(r_in=feats()["r_in"], r_out_prev=None, temb=None, text=None)
    with pytest.raises(ValueError, match="step 0"):
        IdentityAdaptor()(r_in=None, r_out_prev=None)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "embedded"])
def test_adaptors_fit_their_cut(name):
    unet = build_unet(name)
    for c in range(1, len(unet.down_blocks)):
        cut = UNetCut(unet, c)
        for kind in ("resnet", "unet-light"):
            ad = build_adaptor(kind, cut, width=16)
            assert {k: ad.config[k] for k in cut.signature()} == cut.signature()
            check_compatible(ad, cut.signature())
            for other in range(1, len(unet.down_blocks)):
                if UNetCut(unet, other).signature() != cut.signature():
                    with pytest.raises(ValueError, match="another UNet or cut"):
                        check_compatible(ad, UNetCut(unet, other).signature())
        check_compatible(IdentityAdaptor(), cut.signature())  # fits everything
        check_compatible(ForecastAdaptor(order=2), cut.signature())


def test_adaptor_classes_registered():
    from clockwork import ADAPTORS

    assert ADAPTORS == {"identity": IdentityAdaptor, "forecast": ForecastAdaptor, "resnet": ResNetAdaptor,
                        "unet-light": UNetLightAdaptor}


def test_build_adaptor_takes_what_a_user_passes():
    """A UNet and cut= (what a user types first), a UNetCut, or its signature dict give the same adaptor;
    anything else fails with one error that says what to pass."""
    unet = build_unet("embedded")
    for c in (1, 2):
        sig = UNetCut(unet, c).signature()
        by_unet = build_adaptor("resnet", unet, cut=c, width=16)
        assert {k: by_unet.config[k] for k in sig} == sig
        assert by_unet.config == build_adaptor("resnet", sig, width=16).config
    assert build_adaptor("resnet", unet, width=16).config == build_adaptor("resnet", UNetCut(unet, 1), width=16).config
    with pytest.raises(ValueError, match="valid cuts"):
        build_adaptor("resnet", unet, cut=9)
    with pytest.raises(ValueError, match="cut= goes with a UNet"):
        build_adaptor("resnet", UNetCut(unet, 1), cut=2)
    with pytest.raises(TypeError, match="needs a diffusers UNet"):
        build_adaptor("resnet", "sd15")
