# call 1: install wheels, stash data, train from scratch (batch 512), return the checkpoint
T0=$(date +%s); set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/.site" .whl/*.whl || exit 1
. .carry/t16/bin/env.sh
mkdir -p $S && cp -r .carry/t16/fm $S/fm && cp .carry/t16/embeddings.safetensors $S/emb.safetensors
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1; cat $OUT/gpu.txt
python3 -c "import torch,diffusers;print(torch.__version__,diffusers.__version__)"
stamp setup
python3 scripts/gpu/teacher_gpu.py --workdir /root/ckpt --minutes ${MIN:-7.5} --batch 512 --compile --out /root/run1 --samples 0 $COMMON 2>&1 | tee $OUT/run1.log
rc=$?; stamp "train rc=$rc"
mkdir -p $OUT/ckpt && cp /root/ckpt/* $OUT/ckpt/; ls -la $OUT/ckpt; cat /root/ckpt/state.json; stamp done
