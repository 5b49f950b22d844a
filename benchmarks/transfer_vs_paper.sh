#!/usr/bin/env bash
# After benchmarks/tune_transfer.sh: add the paper's own table (paper-moe / paper-dense) as a third
# arm on the larger model, with its η_base searched on the same grid, beside the transfer's two
# arms (whose finished runs are hard-linked in, so only the paper arm trains). MoE and dense run
# side by side, each pinned to one core (rlrs then trains with one thread).
#   benchmarks/transfer_vs_paper.sh OUT_DIR [TRANSFER_STEPS]
set -euo pipefail
OUT=${1:?usage: benchmarks/transfer_vs_paper.sh OUT_DIR [TRANSFER_STEPS]}
TRANSFER_STEPS=${2:-300}
SET=(--set train.steps="$TRANSFER_STEPS" --set train.eval_interval=0.02 --set train.eval_batches=4)

arm3() {
  local kind=$1 grid=$2 x="$OUT/transfer-$1-paper" t0=$SECONDS
  local plans="$OUT/transfer-$kind/plans/uniform.toml,$OUT/tune-$kind/tuned.toml,paper-$kind"
  mkdir -p "$x"
  [ -d "$x/runs" ] || cp -al "$OUT/transfer-$kind/runs" "$x/runs"
  rlrs lr-grid --model "small-$kind" --plans "$plans" --grid "$grid" "${SET[@]}" --workers 1 --out "$x"
  rlrs compare --model "small-$kind" --plans "$plans" --seeds 2 --base-lrs-from "$x/grid.json" "${SET[@]}" --workers 1 --out "$x"
  echo "small-$kind three arms wall: $((SECONDS - t0)) s"
}
pin() { taskset -pc "$1" "$BASHPID" > /dev/null 2>&1 || true; }  # children inherit it
( pin 0; arm3 moe 1e-3,2e-3,5e-3 ) > "$OUT/transfer-moe-paper.log" 2>&1 &
( pin 1; arm3 dense 1e-3,2e-3,5e-3 ) > "$OUT/transfer-dense-paper.log" 2>&1 &
wait
