#!/usr/bin/env bash
# Issue 13's whole evidence chain, in the order later stages need (see benchmarks/evidence.py).
# Resumable: every stage reuses finished runs, so rerunning after a kill trains only what is missing.
# Run it from a snapshot of the code: the pool's spawned workers import rlrs afresh, so editing the
# working tree under a running chain would change (or break) the runs it starts next.
#   git worktree add --detach /tmp/rlrs-bench HEAD
#   RLRS_EVIDENCE_DIR=$PWD/benchmarks/results PYTHONPATH=/tmp/rlrs-bench \
#     nohup /tmp/rlrs-bench/benchmarks/evidence.sh $PWD/bench/evidence > bench/evidence.log 2>&1 &
set -euo pipefail
OUT=${1:-bench/evidence}
cd "$(dirname "$0")/.."
E="python benchmarks/evidence.py"
$E ladder --out "$OUT" --rungs xs             # η_base grids and 3-seed compares on the smallest rung
$E tune --out "$OUT" --budget 40              # tuners on the smallest rung (moe: 4 searches, dense: local)
$E ladder --out "$OUT" --rungs xs             # adds the tuned arm on the smallest rung
$E ablate --out "$OUT"                        # table 6 (leave-one-out) on the smallest rung
$E ladder --out "$OUT" --rungs s              # transfer to 3.4x
$E ladder --out "$OUT" --rungs m              # transfer to 8x
echo "evidence chain done"
