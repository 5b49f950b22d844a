"""Plan factors (rlrs.factors): width, depth and LoRA+ compose with Plan.lr, and old plans keep
their files, their LRs and their run directories."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import pytest

from rlrs import config as _config
from rlrs import presets, strategies
from rlrs.components import COMPONENTS
from rlrs.config import ConfigError
from rlrs.engine import PresetRun, run_dir
from rlrs.factors import KNOWN, DepthDecay, LoraPlus, ScheduleFactor, TensorContext, TensorFactor, WidthWarmup
from rlrs.plan import Plan
from rlrs.schedules import Constant, Join
from rlrs.train import run_config

# Plans as plan files wrote them before factors were composed (the keys they had as Plan fields).
LEGACY = {
    "default": {},
    "lora_plus": {"lora_plus": 16},
    "lora_plus_null": {"lora_plus": None, "width_warmup_m": 1.0},
    "width_warmup": {"width_warmup": "decay-away", "width_warmup_m": 4.0},
    "width_warmup_m1": {"width_warmup": "exponential"},
    "width_warmup_iwd": {"width_warmup": "exponential", "width_warmup_m": 2.0, "independent_wd": True,
                         "weight_decay": 1e-4},
    "depth_decay": {"depth_decay": 0.8},
    "all": {"lora_plus": 4.0, "width_warmup": "decay-away", "width_warmup_m": 2.0, "depth_decay": 0.65,
            "warmup_from": 0.03125, "sgdr_first": 0.25, "sgdr_mult": 3.0, "router": {"start": 0.5, "shape": "sgdr"}},
}


def _sorted(obj) -> str:  # what engine.run_dir hashes
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _ordered(obj) -> str:  # the bytes themselves, key order included
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


# The pre-change hashes, computed on main before Plan.factors existed (Plan had the fields
# lora_plus, width_warmup, width_warmup_m, depth_decay). They must never change: a change renames
# every old run directory (so finished runs train again) or rewrites saved plan files.
# Per plan: (run identity as run_dir hashes it, the identity's bytes, the .toml file, the .json file).
PINNED = {
    'legacy:default': ('14cdbcb54d4291ab', '42f7a46ce2ba8e29', '977db93e3c736796', '63c74a0e0e98011d'),
    'legacy:lora_plus': ('c5a88efb92f5b4e4', 'd5675e017524fda4', 'b8997572046b4c7b', 'ef74c0a8b600b056'),
    'legacy:lora_plus_null': ('14cdbcb54d4291ab', '42f7a46ce2ba8e29', '977db93e3c736796', '63c74a0e0e98011d'),
    'legacy:width_warmup': ('b9b3ec7266c01927', 'acbfe76381442d26', '347f42f0ed2cea1a', 'f587eeecaef175bf'),
    'legacy:width_warmup_m1': ('2805743d328d9023', '77a37c272b60a356', '9a409eace8d6f60a', '6ef9f48291f4cfa4'),
    'legacy:width_warmup_iwd': ('fbc5dddd10520989', 'efbe609edda88e4a', '6e367687a484c075', '2ae61e2a122403ed'),
    'legacy:depth_decay': ('bd2468090b3d9d60', 'fbc07ddf4e9390f7', '003a8eea66c143c8', 'd843bae5498a0e2c'),
    'legacy:all': ('ae420419d4ba57b0', '013a964f65139a29', 'bc171d813ad38e8e', '1a008f745eaade0e'),
    'preset:paper-moe': ('c803055df1356c0b', '9a59cea2cecef3e5', '05ce0ccb07307cf3', '192db1ba709bc5d8'),
    'preset:paper-dense': ('53abdad07ba6629f', '1b9af59f59112e1c', '3d8e9c18102c4407', '5602d1c7fae2dcb5'),
    'preset:uniform': ('b17e69723d0d67b9', '1a2651dfe760e28d', '6e1117a657059e99', 'db82cf71c94a9aee'),
    'preset:uniform-moe': ('b17e69723d0d67b9', '1a2651dfe760e28d', '6e1117a657059e99', 'db82cf71c94a9aee'),
    'preset:uniform-dense': ('59c0930e6ee6f8e5', '7d77111e727aff9d', 'f30aea965dfe2143', '8143aa0a4132c087'),
    'preset:blockwise-moe': ('15c8b5bf04194179', '93a3f71c7793183e', 'bec7befe327e55d0', '09f7b0092c6279c9'),
    'preset:blockwise-dense': ('a882ff802c897e94', '11d27092ebe56401', 'ceffe079e58f8edf', 'd1fbfae0645119a0'),
    'strategy:fixed-sgd': ('055719edf94035dc', '0600ae9173984d26'),
    'strategy:cosine-sgd': ('42f3f6ba247a386c', 'fbad7012b14ce1ea'),
    'strategy:sgdr': ('753b901148aba6dc', '5adb6784ba5ba615'),
    'strategy:adam': ('f5c246995c5de7e1', '406cd153a826ee6e'),
    'strategy:adamw': ('39904e2fb39b815b', '4b75cfd41ee3bdf4'),
    'strategy:adabound': ('884187e9542eb94f', 'c4afefa2338328a8'),
    'strategy:lars': ('22176f7c90986ce5', 'f343ad186b86fe1f'),
    'strategy:discriminative': ('ef1d985682791deb', 'd4894c7bd306a7df'),
    'strategy:radam': ('c7ac24c46fbdcd5f', '2fa7a1ec6b811e90'),
    'strategy:lion': ('8d6cbd0b887a76d0', '38ed6ad62f6931d9'),
    'strategy:lookahead-adamw': ('3036bfbd450dbc53', 'fe8051990e171c09'),
    'strategy:sam': ('96972cce23fded75', '1f557d5041ea11a1'),
    'strategy:grokfast': ('afcf643206781863', '5759087c98e80d31'),
    'strategy:stlr-discriminative': ('ccafce15d4241fb6', '9c9d2a60764bda56'),
    'strategy:sam-discriminative': ('315eff558a2e82c5', '5e861192d2f551d9'),
    'strategy:dals': ('3e30c91bcabb30ec', '5c804486fdadba98'),
    'strategy:dals-fast': ('e8e4eb5502b7974e', '06e531355f1fbd3c'),
    'strategy:dals-acc': ('e4405082d30e0bf4', '324111d644aa65a8'),
    'strategy:adamw-cosine': ('15bb4657cd15b5cc', '7e77d66fb9f2fef5'),
    'strategy:rlrs': ('16d411472eef85bc', '91324a4502f56c18'),
    'strategy:llrd': ('84121bdfebd4f4d2', 'a58cc1cc4dc2e03c'),
    'strategy:freeze-embedding': ('4ca3abd393b48440', '53a0329055a3f610'),
    'strategy:rlrs-embedding': ('3f2c93dd213619aa', 'f45652d214b7f048'),
    'strategy:full-ft': ('ca741c4c6bf4ffe0', '9a10c9621308f7f8'),
    'strategy:lora': ('49286ec5968c4e22', '9003486fb3f95ba9'),
    'strategy:lora-plus': ('c2df48ebbd5daef1', '1fc4807dcbae1e9d'),
    'run_config:tiny-dense': ('541ad096ae52505b', 'b7c65940f0d152a8'),
}

# The same plans' LRs (every component; steps 0 to 999 of 1000; LoRA B or not; width 1, 0.5,
# 0.25; depth 0 and 3), computed on main before the change: the LRs must stay bit for bit.
PINNED_LRS = {
    'default': '73cb53c59aa02345',
    'lora_plus': 'd7bc5aae73375bff',
    'lora_plus_null': '73cb53c59aa02345',
    'width_warmup': 'fa3b4e77ce5f1fdd',
    'width_warmup_m1': '73cb53c59aa02345',
    'width_warmup_iwd': 'cb8ea129bb4db5b3',
    'depth_decay': 'b8343ba8d3405d04',
    'all': '81de63c12f1e6b8a',
}


def _plan_case(name: str):
    kind, key = name.split(":", 1)
    if kind == "legacy":
        return Plan.from_dict(LEGACY[key])
    return presets.get(key)


@pytest.mark.parametrize("name", [k for k in PINNED if k.split(":")[0] in ("legacy", "preset")])
def test_plans_hash_save_and_name_runs_exactly_as_before(name):
    plan = _plan_case(name)
    ident = _config.identity(plan)
    assert (_sorted(ident), _ordered(ident), _ordered(plan.dumps(".toml")), _ordered(plan.dumps(".json"))) == PINNED[name]
    for suffix in (".toml", ".json"):  # what is written loads back equal
        data = json.loads(plan.dumps(suffix)) if suffix == ".json" else __import__("tomllib").loads(plan.dumps(suffix))
        assert Plan.from_dict(data) == plan


@pytest.mark.parametrize("name", [k for k in PINNED if k.startswith("strategy:")])
def test_zoo_strategies_keep_their_identity(name):
    s = strategies.get(name.split(":", 1)[1])
    assert (_sorted(_config.identity(s)), _ordered(_config.identity(s))) == PINNED[name]


def test_a_run_config_with_factors_keeps_its_run_directory():
    cfg = run_config("tiny-dense", "paper-dense", sets={"plan.depth_decay": 0.8, "plan.lora_plus": 2.0})
    assert cfg.plan.factors == (LoraPlus(2.0), DepthDecay(0.8))
    assert (_sorted(_config.identity(cfg)), _ordered(_config.identity(cfg))) == PINNED["run_config:tiny-dense"]
    assert run_dir("r", PresetRun(cfg)).name == "tiny-dense-" + PINNED["run_config:tiny-dense"][0][:12]


@pytest.mark.parametrize("name", list(PINNED_LRS))
def test_old_plans_give_the_same_lrs_bit_for_bit(name):
    plan = Plan.from_dict(LEGACY[name])
    table = [plan.lr(c, s, 1000, lora_b=b, width=w, depth=d) for c in COMPONENTS for s in (0, 5, 10, 37, 500, 999)
             for b in (False, True) for w in (1.0, 0.5, 0.25) for d in (0, 3)]
    assert hashlib.sha256(json.dumps(table).encode()).hexdigest()[:16] == PINNED_LRS[name]


def test_old_keys_load_into_factors_and_new_plans_write_them():
    p = Plan.from_dict({"lora_plus": 16, "width_warmup": "decay-away", "width_warmup_m": 4.0, "depth_decay": 0.8})
    assert p.factors == (LoraPlus(16.0), WidthWarmup("decay-away", 4.0), DepthDecay(0.8))
    built = Plan(factors=(DepthDecay(0.8), WidthWarmup("decay-away", 4.0), LoraPlus(16.0)))  # any order
    assert built == p and hash(built) == hash(p) and built.to_dict() == p.to_dict()
    assert {k: p.to_dict()[k] for k in ("lora_plus", "width_warmup", "width_warmup_m", "depth_decay")} == {
        "lora_plus": 16.0, "width_warmup": "decay-away", "width_warmup_m": 4.0, "depth_decay": 0.8}
    # --set keys keep working on a plan without the factor (its keys are written as absent).
    assert _config.replace(Plan(), {"depth_decay": 0.5}).factors == (DepthDecay(0.5),)
    assert _config.replace(p, {"lora_plus": None}).factor(LoraPlus) is None


@pytest.mark.parametrize("data, message", [
    ({"lora_plsu": 16}, "plan.lora_plsu: unknown key; did you mean 'lora_plus'"),
    ({"depth_decy": 0.8}, "plan.depth_decy: unknown key; did you mean 'depth_decay'"),
    ({"width_warmup": "decay_away"}, "plan.width_warmup: 'decay_away' is unknown; did you mean 'decay-away'"),
    ({"width_warmup_m": 4.0}, "plan.width_warmup_m: 4.0 has no effect without width_warmup; set width_warmup"),
    ({"lora_plus": 0}, "plan.lora_plus: the B-to-A LR ratio, a number > 0"),
    ({"lora_plus": "16"}, "plan.lora_plus: expected a number"),
    ({"depth_decay": -1.0}, "plan.depth_decay: the LR factor per layer from the top"),
    ({"factors": []}, "plan.factors: unknown key"),
])
def test_bad_factor_keys_name_the_key_and_the_fix(data, message):
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(data)


def test_factors_apply_through_the_one_lr_formula():
    plan = presets.get("paper-dense")
    p = plan.with_factor(LoraPlus(16.0)).with_factor(DepthDecay(0.5))
    for comp in COMPONENTS:
        for step in (0, 7, 123, 999):
            base = plan.lr(comp, step, 1000)
            assert p.lr(comp, step, 1000) == base  # a plain tensor at the top: no factor applies
            assert p.lr(comp, step, 1000, lora_b=True, depth=2) == pytest.approx(base * 16.0 * 0.25, rel=1e-15)
    warm = plan.with_factor(WidthWarmup("exponential", 4.0))
    a = 1 - plan.base_lr * plan.weight_decay_of("attention")  # the factor is part of λ_attention(t) itself
    assert warm.multiplier("attention", 50, 1000) == pytest.approx(
        plan.multiplier("attention", 50, 1000) * 4.0 ** -(a ** 50), rel=1e-12)
    assert warm.lr("router", 50, 1000) == plan.lr("router", 50, 1000)  # not a hidden matrix
    assert warm.lr("attention", 50, 1000) < plan.lr("attention", 50, 1000)


def test_a_factor_defined_outside_rlrs_composes_with_no_plan_field():
    @dataclass(frozen=True)
    class RouterBoost(TensorFactor):
        scale: float = 2.0

        def __call__(self, component, step, total_steps, tensor):
            return self.scale if component == "router" else 1.0

    fields = [f.name for f in dataclasses.fields(Plan)]
    plan = presets.get("paper-moe").with_factor(LoraPlus(4.0))
    boosted = plan.with_factor(RouterBoost(3.0))
    assert [f.name for f in dataclasses.fields(Plan)] == fields
    assert boosted.factors == (LoraPlus(4.0), RouterBoost(3.0))  # known ones first, then yours
    assert boosted.lr("router", 400, 1000, lora_b=True) == pytest.approx(3.0 * plan.lr("router", 400, 1000, lora_b=True))
    assert boosted.lr("experts", 400, 1000) == plan.lr("experts", 400, 1000)
    with pytest.raises(ConfigError, match="factors: RouterBoost is not a factor plan files know.*rlrs.factors.KNOWN"):
        boosted.to_dict()
    assert RouterBoost not in KNOWN


def test_factors_are_checked():
    with pytest.raises(ConfigError, match="factors: two DepthDecay factors; keep one"):
        Plan(factors=(DepthDecay(0.5), DepthDecay(0.8)))
    with pytest.raises(ConfigError, match="factors: 0.8 is not a plan factor"):
        Plan(factors=(0.8,))
    with pytest.raises(ConfigError, match="width_warmup: its recovery runs at the weight decay's pace"):
        Plan(weight_decay=0.0, factors=(WidthWarmup("decay-away", 2.0),))
    assert TensorContext() == TensorContext(lora_b=False, depth=0)

    @dataclass  # not frozen: a plan holding it could not be hashed or cached
    class Loose(TensorFactor):
        def __call__(self, component, step, total_steps, tensor):
            return 1.0

    with pytest.raises(ConfigError, match="factors: Loose is not hashable; make it a frozen dataclass"):
        Plan(factors=(Loose(),))


def test_a_schedule_factor_of_your_own_scales_the_components_lambda():
    @dataclass(frozen=True)
    class RouterCooldown(ScheduleFactor):  # the router's λ halves for the last half of training
        def schedule(self, plan, component, total_steps):
            return Join((Constant(1.0), Constant(0.5 if component == "router" else 1.0)), (total_steps // 2,))

    plan = presets.get("paper-moe")
    cool = plan.with_factor(RouterCooldown())
    assert cool.multiplier("router", 400, 1000) == plan.multiplier("router", 400, 1000)
    assert cool.multiplier("router", 600, 1000) == 0.5 * plan.multiplier("router", 600, 1000)
    assert cool.lr("router", 600, 1000, lora_b=True, depth=3) == 0.5 * plan.lr("router", 600, 1000)
    assert cool.lr("experts", 600, 1000) == plan.lr("experts", 600, 1000)
