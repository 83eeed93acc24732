#!/usr/bin/env bash
# `clock.refine_top` on the full configuration (reports/schedule-front/RUN.md): the all-steps adaptor's best 3
# schedules by validation FID, each fine-tuned 5000 steps and scored again on the validation prompts; the chosen pair
# evaluated on the 5000 held-out prompts (baseline, Clockwork and identity rows only: the plain-steps front and the
# hand-found schedule's row come from scripts/gpu/auto_schedule.sh's run on the same prompts and noise).
#   scripts/gpu/refine_schedule.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4")
SRC=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
. "$SRC/scripts/gpu/lib.sh"
gpu_workdir "$SRC" "$W"
cd "$W"
sed "s#^  data_root: .*#  data_root: $FM#" "$SRC/configs/full.yaml" > params_refine.yaml
python - <<'PY'
import yaml
d = yaml.safe_load(open("params_refine.yaml"))
d["evaluate"].update(fronts=[], front_budgets=[], front_steps=[8], latency_runs=3)
yaml.safe_dump(d, open("params_refine.yaml", "w"), sort_keys=False)
PY
export CLOCKWORK_MLFLOW=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 CLOCKWORK_PARAMS=params_refine.yaml
SNAPSHOT="params_refine.yaml metrics logs" SNAPSHOT_NAME=refine.tgz
mkdir -p logs
[ -f data/prepared/reference_stats.npz ] || python scripts/gpu/gpu_prepare.py "$PREP" 2>&1 | tail -1
[ -f data/trajectories/meta.json ] || python pipeline/trajectories.py 2>&1 | tee logs/trajectories.log | quiet | tail -1
[ -f metrics/schedule.json ] || python pipeline/distill.py 2>&1 | tee logs/distill.log | quiet | grep -v "^$" | tail -8
snapshot
python pipeline/evaluate.py 2>&1 | tee logs/evaluate.log | quiet | grep "FID" | tail -3
snapshot
