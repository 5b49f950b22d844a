"""The paper's local search (appendix A.1, algorithm 2) as a pure, deterministic algorithm.

    >>> import math
    >>> def loss(p):                          # optimum at x = 0.6 = 3 × 1/5, y = 0.15 = 0.1 × 3/2
    ...     return math.log(p["x"] / 0.6) ** 2 + math.log(p["y"] / 0.15) ** 2
    >>> r = local_search([("x", 3.0), ("y", 0.1)], per_point(loss), budget=50, seed=0)
    >>> r.best, r.stopped
    ({'x': 0.6, 'y': 0.15}, 'converged')

Each step takes one parameter and multiplies its current value by each of :data:`FACTORS` (×1 is
the current point, already known); the best candidate becomes the current point (a tie keeps
the current one; with ``min_improvement`` > 0 it must also beat the current loss by that relative
margin, so that one noisy seed does not move the search). Parameters are visited in an order shuffled per pass by ``random.Random(seed)``.
The search stops when a full pass changes nothing (``stopped == "converged"``) or when ``budget``
distinct points have been evaluated (``"budget"``).

The objective is ``evaluate_many(points) -> results``: all uncached candidates of one step come in
one call, so they can run in parallel. A result is a loss (``float``), a :class:`Result`, an
exception instance (that point failed), or ``None`` (it was not evaluated: the evaluator's own
budget ran out, so the search stops after this step). NaN, ±inf and exceptions count as the worst
result (+inf), are recorded in the trajectory, and the search goes on. An exception raised by
``evaluate_many`` itself (not by one point) stops the search: it is the evaluator that broke.

No point is evaluated twice: results are cached by :func:`point_key` (values rounded to 10
significant digits). Each value is its start value times the exact product of the factors applied
(kept as a fraction), so every path to a point gives the same float: ``3e-3 × 5 × 1/5`` is
``3e-3`` again. ``cache`` can be prefilled with the
results of an interrupted search (for example from a database) and is updated in place: because the
search is deterministic, running it again with that cache replays the finished part for free and
continues exactly where it stopped. Cached points on the trajectory count towards ``budget`` like
fresh ones, so a resumed search stops where an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Mapping, MutableMapping, Sequence

FACTORS = (1 / 5, 2 / 3, 1.0, 3 / 2, 5.0)
"""The multipliers of algorithm 2."""

STATUSES = ("ok", "failed", "pruned")


def canonical(value: float) -> float:
    """A value rounded to 10 significant digits: products of the factors land on one float."""
    return float(f"{float(value):.10g}")


def point_key(point: Mapping[str, float]) -> str:
    """The cache key of a point: its canonical values as sorted JSON (storable anywhere)."""
    return json.dumps({k: canonical(point[k]) for k in sorted(point)}, sort_keys=True)


@dataclass(frozen=True)
class Result:
    """The outcome of one point. ``loss`` is what the search compares (+inf for a failed or
    pruned point); ``status`` is ``ok``, ``failed`` or ``pruned``; ``note`` says why."""

    loss: float
    status: str = "ok"
    note: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status: {self.status!r} is unknown; valid: {', '.join(STATUSES)}")


def as_result(value: Any) -> Result:
    """Normalise what an evaluator returned: a non-finite loss or an exception is a failure."""
    if isinstance(value, Result):
        if value.status == "ok" and not math.isfinite(value.loss):
            return Result(math.inf, "failed", value.note or f"loss is {value.loss}")
        return value
    if isinstance(value, BaseException):
        return Result(math.inf, "failed", f"{type(value).__name__}: {value}")
    try:
        loss = float(value)
    except (TypeError, ValueError):
        return Result(math.inf, "failed", f"the objective returned {value!r}, not a number")
    if not math.isfinite(loss):
        return Result(math.inf, "failed", f"loss is {loss}")
    return Result(loss)


def per_point(fn: Callable[[dict[str, float]], float]) -> Callable[[list[dict[str, float]]], list[Any]]:
    """Turn a one-point objective into ``evaluate_many``; an exception fails only its point."""

    def evaluate_many(points: list[dict[str, float]]) -> list[Any]:
        out: list[Any] = []
        for p in points:
            try:
                out.append(fn(p))
            except Exception as err:  # noqa: BLE001 - a failed point is a result, not a crash
                out.append(err)
        return out

    return evaluate_many


@dataclass
class Candidate:
    value: float
    result: Result
    cached: bool


@dataclass
class Step:
    """One parameter's turn: the candidates tried (the current value first) and the choice."""

    index: int
    pass_index: int
    param: str
    before: float
    candidates: list[Candidate]
    after: float
    loss: float  # the current point's loss after the step

    @property
    def changed(self) -> bool:
        return self.after != self.before

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pass": self.pass_index,
            "param": self.param,
            "before": self.before,
            "after": self.after,
            "loss": _json_float(self.loss),
            "candidates": [
                {"value": c.value, "loss": _json_float(c.result.loss), "status": c.result.status,
                 "note": c.result.note, "cached": c.cached}
                for c in self.candidates
            ],
        }


@dataclass
class SearchResult:
    best: dict[str, float]
    best_loss: float
    stopped: str  # "converged" | "budget"
    passes: int
    evaluations: int  # distinct points the search used (cached ones included)
    new_evaluations: int  # of those, points evaluate_many was called for
    start_loss: float = math.inf
    steps: list[Step] = field(default_factory=list)
    cache: MutableMapping[str, Result] = field(default_factory=dict)

    @property
    def failures(self) -> list[tuple[str, Result]]:
        """``(point_key, result)`` of every failed point the search met."""
        return [(k, r) for k, r in self.cache.items() if r.status == "failed"]


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _improves(new: float, old: float, margin: float) -> bool:
    if not math.isfinite(old):  # any finite loss beats a failed current point
        return new < old
    return new < old - margin * abs(old)


def local_search(
    params: Sequence[tuple[str, float]],
    evaluate_many: Callable[[list[dict[str, float]]], Sequence[Any]],
    budget: int | None,
    seed: int = 0,
    factors: Sequence[float] = FACTORS,
    cache: MutableMapping[str, Any] | None = None,
    on_step: Callable[[Step, dict[str, float], float], None] | None = None,
    on_start: Callable[[dict[str, float], Result], None] | None = None,
    min_improvement: float = 0.0,
) -> SearchResult:
    """Run algorithm 2 from ``params`` (``(name, initial value)`` pairs); see the module docstring.

    ``budget``: the most distinct points evaluated (``None``: until converged). ``on_start`` gets
    the start point and its result; ``on_step`` gets each finished :class:`Step`, the current point
    and its loss after it (for checkpointing the best-so-far). ``min_improvement``: the relative
    margin by which a candidate must beat the current loss to be taken (0: any gain, as the paper).
    """
    names = [n for n, _ in params]
    if not names:
        raise ValueError("params: nothing to search; give at least one (name, value) pair")
    if len(set(names)) != len(names):
        raise ValueError(f"params: a name is repeated in {names}")
    if budget is not None and budget < 1:
        raise ValueError(f"budget: at least 1 evaluation, got {budget}")
    if not (math.isfinite(min_improvement) and 0 <= min_improvement < 1):
        raise ValueError(f"min_improvement: a relative margin in [0, 1), got {min_improvement}; e.g. 0.002")
    factors = [float(f) for f in factors]
    if 1.0 not in factors or any(not (math.isfinite(f) and f > 0) for f in factors):
        raise ValueError(f"factors: positive numbers including 1 (the current value), got {factors}")
    exact = [Fraction(f).limit_denominator(10**6) for f in factors if f != 1.0]
    cache = {} if cache is None else cache
    for k, v in list(cache.items()):
        cache[k] = as_result(v)
    state = _State(cache, evaluate_many, budget)

    starts = {n: float(v) for n, v in params}
    ratios = {n: Fraction(1) for n in names}  # current value = start × ratio

    def value(name: str, ratio: Fraction) -> float:
        return canonical(starts[name] * float(ratio))

    current = {n: value(n, ratios[n]) for n in names}
    start = state.evaluate([current])[0]
    if start is None:  # the evaluator's own budget was already spent
        return SearchResult(dict(current), math.inf, "budget", 0, state.used, state.new, math.inf, [], cache)
    if on_start:
        on_start(dict(current), start)
    loss = start.loss
    rng = random.Random(seed)
    steps: list[Step] = []
    passes = 0
    while True:
        passes += 1
        order = list(names)
        rng.shuffle(order)
        changed = False
        for name in order:
            before = current[name]
            moves = [ratios[name] * f for f in exact]
            points = [{**current, name: value(name, r)} for r in moves]
            results, out_of_budget = state.evaluate_partial(points)
            cands = [Candidate(before, Result(loss), True)]
            best_ratio, best_loss = ratios[name], loss
            for r, p, (res, cached) in zip(moves, points, results):
                if res is None:
                    continue
                cands.append(Candidate(p[name], res, cached))
                if res.loss < best_loss:
                    best_ratio, best_loss = r, res.loss
            if best_ratio != ratios[name] and not _improves(best_loss, loss, min_improvement):
                best_ratio, best_loss = ratios[name], loss
            if out_of_budget and len(cands) == 1:  # nothing of this step fitted in the budget
                return SearchResult(dict(current), loss, "budget", passes, state.used, state.new,
                                    start.loss, steps, cache)
            ratios[name] = best_ratio
            current, loss = {**current, name: value(name, best_ratio)}, best_loss
            step = Step(len(steps), passes, name, before, cands, current[name], loss)
            steps.append(step)
            changed = changed or step.changed
            if on_step:
                on_step(step, dict(current), loss)
            if out_of_budget:
                return SearchResult(dict(current), loss, "budget", passes, state.used, state.new,
                                    start.loss, steps, cache)
        if not changed:
            return SearchResult(dict(current), loss, "converged", passes, state.used, state.new,
                                start.loss, steps, cache)


class _State:
    """The cache, the set of points the search has used, and the budget."""

    def __init__(self, cache: MutableMapping[str, Result], evaluate_many, budget: int | None):
        self.cache = cache
        self.evaluate_many = evaluate_many
        self.budget = budget
        self.used_keys: set[str] = set()
        self.new = 0

    @property
    def used(self) -> int:
        return len(self.used_keys)

    def evaluate(self, points: list[dict[str, float]]) -> list[Result | None]:
        results, _ = self.evaluate_partial(points)
        return [r for r, _ in results]

    def evaluate_partial(self, points: list[dict[str, float]]):
        """Results of ``points`` (``None`` where the budget stopped it) and whether it did."""
        keys = [point_key(p) for p in points]
        take: list[str] = []
        out_of_budget = False
        for k in keys:
            if k in self.used_keys or k in take:
                continue
            if self.budget is not None and self.used + len(take) >= self.budget:
                out_of_budget = True
                continue
            take.append(k)
        fresh = [k for k in take if k not in self.cache]
        fresh_points = [points[keys.index(k)] for k in fresh]
        if fresh_points:
            got = list(self.evaluate_many([dict(p) for p in fresh_points]))
            if len(got) != len(fresh_points):
                raise ValueError(
                    f"evaluate_many returned {len(got)} results for {len(fresh_points)} points; "
                    "return one per point (None for a point it did not evaluate)"
                )
            for k, value in zip(fresh, got):
                if value is None:
                    out_of_budget = True
                    take.remove(k)
                    continue
                self.cache[k] = as_result(value)
                self.new += 1
        self.used_keys.update(take)
        results = []
        for k in keys:
            if k in self.used_keys:
                results.append((self.cache[k], k not in fresh))
            else:
                results.append((None, False))
        return results, out_of_budget
