#!/usr/bin/env bash
# Automatic plans across rungs: each `rlrs auto` method's plan from the small rung reused on a
# larger one (only η_base retuned there, as the paper transfers its λ), against the same method run
# on the larger rung directly, the paper's tables there and the tuned uniform baseline; then the
# confirmation on seeds 0..3 (benchmarks/plan_search.py reads 1..3). Needs the small rung's
# `rlrs auto` plans (benchmarks/plan_search.sh BENCH_DIR SMALL). Every command reuses finished
# runs, so a rerun after a kill resumes where it stopped.
#   benchmarks/plan_transfer.sh BENCH_DIR [METHODS] [LADDER]
#     METHODS: any of update-size sensitivity
#     LADDER: dense (ladder-xs-dense -> ladder-s-dense, 3.4x) or vit (the ViT -> its 10x rung, vit-10x)
set -uo pipefail
B=${1:?usage: benchmarks/plan_transfer.sh BENCH_DIR [METHODS] [dense|vit]}
METHODS=${2:-update-size sensitivity}
PY=${PYTHON:-python}
R="$PY -m rlrs"
W=${WORKERS:-2}
P=${POINTS:-3}  # η_base grid points around each plan's η_base (a best at an edge grows the grid)
uni=uniform-dense
case ${3:-dense} in
  dense) small=xs-dense; large=s-dense; tgt=(--model ladder-s-dense) ;;
  vit) small=vit; large=vit-10x
       tgt=(--command "$PY benchmarks/targets/vit_fashion.py --optimizer adamw --d-model 96 --layers 5" --steps 400) ;;
  *) echo "unknown ladder ${3}: dense or vit"; exit 2 ;;
esac
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
best() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['best'][sys.argv[2]])" "$1" "$2"; }

stamp "$large: η_base grid of $uni,paper-dense"
$R lr-grid "${tgt[@]}" --plans $uni,paper-dense --points $P --workers $W --out $B/$large/grid
eta=$(best $B/$large/grid/grid.json $uni)
for m in $METHODS; do
  src=$B/$small/auto-$m
  [ -f $src/auto-$m.toml ] || { echo "no $src/auto-$m.toml: run benchmarks/plan_search.sh $B $small first"; exit 2; }
  d=$B/$large/transferred-$m
  mkdir -p $d
  cp $src/auto-$m.toml $src/auto-$m.json $d/  # the plan as derived on the small rung (its η_base retuned below)
  stamp "$large: $small's auto-$m plan, its η_base grid"
  $R lr-grid "${tgt[@]}" --plans $d/auto-$m.toml --points $P --workers $W --out $d/grid
  stamp "$large: rlrs auto --method $m here, from $uni at η_base $eta, then its own grid"
  $R auto "${tgt[@]}" --method $m --plan $uni --set plan.base_lr=$eta --workers $W --out $B/$large/auto-$m
  $R lr-grid "${tgt[@]}" --plans $B/$large/auto-$m/auto-$m.toml --points $P --workers $W --out $B/$large/auto-$m/grid
done
stamp "$large: confirmation on seeds 0..3"
$PY benchmarks/plan_search.py confirm --bench $B --targets $large --workers $W
$PY benchmarks/plan_search.py table --bench $B --targets $small,$large
stamp "done"
