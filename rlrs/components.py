"""Which Transformer component each parameter belongs to.

RLRS gives every component (embedding, attention, router, ...) its own learning-rate schedule,
so the first step is to label every trainable parameter with its component::

    >>> comp = rlrs.components.classify(model)
    >>> comp["transformer.h.0.attn.c_attn.weight"]
    'attention'

Labels come from ordered ``(regex, component)`` rules searched (``re.search``) on parameter
names; the first matching rule wins. Built-in rule sets cover rlrs's own models, nanoGPT and the
Hugging Face GPT-2, Llama, Mistral, Qwen2, Mixtral and Qwen2-MoE families; the right one is
picked from the parameter names and ``model.config.model_type``. Your own rules go first, so
they override the built-ins and can cover any other model::

    >>> comp = rlrs.components.classify(model, rules=[(r"\\.ffn\\.", "feedforward")])

Nothing is guessed: a parameter no rule matches, or a rule of yours that matches nothing, raises
``ClassificationError`` naming it.

Imports only torch and the standard library: it belongs to the core. Hugging Face models are
recognised duck-typed (``model.config.model_type``), so transformers is never imported.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from .config import ConfigError, closest

__all__ = [
    "COMPONENTS",
    "Rule",
    "ClassificationError",
    "RuleSet",
    "RULE_SETS",
    "classify",
    "tied_parameters",
    "pick_rule_set",
]

COMPONENTS: tuple[str, ...] = (
    "embedding",
    "unembedding",
    "attention",
    "feedforward",
    "router",
    "experts",
    "other",
)



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


class ClassificationError(ValueError):
    """A parameter has no component, or a rule is invalid or matches nothing.

    The message names the offending parameters or rule and shows how to pass ``rules=``.
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
_ALIASES = {
    "mlp": "feedforward",
    "ffn": "feedforward",
    "ff": "feedforward",
    "attn": "attention",
    "head": "unembedding",
    "lm_head": "unembedding",
    "gate": "router",
    "gating": "router",
}

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
    return (
        "Pass rules for them; yours are tried first, in order, and the first match wins:\n"
        f"  {_EXAMPLE}\n"
        f"Components: {', '.join(COMPONENTS)}."
    )


def _is_pair(rule) -> bool:
    return (
        isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)
    )


def _show_rule(rule) -> str:
    # Shown the way it would be written, (r"\.ffn\.", "feedforward"), not with doubled escapes.
    if _is_pair(rule) and '"' not in rule[0] and not rule[0].endswith("\\"):
        return f'(r"{rule[0]}", "{rule[1]}")'
    return repr(rule)


def _compile_rules(rules: Sequence[Rule]) -> list[tuple[re.Pattern[str], str, Rule]]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ClassificationError(
            f"rules must be a sequence of (regex, component) pairs, got {type(rules).__name__}; "
            f"e.g. {_EXAMPLE}"
        )
    compiled = []
    for rule in rules:
        if not _is_pair(rule):
            raise ClassificationError(
                f"rule {_show_rule(rule)} is not a (regex, component) pair of strings; "
                f"e.g. {_EXAMPLE}"
            )
        pattern, component = rule
        if component not in COMPONENTS:
            raise ClassificationError(
                f"rule {_show_rule(rule)}: unknown component {component!r}; did you mean "
                f"{_closest_component(component)!r}? (components: {', '.join(COMPONENTS)})"
            )
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ClassificationError(f"rule {_show_rule(rule)}: invalid regex: {err}") from err
        compiled.append((regex, component, tuple(rule)))
    return compiled


def _apply(
    compiled: list[tuple[re.Pattern[str], str, Rule]], names: list[str], out: dict[str, str]
) -> list[str]:
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


# --- Public API ----------------------------------------------------------------------------


def pick_rule_set(model: nn.Module) -> RuleSet:
    """The first built-in rule set in ``RULE_SETS`` whose ``detect`` accepts ``model``.

        >>> rlrs.components.pick_rule_set(model).name
        'llama'

    Raises ``ClassificationError`` (listing the rule sets and how to pass rules) if none does.
    """
    inner = _unwrap(model)
    names = [name for name, _ in inner.named_parameters(remove_duplicate=False)]
    for rule_set in RULE_SETS:
        if rule_set.detect(inner, names):
            return rule_set
    raise ClassificationError(
        f"no built-in rule set recognises {type(inner).__name__} "
        f"(config.model_type={_model_type(inner)!r}). Built-in rule sets: "
        f"{', '.join(r.name for r in RULE_SETS)}.\n{_how_to_fix()}"
    )


def classify(model: nn.Module, rules: Sequence[Rule] | None = None) -> dict[str, str]:
    """Map every trainable parameter name of ``model`` to its component.

        >>> comp = rlrs.components.classify(model)
        >>> comp = rlrs.components.classify(model, rules=[(r"\\.moe\\.w_gate$", "router")])

    Keys are the names from ``model.named_parameters(remove_duplicate=False)`` whose tensor has
    ``requires_grad``; tied aliases (GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``)
    each get their own entry, which may differ: see ``tied_parameters``. Frozen parameters are
    left out.

    ``rules`` (``(regex, component)`` pairs) are tried first, in order, then the built-in rule
    set picked by ``pick_rule_set``; the first match wins. If your rules already cover every
    parameter, no built-in set is needed. Raises ``ClassificationError`` when a rule is
    malformed, when one of your rules matches no parameter name at all (frozen ones count, so a
    rule set can be reused after freezing), or when some parameter matches no rule.
    """
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    trainable = [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    out: dict[str, str] = {}
    left = trainable

    compiled = _compile_rules(rules) if rules is not None else []
    if compiled:
        for regex, _, rule in compiled:
            if not any(regex.search(name) for name in all_names):
                raise ClassificationError(
                    f"rule {_show_rule(rule)} matches no parameter of {type(model).__name__}; "
                    f"parameter names are:\n{_list_names(all_names)}"
                )
        left = _apply(compiled, trainable, out)
    if not left:  # user rules covered everything (or nothing is trainable): no detection
        return out

    try:
        rule_set = pick_rule_set(model)
    except ClassificationError:
        where = "match none of your rules" if rules else "need rules"
        raise ClassificationError(
            f"no built-in rule set recognises {type(_unwrap(model)).__name__} "
            f"(config.model_type={_model_type(_unwrap(model))!r}; built-in rule sets: "
            f"{', '.join(r.name for r in RULE_SETS)}), and {len(left)} trainable "
            f"parameter(s) {where}:\n{_list_names(left)}\n{_how_to_fix()}"
        ) from None

    left = _apply(_compile_rules(rule_set.rules), left, out)
    if left:
        raise ClassificationError(
            f"{len(left)} trainable parameter(s) of {type(model).__name__} match no rule "
            f"(built-in rule set {rule_set.name!r}"
            f"{' after your rules' if rules else ''}):\n{_list_names(left)}\n{_how_to_fix()}"
        )
    return out


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """Groups of trainable parameter names that share one tensor, e.g. GPT-2's tied head.

        >>> rlrs.components.tied_parameters(gpt2)
        [('lm_head.weight', 'transformer.wte.weight')]

    Each group is a sorted tuple of two or more names; groups are sorted by their first name.
    A tensor can sit in only one optimizer param group, so callers must pick one component for
    a tied group even when ``classify`` labels its names differently.
    """
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            by_tensor.setdefault(id(param), []).append(name)
    return sorted(tuple(sorted(names)) for names in by_tensor.values() if len(names) >= 2)
