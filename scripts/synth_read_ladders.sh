#!/usr/bin/env bash
# Procedure D with another reader over the TopK sweeps of four worlds, one JSON per dictionary,
# skipping those written (resumable); one seed per call, so two calls run side by side.
#   OMP_NUM_THREADS=1 bash scripts/synth_read_ladders.sh risk_refit refit ""        # seed 0
#   OMP_NUM_THREADS=1 bash scripts/synth_read_ladders.sh risk_refit refit _seed1    # seed 1
# then scripts/synth_choose_k.py chooses k on results/synthbench/absorption/OUT/*.json.
set -euo pipefail
reader=$1 out=results/synthbench/absorption/$2 seed=${3:-}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
while read -r name world ks; do
  for k in $ks; do
    json=$out/$name-8m-topk-k$k${seed:+-seed1}.json
    [ -f "$json" ] && continue
    cache=runs/synthbench_$name/cache/$world
    "$python" scripts/synth_reread.py "runs/synthbench_$name$seed/runs/$world/topk-k$k" \
      "$cache-eval" "$reader" --samples 10000 --stars --exclusive "$cache-train" --last-only \
      --json "$json"
  done
done <<'WORLDS'
flatd256 synthsaebench-4k-flat-d256 10 15 19 29
dense384 synthsaebench-4k-dense-d384 16 24 32 48
mix synthsaebench-4k-mix 4 6 8 12
deep synthsaebench-4k-deep 9 14 18 28
WORLDS
