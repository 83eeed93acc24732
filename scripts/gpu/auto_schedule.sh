#!/usr/bin/env bash
# The Clockwork front's acceptance run (reports/schedule-front/RUN.md): the full configuration on one GPU machine
# without DVC, in a persistent work directory so that a later call resumes where the last one stopped:
#   trajectories -> distill with clock.adaptor_steps: auto (configs/full.yaml) and, beside it in ./hand, with the
#   hand-found [2, 3, 4, 5] -> evaluate both on the same 5000 held-out prompts and noise (auto: with the distilled,
#   identity and forecast fronts; hand: its Clockwork row) -> scripts/compare_schedules.py. Results are tarred into
#   OUT after every step.
#
#   scripts/gpu/auto_schedule.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT [SECONDS]
# PREPARED_DIR: data/prepared made on a CPU machine with
#   CLOCKWORK_PARAMS=configs/full.yaml python pipeline/prepare.py --prompts-only DIR
# FMNIST_DIR: all four Fashion-MNIST files (schedule_score: val_fid needs the validation split's reference images,
# which are training images; 30 MB: stash them in a call of their own). The two evaluations run one after the other:
# side by side their CPU-side FID/KID work oversubscribed the 16 cores (~190 s a row instead of ~25 s).
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4") BUDGET=${5:-570}
END=$(( $(date +%s) + BUDGET ))
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/gpu/lib.sh"
gpu_enter "$SRC" "$W" "$OUT"
with_data_root "$SRC/configs/full.yaml" "$FM" > params_auto.yaml
python - <<'PY'
import yaml
d = yaml.safe_load(open("params_auto.yaml"))
d["clock"].update(adaptor_steps=[2, 3, 4, 5], budget=None, finetune_steps=0)   # the hand-found schedule
d["evaluate"].update(fronts=[], front_budgets=[], front_steps=[8])          # its Clockwork row; the front is auto's
yaml.safe_dump(d, open("params_hand.yaml", "w"), sort_keys=False)
PY

SNAPSHOT="params_*.yaml metrics plots hand/metrics hand/plots models/adaptor/config.json models/adaptor/all_steps/config.json logs"
reference_stats params_auto.yaml "$PREP"
step trajectories data/trajectories/.complete params_auto.yaml 60 python pipeline/trajectories.py
touch data/trajectories/.complete
side_dir hand
cp params_hand.yaml hand/
# the hand-found schedule's distillation runs beside auto's (small models: the GPU has room); the evaluations do not
if [ ! -e hand/models/adaptor/config.json ] && [ $(( END - $(date +%s) )) -gt 120 ]; then
  ( cd hand && CLOCKWORK_PARAMS=params_hand.yaml timeout $(( END - $(date +%s) )) python pipeline/distill.py \
      > logs/distill_hand.log 2>&1 && echo "== distill_hand finished" ) &
  HAND=$!
fi
step distill_auto metrics/schedule.json params_auto.yaml 200 python pipeline/distill.py
[ -z "${HAND:-}" ] || wait "$HAND" || true
# rows resume from data/evaluate across calls; each call needs time for at least a row or two
step evaluate_auto metrics/evaluate.json params_auto.yaml 90 python pipeline/evaluate.py
[ -e hand/models/adaptor/config.json ] || { echo "== distill_hand not finished (resumes next call)"; snapshot; exit 0; }
step evaluate_hand hand/metrics/evaluate.json params_hand.yaml 90 bash -c "cd hand && python pipeline/evaluate.py"
step compare metrics/compare_schedules.json params_auto.yaml 10 \
  python scripts/compare_schedules.py metrics/evaluate.json hand/metrics/evaluate.json --out metrics
cp metrics/compare_schedules.* "$OUT"/ 2>/dev/null || true
snapshot
echo "== done ($(date +%T))"
