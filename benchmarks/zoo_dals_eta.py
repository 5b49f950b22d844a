"""Does DALS do badly on the fine-tuning tasks only because they scale its η_0 by 0.1?

    python benchmarks/zoo_dals_eta.py bench/zoo-dals --workers 2

The zoo's text tasks scale every strategy's η by 0.1 (``Task.lr_scale``), DALS's η_0 = 0.03
included, although DALS's update is already relative to each tensor's norm (its trust ratio).
This trains the three DALS variants on ``gcide-pos`` and ``shakespeare-genre`` at their unscaled
η_0 (registry η × 10, which the task's × 0.1 brings back to the DALS paper's η_0), 3 seeds, on the run
engine (reused when finished), and prints each one's final test accuracy (mean ± std) beside the
zoo's scaled runs when their ``results.json`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rlrs.engine import Job, eval_curve, run_all, run_dir
from rlrs.zoo.tasks import TaskRun
from rlrs.zoo.strategies import STRATEGIES
from rlrs.zoo.tasks import TASKS
from rlrs.experiments.zoo import accuracy_text, load_results

VARIANTS = ("dals", "dals-fast", "dals-acc")
TEXT_TASKS = ("gcide-pos", "shakespeare-genre")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="where the runs go (OUT/runs)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--zoo", default="benchmarks/results/zoo-finetune/results.json",
                    help="the zoo's results.json with the scaled runs, for the side-by-side column")
    args = ap.parse_args()
    jobs = []
    for task in TEXT_TASKS:
        for name in VARIANTS:
            s = STRATEGIES[name]
            unscaled = s.with_base_lr(s.plan.base_lr / TASKS[task].lr_scale)
            for seed in range(args.seeds):
                spec = TaskRun(task, unscaled, seed)
                jobs.append(Job(spec, run_dir(Path(args.out) / "runs", spec), label=f"{task} {name} seed {seed}"))
    results = run_all(jobs, args.workers)
    zoo = load_results(args.zoo) if Path(args.zoo).is_file() else None
    print("| strategy | task | η_0 | accuracy % at η_0 (unscaled) | accuracy % at η_0 × 0.1 (the zoo) |")
    print("|---|---|---|---|---|")
    for task in TEXT_TASKS:
        for name in VARIANTS:
            mine = [r for j, r in zip(jobs, results) if j.spec.task == task and j.spec.strategy.name == name]
            accs = [100 * eval_curve(r.out, "accuracy")[1][-1] for r in mine if r.status == "finished"]
            lost = len(mine) - len(accs)
            acc = (f"{np.mean(accs):.1f} ± {np.std(accs, ddof=1):.1f}" if len(accs) > 1 else
                   f"{accs[0]:.1f} n=1" if accs else "none finished") + (f" ({lost} of {len(mine)} not finished)" if lost else "")
            ref = "—" if zoo is None else accuracy_text(zoo.cell(name, task))
            print(f"| {STRATEGIES[name].title} | {task} | {STRATEGIES[name].plan.base_lr:g} | {acc} | {ref} |")


if __name__ == "__main__":
    main()
