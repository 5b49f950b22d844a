#!/usr/bin/env bash
# Tune relative rates on micro-moe (with and without --prune) and micro-dense,
# then transfer each tuned plan to the 4x larger small-moe / small-dense (algorithm 1).
#   benchmarks/tune_transfer.sh OUT_DIR [BUDGET] [TUNE_STEPS] [TRANSFER_STEPS]
# Every step reuses finished runs, so rerunning after a kill resumes where it stopped.
set -euo pipefail
OUT=${1:?usage: benchmarks/tune_transfer.sh OUT_DIR [BUDGET] [TUNE_STEPS] [TRANSFER_STEPS]}
BUDGET=${2:-20}
TUNE_STEPS=${3:-200}
TRANSFER_STEPS=${4:-300}
TUNE_SET=(--set train.eval_interval=0.05 --set train.eval_batches=4)
TRANSFER_SET=(--set train.steps="$TRANSFER_STEPS" --set train.eval_interval=0.02 --set train.eval_batches=4)

stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
timed() { local t0=$SECONDS; "$@"; echo "wall: $((SECONDS - t0)) s"; }

stamp "tune micro-moe"
timed rlrs tune --model micro-moe --budget "$BUDGET" --steps "$TUNE_STEPS" "${TUNE_SET[@]}" --workers 2 --out "$OUT/tune-moe"
stamp "tune micro-moe --prune"
timed rlrs tune --model micro-moe --budget "$BUDGET" --steps "$TUNE_STEPS" "${TUNE_SET[@]}" --workers 2 --prune --out "$OUT/tune-moe-prune"
stamp "transfer micro-moe -> small-moe"
timed rlrs transfer --plan "$OUT/tune-moe/tuned.toml" --model small-moe --grid 1e-3,2e-3,5e-3 --seeds 2 "${TRANSFER_SET[@]}" --workers 2 --out "$OUT/transfer-moe"
stamp "tune micro-dense"
timed rlrs tune --model micro-dense --budget "$BUDGET" --steps "$TUNE_STEPS" "${TUNE_SET[@]}" --workers 2 --out "$OUT/tune-dense"
stamp "transfer micro-dense -> small-dense"
timed rlrs transfer --plan "$OUT/tune-dense/tuned.toml" --model small-dense --grid 1e-3,2e-3,5e-3 --seeds 2 "${TRANSFER_SET[@]}" --workers 2 --out "$OUT/transfer-dense"
stamp "done"
