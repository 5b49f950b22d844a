"""The fine-tuning table: which way of fine-tuning MiniLM-L6 reaches the best
accuracy, and how fast.

    python benchmarks/zoo_finetune.py benchmarks/results/zoo-finetune/results.json

Reads a zoo's ``results.json`` (through ``rlrs.experiments.zoo.load_results``) and prints one markdown row per
fine-tuning approach: on each text task, the final test accuracy (mean ± std over seeds), how many
seeds reached the task's target accuracy and after how many steps (the mean over those that did),
and the mean wall time of a run; and how many parameters each approach trains (counted on the
encoder as the strategy builds it, without training).
"""

from __future__ import annotations

import argparse

from rlrs.zoo.finetune import minilm_classifier
from rlrs.zoo.strategies import STRATEGIES, build
from rlrs.zoo.tasks import ENCODER_RULES, TASKS
from rlrs.experiments.zoo import accuracy_text, load_results

APPROACHES = ("full-ft", "freeze-embedding", "rlrs-embedding", "rlrs", "llrd", "discriminative",
              "stlr-discriminative", "lora", "lora-plus")
"""Full fine-tuning, hard and continuous freezing, RLRS, the depth-wise decays, and the adapters."""


def trainable(name: str) -> int:
    model = minilm_classifier(2)
    build(STRATEGIES[name], model, 10, rules=ENCODER_RULES)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a zoo results.json with the text tasks")
    args = ap.parse_args()
    res = load_results(args.results)
    tasks = [t for t in res.tasks if all(STRATEGIES[s].applies_to(t) for s in APPROACHES)]
    head = "| approach | trained parameters | " + " | ".join(
        f"{t}: accuracy % | seeds ≥ {100 * TASKS[t].target:.0f}% | steps to it | s per run" for t in tasks) + " |"
    print(head)
    print("|---|---|" + "---|---|---|---|" * len(tasks))
    for s in APPROACHES:
        cols = []
        for t in tasks:
            c = res.cell(s, t)
            steps = "—" if c.steps_to_target is None else f"{c.steps_to_target:.0f}"
            cols.append(f"{accuracy_text(c)} | {c.reached}/{c.seeds} | {steps} | {c.wall_s:.0f}")
        print(f"| {STRATEGIES[s].title} | {trainable(s) / 1e6:.2f}M | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
