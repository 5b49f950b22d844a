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
    rel = base - 0.5  # 2.5 steps of 10 ahead: reaches 3.0 at step 80 (3.5 − 0.5 = 3.0)
    with_nan = rel.copy()
    with_nan[3] = math.nan
    assert speedup(STEPS, base, STEPS, with_nan) == speedup(STEPS, base, STEPS, rel)
    assert speedup(STEPS, base, STEPS, rel).t_relative == 80


def test_a_one_point_dip_is_pooled_with_its_neighbours_not_taken_as_arrival():
    base = np.linspace(5, 3, 11)
    rel = base.copy()
    rel[5] = 2.0  # one lucky eval at step 50, then the curve is the baseline's again
    s = speedup(STEPS, base, STEPS, rel)
    assert s.percent is not None and s.low <= 0 <= s.high and not s.measurable  # one interval allows 0, not +100%


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


# --- the same rule for both arms: no speed-up from nothing, none lost from noise -----------------------


def _noisy(curve, rng, sigma):
    return curve + rng.normal(0.0, sigma, curve.shape)


def _true_curve(t, total=1000):
    x = np.asarray(t, dtype=np.float64) / total
    return 3.0 + 2.0 * np.exp(-4.0 * x) - 0.15 * x  # still falling at the end, as a cosine run does


@pytest.mark.parametrize("sigma", [0.0, 0.003, 0.03])
def test_an_arm_identical_to_the_baseline_measures_exactly_zero_however_noisy(sigma):
    # The old rule (T_base: the baseline's last step; T_relative: the other arm's first arrival)
    # gave an identical copy of a noisy baseline a speed-up whenever the baseline touched its
    # final loss early (+53.8% on a user's script). One rule for both arms: 0, always.
    rng = np.random.default_rng(1)
    steps = np.arange(0, 1001, 10)
    for _ in range(20):
        curve = _noisy(_true_curve(steps), rng, sigma)
        s = speedup(steps, curve, steps, curve)
        assert s.percent == 0.0 and s.t_relative == s.t_base


def test_a_plateaued_baseline_gives_its_copy_no_speed_up():
    steps = list(range(0, 101, 10))
    plateau = [5.0, 4.0, 3.5, 3.2, 3.0, 3.0, 3.01, 2.99, 3.0, 3.01, 3.0]
    s = speedup(steps, plateau, steps, plateau)
    assert s.percent == 0.0


def test_a_known_speed_up_is_recovered_within_the_resolution_on_noisy_curves():
    # The relative arm is the baseline's curve run 1.2× (1.5×) faster: the true speed-up is +20%
    # (+50%). Eval noise of 0.003 is a tenth of the loss's fall over the last 10% of training
    # (about what a 3-seed mean of a fixed-batch eval shows). Averaged over draws, the estimate and
    # the truth both lie within the bounds one measuring interval allows; with no true difference,
    # the estimate is 0 within them.
    rng = np.random.default_rng(0)
    steps = np.arange(0, 1001, 10)
    for factor in (1.0, 1.2, 1.5):
        estimates, lows, highs = [], [], []
        for _ in range(200):
            base = _noisy(_true_curve(steps), rng, 0.003)
            rel = _noisy(_true_curve(steps * factor), rng, 0.003)
            s = speedup(steps, base, steps, rel)
            estimates.append(s.percent if s.percent is not None else 0.0)  # never reaching: at best 0
            if s.percent is not None:
                lows.append(s.low)
                highs.append(s.high)
        truth = (factor - 1.0) * 100.0
        low, high = np.mean(lows), np.mean(highs)
        assert low <= truth <= high and low <= np.mean(estimates) <= high, (factor, low, np.mean(estimates), high)


def test_sparse_evals_bound_a_clear_speed_up_away_from_zero():
    # Evals every quarter of training: the arm is at L by step 20 of 40, so the speed-up lies in
    # [+50%, +300%]; wide, but above 0: measurable. One that is there at its first eval has no
    # upper bound and is still faster.
    steps = [0, 10, 20, 30, 40]
    base = [5.5, 4.2, 3.6, 3.45, 3.42]
    s = speedup(steps, base, steps, [5.5, 3.9, 3.40, 3.3, 3.2])
    assert (s.t_relative, s.low, s.high) == (20, 50.0, 300.0) and s.measurable
    first = speedup(steps, base, steps, [5.5, 3.4, 3.3, 3.2, 3.1])
    assert first.percent == 300.0 and first.high == math.inf and first.low > 0 and first.measurable
    assert "no upper bound" in first.describe()
