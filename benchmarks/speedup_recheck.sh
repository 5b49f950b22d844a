#!/usr/bin/env bash
# The ladder's larger rungs rechecked with the one-rule speed-up (benchmarks/speedup_recheck.py):
# 12 runs of about 10 minutes on a core. Resumable across sessions: finished runs' records are
# packed into KEEP/runs.tar.xz every 10 minutes and unpacked at the start (benchmarks/archive.sh).
# Run it from a snapshot of the code, as benchmarks/zoo.sh says.
set -euo pipefail
OUT=${1:-bench/recheck}
KEEP=${2:-benchmarks/results/recheck}
RUNGS=${RUNGS:-m-moe,m-dense}
cd "$(dirname "$0")/.."
mkdir -p "$KEEP"
source benchmarks/archive.sh
unpack_runs "$OUT" "$KEEP/runs.tar.xz"
start_packer "$OUT" "$KEEP/runs.tar.xz"
python benchmarks/speedup_recheck.py --out "$OUT" --rungs "$RUNGS" --workers "${WORKERS:-1}" | tee "$OUT/recheck-m.md"
cp "$OUT/recheck.json" "$OUT/recheck-m.md" "$KEEP/"
pack_runs "$OUT" "$KEEP/runs.tar.xz"
