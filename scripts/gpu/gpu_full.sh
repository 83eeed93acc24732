#!/usr/bin/env bash
# The `full` configuration on a GPU machine that has neither DVC nor MLflow (this project's device machine):
# the same stage scripts `dvc repro` runs, inside a persistent work directory so that a later call resumes where a
# time-limited one stopped (trajectories by shard, distill from its checkpoint, evaluate and ablate by row).
#
#   scripts/gpu/gpu_full.sh WORKDIR FMNIST_DIR PREPARED_DIR OUT [SECONDS]
#   CONFIG=configs/full.yaml     the params file
#   STAGES="trajectories distill evaluate ablate edit"   (the default) which stages run: trajectories and distill one
#                                after the other, then evaluate, edit and ablate side by side (they read only
#                                distill's outputs). ablate runs as ABLATE_GROUPS processes, each with one group of
#                                `ablate.ablations` (separated by `;`) in a folder of its own; a last ablate in the work
#                                directory, with the whole list, reuses their rows and writes metrics/ablate.json.
#   ABLATE_GROUPS="adaptor_type schedule cut inputs;training sampler steps;levers"   (the default)
#   HAND="2 3 4 5"               also distil an adaptor for these adaptor steps in ./hand and evaluate its Clockwork
#                                row on the same held-out prompts and noise (scripts/compare_schedules.py's HAND file:
#                                an automatically chosen schedule against a hand-found one, on one card)
#
# The processes share the GPU and the CPU cores (torch threads split evenly: two evaluations with 16 threads each
# oversubscribed 16 cores ~7x). Results are tarred into OUT/results.tgz after every step, so a killed call still
# returns them (rows included, for a resume on a fresh machine: unpack the tarball into WORKDIR first).
# PREPARED_DIR holds data/prepared's prompts.json and embeddings.safetensors made on a CPU machine with
# `CLOCKWORK_PARAMS=configs/full.yaml python pipeline/prepare.py --prompts-only DIR` (the MiniLM encoder does not
# travel); the FID reference statistics are computed here by scripts/gpu/gpu_prepare.py (CLOCKWORK_FID_INCEPTION may
# name an fp16 copy of the FID Inception). With DVC at hand: `cp configs/full.yaml params.yaml && dvc repro`.
set -euo pipefail
W=$(realpath -m "$1") FM=$(realpath -m "$2") PREP=$(realpath -m "$3") OUT=$(realpath -m "$4") BUDGET=${5:-570}
END=$(( $(date +%s) + BUDGET ))
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CONFIG=$(realpath -m "${CONFIG:-$SRC/configs/full.yaml}")
STAGES=${STAGES:-trajectories distill evaluate ablate edit}
ABLATE_GROUPS=${ABLATE_GROUPS:-adaptor_type schedule cut inputs;training sampler steps;levers}
. "$SRC/scripts/gpu/lib.sh"
gpu_enter "$SRC" "$W" "$OUT"   # code refreshed, data kept
with_data_root "$CONFIG" "$FM" > params.yaml
SNAPSHOT="params*.yaml metrics plots logs data/trajectories/meta.json data/evaluate data/ablate/rows
          ablate_*/data/ablate/rows ablate_*/logs ablate_*/params.yaml hand/metrics hand/logs hand/params.yaml hand/data/evaluate"
models() {  # the distilled adaptors in a tarball of their own (each file that comes back is at most 16 MiB)
  SNAPSHOT="models/adaptor hand/models/adaptor" SNAPSHOT_NAME=models.tgz snapshot
}
has() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has evaluate || has ablate; then
  reference_stats params.yaml "$PREP"
elif [ ! -f data/prepared/prompts.json ]; then
  mkdir -p data/prepared && cp "$PREP"/prompts.json "$PREP"/embeddings.safetensors data/prepared/
  echo "== prompts and embeddings copied (no stage of '$STAGES' needs FID statistics)"
fi
if has trajectories; then
  step trajectories data/trajectories/.complete params.yaml 30 python pipeline/trajectories.py
  touch data/trajectories/.complete
fi
hand_dir() {  # ./hand: the schedule $HAND distilled (clock.adaptor_steps set) and evaluated (baseline + Clockwork row)
  side_dir hand
  python - hand/params.yaml "$HAND" <<'PY'
import sys, yaml
d = yaml.safe_load(open("params.yaml"))
d["clock"].update(adaptor_steps=[int(s) for s in sys.argv[2].split()], budget=None, finetune_steps=0, refine_top=1)
d["evaluate"].update(fronts=[], front_budgets=[], front_steps=[d["sampling"]["steps"]])
yaml.safe_dump(d, open(sys.argv[1], "w"), sort_keys=False)
PY
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
if [ -n "${HAND:-}" ] && [ ! -e hand/metrics/evaluate.json ]; then   # beside everything from here on (small models)
  hand_dir
  ( cd hand && mkdir -p logs && export OMP_NUM_THREADS=4 CLOCKWORK_PARAMS=params.yaml \
    && { [ -e metrics/distill.json ] || timeout $(( END - $(date +%s) )) python pipeline/distill.py > logs/distill.log 2>&1; } \
    && timeout $(( END - $(date +%s) )) python pipeline/evaluate.py > logs/evaluate.log 2>&1 ) &
  HAND_PID=$!
fi
if has distill; then step distill metrics/distill.json params.yaml 60 python pipeline/distill.py; models; fi

# ---- side by side: evaluate, edit, and one ablate process per group ----
ablate_dir() {  # ablate_dir N GROUP: a folder sharing the work directory's data, ablating GROUP only
  local d=ablate_$1
  side_dir "$d"
  cp metrics/schedule.json "$d/metrics/" 2>/dev/null || true
  python - "$d/params.yaml" "$2" <<'PY'
import sys, yaml
d = yaml.safe_load(open("params.yaml"))
d["ablate"]["ablations"] = sys.argv[2].split()
yaml.safe_dump(d, open(sys.argv[1], "w"), sort_keys=False)
PY
}
jobs_=()
has evaluate && [ ! -e metrics/evaluate.json ] && jobs_+=("evaluate")
has edit && [ ! -e metrics/edit.json ] && jobs_+=("edit")
if has ablate && [ ! -e metrics/ablate.json ]; then
  python - "$ABLATE_GROUPS" <<'PY'   # the groups must cover ablate.ablations: the last ablate would compute the rest alone
import sys, yaml
want = yaml.safe_load(open("params.yaml"))["ablate"]["ablations"]
have = sys.argv[1].replace(";", " ").split()
if sorted(want) != sorted(have):
    sys.exit(f"ABLATE_GROUPS={sys.argv[1]!r} does not split ablate.ablations={want} (each name once)")
PY
  IFS=';' read -ra groups <<< "$ABLATE_GROUPS"
  for i in "${!groups[@]}"; do
    [ -e "ablate_$i/metrics/ablate.json" ] || { ablate_dir "$i" "${groups[$i]}"; jobs_+=("ablate_$i"); }
  done
fi
if [ "${#jobs_[@]}" -gt 0 ]; then
  left=$(( END - $(date +%s) ))
  [ "$left" -gt 60 ] || { echo "== ${left}s left: ${jobs_[*]} next call"; snapshot; exit 0; }
  threads=$(( $(nproc) / ${#jobs_[@]} )); [ "$threads" -ge 1 ] || threads=1
  echo "== side by side ($(date +%T), ${left}s left, $threads threads each): ${jobs_[*]}"
  mkdir -p logs
  pids=()
  for j in "${jobs_[@]}"; do
    case $j in
      ablate_*) ( cd "$j" && mkdir -p logs && OMP_NUM_THREADS=$threads CLOCKWORK_PARAMS=params.yaml timeout "$left" \
                  python pipeline/ablate.py > "logs/ablate.log" 2>&1 ) & ;;
      *) ( OMP_NUM_THREADS=$threads CLOCKWORK_PARAMS=params.yaml timeout "$left" python pipeline/"$j".py \
             > "logs/$j.log" 2>&1 ) & ;;
    esac
    pids+=($!)
  done
  while alive "${pids[@]}" ${HAND_PID:-}; do sleep 30; snapshot; done   # partial rows come back if the call is cut
  for k in "${!pids[@]}"; do
    rc=0; wait "${pids[$k]}" || rc=$?
    echo "== ${jobs_[$k]}: rc $rc ($(date +%T))"
  done
  snapshot
  models
fi
if [ -n "${HAND_PID:-}" ]; then
  rc=0; wait "$HAND_PID" || rc=$?
  echo "== hand: rc $rc ($(date +%T))"; snapshot; models
fi
if has ablate && [ ! -e metrics/ablate.json ]; then
  for d in ablate_*/data/ablate; do   # every group's rows and adaptors into the work directory's row cache
    [ -d "$d" ] || continue
    [ -e "${d%/data/ablate}/metrics/ablate.json" ] || { echo "== ${d%%/*} not finished: ablate merges next call"; exit 0; }
    mkdir -p data/ablate/rows data/ablate/adaptors
    cp -rn "$d"/rows/. data/ablate/rows/
    cp -rn "$d"/adaptors/. data/ablate/adaptors/ 2>/dev/null || true
  done
  step ablate metrics/ablate.json params.yaml 30 python pipeline/ablate.py
fi
snapshot; models
echo "== stages done: $STAGES ($(date +%T))"
