#!/usr/bin/env bash
# The whole evidence chain (the paper's protocol on the compute-optimal ladder), in the order later
# stages need (see benchmarks/evidence.py).
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
# The larger rungs, MoE first (the paper's headline). On ladder-m a run takes 10 to 15 minutes
# on one core, so the CPU chain trains the baseline and the paper/tuned plans there (tuned equals
# the paper's plan on this ladder, so its runs are reused); blockwise, which gave no speed-up on
# the smaller rungs, is measured up to ladder-s. ARMS_M=paper,tuned,blockwise adds it back.
$E ladder --out "$OUT" --rungs s --families moe                           # transfer to 3.4x
$E ladder --out "$OUT" --rungs m --families moe --arms "${ARMS_M:-paper,tuned}"    # transfer to 10x
# ladder-s-dense was measured on a GPU lease (benchmarks/gpu_ladder.sh, DENSE_RUNGS=s: the same
# runs in fp32); its rows in evidence.json give ladder-m-dense its grid centres. SDENSE_CPU=1
# measures it here as well (this out's rows then replace the GPU's).
if [ "${SDENSE_CPU:-0}" = 1 ]; then $E ladder --out "$OUT" --rungs s --families dense; fi
$E ladder --out "$OUT" --rungs m --families dense --arms "${ARMS_M:-paper,tuned}"
echo "evidence chain done"
