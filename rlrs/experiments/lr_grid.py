"""The η_base search of the paper's appendix A, separately for each plan (``rlrs lr-grid``).

    >>> from rlrs.experiments.lr_grid import lr_grid, load_grid
    >>> grid = lr_grid("micro-moe", ["uniform-moe", "paper-moe"], out="runs/bench")  # doctest: +SKIP
    >>> grid.best                                                                     # doctest: +SKIP
    {'uniform-moe': 0.01, 'paper-moe': 0.02}

or ``rlrs lr-grid --model micro-moe --plans uniform-moe,paper-moe --out runs/bench``; then
``rlrs compare ... --base-lrs-from runs/bench/grid.json`` (:func:`load_grid`) trains each arm at its
best η_base. Each plan trains at each value of the {1, 2, 5}×10⁻ⁿ ladder around its η_base, with
every seed; the best is the lowest mean final eval loss among values where every seed finished,
and a best at the grid's edge grows the grid beyond it. ``grid.json``, ``grid.md`` and
``lr_grid.png`` go into ``out``, the runs under ``out/runs`` (shared with compare's).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import config as _config
from .. import files
from .. import plots
from .report import arm_colors, lr_text
from .arms import (MAX_POINTS, RunInfo, arm_name, arm_run, arms_of, check_common, common_args, describe_target,
                   execute_runs, extra_args, grid_around, ladder_next, prepare_args, python_call, target_of)
from ..config import ConfigError
from ..engine import reason_line
from ..options import add_grid_args, add_seeds_arg, command_line, default_of, executor_from_args, parse_grid
from ..targets import Target


@dataclass(frozen=True)
class GridRun:
    """One seed's run at one η_base, as ``grid.json`` records it."""

    seed: int
    status: str  # finished | diverged | failed
    final_eval_loss: float | None
    error: str | None
    out: Path
    reused: bool
    wall_s: float

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def of(cls, r: RunInfo) -> GridRun:
        return cls(r.seed, r.status, r.final_eval_loss, r.error, r.out, r.reused, r.wall_s)


@dataclass(frozen=True)
class GridPoint:
    """One η_base of one arm: its runs (one per seed) and their final eval loss over the finished
    seeds. ``status`` is ``finished`` when every seed finished, else the first other run's status."""

    base_lr: float
    status: str
    mean: float | None
    std: float | None
    n_finished: int
    runs: tuple[GridRun, ...]

    @classmethod
    def of(cls, base_lr: float, runs: Sequence[GridRun]) -> GridPoint:
        fin = [r.final_eval_loss for r in runs if r.finished]
        status = next((r.status for r in runs if not r.finished), "finished")
        mean = float(np.mean(fin)) if fin else None
        std = float(np.std(fin, ddof=1)) if len(fin) > 1 else 0.0 if fin else None
        return cls(base_lr, status, mean, std, len(fin), tuple(runs))


@dataclass(frozen=True)
class GridArm:
    """One arm's grid: every point, the best η_base among points where every seed finished (and
    its loss), and whether the best lies at the grid's ``low`` or ``high`` end (then the optimum
    may lie beyond)."""

    points: tuple[GridPoint, ...]
    best: float | None
    best_loss: float | None
    edge: str | None

    @classmethod
    def of(cls, points: Sequence[GridPoint]) -> GridArm:
        ok = [p for p in points if p.status == "finished"]
        b = min(ok, key=lambda p: p.mean) if ok else None
        edge = None
        if b is not None and len(points) >= 2:
            edge = "low" if b.base_lr == points[0].base_lr else "high" if b.base_lr == points[-1].base_lr else None
        return cls(tuple(points), None if b is None else b.base_lr, None if b is None else b.mean, edge)


def no_best_reason(arm: GridArm) -> str:
    """Why an arm has no best η_base, and what to do: values that diverged call for lower ones;
    runs that failed (a crash, a missing module) call for a fix that no other η_base brings."""
    failed = [r for p in arm.points for r in p.runs if r.status == "failed"]
    if failed:
        first = reason_line("failed", failed[0].error)
        n = sum(len(p.runs) for p in arm.points)
        return (f"no best η_base: {len(failed)} of {n} runs failed (first: {first}); fix that and run the same "
                "command again (finished runs are reused)")
    return "no η_base of the grid finished without diverging; try lower values with --grid"


@dataclass(frozen=True)
class GridResult:
    """What :func:`run` found: ``grid.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(GridResult, json.load(f))`` (:func:`load`) reads it back."""

    preset: str
    target: dict[str, Any]  # what trained: {"preset", "config_file"} or {"command", "steps", "cwd"}
    seeds: int
    metric: str  # always "eval": the grid ranks final eval losses
    plans: dict[str, str]  # arm -> named plan or plan file
    arms: dict[str, GridArm]
    best: dict[str, float]  # the best η_base per arm; arms where every value diverged are left out
    command: str
    wall_s: float

    @property
    def edge(self) -> dict[str, str | None]:
        return {name: a.edge for name, a in self.arms.items()}


def run(
    target: str | Target,
    plans: Sequence[str],
    out: str | Path,
    *,
    grid: Sequence[float] | None = None,
    seeds: int = 1,
    sets: Mapping[str, Any] | None = None,
    workers: int | None = None,
    config_file: str | Path | None = None,
    command: str | None = None,
    extend: int = 3,
    points: int = 5,
    include: Mapping[str, float] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    executor=None,
) -> GridResult:
    """The η_base search of appendix A, separately for each plan: train each plan at each grid
    value (default: ``points`` values of the {1, 2, 5}×10⁻ⁿ ladder around the plan's η_base) and
    pick the lowest final eval loss. Trains into ``out/runs``; :func:`save` and :func:`render`
    write ``grid.json``, ``grid.md`` and ``lr_grid.png`` (figure 3), :func:`lr_grid` all three.

    A best value at the grid's low or high end says nothing about the optimum, so the grid grows
    by the next ladder value beyond that end, up to ``extend`` times per arm (0: never), until the
    best lies inside (a diverged neighbour bounds it too). ``include`` adds one value to an arm's
    grid (by arm name; width-transfer: the base width's optimum, whose loss it must measure).
    ``executor`` runs the runs (see :func:`compare`)."""
    t0 = time.perf_counter()
    target = target_of(target, config_file)
    preset = target.name
    arms = arms_of(plans, need=1)
    sets = check_common(seeds, sets, workers)
    if grid is not None:
        for v in grid:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"grid: {v!r} is not a learning rate > 0; e.g. --grid 1e-3,2e-3,5e-3")
        grid = sorted({float(v) for v in grid})
        if not grid:
            raise ConfigError("grid: give at least one learning rate, e.g. --grid 1e-3,2e-3,5e-3")
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        raise ConfigError(f"points: how many ladder values the default grid has, 1 to {MAX_POINTS}, got {points!r}")
    out = Path(out)
    values = {arm: list(grid) if grid else grid_around(target.spec(plan, 0, sets).plan.base_lr, points)
              for arm, plan in arms}
    for arm, lr in (include or {}).items():
        if arm not in values:
            raise ConfigError(f"include: {arm!r} is not an arm of this grid; {_config.closest(arm, list(values))}")
        values[arm] = sorted({*values[arm], float(lr)})
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise ConfigError(f"extend: how many values a grid may grow by at an edge, an integer >= 0, got {extend!r}")
    log(f"rlrs lr-grid: {preset}, plans {', '.join(a for a, _ in arms)}, η_base grid "
        + "; ".join(f"{a}: {', '.join(f'{v:g}' for v in values[a])}" for a, _ in arms)
        + f", {seeds} seed{'s' * (seeds > 1)} -> {out}")
    grown = {arm: 0 for arm, _ in arms}
    while True:
        # Every round lists every point: the engine reuses the runs earlier rounds trained.
        specs = [arm_run(target, arm, plan, seed, sets, lr, out / "runs", label_lr=True)
                 for seed in range(seeds) for arm, plan in arms for lr in values[arm]]
        infos, _ = execute_runs(specs, workers, "eval", log, progress, executor)
        lr_of = {s.out: s.run.plan.base_lr for s in specs}
        grid_arms = {arm: GridArm.of([GridPoint.of(lr, [GridRun.of(r) for r in infos
                                                          if r.arm == arm and lr_of[r.out] == lr])
                                      for lr in values[arm]])
                     for arm, _ in arms}
        more = False
        for arm, a in grid_arms.items():
            if a.edge is not None and grown[arm] < extend:
                beyond = ladder_next(values[arm][0 if a.edge == "low" else -1], -1 if a.edge == "low" else 1)
                values[arm] = sorted({*values[arm], beyond})
                grown[arm] += 1
                more = True
                log(f"rlrs lr-grid: {arm}: best η_base at the {a.edge} edge; adding {beyond:g}")
        if not more:
            break
    return GridResult(
        preset=preset, target=describe_target(target), seeds=seeds, metric="eval", plans=dict(arms), arms=grid_arms,
        best={name: a.best for name, a in grid_arms.items() if a.best is not None},
        command=command or python_call("lr_grid", "lr_grid", preset=preset, plans=list(plans), out=str(out),
                                       grid=list(grid) if grid else None, seeds=seeds, sets=sets or None),
        wall_s=time.perf_counter() - t0,
    )


def save(result: GridResult, out: str | Path) -> Path:
    """Write ``out/grid.json``."""
    path = Path(out) / "grid.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> GridResult:
    """The :class:`GridResult` in an ``lr-grid`` ``grid.json`` (or the directory holding it)."""
    return _config.load_typed(GridResult, path, "grid.json", "rlrs lr-grid", "grid result")


def lr_grid(target: str | Target, plans: Sequence[str], out: str | Path, **options) -> GridResult:
    """What ``rlrs lr-grid`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out``."""
    result = run(target, plans, out, **options)
    save(result, out)
    render(result, out)
    return result


# --- report -------------------------------------------------------------------------------------


def render(result: GridResult, out: str | Path) -> list[Path]:
    """Write ``lr_grid.png`` (figure 3: final eval loss against η_base per arm) and ``grid.md`` into ``out``."""
    out = Path(out)
    png = plot(result, out / "lr_grid.png")
    md = out / "grid.md"
    files.atomic_write_text(md, markdown(result))
    return [png, md]


def plot(grid: GridResult, path: str | Path) -> Path:
    """Figure 3: final eval loss against η_base per arm (log x); the best point starred, a
    diverged point drawn as ✕ at the top of the axes."""
    import matplotlib.transforms as mtransforms

    plt = plots._plt()
    arms = list(grid.arms)
    colors = arm_colors(arms)
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=120)
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    any_bad = False
    for i, a in enumerate(arms):
        pts = grid.arms[a].points
        ok = [p for p in pts if p.status == "finished"]
        if ok:
            x = [p.base_lr for p in ok]
            y = [p.mean for p in ok]
            err = [p.std or 0.0 for p in ok]
            ax.errorbar(x, y, yerr=err if grid.seeds > 1 else None, color=colors[a], marker="o", ms=5, lw=1.6,
                        capsize=3, label=a)
        for p in pts:
            if p.status != "finished":
                ax.plot(p.base_lr, 0.96 - 0.05 * i, marker="x", color=colors[a], ms=9, mew=2, transform=trans, clip_on=False)
                any_bad = True
        b = grid.arms[a].best
        if b is not None:
            ax.plot(b, grid.arms[a].best_loss, marker="*", color=colors[a], ms=16, mec="k", mew=0.6, zorder=5)
    if any_bad:
        ax.plot([], [], "x", color="gray", ms=8, mew=2, label="diverged / failed")
    ax.plot([], [], "*", color="gray", ms=12, mec="k", label="best per arm")
    ax.set_xscale("log")
    lrs = sorted({p.base_lr for e in grid.arms.values() for p in e.points})
    ax.set_xticks(lrs)
    ax.set_xticklabels([lr_text(v) for v in lrs], rotation=30 if len(lrs) > 6 else 0, fontsize=8)
    ax.minorticks_off()
    if lrs:
        ax.set_xlim(lrs[0] / 1.5, lrs[-1] * 1.5)
    ys = np.asarray([p.mean for e in grid.arms.values() for p in e.points if p.mean is not None], float)
    ys = ys[np.isfinite(ys)]
    if ys.size:
        lo, hi = ys.min(), ys.max()
        ax.set_ylim(lo - 0.08 * (hi - lo or 1), hi + 0.2 * (hi - lo or 1))
    ax.set_xlabel("η_base (log scale)")
    ax.set_ylabel("final eval loss")
    s = grid.seeds
    ax.set_title(f"{grid.preset}: final eval loss vs η_base"
                 + (f" (mean ± std over {s} seeds)" if s > 1 else " (one seed)"))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return plots._save(fig, path)


def markdown(grid: GridResult) -> str:
    """``grid.md``: the best η_base per arm, every point's loss, the runs that did not finish."""
    s = grid.seeds
    L = [f"# rlrs lr-grid: {grid.preset}\n", f"`{grid.command}`\n",
         f"Final eval loss per η_base ({'mean ± std over ' + str(s) + ' seeds' if s > 1 else 'one seed'}); "
         "the paper tunes η_base separately for the baseline and the relative plan, on the {1, 2, 5}×10⁻ⁿ grid. "
         f"Wall time {grid.wall_s:.0f} s.\n", "## Best η_base\n"]
    for name, e in grid.arms.items():
        if e.best is None:
            L.append(f"- **{name}**: every grid value diverged or failed; try lower values with `--grid`.")
            continue
        note = ""
        if e.edge:
            way = "lower" if e.edge == "low" else "higher"
            note = (f" **At the {e.edge} edge of the grid**: the optimum may be {way}; extend `--grid` "
                    f"{way} to be sure.")
        L.append(f"- **{name}**: η_base = **{e.best:g}** (final eval loss {e.best_loss:.4f}).{note}")
    L.append("\nUse it: `rlrs compare ... --base-lrs-from grid.json` (the same `--out` reuses these runs).\n")
    L.append("## All points\n")
    lrs = sorted({p.base_lr for e in grid.arms.values() for p in e.points})
    L.append("| arm | " + " | ".join(f"{v:g}" for v in lrs) + " |")
    L.append("|---|" + "---|" * len(lrs))
    for name, e in grid.arms.items():
        by = {p.base_lr: p for p in e.points}
        cells = []
        for v in lrs:
            p = by.get(v)
            if p is None:
                cells.append("")
            elif p.status != "finished":
                n = p.n_finished
                cells.append(p.status + (f" ({n}/{len(p.runs)} finished)" if n else ""))
            else:
                txt = f"{p.mean:.4f}" + (f" ± {p.std:.4f}" if s > 1 else "")
                cells.append(f"**{txt}**" if v == e.best else txt)
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    errors = [(name, r) for name, e in grid.arms.items() for p in e.points for r in p.runs if not r.finished]
    if errors:
        L.append("\nRuns that did not finish:\n")
        for a, r in errors:
            L.append(f"- {a} seed {r.seed} (`runs/{Path(r.out).name}`): {r.status}: {reason_line(r.status, r.error)}")
    L.append("\n![final loss vs η_base](lr_grid.png)\n")
    return "\n".join(L) + "\n"


def load_grid(path: str | Path) -> dict[str, float]:
    """The best η_base per arm from an ``lr-grid`` ``grid.json`` (arms where every grid value
    diverged are left out). ``compare(..., base_lrs=load_grid("runs/bench/grid.json"))``."""
    return dict(load(path).best)


# --- command line ---------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs lr-grid``."""
    p = sub.add_parser(
        "lr-grid", help="per-plan η_base search over the paper's {1,2,5}x10^-n grid",
        description="Train each plan at each η_base of the grid and report the best per plan (the paper tunes "
                    "η_base separately for the baseline and the relative plan). Trains one of rlrs's model sizes, "
                    "or your own script with --command. Writes grid.json, grid.md and lr_grid.png into --out "
                    "(give compare's --out to share runs with it); "
                    "`rlrs compare --base-lrs-from OUT/grid.json` uses the result.")
    common_args(p, "lr-grid")
    add_grid_args(p, default_of(run, "extend"))
    p.add_argument("--points", type=int, default=default_of(run, "points"),
                   help=f"size of the default grid around each plan's η_base (default: {default_of(run, 'points')})")
    add_seeds_arg(p, default_of(run, "seeds"))
    p.set_defaults(func=cmd_lr_grid)


def cmd_lr_grid(args) -> int:
    target = prepare_args(args, "lr-grid")
    grid = parse_grid(args.grid) if args.grid is not None else None
    extra = [*extra_args(args), "--seeds", str(args.seeds), "--extend", str(args.extend)] + (
        ["--grid", args.grid] if args.grid else ["--points", str(args.points)])
    with executor_from_args(args, args.out / "slurm") as ex:
        res = run(target, args.plans_list, args.out, grid=grid, seeds=args.seeds, sets=args.sets, workers=args.workers,
                  command=command_line("lr-grid", args, extra), extend=args.extend, points=args.points,
                  progress=sys.stderr.isatty(), executor=ex)
    save(res, args.out)
    render(res, args.out)
    print()
    for arm in (arm_name(p) for p in args.plans_list):
        if arm in res.best:
            note = f" (at the {res.edge[arm]} edge of the grid: the optimum may lie beyond it)" if res.edge[arm] else ""
            print(f"{arm}: best η_base {res.best[arm]:g}, final eval loss {res.arms[arm].best_loss:.4f}{note}")
        else:
            print(f"{arm}: {no_best_reason(res.arms[arm])}")
    print(f"report: {args.out / 'grid.md'}  grid: {args.out / 'grid.json'}")
    failed = any(r.status == "failed" for a in res.arms.values() for p in a.points for r in p.runs)
    return 1 if failed or len(res.best) < len(res.arms) else 0
