#!/usr/bin/env bash
# The sweep acceptance timing on a 2-GPU machine without DVC/MLflow: the same sweep (configs/sweep_2gpu.yaml)
# on both GPUs, then on one, in one run on one machine; prints the wall-time ratio and tars sweeps/ into OUT.
#
#   scripts/gpu/gpu_sweep_timing.sh FMNIST_DIR PREPARED_DIR OUT
#
# FMNIST_DIR: Fashion-MNIST's four .gz files (the held-out reference images come from t10k; the train images may be
# an empty placeholder). PREPARED_DIR: prompts.json + embeddings.safetensors of `python pipeline/prepare.py` run on a
# CPU machine with configs/sweep_2gpu.yaml (= the default params). CLOCKWORK_FID_INCEPTION may name an fp16 Inception.
# Import the results into MLflow afterwards on a CPU machine: python pipeline/sweep.py --import-results sweeps/t2gpu
set -euo pipefail
FM=$(realpath "$1") PREP=$(realpath "$2") OUT=$3
for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -s "$FM/$f" ] || { echo "error: $FM/$f missing (carry the Fashion-MNIST folder); nothing run" >&2; exit 2; }
done
for f in prompts.json embeddings.safetensors; do
  [ -s "$PREP/$f" ] || { echo "error: $PREP/$f missing (make it with pipeline/prepare.py on a CPU machine); nothing run" >&2; exit 2; }
done
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "error: fewer than 2 GPUs here; nothing run" >&2; exit 2; }
export HF_HUB_OFFLINE=1 CLOCKWORK_MLFLOW=0 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p "$OUT"
sed "s#^  data_root: .*#  data_root: $FM#" configs/sweep_2gpu.yaml > params.yaml
[ -f data/prepared/reference_stats.npz ] || python scripts/gpu/gpu_prepare.py "$PREP"
python pipeline/trajectories.py 2>&1 | tail -1
nvidia-smi -L > "$OUT/gpus.txt"
python pipeline/sweep.py --config params.yaml --name t2gpu --gpus-per-trial 1 --no-mlflow --overwrite > "$OUT/t2gpu.log" 2>&1
python pipeline/sweep.py --config params.yaml --name t1gpu --gpus-per-trial 1 --num-gpus 1 --no-mlflow --overwrite > "$OUT/t1gpu.log" 2>&1
tar czf "$OUT/sweeps.tgz" sweeps params.yaml
python - <<'PY' | tee "$OUT/ratio.txt"
import json
w = {n: json.load(open(f"sweeps/{n}/summary.json"))["wall_s"] for n in ("t2gpu", "t1gpu")}
print(w, "ratio 2 GPUs / 1 GPU:", round(w["t2gpu"] / w["t1gpu"], 3), "(acceptance: <= 0.6)")
PY
