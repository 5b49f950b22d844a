"""Kosson et al.'s (2025, arXiv 2510.19093) mechanism in the width study's own runs: update sizes
against width, per variant.

    python benchmarks/width_updates.py bench/width                 # η_base 1e-2, the paper's dense plan
    python benchmarks/width_updates.py bench/width --base-lr 5e-3 --plan uniform-dense

Reads the runs that ``rlrs width-transfer`` (benchmarks/width_study.sh) trained, at one η_base on
every width's grid, and prints one markdown table per measurement: the hidden matrices' (attention
and feed-forward, averaged) relative update ‖ΔW‖/‖W‖, relative representation change ‖ΔY‖/‖Y‖ and
alignment ratio α_ΔW/α_W, early (the first measurement after warmup) and at equilibrium (the mean
over 40-60% of training, before the cosine's tail), averaged over seeds. What Kosson et al. predict:
with independent decay the equilibrium ‖ΔW‖/‖W‖ is about √(2λ) whatever the LR, so it is flat in
width; with coupled decay it is about √(2ηλ), so muP's 1/m LR makes it fall like 1/√m.
The run logs are read through ``rlrs.analysis.read_run``, the one parser of them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from rlrs.analysis import read_run

HIDDEN = ("attention", "feedforward")
MEASURES = (("update_ratio", "‖ΔW‖/‖W‖"), ("rep_change", "‖ΔY‖/‖Y‖"), ("align_ratio", "α_ΔW/α_W"))


def _runs(grid: Path, plan: str, base_lr: float) -> list[Path]:
    doc = json.loads(grid.read_text())
    arm = doc["arms"].get(plan)
    if arm is not None:
        for p in arm["points"]:
            if math.isclose(p["base_lr"], base_lr, rel_tol=1e-9):
                return [Path(r["out"]) for r in p["runs"] if r["status"] == "finished"]
    return []


def _phases(out: Path) -> dict[str, dict[str, float]]:
    """measure -> {"early", "equilibrium"} -> hidden-matrix mean, for one run."""
    u = read_run(out).updates
    steps = np.asarray(u.steps, float)
    total = steps.max()
    early = int(np.argmax(steps >= 0.02 * total))  # the first point after the 1% warmup
    mid = (steps >= 0.4 * total) & (steps <= 0.6 * total)
    res = {}
    for key, _ in MEASURES:
        per = np.asarray([getattr(u, key)[c] for c in HIDDEN if c in getattr(u, key)])
        res[key] = {"early": float(np.nanmean(per[:, early])), "equilibrium": float(np.nanmean(per[:, mid]))}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the width-transfer output directory")
    ap.add_argument("--plan", default="paper-dense")
    ap.add_argument("--base-lr", type=float, default=1e-2)
    args = ap.parse_args()
    root = Path(args.out)
    table: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for grid in sorted(root.glob("*/w*/grid.json")):
        variant, width = grid.parent.parent.name, int(grid.parent.name[1:])
        runs = [_phases(r) for r in _runs(grid, args.plan, args.base_lr)]
        if runs:
            table.setdefault(variant, {})[width] = {
                key: {ph: float(np.mean([r[key][ph] for r in runs])) for ph in ("early", "equilibrium")}
                for key, _ in MEASURES}
    widths = sorted({w for v in table.values() for w in v})
    print(f"Hidden matrices (attention, feed-forward), {args.plan} at η_base {args.base_lr:g}, mean over seeds; "
          f"early | equilibrium (40-60% of training).\n")
    for key, label in MEASURES:
        print(f"{label}\n\n| variant | " + " | ".join(f"w{w}" for w in widths) + " | equilibrium w_max/w_min |")
        print("|---|" + "---|" * (len(widths) + 1))
        for variant, by_w in table.items():
            cells = [f"{by_w[w][key]['early']:.3g} \\| {by_w[w][key]['equilibrium']:.3g}" if w in by_w else "-"
                     for w in widths]
            ws = sorted(by_w)
            ratio = by_w[ws[-1]][key]["equilibrium"] / by_w[ws[0]][key]["equilibrium"]
            print(f"| {variant} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        print()


if __name__ == "__main__":
    main()
