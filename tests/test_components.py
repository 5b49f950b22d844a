"""Tests for rlrs.components: every trainable parameter gets exactly one, correct component.

Expectations for the Hugging Face models are computed from module *types and object identity*
(which class owns the parameter, is it the output embedding, is it the MoE block's ``.gate``),
never from the name regexes under test, so a wrong rule cannot agree with itself.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlrs.config import ConfigError
from rlrs.components import (
    COMPONENTS,
    RULE_SETS,
    ClassificationError,
    RuleSet,
    classify,
    pick_rule_set,
    tied_parameters,
)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]


def module_from_names(names, model_type=None) -> nn.Module:
    """A bare module tree holding one tiny parameter at each dotted name."""
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                mod.add_module(part, nn.Module())
            mod = mod._modules[part]
        mod.register_parameter(leaf, nn.Parameter(torch.zeros(1)))
    if model_type is not None:
        root.config = SimpleNamespace(model_type=model_type)
    return root


def check_table(model: nn.Module, expected: dict[str, str]) -> None:
    got = classify(model)
    assert got == expected
    assert set(got.values()) <= set(COMPONENTS)


# --- Hugging Face models -------------------------------------------------------------------

def hf():
    """transformers, or skip: only the Hugging Face tests need it."""
    return pytest.importorskip("transformers")


TINY = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def tiny_hf(kind: str, **overrides) -> nn.Module:
    transformers = hf()
    configs = {
        "gpt2": lambda: transformers.GPT2Config(
            vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=0, eos_token_id=0,
        ),
        "llama": lambda: transformers.LlamaConfig(**TINY),
        "mistral": lambda: transformers.MistralConfig(**TINY),
        "qwen2": lambda: transformers.Qwen2Config(**TINY),
        "mixtral": lambda: transformers.MixtralConfig(
            **TINY, num_local_experts=4, num_experts_per_tok=2
        ),
        "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
            **TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=64,
        ),
    }
    config = configs[kind]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.AutoModelForCausalLM.from_config(config)


def expected_by_type(model: nn.Module, head: nn.Module | None) -> dict[str, str]:
    """The component of each trainable parameter, judged by the modules that own it."""
    out = {}
    for name in trainable_names(model):
        chain = [model]
        for part in name.split(".")[:-1]:
            chain.append(getattr(chain[-1], part))
        owner = chain[-1]
        out[name] = _component_of(chain, owner, head, name)
    return out


def _component_of(chain, owner, head, name) -> str:
    if head is not None and owner is head:
        return "unembedding"
    if isinstance(owner, nn.Embedding):  # token and position embeddings
        return "embedding"
    for parent, child in zip(chain, chain[1:]):
        if type(parent).__name__.endswith("SparseMoeBlock"):
            if child is parent.gate or child is getattr(parent, "shared_expert_gate", None):
                return "router"
            if child is parent.experts:
                return "experts"
            if child is getattr(parent, "shared_expert", None):
                return "feedforward"  # dense, always on
    for mod in chain:
        if type(mod).__name__.endswith("Attention"):
            return "attention"
        if type(mod).__name__.endswith("MLP"):
            return "feedforward"
    if isinstance(owner, nn.LayerNorm) or type(owner).__name__.endswith("Norm"):
        return "other"
    raise AssertionError(f"the test does not know what {name} ({type(owner).__name__}) is")


@pytest.mark.parametrize(
    "kind, overrides, must_have",
    [
        ("gpt2", {}, {"embedding", "unembedding", "attention", "feedforward", "other"}),
        ("gpt2", {"add_cross_attention": True}, {"attention", "other"}),
        ("llama", {}, {"embedding", "unembedding", "attention", "feedforward", "other"}),
        ("llama", {"attention_bias": True, "mlp_bias": True}, {"attention", "feedforward"}),
        ("mistral", {}, {"embedding", "unembedding", "attention", "feedforward", "other"}),
        ("qwen2", {}, {"embedding", "unembedding", "attention", "feedforward", "other"}),
        ("mixtral", {}, {"embedding", "unembedding", "attention", "router", "experts", "other"}),
        (
            "qwen2_moe",
            {},
            {"embedding", "unembedding", "attention", "router", "experts", "feedforward", "other"},
        ),
        # Layer 1 is a plain dense MLP: its mlp.gate_proj must not be taken for the router.
        ("qwen2_moe", {"mlp_only_layers": [1]}, {"router", "experts", "feedforward"}),
    ],
)
def test_hf_every_parameter_matches_its_module_type(kind, overrides, must_have):
    model = tiny_hf(kind, **overrides)
    head = model.get_output_embeddings()
    got = classify(model, tied=None)  # each alias by its own module's type
    names = trainable_names(model)
    assert sorted(got) == sorted(names)  # every trainable parameter exactly once
    assert len(names) == len(set(names))
    assert got == expected_by_type(model, head)
    assert must_have <= set(got.values())
    assert pick_rule_set(model).name == kind


def test_hf_moe_layers_have_router_and_experts():
    # The failure message shows layer 0's MoE names, so a transformers rename is easy to see.
    for kind in ("mixtral", "qwen2_moe"):
        got = classify(tiny_hf(kind))
        layer0 = {n: c for n, c in got.items() if ".layers.0.mlp" in n or "block_sparse_moe" in n}
        assert {"router", "experts"} <= set(layer0.values()), layer0


def test_gpt2_base_model_without_head():
    model = hf().GPT2Model(tiny_hf("gpt2").config)
    got = classify(model)
    assert got["wte.weight"] == got["wpe.weight"] == "embedding"
    assert got == expected_by_type(model, None)
    assert "unembedding" not in got.values()


def test_gpt2_tied_head_is_reported_and_both_aliases_classified():
    model = tiny_hf("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert tied_parameters(model) == [("lm_head.weight", "transformer.wte.weight")]
    got = classify(model, tied=None)  # each alias by its own module
    assert got["transformer.wte.weight"] == "embedding"
    assert got["lm_head.weight"] == "unembedding"
    # By default classify says what param_groups trains the shared tensor as (one answer, everywhere).
    from rlrs.components import DEFAULT_TIED
    from rlrs.optim import assign_components

    default = classify(model)
    assert default["transformer.wte.weight"] == default["lm_head.weight"] == DEFAULT_TIED
    assert assign_components(model, "paper-dense")["transformer.wte.weight"] == DEFAULT_TIED
    assert classify(model, tied="embedding")["lm_head.weight"] == "embedding"


def test_llama_untied_has_no_ties_and_tied_has_one():
    assert tied_parameters(tiny_hf("llama", tie_word_embeddings=False)) == []
    tied = tiny_hf("llama", tie_word_embeddings=True)
    assert tied_parameters(tied) == [("lm_head.weight", "model.embed_tokens.weight")]


def test_transformers_4x_moe_names_classify():
    # Per-expert Linears and "block_sparse_moe" from transformers 4.x.
    mixtral = {
        "model.embed_tokens.weight": "embedding",
        "model.layers.0.self_attn.q_proj.weight": "attention",
        "model.layers.0.self_attn.o_proj.weight": "attention",
        "model.layers.0.block_sparse_moe.gate.weight": "router",
        "model.layers.0.block_sparse_moe.experts.0.w1.weight": "experts",
        "model.layers.0.block_sparse_moe.experts.0.w2.weight": "experts",
        "model.layers.0.block_sparse_moe.experts.3.w3.weight": "experts",
        "model.layers.0.input_layernorm.weight": "other",
        "model.layers.0.post_attention_layernorm.weight": "other",
        "model.norm.weight": "other",
        "lm_head.weight": "unembedding",
    }
    check_table(module_from_names(mixtral, "mixtral"), mixtral)
    qwen2_moe = {
        "model.embed_tokens.weight": "embedding",
        "model.layers.0.self_attn.q_proj.bias": "attention",
        "model.layers.0.mlp.gate.weight": "router",
        "model.layers.0.mlp.experts.0.gate_proj.weight": "experts",
        "model.layers.0.mlp.experts.1.down_proj.weight": "experts",
        "model.layers.0.mlp.shared_expert.gate_proj.weight": "feedforward",
        "model.layers.0.mlp.shared_expert.down_proj.weight": "feedforward",
        "model.layers.0.mlp.shared_expert_gate.weight": "router",
        "model.layers.1.mlp.gate_proj.weight": "feedforward",
        "model.layers.0.input_layernorm.weight": "other",
        "model.norm.weight": "other",
        "lm_head.weight": "unembedding",
    }
    check_table(module_from_names(qwen2_moe, "qwen2_moe"), qwen2_moe)


def test_transformers_5x_fused_moe_names_classify():
    # Experts fused into 3-D parameters directly on the experts module (no ".weight").
    mixtral = {
        "model.layers.0.mlp.gate.weight": "router",
        "model.layers.0.mlp.experts.gate_up_proj": "experts",
        "model.layers.0.mlp.experts.down_proj": "experts",
        "model.layers.0.self_attn.k_proj.weight": "attention",
    }
    check_table(module_from_names(mixtral, "mixtral"), mixtral)


def test_a_parameter_structure_cannot_place_is_named_not_guessed():
    model = module_from_names({"model.layers.0.mlp.gate.weight": "router"}, "mixtral")
    model.model.add_module("mystery", nn.Linear(4, 4))  # a matrix outside any layer, of no known kind
    with pytest.raises(ClassificationError, match=r"could not be placed[\s\S]*model\.mystery\.weight"):
        classify(model)


def test_wrapper_prefixes_do_not_matter():
    # PEFT-style prefix and LoRA adapters inside attention still classify.
    table = {
        "base_model.model.model.embed_tokens.weight": "embedding",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": "attention",
        "base_model.model.model.layers.0.mlp.up_proj.weight": "feedforward",
        "base_model.model.model.layers.0.input_layernorm.weight": "other",
        "base_model.model.lm_head.weight": "unembedding",
    }
    check_table(module_from_names(table, "llama"), table)


# --- nanoGPT -------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    def __init__(self, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None


class CausalSelfAttention(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.c_attn = nn.Linear(n, 3 * n)
        self.c_proj = nn.Linear(n, n)


class MLP(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.c_fc = nn.Linear(n, 4 * n)
        self.c_proj = nn.Linear(4 * n, n)


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.ln_1 = LayerNorm(n)
        self.attn = CausalSelfAttention(n)
        self.ln_2 = LayerNorm(n)
        self.mlp = MLP(n)


class NanoGPT(nn.Module):
    """nanoGPT's GPT layout: tied head, plain dataclass-like config without model_type."""

    def __init__(self, vocab=64, n=16, layers=2, block_size=32):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, n_embd=n, block_size=block_size)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, n),
                wpe=nn.Embedding(block_size, n),
                h=nn.ModuleList(Block(n) for _ in range(layers)),
                ln_f=LayerNorm(n),
            )
        )
        self.lm_head = nn.Linear(n, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight


def test_nanogpt():
    model = NanoGPT()
    got = classify(model, tied=None)
    assert pick_rule_set(model).name == "nanogpt"
    assert sorted(got) == sorted(trainable_names(model))
    assert got == expected_by_type(model, model.lm_head)
    assert got["transformer.h.1.attn.c_attn.bias"] == "attention"
    assert got["transformer.h.1.mlp.c_proj.bias"] == "feedforward"
    assert got["transformer.h.0.ln_2.bias"] == "other"
    assert got["transformer.wpe.weight"] == "embedding"
    assert tied_parameters(model) == [("lm_head.weight", "transformer.wte.weight")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own, on import
def test_torch_compile_wrapper_is_seen_through():
    model = NanoGPT()
    compiled = torch.compile(model)
    got = classify(compiled)
    assert pick_rule_set(compiled).name == "nanogpt"
    assert got == {f"_orig_mod.{k}": v for k, v in classify(model).items()}


# --- rlrs-style names ----------------------------------------------------------------------


class ToyMoE(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.router = nn.Linear(n, 4, bias=False)
        self.experts = nn.Module()
        self.experts.w_up = nn.Parameter(torch.zeros(4, n, 2 * n))
        self.experts.w_down = nn.Parameter(torch.zeros(4, 2 * n, n))


class ToyBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.attn_norm = nn.LayerNorm(n)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(n, 3 * n)
        self.attn.out = nn.Linear(n, n)
        self.mlp_norm = nn.LayerNorm(n)
        self.mlp = nn.Module()
        self.mlp.up = nn.Linear(n, 2 * n)
        self.mlp.down = nn.Linear(2 * n, n)
        self.moe = ToyMoE(n)


class ToyRlrs(nn.Module):
    def __init__(self, n=8, vocab=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, n)
        self.pos_embed = nn.Embedding(16, n)
        self.blocks = nn.ModuleList(ToyBlock(n) for _ in range(2))
        self.norm = nn.LayerNorm(n)
        self.unembed = nn.Linear(n, vocab, bias=False)


def test_rlrs_style_names():
    model = ToyRlrs()
    got = classify(model)
    assert pick_rule_set(model).name == "rlrs"
    expected = {
        "embed.weight": "embedding",
        "pos_embed.weight": "embedding",
        "norm.weight": "other",
        "norm.bias": "other",
        "unembed.weight": "unembedding",
    }
    for i in range(2):
        b = f"blocks.{i}."
        expected.update(
            {
                b + "attn_norm.weight": "other",
                b + "attn_norm.bias": "other",
                b + "attn.qkv.weight": "attention",
                b + "attn.qkv.bias": "attention",
                b + "attn.out.weight": "attention",
                b + "attn.out.bias": "attention",
                b + "mlp_norm.weight": "other",  # "mlp_norm" is not "mlp"
                b + "mlp_norm.bias": "other",
                b + "mlp.up.weight": "feedforward",
                b + "mlp.up.bias": "feedforward",
                b + "mlp.down.weight": "feedforward",
                b + "mlp.down.bias": "feedforward",
                b + "moe.router.weight": "router",
                b + "moe.experts.w_up": "experts",
                b + "moe.experts.w_down": "experts",
            }
        )
    assert got == expected
    assert tied_parameters(model) == []


def test_rlrs_tied_unembedding():
    model = ToyRlrs()
    model.unembed.weight = model.embed.weight
    got = classify(model, tied=None)
    assert got["unembed.weight"] == "unembedding" and got["embed.weight"] == "embedding"
    assert tied_parameters(model) == [("embed.weight", "unembed.weight")]


# --- Errors, user rules, frozen parameters -------------------------------------------------


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.out = nn.Linear(4, 10)


def test_projections_beside_a_stack_of_layers_are_its_stem_and_head():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    encoder = nn.Module()  # a speech encoder: features -> input_linear -> layers -> out (CTC logits)
    encoder.input_linear = nn.Linear(5, 8)
    encoder.layers = nn.ModuleList([layer])
    encoder.out = nn.Linear(8, 12)
    comp = classify(nn.ModuleDict({"encoder": encoder}))
    assert comp["encoder.input_linear.weight"] == comp["encoder.input_linear.bias"] == "embedding"
    assert comp["encoder.out.weight"] == comp["encoder.out.bias"] == "unembedding"
    assert comp["encoder.layers.0.linear1.weight"] == "feedforward"


def test_what_structure_cannot_place_is_listed_with_how_to_pass_rules():
    with pytest.raises(ClassificationError) as info:
        classify(Unknown())
    msg = str(info.value)
    listed = msg.split("\n", 1)[1].split("Pass rules")[0]
    assert "tok.weight" not in listed  # an nn.Embedding is an embedding, whatever its name
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "out.weight", "out.bias"):
        assert name in listed  # bare Linear layers outside any Transformer layer: no guess
    assert "rules=[" in msg and "rlrs.classify(model" in msg
    for component in COMPONENTS:
        assert component in msg
    assert pick_rule_set(Unknown()) is None


def test_unknown_model_with_partial_user_rules_lists_the_rest():
    with pytest.raises(ClassificationError) as info:
        classify(Unknown(), rules=[(r"^tok\.", "embedding")])
    msg = str(info.value)
    assert "tok.weight" not in msg.split("\n", 1)[1].split("Pass rules")[0]
    for name in ("layers.0.weight", "layers.1.bias", "out.weight", "out.bias"):
        assert name in msg


def test_user_rules_alone_can_classify_an_unknown_model():
    rules = [(r"^tok\.", "embedding"), (r"^layers\.", "feedforward"), (r"^out\.", "unembedding")]
    got = classify(Unknown(), rules=rules)
    assert got == {
        "tok.weight": "embedding",
        "layers.0.weight": "feedforward",
        "layers.0.bias": "feedforward",
        "layers.1.weight": "feedforward",
        "layers.1.bias": "feedforward",
        "out.weight": "unembedding",
        "out.bias": "unembedding",
    }


def test_many_unmatched_names_are_folded_politely():
    model = nn.Module()
    model.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(30))
    with pytest.raises(ClassificationError) as info:
        classify(model)
    msg = str(info.value)
    assert "layers.*.weight  (30 names)" in msg and "layers.*.bias  (30 names)" in msg
    assert len(msg.splitlines()) < 20


def test_user_rules_take_precedence_over_builtins():
    model = ToyRlrs()
    got = classify(model, rules=[(r"\.moe\.router\.", "experts"), (r"^norm\.", "unembedding")])
    assert got["blocks.0.moe.router.weight"] == "experts"
    assert got["norm.weight"] == got["norm.bias"] == "unembedding"
    assert got["blocks.0.attn_norm.weight"] == "other"  # built-ins still cover the rest
    # Earlier user rules beat later ones too.
    got = classify(model, rules=[(r"attn", "feedforward"), (r"attn\.", "attention")])
    assert got["blocks.0.attn.qkv.weight"] == "feedforward"


def test_a_user_rule_that_matches_nothing_is_fine_unless_strict():
    rules = [(r"^embed\.", "embedding"), (r"\.my_blokc\.", "feedforward")]  # a list reused across models
    assert classify(ToyRlrs(), rules=rules) == classify(ToyRlrs())
    with pytest.raises(ClassificationError) as info:
        classify(ToyRlrs(), rules=rules, strict=True)
    assert r'(r"\.my_blokc\.", "feedforward") matches no parameter' in str(info.value)


def test_bad_component_suggests_the_closest():
    with pytest.raises(ClassificationError, match=r"did you mean 'attention'"):
        classify(ToyRlrs(), rules=[(r"\.attn\.", "atention")])
    with pytest.raises(ClassificationError, match=r"did you mean 'feedforward'"):
        classify(ToyRlrs(), rules=[(r"\.mlp\.", "mlp")])
    with pytest.raises(ClassificationError, match=r"did you mean 'experts'"):
        classify(ToyRlrs(), rules=[(r"\.experts\.", "expert")])


def test_malformed_rules_are_named():
    with pytest.raises(ClassificationError, match=r"invalid regex") as info:
        classify(ToyRlrs(), rules=[(r"attn(", "attention")])
    assert "attn(" in str(info.value)
    with pytest.raises(ClassificationError, match=r"not a \(regex, component\) pair"):
        classify(ToyRlrs(), rules=[(r"attn", "attention", "extra")])
    with pytest.raises(ClassificationError, match=r"sequence of \(regex, component\) pairs"):
        classify(ToyRlrs(), rules="attn")


def test_frozen_parameters_are_skipped():
    model = ToyRlrs()
    model.embed.weight.requires_grad_(False)
    model.blocks[0].requires_grad_(False)
    got = classify(model)
    assert "embed.weight" not in got
    assert not any(n.startswith("blocks.0.") for n in got)
    assert got["blocks.1.attn.qkv.weight"] == "attention"
    assert sorted(got) == sorted(trainable_names(model))
    # A rule for a frozen part is not "matching nothing": rule sets survive freezing.
    assert classify(model, rules=[(r"^embed\.", "other")]) == got


def test_frozen_parameters_left_unmatched_do_not_raise():
    model = Unknown()
    model.layers.requires_grad_(False)
    got = classify(model, rules=[(r"^tok\.", "embedding"), (r"^out\.", "unembedding")])
    assert set(got) == {"tok.weight", "out.weight", "out.bias"}


def test_fully_frozen_unknown_model_needs_no_rules():
    model = Unknown().requires_grad_(False)
    assert classify(model) == {}


def test_frozen_tied_group_is_not_reported():
    model = NanoGPT()
    model.lm_head.weight.requires_grad_(False)
    assert tied_parameters(model) == []


def test_rule_sets_are_well_formed_data():
    assert len({r.name for r in RULE_SETS}) == len(RULE_SETS)
    for rule_set in RULE_SETS:
        assert isinstance(rule_set, RuleSet)
        assert isinstance(rule_set.rules, tuple)
        for pattern, component in rule_set.rules:
            assert component in COMPONENTS
            assert re.compile(pattern)


# --- MoE blocks and layer stacks from other libraries: structure, whatever the names ------------


class SwiGLU(nn.Module):
    def __init__(self, d, h, names=("w1", "w2", "w3")):
        super().__init__()
        for name, (i, o) in zip(names, [(d, h), (h, d), (d, h)]):
            self.add_module(name, nn.Linear(i, o, bias=False))


class SelfAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


class LibLayer(nn.Module):
    """A pre-norm layer whose feed-forward part is ``ffn``, under attribute names of its own."""

    def __init__(self, d, ffn):
        super().__init__()
        self.pre = nn.LayerNorm(d)
        self.mix = SelfAttention(d)
        self.post = nn.LayerNorm(d)
        self.ffn = ffn


class LibLM(nn.Module):
    def __init__(self, layers, d=8, vocab=40):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.stack = layers
        self.final = nn.RMSNorm(d)
        self.proj_out = nn.Linear(d, vocab, bias=False)


def components_of(comp: dict[str, str], component: str) -> set[str]:
    return {n for n, c in comp.items() if c == component}


def test_mixtral_style_gate_beside_a_list_of_experts_whatever_their_names():
    d, n = 8, 4

    class MoE(nn.Module):  # Mixtral's block_sparse_moe: gate + experts, here "w_route" + "mlps"
        def __init__(self):
            super().__init__()
            self.w_route = nn.Linear(d, n, bias=False)
            self.mlps = nn.ModuleList(SwiGLU(d, 16) for _ in range(n))

    model = LibLM(nn.ModuleList(LibLayer(d, MoE()) for _ in range(2)))
    comp = classify(model)
    assert sorted(comp) == sorted(trainable_names(model))
    assert components_of(comp, "router") == {f"stack.{i}.ffn.w_route.weight" for i in range(2)}
    assert components_of(comp, "experts") == {f"stack.{i}.ffn.mlps.{e}.w{k}.weight"
                                              for i in range(2) for e in range(n) for k in (1, 2, 3)}
    assert comp["stack.0.mix.qkv.weight"] == "attention" and comp["stack.0.pre.weight"] == "other"
    assert comp["tok.weight"] == "embedding" and comp["proj_out.weight"] == "unembedding"


def test_names_that_say_otherwise_do_not_beat_structure():
    # The router called "ffn", the experts "mlp", each expert's parts "gate"/"up"/"down".
    moe = nn.Module()
    moe.ffn = nn.Linear(8, 3)
    moe.mlp = nn.ModuleDict({k: SwiGLU(8, 16, ("gate", "up", "down")) for k in ("a", "b", "c")})
    comp = classify(LibLM(nn.Sequential(LibLayer(8, moe))))
    assert components_of(comp, "router") == {"stack.0.ffn.ffn.weight", "stack.0.ffn.ffn.bias"}
    assert len(components_of(comp, "experts")) == 9 and all(".ffn.mlp." in n for n in components_of(comp, "experts"))


def test_qwen2_moe_style_shared_expert_is_feedforward_and_its_one_output_gate_routes():
    d, n = 8, 4

    class SparseMoeBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(d, n, bias=False)  # scores the experts: the router
            self.experts = nn.ModuleList(SwiGLU(d, 16, ("gate_proj", "up_proj", "down_proj")) for _ in range(n))
            self.shared_expert = SwiGLU(d, 32, ("gate_proj", "up_proj", "down_proj"))
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)  # scales the shared expert per token

    model = LibLM(nn.ModuleList([LibLayer(d, SparseMoeBlock())]))
    comp = classify(model)
    assert components_of(comp, "router") == {"stack.0.ffn.gate.weight", "stack.0.ffn.shared_expert_gate.weight"}
    assert components_of(comp, "experts") == {n for n in comp if ".ffn.experts." in n}
    assert len(components_of(comp, "experts")) == 3 * n
    shared = {n for n in comp if ".shared_expert." in n}
    assert len(shared) == 3 and components_of(comp, "feedforward") == shared

    # The same block under names that mean nothing: structure alone gives the same answer.
    anonymous = SparseMoeBlock()
    block = nn.Module()
    block.p, block.q, block.r, block.s = (anonymous.gate, anonymous.experts, anonymous.shared_expert,
                                          anonymous.shared_expert_gate)
    comp = classify(LibLM(nn.ModuleList([LibLayer(d, block)])))
    assert components_of(comp, "router") == {"stack.0.ffn.p.weight", "stack.0.ffn.s.weight"}
    assert components_of(comp, "experts") == {n for n in comp if ".ffn.q." in n}
    assert components_of(comp, "feedforward") == {n for n in comp if ".ffn.r." in n}


def test_experts_fused_on_the_moe_block_itself_with_a_bare_router_matrix():
    d, n = 8, 4
    moe = nn.Module()
    moe.w_in = nn.Parameter(torch.zeros(n, d, 32))
    moe.w_out = nn.Parameter(torch.zeros(n, 16, d))
    moe.w = nn.Parameter(torch.zeros(d, n))  # x @ w: one score per expert
    comp = classify(LibLM(nn.ModuleList([LibLayer(d, moe)])))
    assert comp["stack.0.ffn.w"] == "router"
    assert comp["stack.0.ffn.w_in"] == comp["stack.0.ffn.w_out"] == "experts"


def test_what_structure_cannot_decide_beside_fused_experts_is_a_config_error_with_the_fix():
    # An (E, d) router and an (E, d) expert bias on the same module as the fused experts: the
    # shapes are the same, and so (with names that say nothing) is everything else.
    d, n = 8, 4
    moe = nn.Module()
    moe.a = nn.Parameter(torch.zeros(n, d, 16))
    moe.b = nn.Parameter(torch.zeros(n, 16, d))
    moe.c = nn.Parameter(torch.zeros(n, d))
    moe.e = nn.Parameter(torch.zeros(n, d))
    model = LibLM(nn.ModuleList([LibLayer(d, moe)]))
    with pytest.raises(ConfigError) as info:
        classify(model)
    msg = str(info.value)
    assert isinstance(info.value, ClassificationError)
    assert "stack.0.ffn.c" in msg and "stack.0.ffn.e" in msg and "router or an expert bias" in msg
    assert "rules=[" in msg
    comp = classify(model, rules=[(r"\.ffn\.c$", "router"), (r"\.ffn\.e$", "experts")])
    assert comp["stack.0.ffn.a"] == comp["stack.0.ffn.e"] == "experts" and comp["stack.0.ffn.c"] == "router"
    moe.c_router = moe.c  # or a name: one that says "router" breaks the tie
    del moe.c
    comp = classify(model)
    assert comp["stack.0.ffn.c_router"] == "router" and comp["stack.0.ffn.e"] == "experts"


def test_none_in_a_layer_list_and_none_attributes_never_crash():
    d = 8

    def layer():
        one = LibLayer(d, SwiGLU(d, 16))
        one.register_module("adapter", None)  # a module attribute set to None
        return one

    for stack in (nn.ModuleList([None, layer(), None, layer()]),
                  nn.Sequential(None, layer()),
                  nn.ModuleDict({"first": layer(), "skipped": None, "last": layer()}),
                  nn.ModuleList([nn.ModuleList([None, layer()]), nn.ModuleList([layer()]), None])):
        model = LibLM(stack)
        model.register_module("extra", None)
        comp = classify(model)
        assert sorted(comp) == sorted(trainable_names(model))
        assert comp["tok.weight"] == "embedding" and comp["proj_out.weight"] == "unembedding"
        assert {"attention", "feedforward", "other"} <= set(comp.values())
        assert "router" not in comp.values() and "experts" not in comp.values()


def test_a_head_tied_to_the_embedding_is_the_unembedding_wherever_it_sits():
    body = nn.Module()  # Hugging Face's layout: the head beside a body that holds the layers
    body.tok = nn.Embedding(40, 8)
    body.stack = nn.ModuleList([LibLayer(8, SwiGLU(8, 16))])
    model = nn.Module()
    model.body = body
    model.out = nn.Linear(8, 40, bias=False)
    model.out.weight = body.tok.weight
    comp = classify(model, tied=None)
    assert comp["body.tok.weight"] == "embedding" and comp["out.weight"] == "unembedding"


def test_classification_error_is_a_config_error():
    assert issubclass(ClassificationError, ConfigError) and issubclass(ClassificationError, ValueError)


def test_task_heads_beside_the_stack_are_not_taken_for_experts():
    # Four identical MLP heads and a 4-way classifier after the layer stack: the same shapes as an
    # MoE block, but outside any Transformer layer, so neither experts nor a router.
    d = 8

    class MultiHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(40, d)
            self.layers = nn.ModuleList([LibLayer(d, SwiGLU(d, 16, ("gate", "up", "down")))])
            self.heads = nn.ModuleList(SwiGLU(d, 16, ("gate", "up", "down")) for _ in range(4))
            self.task_logits = nn.Linear(d, 4)

    comp = classify(MultiHead())
    assert not {"router", "experts"} & set(comp.values()), comp
