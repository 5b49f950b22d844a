"""Which Transformer component each parameter belongs to.

RLRS gives every component (embedding, attention, router, ...) its own learning-rate schedule,
so the first step is to label every trainable parameter with its component::

    comp = rlrs.components.classify(model)
    comp["model.layers.0.self_attn.q_proj.weight"]   # 'attention'

Labels come, in this order, from

1. **your rules**: ordered ``(regex, component)`` pairs searched (``re.search``) in parameter
   names; the first match wins, so they override everything below;
2. **family rule sets**: fast, exact name tables for rlrs's own models, nanoGPT and the Hugging
   Face GPT-2, Llama, Mistral, Qwen2, Mixtral and Qwen2-MoE layouts;
3. **structure**: what the modules are, for any ``nn.Module`` (see :func:`structural_components`):
   the model's input and output embeddings (``get_input_embeddings()`` /
   ``get_output_embeddings()`` where it has them), attention modules (self and cross, fused qkv,
   low-rank MLA projections, the q/k norms inside them), MoE blocks, whatever their names (E
   experts: a ModuleList/ModuleDict/Sequential of E identical MLPs or 3-D tensors fused along E;
   beside them the router: the projection with E outputs, one score per expert, with its bias),
   feed-forward modules, norms and scalars (``other``), and the projections beside a stack of
   layers (its stem: ``embedding``; its head: ``unembedding``, as is a head tied to an
   ``nn.Embedding``). Names break ties (``embed``, ``lm_head``). Layer stacks may be any of
   those containers, nested, with ``None`` entries.

Only a parameter that structure cannot place raises ``ClassificationError``, naming every such
parameter and the ``rules=`` fix::

    comp = rlrs.components.classify(model, rules=[(r"\\.ffn\\.", "feedforward")])

**Shared experts** (Qwen2-MoE, DeepSeek) are dense feed-forward networks every token goes
through, so they are ``feedforward``; the 1-output gate that scales one per token is routing
(``router``), by structure as in the ``qwen2_moe`` rule set. **Pooler and classification heads** sit with the output
head: ``unembedding``.

Imports only torch and the standard library: it belongs to the core. Hugging Face models are
recognised duck-typed (``model.config``, ``get_input_embeddings``), so transformers is never
imported.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from .config import ConfigError, closest

__all__ = ["COMPONENTS", "structural_components", "Rule", "ClassificationError", "RuleSet", "RULE_SETS", "classify",
           "tied_parameters", "pick_rule_set"]

# A tensor shared by the input embedding and the output head (tied weights) follows this
# component's schedule unless a plan's ``tied`` says otherwise. Measured, not argued: on two tied
# GPTs (rlrs's, RoPE; Hugging Face GPT-2, learned positions), each arm at its own tuned η_base, 3
# seeds, 20 tokens per parameter, paper-dense with the tied tensor following the embedding beat
# following the unembedding, and a schedule of its own between the two (BENCHMARKS.md, "Tied
# weights"). Following the unembedding left the paper's largest effect, the embedding's 5× start,
# acting on nothing (RoPE) or on the position embedding alone. Until then the default was
# "unembedding" (argued from where the gradient comes from): PresetRun names runs by it.
DEFAULT_TIED = "embedding"

COMPONENTS: tuple[str, ...] = ("embedding", "unembedding", "attention", "feedforward", "router", "experts", "other")


def component_names(names: Sequence[str], where: str = "components") -> tuple[str, ...]:
    """Check a list of component names: a sequence (not one string), each name known.

    >>> component_names(["router", "experts"])
    ('router', 'experts')
    >>> component_names("embedding")
    Traceback (most recent call last):
    ...
    rlrs.config.ConfigError: components: give a list of component names, e.g. ['embedding'], not the string 'embedding'
    """
    if isinstance(names, str):
        raise ConfigError(f"{where}: give a list of component names, e.g. [{names!r}], not the string {names!r}")
    out = tuple(names)
    for n in out:
        if n not in COMPONENTS:
            raise ConfigError(f"{where}: {n!r} is unknown; {closest(str(n), COMPONENTS)}")
    return out


Rule = tuple[str, str]
"""``(regex, component)``: the regex is searched (``re.search``) in a parameter's name."""


class ClassificationError(ConfigError):
    """A parameter has no component, or a rule is invalid or matches nothing.

    The message names the offending parameters or rule and shows how to pass ``rules=``. A
    ``ConfigError`` (so a ``ValueError``): the fix is in the caller's configuration.
    """


@dataclass(frozen=True)
class RuleSet:
    """Built-in rules for one model family.

    ``detect(model, names)`` says whether the family applies; ``names`` are all parameter
    names of the (unwrapped) model, frozen and tied aliases included.
    """

    name: str
    rules: tuple[Rule, ...]
    detect: Callable[[nn.Module, list[str]], bool]


# --- Built-in rules ------------------------------------------------------------------------
# Every regex is anchored on dots ("(^|\.)mlp\.") so that a module called "mlp_norm" is not
# "mlp", and so that a wrapper prefix ("_orig_mod.", "module.", "base_model.model.") does not
# matter. Order matters: first match wins, so a module's own norms and biases (e.g.
# "self_attn.q_norm", "attn.c_attn.bias") are labelled by the module before the generic norm
# rule sends standalone norms to "other".

_NORM = r"(^|\.)[^.]*norm[^.]*(\.|$)"  # RMSNorm/LayerNorm modules: ln_f, model.norm, attn_norm

_RLRS_RULES: tuple[Rule, ...] = (
    (r"(^|\.)unembed(\.|$)", "unembedding"),  # before "embed", which it contains
    (r"(^|\.)(\w+_)?embed(_\w+)?(\.|$)", "embedding"),  # embed, pos_embed, tok_embed
    (r"(^|\.)router(\.|$)", "router"),
    (r"(^|\.)experts(\.|$)", "experts"),
    (r"(^|\.)attn(\.|$)", "attention"),
    (r"(^|\.)mlp(\.|$)", "feedforward"),
    (_NORM, "other"),
)

# nanoGPT copied GPT-2's module names, so one table serves both.
_GPT2_RULES: tuple[Rule, ...] = (
    (r"(^|\.)(wte|wpe)\.", "embedding"),  # token and position embeddings
    (r"(^|\.)lm_head\.", "unembedding"),
    (r"(^|\.)(attn|crossattention)\.", "attention"),  # c_attn/c_proj (and q_attn) with biases
    (r"(^|\.)mlp\.", "feedforward"),  # c_fc/c_proj with biases
    (r"(^|\.)ln_\w+\.", "other"),  # ln_1, ln_2, ln_f, ln_cross_attn
)

# Llama, Mistral and Qwen2 (dense) share one layout.
_LLAMA_RULES: tuple[Rule, ...] = (
    (r"(^|\.)embed_tokens\.", "embedding"),
    (r"(^|\.)lm_head\.", "unembedding"),
    (r"(^|\.)self_attn\.", "attention"),  # q/k/v/o_proj, their biases (Qwen2), any q/k norms
    (r"(^|\.)mlp\.", "feedforward"),  # gate_proj/up_proj/down_proj
    (_NORM, "other"),  # input_layernorm, post_attention_layernorm, model.norm
)

# transformers 5.x: "mlp.gate.weight" (router), "mlp.experts.gate_up_proj" and
# "mlp.experts.down_proj" (all experts fused in 3-D tensors).
# transformers 4.x: "block_sparse_moe.gate.weight", "block_sparse_moe.experts.N.w1/w2/w3.weight".
# There is no dense feed-forward in Mixtral, so "mlp." alone is deliberately not a rule: an
# unexpected parameter there raises instead of silently becoming "feedforward".
_MIXTRAL_RULES: tuple[Rule, ...] = (
    (r"(^|\.)embed_tokens\.", "embedding"),
    (r"(^|\.)lm_head\.", "unembedding"),
    (r"(^|\.)self_attn\.", "attention"),
    (r"(^|\.)(block_sparse_moe|mlp)\.gate(\.|$)", "router"),
    (r"(^|\.)(block_sparse_moe|mlp)\.experts(\.|$)", "experts"),
    (_NORM, "other"),
)

# Same router/experts names as Mixtral's "mlp." form in both 4.x and 5.x (4.x experts are
# "mlp.experts.N.gate_proj/up_proj/down_proj"). Qwen2-MoE adds a shared expert: a dense FFN
# that every token uses, so it is "feedforward", while its scalar "shared_expert_gate" is
# routing. Layers listed in mlp_only_layers have a plain dense "mlp.gate_proj/...".
_QWEN2_MOE_RULES: tuple[Rule, ...] = (
    (r"(^|\.)embed_tokens\.", "embedding"),
    (r"(^|\.)lm_head\.", "unembedding"),
    (r"(^|\.)self_attn\.", "attention"),
    (r"(^|\.)mlp\.shared_expert_gate(\.|$)", "router"),
    (r"(^|\.)mlp\.shared_expert(\.|$)", "feedforward"),
    (r"(^|\.)mlp\.gate(\.|$)", "router"),
    (r"(^|\.)mlp\.experts(\.|$)", "experts"),
    (r"(^|\.)mlp\.", "feedforward"),  # dense layers (mlp_only_layers, decoder_sparse_step)
    (_NORM, "other"),
)


def _model_type(model: nn.Module) -> str | None:
    # Duck-typed Hugging Face check; "" (the PretrainedConfig base) counts as no type.
    return getattr(getattr(model, "config", None), "model_type", None) or None


def _has_model_type(*types: str) -> Callable[[nn.Module, list[str]], bool]:
    return lambda model, names: _model_type(model) in types


def _is_rlrs(model: nn.Module, names: list[str]) -> bool:
    if type(model).__module__.startswith("rlrs."):
        return True
    return "embed.weight" in names and "unembed.weight" in names


def _is_nanogpt(model: nn.Module, names: list[str]) -> bool:
    # nanoGPT's GPT has a plain dataclass config; an HF GPT-2 is picked by model_type instead.
    return "transformer.wte.weight" in names and _model_type(model) is None


RULE_SETS: tuple[RuleSet, ...] = (
    RuleSet("rlrs", _RLRS_RULES, _is_rlrs),
    RuleSet("nanogpt", _GPT2_RULES, _is_nanogpt),
    RuleSet("gpt2", _GPT2_RULES, _has_model_type("gpt2")),
    RuleSet("llama", _LLAMA_RULES, _has_model_type("llama")),
    RuleSet("mistral", _LLAMA_RULES, _has_model_type("mistral")),
    RuleSet("qwen2", _LLAMA_RULES, _has_model_type("qwen2")),
    RuleSet("mixtral", _MIXTRAL_RULES, _has_model_type("mixtral")),
    RuleSet("qwen2_moe", _QWEN2_MOE_RULES, _has_model_type("qwen2_moe")),
)


# --- Helpers -------------------------------------------------------------------------------

# Common words people use for a component; difflib alone would not map "mlp" to "feedforward".
_ALIASES = {"mlp": "feedforward", "ffn": "feedforward", "ff": "feedforward", "attn": "attention",
            "head": "unembedding", "lm_head": "unembedding", "gate": "router", "gating": "router"}

_EXAMPLE = 'rlrs.classify(model, rules=[(r"my_block\\.ff", "feedforward"), ...])'
_MAX_LISTED = 20


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile and (Distributed)DataParallel hide the real model (and its config) one
    # level down; detection must look at the real one. Names keep their prefixes.
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _closest_component(component: str) -> str:
    key = str(component).lower()
    if key in _ALIASES:
        return _ALIASES[key]
    return difflib.get_close_matches(key, COMPONENTS, n=1, cutoff=0.0)[0]


def _list_names(names: Sequence[str]) -> str:
    """Indented list of names; past ``_MAX_LISTED``, names differing only in layer numbers fold."""
    if len(names) > _MAX_LISTED:
        folded: dict[str, int] = {}
        for name in names:
            key = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)
            folded[key] = folded.get(key, 0) + 1
        shown = [f"{k}  ({n} names)" if n > 1 else k for k, n in folded.items()]
    else:
        shown = list(names)
    lines = [f"  {s}" for s in shown[:_MAX_LISTED]]
    if len(shown) > _MAX_LISTED:
        lines.append(f"  ... and {len(shown) - _MAX_LISTED} more")
    return "\n".join(lines)


def _how_to_fix() -> str:
    return ("Pass rules for them; yours are tried first, in order, and the first match wins:\n"
            f"  {_EXAMPLE}\nComponents: {', '.join(COMPONENTS)}.")


def _is_pair(rule) -> bool:
    return isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)


def _show_rule(rule) -> str:
    # Shown the way it would be written, (r"\.ffn\.", "feedforward"), not with doubled escapes.
    if _is_pair(rule) and '"' not in rule[0] and not rule[0].endswith("\\"):
        return f'(r"{rule[0]}", "{rule[1]}")'
    return repr(rule)


def _compile_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], str, Rule]]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ClassificationError(
            f"rules must be a sequence of (regex, component) pairs, got {type(rules).__name__}; e.g. {_EXAMPLE}")
    compiled = []
    for rule in rules:
        if not _is_pair(rule):
            raise ClassificationError(f"rule {_show_rule(rule)} is not a (regex, component) pair of strings; "
                                      f"e.g. {_EXAMPLE}")
        pattern, component = rule
        if component not in COMPONENTS:
            raise ClassificationError(f"rule {_show_rule(rule)}: unknown component {component!r}; did you mean "
                                      f"{_closest_component(component)!r}? (components: {', '.join(COMPONENTS)})")
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ClassificationError(f"rule {_show_rule(rule)}: invalid regex: {err}") from err
        compiled.append((regex, component, tuple(rule)))
    return compiled


def _apply(compiled: list[tuple[re.Pattern[str], str, Rule]], names: list[str], out: dict[str, str]) -> list[str]:
    """Label the names (first match wins) into ``out``; return the names no rule matched."""
    left = []
    for name in names:
        for regex, component, _ in compiled:
            if regex.search(name):
                out[name] = component
                break
        else:
            left.append(name)
    return left


# --- Structure ---------------------------------------------------------------------------
# What a module *is*, from its class and its place; names only break ties. Each test looks at one
# module; a module's role passes down to everything inside it until a descendant has its own.

# Token mixers count as attention: linear attention and state-space/recurrent mixers (Mamba,
# GatedDeltaNet, xLSTM, short convolutions) do in a hybrid what attention does in a Transformer.
_ATTENTION_CLASS = re.compile(r"Attention|Attn|Mamba|DeltaNet|Recurrent|RGLRU|SSM|[ms]LSTM|ShortConv|Fourier")
_ATTENTION_NAMES = {"attn", "attention", "self_attn", "self_attention", "cross_attn", "cross_attention",
                    "crossattention", "encoder_attn", "mixer_attn", "attn_layer", "mha", "linear_attn", "mamba",
                    "mixer", "temporal_block", "mlstm_layer", "slstm_layer", "conv", "short_conv", "token_mixer"}
_MLP_CLASS = re.compile(r"MLP|Mlp|FeedForward|FFN|Ffn|LayerFF|DenseReluDense|DenseGatedActDense|Intermediate|SwiGLU|GLU$")
_MLP_NAMES = {"mlp", "ffn", "ff", "feed_forward", "feedforward", "intermediate", "fc", "dense_ffn", "c_mlp",
              "mlp_block"}
_SHARED_EXPERT_NAMES = re.compile(r"^shared_(expert|experts|mlp)$")
_SHARED_GATE_NAMES = re.compile(r"^shared_(expert|experts|mlp)_gate$")  # its 1-output gate: routing
_EXPERTS_CLASS = re.compile(r"Experts$|ParallelExperts|ExpertsFused")
_EXPERTS_NAMES = {"experts", "expert_list", "local_experts"}
_ROUTER_CLASS = re.compile(r"Router|Gating|TopK|TopkGate|MoEGate|MoeGate")
_ROUTER_NAMES = {"router", "gate", "gating", "switch", "wg"}
_NORM_CLASS = re.compile(r"Norm")
_QK_NORM = re.compile(r"^(q|k|kv|query|key)(_a)?_?(layer_?)?norm$", re.IGNORECASE)
_HEAD_NAMES = re.compile(r"^(lm_head|head|classifier|score|unembed|output_layer|pooler|cls|qa_outputs|embed_out|"
                         r"output_projection|\w*predictions|\w*_head|vocab_\w+)$")
# Input-side modules of multimodal models: what turns pixels or audio into the model's input.
_INPUT_NAMES = re.compile(r"(projector|projection|_tower|patch\w*|stem)$")
_TOKEN_PARAMS = re.compile(r"emb|^(cls|mask|dist|register)_tokens?$")


def _segment(prefix: str) -> str:
    return prefix.rsplit(".", 1)[-1]


def _cls(module: nn.Module) -> str:
    """The class name without its Hugging Face family prefix: ``RecurrentGemmaMlp`` → ``Mlp``,
    ``MambaRMSNorm`` → ``RMSNorm``, so a family's own name never reads as a module kind."""
    name = type(module).__name__
    family = re.match(r"transformers\.models\.(\w+)\.", type(module).__module__)
    if family:
        prefix = family.group(1).replace("_", "").lower()
        if name.lower().startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return name


def _is_attention(name: str, module: nn.Module) -> bool:
    if not (_ATTENTION_CLASS.search(_cls(module)) or _segment(name) in _ATTENTION_NAMES):
        return False
    # A whole layer named after its mixer ("JambaMambaDecoderLayer", "...CrossAttentionDecoderLayer")
    # holds a feed-forward part too: it is a layer, not attention.
    return not any(_is_mlp(n, m) for n, m in module.named_modules() if n)


def _is_norm(seg: str, cls: str) -> bool:
    return bool(_NORM_CLASS.search(cls)) or "norm" in seg.lower() or seg.startswith("ln")


def _is_mlp(name: str, module: nn.Module) -> bool:
    return bool(_MLP_CLASS.search(_cls(module))) or _segment(name) in _MLP_NAMES


def _is_experts(name: str, module: nn.Module) -> bool:
    if _SHARED_EXPERT_NAMES.match(_segment(name)):
        return False
    return bool(_EXPERTS_CLASS.search(_cls(module))) or _segment(name) in _EXPERTS_NAMES


def _has_experts_child(module: nn.Module) -> bool:
    return any(_is_experts(n, c) for n, c in module.named_children())


# MoE blocks are found by what their parts are, whatever their names: E expert MLPs (a
# ModuleList/ModuleDict/Sequential of E identical MLP-like modules, or fused 3-D tensors whose
# first dimension is E) and, beside them in the same parent, the router: a projection with E
# outputs, one score per expert. Every such projection routes (noisy top-k gating has two).
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
# Names break one tie only: a bare (E, k) matrix beside experts fused on the same module is the
# router or an expert bias, and the shape cannot say which.
_ROUTER_WORDS = re.compile(r"rout|gat|scor|wg|logit", re.IGNORECASE)


def _matrices(module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """``(owner, name, parameter)`` for every parameter of 2 or more dimensions in ``module``."""
    return [(m, n, p) for m in module.modules() for n, p in m.named_parameters(recurse=False) if p.ndim >= 2]


def _outputs(module: nn.Module) -> set[int]:
    """The output counts all matrices of ``module`` share; empty if it has none, or a 3-D tensor.
    A Linear's weight is (out, in); a bare matrix may be applied either way (``x @ W``).

        >>> _outputs(nn.Linear(8, 4)), _outputs(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4)))
        ({4}, {4})
    """
    mats = _matrices(module)
    if not mats or any(p.ndim != 2 or isinstance(m, nn.Embedding) for m, _, p in mats):
        return set()
    return set.intersection(*({p.shape[0]} if isinstance(m, nn.Linear) and n == "weight" else set(p.shape)
                              for m, n, p in mats))


def _fused_count(params: Sequence[nn.Parameter]) -> int:
    """E when ``params`` are experts fused along a first dimension of E (3-D tensors, per-expert biases), else 0."""
    e = params[0].shape[0] if any(p.ndim == 3 for p in params) else 0
    return e if e >= 2 and all(p.shape[0] == e for p in params) else 0


class _Walk:
    """One walk over the module tree: the role of each module, then each parameter's component."""

    def __init__(self, model: nn.Module):
        self.model = model
        # The model's own methods, and those of a Hugging Face model inside a wrapper (a
        # LightningModule, PEFT, DDP or a compiled module).
        owners = [_unwrap(model), *(m for m in model.modules() if hasattr(m, "config"))]
        self.input_ids = set().union(*(self._ids(m, "get_input_embeddings") for m in owners))
        self.output_ids = set().union(*(self._ids(m, "get_output_embeddings") for m in owners))
        self.attention_below: dict[int, bool] = {}
        self.head_ids = self._head_ancestors()
        # A module other than an nn.Embedding that uses an embedding table is a tied output head.
        self.table_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        # MoE parts by structure: module ids, and (module id, name) for bare parameters.
        self.moe: dict[int, str] = {}
        self.moe_params: dict[tuple[int, str], str] = {}
        self.undecided: dict[tuple[int, str], str] = {}  # bare parameters structure cannot place, and why
        for module in model.modules():
            self._find_moe(module)
        self.out: dict[str, str] = {}
        self.unplaced: list[str] = []
        self.why: dict[str, str] = {}

    @staticmethod
    def _ids(model: nn.Module, method: str) -> set[int]:
        # Hugging Face models (and any model that follows their convention) name these modules.
        fn = getattr(model, method, None)
        if not callable(fn):
            return set()
        try:
            found = fn()
        except (NotImplementedError, AttributeError, TypeError):
            return set()
        return {id(found)} if isinstance(found, nn.Module) else set()

    def _attention_inside(self, module: nn.Module) -> bool:
        key = id(module)
        if key not in self.attention_below:
            self.attention_below[key] = any(_is_attention(n, m) for n, m in module.named_modules())
        return self.attention_below[key]

    def _mlp_like(self, module: nn.Module) -> bool:
        """Two or more matrices and no attention, embedding table or fused tensor: a dense MLP."""
        mats = _matrices(module)
        return (len(mats) >= 2 and all(p.ndim == 2 for *_, p in mats) and not self._attention_inside(module)
                and not any(isinstance(m, nn.Embedding) for m in module.modules()))

    def _expert_count(self, module: nn.Module) -> int:
        """E when ``module`` holds E experts: a container of E identical MLP-like modules, or fused tensors."""
        if isinstance(module, _CONTAINERS):
            items = [m for m in module._modules.values() if m is not None]
            if len(items) < 2 or not self._mlp_like(items[0]):
                return 0
            shapes = [[(type(m), n, p.shape) for n, p in m.named_parameters()] for m in items]
            return len(module._modules) if all(s == shapes[0] for s in shapes) else 0  # None slots count too
        own = list(module.parameters(recurse=False))
        # Fused experts are tensors of the experts module itself (an MoE block holds its router in
        # a child too); attention heads and convolution kernels are 3-D too.
        if len(own) != len(list(module.parameters())) or self._attention_inside(module) or isinstance(
                module, nn.modules.conv._ConvNd):
            return 0
        return _fused_count(own)

    def _find_moe(self, parent: nn.Module) -> None:
        """Mark the router, experts and shared experts among ``parent``'s children and bare
        parameters, if it is an MoE block: E experts and, beside them, a projection with E outputs."""
        kids = list(parent.children())
        counts = {id(c): self._expert_count(c) for c in kids}
        own = list(parent.named_parameters(recurse=False))
        own_e = _fused_count([p for _, p in own if p.ndim == 3])
        sizes = {e for e in (*counts.values(), own_e) if e}
        if not sizes:
            return
        routers = [c for c in kids if not counts[id(c)] and _outputs(c) & sizes]
        mats = [(n, p) for n, p in own if p.ndim == 2 and set(p.shape) & sizes]
        own_routers = mats
        if own_e and (len(mats) > 1 or routers):
            # Beside experts fused on this very module, an (E, k) matrix is the router or an expert
            # bias: shapes cannot say which, so a name must (or another router beside them).
            own_routers = [(n, p) for n, p in mats if _ROUTER_WORDS.search(n)]
            for n, p in mats:
                if _ROUTER_WORDS.search(n):
                    continue
                if (routers or own_routers) and p.shape[0] == own_e:
                    self.moe_params[id(parent), n] = "experts"
                else:
                    self.undecided[id(parent), n] = (
                        f"a {tuple(p.shape)} matrix beside experts fused on the same module is the router or an "
                        "expert bias, and neither its shape nor its name says which")
        # The undecided count too: one of them is the router, whichever it is.
        routed = set().union(*(_outputs(c) for c in routers), *(set(p.shape) for _, p in mats)) & sizes
        if not routed:
            return
        self.moe_params.update({(id(parent), n): "experts" for n, p in own if p.ndim == 3 and own_e in routed})
        self.moe_params.update({(id(parent), n): "router" for n, _ in own_routers})
        for c in kids:
            if c in routers:
                self.moe[id(c)] = "router"
            elif counts[id(c)] in routed:
                self.moe[id(c)] = "experts"
            elif 1 in _outputs(c):
                # The 1-output gate that scales the shared expert's output per token: routing, as
                # the qwen2_moe rule set has it (it decides how much of the shared expert passes).
                self.moe[id(c)] = "router"
            elif self._mlp_like(c):
                # A shared expert: a dense feed-forward network every token goes through.
                self.moe[id(c)] = "feedforward"

    def _head_ancestors(self) -> set[int]:
        # The output head is the output embedding and every module around it that holds no
        # attention: BERT's "cls.predictions" (transform, bias) as well as its decoder.
        ids: set[int] = set()
        for name, module in self.model.named_modules():
            if id(module) in self.output_ids:
                parts = name.split(".") if name else []
                for i in range(len(parts), 0, -1):
                    ancestor = self.model.get_submodule(".".join(parts[:i]))
                    if self._attention_inside(ancestor):
                        break
                    ids.add(id(ancestor))
        return ids

    def role(self, name: str, module: nn.Module, parent: nn.Module | None, ctx: str | None, in_layer: bool) -> str | None:
        """The component ``module`` (at ``name``) gives what it holds, or ``None`` to inherit ``ctx``."""
        seg = _segment(name)
        cls = _cls(module)
        if id(module) in self.output_ids or id(module) in self.head_ids:
            return "unembedding"
        if id(module) in self.input_ids:
            return "embedding"
        if ctx == "attention":
            # Everything inside attention is attention (MLA's low-rank parts, q/k norms), except a
            # residual norm that a wrapper holds (T5's layer_norm, BERT's attention.output.LayerNorm).
            return "other" if _is_norm(seg, cls) and not _QK_NORM.match(seg) else None
        if ctx not in ("experts", "router") and id(module) in self.moe and in_layer:
            # Router, experts or shared expert by structure, whatever the names; only inside a
            # Transformer layer, where MoE blocks are: beside the stack, a list of identical MLPs and
            # a projection with as many outputs are task heads and a classifier, not experts.
            return self.moe[id(module)]
        if _is_attention(name, module):
            return "attention"
        if _SHARED_EXPERT_NAMES.match(seg):
            return "feedforward"  # a shared expert: dense, every token goes through it
        if _SHARED_GATE_NAMES.match(seg):
            return "router"  # the gate scaling the shared expert per token, as in the qwen2_moe rule set
        if ctx in ("experts", "router"):
            return None
        if _is_experts(name, module):
            return "experts"
        if seg in _ROUTER_NAMES and parent is not None and _has_experts_child(parent):
            return "router"
        if _is_mlp(name, module):
            return "feedforward"  # before the router test: a "GatingMLP" is a gated feed-forward
        if _ROUTER_CLASS.search(cls):
            return "router"
        if _is_norm(seg, cls):
            return "other"
        if (isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or "Embedding" in cls
                or ("embed" in seg.lower() and "unembed" not in seg.lower())):
            return "embedding"
        if not in_layer and ctx is None and _HEAD_NAMES.match(seg):
            return "unembedding"
        if not in_layer and ctx is None and _INPUT_NAMES.search(seg):
            return "embedding"
        return None

    def visit(self, name: str, module: nn.Module, parent: nn.Module | None, ctx: str | None, in_layer: bool,
              side: str | None = None) -> None:
        role = self.role(name, module, parent, ctx, in_layer) if name else None
        here = role or ctx
        for pname, _ in module.named_parameters(recurse=False, remove_duplicate=False):
            full = f"{name}.{pname}" if name else pname
            # A bare router matrix or fused experts on the MoE block itself, unless inside attention.
            key = (id(module), pname) if here not in ("attention", "experts", "router") and in_layer else None
            if key in self.undecided:
                comp, self.why[full] = None, self.undecided[key]
            else:
                comp = self.moe_params.get(key) or here or self._fallback(pname, module, in_layer, side)
            if comp is None:
                self.unplaced.append(full)
            else:
                self.out[full] = comp
        layer_list = isinstance(module, (nn.ModuleList, nn.Sequential)) or self._is_stack(module)
        stack = self._layer_stack(module) if not in_layer else None
        seen_stack = False
        for cname, child in module.named_children():
            child_in_layer = in_layer or (layer_list and self._attention_inside(child))
            if stack is not None and child is stack:
                seen_stack = True
            child_side = side if stack is None or child is stack else ("after" if seen_stack else "before")
            self.visit(f"{name}.{cname}" if name else cname, child, module, here, child_in_layer, child_side)

    def _layer_stack(self, module: nn.Module) -> nn.Module | None:
        """The child of ``module`` that is a stack of Transformer layers or else holds one (a body
        that a head sits beside), if it has one."""
        children = list(module.children())
        return (next((c for c in children if self._is_stack(c)), None)
                or next((c for c in children if any(self._is_stack(m) for m in c.modules())), None))

    def _is_stack(self, module: nn.Module) -> bool:
        """Whether ``module`` is a container of Transformer layers (None entries skipped, nested
        lists allowed): a ModuleList or Sequential with attention in an entry, or a ModuleDict of
        layers only (a dict also groups unlike parts: ``{"encoder": ..., "decoder": ...}``)."""
        if not isinstance(module, _CONTAINERS):
            return False
        entries = list(module.children())
        if isinstance(module, nn.ModuleDict):
            # A layer holds attention but no stack of layers (an encoder does).
            return bool(entries) and all(
                self._attention_inside(e) and not any(self._is_stack(m) for m in e.modules() if m is not e)
                for e in entries)
        return any(self._attention_inside(e) for e in entries)

    def _fallback(self, pname: str, module: nn.Module, in_layer: bool, side: str | None = None) -> str | None:
        # Inside a Transformer layer, what is not attention, routing, experts or a norm is the
        # feed-forward part (OPT's fc1/fc2, BERT's output.dense); a lone scalar is "other".
        if _TOKEN_PARAMS.search(pname):
            return "embedding"  # ViT's cls_token, XLNet's mask_emb, a pos_embed parameter
        param = getattr(module, pname)
        if in_layer:
            return "feedforward" if _is_projection(module) else "other"
        if param.ndim <= 1 and not _is_projection(module):
            return "other"  # a scale or bias of the residual stream (a layer's bias goes with its weight)
        if _is_projection(module) and id(module.weight) in self.table_ids and not isinstance(module, nn.Embedding):
            return "unembedding"  # a head tied to an embedding table, wherever it sits
        if side is not None and _is_projection(module):
            # A projection beside a stack of layers: before it, the stack's input stem (a speech
            # encoder's input_linear, an upsampler); after it, the stack's output head (CTC outputs).
            return "embedding" if side == "before" else "unembedding"
        return None


def _is_projection(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.ndim >= 2


def structural_components(model: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Each parameter's component from what its modules are (no names needed), and the names
    structure could not place. Covers every parameter, frozen and tied aliases included.

        >>> from torch import nn
        >>> block = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
        >>> comp, unplaced = structural_components(nn.ModuleDict({"emb": nn.Embedding(10, 8), "layers": nn.ModuleList([block])}))
        >>> comp["layers.0.self_attn.in_proj_weight"], comp["layers.0.linear1.weight"], comp["layers.0.norm1.weight"], unplaced
        ('attention', 'feedforward', 'other', [])
    """
    walk = _walk(model)
    return walk.out, walk.unplaced


def _walk(model: nn.Module) -> _Walk:
    walk = _Walk(model)
    walk.visit("", model, None, None, False)  # fills walk.out, walk.unplaced and walk.why
    return walk


# --- Public API ----------------------------------------------------------------------------


def pick_rule_set(model: nn.Module) -> RuleSet | None:
    """The first built-in rule set in ``RULE_SETS`` whose ``detect`` accepts ``model``, or
    ``None`` (then structure alone labels it)."""
    inner = _unwrap(model)
    names = [name for name, _ in inner.named_parameters(remove_duplicate=False)]
    return next((r for r in RULE_SETS if r.detect(inner, names)), None)


def classify(model: nn.Module, rules: Sequence[Rule] | None = None, *, strict: bool = False,
             tied: str | None = DEFAULT_TIED) -> dict[str, str]:
    """Map every trainable parameter name of ``model`` to its component.

        comp = rlrs.components.classify(model)
        comp = rlrs.components.classify(model, rules=[(r"\\.moe\\.w_gate$", "router")])

    Keys are the names from ``model.named_parameters(remove_duplicate=False)`` whose tensor has
    ``requires_grad``; tied aliases (GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``)
    each get an entry. A tensor shared by the embedding and the unembedding gets ``tied`` under
    every name (by default :data:`DEFAULT_TIED`, what ``rlrs.param_groups`` trains it as; a plan's
    ``tied`` overrides both); ``tied=None`` labels each alias by its own module instead (see
    ``tied_parameters``). Frozen parameters are left out.

    ``rules`` (``(regex, component)`` pairs) are tried first, in order; then the family rule set
    ``pick_rule_set`` finds, then the model's structure (:func:`structural_components`). A rule
    of yours that matches no parameter is fine (a rule list can be reused across models) unless
    ``strict=True``. Raises ``ClassificationError`` for a malformed rule, and for parameters
    that nothing can place, naming every one of them.
    """
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    trainable = [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    out: dict[str, str] = {}
    left = trainable

    compiled = _compile_rules(rules) if rules is not None else []
    if compiled:
        if strict:
            for regex, _, rule in compiled:
                if not any(regex.search(name) for name in all_names):
                    raise ClassificationError(
                        f"rule {_show_rule(rule)} matches no parameter of {type(model).__name__} (strict=True); "
                        f"parameter names are:\n{_list_names(all_names)}"
                    )
        left = _apply(compiled, trainable, out)
    if not left:  # user rules covered everything (or nothing is trainable)
        return _resolve_ties(model, out, tied)
    rule_set = pick_rule_set(model)
    if rule_set is not None:
        left = _apply(_compile_rules(rule_set.rules), left, out)
    if not left:
        return _resolve_ties(model, out, tied)
    walk = _walk(model)
    unplaced = [n for n in left if n not in walk.out]
    if unplaced:
        reasons = dict.fromkeys(walk.why[n] for n in unplaced if n in walk.why)  # each once, not per layer
        why = "".join(f"Structure cannot decide: {w}.\n" for w in reasons)
        raise ClassificationError(
            f"{len(unplaced)} trainable parameter(s) of {type(_unwrap(model)).__name__} could not be placed "
            f"by their module's structure{' or your rules' if rules else ''}"
            f"{f' or the {rule_set.name!r} rule set' if rule_set else ''}:\n{_list_names(unplaced)}\n{why}{_how_to_fix()}"
        )
    out.update({n: walk.out[n] for n in left})
    return _resolve_ties(model, out, tied)


def _resolve_ties(model: nn.Module, out: dict[str, str], tied: str | None) -> dict[str, str]:
    if tied is None:
        return out
    if tied not in ("embedding", "unembedding"):
        raise ConfigError(f"tied: {tied!r} is unknown; {closest(str(tied), ('embedding', 'unembedding'))}")
    for names in tied_parameters(model):
        if {out.get(n) for n in names} == {"embedding", "unembedding"}:
            out.update({n: tied for n in names})
    return out


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """Groups of trainable parameter names that share one tensor, e.g. GPT-2's tied head.

        >>> from torch import nn
        >>> gpt = nn.ModuleDict({"wte": nn.Embedding(10, 4), "lm_head": nn.Linear(4, 10, bias=False)})
        >>> gpt.lm_head.weight = gpt.wte.weight
        >>> tied_parameters(gpt)
        [('lm_head.weight', 'wte.weight')]

    Each group is a sorted tuple of two or more names; groups are sorted by their first name.
    A tensor can sit in only one optimizer param group, so callers must pick one component for
    a tied group even when ``classify`` labels its names differently.
    """
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            by_tensor.setdefault(id(param), []).append(name)
    return sorted(tuple(sorted(names)) for names in by_tensor.values() if len(names) >= 2)
