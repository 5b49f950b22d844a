"""The strategy zoo: the DALS paper's (arXiv 2604.27295) learning-rate strategies, RLRS and LLRD
as data, in one registry.

A :class:`Strategy` names an optimizer, the :class:`~rlrs.plan.Plan` that schedules its LR (the
shape in time, the factor by depth, the factor by component), and the wrappers around it
(Lookahead, SAM, the Grokfast gradient filter). :func:`build` turns one into an optimizer and a
:class:`~rlrs.optim.RelativeLR` for a model, so every strategy's LR goes through ``Plan.lr``::

    >>> import torch
    >>> from rlrs.zoo.strategies import STRATEGIES, build
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> s = STRATEGIES["cosine-sgd"]
    >>> s.generation, s.optimizer, s.plan.feedforward.shape
    (2, 'sgd', 'cosine')
    >>> opt = build(s, model, total_steps=100, rules=[(r".*", "feedforward")])
    >>> type(opt.optimizer).__name__, len(opt.optimizer.param_groups) > 0
    ('SGD', True)

Optimizers come from ``torch.optim`` (SGD, Adam, AdamW, RAdam) and the maintained
``pytorch_optimizer`` package (AdaBound, LARS, Lion, Lookahead, SAM, the Grokfast filter; the
``zoo`` extra); written here from the papers is only what no library has: DALS
(:mod:`rlrs.zoo.dals`), the slanted triangular shape (``Plan.warmup_from``), SGDR as a schedule
(``shape = "sgdr"``) and depth factors (:class:`rlrs.factors.DepthDecay`).

A model's components decide which λ each tensor follows; a task's classifier maps its input
layer to ``embedding``, its output layer to ``unembedding`` and the rest to ``feedforward``
(:mod:`rlrs.zoo.tasks`), so RLRS's λ (found for language models) apply by analogy there.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import config as _config
from .. import presets
from ..components import COMPONENTS, Rule
from ..config import ConfigError
from .dals import DALS, depth_fractions
from ..optim import RelativeLR, param_groups
from ..factors import DepthDecay, LoraPlus
from ..plan import ComponentPlan, Plan

OPTIMIZERS = ("sgd", "adam", "adamw", "radam", "adabound", "lars", "lion", "dals")
GENERATIONS = {
    1: "global fixed",
    2: "global schedule",
    3: "per-parameter adaptive",
    4: "layer-level",
    5: "joint layer × time",
}
ULMFIT_DEPTH = 1 / 2.6  # ULMFiT: each layer down gets the LR of the one above / 2.6
FINAL = 1e-3  # "cosine to 0": a plan's end LR must be > 0, so the decays end at 1e-3 of the peak


@dataclass(frozen=True)
class Strategy:
    """One learning-rate strategy.

    Fields:
        name: the registry key (``"dals-fast"``).
        title: how papers and tables write it (``"DALS-Fast"``).
        generation: the DALS paper's generation (1 to 5; see :data:`GENERATIONS`).
        paper: where it comes from.
        optimizer: one of :data:`OPTIMIZERS`.
        plan: the LR over time, depth and components (its ``base_lr`` is the strategy's η).
        options: the optimizer's keyword arguments besides ``lr`` and ``weight_decay``.
        lookahead: Lookahead's ``(k, alpha)`` around the optimizer.
        sam_rho: SAM's neighbourhood radius (the optimizer then takes SAM's second step).
        grokfast: the Grokfast-EMA filter's ``(alpha, lamb)`` on the gradients before each step.
        freeze: a regex; parameters whose names it matches are frozen (hard freezing).
        lora: LoRA's ``(rank, alpha)`` on ``model.encoder`` (a Hugging Face model) through PEFT:
            the encoder's own weights are frozen, the adapters and the head train.
        tasks: the tasks it applies to (``None``: every task); the fine-tuning strategies need a
            pretrained encoder.
    """

    name: str
    title: str
    generation: int
    paper: str
    optimizer: str
    plan: Plan
    options: tuple[tuple[str, Any], ...] = ()
    lookahead: tuple[int, float] | None = None
    sam_rho: float | None = None
    grokfast: tuple[float, float] | None = None
    freeze: str | None = None
    lora: tuple[int, float] | None = None
    tasks: tuple[str, ...] | None = None

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def __post_init__(self) -> None:
        if self.grokfast is not None and self.sam_rho is not None:
            raise ConfigError(f"strategy {self.name}: grokfast with sam_rho would filter each step's gradients twice "
                              "(SAM computes them twice); choose one")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: {self.optimizer!r} is unknown; {_config.closest(self.optimizer, OPTIMIZERS)}")
        if self.generation not in GENERATIONS:
            raise ConfigError(f"generation: 1 to 5, got {self.generation!r}")

    def with_base_lr(self, base_lr: float) -> "Strategy":
        """The same strategy at another η (every component's λ kept)."""
        return dataclasses.replace(self, plan=dataclasses.replace(self.plan, base_lr=base_lr))


def _uniform(base_lr: float, shape: str = "constant", warmup: float = 0.0, weight_decay: float = 0.0,
             final_fraction: float = 1.0, **plan: Any) -> Plan:
    """Every component on one schedule: the plan of a strategy that has no per-component rates."""
    c = ComponentPlan(1.0, 1.0, shape)
    return Plan(base_lr=base_lr, final_fraction=final_fraction, warmup=warmup, weight_decay=weight_decay,
                **plan, **{name: c for name in COMPONENTS})


def _rlrs(base_lr: float, weight_decay: float) -> Plan:
    # Table 5's dense λ at this η and decay: what RLRS brings to a model without experts.
    return dataclasses.replace(presets.get("paper-dense"), base_lr=base_lr, weight_decay=weight_decay)


def _uniform_cosine(base_lr: float) -> Plan:
    # RLRS's baseline: every λ 1, otherwise as table 5 (1% warmup, cosine to λ_base 0.06).
    return dataclasses.replace(_rlrs(base_lr, WD), **{c: ComponentPlan() for c in COMPONENTS})


FINETUNE_TASKS = ("gcide-pos", "shakespeare-genre")
LORA_TARGETS = ("query", "value")
SGD = (("momentum", 0.9),)
WD = 0.01  # the decoupled decay of the AdamW-family strategies (torch's default)


def _registry() -> dict[str, Strategy]:
    cos = dict(shape="cosine", final_fraction=FINAL)
    s = [
        Strategy("fixed-sgd", "Fixed SGD", 1, "Robbins and Monro 1951", "sgd", _uniform(0.05), SGD),
        Strategy("cosine-sgd", "Cosine SGD", 2, "Loshchilov and Hutter 2017 (arXiv 1608.03983), no restarts",
                 "sgd", _uniform(0.05, **cos), SGD),
        Strategy("sgdr", "SGDR", 2, "Loshchilov and Hutter 2017 (arXiv 1608.03983)", "sgd",
                 _uniform(0.05, shape="sgdr", final_fraction=FINAL, sgdr_first=1 / 7, sgdr_mult=2.0), SGD),
        Strategy("adam", "Adam", 3, "Kingma and Ba 2015 (arXiv 1412.6980)", "adam", _uniform(1e-3)),
        Strategy("adamw", "AdamW", 3, "Loshchilov and Hutter 2019 (arXiv 1711.05101)", "adamw",
                 _uniform(1e-3, weight_decay=WD)),
        Strategy("adabound", "AdaBound", 3, "Luo et al. 2019 (arXiv 1902.09843)", "adabound", _uniform(1e-3),
                 (("final_lr", 0.1),)),
        Strategy("lars", "LARS", 4, "You, Gitman and Ginsburg 2017 (arXiv 1708.03888)", "lars", _uniform(0.05),
                 # The paper's trust coefficient 0.001 goes with batch-scaled LRs of 1 to 30, which
                 # the vectors (biases: no trust ratio) do not survive here; 0.02 at SGD's η does.
                 (("momentum", 0.9), ("trust_coefficient", 0.02))),
        Strategy("discriminative", "Discriminative LR", 4, "Howard and Ruder 2018, ULMFiT (arXiv 1801.06146)",
                 "adamw", _uniform(1e-3, weight_decay=WD, factors=(DepthDecay(ULMFIT_DEPTH),))),
        Strategy("radam", "RAdam", 5, "Liu et al. 2020 (arXiv 1908.03265)", "radam", _uniform(1e-3)),
        Strategy("lion", "Lion", 5, "Chen et al. 2023 (arXiv 2302.06675)", "lion", _uniform(1e-4, weight_decay=0.1)),
        Strategy("lookahead-adamw", "Lookahead + AdamW", 5, "Zhang et al. 2019 (arXiv 1907.08610)", "adamw",
                 _uniform(1e-3, weight_decay=WD), lookahead=(5, 0.5)),
        Strategy("sam", "SAM", 5, "Foret et al. 2021 (arXiv 2010.01412)", "sgd", _uniform(0.05, **cos), SGD,
                 sam_rho=0.05),
        Strategy("grokfast", "Grokfast", 5, "Lee et al. 2024 (arXiv 2405.20233), EMA filter", "adamw",
                 _uniform(1e-3, weight_decay=WD), grokfast=(0.98, 2.0)),
        Strategy("stlr-discriminative", "STLR + Discriminative", 5, "Howard and Ruder 2018, ULMFiT (arXiv 1801.06146)",
                 "adamw", _uniform(1e-3, shape="linear", warmup=0.1, warmup_from=1 / 32, final_fraction=1 / 32,
                                   weight_decay=WD, factors=(DepthDecay(ULMFIT_DEPTH),))),
        Strategy("sam-discriminative", "SAM + Discriminative", 5, "Learning Rate Engineering (arXiv 2604.27295)", "sgd",
                 _uniform(0.05, factors=(DepthDecay(ULMFIT_DEPTH),), **cos), SGD, sam_rho=0.05),
        Strategy("dals", "DALS", 5, "Learning Rate Engineering (arXiv 2604.27295)", "dals",
                 _uniform(0.03, warmup=0.05, **cos), (("momentum", 0.9), ("alpha", 0.6))),
        Strategy("dals-fast", "DALS-Fast", 5, "Learning Rate Engineering (arXiv 2604.27295)", "dals",
                 _uniform(0.05, warmup=0.02, **cos), (("momentum", 0.85), ("alpha", 0.6), ("fast", True))),
        # The DALS paper restarts DALS-Acc after 10, 20, 40 epochs of 80: here 1/7, 2/7, 4/7 of the
        # steps after warmup, on every task (the same proportions, three whole cycles). Its L2 decay
        # covers every tensor, biases too.
        Strategy("dals-acc", "DALS-Acc", 5, "Learning Rate Engineering (arXiv 2604.27295)", "dals",
                 _uniform(0.03, warmup=0.05, shape="sgdr", final_fraction=FINAL, weight_decay=5e-4, decay_1d=True),
                 (("momentum", 0.9), ("alpha", 0.7))),
        # Beyond the DALS paper's list: the RLRS paper's baseline and method, and LLRD.
        Strategy("adamw-cosine", "AdamW, cosine (RLRS's baseline)", 2,
                 "Ludziejewski et al. 2025 (arXiv 2507.03526), uniform λ", "adamw", _uniform_cosine(1e-3)),
        Strategy("rlrs", "RLRS", 5, "Ludziejewski et al. 2025 (arXiv 2507.03526), table 5's λ", "adamw",
                 _rlrs(1e-3, WD)),
        Strategy("llrd", "LLRD", 5, "layer-wise LR decay (Clark et al. 2020, ELECTRA)", "adamw",
                 _uniform_cosine(1e-3).with_factor(DepthDecay(0.8))),
        # Fine-tuning a pretrained encoder (paper D.2): hard freezing against RLRS's continuous
        # alternative, and LoRA against LoRA+ (B's LR 16 times A's). Their η is on the scale of
        # the rest (AdamW's 1e-3); the fine-tuning tasks scale every η by 0.1, so full fine-tuning
        # runs at 1e-4 and LoRA, which needs about 10 times more, at 1e-3.
        Strategy("freeze-embedding", "Freeze the embedding", 5, "hard freezing (Howard and Ruder 2018; Sun et al. 2019)",
                 "adamw", _uniform_cosine(1e-3), freeze=r"(^|\.)embeddings\.", tasks=FINETUNE_TASKS),
        Strategy("rlrs-embedding", "RLRS, embedding at 0.1", 5,
                 "Ludziejewski et al. 2025 (arXiv 2507.03526), appendix D.2 (continuous freezing)", "adamw",
                 dataclasses.replace(_uniform_cosine(1e-3), embedding=ComponentPlan(0.1, 0.1)),
                 tasks=FINETUNE_TASKS),
        Strategy("full-ft", "Full fine-tuning", 5, "Devlin et al. 2019 (uniform λ, cosine)", "adamw",
                 _uniform_cosine(1e-3), tasks=FINETUNE_TASKS),
        Strategy("lora", "LoRA", 5, "Hu et al. 2021 (arXiv 2106.09685), r 8 on query and value", "adamw",
                 _uniform_cosine(1e-2), lora=(8, 16.0), tasks=FINETUNE_TASKS),
        Strategy("lora-plus", "LoRA+", 5, "Hayou et al. 2024 (arXiv 2402.12354), B at 16x", "adamw",
                 _uniform_cosine(1e-2).with_factor(LoraPlus(16.0)), lora=(8, 16.0), tasks=FINETUNE_TASKS),
    ]
    return {x.name: x for x in s}


STRATEGIES: dict[str, Strategy] = _registry()


def get(name: str) -> Strategy:
    """The strategy called ``name`` (an unknown name gets the closest valid one)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"strategy: {name!r} is unknown; {_config.closest(name, list(STRATEGIES))}") from None


@dataclass
class Built:
    """A strategy made concrete for one model: call :meth:`step` once per training step."""

    strategy: Strategy
    optimizer: torch.optim.Optimizer
    scheduler: RelativeLR
    grads: dict[str, torch.Tensor] | None = None  # the Grokfast filter's running average

    def step(self, model: nn.Module, loss_and_backward: Callable[[], torch.Tensor]) -> float:
        """One training step: gradients (twice for SAM), the filter, the update and the LR.
        ``loss_and_backward`` computes the batch's loss and calls ``backward`` on it."""
        opt, s = self.optimizer, self.strategy

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_and_backward()
            if s.grokfast is not None:
                self.grads = _grokfast()(model, self.grads, alpha=s.grokfast[0], lamb=s.grokfast[1])
            return loss

        if s.sam_rho is not None:  # SAM: gradients here, then its closure at the perturbed weights
            loss = closure()
            opt.step(closure)
        else:
            loss = opt.step(closure)
        self.scheduler.step()
        return float(loss.detach())


def _po():
    return _config.require("pytorch_optimizer", "zoo")


def _grokfast():
    return _po().optimizer.grokfast.gradfilter_ema


def _optimizer_class(name: str):
    po = _po() if name in ("adabound", "lars", "lion") else None
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "radam": torch.optim.RAdam, "dals": DALS,
            **({"adabound": po.AdaBound, "lars": po.LARS, "lion": po.Lion} if po else {})}[name]


def build(strategy: Strategy, model: nn.Module, total_steps: int, rules: Sequence[Rule] | None = None) -> Built:
    """The optimizer (with its wrappers) and the scheduler of ``strategy`` for ``model``."""
    plan = strategy.plan
    if strategy.freeze is not None:
        pattern = re.compile(strategy.freeze)
        for name, p in model.named_parameters():
            if pattern.search(name):
                p.requires_grad_(False)
    if strategy.lora is not None:
        _add_lora(model, *strategy.lora)
    groups = param_groups(model, plan, rules)
    if strategy.optimizer == "dals":  # DALS blends gradients by depth: one group per depth fraction
        groups = _split_by(groups, depth_fractions(model), model, "depth_fraction")
    cls = _optimizer_class(strategy.optimizer)
    kw = dict(strategy.options)
    accepted = inspect.signature(cls).parameters
    for key in kw:
        if key not in accepted or key in ("params", "lr", "weight_decay"):
            valid = [k for k in accepted if k not in ("params", "lr", "weight_decay", "kwargs")]
            raise ConfigError(f"strategy {strategy.name}: options.{key} is not an option of {cls.__name__} "
                              f"(lr and weight_decay come from the plan); {_config.closest(key, valid)}")
    if strategy.sam_rho is not None:
        opt: torch.optim.Optimizer = _po().SAM(groups, cls, rho=strategy.sam_rho, **kw)
    else:
        opt = cls(groups, **kw)
    if strategy.lookahead is not None:
        opt = _po().Lookahead(opt, k=strategy.lookahead[0], alpha=strategy.lookahead[1])
    return Built(strategy, opt, RelativeLR(opt, plan, total_steps))


def _add_lora(model: nn.Module, rank: int, alpha: float) -> None:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "config"):
        raise ConfigError(f"strategy lora: {type(model).__name__} has no Hugging Face model as .encoder to adapt; "
                          "LoRA strategies apply to the fine-tuning tasks (" + ", ".join(FINETUNE_TASKS) + ")")
    peft = _config.require("peft", "hf")
    with warnings.catch_warnings():
        # PEFT asks transformers a question transformers has renamed: a FutureWarning in every LoRA run, not the user's.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model.encoder = peft.get_peft_model(encoder, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                                      target_modules=list(LORA_TARGETS)))


def _split_by(groups: list[dict], value_of: dict[str, float], model: nn.Module, key: str) -> list[dict]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = []
    for g in groups:
        by_value: dict[float, list] = {}
        for p in g["params"]:
            by_value.setdefault(value_of[name_of[id(p)]], []).append(p)
        out += [{**g, "params": ps, key: v} for v, ps in sorted(by_value.items())]
    return out
