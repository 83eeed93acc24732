#!/usr/bin/env bash
# Online vs stored distillation of the default adaptor, embedded world, full configuration, on one GPU machine
# without DVC (reports/online-vs-store/RUN.md). In a persistent work directory, so a second call resumes:
#   trajectories -> distill from the store (models/adaptor_store) and online (models/adaptor_online) side by side
#   -> evaluate (the front, the identity adaptor, Clockwork with the store's adaptor) -> the online adaptor scored
#   beside it (scripts/online_vs_store.py). Results are tarred into OUT after every step.
#
#   scripts/gpu/online_vs_store.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT [SECONDS]
#   (PARAMS_DIR=DIR takes params_store.yaml / params_online.yaml from DIR instead)
# PREPARED_DIR: data/prepared made on a CPU machine with
#   CLOCKWORK_PARAMS=reports/online-vs-store/params_store.yaml python pipeline/prepare.py --prompts-only DIR
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4") BUDGET=${5:-570}
END=$(( $(date +%s) + BUDGET ))
SRC=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRC/scripts/gpu/lib.sh"
gpu_enter "$SRC" "$W" "$OUT"
for m in store online; do
  with_data_root "${PARAMS_DIR:-$SRC/reports/online-vs-store}/params_$m.yaml" "$FM" > "params_$m.yaml"
done
cp params_store.yaml params.yaml

SNAPSHOT="params_*.yaml metrics plots models/adaptor_store models/adaptor_online data/trajectories/meta.json logs"

reference_stats params_store.yaml "$PREP"
step trajectories data/trajectories/.complete params_store.yaml 20 python pipeline/trajectories.py
touch data/trajectories/.complete
# the two distillations run side by side (each a small model on the GPU): online in its own directory ($W/online,
# the same code, prepared data and store through links), the store's here
mkdir -p online/data online/logs
cp -r clockwork pipeline dvc.yaml params_online.yaml online/
ln -sfn "$W/data/prepared" online/data/prepared
ln -sfn "$W/data/trajectories" online/data/trajectories
if [ ! -e models/adaptor_online/config.json ]; then
  ( cd online && CLOCKWORK_PARAMS=params_online.yaml timeout $(( END - $(date +%s) )) python pipeline/distill.py \
      > logs/distill_online.log 2>&1 && t=$(date +%s) && mkdir -p ../models ../metrics ../plots && rm -rf ../models/adaptor_online \
      && cp -r models/adaptor ../models/adaptor_online && cp metrics/distill.json ../metrics/distill_online.json \
      && cp plots/distill_loss.csv ../plots/distill_loss_online.csv && echo "== distill_online finished" ) &
  ONLINE=$!
  echo "== distill_online started in the background ($(date +%T))"
fi
step distill_store models/adaptor_store/config.json params_store.yaml 20 \
  bash -c 'python pipeline/distill.py && rm -rf models/adaptor_store && cp -r models/adaptor models/adaptor_store && cp metrics/distill.json metrics/distill_store.json && cp plots/distill_loss.csv plots/distill_loss_store.csv'
if [ -n "${ONLINE:-}" ]; then
  t0=$(date +%s)
  wait "$ONLINE" || true
  cp online/logs/distill_online.log logs/ 2>/dev/null || true
  grep -v "it/s\]$" logs/distill_online.log | tail -5 || true
  [ -e models/adaptor_online/config.json ] || { echo "== distill_online stopped (time or error; resumes)"; snapshot; exit 0; }
  echo "== distill_online finished $(( $(date +%s) - t0 ))s after the store's" | tee -a logs/times.txt
  snapshot
fi
step evaluate metrics/evaluate.json params_store.yaml 20 \
  bash -c 'rm -rf models/adaptor && cp -r models/adaptor_store models/adaptor && python pipeline/evaluate.py'
step compare metrics/online_vs_store.json params_store.yaml 20 \
  bash -c "python scripts/online_vs_store.py --online models/adaptor_online --distill metrics/distill_store.json metrics/distill_online.json --out metrics && cp metrics/online_vs_store.* '$OUT'/"
cp logs/times.txt "$OUT"/ 2>/dev/null || true
echo "== done ($(date +%T))"
