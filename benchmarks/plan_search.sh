#!/usr/bin/env bash
# The runs of benchmarks/plan_search.py: every way to a plan from the uniform plan at its tuned
# η_base, then the confirmation on 3 new seeds. Every command reuses finished runs, so a rerun
# after a kill resumes where it stopped. Run it from a snapshot of the code (see BENCHMARKS.md).
#   benchmarks/plan_search.sh BENCH_DIR [TARGETS]      TARGETS: any of xs-moe xs-dense s-dense s-moe vit vit-muon
# SEARCHES="gp local" replaces a target's list of searches (empty: none).
set -uo pipefail
B=${1:?usage: benchmarks/plan_search.sh BENCH_DIR [TARGETS]}
TARGETS=${2:-xs-moe vit vit-muon}
PY=${PYTHON:-python}
R="$PY -m rlrs"
W=${WORKERS:-2}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
best() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['best'][sys.argv[2]])" "$1" "$2"; }
MOE=plan.base_lr,plan.embedding.start,plan.embedding.end,plan.unembedding.start,plan.unembedding.end,plan.attention.start,plan.attention.end,plan.router.start,plan.router.end,plan.experts.start,plan.experts.end
DENSE=plan.base_lr,plan.embedding.start,plan.embedding.end,plan.unembedding.start,plan.unembedding.end,plan.attention.start,plan.attention.end,plan.feedforward.start,plan.feedforward.end

for t in $TARGETS; do
  pts=(); steps=()  # the η_base grid's points (lr-grid's default) and the searches' length (tune's default, 300)
  case $t in
    xs-moe) tgt=(--model ladder-xs-moe); uni=uniform-moe; plans=uniform-moe,paper-moe; params=$MOE; runs=327
            searches="local hyperband gp" ;;
    xs-dense) tgt=(--model ladder-xs-dense); uni=uniform-dense; plans=uniform-dense,paper-dense; params=$DENSE; runs=322
              searches="local gp" ;;
    # The rung above (3.4x): grids of 3 points as plan_transfer.sh made them; searches at the rung's
    # own 1,084 steps (tune's default 300 would be a quarter of the horizon).
    s-dense) tgt=(--model ladder-s-dense); uni=uniform-dense; plans=uniform-dense,paper-dense; params=$DENSE; runs=1084
             pts=(--points 3); steps=(--steps $runs); searches="gp local" ;;
    s-moe) tgt=(--model ladder-s-moe); uni=uniform-moe; plans=uniform-moe,paper-moe; params=$MOE; runs=1095
           pts=(--points 3); steps=(--steps $runs); searches="gp local" ;;
    vit) tgt=(--command "$PY benchmarks/targets/vit_fashion.py --optimizer adamw" --steps 400); uni=uniform-dense
         plans=uniform-dense; params=$DENSE; runs=400; searches="hyperband gp local" ;;
    vit-muon) tgt=(--command "$PY benchmarks/targets/vit_fashion.py --optimizer muon" --steps 400); uni=uniform-dense
              plans=uniform-dense; params=$DENSE; runs=400; searches="hyperband gp" ;;
    *) echo "unknown target $t"; exit 2 ;;
  esac
  searches=${SEARCHES-$searches}
  stamp "$t: η_base grid of $plans"
  $R lr-grid "${tgt[@]}" --plans $plans "${pts[@]}" --workers $W --out $B/$t/grid
  eta=$(best $B/$t/grid/grid.json $uni)
  for m in update-size sensitivity; do
    stamp "$t: rlrs auto --method $m from $uni at η_base $eta, then its own grid"
    $R auto "${tgt[@]}" --method $m --plan $uni --set plan.base_lr=$eta --workers $W --out $B/$t/auto-$m
    $R lr-grid "${tgt[@]}" --plans $B/$t/auto-$m/auto-$m.toml "${pts[@]}" --workers $W --out $B/$t/auto-$m/grid
  done
  for s in $searches; do
    stamp "$t: rlrs tune --sampler $s from $uni at η_base $eta"
    if [ $s = local ]; then
      $R tune "${tgt[@]}" "${steps[@]}" --plan $uni --set plan.base_lr=$eta --params $params --budget 40 --min-improvement 0.005 \
        --workers $W --out $B/$t/local
    else  # a third of the local search's 40 evaluations, in steps; the GP into gp-startup (gp holds
          # searches made before its random start-up was cut to a third of the budget)
      $R tune "${tgt[@]}" "${steps[@]}" --plan $uni --set plan.base_lr=$eta --params $params --sampler $s \
        --budget-steps $((13 * runs)) --workers $W --out $B/$t/$([ $s = gp ] && echo gp-startup || echo $s)
    fi
  done
  stamp "$t: confirmation on seeds 0..3 (the table reads 1..3)"
  $PY benchmarks/plan_search.py confirm --bench $B --targets $t --workers $W
done
$PY benchmarks/plan_search.py table --bench $B --targets "$(echo $TARGETS | tr ' ' ,)"
stamp "done"
