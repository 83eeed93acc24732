#!/usr/bin/env bash
# A sweep on the GPUs of a machine without DVC/MLflow (this project's device machine): the stage scripts make the
# inputs the sweep reuses (reference statistics, the trajectory store), then `pipeline/sweep.py --gpus-per-trial 1`
# runs every trial on a GPU, inside a persistent work directory so that a second call resumes a time-limited first
# one (Ray Tune's state + each finished trial's result.json). sweeps/NAME is tarred into OUT after the run.
#
#   scripts/gpu/gpu_sweep.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT NAME [SECONDS]
#   CONFIG=params.yaml (the default) chooses the params file whose `sweep:` section runs.
#
# FMNIST_DIR: Fashion-MNIST's .gz files (the held-out reference images come from t10k; the train images may be an
# empty placeholder). PREPARED_DIR: prompts.json + embeddings.safetensors of `python pipeline/prepare.py
# --prompts-only DIR` on a CPU machine with the same params. CLOCKWORK_FID_INCEPTION may name an fp16 Inception.
# Then, on the CPU machine: python pipeline/sweep.py --import-results sweeps/NAME   (MLflow)
set -euo pipefail
W=$1 FM=$(realpath "$2") PREP=$(realpath "$3") OUT=$(realpath -m "$4") NAME=$5 BUDGET=${6:-560}
END=$(( $(date +%s) + BUDGET ))
SRC=$(cd "$(dirname "$0")/../.." && pwd)
for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -s "$FM/$f" ] || { echo "error: $FM/$f missing (carry the Fashion-MNIST folder); nothing run" >&2; exit 2; }
done
for f in prompts.json embeddings.safetensors; do
  [ -s "$PREP/$f" ] || { echo "error: $PREP/$f missing (make it with pipeline/prepare.py --prompts-only); nothing run" >&2; exit 2; }
done
nvidia-smi -L >/dev/null 2>&1 || { echo "error: no GPU visible (nvidia-smi -L failed); nothing run" >&2; exit 2; }
mkdir -p "$W" "$OUT"
cp -r "$SRC"/clockwork "$SRC"/pipeline "$SRC"/scripts "$SRC"/configs "$SRC"/dvc.yaml "$W"/   # code refreshed, data kept
cd "$W"
sed "s#^  data_root: .*#  data_root: $FM#" "$SRC/${CONFIG:-params.yaml}" > params.yaml
export HF_HUB_OFFLINE=1 CLOCKWORK_MLFLOW=0 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi -L > "$OUT/gpus.txt"
t0=$(date +%s)
[ -f data/prepared/reference_stats.npz ] || python scripts/gpu/gpu_prepare.py "$PREP"
[ -e data/trajectories/.complete ] || { python pipeline/trajectories.py 2>&1 | tail -2; touch data/trajectories/.complete; }
echo "== inputs ready in $(( $(date +%s) - t0 ))s"
resume=(); [ -f "sweeps/$NAME/sweep.json" ] && resume=(--resume)
( while sleep 20; do nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader; done ) \
  > "$OUT/nvidia-smi.csv" 2>&1 & mon=$!
rc=0
timeout $(( END - $(date +%s) )) python pipeline/sweep.py --config params.yaml --name "$NAME" --gpus-per-trial 1 \
  --no-mlflow "${resume[@]}" > "$OUT/sweep.log" 2>&1 || rc=$?
kill $mon 2>/dev/null || true
tar czf "$OUT/sweep.tgz" --exclude="sweeps/$NAME/ray" --exclude="*.safetensors" --exclude="*.pt" "sweeps/$NAME" params.yaml
tail -40 "$OUT/sweep.log"
echo "== sweep rc=$rc ($(( $(date +%s) - t0 ))s in this call; rc 124 = out of time, call again to resume)"
