#!/usr/bin/env bash
# Copy a default run made in a fresh clone into this checkout's reports/default (+ dvc.lock), ready to commit.
#   git clone . /tmp/fresh && (cd /tmp/fresh && ./setup.sh && dvc repro) && scripts/commit_default_run.sh /tmp/fresh
# Then write reports/default/RUN.md (commit, CPU, precision, wall times) and commit.
set -euo pipefail
run="${1:?usage: scripts/commit_default_run.sh <fresh clone that ran dvc repro>}"
cd "$(dirname "$0")/.."
dst=reports/default
mkdir -p "$dst/headline"
for f in evaluate ablate distill edit schedule; do cp "$run/metrics/$f.json" "$dst/$f.json"; done
for f in evaluate ablate edit; do cp "$run/metrics/headline/$f.json" "$dst/headline/$f.json"; done
cp "$run/plots/distill_loss.csv" "$dst/distill_loss.csv"
mkdir -p "$dst/samples"
cp "$run/plots/samples/evaluate.png" "$run/plots/samples/edit.png" "$dst/samples/"  # ablate.png stays out (tree size)
cp "$run/plots/fronts.png" "$dst/fronts.png"
cp "$run/params.yaml" "$dst/params.yaml"
cp "$run/dvc.lock" "$dst/dvc.lock"
cp "$run/dvc.lock" dvc.lock
echo "copied the run of $run (commit $(git -C "$run" rev-parse --short HEAD)) into $dst; now: dvc repro report_default, RUN.md, commit"
