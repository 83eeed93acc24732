#!/usr/bin/env bash
# The `full` configuration on a GPU machine that has neither DVC nor MLflow (this project's device machine):
# the same stage scripts `dvc repro` runs, in dvc.yaml's order, inside a persistent work directory so that a
# second call resumes where a time-limited first one stopped (trajectories resume by shard, distill from its
# checkpoint, ablate by row). Results are tarred into OUT after every stage, so a killed call still returns them.
#
#   scripts/gpu/gpu_full.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT [SECONDS]
#   CONFIG=configs/full.yaml STAGES="trajectories distill evaluate ablate" (the defaults) choose the params file and
#   the stages (e.g. STAGES="trajectories ablate" measures the levers before distill/evaluate use the chosen default;
#   STAGES="trajectories distill edit" needs no FID statistics, so no FID Inception has to travel).
#
# PREPARED_DIR holds data/prepared's prompts.json and embeddings.safetensors made on a CPU machine with
# `python pipeline/prepare.py --prompts-only DIR` under configs/full.yaml (the MiniLM encoder does not travel); the FID reference
# statistics are computed here by scripts/gpu/gpu_prepare.py from the same reference indices (CLOCKWORK_FID_INCEPTION may name an fp16 copy
# of the FID Inception). With DVC at hand, use `cp configs/full.yaml params.yaml && dvc repro` instead.
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4") BUDGET=${5:-570}  # cd W below
END=$(( $(date +%s) + BUDGET ))
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=$(realpath -m "${CONFIG:-$SRC/configs/full.yaml}")
mkdir -p "$W" "$OUT"
cp -r "$SRC"/clockwork "$SRC"/pipeline "$SRC"/scripts "$SRC"/configs "$SRC"/dvc.yaml "$W"/   # code refreshed, data kept
cd "$W"
sed "s#^  data_root: .*#  data_root: $FM#" "$CONFIG" > params.yaml.tmp && mv params.yaml.tmp params.yaml
export CLOCKWORK_MLFLOW=${CLOCKWORK_MLFLOW:-0} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

snapshot() {
  tar czf "$OUT/results.tmp.tgz" --ignore-failed-read params.yaml metrics plots models/adaptor data/trajectories/meta.json \
      data/ablate/rows 2>/dev/null || true
  mv "$OUT/results.tmp.tgz" "$OUT/results.tgz"
}
stage() {  # stage NAME DONE_FILE: run pipeline/NAME.py unless DONE_FILE exists, within the time left
  local left=$(( END - $(date +%s) ))
  if [ -e "$2" ]; then echo "== $1: done before"; return 0; fi
  if [ "$left" -lt 20 ]; then echo "== $1: no time left"; exit 0; fi
  echo "== $1 ($(date +%T), ${left}s left)"
  local t0=$(date +%s)
  timeout "$left" python pipeline/"$1".py || { rc=$?; snapshot; echo "== $1 stopped rc=$rc"; exit 0; }
  echo "== $1 took $(( $(date +%s) - t0 ))s"
  snapshot
}

STAGES=${STAGES:-trajectories distill evaluate ablate}
case " $STAGES " in *" evaluate "*|*" ablate "*) FID=1 ;; *) FID=0 ;; esac   # only these two need FID statistics
if [ "$FID" = 1 ] && [ ! -f data/prepared/reference_stats.npz ]; then
  python scripts/gpu/gpu_prepare.py "$PREP"
  echo "== reference statistics computed"
elif [ ! -f data/prepared/prompts.json ]; then
  mkdir -p data/prepared && cp "$PREP"/prompts.json "$PREP"/embeddings.safetensors data/prepared/
  echo "== prompts and embeddings copied (no stage of '$STAGES' needs FID statistics)"
fi
for s in $STAGES; do
  case $s in
    trajectories) stage trajectories data/trajectories/.complete; touch data/trajectories/.complete ;;
    *) stage "$s" "metrics/$s.json" ;;
  esac
done
echo "== stages done: $STAGES ($(date +%T))"
