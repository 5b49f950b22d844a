"""The speed-up metric on synthetic curves with known answers."""

import math

import numpy as np
import pytest

from rlrs.analysis import mean_curve, paired_difference, speedup

STEPS = list(range(0, 101, 10))


def test_known_speedup():
    base = [9, 8, 7, 6, 5, 4.5, 4.2, 4.0, 3.9, 3.8, 3.7]
    rel = [9, 7.5, 6, 5, 4.4, 4.0, 3.8, 3.7, 3.6, 3.5, 3.4]
    s = speedup(STEPS, base, STEPS, rel)
    # the baseline ends at 3.7 after 100 steps; the relative arm first reaches 3.7 at step 70
    assert (s.t_base, s.t_relative, s.target_loss) == (100, 70, 3.7)
    assert s.percent == pytest.approx((100 / 70 - 1) * 100)
    assert "at step 70 instead of 100" in s.describe()


def test_identical_curves_give_zero():
    base = np.linspace(5, 3, 11)
    s = speedup(STEPS, base, STEPS, base)
    assert s.t_relative == 100 and s.percent == 0.0


def test_never_reaches_is_no_speedup_not_zero():
    base = np.linspace(5, 3, 11)
    s = speedup(STEPS, base, STEPS, base + 0.01)
    assert s.t_relative is None and s.percent is None
    assert s.describe().startswith("no speed-up")


def test_slower_relative_arm_is_negative():
    base = [5, 4, 3.5, 3.2, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4]
    rel = [5, 4.5, 4, 3.5, 3.2, 3.0, 2.9, 2.8, 2.6, 2.55, 2.4]
    # reaches 2.4 only at the last step: 0%; shift by one point to check the sign
    assert speedup(STEPS, base, STEPS, rel).percent == 0.0
    s = speedup(STEPS[:-1], base[:-1], STEPS, rel)  # baseline shorter (90 steps), target 2.5
    assert s.t_relative == 100 and s.percent == pytest.approx(-10.0)


def test_nan_points_never_count_as_reached():
    base = np.linspace(5, 3, 11)
    rel = base.copy()
    rel[3] = math.nan
    rel[5] = 2.0
    assert speedup(STEPS, base, STEPS, rel).t_relative == 50


def test_step_zero_is_not_a_valid_answer():
    s = speedup([0, 10], [3.0, 2.0], [0, 10], [1.0, 1.5])
    assert s.t_relative == 10


def test_bad_curves():
    with pytest.raises(ValueError, match="equal-length"):
        speedup([0, 1], [1.0], [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        speedup([0, 0], [1.0, 2.0], [0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="not finite"):
        speedup([0, 1], [1.0, math.nan], [0, 1], [1.0, 2.0])


def test_mean_curve_and_paired_difference():
    steps, mean, std = mean_curve([([0, 1], [2.0, 1.0]), ([0, 1], [4.0, 3.0])])
    assert list(steps) == [0, 1] and list(mean) == [3.0, 2.0] and std[0] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="different steps"):
        mean_curve([([0, 1], [1, 1]), ([0, 2], [1, 1])])
    d = paired_difference([3.0, 3.2, 3.1], [2.9, 3.0, 3.05])
    assert d.mean == pytest.approx(-0.11666666666) and d.n == 3 and d.std == pytest.approx(np.std([-0.1, -0.2, -0.05], ddof=1))



def test_bootstrap_interval_of_the_speedup_over_paired_seeds():
    from rlrs.analysis import bootstrap_speedup

    steps = [0, 10, 20, 30, 40]
    base = [(steps, [5.0, 4.0, 3.5, 3.2, 3.0]), (steps, [5.0, 4.0, 3.5, 3.2, 3.0])]
    fast = [(steps, [5.0, 3.6, 3.1, 2.95, 2.8]), (steps, [5.0, 3.6, 3.0, 2.9, 2.8])]
    iv = bootstrap_speedup(base, fast)
    point = speedup(*mean_curve(base)[:2], *mean_curve(fast)[:2]).percent
    assert iv.low <= point <= iv.high and iv.level == 0.95 and iv.resamples == 2000
    # one seed of the relative arm never gets there: resamples made of it have no speed-up
    mixed = [fast[0], (steps, [5.0, 4.5, 4.0, 3.6, 3.4])]
    iv = bootstrap_speedup(base, mixed)
    assert iv.low is None and iv.high is not None and "no speed-up" in iv.describe()
    assert bootstrap_speedup(base[:1], fast[:1]) is None  # one seed: no interval
    assert bootstrap_speedup(base, fast, seed=3) == bootstrap_speedup(base, fast, seed=3)  # reproducible
