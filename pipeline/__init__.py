"""DVC stage scripts (one per stage), their shared logic (common/), params validation (config.py), MLflow (tracking.py).

Importing this package pins the CPU kernels of the process to AVX2 (before torch is imported: every stage script
imports ``pipeline`` first): ATen's vectorised ops, oneDNN's convolutions and MKL (conditional numerical
reproducibility) then run the same instructions on every x86-64 CPU made since 2015, AVX-512 and AMX ones included,
so that float32 results - the committed default run's numbers - are bitwise the same on any of them. Without the pin
an AVX-512 CPU sums in another order (FID moves in the fifth digit). ``CLOCKWORK_CPU_ISA=native`` lifts it for
speed (~1.2x for the FID Inception on an AVX-512 CPU; needed for bf16 on AMX, ``precision: auto``); the metrics
files record the ISA that ran (pipeline/common/headline.py).
"""

import os
import platform

CPU_ISA_ENV = "CLOCKWORK_CPU_ISA"

if os.environ.get(CPU_ISA_ENV, "avx2").lower() == "avx2" and platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("MKL_CBWR", "AVX2")
