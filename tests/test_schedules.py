"""Schedules against hand-computed float64 tables at their boundaries (to 1e-12)."""


import pytest

from rlrs.plan import ComponentPlan, Plan
from rlrs.schedules import Constant, Cosine, Join, Linear, stable_then_decay, warmup_then

TOL = 1e-12


def close(a, b):
    return abs(a - b) <= TOL


def test_pieces_at_their_ends():
    assert Constant(0.7)(0) == 0.7 and Constant(0.7)(10**9) == 0.7
    lin = Linear(2.0, 0.5, 4)
    assert [lin(t) for t in range(6)] == [2.0, 1.625, 1.25, 0.875, 0.5, 0.5]
    cos = Cosine(1.0, 0.0, 4)
    # 0.5 (1 + cos(pi t/4)) for t = 0..4, then held
    expected = [1.0, 0.8535533905932737, 0.5, 0.14644660940672624, 0.0, 0.0]
    assert all(close(cos(t), e) for t, e in zip(range(6), expected))
    assert cos(-3) == 1.0  # before the start it holds the start value


def test_join_counts_steps_from_each_piece_start():
    s = Join((Linear(0.0, 1.0, 10), Constant(3.0), Linear(3.0, 1.0, 2)), (10, 20))
    assert [s(t) for t in (0, 5, 9, 10, 19, 20, 21, 22, 99)] == [0.0, 0.5, 0.9, 3.0, 3.0, 3.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="one boundary fewer"):
        Join((Constant(1.0),), (3,))
    with pytest.raises(ValueError, match="sorted"):
        Join((Constant(1.0), Constant(2.0), Constant(3.0)), (5, 2))


def test_warmup_and_stable_helpers():
    s = warmup_then(4.0, 4, Constant(4.0))
    assert [s(t) for t in range(6)] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert warmup_then(4.0, 0, Constant(4.0)) == Constant(4.0)
    w = stable_then_decay(2.0, 3, Linear(2.0, 0.0, 2))
    assert [w(t) for t in range(7)] == [2.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0]


# The paper's embedding schedule in the MoE preset: λ_start 5, λ_end 0.6, λ_base 0.04, so the
# final multiplier is 0.024. T = 1001 steps, 1% warmup = round(10.01) = 10 steps, decay over
# T - 1 - W = 990 steps; the middle of the decay is step 505.
PLAN = Plan(final_fraction=0.04, embedding=ComponentPlan(5.0, 0.6))
T = 1001


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # warmup starts from 0
        (5, 2.5),  # half-way through warmup
        (10, 5.0),  # end of warmup: λ_start
        (505, 2.512),  # middle of the cosine: (5 + 0.024) / 2
        (1000, 0.024),  # last step: λ_base · λ_end
        (5000, 0.024),  # past the end it holds
    ],
)
def test_paper_cosine_table(step, expected):
    assert close(PLAN.multiplier("embedding", step, T), expected)


def test_cosine_quarter_point():
    # 990 is not divisible by 4; use T = 1011 (W = 10, decay 1000): step 260 is a quarter in.
    # e + ½(5 − e)(1 + cos(π/4)) with e = 0.024 and cos(π/4) = √½
    expected = 0.024 + 0.5 * 4.976 * (1 + 0.7071067811865476)
    assert close(PLAN.multiplier("embedding", 260, 1011), expected)


@pytest.mark.parametrize(
    "shape, table",
    [
        ("linear", {0: 0.0, 10: 5.0, 505: 2.512, 1000: 0.024}),
        ("constant", {0: 0.0, 10: 5.0, 505: 5.0, 1000: 5.0}),
        # wsd: decay over round(0.2 · 1001) = 200 steps, i.e. steps 800..1000
        ("wsd", {0: 0.0, 10: 5.0, 505: 5.0, 800: 5.0, 900: 2.512, 1000: 0.024}),
    ],
)
def test_other_shapes(shape, table):
    end = 1.0 if shape == "constant" else 0.6
    plan = Plan(final_fraction=0.04, embedding=ComponentPlan(5.0, end, shape=shape))
    for step, expected in table.items():
        assert close(plan.multiplier("embedding", step, T), expected), (shape, step)


def test_no_warmup_starts_at_lambda_start():
    plan = Plan(warmup=0.0, final_fraction=0.5, router=ComponentPlan(0.6, 1.0))
    assert plan.multiplier("router", 0, 11) == 0.6
    assert close(plan.multiplier("router", 5, 11), 0.55)  # (0.6 + 0.5) / 2
    assert close(plan.multiplier("router", 10, 11), 0.5)


def test_lr_is_base_times_multiplier():
    plan = Plan(base_lr=3e-3, final_fraction=0.04, experts=ComponentPlan(0.3, 1.125))
    assert close(plan.lr("experts", 10, T), 3e-3 * 0.3)
    assert close(plan.lr("experts", 1000, T), 3e-3 * 0.04 * 1.125)


# --- Kosson et al.'s (arXiv 2510.19093) replacements for muP's implicit warmup -----------------


def test_decay_away_and_exponential_start_at_one_over_m_and_recover_to_one():
    from rlrs.schedules import DecayAway, ExpRecovery, Product

    for piece in (DecayAway(m=4.0, a=0.9), ExpRecovery(m=4.0, a=0.9)):
        assert piece(0) == 0.25 and piece(-3) == 0.25
        values = [piece(t) for t in range(0, 400)]
        assert all(b >= a for a, b in zip(values, values[1:])) and values[10] > values[1] > values[0]  # rises
        assert piece(1000) == pytest.approx(1.0, abs=1e-12)
    # Hand values: t = 1, a = 0.9, m = 4.
    assert DecayAway(4.0, 0.9)(1) == pytest.approx((1 + 15 * 0.81) ** -0.5)
    assert ExpRecovery(4.0, 0.9)(1) == pytest.approx(4.0 ** -0.9)
    assert DecayAway(1.0, 0.9)(0) == 1.0 and ExpRecovery(1.0, 0.9)(5) == 1.0  # m = 1: no factor
    assert Product((lambda t: 2.0, DecayAway(4.0, 0.9)))(0) == 0.5
