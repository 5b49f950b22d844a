"""Schedules: pure functions ``step -> multiplier`` that compose.

A schedule is any callable taking an integer step and returning a float. The pieces here are
frozen dataclasses, so they compare, hash and print, and they hold no state: the value at step
``t`` depends on ``t`` alone. Compose them with :class:`Join` instead of adding flags::

    >>> from rlrs.schedules import Join, Linear, Cosine
    >>> s = Join((Linear(0.0, 5.0, 10), Cosine(5.0, 0.024, 89)), (10,))
    >>> s(0), s(10), s(99)
    (0.0, 5.0, 0.024)

Every piece covers ``steps`` steps: ``piece(0)`` is its start value and ``piece(steps)`` its end
value; beyond that it holds the end value. The paper's per-component schedule (appendix B) over
``T`` training steps with ``W`` warmup steps is

    t <  W :  λ_start · t / W                                          (linear warmup from 0)
    t >= W :  e + ½ (λ_start − e) (1 + cos(π (t − W) / (T − 1 − W)))    (cosine)
    where e = λ_base · λ_end,

so step 0 has multiplier 0, step W has λ_start and the last step, ``T − 1``, has exactly ``e``.
:func:`rlrs.plan.Plan.schedule` builds it with :func:`warmup_then`.

Imports only the standard library: it belongs to the core.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Callable

Schedule = Callable[[int], float]
"""The type of a schedule: a step (int, from 0) to a multiplier (float)."""


def _progress(step: int, steps: int) -> float:
    if steps <= 0:
        return 1.0
    return min(max(step, 0), steps) / steps


@dataclass(frozen=True)
class Constant:
    """``value`` at every step."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    """Straight line from ``start`` (step 0) to ``end`` (step ``steps``), then ``end``."""

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * _progress(step, self.steps)


@dataclass(frozen=True)
class Cosine:
    """Half cosine from ``start`` (step 0) to ``end`` (step ``steps``), then ``end``.

    ``end + ½ (start − end)(1 + cos(π t / steps))``: the paper's appendix B formula.
    """

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        p = _progress(step, self.steps)
        return self.end + 0.5 * (self.start - self.end) * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class Join:
    """Pieces one after another: piece ``i + 1`` starts at step ``boundaries[i]``.

    Each piece sees the step counted from its own start (optax's ``join_schedules``).
    """

    pieces: tuple
    boundaries: tuple

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.boundaries) + 1:
            raise ValueError(
                f"Join needs one boundary fewer than pieces: {len(self.pieces)} pieces, "
                f"{len(self.boundaries)} boundaries"
            )
        if list(self.boundaries) != sorted(self.boundaries) or any(b < 0 for b in self.boundaries):
            raise ValueError(f"Join boundaries must be non-negative and sorted: {self.boundaries}")

    def __call__(self, step: int) -> float:
        i = bisect.bisect_right(self.boundaries, step)
        offset = self.boundaries[i - 1] if i else 0
        return self.pieces[i](step - offset)


@dataclass(frozen=True)
class Product:
    """The pieces multiplied step by step (a factor on top of a schedule)."""

    pieces: tuple

    def __call__(self, step: int) -> float:
        out = 1.0
        for piece in self.pieces:
            out *= piece(step)
        return out


@dataclass(frozen=True)
class DecayAway:
    """``(1 + (m² − 1)·a^(2t))^(−1/2)``: starts at ``1/m`` and recovers to 1 as the initial
    weights decay away (``a`` is the per-step weight shrink ``1 − η·λ``). The closed form (Kosson
    et al. 2025, arXiv 2510.19093) of the implicit warmup that muP's 1/m LR gives a width-m model's hidden matrices.

        >>> f = DecayAway(m=4.0, a=0.99)
        >>> f(0), round(f(10_000), 12)
        (0.25, 1.0)
    """

    m: float
    a: float

    def __call__(self, step: int) -> float:
        return (1.0 + (self.m**2 - 1.0) * self.a ** (2 * max(step, 0))) ** -0.5


@dataclass(frozen=True)
class ExpRecovery:
    """``m^(−a^t)``: starts at ``1/m`` and recovers to 1 geometrically (log of the factor shrinks
    by ``a`` per step): the "exponential" replacement of muP's implicit warmup.

        >>> f = ExpRecovery(m=4.0, a=0.99)
        >>> f(0), round(f(10_000), 12)
        (0.25, 1.0)
    """

    m: float
    a: float

    def __call__(self, step: int) -> float:
        return self.m ** -(self.a ** max(step, 0))


def cosine_restarts(start: float, end: float, first: int, mult: float, steps: int) -> Schedule:
    """SGDR (Loshchilov and Hutter, 2017) over ``steps`` steps, as :class:`Cosine` pieces joined:
    cosine from ``start`` to ``end`` over ``first`` steps, then again over ``first·mult`` steps,
    and so on (cycle ``i`` lasts ``round(first·multⁱ)`` steps, at least 1). The last cycle is the
    one after which the next would not fit whole; it runs to ``steps``, so training ends at
    ``end``, never right after a restart.

        >>> s = cosine_restarts(1.0, 0.1, first=10, mult=2.0, steps=70)
        >>> s(0), s(5), s(10), s(20), s(30), s(70)
        (1.0, 0.55, 1.0, 0.55, 1.0, 0.1)
        >>> cosine_restarts(1.0, 0.1, first=10, mult=2.0, steps=75)(75)  # 5 steps spare: the last cycle takes them
        0.1
    """
    lengths, begin, i = [], 0, 0
    while True:
        length = max(1, round(first * mult**i))
        following = max(1, round(first * mult ** (i + 1)))
        if begin + length + following > steps:  # the next cycle would not fit: this one is the last
            lengths.append(max(1, steps - begin))
            break
        lengths.append(length)
        begin, i = begin + length, i + 1
    bounds = tuple(itertools.accumulate(lengths[:-1]))
    pieces = tuple(Cosine(start, end, n) for n in lengths)
    return pieces[0] if len(pieces) == 1 else Join(pieces, bounds)


def warmup_then(peak: float, warmup_steps: int, then: Schedule, start: float = 0.0) -> Schedule:
    """Linear warmup from ``start`` to ``peak`` over ``warmup_steps`` steps, then ``then`` (from
    its step 0). ULMFiT's slanted triangle starts at ``peak/32``, not 0.

    With ``warmup_steps == 0`` this is ``then`` itself.
    """
    if warmup_steps <= 0:
        return then
    return Join((Linear(start, peak, warmup_steps), then), (warmup_steps,))


def stable_then_decay(value: float, stable_steps: int, decay: Schedule) -> Schedule:
    """Hold ``value`` for ``stable_steps`` steps, then follow ``decay`` (warmup-stable-decay's tail)."""
    if stable_steps <= 0:
        return decay
    return Join((Constant(value), decay), (stable_steps,))
