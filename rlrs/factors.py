"""Plan factors: multipliers that compose with a plan's schedules, the way optax chains transforms.

A :class:`~rlrs.plan.Plan` holds its core schedule (η_base, λ_base, warmup, each component's
λ_start, λ_end and shape) and one tuple, ``factors``; :meth:`Plan.lr <rlrs.plan.Plan.lr>` is the
one LR formula and applies them::

    lr = base_lr · [λ_m(t) · Π schedule factors(t)] · width · Π tensor factors(tensor)

Two kinds, each a small frozen dataclass whose value is a pure function of its arguments:

- a :class:`ScheduleFactor` scales component ``m``'s λ schedule itself (it is part of
  ``Plan.multiplier`` and ``Plan.schedule``): :class:`WidthWarmup`;
- a :class:`TensorFactor` scales the LR of some tensors, told apart by their
  :class:`TensorContext` (which the param groups carry): :class:`LoraPlus`, :class:`DepthDecay`.

``width`` is the parametrization's factor (muP: :func:`rlrs.models.width_factors`); it belongs
to the model, not to the plan, so it is an argument of ``Plan.lr``, not a plan factor.

    >>> from rlrs.plan import Plan
    >>> plan = Plan(base_lr=1e-3, factors=(LoraPlus(16.0), DepthDecay(0.5)))
    >>> plan.lr("attention", 500, 1000, lora_b=True, depth=2) == plan.lr("attention", 500, 1000) * 16.0 * 0.5**2
    True

A factor of your own composes in the same way, with no new field on ``Plan``::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class RouterBoost(TensorFactor):  # the router's LR twice its schedule's
    ...     def __call__(self, component, step, total_steps, tensor):
    ...         return 2.0 if component == "router" else 1.0
    >>> boosted = plan.with_factor(RouterBoost())
    >>> boosted.lr("router", 500, 1000) == 2.0 * plan.lr("router", 500, 1000)
    True

Plan files write each known factor (:data:`KNOWN`) under its own keys: the first field under
the factor's ``key`` (``lora_plus = 16.0``), every other field under ``key_field``
(``width_warmup_m = 4.0``); an absent factor is ``key = null`` (TOML leaves it out). These are the
keys plans had before factors were composed, so old plan files load and old runs keep their
names. Saving a plan with a factor that is not in :data:`KNOWN` is refused, naming it: add its
class to :data:`KNOWN` (one line, no ``Plan`` field) to make it savable.

Imports only the standard library and the core: it belongs to the core.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from . import config as _config
from .config import ConfigError
from .schedules import Constant, DecayAway, ExpRecovery, Schedule

if TYPE_CHECKING:
    from .plan import Plan


@dataclass(frozen=True)
class TensorContext:
    """What a :class:`TensorFactor` may know about a tensor: whether it is a LoRA B matrix
    (``lora_b``) and how many Transformer layers lie above it (``depth``). A param group carries
    both (:func:`rlrs.optim.param_groups`)."""

    lora_b: bool = False
    depth: int = 0


class Factor:
    """A multiplier composed into ``Plan.lr``: a :class:`ScheduleFactor` or a :class:`TensorFactor`.

    ``key``: its name in plan files (:data:`KNOWN` factors). ``check(plan)`` raises
    :class:`~rlrs.config.ConfigError` where the factor cannot apply to ``plan`` (default: it can).
    """

    key: ClassVar[str] = ""
    in_every_identity: ClassVar[bool] = False
    """Whether its keys enter a run's identity even while it is absent. Only LoRA+, whose key
    ``lora_plus = null`` was in every run's identity before the rule that a setting added later
    names a run only when it is set (:data:`rlrs.config.ADDED`)."""

    def check(self, plan: "Plan") -> None:
        pass


class ScheduleFactor(Factor):
    """Scales component ``m``'s λ schedule: ``schedule(plan, component, total_steps)`` is the
    factor as a pure function of the step (:mod:`rlrs.schedules`), multiplied into λ_m(t)."""

    def schedule(self, plan: "Plan", component: str, total_steps: int) -> Schedule:
        raise NotImplementedError(f"{type(self).__name__}.schedule")


class TensorFactor(Factor):
    """Scales the LR of some tensors: ``factor(component, step, total_steps, tensor)`` is a number
    > 0 for a tensor of ``component`` described by ``tensor`` (a :class:`TensorContext`).

    ``reads``: the :class:`TensorContext` fields it reads, so that the param groups tell those
    tensors apart (``"depth"``: one group per layer)."""

    reads: ClassVar[tuple[str, ...]] = ()

    def __call__(self, component: str, step: int, total_steps: int, tensor: TensorContext) -> float:
        raise NotImplementedError(f"{type(self).__name__}.__call__")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class LoraPlus(TensorFactor):
    """LoRA+ (Hayou et al., 2024, arXiv 2402.12354; the RLRS paper's appendix D.2): the LR of
    LoRA's B matrices is ``ratio`` times the A matrices' (their component's LR); LoRA+ uses 16.
    Plan files: ``lora_plus = 16.0``."""

    key: ClassVar[str] = "lora_plus"
    in_every_identity: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ("lora_b",)

    ratio: float

    def __post_init__(self) -> None:
        if not _positive(self.ratio):
            raise ConfigError(f"lora_plus: the B-to-A LR ratio, a number > 0 (16 in the LoRA+ paper), got {self.ratio!r}")

    def __call__(self, component: str, step: int, total_steps: int, tensor: TensorContext) -> float:
        return self.ratio if tensor.lora_b else 1.0


@dataclass(frozen=True)
class DepthDecay(TensorFactor):
    """Layer-wise LR decay (LLRD; ULMFiT's discriminative rates, Howard and Ruder, 2018, arXiv
    1801.06146) as a plan dimension: a tensor with ``d`` Transformer layers above it gets
    ``rate ** d`` times its component's LR (the top layer and the head 1, the embedding
    ``rate ** L``), so relative rates × depth is one plan. Plan files: ``depth_decay = 0.8``."""

    key: ClassVar[str] = "depth_decay"
    reads: ClassVar[tuple[str, ...]] = ("depth",)

    rate: float

    def __post_init__(self) -> None:
        if not _positive(self.rate):
            raise ConfigError(f"depth_decay: the LR factor per layer from the top, a number > 0 (LLRD: 0.65 to 0.95), "
                              f"got {self.rate!r}")

    def __call__(self, component: str, step: int, total_steps: int, tensor: TensorContext) -> float:
        return self.rate ** tensor.depth


WIDTH_WARMUPS = ("decay-away", "exponential")
HIDDEN = ("attention", "feedforward", "experts")
"""The components :class:`WidthWarmup` applies to: muP's hidden matrices."""


@dataclass(frozen=True)
class WidthWarmup(ScheduleFactor):
    """Kosson et al.'s (2025, arXiv 2510.19093) replacement for the implicit warmup that muP's 1/m
    LR gives a width-m model's hidden matrices (attention, feed-forward, experts): a factor on their
    schedules that starts at ``1/m`` and recovers to 1, ``kind`` ``"decay-away"``
    (:class:`~rlrs.schedules.DecayAway`) or ``"exponential"`` (:class:`~rlrs.schedules.ExpRecovery`),
    with the per-step shrink
    ``a = 1 − base_lr · weight_decay`` (``1 − weight_decay`` with ``independent_wd``). ``m = 1``:
    no effect. Plan files: ``width_warmup = "decay-away"``, ``width_warmup_m = 4.0``."""

    key: ClassVar[str] = "width_warmup"

    kind: str
    m: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in WIDTH_WARMUPS:
            raise ConfigError(f"width_warmup: {self.kind!r} is unknown; "
                              f"{_config.closest(str(self.kind), WIDTH_WARMUPS)} (or unset for none)")
        if not (isinstance(self.m, (int, float)) and not isinstance(self.m, bool) and math.isfinite(self.m)
                and self.m >= 1.0):
            raise ConfigError(f"width_warmup_m: the width multiplier, a number >= 1, got {self.m!r}")

    def check(self, plan: "Plan") -> None:
        for name in HIDDEN:
            if not plan.weight_decay_of(name) > 0:
                raise ConfigError(f"width_warmup: its recovery runs at the weight decay's pace, and {name} has "
                                  "weight decay 0; give it (or plan.weight_decay) a value > 0")

    def schedule(self, plan: "Plan", component: str, total_steps: int) -> Schedule:
        if component not in HIDDEN:
            return Constant(1.0)
        wd = plan.weight_decay_of(component)
        a = 1.0 - (wd if plan.independent_wd else plan.base_lr * wd)
        return (DecayAway if self.kind == "decay-away" else ExpRecovery)(self.m, a)


KNOWN: tuple[type[Factor], ...] = (LoraPlus, WidthWarmup, DepthDecay)
"""The factors plan files can hold, in the order they are written (and applied in ``Plan.lr``)."""


def order(factors: tuple[Factor, ...]) -> tuple[Factor, ...]:
    """``factors`` in the order ``Plan.lr`` applies them: :data:`KNOWN` order, then others as given.
    Raises naming the problem where one is not a factor or two are of one kind."""
    seen: set[type] = set()
    for f in factors:
        if not isinstance(f, (ScheduleFactor, TensorFactor)):
            raise ConfigError(f"factors: {f!r} is not a plan factor; give instances of rlrs.factors.ScheduleFactor "
                              "or TensorFactor subclasses (e.g. rlrs.factors.LoraPlus(16.0))")
        try:
            hash(f)
        except TypeError:
            raise ConfigError(f"factors: {type(f).__name__} is not hashable; make it a frozen dataclass "
                              "(@dataclass(frozen=True)): a plan is compared, hashed and cached") from None
        if type(f) in seen:
            raise ConfigError(f"factors: two {type(f).__name__} factors; keep one (their product is one factor)")
        seen.add(type(f))
    rank = {cls: i for i, cls in enumerate(KNOWN)}
    return tuple(sorted(factors, key=lambda f: rank.get(type(f), len(KNOWN))))


# --- plan files -------------------------------------------------------------------------------------


def _keys(cls: type[Factor]) -> list[tuple[str, dataclasses.Field, Any]]:
    """``(plan-file key, field, value while absent)`` for each field of factor class ``cls``."""
    fields = dataclasses.fields(cls)
    out = [(cls.key, fields[0], None)]
    out += [(f"{cls.key}_{f.name}", f, f.default) for f in fields[1:]]
    return out


class PlanFileKeys:
    """How ``Plan.factors`` is written in plan files: as the flat keys of the :data:`KNOWN`
    factors (:func:`rlrs.config.flat`; :func:`rlrs.config.to_dict`, ``from_dict`` and
    ``identity`` call it)."""

    def types(self) -> dict[str, Any]:
        """Each key and the type its value has in a file (a factor's first key: ``None`` is absent)."""
        import typing

        out: dict[str, Any] = {}
        for cls in KNOWN:
            hints = typing.get_type_hints(cls)
            for i, (key, f, _) in enumerate(_keys(cls)):
                out[key] = hints[f.name] | None if i == 0 else hints[f.name]
        return out

    def dump(self, factors: tuple[Factor, ...], identity: bool) -> dict[str, Any]:
        """The keys of every known factor (an absent one at its absent values). For a run's
        ``identity``, only the keys that differ from absent (all of an ``in_every_identity`` one)."""
        unknown = [f for f in factors if type(f) not in KNOWN]
        if unknown:
            name = type(unknown[0]).__name__
            raise ConfigError(f"factors: {name} is not a factor plan files know, so this plan cannot be saved or name "
                              f"a run; add {name} to rlrs.factors.KNOWN (it adds no field to Plan)")
        by_class = {type(f): f for f in factors}
        out: dict[str, Any] = {}
        for cls in KNOWN:
            f = by_class.get(cls)
            for key, field, absent in _keys(cls):
                value = absent if f is None else getattr(f, field.name)
                if identity and not cls.in_every_identity and value == absent:
                    continue
                out[key] = value
        return out

    def load(self, values: Mapping[str, Any]) -> tuple[Factor, ...]:
        """The factors that ``values`` (keys from :meth:`types`, already type-checked) set."""
        out = []
        for cls in KNOWN:
            (main, main_field, _), *rest = _keys(cls)
            if values.get(main) is None:
                for key, _, absent in rest:
                    if values.get(key, absent) != absent:
                        raise ConfigError(f"{key}: {values[key]!r} has no effect without {main}; set {main} "
                                          f"or remove {key}")
                continue
            out.append(cls(**{f.name: values[key] for key, f, _ in [(main, main_field, None), *rest]
                              if key in values}))
        return tuple(out)


PLAN_FILE_KEYS = PlanFileKeys()
