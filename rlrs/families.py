"""Which model families rlrs's component detection covers, measured on transformers itself.

    >>> from rlrs.families import survey
    >>> outcomes = survey("causal")                               # doctest: +SKIP
    >>> [o.model_type for o in outcomes if not o.classified]      # doctest: +SKIP

Every class of one of transformers' auto mappings (causal LM, masked LM, seq2seq LM) and a few
vision Transformers is built from its default config with 2 layers on the ``meta`` device (no
memory, no download), classified, and checked: every trainable tensor in exactly one param
group, an embedding, attention and a feed-forward or experts component, a router and experts in
every MoE, and the output head in ``unembedding`` unless it is tied to the input embedding.
``tests/test_families.py`` asserts it; ``scripts/families.py`` writes ``docs/families.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .components import ClassificationError, classify, tied_parameters
from .config import require
from .optim import param_groups
from .plan import Plan

KINDS = {
    "causal": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    "masked": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
    "seq2seq": ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
    "vision": (None, "AutoModelForImageClassification"),
}
VISION_TYPES = ("vit", "deit", "beit", "dinov2", "swin")
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "encoder_layers",
              "decoder_layers", "num_encoder_layers")
# Classes without a part the checks expect, by design: pure state-space models (a Mamba block
# mixes tokens and has no feed-forward part) and FNet (its Fourier token mixing has no parameters).
EXEMPT = {"mamba": "neither feedforward nor experts", "mamba2": "neither feedforward nor experts",
          "falcon_mamba": "neither feedforward nor experts", "fnet": "no attention"}
# Classes with parameters no structural rule can place without guessing: they need rules=.
# (Empty with transformers 5.24; tests/test_families.py keeps the list honest.)
NEEDS_RULES: dict[str, str] = {}
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")


@dataclass
class Outcome:
    """One model class: whether it could be built tiny offline, and what classification found."""

    kind: str
    model_type: str
    class_name: str = ""
    built: bool = False
    classified: bool = False
    reason: str = ""  # why it was not built or not classified
    components: set[str] = field(default_factory=set)
    moe: bool = False
    found: list[str] = field(default_factory=list)  # broken invariants

    def problems(self) -> list[str]:
        """The broken checks, less what this class lacks by design (``EXEMPT``)."""
        return [p for p in self.found if EXEMPT.get(self.model_type) != p]


def _shrink(config) -> None:
    # 2 layers; 4 for an MoE, whose first layers are often dense (first_k_dense_replace = 2,
    # or every 4th layer sparse).
    n = 4 if _is_moe(config) else 2
    for cfg in (config, *(getattr(config, k, None) for k in ("text_config", "decoder", "encoder", "vision_config"))):
        if cfg is None or not hasattr(cfg, "to_dict"):
            continue
        for key in LAYER_KEYS:
            if isinstance(getattr(cfg, key, None), int):
                setattr(cfg, key, n)


def _is_moe(config) -> bool:
    if getattr(config, "is_moe", None) is False:  # Doge: an expert count, but a dense model unless is_moe
        return False
    for cfg in (config, getattr(config, "text_config", None)):
        for key in EXPERT_KEYS:
            n = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(n, int) and n > 1:
                return True
    return False


def _check(model, comp: dict[str, str]) -> list[str]:
    found = []
    present = set(comp.values())
    for need in ("embedding", "attention"):
        if need not in present:
            found.append(f"no {need}")
    if not present & {"feedforward", "experts"}:
        found.append("neither feedforward nor experts")
    try:
        groups = param_groups(model, Plan())
    except Exception as err:  # noqa: BLE001 - any failure is a broken invariant, reported by name
        return [*found, f"param_groups: {type(err).__name__}: {err}"]
    seen: dict[int, int] = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if set(seen) != trainable or any(n != 1 for n in seen.values()):
        found.append("a trainable tensor is in no param group, or in two")
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    if head is not None and getattr(head, "weight", None) is not None:
        tied = {n for group in tied_parameters(model) for n in group}
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is head.weight]
        for n in names:
            if n not in tied and comp.get(n) != "unembedding":
                found.append(f"output head {n} is {comp.get(n)!r}, not 'unembedding'")
    return found


def _model_types(kind: str) -> list[str]:
    if kind == "vision":
        return list(VISION_TYPES)
    from transformers.models.auto import modeling_auto

    return sorted(getattr(modeling_auto, KINDS[kind][0]))


def survey(kind: str) -> list[Outcome]:
    """Build, classify and check every model class of ``kind`` (a key of ``KINDS``)."""
    transformers = require("transformers", "hf")
    import torch

    transformers.logging.set_verbosity_error()
    auto = getattr(transformers, KINDS[kind][1])
    outcomes = []
    for model_type in _model_types(kind):
        o = Outcome(kind, model_type)
        outcomes.append(o)
        try:
            config = transformers.AutoConfig.for_model(model_type)
            _shrink(config)
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                model = auto.from_config(config)
        except Exception as err:  # noqa: BLE001 - the reason is the result: listed, never skipped
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            o.reason = f"cannot be built from its default config: {type(err).__name__}: {first[:160]}"
            continue
        o.built, o.class_name, o.moe = True, type(model).__name__, _is_moe(config)
        try:
            comp = classify(model, tied=None)  # each alias by its own module, as the table lists them
        except ClassificationError as err:
            unplaced = [ln.strip() for ln in str(err).splitlines()[1:] if ln.startswith("  ")][:3]
            o.reason = "needs rules for: " + ", ".join(unplaced)
            continue
        o.classified = True
        o.components = set(comp.values())
        o.found = _check(model, comp)
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    """The table ``docs/families.md`` holds."""
    lines = ["| kind | model type | class | components | result |", "|---|---|---|---|---|"]
    order = ("embedding", "unembedding", "attention", "feedforward", "router", "experts", "other")
    for o in outcomes:
        comps = ", ".join(c for c in order if c in o.components)
        if o.classified:
            result = "broken: " + "; ".join(o.problems()) if o.problems() else "✓"
            if o.model_type in EXEMPT:
                result += f" ({EXEMPT[o.model_type]}, by design)"
        else:
            result = o.reason
        lines.append(f"| {o.kind} | `{o.model_type}` | {o.class_name or '—'} | {comps or '—'} | {result} |")
    return "\n".join(lines) + "\n"
