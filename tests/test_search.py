"""The pure local search (algorithm 2) on synthetic objectives with known optima: no training."""

import math

import pytest

from rlrs.search import FACTORS, Result, canonical, local_search, per_point, point_key

START = [("lr", 3e-3), ("emb", 5.0), ("wd", 0.1), ("init", 0.15)]
# Reachable from START by products of the factors: lr × 5 × 3/2, emb × 1/5, wd × 2/3 × 2/3, init × 1.
OPTIMUM = {"lr": 3e-3 * 5 * 1.5, "emb": 1.0, "wd": 0.1 * (2 / 3) ** 2, "init": 0.15}


def quadratic(point):
    """Separable quadratic in log-space with its minimum 1.0 at OPTIMUM."""
    return 1.0 + sum(math.log(point[k] / v) ** 2 for k, v in OPTIMUM.items())


class Counting:
    """evaluate_many that records every call, optionally failing some points."""

    def __init__(self, fn=quadratic, fail=None):
        self.fn = fn
        self.fail = fail or (lambda p: None)
        self.points = []
        self.batches = []

    def __call__(self, points):
        self.batches.append(len(points))
        out = []
        for p in points:
            self.points.append(point_key(p))
            bad = self.fail(p)
            out.append(bad if bad is not None else self.fn(p))
        return out


def test_finds_the_known_optimum_and_converges():
    ev = Counting()
    r = local_search(START, ev, budget=200, seed=0)
    assert r.stopped == "converged"
    assert r.best == {k: canonical(v) for k, v in OPTIMUM.items()}
    assert r.best_loss == pytest.approx(1.0)
    assert r.start_loss == pytest.approx(quadratic(dict(START)))
    # never the same point twice, and the count matches what the search reports
    assert len(ev.points) == len(set(ev.points)) == r.evaluations == r.new_evaluations
    # the candidates of one step come in one call (4 factors besides ×1 at most)
    assert ev.batches[0] == 1 and max(ev.batches) == len(FACTORS) - 1
    # stops after a full pass that changed nothing
    last_pass = [s for s in r.steps if s.pass_index == r.passes]
    assert len(last_pass) == len(START) and not any(s.changed for s in last_pass)
    assert all(any(s.changed for s in r.steps if s.pass_index == p) for p in range(1, r.passes))
    # losses along the trajectory never rise
    losses = [s.loss for s in r.steps]
    assert losses == sorted(losses, reverse=True)


def test_budget_is_exact():
    for budget in (1, 2, 7, 13):
        ev = Counting()
        r = local_search(START, ev, budget=budget, seed=3)
        assert len(ev.points) == budget == r.evaluations
        assert r.stopped == "budget"
        tried = [c.result.loss for s in r.steps for c in s.candidates] or [r.start_loss]
        assert r.best_loss == min(tried)  # the best of what was evaluated
        assert all(len(s.candidates) > 1 for s in r.steps)  # no empty step once the budget is spent


def test_order_is_seeded():
    def orders(seed):
        r = local_search(START, Counting(), budget=200, seed=seed)
        return [s.param for s in r.steps]

    assert orders(1) == orders(1)
    seen = {tuple(orders(s)[: len(START)]) for s in range(6)}
    assert len(seen) > 1  # different seeds visit parameters in different orders
    first_pass = orders(4)[: len(START)]
    assert sorted(first_pass) == sorted(n for n, _ in START)  # each parameter once per pass


def test_failures_are_worst_recorded_and_do_not_stop_the_search():
    def fail(p):
        if p["lr"] > 0.05:  # too high an LR diverges
            return float("nan")
        if p["emb"] < 0.5:
            return RuntimeError("out of memory")
        if p["wd"] > 0.3:
            return Result(float("inf"), note="diverged at step 7")
        return None

    ev = Counting(fail=fail)
    r = local_search(START, ev, budget=200, seed=0)
    assert r.stopped == "converged"
    assert r.best == {k: canonical(v) for k, v in OPTIMUM.items()}
    notes = sorted({res.note for _, res in r.failures})
    assert notes == ["RuntimeError: out of memory", "diverged at step 7", "loss is nan"]
    assert all(res.loss == math.inf and res.status == "failed" for _, res in r.failures)
    failed = [(s, c) for s in r.steps for c in s.candidates if c.result.status == "failed"]
    assert failed and all(c.value != s.after for s, c in failed)  # a failed candidate is never chosen


def test_per_point_catches_exceptions_per_point():
    def fn(p):
        if p["x"] > 2:
            raise ValueError("boom")
        return (p["x"] - 1) ** 2

    r = local_search([("x", 1.5)], per_point(fn), budget=20)
    assert r.best == {"x": 1.0} and r.best_loss == 0.0
    assert r.failures and all(res.note == "ValueError: boom" for _, res in r.failures)


def test_a_start_that_fails_is_left_for_a_finite_neighbour():
    r = local_search([("lr", 1.0)], per_point(lambda p: math.inf if p["lr"] >= 1 else math.log(p["lr"] / 0.2) ** 2), budget=10)
    assert r.start_loss == math.inf and r.best == {"lr": 0.2} and r.stopped == "converged"


def test_identical_points_share_one_evaluation():
    # 3e-3 × 5 × 1/5 must hit the cache of 3e-3 despite rounding
    assert point_key({"a": 3e-3 * 5 * (1 / 5)}) == point_key({"a": 3e-3})
    ev = Counting(fn=lambda p: (math.log(p["a"] / 3e-3) ** 2))
    r = local_search([("a", 3e-3)], ev, budget=10)
    assert r.stopped == "converged" and r.evaluations == 5 and r.passes == 1


def trajectory(r):
    return [(s.param, s.before, s.after, s.loss, [(c.value, c.result) for c in s.candidates]) for s in r.steps]


def test_resume_replays_for_free_and_matches_an_uninterrupted_search():
    full = local_search(START, Counting(), budget=30, seed=2)

    # interrupted by its budget
    cache = {}
    first = Counting()
    part = local_search(START, first, budget=11, seed=2, cache=cache)
    assert part.stopped == "budget" and len(cache) == 11
    second = Counting()
    resumed = local_search(START, second, budget=30, seed=2, cache=cache)
    assert set(first.points).isdisjoint(second.points)
    assert len(first.points) + len(second.points) == 30
    assert resumed.best == full.best and resumed.best_loss == full.best_loss
    assert trajectory(resumed) == trajectory(full)

    # interrupted by a crash in the middle of a step (the evaluator itself raises)
    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crashing(points):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash()
        return [quadratic(p) for p in points]

    cache = {}
    with pytest.raises(Crash):
        local_search(START, crashing, budget=30, seed=2, cache=cache)
    done = set(cache)
    third = Counting()
    again = local_search(START, third, budget=30, seed=2, cache=cache)
    assert done.isdisjoint(third.points)
    assert trajectory(again) == trajectory(full) and again.evaluations == 30


def test_cache_from_storage_accepts_plain_losses_and_results():
    key = point_key(dict(START))
    ev = Counting()
    r = local_search(START, ev, budget=5, cache={key: 2.5})
    assert key not in ev.points and r.start_loss == 2.5
    ev = Counting()
    r = local_search(START, ev, budget=5, cache={key: Result(math.inf, "failed", "diverged")})
    assert r.start_loss == math.inf and r.failures[0][1].note == "diverged"


def test_an_evaluator_out_of_budget_stops_the_search():
    def refuse_after(n):
        seen = []

        def ev(points):
            out = []
            for p in points:
                seen.append(p)
                out.append(quadratic(p) if len(seen) <= n else None)
            return out

        return ev

    r = local_search(START, refuse_after(3), budget=None, seed=0)
    assert r.stopped == "budget" and r.evaluations == 3


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="budget"):
        local_search(START, Counting(), budget=0)
    with pytest.raises(ValueError, match="params"):
        local_search([], Counting(), budget=5)
    with pytest.raises(ValueError, match="repeated"):
        local_search([("a", 1.0), ("a", 2.0)], Counting(), budget=5)
    with pytest.raises(ValueError, match="factors"):
        local_search(START, Counting(), budget=5, factors=(0.5, 2.0))
    with pytest.raises(ValueError, match="one per point"):
        local_search(START, lambda pts: [], budget=5)
    with pytest.raises(ValueError, match="min_improvement: a relative margin in"):
        local_search(START, Counting(), budget=5, min_improvement=-0.1)


def test_min_improvement_ignores_gains_below_the_margin():
    # x: a slope of 0.05% of the loss per factor 5, the size of seed noise; y: a real optimum at 0.15.
    def loss(p):
        return 1.0 - 0.0005 * math.log(p["x"]) / math.log(5) + math.log(p["y"] / 0.15) ** 2

    start = [("x", 1.0), ("y", 0.1)]
    greedy = local_search(start, per_point(loss), budget=40, seed=0)
    careful = local_search(start, per_point(loss), budget=40, seed=0, min_improvement=0.002)
    assert greedy.best["x"] >= 25.0 and greedy.stopped == "budget"  # chased the slope every pass
    assert careful.best == {"x": 1.0, "y": 0.15} and careful.stopped == "converged"
    kept = [s for s in careful.steps if s.param == "x"]
    assert kept and all(not s.changed for s in kept)
    assert min(c.result.loss for c in kept[0].candidates) < kept[0].loss  # a gain, but too small
