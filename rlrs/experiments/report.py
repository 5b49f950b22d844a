"""``report.md`` and PNG figures for ``rlrs compare``, from its result (``rlrs demo`` draws its
figure with :func:`plot_speedup`; lr-grid's report is :func:`rlrs.experiments.lr_grid.render`).

    >>> from rlrs.experiments import compare
    >>> res = compare.load("runs/c")                                   # doctest: +SKIP
    >>> [p.name for p in compare.render(res, "runs/c")]               # doctest: +SKIP
    ['loss.png', 'train_loss.png', 'lr_uniform-moe.png', ..., 'report.md']

Everything here reads the typed result (:class:`~rlrs.experiments.compare.CompareResult`, what
``results.json`` holds) by attribute; only ``train_loss.png`` reads more: the runs' own logs.

The figures: ``loss.png`` (mean ± std over seeds per arm, the speed-up marked: the paper's
figure 1), ``train_loss.png`` (every run's per-step training loss with loss spikes circled:
figure 2), ``lr_<arm>.png`` (every component's LR, from ``Plan.lr``), ``updates.png`` (per-component
update-to-weight ratio), ``router.png`` (MoE: expert-load entropy, largest expert's share, dropped
tokens). Only what the runs
logged is drawn: a ``--command`` script reports eval losses only, so it gets no ``train_loss.png``
and no ``updates.png``, and its LR figures show the components its plans set (:func:`lr_components`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .. import plots
from ..components import COMPONENTS
from ..files import atomic_write_text
from ..analysis import read_run
from ..engine import read_result, reason_line
from ..plan import ComponentPlan

if TYPE_CHECKING:  # annotations only: compare imports this module, not the other way round
    from .compare import ArmResult, CompareResult


def _diag_label(name: str, arm: ArmResult) -> str:
    # Diagnostics fall back to the runs that died when none finished: say so in the legend.
    return name if arm.seeds_finished else f"{name} (runs that diverged/failed)"


def _color(i: int) -> str:
    return f"C{i % 10}"


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    return {a: _color(i) for i, a in enumerate(arms)}


def _loss_name(metric: str) -> str:
    return "eval loss" if metric == "eval" else "train loss (mean over each 1% of steps)"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _where_measured(res: CompareResult) -> str:
    # A command's script chooses its own eval points (it reports them with rlrs.report).
    interval = res.eval_interval
    return "at the steps the script reports" if interval is None else f"at every {interval:.0%} of training"


def lr_text(x: float) -> str:
    mant, exp = f"{x:.0e}".split("e")  # 0.002 -> 2e-3, the paper's grid notation
    return f"{mant}e{int(exp)}"


# --- figures --------------------------------------------------------------------------------------


def plot_speedup(res: CompareResult, path: str | Path, note: str | None = None) -> Path:
    """Figure 1: each arm's mean loss ± std over seeds, the baseline's final loss as a dashed line
    and each arm's T_relative as a dotted one; the right panel zooms on the end of training.
    ``note``: a line under the title (``rlrs demo``: how η_base was chosen)."""
    plt = plots._plt()
    colors = arm_colors(list(res.arms))
    base = res.baseline
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=120, gridspec_kw={"width_ratios": [1.1, 1]})
    t_base = res.total_steps or 1
    measured = {a: s.speedup for a, s in res.speedups.items() if s.speedup is not None}
    rel_steps = [sp.t_relative for sp in measured.values() if sp.t_relative]
    x0 = min([0.5 * t_base, *(0.85 * t for t in rel_steps)])
    target = next((sp.target_loss for sp in measured.values()), None)
    visible = []
    for ax, zoom in zip(axes, (False, True)):
        for a, arm in res.arms.items():
            n, total = len(arm.seeds_finished), len(arm.seeds)
            label = f"{a}{' (baseline)' if a == base else ''}, {n}/{total} seed{'s' * (total > 1)}"
            if arm.curve is None:
                ax.plot([], [], color=colors[a], ls="--", label=f"{a}: every run diverged/failed")
                continue
            steps = np.asarray(arm.curve.steps, float)
            mean, std = np.asarray(arm.curve.mean, float), np.asarray(arm.curve.std, float)
            ax.plot(steps, mean, color=colors[a], lw=2 if a == base else 1.8, label=label)
            if n > 1:
                ax.fill_between(steps, mean - std, mean + std, color=colors[a], alpha=0.18, lw=0)
            if zoom:
                keep = steps >= x0
                visible += [*(mean - std)[keep], *(mean + std)[keep]]
        if target is not None:
            ax.axhline(target, color=colors[base], ls="--", lw=1, alpha=0.8,
                       label=f"baseline final loss {target:.3f}" if zoom else None)
        for a, sp in measured.items():
            if sp.t_relative:
                ax.axvline(sp.t_relative, color=colors[a], ls=":", lw=1.3)
                if zoom:
                    ax.plot(sp.t_relative, target, "o", color=colors[a], ms=6, zorder=5)
                    # Below the baseline's final loss and before T_relative no mean curve runs (the
                    # arm first gets there at T_relative): the label covers nothing there.
                    left = sp.t_relative - x0 > 0.3 * (t_base - x0)
                    ax.annotate(f"{a}: {sp.percent:+.1f}%\nstep {sp.t_relative} vs {sp.t_base}",
                                (sp.t_relative, target), textcoords="offset points", xytext=(-7 if left else 7, -26),
                                ha="right" if left else "left", fontsize=8.5, color=colors[a], fontweight="bold",
                                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": colors[a], "alpha": 0.9})
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left, right = axes
    left.set_ylabel(_loss_name(res.metric))
    finite = np.concatenate([np.asarray(a.curve.mean, float) for a in res.arms.values() if a.curve is not None] or [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        # The first measurements sit far above the rest: show from 90% of the way down.
        lo, hi = finite.min(), np.percentile(finite, 90)
        left.set_ylim(lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1))
    _mark_spikes(left, res, colors)
    left.set_title("whole run")
    right.set_xlim(x0, t_base * 1.01)
    vis = np.asarray(visible, float)
    vis = vis[np.isfinite(vis)]
    if vis.size:
        lo, hi = vis.min(), vis.max()
        if target is not None and math.isfinite(target):
            lo, hi = min(lo, target), max(hi, target)
        right.set_ylim(lo - 0.08 * (hi - lo or 1), hi + 0.15 * (hi - lo or 1))
    right.set_title("end of training (zoom)")
    without = [a for a, s in res.speedups.items() if s.speedup is None or s.speedup.percent is None]
    for i, a in enumerate(without):  # one line each, stacked up from the bottom left
        why = "no speed-up" if res.arms[a].curve is not None else "no speed-up (all runs diverged/failed)"
        right.annotate(f"{a}: {why}", (0.02, 0.04 + 0.06 * i), xycoords="axes fraction", fontsize=8, color=colors[a])
    right.legend(frameon=False, fontsize=8, loc="upper right")
    seeds = res.seeds
    fig.suptitle(f"{res.preset}: {_loss_name(res.metric)}, mean ± std over "
                 f"{seeds} paired seed{'s' * (seeds > 1)}" + (f"\n{note}" if note else ""), fontsize=11)
    return plots._save(fig, path)


def _mark_spikes(ax, res: CompareResult, colors) -> None:
    import matplotlib.transforms as mtransforms

    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    n = 0
    for r in res.runs:
        for s in r.spikes:
            ax.plot(s.peak_step, 0.97, marker="v", color=colors[r.arm], ms=6, transform=trans, clip_on=False)
            n += 1
    if n:
        ax.plot([], [], "v", color="gray", label=f"loss spike ({n}; see train_loss.png)")
    ax.legend(frameon=False, fontsize=8, loc="upper right")


def plot_train_losses(
    res: CompareResult,
    series: Mapping[tuple[str, int], tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
) -> Path:
    """Figure 2: every run's per-step training loss (thin) with its smoothed trend, and the
    detected loss spikes circled."""
    plt = plots._plt()
    arms = list(res.arms)
    colors = arm_colors(arms)
    fig, ax = plt.subplots(figsize=(9, 4.4), dpi=120)
    values = []
    for a in arms:
        first = True
        for (arm, seed), (steps, loss) in series.items():
            if arm != a or not len(steps):
                continue
            steps, loss = np.asarray(steps, float), np.asarray(loss, float)
            ax.plot(steps, loss, color=colors[a], lw=0.6, alpha=0.35)
            ax.plot(steps, _smooth(loss, max(1, len(loss) // 40)), color=colors[a], lw=1.6,
                    label=f"{a} (thin: per step; bold: smoothed)" if first else None)
            first = False
            values.append(loss)
    allv = np.concatenate(values) if values else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    top = None
    if allv.size:
        lo, top = np.percentile(allv, 0.5), np.percentile(allv, 95)
        peaks = [s.peak_loss for r in res.runs for s in r.spikes]
        if peaks:
            top = max(top, min(max(peaks), top + 0.6 * (top - lo)))  # show spikes, not only their feet
        ax.set_ylim(lo - 0.05 * (top - lo or 1), top + 0.05 * (top - lo or 1))
    n = 0
    for r in res.runs:
        for s in r.spikes:
            y = s.peak_loss if top is None else min(s.peak_loss, top)
            ax.plot(s.peak_step, y, "o", mfc="none", mec="red", ms=9, mew=1.5)
            n += 1
    ax.plot([], [], "o", mfc="none", mec="red", label=f"loss spikes: {n}" if n else "no loss spikes detected")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{res.preset}: training loss of every run, loss spikes circled")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    return plots._save(fig, path)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred rolling mean over ``width`` points (narrower at the ends, NaN ignored): unlike an
    EMA it does not lag behind a falling loss."""
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    half = width // 2
    i = np.arange(len(x))
    lo, hi = np.clip(i - half, 0, len(x)), np.clip(i + half + 1, 0, len(x))
    n = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (csum[hi] - csum[lo]) / n, np.nan)


def plot_updates(res: CompareResult, path: str | Path) -> Path:
    """Per-component update-to-weight ratio ‖ΔW‖/‖W‖ at every 1% of training, one panel per
    component, one line per arm (mean over its seeds): what relative LRs change. Dashed, the
    representation change ‖ΔY‖/‖Y‖; dotted, the alignment ratio α_ΔW/α_W between the two."""
    plt = plots._plt()
    arms = list(res.arms)
    colors = arm_colors(arms)
    comps = res.components
    ncols = min(3, max(1, len(comps)))
    nrows = max(1, math.ceil(len(comps) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), dpi=120, sharex=True, squeeze=False)
    for ax, comp in zip(axes.flat, comps):
        for name, arm in res.arms.items():
            u = arm.updates
            # solid: ‖ΔW‖/‖W‖; dashed: what the update does to the component's outputs; dotted: the
            # alignment ratio that turns the solid line into the dashed one.
            for curves, lw, ls in ((u.update_ratio, 1.5, "-"), (u.rep_change, 1.0, "--"), (u.align_ratio, 1.0, ":")):
                y = np.asarray(curves.get(comp, []), float)
                ok = np.isfinite(y) & (y > 0)  # the first step's warmup LR is 0: nothing to show on a log axis
                if ok.any():
                    ax.plot(np.asarray(u.steps, float)[: len(y)][ok], y[ok], color=colors[name], lw=lw, ls=ls,
                            label=_diag_label(name, arm) if ls == "-" else None)
        ax.set_yscale("log")
        ax.set_title(comp, fontsize=10, color=plots.COLORS.get(comp, "k"))
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(comps):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("‖ΔW‖/‖W‖ (solid), ‖ΔY‖/‖Y‖ (dashed)\nα_ΔW/α_W (dotted)", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", frameon=False, fontsize=9, ncol=len(arms))
    fig.suptitle(f"{res.preset}: relative update and representation change per component (mean over seeds)",
                 fontsize=11, x=0.02, ha="left")
    return plots._save(fig, path)


def plot_router(res: CompareResult, path: str | Path) -> Path:
    """MoE router health over training: normalised expert-load entropy (1 = perfectly balanced),
    the largest expert's share of tokens, and the share of token slots dropped for capacity."""
    plt = plots._plt()
    colors = arm_colors(list(res.arms))
    n_exp = next((r.router.n_experts for r in res.runs if r.router is not None), 0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=120, sharex=True)
    panels = (("load_entropy", "expert-load entropy (normalised)"), ("max_load", "largest expert's share"),
              ("dropped_share", "dropped token slots (share)"))
    for ax, (key, title) in zip(axes, panels):
        for name, arm in res.arms.items():
            rt = arm.router
            if rt is not None and len(rt.steps):
                ax.plot(rt.steps, np.asarray(getattr(rt, key), float), color=colors[name], lw=1.6,
                        label=_diag_label(name, arm))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.03)
    axes[0].axhline(0.5, color="red", ls=":", lw=1, label="collapse below")
    if n_exp:
        axes[1].axhline(1.0 / n_exp, color="gray", ls="--", lw=1, label=f"balanced (1/{n_exp})")
        axes[1].axhline(max(0.5, 2.0 / n_exp), color="red", ls=":", lw=1, label="collapse above")
        axes[1].set_ylim(0, 1.03)
    axes[2].set_ylim(bottom=0)
    for ax in axes[:2]:
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(f"{res.preset}: MoE router health (mean over seeds, per 1% of training)", fontsize=11)
    return plots._save(fig, path)


# --- compare's report -----------------------------------------------------------------------------


def render(res: CompareResult, out: str | Path) -> list[Path]:
    """Write the figures and ``report.md`` of a compare into ``out``; returns their paths. Only
    ``train_loss.png`` needs more than the result: every training loss of every run, which it
    reads from the runs' own logs (:func:`train_series`).

    A figure is drawn only from what the runs logged: a ``--command`` script reports eval losses
    only, so it gets no ``train_loss.png`` (no training loss, no spikes to find) and no
    ``updates.png`` (no update sizes), and its LR figures show the components its plans set."""
    out = Path(out)
    series = train_series(res)
    files = [plot_speedup(res, out / "loss.png")]
    trained = any(len(steps) for steps, _ in series.values())
    if trained:
        files.append(plot_train_losses(res, series, out / "train_loss.png"))
    else:  # nor one left by an earlier compare into this directory
        (out / "train_loss.png").unlink(missing_ok=True)
    comps, rest = lr_components(res)
    lr_files = {}
    for name, arm in res.arms.items():
        plan = arm.plan
        lr_files[name] = plots.plot_plan(
            plan, res.total_steps, out / f"lr_{name}.png", components=comps, rest=rest,
            title=f"{name}: LR per component (η_base = {plan.base_lr:g}, λ_base = {plan.final_fraction:g})")
    files += lr_files.values()
    measured = updates_logged(res)
    if measured:
        files.append(plot_updates(res, out / "updates.png"))
    else:
        (out / "updates.png").unlink(missing_ok=True)
    moe = any(a.router is not None for a in res.arms.values())
    if moe:
        files.append(plot_router(res, out / "router.png"))
    md = out / "report.md"
    atomic_write_text(md, compare_markdown(res, lr_files, moe, trained=trained, updates=measured))
    return [*files, md]


def train_series(res: CompareResult) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """Every run's per-step training loss, ``(arm, seed) -> (steps, losses)``, read from its log
    (empty for a ``--command`` run, or a run whose directory is not here)."""
    series = {}
    for r in res.runs:
        logs = read_run(r.out)
        series[r.arm, r.seed] = logs.train_steps, logs.train_loss
    return series


REST_LABEL = "every other component (λ = 1)"


def lr_components(res: CompareResult) -> tuple[list[str], str | None]:
    """The components the LR figures draw, and the label of the λ = 1 line drawn for the rest
    (``None``: no such line). A preset run's are its model's, from its log. A ``--command``
    script's model is not known to rlrs: the components any arm's plan sets (λ_start, λ_end or
    the shape away from 1, 1, cosine), and one gray line for every other component."""
    if res.components:
        return list(res.components), None
    plans = [a.plan for a in res.arms.values()]
    default = ComponentPlan()
    chosen = [c for c in COMPONENTS
              if any((p.component(c).start, p.component(c).end, p.component(c).shape)
                     != (default.start, default.end, default.shape) for p in plans)]
    return chosen, (REST_LABEL if len(chosen) < len(COMPONENTS) else None)


def updates_logged(res: CompareResult) -> bool:
    """Whether any run logged update sizes (rlrs's own trainer does; a ``--command`` does not)."""
    for arm in res.arms.values():
        for v in arm.updates.update_ratio.values():
            v = np.asarray(v, float)
            if (np.isfinite(v) & (v > 0)).any():
                return True
    return False


def _is_command(res: CompareResult) -> bool:
    return "command" in (res.target or {})


def _restart_note(out: Path) -> str | None:
    """Why a command run's script ran more steps than its length (it started over from step 0)."""
    r = read_result(out)
    return r.restart_note() if r is not None else None


def _final(arm: ArmResult) -> str:
    fl = arm.final_loss
    if fl is None:
        return "—"
    return f"{fl.mean:.4f} ± {fl.std:.4f}" if fl.n > 1 else _fmt(fl.mean)


def compare_markdown(res: CompareResult, lr_files: Mapping[str, Path], moe: bool, *, trained: bool = True,
                     updates: bool = True) -> str:
    """``report.md``. ``trained``: the runs logged a training loss (``train_loss.png`` exists);
    ``updates``: they logged update sizes (``updates.png`` exists)."""
    base = res.baseline
    seeds = res.seeds
    loss = _loss_name(res.metric)
    L: list[str] = []
    add = L.append
    add(f"# rlrs compare: {res.preset}, {len(res.arms)} plans × {seeds} seed{'s' * (seeds > 1)}\n")
    add(f"`{res.command}`\n")
    add(f"Baseline **{base}**; loss: **{loss}**, measured {_where_measured(res)}; "
        f"{res.total_steps} steps per run; seed i of every arm uses data seed i.\n")
    reused = sum(r.reused for r in res.runs)
    add(f"Training time {sum(r.wall_s for r in res.runs):.1f} s summed over {len(res.runs)} runs"
        + (f" ({reused} reused from earlier commands)" if reused else "") + ".\n")
    add("## Result\n")
    add(f"| arm | η_base | seeds finished | final {loss.split(' (')[0]} (mean ± std) | Δ vs baseline (paired) | speed-up | T_relative / T_base |")
    add("|---|---|---|---|---|---|---|")
    for name, arm in res.arms.items():
        fin = f"{len(arm.seeds_finished)}/{len(arm.seeds)}"
        if name == base:
            add(f"| **{name}** (baseline) | {arm.base_lr:g} | {fin} | {_final(arm)} | — | — | — |")
            continue
        d, judged = res.differences[name], res.speedups[name]
        sp = judged.speedup
        diff = "—" if d is None else (f"{d.mean:+.4f} ± {d.std:.4f}" if d.n > 1 else f"{d.mean:+.4f}")
        if judged.verdict == "same plan":
            spd, t = "same plan as the baseline (same runs)", "—"
        elif judged.identical:
            spd, t = "identical runs", "—"
        elif sp is not None and sp.percent is not None:
            hi = f"{sp.high:+.1f}%" if math.isfinite(sp.high) else "∞"
            spd = f"**{sp.percent:+.1f}%** [{sp.low:+.1f}%, {hi}]" + (" (no measurable difference)"
                                                     if judged.verdict == "no measurable difference" else "")
            t = f"{sp.t_relative} / {sp.t_base}"
        elif sp is not None:
            spd, t = "no speed-up", "—"
        else:
            spd, t = "not measured", "—"
        add(f"| {name} | {arm.base_lr:g} | {fin} | {_final(arm)} | {diff} | {spd} | {t} |")
    add("")
    for name, judged in res.speedups.items():
        per = [f"seed {p.seed}: " + (f"{p.percent:+.1f}%" if p.percent is not None else
                                     "no speed-up" if p.measured else "not measured")
               for p in judged.per_seed]
        add(f"- {judged.text}." + (f" Per seed: {', '.join(per)}." if len(per) > 1 else ""))
        if judged.interval is not None:
            add(f"- {name}: speed-up {judged.interval.describe()}.")
        d = res.differences[name]
        if d is not None:
            spread = f" ± {d.std:.4f} (std of the paired differences over {d.n} seeds)" if d.n > 1 else " (one seed)"
            add(f"- {name} final {loss.split(' (')[0]} − baseline: {d.mean:+.4f}{spread}; negative is better.")
    dropped = [r for a in res.arms for r in res.runs_of(a) if not r.finished]
    if dropped:
        which = ", ".join(f"{r.arm} seed {r.seed} {r.status}" for r in dropped)
        add(f"- **Not every run finished**: {which}. "
            "Means, speed-ups and differences use the finished seeds only (see *Runs*).")
    add("\n![loss curves](loss.png)\n")
    add("## The speed-up, defined (appendix A of the paper)\n")
    add(f"Every run is measured {_where_measured(res)} (the paper: every 1% of training). "
        "The baseline reaches its final loss **L** (mean over its seeds) at **T_base**; **T_relative** is the first "
        "measuring step at which the relative arm's mean loss is ≤ L. **speed-up = (T_base / T_relative − 1) × 100%**. "
        "Both arms are read by one rule, so an arm that trains like the baseline measures 0%: each mean curve is "
        "first replaced by its best non-increasing fit (a rise is pooled with the points before it into their "
        "mean, its step the pool's mean step), L is the baseline's fitted final loss, and each arm's step is its "
        "fit's first arrival at L. On a curve that still falls at its last point (the paper's runs) this is the "
        "paper's rule exactly. Each arm got to L somewhere in the measuring interval before the step that saw "
        "it: the [low, high] after a speed-up is what that allows, and a speed-up whose bounds do not share a "
        "sign, or whose interval over seeds covers 0, is *no measurable difference*. An arm that never gets to L has *no speed-up* (not 0%). The relative "
        "schedule has not finished decaying at T_relative, so the number underestimates the gain.\n")
    add(_worked_example(res))
    add("\n## Runs\n")
    add("| arm | seed | status | final eval loss | final train loss (last 1%) | steps | skipped | spikes | wall (s) | run |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    command = _is_command(res)
    for r in res.runs:
        status = r.status if r.finished else f"**{r.status}**"
        status += " (reused)" if r.reused else ""
        # A command logs no training loss and no skipped steps: "—", not a count of 0.
        skipped = "—" if command else r.skipped_steps
        spikes = len(r.spikes) if trained else "—"
        add(f"| {r.arm} | {r.seed} | {status} | {_fmt(r.final_eval_loss if r.finished else None)} | "
            f"{_fmt(r.final_train_1pct if r.finished else None)} | "
            f"{r.steps}/{r.total_steps} | {skipped} | {spikes} | {r.wall_s:.1f} | "
            f"`runs/{Path(r.out).name}` |")
    restarts = [(r, note) for r in res.runs for note in [_restart_note(r.out)] if note]
    if restarts:
        add("\nRuns whose script started over:\n")
        for r, note in restarts:
            add(f"- **{r.arm} seed {r.seed}** {note}")
    bad = [r for r in res.runs if not r.finished]
    if bad:
        add("\nErrors:\n")
        for r in bad:
            err = (r.error or "").strip()
            lines = err.splitlines()
            if len(lines) <= 1:
                add(f"- **{r.arm} seed {r.seed}** {r.status}: {err or 'no message'}")
            else:
                add(f"- **{r.arm} seed {r.seed}** {r.status}: {reason_line(r.status, r.error)}\n\n  ```\n"
                    + "\n".join("  " + ln for ln in lines[-10:]) + "\n  ```")
    add("\n## Diagnostics\n")
    add("### Loss spikes\n")
    if not trained:
        add(("The script reports eval losses only (`rlrs.report`)" if command else "No run logged a training loss")
            + ": there is no training loss to look for loss spikes in.\n")
    else:
        add("A step's training loss is a spike when it exceeds the recent level (median of the last 5 steps) by 6× "
            "the step-to-step noise (robust, over the last 25 steps) and by 5%; spikes ≤ 2 steps apart count as one.\n")
        spiky = [r for r in res.runs if r.spikes]
        if not spiky:
            add("No loss spikes detected in any run.\n")
        for r in spiky:
            items = [f"step {s.start}" + (f"–{s.end}" if s.end > s.start else "")
                     + f" (peak {s.peak_loss:.3f}, {s.rise:+.0%} over {s.reference:.3f})" for s in r.spikes[:8]]
            more = f" and {len(r.spikes) - 8} more" if len(r.spikes) > 8 else ""
            add(f"- {r.arm} seed {r.seed}: {len(r.spikes)} spike{'s' * (len(r.spikes) > 1)}: {'; '.join(items)}{more}")
        add("\n![training loss and spikes](train_loss.png)\n")
    if moe:
        add("### MoE router health\n")
        add("Over the last 10% of training: normalised expert-load entropy (1 = balanced), the largest expert's "
            "share of token slots, and the share of slots dropped for capacity. Collapse: entropy < 0.5, or one "
            "expert above max(50%, 2/n_experts) of the slots.\n")
        add("| arm | seed | load entropy (min) | largest share (peak) | dropped (peak) | verdict |")
        add("|---|---|---|---|---|---|")
        for r in res.runs:
            h = r.router
            if h is None:
                continue
            verdict = h.verdict if not h.collapsed else f"**{h.verdict}**"
            add(f"| {r.arm} | {r.seed} | {h.load_entropy_final:.3f} ({h.load_entropy_min:.3f}) | "
                f"{h.max_load_final:.1%} ({h.max_load_peak:.1%}) | {h.dropped_share_final:.2%} "
                f"({h.dropped_share_peak:.2%}) | {verdict} |")
        add("\n![router health](router.png)\n")
    add("### Update size per component\n")
    if not updates:
        add(("Not measured: only rlrs's own trainer logs update sizes; the script reports eval losses only."
             if command else "No run logged update sizes (a compiled run does not).") + "\n")
    else:
        add("‖ΔW‖/‖W‖ of one optimizer step, per component, at every 1% of training; the table gives its "
            "geometric mean over training (mean over seeds). Update RMS is in `results.json`.\n")
        comps = res.components
        if comps:
            add("| arm | " + " | ".join(comps) + " |")
            add("|---|" + "---|" * len(comps))
            for name, arm in res.arms.items():
                cells = []
                for c in comps:
                    v = np.asarray(arm.updates.update_ratio.get(c, []), float)
                    v = v[np.isfinite(v) & (v > 0)]
                    cells.append(f"{math.exp(np.log(v).mean()):.2e}" if v.size else "—")
                add(f"| {name} | " + " | ".join(cells) + " |")
        add("\n![update-to-weight ratio](updates.png)\n")
    add("### LR schedules\n")
    comps, rest = lr_components(res)
    if rest is not None:
        shown = ", ".join(comps) if comps else "none"
        add(f"rlrs does not know the script's model, so each figure shows the components the plans set "
            f"(λ_start, λ_end or shape not 1, 1, cosine: {shown}) and, in gray, the LR of every other component "
            f"(λ = 1), whichever of them the script's param groups hold.\n")
    for a, p in lr_files.items():
        add(f"![{a} LR schedule]({Path(p).name})")
    add("")
    return "\n".join(L) + "\n"


def _worked_example(res: CompareResult) -> str:
    loss = _loss_name(res.metric).split(" (")[0]
    for name, judged in res.speedups.items():
        sp = judged.speedup
        if sp is None or sp.percent is None:
            continue
        curve = res.arms[name].curve
        steps, mean = list(curve.steps), list(curve.mean)
        if sp.t_relative not in steps or sp.t_base != steps[-1]:
            continue  # a pooled (noisy) stretch decided it: no plain example to give with these numbers
        i = steps.index(sp.t_relative)
        before = ""
        if i > 0 and steps[i - 1] > 0:
            before = f"its mean {loss} is {_fmt(mean[i - 1])} at step {steps[i - 1]} (> L) and "
        return (f"**Worked example, with this run's numbers.** The baseline {res.baseline} trains T_base = {sp.t_base} "
                f"steps and ends at mean {loss} L = {sp.target_loss:.4f}. For {name}, {before}"
                f"{_fmt(mean[i])} at step {sp.t_relative} (≤ L), so T_relative = {sp.t_relative} and "
                f"speed-up = ({sp.t_base} / {sp.t_relative} − 1) × 100% = **{sp.percent:+.1f}%**.\n")
    return ("**Worked example.** The baseline ends at L = 3.70 after T_base = 10,000 steps; the relative arm's mean "
            "loss is 3.72 at step 6,900 and 3.69 at step 7,000, so T_relative = 7,000 and speed-up = "
            "(10000 / 7000 − 1) × 100% = +42.9%. (No arm of this comparison has a speed-up to show with its own "
            "numbers.)\n")


# --- lr-grid's report -----------------------------------------------------------------------------
