# Shared by the resumable GPU run scripts (gpu_full.sh, auto_schedule.sh, online_vs_store.sh, schedule_diagnosis.sh):
# source it after setting
#   OUT       the folder whose results.tgz comes back from the device call
#   END       the epoch second the call must stop by (steps that do not fit are left for the next call)
#   SNAPSHOT  the paths (globs allowed) tarred into $OUT/$SNAPSHOT_NAME after every step (default results.tgz)

gpu_workdir() {  # gpu_workdir SRC W: a work directory with the repository's code and dvc.yaml (stages hash their code)
  mkdir -p "$2"
  cp -r "$1"/clockwork "$1"/pipeline "$1"/scripts "$1"/dvc.yaml "$2"/
}

side_dir() {  # side_dir D: a folder beside the work directory (the current one) with the code, sharing its prepared
  # data and trajectories (symbolic links), for a second process with other params
  gpu_workdir . "$1"
  mkdir -p "$1/data" "$1/metrics" "$1/logs"
  ln -sfn "$PWD/data/prepared" "$1/data/prepared"
  ln -sfn "$PWD/data/trajectories" "$1/data/trajectories"
}

gpu_enter() {  # gpu_enter SRC W OUT: OUT made; W holding the repository's code, entered; the run's environment set
  mkdir -p "$3"
  gpu_workdir "$1" "$2"
  cd "$2"
  export CLOCKWORK_MLFLOW=${CLOCKWORK_MLFLOW:-0} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
}

with_data_root() {  # with_data_root PARAMS FMNIST_DIR: print PARAMS with world.data_root set to FMNIST_DIR
  sed "s#^  data_root: .*#  data_root: $2#" "$1"
}

reference_stats() {  # reference_stats PARAMS PREPARED_DIR [ARGS...]: the FID reference statistics, computed here once
  [ -f data/prepared/reference_stats.npz ] && return 0
  CLOCKWORK_PARAMS=$1 python scripts/gpu/gpu_prepare.py "$2" "${@:3}"
  echo "== reference statistics computed"
}

quiet() {  # drop progress bars and warnings from a stage's output
  grep -v "it/s\]$\|batch/s\]$\|warn" || true
}

snapshot() {
  local name=${SNAPSHOT_NAME:-results.tgz}
  # shellcheck disable=SC2086  # SNAPSHOT holds several paths and globs
  tar czf "$OUT/$name.tmp" --ignore-failed-read $SNAPSHOT 2>/dev/null || true
  mv "$OUT/$name.tmp" "$OUT/$name"
}

step() {  # step NAME DONE_FILE PARAMS MIN_SECONDS CMD...: run CMD unless DONE_FILE exists, if MIN_SECONDS are left
  local name=$1 done=$2 params=$3 min=$4; shift 4
  local left=$(( END - $(date +%s) ))
  if [ -e "$done" ]; then echo "== $name: done before"; return 0; fi
  if [ "$left" -lt "$min" ]; then echo "== $name: ${left}s left, it needs ~${min}s: next call"; snapshot; exit 0; fi
  echo "== $name ($(date +%T), ${left}s left)"
  local t0
  t0=$(date +%s)
  mkdir -p logs
  set +e
  CLOCKWORK_PARAMS=$params timeout "$left" "$@" 2>&1 | tee "logs/$name.log" | grep -v "it/s\]$\|batch/s\]$"
  local rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || { echo "== $name stopped (rc $rc)"; snapshot; exit 0; }
  echo "== $name took $(( $(date +%s) - t0 ))s" | tee -a logs/times.txt
  snapshot
}
