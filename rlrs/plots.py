"""PNG plots of plans and runs (matplotlib, an optional extra: ``pip install 'rlrs[plot]'``).

    >>> from rlrs import presets
    >>> from rlrs.plots import plot_plan
    >>> plot_plan(presets.get("paper-moe"), total_steps=1000, path="lr.png")   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .components import COMPONENTS, component_names
from .config import require
from .files import atomic_write_bytes
from .plan import ComponentPlan, Plan

# One colour per component, the same in every figure.
COLORS = dict(zip(COMPONENTS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f")))


def _plt():
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_plan(
    plan: Plan,
    total_steps: int,
    path: str | Path,
    components: Sequence[str] = COMPONENTS,
    title: str | None = None,
    log: bool = True,
    rest: str | None = None,
) -> Path:
    """Every component's learning rate over training, from :meth:`Plan.lr`. ``components``:
    draw only these (the model's own, not all seven). ``log``: a log LR axis, on which λ_end
    differences (0.04 against 0.4 of η_base) are as visible as λ_start ones; the warmup's
    first step (LR 0) is then left out. ``rest``: also draw, in gray with this label, the LR of a
    component the plan leaves at λ_start = λ_end = 1 (for a model whose components rlrs does not
    know: a ``--command`` script's)."""
    components = component_names(components)
    plt = _plt()
    steps = np.unique(np.linspace(0, total_steps - 1, min(total_steps, 1000)).round().astype(int))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    drawn: list[list[float]] = []
    lines = [(comp, comp, COLORS[comp], plan) for comp in components]
    if rest is not None:
        lines.append(("other", rest, "#aaaaaa", replace(plan, other=ComponentPlan())))
    for comp, label, color, p in lines:
        lrs = [p.lr(comp, int(s), total_steps) for s in steps]
        # Components with the same schedule would hide each other: dash the later ones.
        style = (0, (4, 2 + 2 * sum(d == lrs for d in drawn)))
        xs, ys = np.asarray(steps), np.asarray(lrs)
        if log:
            xs, ys = xs[ys > 0], ys[ys > 0]
        ax.plot(xs, ys, label=label, color=color, lw=1.8, ls="-" if lrs not in drawn else style)
        drawn.append(lrs)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate" + (" (log scale)" if log else ""))
    ax.set_title(title or f"LR per component (η_base = {plan.base_lr:g}, λ_base = {plan.final_fraction:g})")
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    return _save(fig, path)


def plot_losses(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path: str | Path,
    ylabel: str = "eval loss",
    marks: Sequence[tuple[float, float, str]] = (),
    title: str | None = None,
) -> Path:
    """Loss curves: ``curves[name] = (steps, mean, spread or None)``; the band is mean ± spread.

    ``marks`` are ``(step, loss, text)`` annotations (the speed-up point, for instance).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for i, (name, (steps, mean, spread)) in enumerate(curves.items()):
        steps, mean = np.asarray(steps, float), np.asarray(mean, float)
        (line,) = ax.plot(steps, mean, label=name, lw=1.8, color=f"C{i}")
        if spread is not None:
            spread = np.asarray(spread, float)
            ax.fill_between(steps, mean - spread, mean + spread, alpha=0.2, color=line.get_color())
    for step, loss, text in marks:
        ax.axvline(step, color="k", ls=":", lw=1)
        ax.annotate(text, (step, loss), textcoords="offset points", xytext=(5, 12), fontsize=8)
    finite = np.concatenate([np.asarray(m, float) for _, m, _ in curves.values()])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        # The first evaluations (before training) sit far above the rest: zoom on what matters.
        lo, hi = finite.min(), np.percentile(finite, 90)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path, **savefig) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (rendered in memory first: a full disk never
    leaves half a PNG) and close it."""
    import io

    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", **savefig)
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path

