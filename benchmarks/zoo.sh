#!/usr/bin/env bash
# The strategy zoo: every strategy on every task, 3 seeds (the table of the DALS paper, arXiv
# 2604.27295, with error bars).
# Tasks are added one at a time, cheapest first, to one output folder: each step reruns `rlrs zoo`
# on every task so far (their runs are reused), so results.json and report.md always hold the
# cross-task table of what is measured, and a killed chain resumes where it stopped.
# A session's machine does not keep OUT: the finished runs' records are packed into
# KEEP/runs.tar.xz after each task and every 10 minutes, and unpacked into OUT at the start
# (benchmarks/archive.sh): commit that archive and the next session trains only what is missing.
# Run it from a snapshot of the code (the pool's workers import rlrs afresh):
#   git worktree add --detach /tmp/rlrs-bench HEAD
#   PYTHONPATH=/tmp/rlrs-bench nohup /tmp/rlrs-bench/benchmarks/zoo.sh $PWD/bench/zoo $PWD/benchmarks/results/zoo \
#     > bench/zoo.log 2>&1 &
set -euo pipefail
OUT=${1:-bench/zoo}
KEEP=${2:-benchmarks/results/zoo}
TASKS=${TASKS:-gauss digits lm gcide-pos shakespeare-genre}   # e.g. TASKS="gauss digits"
# WORKERS (default 2): runs at once; 1 leaves a core to another benchmark chain.
cd "$(dirname "$0")/.."
mkdir -p "$KEEP"
source benchmarks/archive.sh
ARCHIVE=$KEEP/runs.tar.xz
unpack_runs "$OUT" "$ARCHIVE"
start_packer "$OUT" "$ARCHIVE"  # also while a task trains: a text task takes hours, a session may end first
done_tasks=""
for task in $TASKS; do
  done_tasks="${done_tasks:+$done_tasks,}$task"
  echo "== $(date +%H:%M:%S) $done_tasks"
  # Exit status 1 means some run crashed: it is in the report; the chain goes on.
  python -m rlrs zoo --tasks "$done_tasks" --strategies all --seeds 3 --workers ${WORKERS:-2} --out "$OUT" || echo "(some runs failed)"
  for f in results.json report.md zoo_curves.png; do
    if [[ -f "$OUT/$f" ]]; then cp "$OUT/$f" "$KEEP/$f"; fi
  done
  pack_runs "$OUT" "$ARCHIVE"
done
echo "zoo chain done"
