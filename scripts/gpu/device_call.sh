#!/usr/bin/env bash
# One call of the `full` configuration's GPU run on this project's device machine (no DVC, MLflow or diffusers there;
# every call starts in a fresh copy of the repository, the machine keeps /root between calls while it stays warm).
# From the repository root on that machine:
#
#   bash scripts/gpu/device_call.sh SECONDS      # SECONDS: this call's budget (0: only stash what was carried)
#
# It stashes whatever the call carried, then runs scripts/gpu/gpu_full.sh twice in one work directory: first
# FIRST_STAGES (default "trajectories distill evaluate": with HAND, the automatically chosen schedule against the
# hand-found one on the same prompts and noise - the Clockwork-front comparison - comes back first), then every
# stage in the time left (edit and the ablation groups side by side). Call again until its log says
# "stages done: trajectories distill evaluate ablate edit"; a fresh machine resumes from results.tgz and models.tgz
# unpacked into WORK.
#
# What the calls carry (a call carries at most 64 MiB, the tracked tree included, so two calls):
#   call 1   .carry/inc/inc16.pt     the FID Inception in fp16 (torch.jit.load(...).half(): 44 MB)
#   call 2   .carry/fmnist           Fashion-MNIST's four idx .gz files
#            .whl                    the wheels the machine lacks (diffusers, pydantic + deps), installed into STASH/site
#            .carry/prepfullz        data/prepared's prompts.json and embeddings.safetensors of the full configuration,
#                                    gzipped (ungzipped, the three exceed the 64 MiB by 0.6 MB):
#              CLOCKWORK_PARAMS=configs/full.yaml python pipeline/prepare.py --prompts-only .carry/prepfullz
#              gzip -9 .carry/prepfullz/*
# Environment: CONFIG (default configs/full.yaml), FRONTS=1 keeps `evaluate.fronts` (default 0: the fronts were
# measured in reports/schedule-front; they add ~7 min on an H100), FRONT_STEPS="3 4 5 6 7 8" overrides
# `evaluate.front_steps`, HAND (default "2 3 4 5"), ABLATE_GROUPS (gpu_full.sh's; default: four groups),
# STASH (/root/stash), WORK (/root/full), PREP (/root/prep).
set -uo pipefail
BUDGET=${1:?usage: device_call.sh SECONDS}
: "${OUT:?OUT: the folder whose files come back (the device machine sets it)}"
END=$(( $(date +%s) + BUDGET ))
STASH=${STASH:-/root/stash} WORK=${WORK:-/root/full} PREP=${PREP:-/root/prep}
mkdir -p "$STASH" "$PREP" "$STASH/bin"
[ -d .carry/inc ] && cp .carry/inc/inc16.pt "$STASH/"
[ -d .carry/fmnist ] && [ ! -d "$STASH/fm" ] && cp -r .carry/fmnist "$STASH/fm"
if [ -d .whl ] && [ ! -d "$STASH/site" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$STASH/site" .whl/*.whl || exit 1
fi
if [ -d .carry/prepfullz ]; then cp .carry/prepfullz/* "$PREP/" && gunzip -f "$PREP"/*.gz; fi
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > "$STASH/bin/python" && chmod +x "$STASH/bin/python"
export PATH=$STASH/bin:$PATH PYTHONPATH=$STASH/site CLOCKWORK_FID_INCEPTION=${CLOCKWORK_FID_INCEPTION:-$STASH/inc16.pt}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "$(nproc) cores, $(date -u +%FT%TZ); stash: $(ls "$STASH" | tr '\n' ' ')"
[ "$BUDGET" -gt 0 ] || exit 0

python3 - "${CONFIG:-configs/full.yaml}" "$STASH/params.yaml" "${FRONTS:-0}" "${FRONT_STEPS:-}" <<'PY' || exit 1
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
if sys.argv[3] != "1":
    d["evaluate"].update(fronts=[], front_budgets=[])
if sys.argv[4]:
    d["evaluate"]["front_steps"] = [int(s) for s in sys.argv[4].split()]
yaml.safe_dump(d, open(sys.argv[2], "w"), sort_keys=False)
PY
LOG=$OUT/device_call_$(date -u +%H%M).log
run() {  # run SECONDS STAGES ("" = gpu_full.sh's default: every stage)
  STAGES="$2" CONFIG=$STASH/params.yaml HAND=${HAND-2 3 4 5} \
    ABLATE_GROUPS=${ABLATE_GROUPS:-adaptor_type schedule;cut inputs;training sampler steps;levers} \
    bash scripts/gpu/gpu_full.sh "$WORK" "$STASH/fm" "$PREP" "$OUT" "$1" 2>&1 | grep --line-buffered -v "it/s\]$" | tee -a "$LOG"
}
run $(( END - $(date +%s) )) "${FIRST_STAGES:-trajectories distill evaluate}" || { echo "== first phase failed" | tee -a "$LOG"; exit 1; }
left=$(( END - $(date +%s) ))
if [ "$left" -gt 90 ]; then run "$left" ""; else echo "== ${left}s left: the other stages next call" | tee -a "$LOG"; fi
