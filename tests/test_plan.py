"""Plans as data: presets, strict loading, round trips through dict, TOML and JSON."""

import math
import tomllib

import pytest

from rlrs import presets
from rlrs.config import ConfigError, dumps_toml, replace
from rlrs.factors import WidthWarmup
from rlrs.plan import ComponentPlan, Plan


def test_paper_presets_match_tables_4_and_5():
    moe = presets.get("paper-moe")
    table4 = {"embedding": (5, 0.6), "unembedding": (0.6, 0.4), "router": (0.6, 1), "experts": (0.3, 1.125), "attention": (1, 1)}
    for comp, (start, end) in table4.items():
        assert (moe.component(comp).start, moe.component(comp).end) == (start, end), comp
    assert (moe.final_fraction, moe.weight_decay, moe.warmup, moe.base_lr) == (0.04, 0.1, 0.01, 3e-3)
    dense = presets.get("paper-dense")
    table5 = {"embedding": (5, 0.6), "unembedding": (1, 0.4), "feedforward": (1, 0.6), "attention": (1, 0.2)}
    for comp, (start, end) in table5.items():
        assert (dense.component(comp).start, dense.component(comp).end) == (start, end), comp
    assert (dense.final_fraction, dense.weight_decay, dense.base_lr) == (0.06, 0.1, 2e-3)


def test_uniform_baselines_differ_from_paper_only_in_lambdas():
    for base, rel in (("uniform-moe", "paper-moe"), ("uniform-dense", "paper-dense")):
        u, p = presets.get(base), presets.get(rel)
        assert all(u.component(c) == ComponentPlan() for c in ("embedding", "router", "attention"))
        strip = lambda plan: {k: v for k, v in plan.to_dict().items() if not isinstance(v, dict)}
        assert strip(u) == strip(p)
    assert presets.get("uniform") == presets.get("uniform-moe")


def test_blockwise_presets_are_static_multipliers_on_the_baseline_schedule():
    from rlrs.plan import Plan as P

    for fam in ("moe", "dense"):
        b, u = presets.get(f"blockwise-{fam}"), presets.get(f"uniform-{fam}")
        want = {"embedding": 10, "unembedding": 1, "attention": 6, "feedforward": 6, "router": 1, "experts": 6, "other": 1}
        for comp, m in want.items():
            assert (b.component(comp).start, b.component(comp).end, b.component(comp).shape) == (m, m, "cosine"), comp
        assert (b.final_fraction, b.weight_decay, b.warmup) == (u.final_fraction, u.weight_decay, u.warmup)
        # Static: every component's LR keeps its ratio to the norms' at every step after warmup.
        total = 1000
        for step in (10, 500, 999):
            assert b.lr("embedding", step, total) / b.lr("other", step, total) == pytest.approx(10)
            assert b.lr("attention", step, total) / b.lr("other", step, total) == pytest.approx(6)
        assert isinstance(b, P)


def test_unknown_preset_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'paper-moe'"):
        presets.get("paper-mo")


@pytest.mark.parametrize("name", sorted(presets.PLANS))
@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_round_trip_is_unchanged(tmp_path, name, suffix):
    plan = presets.get(name)
    assert Plan.from_dict(plan.to_dict()) == plan
    path = plan.save(tmp_path / f"plan{suffix}")
    loaded = Plan.load(path)
    assert loaded == plan
    # writing the loaded plan again gives the same text, byte for byte
    assert loaded.dumps(suffix) == path.read_text()


def test_round_trip_keeps_optional_fields():
    plan = Plan(tied="embedding", independent_wd=True, weight_decay=1e-4,
                router=ComponentPlan(0.5, 2.0, shape="wsd", weight_decay=0.0))
    assert Plan.from_dict(tomllib.loads(plan.dumps(".toml"))) == plan


def test_toml_is_readable():
    text = presets.get("paper-moe").dumps(".toml")
    assert "base_lr = 0.003" in text and "[router]\nstart = 0.6\nend = 1.0" in text


@pytest.mark.parametrize(
    "data, message",
    [
        ({"warmpu": 0.01}, "plan.warmpu: unknown key; did you mean 'warmup'"),
        ({"routr": {"start": 1.0}}, "plan.routr: unknown key; did you mean 'router'"),
        ({"router": {"strat": 1.0}}, "plan.router.strat: unknown key; did you mean 'start'"),
        ({"router": {"start": 0.0}}, "plan.router.start: must be a finite number > 0"),
        ({"router": {"end": -1.0}}, "plan.router.end: must be a finite number > 0"),
        ({"router": {"start": math.inf}}, "plan.router.start: expected a finite number, got inf"),
        ({"router": {"start": math.nan}}, "plan.router.start: expected a finite number, got nan"),
        ({"base_lr": "3e-3"}, "plan.base_lr: expected a number"),
        ({"base_lr": True}, "plan.base_lr: expected a number"),
        ({"decay_1d": 1}, "plan.decay_1d: expected true or false"),
        ({"warmup": 1.0}, "plan.warmup: a fraction of training in \\[0, 1\\)"),
        ({"router": {"shape": "cosin"}}, "plan.router.shape: 'cosin' is unknown; did you mean 'cosine'"),
        ({"router": {"shape": "constant", "end": 0.5}}, "plan.router.end: 0.5 has no effect"),
        ({"tied": "embeding"}, "plan.tied: 'embeding' is unknown; did you mean 'embedding'"),
        ({"independent_wd": True, "weight_decay": 0.1}, "plan.weight_decay: 0.1 is a per-step fraction"),
        ({"independent_wd": True, "weight_decay": 1e-4, "router": {"weight_decay": 0.1}},
         "plan.router.weight_decay: 0.1 is a per-step fraction"),
        ({"router": 3}, "plan.router: expected a table"),
    ],
)
def test_strict_validation(data, message):
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(data)


def test_unknown_component_lookup():
    with pytest.raises(ConfigError, match="did you mean 'router'"):
        Plan().lr("routers", 0, 100)


def test_warmup_must_leave_room_to_decay():
    plan = Plan(warmup=0.5)
    assert plan.lr("attention", 3, 10) > 0  # 5 warmup steps, 4 decay steps: fine
    with pytest.raises(ConfigError, match="plan.warmup|warmup: 0.5 of 3 steps"):
        plan.schedule("attention", 3)
    with pytest.raises(ConfigError, match="total_steps: an integer >= 2"):
        plan.schedule("attention", 1)


def test_dotted_overrides_are_strict():
    plan = replace(presets.get("paper-moe"), {"router.start": 0.5, "base_lr": 1e-3})
    assert plan.router.start == 0.5 and plan.base_lr == 1e-3 and plan.router.end == 1.0
    with pytest.raises(ConfigError, match="router.strat: unknown key; did you mean 'start'"):
        replace(plan, {"router.strat": 0.5})
    with pytest.raises(ConfigError, match="plan.router.start: must be a finite number > 0"):
        replace(plan, {"router.start": -2.0})


def test_bad_files(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("base_lr = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        Plan.load(bad)
    with pytest.raises(ConfigError, match="no such file"):
        Plan.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="use .toml or .json"):
        Plan.load(tmp_path / "p.yaml")
    wrong = tmp_path / "w.json"
    wrong.write_text('{"router": {"strat": 1}}')
    with pytest.raises(ConfigError, match=r"w.json: plan.router.strat: unknown key"):
        Plan.load(wrong)


def test_dumps_toml_nested_tables():
    text = dumps_toml({"a": 1, "b": {"c": "x", "d": {"e": [1.5, 2.0]}}, "f": None})
    assert tomllib.loads(text) == {"a": 1, "b": {"c": "x", "d": {"e": [1.5, 2.0]}}}



def test_width_warmup_multiplies_only_the_hidden_matrices_and_defaults_to_nothing():
    from rlrs.schedules import DecayAway, ExpRecovery

    base = Plan(base_lr=1e-3, weight_decay=0.1)
    for kind, piece in (("decay-away", DecayAway), ("exponential", ExpRecovery)):
        p = base.with_factor(WidthWarmup(kind, 4.0))
        for t in (1, 500, 5000, 9999):
            f = piece(4.0, 1 - 1e-3 * 0.1)(t)
            for comp in ("attention", "feedforward", "experts"):
                assert p.lr(comp, t, 10_000) == pytest.approx(base.lr(comp, t, 10_000) * f, rel=1e-12)
            for comp in ("embedding", "unembedding", "router", "other"):
                assert p.lr(comp, t, 10_000) == base.lr(comp, t, 10_000)
    # With independent decay the pace is the per-step fraction itself.
    ind = Plan(base_lr=1e-3, weight_decay=1e-4, independent_wd=True, factors=(WidthWarmup("decay-away", 2.0),))
    ref = Plan(base_lr=1e-3, weight_decay=1e-4, independent_wd=True)
    assert ind.lr("attention", 777, 10_000) == pytest.approx(ref.lr("attention", 777, 10_000) * DecayAway(2.0, 1 - 1e-4)(777))
    # m = 1 changes nothing.
    one = base.with_factor(WidthWarmup("exponential", 1.0))
    assert all(one.lr("attention", t, 1000) == base.lr("attention", t, 1000) for t in (0, 10, 500, 999))


@pytest.mark.parametrize("kwargs, message", [
    ({"width_warmup": "decay_away"}, "width_warmup: 'decay_away' is unknown; did you mean 'decay-away'"),
    ({"width_warmup": "exponential", "width_warmup_m": 0.5}, "width_warmup_m: the width multiplier, a number >= 1"),
    ({"width_warmup": "exponential", "width_warmup_m": 2.0, "weight_decay": 0.0}, "width_warmup: its recovery runs"),
])
def test_bad_width_warmup_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(kwargs)


def test_warmup_from_and_sgdr_settings_are_checked_and_added_compatibly():
    from rlrs import config as _config

    for kw, field in (({"warmup_from": 1.5}, "warmup_from"), ({"sgdr_first": 0.0}, "sgdr_first"),
                      ({"sgdr_mult": 0.5}, "sgdr_mult")):
        with pytest.raises(ConfigError, match=field):
            Plan(**kw)
    ident = _config.identity(Plan())
    assert not {"warmup_from", "sgdr_first", "sgdr_mult"} & set(ident)  # old run directories keep their names
    # The slanted triangle: the warmup starts at warmup_from × λ_start instead of 0.
    p = Plan(base_lr=1.0, warmup=0.1, warmup_from=0.25, feedforward=ComponentPlan(2.0, 1.0, "linear"))
    assert p.lr("feedforward", 0, 101) == pytest.approx(0.5) and p.lr("feedforward", 10, 101) == pytest.approx(2.0)
    assert p.lr("feedforward", 5, 101) == pytest.approx(0.5 + 0.5 * 1.5)
