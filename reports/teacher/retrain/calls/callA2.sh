# call A2: restore call 1's checkpoint (step 5454), resume at batch 512, then sample the COMMITTED teacher (5000 held-out prompts)
T0=$(date +%s); set -o pipefail
. .carry/t16/bin/env.sh
cp .carry/t16/fmheld/* $S/fm/ 2>/dev/null; [ -d "$HOME/.site/diffusers" ] && [ -f $S/fm/train-images-idx3-ubyte.gz ] || { echo MACHINE_LOST; exit 3; }
rm -rf /root/ckpt && mkdir -p /root/ckpt && cp .carry/t16/ckpt1/* /root/ckpt/ && cat /root/ckpt/state.json
stamp setup
python3 scripts/gpu/teacher_gpu.py --workdir /root/ckpt --minutes ${MIN:-6} --batch 512 --compile --out /root/run2 --samples 0 $COMMON 2>&1 | tee $OUT/run2.log
rc=$?; stamp "train rc=$rc"
mkdir -p $OUT/ckpt && cp /root/ckpt/* $OUT/ckpt/; cat /root/ckpt/state.json; stamp saved
python3 scripts/gpu/sample_gpu.py --out /root/samples_c --samples 5000 --guidance 2.0 --steps 8 $COMMON 2>&1 | tee $OUT/sample_committed.log
cp /root/samples_c/samples_g2.0_s8.npz $OUT/samples_committed.npz; stamp done
