"""The plan: the whole relative-LR recipe as data.

A :class:`Plan` holds η_base (``base_lr``), λ_base (``final_fraction``), the warmup fraction, weight
decay, and for each component its λ_start (``start``), λ_end (``end``), schedule ``shape`` and
optional weight decay. It is a frozen dataclass: compare, hash, save and load it::

    >>> from rlrs.plan import Plan, ComponentPlan
    >>> plan = Plan(base_lr=3e-3, final_fraction=0.04, router=ComponentPlan(start=0.6, end=1.0))
    >>> plan.lr("router", step=0, total_steps=1000)    # warmup starts from 0
    0.0
    >>> round(plan.lr("router", step=10, total_steps=1000), 12)  # end of the 1% warmup: η·λ_start
    0.0018
    >>> round(plan.lr("router", step=999, total_steps=1000), 12)  # last step: η·λ_base·λ_end
    0.00012
    >>> Plan.from_dict(plan.to_dict()) == plan
    True

The one line that turns a plan into a learning rate is :meth:`Plan.lr`; the scheduler, the logs,
the plots and the tuner all call it. Width, depth and LoRA+ factors (and any later one) compose
with it from ``Plan.factors`` (:mod:`rlrs.factors`), adding no field to ``Plan``::

    >>> from rlrs.factors import DepthDecay
    >>> deep = plan.with_factor(DepthDecay(0.8))      # LLRD: × 0.8 per layer above the tensor
    >>> deep.lr("router", 500, 1000, depth=2) == plan.lr("router", 500, 1000) * 0.8**2
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import config as _config
from . import files
from .components import COMPONENTS
from .config import ConfigError
from .factors import PLAN_FILE_KEYS, Factor, ScheduleFactor, TensorContext, TensorFactor, order
from .schedules import (Constant, Cosine, Linear, Product, Schedule, cosine_restarts, stable_then_decay,
                        warmup_then)

SHAPES = ("cosine", "linear", "constant", "wsd", "sgdr")
"""Schedule shapes after warmup: the paper's ``cosine``; ``linear`` decay; ``constant`` (holds
λ_start); ``wsd`` (warmup-stable-decay: holds λ_start, then decays linearly over the last
``Plan.wsd_decay`` of training); ``sgdr`` (cosine with warm restarts, cycles of
``Plan.sgdr_first`` of training growing by ``Plan.sgdr_mult``)."""


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class ComponentPlan:
    """One component's relative schedule: λ_start, λ_end, shape and weight decay.

    ``weight_decay=None`` takes the plan's ``weight_decay``.
    """

    start: float = 1.0
    end: float = 1.0
    shape: str = "cosine"
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        _positive("start", self.start)
        _positive("end", self.end)
        if self.shape not in SHAPES:
            raise ConfigError(f"shape: {self.shape!r} is unknown; {_config.closest(self.shape, SHAPES)}")
        if self.shape == "constant" and self.end != 1.0:
            raise ConfigError(
                f"end: {self.end} has no effect with shape 'constant' (it holds start); "
                "set end = 1.0 or choose shape 'cosine'"
            )
        if self.weight_decay is not None and not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class Plan:
    """A relative learning-rate plan.

    Fields:
        base_lr: η_base, the reference peak learning rate.
        final_fraction: λ_base, the fraction of η_base at the end of training (paper: 0.04 MoE,
            0.06 dense).
        warmup: fraction of training steps spent in the linear warmup from 0 (paper: 0.01).
        warmup_from: where the warmup starts, as a fraction of λ_start (default 0; ULMFiT's
            slanted triangular LR starts at 1/32).
        weight_decay: AdamW weight decay for components that set none (paper: 0.1).
        decay_1d: whether 1-D tensors (norms, biases) are decayed too (default: not).
        independent_wd: decouple weight decay from the LR: each step a decayed tensor shrinks by
            ``weight_decay · shape(t)`` (``shape`` is the component's schedule with λ = 1), not by
            ``lr · weight_decay``. ``weight_decay`` is then a per-step fraction (about 1e-4, that is
            η_base times the coupled value), not 0.1.
        tied: which schedule a tensor shared by the embedding and the unembedding (tied weights)
            follows: ``"embedding"`` or ``"unembedding"``; unset, it follows ``"embedding"``
            (``rlrs.components.DEFAULT_TIED``, which says how that was measured).
        wsd_decay: fraction of training spent decaying, for components with shape ``wsd``.
        sgdr_first: the first cycle's length as a fraction of the steps after warmup, for
            components with shape ``sgdr`` (1/7 with ``sgdr_mult = 2``: three whole cycles).
        sgdr_mult: how much longer each ``sgdr`` cycle is than the one before (SGDR's T_mult).
        factors: multipliers composed into :meth:`lr` (:mod:`rlrs.factors`), at most one of each
            kind: :class:`~rlrs.factors.LoraPlus` (plan files: ``lora_plus``),
            :class:`~rlrs.factors.WidthWarmup` (``width_warmup``, ``width_warmup_m``),
            :class:`~rlrs.factors.DepthDecay` (``depth_decay``), or one of your own. Held in the
            order ``lr`` applies them.
        embedding … other: the per-component :class:`ComponentPlan`.
    """

    base_lr: float = 1e-3
    final_fraction: float = 0.1
    warmup: float = 0.01
    weight_decay: float = 0.1
    decay_1d: bool = False
    independent_wd: bool = False
    tied: str | None = None
    wsd_decay: float = 0.2
    factors: tuple[Factor, ...] = field(default=(), metadata=_config.flat(PLAN_FILE_KEYS))
    warmup_from: float = field(default=0.0, metadata=_config.ADDED)
    sgdr_first: float = field(default=1 / 7, metadata=_config.ADDED)
    sgdr_mult: float = field(default=2.0, metadata=_config.ADDED)
    embedding: ComponentPlan = field(default_factory=ComponentPlan)
    unembedding: ComponentPlan = field(default_factory=ComponentPlan)
    attention: ComponentPlan = field(default_factory=ComponentPlan)
    feedforward: ComponentPlan = field(default_factory=ComponentPlan)
    router: ComponentPlan = field(default_factory=ComponentPlan)
    experts: ComponentPlan = field(default_factory=ComponentPlan)
    other: ComponentPlan = field(default_factory=ComponentPlan)

    def __post_init__(self) -> None:
        _positive("base_lr", self.base_lr)
        _positive("final_fraction", self.final_fraction)
        if not (0.0 <= self.warmup < 1.0):
            raise ConfigError(f"warmup: a fraction of training in [0, 1), got {self.warmup!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        if self.independent_wd:
            # 1% per step halves a weight in ~70 steps: surely a coupled value (0.1) left in place.
            own = [(f"{c}.weight_decay", self.component(c).weight_decay) for c in COMPONENTS]
            for key, wd in [("weight_decay", self.weight_decay)] + [(k, v) for k, v in own if v is not None]:
                if wd >= 0.01:
                    raise ConfigError(f"{key}: {wd} is a per-step fraction with independent_wd and must be < 0.01 "
                                      "(typical: 1e-4, that is base_lr × the coupled value)")
        if self.tied not in (None, "embedding", "unembedding"):
            raise ConfigError(
                f"tied: {self.tied!r} is unknown; "
                f"{_config.closest(str(self.tied), ('embedding', 'unembedding'))}"
            )
        if not isinstance(self.factors, (tuple, list)):
            raise ConfigError(f"factors: a tuple of plan factors, got {self.factors!r}")
        # Held in the order lr applies them, so equal plans compare and hash equal.
        object.__setattr__(self, "factors", order(tuple(self.factors)))
        for f in self.factors:
            f.check(self)
        if not (0.0 <= self.warmup_from <= 1.0):
            raise ConfigError(f"warmup_from: a fraction of λ_start in [0, 1], got {self.warmup_from!r}")
        if not (0.0 < self.sgdr_first <= 1.0):
            raise ConfigError(f"sgdr_first: a fraction of training in (0, 1], got {self.sgdr_first!r}")
        if not (math.isfinite(self.sgdr_mult) and self.sgdr_mult >= 1.0):
            raise ConfigError(f"sgdr_mult: the cycle growth factor, a number >= 1, got {self.sgdr_mult!r}")
        if not (0.0 < self.wsd_decay <= 1.0):
            raise ConfigError(f"wsd_decay: a fraction of training in (0, 1], got {self.wsd_decay!r}")
        for name in COMPONENTS:
            c = getattr(self, name)
            for key, lr in (("start", self.base_lr * c.start), ("end", self.base_lr * self.final_fraction * c.end)):
                # Each factor is finite and > 0, but their product can still leave the float range.
                if not math.isfinite(lr) or lr < sys.float_info.min:
                    way = "overflows to inf" if not math.isfinite(lr) else "underflows to 0"
                    raise ConfigError(f"{name}.{key}: the learning rate base_lr × λ {way} ({lr!r}); "
                                      "choose base_lr and λ whose product is a usable learning rate")

    # --- lookup --------------------------------------------------------------------------------

    def component(self, name: str) -> ComponentPlan:
        """The :class:`ComponentPlan` of component ``name`` (an error names the closest)."""
        if name not in COMPONENTS:
            raise ConfigError(f"component {name!r} is unknown; {_config.closest(name, COMPONENTS)}")
        return getattr(self, name)

    def weight_decay_of(self, name: str) -> float:
        """The weight decay that component ``name`` uses."""
        wd = self.component(name).weight_decay
        return self.weight_decay if wd is None else wd

    def warmup_steps(self, total_steps: int) -> int:
        """Warmup length in steps: ``round(warmup · total_steps)``, and at least one step when
        ``warmup > 0`` (on a short run the 1% would round to none, and step 0 would start at
        the peak LR).

        >>> Plan(warmup=0.01).warmup_steps(1000), Plan(warmup=0.01).warmup_steps(40), Plan(warmup=0.0).warmup_steps(40)
        (10, 1, 0)
        """
        steps = round(self.warmup * total_steps)
        return max(1, steps) if self.warmup > 0 else steps

    def schedule(self, name: str, total_steps: int) -> Schedule:
        """Component ``name``'s multiplier of η_base as a pure function of the step (its λ
        schedule times the plan's schedule factors)."""
        return _schedule(self, name, total_steps)

    def multiplier(self, name: str, step: int, total_steps: int) -> float:
        """λ_m(t): component ``name``'s multiplier of η_base at ``step`` (schedule factors included)."""
        return _schedule(self, name, total_steps)(step)

    def lr(self, name: str, step: int, total_steps: int, lora_b: bool = False, width: float = 1.0,
           depth: int = 0) -> float:
        """Component ``name``'s learning rate at ``step``: the one LR formula of rlrs,
        ``base_lr · multiplier · width · Π tensor factors``.
        ``width``: the parametrization's factor for the component (muP: 1/m for hidden matrices;
        :func:`rlrs.models.width_factors`), multiplying its whole λ schedule.
        ``lora_b`` (a LoRA B matrix of that component) and ``depth`` (how many Transformer layers
        lie above the tensor) are the :class:`~rlrs.factors.TensorContext` the tensor factors read
        (:class:`~rlrs.factors.LoraPlus`, :class:`~rlrs.factors.DepthDecay`)."""
        lr = self.base_lr * self.multiplier(name, step, total_steps) * width
        if self.factors:
            tensor = TensorContext(lora_b, depth)
            for f in self.factors:
                if isinstance(f, TensorFactor):
                    lr *= f(name, step, total_steps, tensor)
        return lr

    def factor(self, kind: type[Factor]) -> Factor | None:
        """The plan's factor of class ``kind`` (``plan.factor(LoraPlus)``), or ``None``."""
        return next((f for f in self.factors if type(f) is kind), None)

    def with_factor(self, factor: Factor) -> "Plan":
        """This plan with ``factor`` added, in place of one of its class.

            >>> from rlrs.factors import LoraPlus
            >>> Plan().with_factor(LoraPlus(4.0)).with_factor(LoraPlus(16.0)).factors
            (LoraPlus(ratio=16.0),)
        """
        return dataclasses.replace(self, factors=tuple(f for f in self.factors if type(f) is not type(factor))
                                   + (factor,))

    def reads(self, field_name: str) -> bool:
        """Whether a tensor factor reads ``field_name`` of the :class:`~rlrs.factors.TensorContext`
        (``"lora_b"``, ``"depth"``): the param groups then tell those tensors apart."""
        return any(field_name in f.reads for f in self.factors if isinstance(f, TensorFactor))

    def decay_shape(self, name: str, step: int, total_steps: int) -> float:
        """The shape of component ``name``'s schedule with λ = 1 (for independent weight decay)."""
        c = self.component(name)
        unit = dataclasses.replace(c, start=1.0, end=1.0)
        return _build(self, unit, total_steps)(step)

    # --- io --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _config.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """Load strictly: unknown keys name the closest valid key; bad values name their field."""
        return _config.from_dict(cls, data, "plan")

    def dumps(self, suffix: str = ".toml") -> str:
        return _config.dumps(self.to_dict(), suffix)

    def save(self, path: str | Path) -> Path:
        """Write the plan as ``.toml`` or ``.json`` (atomically)."""
        path = Path(path)
        files.atomic_write_text(path, self.dumps(path.suffix))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan from a ``.toml`` or ``.json`` file."""
        data = _config.load_file(path)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


@functools.lru_cache(maxsize=4096)
def _schedule(plan: Plan, name: str, total_steps: int) -> Schedule:
    s = _build(plan, plan.component(name), total_steps)
    scaling = [f.schedule(plan, name, total_steps) for f in plan.factors if isinstance(f, ScheduleFactor)]
    return Product((s, *scaling)) if scaling else s


def _build(plan: Plan, c: ComponentPlan, total_steps: int) -> Schedule:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 2:
        raise ConfigError(f"total_steps: an integer >= 2, got {total_steps!r}")
    warm = plan.warmup_steps(total_steps)
    decay_steps = total_steps - 1 - warm
    if decay_steps < 1:
        raise ConfigError(
            f"warmup: {plan.warmup} of {total_steps} steps is {warm} warmup steps, which leaves no "
            f"step to decay; lower warmup below {(total_steps - 2) / total_steps:.3g} or train longer"
        )
    end = plan.final_fraction * c.end
    if c.shape == "cosine":
        after = Cosine(c.start, end, decay_steps)
    elif c.shape == "linear":
        after = Linear(c.start, end, decay_steps)
    elif c.shape == "constant":
        after = Constant(c.start)
    elif c.shape == "sgdr":
        after = cosine_restarts(c.start, end, max(1, round(plan.sgdr_first * decay_steps)), plan.sgdr_mult, decay_steps)
    else:  # wsd
        tail = max(1, min(decay_steps, round(plan.wsd_decay * total_steps)))
        after = stable_then_decay(c.start, decay_steps - tail, Linear(c.start, end, tail))
    return warmup_then(c.start, warm, after, plan.warmup_from * c.start)
