#!/usr/bin/env bash
# Why the auto-chosen schedule lost (reports/schedule-front/RUN.md): the full configuration's `auto` distillation
# (all steps, then the chosen steps), evaluated on the 5000 held-out prompts as
#   clockwork            the fine-tuned adaptor at the chosen steps
#   front_distilled_b4   the all-steps adaptor at the chosen steps (no fine-tune)
# and, in ./hand2 with the same rows cache, the all-steps adaptor at the hand-found [2, 3, 4, 5].
#   scripts/gpu/schedule_diagnosis.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4")
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/gpu/lib.sh"
gpu_enter "$SRC" "$W" "$OUT"
with_data_root "$SRC/configs/full.yaml" "$FM" > params_auto.yaml
python - <<'PY'
import yaml
d = yaml.safe_load(open("params_auto.yaml"))
d["clock"].update(schedule_score="sample_change", calibration_prompts=64)  # the choice reports/schedule-front measured
d["evaluate"].update(fronts=["distilled"], front_budgets=[4], front_steps=[8], latency_runs=3)
yaml.safe_dump(d, open("params_auto.yaml", "w"), sort_keys=False)
d["clock"].update(adaptor_steps=[2, 3, 4, 5], budget=None, finetune_steps=0)
d["evaluate"].update(fronts=[], front_budgets=[])
yaml.safe_dump(d, open("params_hand2.yaml", "w"), sort_keys=False)
PY
export CLOCKWORK_PARAMS=params_auto.yaml
SNAPSHOT="params_*.yaml metrics plots hand2/metrics logs"
mkdir -p logs
reference_stats params_auto.yaml "$PREP" --no-val-reference 2>&1 | tail -1
python pipeline/trajectories.py 2>&1 | tee logs/trajectories.log | quiet | tail -2
python pipeline/distill.py 2>&1 | tee logs/distill.log | quiet | tail -3; snapshot
python pipeline/evaluate.py 2>&1 | tee logs/evaluate.log | quiet | grep "FID\|searched\|reused\|done"; snapshot
mkdir -p hand2/data hand2/models hand2/metrics
cp -r clockwork pipeline scripts dvc.yaml params_hand2.yaml hand2/
ln -sfn "$W/data/prepared" hand2/data/prepared; ln -sfn "$W/data/evaluate" hand2/data/evaluate
cp -r models/adaptor/all_steps hand2/models/adaptor
python - <<'PY'
import json
s = json.load(open("metrics/schedule.json"))
s.update(mode="given", adaptor_steps=[2, 3, 4, 5])
json.dump(s, open("hand2/metrics/schedule.json", "w"))
PY
(cd hand2 && CLOCKWORK_PARAMS=params_hand2.yaml python pipeline/evaluate.py 2>&1 | tee ../logs/evaluate_hand2.log | quiet | grep "FID\|reused\|done")
snapshot
echo "== done $(date +%T)"
