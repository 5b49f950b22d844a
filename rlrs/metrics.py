"""The paper's speed-up metric and seed statistics (appendix A), on plain arrays.

    >>> base = ([0, 10, 20, 30, 40], [5.0, 4.0, 3.5, 3.2, 3.0])
    >>> rel = ([0, 10, 20, 30, 40], [5.0, 3.6, 3.1, 2.95, 2.8])
    >>> s = speedup(*base, *rel)
    >>> s.t_base, s.t_relative, round(s.percent, 1)
    (40, 30, 33.3)

The baseline needs ``T_base`` steps (all of its training) to reach its final loss ``L``; the
relative arm first reaches ``L`` (loss ≤ L, checked at the measuring points: every 1% of
training) at step ``T_relative``. The speed-up is ``(T_base / T_relative − 1) × 100%``. Losses
are means over seeds. A relative arm that never reaches ``L`` has no speed-up (``percent`` is
``None``), which is reported as such, never as 0%. Because the relative arm's schedule has not
finished decaying at ``T_relative``, the metric underestimates the gain (the paper says so too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SpeedUp:
    t_base: int
    t_relative: int | None
    target_loss: float
    percent: float | None

    def describe(self) -> str:
        if self.percent is None:
            return f"no speed-up: the relative arm never reaches the baseline's final loss {self.target_loss:.4f}"
        return (
            f"speed-up {self.percent:+.1f}%: the relative arm reaches the baseline's final loss "
            f"{self.target_loss:.4f} at step {self.t_relative} instead of {self.t_base}"
        )


def speedup(
    base_steps: Sequence[int],
    base_loss: Sequence[float],
    rel_steps: Sequence[int],
    rel_loss: Sequence[float],
) -> SpeedUp:
    """The paper's speed-up from two loss curves measured at the given steps (means over seeds)."""
    base_steps, base_loss = _curve(base_steps, base_loss, "baseline")
    rel_steps, rel_loss = _curve(rel_steps, rel_loss, "relative")
    t_base = int(base_steps[-1])
    target = float(base_loss[-1])
    if not math.isfinite(target):
        raise ValueError("the baseline's final loss is not finite: no speed-up can be measured")
    reached = np.nonzero(np.isfinite(rel_loss) & (rel_loss <= target) & (rel_steps > 0))[0]
    if reached.size == 0:
        return SpeedUp(t_base, None, target, None)
    t_rel = int(rel_steps[reached[0]])
    return SpeedUp(t_base, t_rel, target, (t_base / t_rel - 1.0) * 100.0)


def _curve(steps, loss, name):
    steps = np.asarray(steps, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != loss.shape or steps.size == 0:
        raise ValueError(f"{name}: steps and losses must be equal-length, non-empty 1-D sequences")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"{name}: steps must be strictly increasing")
    return steps, loss


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation over seeds of curves measured at the same steps."""
    if not curves:
        raise ValueError("no curves to average")
    steps = np.asarray(curves[0][0], dtype=np.int64)
    for s, _ in curves[1:]:
        if not np.array_equal(np.asarray(s), steps):
            raise ValueError("curves measured at different steps cannot be averaged")
    losses = np.asarray([np.asarray(l, dtype=np.float64) for _, l in curves])
    std = losses.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return steps, losses.mean(axis=0), std


@dataclass(frozen=True)
class Difference:
    """Relative minus baseline final loss, paired by data seed."""

    mean: float
    std: float  # of the paired differences (0 with one seed)
    n: int

    def describe(self) -> str:
        spread = f" ± {self.std:.4f} (std over {self.n} seeds)" if self.n > 1 else " (one seed)"
        return f"final loss relative − baseline: {self.mean:+.4f}{spread}"


def paired_difference(base_final: Sequence[float], rel_final: Sequence[float]) -> Difference:
    """Final-loss difference with its spread; seeds are paired by position (the same data seed)."""
    b = np.asarray(base_final, dtype=np.float64)
    r = np.asarray(rel_final, dtype=np.float64)
    if b.shape != r.shape or b.size == 0:
        raise ValueError("paired_difference needs one final loss per seed in each arm")
    d = r - b
    return Difference(float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else 0.0, int(d.size))
