"""The paper's numbers, as data in the same shape as this project's metrics files.

Source: Habibian et al., "Clockwork Diffusion: Efficient Generation With Model-Step Distillation",
CVPR 2024 (arXiv 2312.08128), as summarised in /work/shared/paper/clockwork.md.
All rows: MS-COCO 2017 val 5K at 512 px, DPM++ 8 steps, clock 2 unless a row says otherwise.

``EVALUATE`` mirrors ``metrics/evaluate.json`` (Table 1) and ``ABLATE`` mirrors the rows of
``metrics/ablate.json`` (Tables 3, 4, 5), so :mod:`analysis.claims` runs the very same code on the
paper's numbers and on ours. Units differ where the paper's do:
- Table 1 ``gflops`` is per image (the paper gives TFLOPs: 10.8 -> 10800), latency on an RTX 3080;
- Table 3 ``gflops`` is GFLOPs *per adaptor step* at batch 2 (the baseline's per full step), which
  is what the paper prints; claims only compare FLOPs within one source, never across.
Figs. 4 and 7 give no numbers in the notes (plots only), so they have no rows here; their claims are
qualitative on the paper side (see ``analysis.claims``).
"""

from __future__ import annotations

SOURCE = "Habibian et al., CVPR 2024 (arXiv 2312.08128); COCO 2017 5K, 512 px, DPM++ 8 steps"
LATENCY_DEVICE = "RTX 3080"

SD15 = "SD v1.5"
EFFICIENT = "Efficient UNet"
DISTILLED = "Distilled Efficient UNet"


def _t1(teacher: str, method: str, fid: float, clip: float, tflops: float, latency_ms: float) -> dict:
    clockwork = method.startswith("clockwork")
    return dict(teacher=teacher, method=method, fid=fid, clip=clip, gflops=tflops * 1000.0, latency_ms=latency_ms,
                steps=8, sampler="dpm++", clock=2 if clockwork else None, cut=1 if clockwork else None,
                adaptor="resnet" if clockwork else None)


# Table 1 (headline results).
EVALUATE: list[dict] = [
    _t1(SD15, "baseline", 24.64, 0.300, 10.8, 454),
    _t1(SD15, "clockwork", 24.11, 0.295, 7.3, 341),
    _t1(EFFICIENT, "baseline", 24.22, 0.302, 9.5, 330),
    _t1(EFFICIENT, "clockwork", 23.21, 0.296, 5.9, 213),
    _t1(DISTILLED, "baseline", 25.75, 0.297, 4.7, 240),
    _t1(DISTILLED, "clockwork", 24.45, 0.295, 2.9, 154),
]


def _ab(ablation: str, variant: str, fid: float, gflops: float | None = None, *, adaptor="resnet", clock=2,
        cut=1, inputs=("r_in", "r_out_prev", "time"), sampler="dpm++", adaptor_params=None,
        teacher=EFFICIENT) -> dict:
    return dict(ablation=ablation, variant=variant, fid=fid, gflops=gflops, adaptor=adaptor, clock=clock, cut=cut,
                inputs=list(inputs) if inputs else None, sampler=sampler, steps=8, training="unrolled",
                adaptor_params=adaptor_params, teacher=teacher)


_BASE = dict(adaptor=None, clock=None, cut=None, inputs=None)

ABLATE: list[dict] = [
    # Table 3: adaptor type (Efficient UNet; GFLOPs per adaptor step, baseline per full step, batch 2).
    _ab("adaptor_type", "baseline", 24.22, 1187, **_BASE, adaptor_params=0),
    _ab("adaptor_type", "identity", 24.36, 287, adaptor="identity", inputs=("r_out_prev",), adaptor_params=0),
    _ab("adaptor_type", "resnet", 23.21, 301, adaptor="resnet", adaptor_params=14e6),
    _ab("adaptor_type", "unet", 23.18, 324, adaptor="unet", adaptor_params=152e6),
    _ab("adaptor_type", "unet-light", 23.87, 289, adaptor="unet-light", adaptor_params=3e6),
    # Table 3: which steps use the adaptor (1-based {2,4,6,8} = 0-based [1,3,5,7]).
    _ab("schedule", "adaptor at {2,4,6,8}", 23.21, clock=[1, 3, 5, 7]),
    _ab("schedule", "adaptor at {5,6,7,8}", 28.07, clock=[4, 5, 6, 7]),
    _ab("schedule", "adaptor at {3,4,5,6}", 33.10, clock=[2, 3, 4, 5]),
    # Table 3: cut point (GFLOPs per adaptor step).
    _ab("cut", "stage 1 (32x32)", 23.21, 301, cut=1),
    _ab("cut", "stage 2 (16x16)", 24.49, 734, cut=2),
    # Table 4: samplers, baseline -> Clockwork.
    *[row for s, b, c in [("dpm++", 24.22, 23.21), ("dpm", 24.32, 23.24), ("pndm", 35.64, 33.15),
                          ("ddim", 34.72, 38.38)]
      for row in (_ab("sampler", f"{s} baseline", b, sampler=s, **_BASE),
                  _ab("sampler", f"{s} clockwork", c, sampler=s))],
    # Table 5: adaptor inputs (Distilled Efficient UNet).
    _ab("inputs", "baseline", 25.75, **_BASE, teacher=DISTILLED),
    _ab("inputs", "r_in only", 40.73, inputs=("r_in", "time"), teacher=DISTILLED),
    _ab("inputs", "r_out(t+1) only", 24.76, inputs=("r_out_prev", "time"), teacher=DISTILLED),
    _ab("inputs", "r_in + r_out(t+1)", 24.45, inputs=("r_in", "r_out_prev", "time"), teacher=DISTILLED),
    _ab("inputs", "r_in + r_out(t+1) + text", 24.45, inputs=("r_in", "r_out_prev", "time", "text"), teacher=DISTILLED),
    # Adaptor at every step after the first, without r_out(t+1).
    _ab("inputs", "every step, no r_out(t+1)", 117.6, inputs=("r_in", "time", "text"), clock=[1, 2, 3, 4, 5, 6, 7],
        teacher=DISTILLED),
]

# What the paper says about Fig. 4 (FID vs FLOPs over step counts, baseline and Clockwork): Clockwork's points lie
# below the plain baseline's curve, i.e. it beats taking fewer steps at equal FLOPs. A plot; /work/shared/paper/
# clockwork.md gives no numbers for it, so the claim is "stated" on the paper's side.
FIG4 = {"text": "Clockwork's FID-vs-FLOPs points lie below the baseline's curve over step counts (plot, no numbers)"}

# What the paper says about Fig. 7 (unrolled trajectories vs classic forward-noised distillation).
FIG7 = {"equal_steps": (6, 8, 16), "better_steps": (4,),
        "text": "equal at 6, 8 and 16 steps; unrolled better at 4 steps (plot, no numbers)"}

# Paper's headline FLOPs accounting for SD v1.5 (per step, batch 1): used only as context in captions.
SD15_FULL_STEP_GFLOPS = 677.8
SD15_IDENTITY_STEP_GFLOPS = 228.4
