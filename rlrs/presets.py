"""Named plans: the paper's tuned values and the uniform baseline.

    >>> from rlrs import presets
    >>> presets.get("paper-moe").router
    ComponentPlan(start=0.6, end=1.0, shape='cosine', weight_decay=None)
    >>> sorted(presets.PLANS)
    ['blockwise-dense', 'blockwise-moe', 'paper-dense', 'paper-moe', 'uniform', 'uniform-dense', 'uniform-moe']

``paper-moe`` is table 4 of the paper, ``paper-dense`` table 5; both use the paper's λ_base
(0.04 MoE, 0.06 dense), weight decay 0.1, 1% warmup and the η_base it found on its smallest
models (3e-3 MoE, 2e-3 dense; retune η_base for another model with ``rlrs lr-grid``). The baselines
keep every λ at 1 with the same λ_base, so that a comparison changes only the relative rates:
``uniform-moe`` pairs with ``paper-moe``, ``uniform-dense`` with ``paper-dense``; ``uniform`` is
``uniform-moe``. ``blockwise-moe``/``blockwise-dense`` are Blockwise LR's constant per-block
multipliers (arXiv 2502.19002), the static alternative a user might try instead.
"""

from __future__ import annotations

from typing import Callable

from .config import ConfigError, closest
from .plan import ComponentPlan as C
from .plan import Plan


def paper_moe() -> Plan:
    """Table 4: relative LRs for MoE (embedding 5→0.6, unembedding 0.6→0.4, router 0.6→1,
    experts 0.3→1.125, attention 1→1), λ_base 0.04, η_base 3e-3 (MoE 8×34M, table 1)."""
    return Plan(
        base_lr=3e-3,
        final_fraction=0.04,
        weight_decay=0.1,
        embedding=C(5.0, 0.6),
        unembedding=C(0.6, 0.4),
        router=C(0.6, 1.0),
        experts=C(0.3, 1.125),
        attention=C(1.0, 1.0),
    )


def paper_dense() -> Plan:
    """Table 5: relative LRs for dense models (embedding 5→0.6, unembedding 1→0.4,
    feed-forward 1→0.6, attention 1→0.2), λ_base 0.06, η_base 2e-3 (dense 34M, table 1)."""
    return Plan(
        base_lr=2e-3,
        final_fraction=0.06,
        weight_decay=0.1,
        embedding=C(5.0, 0.6),
        unembedding=C(1.0, 0.4),
        feedforward=C(1.0, 0.6),
        attention=C(1.0, 0.2),
    )


def uniform_moe() -> Plan:
    """The MoE baseline: every λ = 1, otherwise as ``paper-moe``."""
    return Plan(base_lr=3e-3, final_fraction=0.04, weight_decay=0.1)


def uniform_dense() -> Plan:
    """The dense baseline: every λ = 1, otherwise as ``paper-dense``."""
    return Plan(base_lr=2e-3, final_fraction=0.06, weight_decay=0.1)


def _blockwise(final_fraction: float) -> Plan:
    # Blockwise LR (Wang et al. 2025, arXiv 2502.19002) scales each block type's LR by a constant
    # (embedding 10, feed-forward 6, attention query/key 8 and value/output 4, norms 1). rlrs has
    # one attention component, so it takes 6, the mean over its four equal-sized matrices; the
    # untied output head and the MoE router are not among the paper's block types and keep 1.
    return Plan(
        base_lr=5e-4,
        final_fraction=final_fraction,
        weight_decay=0.1,
        embedding=C(10.0, 10.0),
        attention=C(6.0, 6.0),
        feedforward=C(6.0, 6.0),
        experts=C(6.0, 6.0),
    )


def blockwise_moe() -> Plan:
    """Blockwise LR's static multipliers on the MoE baseline's schedule (embedding 10, attention
    6, feed-forward and experts 6, others 1; η_base 5e-4, about 3e-3 / 6): the arm a user would try
    instead of a tuned plan. Retune η_base with ``rlrs lr-grid``."""
    return _blockwise(0.04)


def blockwise_dense() -> Plan:
    """``blockwise-moe`` on the dense baseline's schedule (λ_base 0.06)."""
    return _blockwise(0.06)


PLANS: dict[str, Callable[[], Plan]] = {
    "paper-moe": paper_moe,
    "paper-dense": paper_dense,
    "uniform": uniform_moe,
    "uniform-moe": uniform_moe,
    "uniform-dense": uniform_dense,
    "blockwise-moe": blockwise_moe,
    "blockwise-dense": blockwise_dense,
}


def default_plans(moe: bool) -> tuple[str, str]:
    """The uniform baseline and the paper's plan for a model type: what ``train``, ``compare``,
    ``tune`` and ``ablate`` use when no plan is given.

    >>> default_plans(moe=True)
    ('uniform-moe', 'paper-moe')
    """
    return ("uniform-moe", "paper-moe") if moe else ("uniform-dense", "paper-dense")


def get(name: str) -> Plan:
    """The named plan ``name``; an unknown name gets the closest valid one."""
    try:
        return PLANS[name]()
    except KeyError:
        raise ConfigError(f"plan {name!r} is unknown; {closest(name, PLANS)}") from None


def resolve(spec: str) -> Plan:
    """A named plan, or a path to a ``.toml``/``.json`` plan file."""
    if spec.endswith((".toml", ".json")):
        return Plan.load(spec)
    return get(spec)


# The name before model sizes (rlrs.models.SIZES) and plans were named apart; kept for one release.
PRESETS = PLANS
