#!/usr/bin/env bash
# The width-transfer study on this machine (Kosson et al. 2025, arXiv 2510.19093, and the RLRS
# paper's appendix D.1).
#   benchmarks/width_study.sh [OUT] [RESULTS]   (resumable: a rerun reuses every finished run)
# Run it from a snapshot of the code, as benchmarks/evidence.sh says (spawned workers re-import rlrs):
#   git worktree add --detach /tmp/rlrs-width HEAD
#   PYTHONPATH=/tmp/rlrs-width nohup /tmp/rlrs-width/benchmarks/width_study.sh $PWD/bench/width \
#     $PWD/benchmarks/results/width > bench/width.log 2>&1 &
#
# Choices, so that the study fits in one 3-hour session of a 2-core machine (about 2 hours of both
# cores; measured per 1000 steps on one core with the other busy: width 16 44 s, 32 52 s, 64 83 s,
# 128 160 s, so 8x in width would cost 1.3x more and leave no time for the second phase):
# - widths 16, 32, 48, 64 (4x in width, 16x in hidden-matrix parameters) of ladder-xs-dense
#   (2 layers, 2 heads kept at every width, as muP here assumes; bpe-1024, batch 16 x 128);
#   the smallest width is muP's base width.
# - one horizon for every width, 1000 steps (2M tokens), as width-transfer studies fix the data.
#   The decay's time constant 1/(η·λ) is 200 steps for the independent decay of 5e-3 per step and
#   for the coupled λ = 0.5 at η 1e-2 (the grid's centre), so the runs spend about 5 time constants
#   near equilibrium, where Kosson et al. say the variants part ways.
# - evals every 5% (the grids read only the final loss), 2 seeds per grid point, grid 5e-3..2e-2
#   grown by up to 3 {1,2,5} steps at an edge.
# - phase 1: all five variants with the paper's dense plan (RLRS: both questions need it);
#   phase 2: the uniform baseline beside it for sp and mup-iwd (phase 1's runs are reused).
# Each phase's results.json, report.md and figure are copied to RESULTS/<phase>/ when it ends, and
# the finished runs' records go to RESULTS/runs.tar.xz (benchmarks/archive.sh) after each phase
# and every 10 minutes: committed, it lets the next session resume, and anyone rebuild the tables
# (benchmarks/width_updates.py reads the runs' logs).
set -euo pipefail
OUT=${1:-bench/width}
RESULTS=${2:-benchmarks/results/width}
cd "$(dirname "$0")/.."
source benchmarks/archive.sh
unpack_runs "$OUT" "$RESULTS/runs.tar.xz"
start_packer "$OUT" "$RESULTS/runs.tar.xz"
study() {  # study PHASE VARIANTS PLANS
  python -m rlrs width-transfer --model ladder-xs-dense --widths 16,32,48,64 \
    --variants "$2" --plans "$3" --grid 5e-3,1e-2,2e-2 --extend 3 --seeds 2 --iwd 5e-3 \
    --set train.steps=1000 --set plan.weight_decay=0.5 --set train.eval_interval=0.05 \
    --set train.threads=1 --workers 2 --out "$OUT"
  mkdir -p "$RESULTS/$1"
  cp "$OUT/results.json" "$OUT/report.md" "$OUT/width_transfer.png" "$RESULTS/$1/"
  pack_runs "$OUT" "$RESULTS/runs.tar.xz"
  echo "width study: phase $1 done"
}
study rlrs sp,sp-iwd,mup,mup-iwd,sp-warmup paper-dense
study uniform sp,mup-iwd uniform-dense,paper-dense
