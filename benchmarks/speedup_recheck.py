"""The evidence ladder's speed-ups, recomputed with the one-rule metric beside the old rule.

    PYTHONPATH=. python benchmarks/speedup_recheck.py --out bench/recheck [--rungs xs-moe,xs-dense,s-moe]

Retrains each rung's compare (3 seeds, the paper's plan and the uniform baseline at the η_base
`evidence.json` records as their grids' best; runs are deterministic on one CPU thread, so the
curves are the evidence chain's own: the final losses are checked against `evidence.json`), then
measures the speed-up both ways: the old rule (T_base: the baseline's last step; T_relative: the
relative arm's first mean loss <= the baseline's final one) and `rlrs.analysis.speedup` (one
rule for both arms on their monotone fits). Prints a markdown table; writes recheck.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rlrs.experiments.compare import compare

RUNGS = {"xs-moe": ("ladder-xs-moe", "moe"), "xs-dense": ("ladder-xs-dense", "dense"),
         "s-moe": ("ladder-s-moe", "moe"), "m-moe": ("ladder-m-moe", "moe"), "m-dense": ("ladder-m-dense", "dense")}


def old_rule(bs, bl, rs, rl) -> float | None:
    target = bl[-1]
    hit = np.nonzero(np.isfinite(rl) & (rl <= target) & (rs > 0))[0]
    return None if hit.size == 0 else (bs[-1] / rs[hit[0]] - 1.0) * 100.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/recheck")
    p.add_argument("--rungs", default="xs-moe,xs-dense,s-moe")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    rows = json.loads(Path("benchmarks/results/evidence.json").read_text())["rows"]
    out = []
    for rung in args.rungs.split(","):
        preset, family = RUNGS[rung]
        row = next(r for r in rows if r["model"] == preset and r["kind"] == "compare" and r["arm"] == f"paper-{family}")
        lrs = {f"uniform-{family}": row["baseline_base_lr"], f"paper-{family}": row["base_lr"]}
        res = compare(preset, list(lrs), seeds=3, out=Path(args.out) / rung, sets={"train.threads": 1},
                      base_lrs=lrs, workers=args.workers)
        base, rel = res.arms[f"uniform-{family}"], res.arms[f"paper-{family}"]
        judged = res.speedups[f"paper-{family}"]
        sp = judged.speedup
        old = old_rule(*(np.asarray(x, float) for x in (base.curve.steps, base.curve.mean, rel.curve.steps, rel.curve.mean)))
        out.append({"rung": preset, "steps": res.total_steps, "published": row["speedup"],
                    "published_final": [row["final_loss"], row["baseline_final_loss"]],
                    "final": [rel.final_loss.mean, base.final_loss.mean], "old_rule": old,
                    "new_rule": sp.percent, "resolution": sp.resolution, "t": [sp.t_relative, sp.t_base],
                    "interval": None if judged.interval is None else [judged.interval.low, judged.interval.high],
                    "verdict": judged.verdict})
        Path(args.out, "recheck.json").write_text(json.dumps(out, indent=1))
    print("| rung | steps | published | old rule, these runs | one rule | ± | T_rel / T_base | 95% interval | final loss arm / baseline (published) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out:
        f = lambda x: "no speed-up" if x is None else f"{x:+.1f}%"
        iv = "—" if r["interval"] is None else f"[{f(r['interval'][0])}, {f(r['interval'][1])}]"
        print(f"| {r['rung']} | {r['steps']} | {f(r['published'])} | {f(r['old_rule'])} | **{f(r['new_rule'])}** | "
              f"{r['resolution']:.1f} | {r['t'][0]} / {r['t'][1]} | {iv} | {r['final'][0]:.4f} / {r['final'][1]:.4f} "
              f"({r['published_final'][0]:.4f} / {r['published_final'][1]:.4f}) |")


if __name__ == "__main__":
    main()
