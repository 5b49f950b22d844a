#!/usr/bin/env bash
# Which schedule should a tensor shared by the embedding and the output head follow? Two tied
# models, four arms each, the full protocol: an η_base grid per arm (grown at the edges), 3 paired
# seeds at every point, ≥ 20 tokens per parameter (650 steps of 16 × 128 tokens; the tied tensor
# counted once), then `compare` at each arm's best η_base (its runs are reused).
#   - rlrs's GPT (`ladder-xs-dense` with model.tie_embeddings=true; RoPE, so the tied tensor is the
#     only embedding or unembedding parameter): 65.7k parameters;
#   - Hugging Face GPT-2 built from a config (benchmarks/tied_gpt2.py; learned position embedding,
#     which stays in `embedding`): 62.3k parameters.
# Arms: uniform-dense; paper-dense with the tied tensor following the unembedding (1 → 0.4),
# the embedding (5 → 0.6), or its own schedule, the geometric mean of the two (2.24 → 0.49).
# Run it from a snapshot of the code, as benchmarks/zoo.sh says; KEEP gets the runs' records.
set -euo pipefail
OUT=${1:-bench/tied}
KEEP=${2:-benchmarks/results/tied}
cd "$(dirname "$0")/.."
mkdir -p "$KEEP"
source benchmarks/archive.sh
ARCHIVE=$KEEP/runs.tar.xz
unpack_runs "$OUT" "$ARCHIVE"
start_packer "$OUT" "$ARCHIVE"
P=benchmarks/plans
PLANS=uniform-dense,$P/tied-unembedding.toml,$P/tied-embedding.toml,$P/tied-own.toml
W=${WORKERS:-2}
stage() {  # stage NAME ARGS...: the grid, then compare at each arm's best η_base
  local name=$1; shift
  echo "== $(date +%H:%M:%S) $name"
  python -m rlrs lr-grid "$@" --plans "$PLANS" --seeds 3 --points 4 --workers "$W" --out "$OUT/$name" || echo "(some runs failed)"
  python -m rlrs compare "$@" --plans "$PLANS" --seeds 3 --workers "$W" --out "$OUT/$name" \
    --base-lrs-from "$OUT/$name/grid.json" || echo "(some runs failed)"
  mkdir -p "$KEEP/$name"
  cp "$OUT/$name"/{grid.json,grid.md,results.json,report.md,loss.png,lr_grid.png} "$KEEP/$name/" 2>/dev/null || true
  pack_runs "$OUT" "$ARCHIVE"
}
stage rlrs-gpt --model ladder-xs-dense --set model.tie_embeddings=true --set train.steps=650
stage hf-gpt2 --command "python $PWD/benchmarks/tied_gpt2.py" --steps 650
echo "== $(date +%H:%M:%S) done"
