# call A1 (fresh machine after call 1's was given back): install wheels, stash data + embeddings, (no training: the checkpoint does not fit this call)
T0=$(date +%s); set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/.site" .whl/*.whl || exit 1
. .carry/t16/bin/env.sh
mkdir -p $S && mkdir -p $S/fm && cp .carry/t16/fmtrain/* $S/fm/ && cp .carry/t16/embeddings.safetensors $S/emb.safetensors
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1; cat $OUT/gpu.txt
stamp setup
stamp done
