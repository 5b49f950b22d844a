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
    leaves half a PNG) and close it. Every figure rlrs writes goes through here, so here it is made
    readable: constrained layout (titles, labels and legends get room instead of overlapping),
    tick labels thinned where they would collide (:func:`_declutter`), and the saved area grown
    to hold every label (never a cut one). :func:`text_problems` checks the result."""
    import io

    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.set_layout_engine("constrained")
        _declutter(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", **{"bbox_inches": "tight", "pad_inches": 0.08, **savefig})
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path


def _declutter(fig) -> None:
    """Thin the tick labels of every axis whose labels would touch each other (a log axis over
    less than a few decades labels its minor ticks: ``3×10⁴ 4×10⁴`` run together; a long linear
    one gets more labels than its width holds), and move a legend that covers data points."""
    from matplotlib import ticker

    axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]
    for axis in axes:
        if _log10(axis) and not isinstance(axis.get_major_locator(), ticker.FixedLocator):
            # Plain numbers, no labelled minor ticks: at 1, 2 and 5 × 10ⁿ (the paper's grid) over a
            # short range, at the powers of ten over more than two decades.
            low, high = sorted(axis.get_view_interval())
            decades = np.log10(high / low) if low > 0 else np.inf
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
            axis.set_major_formatter(ticker.FuncFormatter(_log_label))
            axis.set_minor_formatter(ticker.NullFormatter())
    for _ in range(3):  # each round: one draw, then thin every axis whose labels still touch
        fig.canvas.draw()
        crowded = [axis for axis in axes if _colliding(_drawn_tick_labels(axis))]
        for axis in crowded:
            if isinstance(axis.get_major_locator(), ticker.FixedLocator):
                for label in axis.get_ticklabels():
                    label.set_rotation(30)
                    label.set_horizontalalignment("right")
            elif _log10(axis):
                axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,)))
            else:
                n = max(2, len(_drawn_tick_labels(axis)) // 2)
                axis.set_major_locator(ticker.MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]))
        if not crowded:
            break
    # A legend over the data: first where matplotlib finds the emptiest corner, else beside the axes.
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not _covered(ax, legend):
            continue
        legend.set_loc("best")
        fig.canvas.draw()
        if _covered(ax, legend):
            legend.set_loc("upper left")
            legend.set_bbox_to_anchor((1.01, 1.0), transform=ax.transAxes)
            fig.canvas.draw()


def _log10(axis) -> bool:
    """A base-10 log axis (a base-2 one, e.g. widths, keeps its own powers-of-two labels)."""
    return axis.get_scale() == "log" and getattr(axis.get_transform(), "base", 10) == 10


def _log_label(x: float, pos=None) -> str:
    """``0.002``, ``5e+04`` -> ``2e-3``, ``5e4``: short, the paper's grid notation, no mathtext."""
    if x <= 0:
        return ""
    if 1e-2 <= x < 1e4:
        return f"{x:g}"
    mant, exp = f"{x:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def _drawn_tick_labels(axis) -> list:
    """The tick labels the last draw showed (ticks outside the view are not drawn)."""
    ticks = axis._update_ticks()  # what Axis.draw draws; no public equivalent
    return [lab for t in ticks for lab in (t.label1, t.label2) if lab.get_visible() and lab.get_text()]


def _colliding(labels: Sequence) -> bool:
    boxes = [lab.get_window_extent() for lab in labels]
    return any(_touch(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _touch(a, b, gap: float = 2.0) -> bool:
    """Whether two text boxes overlap or stand closer than ``gap`` pixels (``3×10⁴4×10⁴`` reads as one)."""
    return a.padded(gap / 2).overlaps(b.padded(gap / 2))


def text_problems(fig) -> list[str]:
    """Why ``fig`` is hard to read, as saved by :func:`_save`: one line per pair of texts that
    overlap (tick labels, axis labels, titles, legend entries, annotations) and per legend that
    covers plotted data points. Empty when every label stands clear.

        >>> problems = text_problems(fig)      # doctest: +SKIP
        >>> assert not problems, problems
    """
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    fig.canvas.draw()
    texts: list[tuple[str, object]] = [("figure text", t) for t in fig.texts]  # the suptitle is one of them
    legends = list(fig.legends)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for t in (ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)):
            if t is not None:
                texts.append(("title", t))
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            texts.append((f"{name} label", axis.label))
            texts += [(f"{name} tick", lab) for lab in _drawn_tick_labels(axis)]
        texts += [("annotation", t) for t in ax.texts]
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for leg in legends:
        texts += [("legend", t) for t in leg.get_texts()]
    shown = [(kind, t, t.get_window_extent()) for kind, t in texts
             if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]
    problems = []
    page = fig.bbox.padded(1)
    for kind, t, box in shown:
        if box.x0 < page.x0 or box.y0 < page.y0 or box.x1 > page.x1 or box.y1 > page.y1:
            problems.append(f"{kind} {t.get_text()!r} is cut by the figure's edge")
    for i, (ka, a, ba) in enumerate(shown):
        for kb, b, bb in shown[i + 1:]:
            if _touch(ba, bb):
                problems.append(f"{ka} {a.get_text()!r} overlaps {kb} {b.get_text()!r}")
    for leg in legends:
        if isinstance(leg, Legend) and leg.axes is not None and leg.axes is not fig:
            problems += [f"the legend covers data of {name!r}" for name in _covered(leg.axes, leg)]
    return problems


def _covered(ax, legend) -> list[str]:
    """The labels of the lines of ``ax`` that run under ``legend`` (as last drawn)."""
    box = legend.get_window_extent()
    names = []
    for line in ax.get_lines():
        path = line.get_path()
        if len(path.vertices) > 1:  # points along each segment too: a line can cross a box between its points
            path = path.interpolated(20)
        xy = line.get_transform().transform(path.vertices)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if xy.size and box.count_contains(xy) > 0:
            names.append(line.get_label())
    return names
