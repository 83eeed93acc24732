# call B: stash the fp16 Inception, resume at batch 1024, export fp16, sample + evaluate the NEW teacher, then evaluate the committed teacher's samples
T0=$(date +%s); set -o pipefail
. .carry/t16/bin/env.sh; lost
cp .carry/inc.pt $S/inc.pt
stamp setup
python3 scripts/gpu/teacher_gpu.py --workdir /root/ckpt --minutes ${MIN:-6} --batch 1024 --compile --out /root/run3 --samples 0 --export /root/teacher_new $COMMON 2>&1 | tee $OUT/run3.log
rc=$?; stamp "train rc=$rc"
mkdir -p $OUT/ckpt && cp /root/ckpt/state.json /root/ckpt/log.jsonl $OUT/ckpt/; tar -C /root -cf $OUT/teacher_new.tar teacher_new; cat /root/ckpt/state.json; stamp saved
( python3 .carry/t16/bin/sample_with.py /root/teacher_new --out /root/samples_new --samples 5000 --guidance 2.0 --steps 8 $COMMON; stamp sampled_new
  cp /root/samples_new/samples_g2.0_s8.npz $OUT/samples_new.npz
  python3 scripts/gpu/teacher_eval.py --samples /root/samples_new --out /root/eval_new --device cuda --inception $S/inc.pt $COMMON; stamp evaluated_new ) 2>&1 | tee $OUT/eval_new.log
cp /root/eval_new/teacher_eval.json $OUT/eval_new.json
mkdir -p /root/eval_c/features && cp /root/eval_new/features/real_*.npy /root/eval_c/features/
( python3 scripts/gpu/teacher_eval.py --samples /root/samples_c --out /root/eval_c --device cuda --inception $S/inc.pt $COMMON; stamp evaluated_committed ) 2>&1 | tee $OUT/eval_committed.log
cp /root/eval_c/teacher_eval.json $OUT/eval_committed.json; stamp done
