"""DALS: the depth- and progress-aware update rule of arXiv 2604.27295, written from its formulas (no library has it).

Every step, with the loss the step's closure returns:

- the loss's moving average ``L̄ ← 0.95 L̄ + 0.05 L`` gives the progress
  ``Δ = (L̄_prev − L̄) / |L̄_prev|``, and the phase: 0 while ``Δ > 0.01`` (fast), 1 while
  ``0.002 < Δ ≤ 0.01``, else 2 (a plateau);
- each tensor's filtered gradient ``g̃ ← α g̃ + (1 − α) g`` with ``α`` by phase:
  ``max(0.3, α₀ − 0.3)``, ``α₀``, ``min(0.9, α₀ + 0.1)`` (DALS-Fast: ``α = 0`` in phase 0);
- the depth blend ``ĝ = (0.3 + 0.4 d) g + (0.7 − 0.4 d) g̃`` with ``d`` the tensor's depth
  fraction (0 at the bottom layer, 1 at the top), plus L2 weight decay ``wd·θ``;
- the trust ratio ``r = clamp(0.02 ‖θ‖ / ‖ĝ‖, 0.2, 5)`` (1 when ``ĝ = 0``);
- heavy-ball momentum ``m ← μ m + ĝ`` and ``θ ← θ − η r m``.

The LR ``η`` is the group's ``lr``, so a plan's schedule drives it through
:class:`rlrs.optim.RelativeLR` like any optimizer's::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = DALS([{"params": [w], "lr": 0.1, "depth_fraction": 1.0}])
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = (w ** 2).sum()
    ...     loss.backward()
    ...     return loss
    >>> float(opt.step(closure)), opt.phase
    (3.0, 0)

A group's ``depth_fraction`` is its ``d`` (default 1: the top; :func:`depth_fractions` finds it
from layer names). Torch only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import ConfigError
from ..optim import layer_numbers

EMA = 0.95  # the loss average's memory
FAST, SLOW = 0.01, 0.002  # progress thresholds between phases 0/1 and 1/2
TRUST, CLAMP = 0.02, (0.2, 5.0)


def depth_fractions(model: nn.Module) -> dict[str, float]:
    """Each parameter's ``d = l / (L − 1)``: 0 in the bottom numbered layer (``layers.0.``), 1 in
    the top one; tensors below the first layer count as the bottom, after the last as the top.

        >>> m = nn.Sequential()
        >>> m.layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
        >>> {n: d for n, d in depth_fractions(m).items() if n.endswith("weight")}
        {'layers.0.weight': 0.0, 'layers.1.weight': 0.5, 'layers.2.weight': 1.0}
    """
    layer, n_layers = layer_numbers(model, "DALS", "name its layers so (its gradient blend goes by depth)")
    if n_layers == 1:
        return {n: 0.0 if l < 0 else 1.0 for n, l in layer.items()}
    return {n: max(l, 0) / (n_layers - 1) for n, l in layer.items()}


class DALS(torch.optim.Optimizer):
    """DALS (arXiv 2604.27295; see the module docstring). ``step`` needs the closure: the phase follows the loss.

    Args:
        params: tensors or param groups; a group's ``depth_fraction`` is its ``d`` in [0, 1].
        lr: η (DALS: 0.03, DALS-Fast: 0.05).
        momentum: μ (DALS: 0.9, DALS-Fast: 0.85).
        alpha: α₀, the filter strength of phase 1 (DALS: 0.6, DALS-Acc: 0.7).
        weight_decay: L2 decay added to the blended gradient before the trust ratio.
        fast: DALS-Fast's rule: no filtering in phase 0.
    """

    def __init__(self, params, lr: float = 0.03, momentum: float = 0.9, alpha: float = 0.6,
                 weight_decay: float = 0.0, fast: bool = False):
        for name, v, lo, hi in (("lr", lr, 0.0, float("inf")), ("momentum", momentum, 0.0, 1.0),
                                ("alpha", alpha, 0.0, 1.0), ("weight_decay", weight_decay, 0.0, float("inf"))):
            if not (lo <= v < hi) or v != v:
                raise ConfigError(f"DALS {name}: must be in [{lo}, {hi}), got {v!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, weight_decay=weight_decay, fast=fast,
                                      depth_fraction=1.0))
        for g in self.param_groups:
            if not (0.0 <= g["depth_fraction"] <= 1.0):
                raise ConfigError(f"DALS depth_fraction: a group's must be in [0, 1], got {g['depth_fraction']!r}")
        self.loss_avg: float | None = None
        self.progress: float | None = None
        self.phase = 0

    def filter_strength(self, group: dict) -> float:
        """α of ``group`` in the current phase."""
        a0 = group["alpha"]
        if self.phase == 0:
            return 0.0 if group["fast"] else max(0.3, a0 - 0.3)
        return a0 if self.phase == 1 else min(0.9, a0 + 0.1)

    def observe(self, loss: float) -> int:
        """Fold ``loss`` into the moving average and return the new phase."""
        if self.loss_avg is None:
            self.loss_avg = loss
            return self.phase
        prev, self.loss_avg = self.loss_avg, EMA * self.loss_avg + (1 - EMA) * loss
        self.progress = (prev - self.loss_avg) / abs(prev) if prev else 0.0
        self.phase = 0 if self.progress > FAST else 1 if self.progress > SLOW else 2
        return self.phase

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        if closure is None:
            raise ConfigError("DALS.step: pass the closure that computes the loss and its gradients; "
                              "the phase follows the loss")
        with torch.enable_grad():
            loss = closure()
        self.observe(float(loss))
        for group in self.param_groups:
            alpha, d, mu, wd = self.filter_strength(group), group["depth_fraction"], group["momentum"], group["weight_decay"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "filtered" not in state:  # the filter starts at the first gradient, not at 0
                    state["filtered"] = g.clone()
                    state["momentum"] = torch.zeros_like(p)
                filt = state["filtered"].mul_(alpha).add_(g, alpha=1 - alpha)
                blend = g * (0.3 + 0.4 * d) + filt * (0.7 - 0.4 * d)
                if wd:
                    blend.add_(p, alpha=wd)
                gnorm = blend.norm()
                ratio = torch.where(gnorm > 0, (TRUST * p.norm() / gnorm).clamp(*CLAMP), torch.ones_like(gnorm))
                m = state["momentum"].mul_(mu).add_(blend)
                p.sub_(m * (ratio * lr))
        return loss

    def state_dict(self):
        d = super().state_dict()
        d["dals"] = {"loss_avg": self.loss_avg, "progress": self.progress, "phase": self.phase}
        return d

    def load_state_dict(self, state_dict):
        extra = state_dict.get("dals", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "dals"})
        self.loss_avg, self.progress, self.phase = extra.get("loss_avg"), extra.get("progress"), extra.get("phase", 0)
