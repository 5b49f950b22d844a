#!/usr/bin/env bash
# Issue 13, point 5: the GPU part of the evidence, as one prepared script for one GPU (~10 min).
#   benchmarks/gpu_ladder.sh [OUT]        # on a GPU machine; OUT defaults to $OUT or ./gpu-evidence
#   SMOKE=1 benchmarks/gpu_ladder.sh      # on a CPU: checks the script with tiny settings
# 1. tokens/s and MFU of the paper's 34M presets (bf16, fused AdamW, torch.compile);
# 2. the ladder's next rung (ladder-l-dense, 2.1M active non-embedding params, 64x ladder-xs) with
#    the CPU rungs' protocol: lr-grid per arm (uniform, the paper's table 5, the plan tuned on
#    ladder-xs-dense) around the η_base each chose on ladder-m, then compare with 3 paired seeds.
# Rows land in benchmarks/results/evidence.json beside the CPU rows; the figures go to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-evidence}}
mkdir -p "$OUT"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if [ "${SMOKE:-0}" = 1 ]; then
  stamp "smoke: throughput script on tiny presets (CPU)"
  python benchmarks/gpu_throughput.py --smoke --steps 3 --batch 4 --out "$OUT/throughput.json"
  stamp "smoke: evidence ladder stage on the GPU rung's code path, 6 steps per run"
  python benchmarks/evidence.py ladder --out "$OUT" --families dense --rungs l --arms paper --workers 1 \
    --set train.steps=6 --set train.batch_size=2 --set train.eval_interval=0.5 --set train.eval_batches=1 --no-rows
  stamp "smoke done"
  exit 0
fi
stamp "throughput and MFU: dense-34m, moe-34m"
timeout 240 python benchmarks/gpu_throughput.py --batch 32 --steps 30 --out "$OUT/throughput.json" || echo "throughput: failed or timed out"
stamp "ladder-l-dense: lr-grid and compare (bf16, compile)"
timeout 420 python benchmarks/evidence.py ladder --out "$OUT" --families dense --rungs l --arms paper,tuned --workers 1 \
  --set train.device=cuda --set train.precision=bf16 --set train.compile=true || echo "ladder: stopped (rerun resumes)"
stamp "done"
