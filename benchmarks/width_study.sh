#!/usr/bin/env bash
# Issue 14, point 5: the width-transfer study on this machine (seed 003 and the paper's D.1).
#   benchmarks/width_study.sh [OUT]      (resumable: a rerun reuses every finished run)
# Run it from a snapshot of the code, as benchmarks/evidence.sh says (spawned workers re-import rlrs).
#
# Choices, so that the whole study fits in about 6 hours of a 2-core machine:
# - widths 16, 32, 64, 128 (8x in width, 64x in non-embedding parameters) of ladder-xs-dense
#   (2 layers, 2 heads kept at every width, as muP here assumes; bpe-1024, batch 16 x 128);
#   the smallest width is muP's base width. A 2-layer model keeps the widest run near 5 minutes.
# - one horizon for every width, 1500 steps (3.1M tokens), as width-transfer studies fix the data:
#   the weight decay's time constant is 1/(η·λ) = 333 steps at η 1e-2 with the coupled λ = 0.3 and
#   for the independent decay of 3e-3 per step (the same product), so the runs spend about 4.5
#   time constants near equilibrium, where seed 003 says the variants part ways.
# - all five variants, the uniform baseline and the paper's dense plan, 2 seeds per grid point,
#   grid 2e-3..2e-2 grown by up to 3 ladder steps at an edge.
# Estimated: 5 variants x 2 plans x ~5 grid points x 2 seeds x 4 widths ~ 400 runs, ~3.5 hours of
# wall time with 2 workers (the widest run ~5 min on one core, each halving of width ~4x cheaper).
set -euo pipefail
OUT=${1:-bench/width}
cd "$(dirname "$0")/.."
python -m rlrs width-transfer --preset ladder-xs-dense --widths 16,32,64,128 \
  --variants sp,sp-iwd,mup,mup-iwd,sp-warmup --plans uniform-dense,paper-dense \
  --grid 2e-3,5e-3,1e-2,2e-2 --extend 3 --seeds 2 --iwd 3e-3 \
  --set train.steps=1500 --set plan.weight_decay=0.3 --set train.threads=1 \
  --workers 2 --out "$OUT"
