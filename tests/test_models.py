"""Tests for rlrs.models: shapes, parameter counts, routing, init, causality, configs."""

from __future__ import annotations

import dataclasses
import doctest
import math
import re

import pytest
import torch

import rlrs.models as models
from rlrs.models import (
    PAPER_BATCH_SIZE,
    SIZES,
    ModelConfig,
    Transformer,
    build_model,
    count_params,
    expert_capacity,
    get_size,
)

TINY_DENSE = get_size("tiny-dense")
TINY_MOE = get_size("tiny-moe")


def _model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return build_model(cfg)


def _tokens(cfg: ModelConfig, b: int = 2, t: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (b, t or cfg.seq_len), generator=g)


# --- shapes and outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY_DENSE, TINY_MOE], ids=["dense", "moe"])
def test_output_shapes(cfg):
    model = _model(cfg)
    idx = _tokens(cfg, b=3, t=17)
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 17, cfg.vocab_size)
    assert out.loss.shape == () and out.aux_loss.shape == ()
    # Cross-entropy of a fresh small-init model sits near log(V).
    assert abs(out.loss.item() - math.log(cfg.vocab_size)) < 0.5
    assert model(idx).loss is None


def test_too_long_input_raises():
    model = _model(TINY_DENSE)
    with pytest.raises(ValueError, match="seq_len"):
        model(_tokens(TINY_DENSE, t=TINY_DENSE.seq_len + 1))


def test_moe_top2_runs_and_counts():
    cfg = dataclasses.replace(TINY_MOE, top_k=2, d_ff=48)
    model = _model(cfg)
    out = model(_tokens(cfg), targets=_tokens(cfg))
    assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss)
    assert count_params(model) == count_params(cfg)
    assert torch.allclose(out.stats["expert_load"].sum(), torch.tensor(1.0))


def test_bf16_model_runs():
    model = _model(TINY_MOE).to(torch.bfloat16)
    out = model(_tokens(TINY_MOE), targets=_tokens(TINY_MOE))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_attention_and_router_stay_float32_under_autocast():
    model = _model(TINY_MOE)
    x = torch.randn(2, 16, TINY_MOE.d_model)
    block = model.blocks[0]
    cos, sin = models._rope_tables(TINY_MOE, 16, x.device)
    ref_attn = block.attn(x, cos, sin)
    ref_moe = block.moe(x)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = block.attn(x, cos, sin)
        moe = block.moe(x)[1]
        buffer = torch.randn(TINY_MOE.n_experts, 3, TINY_MOE.d_model)
        assert block.moe.experts(buffer).dtype == torch.bfloat16  # experts do use autocast
    assert attn.dtype == torch.float32 and torch.equal(attn, ref_attn)
    assert torch.equal(moe["z_loss"], ref_moe["z_loss"])
    assert torch.equal(moe["balance_loss"], ref_moe["balance_loss"])


# --- parameter counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        TINY_DENSE,
        TINY_MOE,
        dataclasses.replace(TINY_DENSE, tie_embeddings=True),
        dataclasses.replace(TINY_MOE, tie_embeddings=True, top_k=2, d_ff=40),
    ],
    ids=["dense", "moe", "dense-tied", "moe-tied-top2"],
)
def test_analytic_counts_equal_real_counts(cfg):
    model = _model(cfg)
    real = sum(p.numel() for p in model.parameters())
    counts = count_params(cfg)
    assert counts == count_params(model)
    assert counts["total"] == real
    if not cfg.is_moe:
        assert counts["active"] == counts["total"]
    if cfg.tie_embeddings:
        assert model.unembed.weight is model.embed.weight
        assert counts["total"] - counts["total_non_embedding"] == cfg.vocab_size * cfg.d_model


# Table 3 of the paper reports non-embedding counts: "active" and "total" parameters.
TABLE_3 = {
    "dense-34m": (33.6e6, 33.6e6),
    "moe-34m": (33.6e6, 210e6),
    "dense-113m": (113e6, 113e6),
    "moe-113m": (113e6, 708e6),
    "dense-906m": (906e6, 906e6),
    "moe-906m": (906e6, 5.67e9),
}


@pytest.mark.parametrize("name", sorted(TABLE_3))
def test_paper_presets_match_table_3(name):
    active, total = TABLE_3[name]
    counts = count_params(get_size(name))
    assert counts["active_non_embedding"] == pytest.approx(active, rel=0.01)
    assert counts["total_non_embedding"] == pytest.approx(total, rel=0.01)


def test_paper_preset_shapes():
    for name, (d, layers, seq, bs) in {
        "moe-34m": (512, 8, 512, 256),
        "dense-113m": (768, 12, 512, 256),
        "moe-906m": (1536, 24, 1024, 384),
    }.items():
        cfg = get_size(name)
        assert (cfg.d_model, cfg.n_layers, cfg.seq_len) == (d, layers, seq)
        assert cfg.n_heads == d // 64 and cfg.vocab_size == 50257
        assert cfg.n_experts == (8 if name.startswith("moe") else 0) and cfg.top_k == 1
        assert PAPER_BATCH_SIZE[name] == bs
    assert set(PAPER_BATCH_SIZE) <= set(SIZES)


def test_small_presets_are_micro_at_4x_the_non_embedding_params():
    # The CPU transfer benchmark relies on this ratio ("at least 4x larger").
    for kind in ("dense", "moe"):
        micro, small = get_size(f"micro-{kind}"), get_size(f"small-{kind}")
        ratio = count_params(small)["active_non_embedding"] / count_params(micro)["active_non_embedding"]
        assert 3.98 < ratio < 4.01
        assert small.d_model // small.n_heads == micro.d_model // micro.n_heads
        assert (small.n_layers, small.seq_len, small.n_experts) == (micro.n_layers, micro.seq_len, micro.n_experts)


def test_the_ladder_spans_8x_and_its_embeddings_do_not_dwarf_it():
    # The compute-optimal ladder: 3+ rungs spanning >= 8x in active non-embedding params, at 20 tokens per param,
    # the embedding no larger than the non-embedding part (paper's 34M: 0.75x per matrix).
    from rlrs.models import LADDER
    from rlrs.train import run_config, total_steps

    for kind, rungs in LADDER.items():
        assert len(rungs) >= 3
        counts = [count_params(get_size(r)) for r in rungs]
        active = [c["active_non_embedding"] for c in counts]
        assert active == sorted(active) and active[-1] / active[0] >= 8.0
        for name, c in zip(rungs, counts):
            cfg = run_config(name)
            assert cfg.model.is_moe == (kind == "moe") and cfg.data.tokenizer == "bpe-1024"
            assert cfg.model.vocab_size == 1024 and cfg.train.steps is None and cfg.train.tokens_per_param == 20
            per_matrix = cfg.model.vocab_size * cfg.model.d_model
            assert per_matrix <= 1.0 * c["active_non_embedding"]
            tokens = total_steps(cfg) * cfg.train.batch_size * cfg.model.seq_len
            assert 20 * c["active_non_embedding"] <= tokens < 20 * c["active_non_embedding"] + cfg.train.batch_size * cfg.model.seq_len
    dense, moe = (count_params(get_size(r))["active_non_embedding"] for r in ("ladder-m-dense", "ladder-m-moe"))
    assert moe - dense == 5 * 8 * 64  # the same active parameters but the routers (5 layers x 8 experts x d)


def test_dense_active_non_embedding_is_16_d_squared_per_layer():
    cfg = get_size("dense-34m")
    norms = (2 * cfg.n_layers + 1) * cfg.d_model
    assert count_params(cfg)["active_non_embedding"] == 16 * cfg.d_model**2 * cfg.n_layers + norms


# --- aux losses and gradients --------------------------------------------------------------------


def test_moe_aux_losses_finite_and_positive():
    out = _model(TINY_MOE)(_tokens(TINY_MOE), targets=_tokens(TINY_MOE))
    s = out.stats
    assert set(s) >= {"z_loss", "balance_loss", "expert_load", "dropped_tokens"}
    assert all(not v.requires_grad for v in s.values())
    assert s["z_loss"] > 0 and s["balance_loss"] > 0
    assert torch.allclose(out.aux_loss, s["z_loss"] + s["balance_loss"])
    assert s["expert_load"].shape == (TINY_MOE.n_experts,)
    assert torch.allclose(s["expert_load"].sum(), torch.tensor(1.0))
    # Balanced routing gives balance_loss = weight per layer; it can only be >= that.
    assert s["balance_loss"] >= TINY_MOE.balance_loss_weight * TINY_MOE.n_layers * 0.99


def test_dense_aux_loss_is_zero():
    out = _model(TINY_DENSE)(_tokens(TINY_DENSE), targets=_tokens(TINY_DENSE))
    assert out.aux_loss.item() == 0.0 and out.stats == {}


def test_aux_loss_formulas_on_one_layer():
    cfg = dataclasses.replace(TINY_MOE, n_layers=1)
    model = _model(cfg)
    x = torch.randn(2, 8, cfg.d_model)
    _, aux = model.blocks[0].moe(x)
    logits = x.reshape(-1, cfg.d_model) @ model.blocks[0].moe.router.weight.t()
    probs = logits.softmax(-1)
    f = torch.bincount(probs.argmax(-1), minlength=cfg.n_experts).float() / 16
    z = cfg.z_loss_weight * (logits.logsumexp(-1) ** 2).mean()
    bal = cfg.balance_loss_weight * cfg.n_experts * (f * probs.mean(0)).sum()
    assert torch.allclose(aux["z_loss"], z) and torch.allclose(aux["balance_loss"], bal)


def test_gradients_reach_router_and_used_experts():
    cfg = dataclasses.replace(TINY_MOE, capacity_factor=None)
    model = _model(cfg)
    out = model(_tokens(cfg, b=4), targets=_tokens(cfg, b=4, seed=2))
    (out.loss + out.aux_loss).backward()
    for block in model.blocks:
        moe = block.moe
        assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    # Every expert of the first layer receives tokens at init with 128 tokens and 4 experts.
    experts = model.blocks[0].moe.experts
    for w in (experts.w_gate, experts.w_up, experts.w_down):
        per_expert = w.grad.abs().flatten(1).sum(1)
        assert (per_expert > 0).all(), per_expert


# --- capacity and dropping -----------------------------------------------------------------------


def _forced_to_expert_0(cfg: ModelConfig):
    """An MoE layer whose router sends every (positive) input to expert 0."""
    torch.manual_seed(0)
    moe = models.MoE(cfg)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0
    x = torch.rand(2, 16, cfg.d_model) + 0.1
    return moe, x


def test_dropped_tokens_match_capacity_with_forced_routing():
    cfg = dataclasses.replace(TINY_MOE, capacity_factor=0.25)
    moe, x = _forced_to_expert_0(cfg)
    n = x.shape[0] * x.shape[1]
    cap = expert_capacity(cfg, n)
    assert cap == math.ceil(0.25 * n / cfg.n_experts) == 2
    y, aux = moe(x)
    assert aux["dropped_tokens"].item() == n - cap
    assert aux["expert_load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # The first `cap` tokens in batch order are kept; the rest get exactly zero output.
    flat = y.reshape(n, -1)
    assert (flat[:cap].abs().sum(-1) > 0).all()
    assert (flat[cap:] == 0).all()


def test_small_capacity_drops_tokens_in_full_model():
    cfg = dataclasses.replace(TINY_MOE, capacity_factor=0.25)
    out = _model(cfg)(_tokens(cfg))
    # Capacity is n/16 per expert, so at least 3/4 of the slots are dropped in every layer.
    n = 2 * cfg.seq_len
    assert out.stats["dropped_tokens"].item() >= cfg.n_layers * (n - 4 * expert_capacity(cfg, n))


def test_no_capacity_drops_nothing():
    cfg = dataclasses.replace(TINY_MOE, capacity_factor=None)
    moe, x = _forced_to_expert_0(cfg)
    assert moe(x)[1]["dropped_tokens"].item() == 0
    assert _model(cfg)(_tokens(cfg)).stats["dropped_tokens"].item() == 0


def test_one_expert_equals_dense_swiglu():
    dense = _model(TINY_DENSE)
    moe_cfg = dataclasses.replace(TINY_DENSE, n_experts=1, capacity_factor=None)
    moe = _model(moe_cfg, seed=1)
    state = {}
    for name, p in dense.state_dict().items():
        if ".mlp." not in name:
            state[name] = p
            continue
        prefix, kind = name.split(".mlp.")
        w = p.t().unsqueeze(0)  # Linear [out, in] -> expert [1, in, out]
        state[f"{prefix}.moe.experts.w_{kind.split('.')[0]}"] = w
    for i, block in enumerate(moe.blocks):
        state[f"blocks.{i}.moe.router.weight"] = block.moe.router.weight.detach()
    moe.load_state_dict(state)
    idx = _tokens(TINY_DENSE)
    a, b = dense(idx, targets=idx), moe(idx, targets=idx)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss)


# --- causality, init, determinism ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, batch",
    [
        (TINY_DENSE, 2),
        (dataclasses.replace(TINY_MOE, capacity_factor=None), 2),
        # With a capacity, drops are decided in batch order, so within one sequence a token's
        # fate depends only on earlier tokens.
        (dataclasses.replace(TINY_MOE, capacity_factor=0.5), 1),
    ],
    ids=["dense", "moe-no-capacity", "moe-dropping"],
)
def test_causal(cfg, batch):
    model = _model(cfg)
    idx = _tokens(cfg, b=batch)
    t = 10
    changed = idx.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % cfg.vocab_size
    a, b = model(idx).logits, model(changed).logits
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.equal(a[:, t + 1], b[:, t + 1])


def test_init_std_follows_scale_over_fan_in():
    cfg = dataclasses.replace(TINY_MOE, init_scale=0.3)
    model = _model(cfg)
    # trunc_normal_ at ±2 std keeps an empirical std of 0.8796 * std.
    shrink = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))
    checked = 0
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        # The input dim: Linear [out, in], Embedding [V, d_model], experts [E, in, out].
        fan_in = p.shape[1]
        if name.endswith(("w_down", "down.weight")):
            assert fan_in == cfg.ff_dim
        std = math.sqrt(cfg.init_scale / fan_in)
        # The sample std of n draws is within a few 1/sqrt(2n) of the true one.
        rel = 0.01 + 4 / math.sqrt(2 * p.numel())
        assert p.std().item() == pytest.approx(shrink * std, rel=rel), name
        assert p.abs().max().item() <= 2 * std + 1e-7, name
        assert abs(p.mean().item()) < 5 * std / math.sqrt(p.numel()), name
        checked += 1
    assert checked == 2 + cfg.n_layers * 6  # embed, unembed; qkv, proj, router, 3 expert


def test_same_seed_same_model_and_output():
    idx = _tokens(TINY_MOE)
    a, b = _model(TINY_MOE, seed=3), _model(TINY_MOE, seed=3)
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    out_a, out_b = a(idx, targets=idx), b(idx, targets=idx)
    assert torch.equal(out_a.logits, out_b.logits) and torch.equal(out_a.aux_loss, out_b.aux_loss)
    assert torch.equal(a(idx).logits, out_a.logits)
    assert not torch.equal(_model(TINY_MOE, seed=4)(idx).logits, out_a.logits)


# --- configs and presets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"d_model": 100, "n_heads": 3}, "n_heads"),
        ({"d_model": 24, "n_heads": 8}, "n_heads"),  # head_dim 3 is odd: RoPE needs pairs
        ({"n_experts": 4, "top_k": 5}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"seq_len": -1}, "seq_len"),
        ({"n_layers": True}, "n_layers"),
        ({"d_ff": 0}, "d_ff"),
        ({"n_experts": -1}, "n_experts"),
        ({"capacity_factor": 0.0}, "capacity_factor"),
        ({"init_scale": -0.1}, "init_scale"),
        ({"z_loss_weight": float("nan")}, "z_loss_weight"),
        ({"balance_loss_weight": -1.0}, "balance_loss_weight"),
        ({"rope_base": 0.0}, "rope_base"),
    ],
)
def test_bad_config_raises_naming_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert str(err.value).startswith(f"{field}:")


def test_config_is_frozen_with_paper_defaults():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]
    assert (cfg.init_scale, cfg.z_loss_weight, cfg.balance_loss_weight) == (0.15, 0.001, 0.01)
    assert cfg.ff_dim == 4 * cfg.d_model and not cfg.is_moe


def test_unknown_preset_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'tiny-dense'"):
        get_size("tiny-dens")
    assert all(isinstance(get_size(name), ModelConfig) for name in SIZES)


def test_count_params_rejects_other_types():
    with pytest.raises(TypeError):
        count_params(torch.nn.Linear(2, 2))


# --- parameter names classify into components ----------------------------------------------------

COMPONENT_PATTERNS = [
    ("unembedding", r"(^|\.)unembed\."),
    ("embedding", r"(^|\.)embed\."),
    ("router", r"(^|\.)router\."),
    ("experts", r"(^|\.)experts\."),
    ("attention", r"(^|\.)attn\."),
    ("feedforward", r"(^|\.)mlp\."),
    ("other", r"norm"),
]


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (TINY_DENSE, {"unembedding", "embedding", "attention", "feedforward", "other"}),
        (TINY_MOE, {"unembedding", "embedding", "router", "experts", "attention", "other"}),
        (dataclasses.replace(TINY_MOE, tie_embeddings=True),
         {"embedding", "router", "experts", "attention", "other"}),
    ],
    ids=["dense", "moe", "moe-tied"],
)
def test_every_parameter_name_matches_exactly_one_component(cfg, expected):
    seen = set()
    for name, _ in _model(cfg).named_parameters():
        hits = [comp for comp, pat in COMPONENT_PATTERNS if re.search(pat, name)]
        assert len(hits) == 1, (name, hits)
        seen.add(hits[0])
    assert seen == expected


def test_docstring_examples():
    result = doctest.testmod(models, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_experts_built_on_their_own_hold_numbers_and_leave_the_generator_as_it_was():
    # torch.empty left the expert weights as whatever memory held (NaN at times) for an MoE built
    # outside build_model; their own draws must not shift the model's initialization either.
    before = torch.random.get_rng_state()
    e = models.Experts(4, 8, 16)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.isfinite(w).all() and w.abs().sum() > 0 for w in (e.w_gate, e.w_up, e.w_down))
