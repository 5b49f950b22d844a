"""The speed-up metric on synthetic curves with a known answer: its bias and spread, old rule and new.

    PYTHONPATH=. python benchmarks/speedup_bias.py

The baseline's curve is 3 + 2·exp(−4x) − 0.15x over x = step / 1000 (still falling at the end, as
a cosine run does; it falls 0.03 over the last 10%), measured every 10 steps with Gaussian noise
of standard deviation sigma; the relative arm is the same curve run `factor` times faster, so the
true speed-up is (factor − 1) × 100%. 400 draws per cell. "Old": T_base is the baseline's last
step and T_relative the relative arm's first measurement <= the baseline's final loss; "one
rule": `rlrs.analysis.speedup`. A draw that never reaches the target counts as 0% in the mean
(its share is the "never" column).
"""

from __future__ import annotations

import numpy as np

from rlrs.analysis import speedup

STEPS = np.arange(0, 1001, 10)


def curve(t: np.ndarray) -> np.ndarray:
    x = t / 1000.0
    return 3.0 + 2.0 * np.exp(-4.0 * x) - 0.15 * x


def old_rule(bl: np.ndarray, rl: np.ndarray) -> float | None:
    hit = np.nonzero((rl <= bl[-1]) & (STEPS > 0))[0]
    return None if hit.size == 0 else (STEPS[-1] / STEPS[hit[0]] - 1.0) * 100.0


def main() -> None:
    rng = np.random.default_rng(0)
    print("| true speed-up | eval noise σ | old rule: mean ± sd | one rule: mean ± sd | one rule: never reaches | one rule: mean bounds of one interval |")
    print("|---|---|---|---|---|---|")
    for factor in (1.0, 1.2, 1.5):
        for sigma in (0.001, 0.003, 0.01, 0.03):
            old, new, never, res = [], [], 0, []
            for _ in range(400):
                b = curve(STEPS) + rng.normal(0, sigma, STEPS.shape)
                r = curve(STEPS * factor) + rng.normal(0, sigma, STEPS.shape)
                o = old_rule(b, r)
                old.append(0.0 if o is None else o)
                s = speedup(STEPS, b, STEPS, r)
                never += s.percent is None
                new.append(0.0 if s.percent is None else s.percent)
                if s.percent is not None:
                    res.append((s.low, s.high))
            print(f"| {100 * (factor - 1):+.0f}% | {sigma} | {np.mean(old):+.1f}% ± {np.std(old):.1f} | "
                  f"**{np.mean(new):+.1f}%** ± {np.std(new):.1f} | {never / 400:.0%} | "
                  f"[{np.mean([a for a, _ in res]):+.1f}%, {np.mean([b for _, b in res]):+.1f}%] |")


if __name__ == "__main__":
    main()
