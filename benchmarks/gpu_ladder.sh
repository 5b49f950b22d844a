#!/usr/bin/env bash
# Issue 13, point 5: the GPU part of the evidence, as one prepared script for one GPU (~10 min).
#   benchmarks/gpu_ladder.sh [OUT]        # on a GPU machine; OUT defaults to $OUT or ./gpu-evidence
#   SMOKE=1 benchmarks/gpu_ladder.sh      # on a CPU: checks the script with tiny settings
#   PART=width benchmarks/gpu_ladder.sh   # instead: issue 14's width study extended to wider models
# 1. tokens/s and MFU of the paper's 34M presets (bf16, fused AdamW, torch.compile);
# 2. the ladder's next rung (ladder-l-dense, 2.1M active non-embedding params, 64x ladder-xs) with
#    the CPU rungs' protocol: lr-grid per arm (uniform, the paper's table 5 and, when
#    benchmarks/results/tuned-dense.toml exists, the plan tuned on ladder-xs-dense) around the
#    η_base each chose on ladder-m (from evidence.json), then compare with 3 paired seeds.
#    Differences from the CPU rungs, to fit ~7 minutes: batch 256 (the paper's; 1282 steps for
#    42M tokens) and eager steps (compiling each run would cost more than it saves).
#    Data: $CORPUS (default shakespeare, which this rung sees 20 times: prefer a larger corpus).
# The GPU machine has no network: the token cache must travel with the tree (RLRS_CACHE=.cache/rlrs
#    prepared here by `RLRS_CACHE=.cache/rlrs rlrs fetch` and a first CPU run of the corpus).
# Rows go to benchmarks/results/evidence.json beside the CPU rows; it is copied into OUT (the
# folder that comes back from the GPU machine) with the runs' results and figures.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-evidence}}
mkdir -p "$OUT"
if [ -z "${RLRS_CACHE:-}" ] && [ -d .cache/rlrs ]; then export RLRS_CACHE="$PWD/.cache/rlrs"; fi
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
if [ "${PART:-ladder}" = width ]; then
  # Issue 14 on wider models than the CPU study (benchmarks/width_study.sh: widths 16..128): the
  # same preset, horizon and decay at widths 128..1024 (64x the CPU study's widest in parameters),
  # the two variants that matter most (sp, mup-iwd), the uniform plan, one seed, bf16.
  stamp "width transfer: ladder-xs-dense at widths 128..1024, sp and mup-iwd"
  timeout 480 python -m rlrs width-transfer --preset ladder-xs-dense --widths 128,256,512,1024 \
    --variants sp,mup-iwd --plans uniform-dense --grid 1e-3,2e-3,5e-3,1e-2 --extend 1 --seeds 1 --iwd 3e-3 \
    --set train.steps=1500 --set plan.weight_decay=0.3 --set train.device=cuda --set train.precision=bf16 \
    --workers 1 --out "$OUT/width" || echo "width transfer: stopped (a rerun on the same machine resumes)"
  stamp "done"
  exit 0
fi
stamp "throughput and MFU: dense-34m, moe-34m"
timeout 180 python benchmarks/gpu_throughput.py --batch 32 --steps 20 --out "$OUT/throughput.json" || echo "throughput: failed or timed out"
ARMS=paper
[ -f benchmarks/results/tuned-dense.toml ] && ARMS=paper,tuned
stamp "ladder-l-dense: lr-grid and compare (bf16, batch 256, arms uniform,$ARMS, corpus ${CORPUS:-shakespeare})"
timeout 420 python benchmarks/evidence.py ladder --out "$OUT" --families dense --rungs l --arms "$ARMS" --workers 1 \
  --set train.device=cuda --set train.precision=bf16 --set train.batch_size=256 \
  --set data.corpus="${CORPUS:-shakespeare}" || echo "ladder: stopped (a rerun on the same machine resumes)"
cp benchmarks/results/evidence.json "$OUT/evidence.json"
stamp "done"
