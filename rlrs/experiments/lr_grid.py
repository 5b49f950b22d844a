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

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import config as _config
from .. import files
from . import report
from .arms import (MAX_POINTS, RunInfo, arm_name, arm_run, arms_of, check_common, common_args, describe_target,
                   execute_runs, extra_args, grid_around, ladder_next, prepare_args, python_call, target_of)
from ..config import ConfigError
from ..options import add_grid_args, add_seeds_arg, command_line, default_of, executor_from_args, parse_grid
from ..targets import Target


@dataclass
class GridPoint:
    """One η_base of one arm: its runs (one per seed) and their mean final eval loss."""

    base_lr: float
    runs: list[RunInfo]

    @property
    def finished(self) -> list[float]:
        return [r.final_eval_loss for r in self.runs if r.finished]

    @property
    def status(self) -> str:
        """``finished`` when every seed finished, else the first other run's status."""
        return next((r.status for r in self.runs if not r.finished), "finished")

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.finished)) if self.finished else None

    @property
    def std(self) -> float | None:
        fin = self.finished
        return float(np.std(fin, ddof=1)) if len(fin) > 1 else 0.0 if fin else None


@dataclass
class GridArm:
    """One arm's grid: every point, the best η_base among points where every seed finished, and
    whether the best lies at the grid's low or high end (then the optimum may lie beyond)."""

    name: str
    points: list[GridPoint]

    @property
    def best_point(self) -> GridPoint | None:
        ok = [p for p in self.points if p.status == "finished"]
        return min(ok, key=lambda p: p.mean) if ok else None

    @property
    def best(self) -> float | None:
        b = self.best_point
        return None if b is None else b.base_lr

    @property
    def best_loss(self) -> float | None:
        b = self.best_point
        return None if b is None else b.mean

    @property
    def edge(self) -> str | None:
        b = self.best
        if b is None or len(self.points) < 2:
            return None
        return "low" if b == self.points[0].base_lr else "high" if b == self.points[-1].base_lr else None


@dataclass
class GridResult:
    """What :func:`lr_grid` found; ``to_dict()`` is what ``grid.json`` holds."""

    out: Path
    preset: str
    target: dict[str, Any]
    command: str
    seeds: int
    plans: dict[str, str]  # arm -> named plan or plan file
    arms: dict[str, GridArm]
    wall_s: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> dict[str, float]:
        """The best η_base per arm (arms where every value diverged are left out)."""
        return {a.name: a.best for a in self.arms.values() if a.best is not None}

    @property
    def edge(self) -> dict[str, str | None]:
        return {a.name: a.edge for a in self.arms.values()}

    def to_dict(self) -> dict[str, Any]:
        arms = {}
        for a in self.arms.values():
            points = [{"base_lr": p.base_lr, "status": p.status, "mean": p.mean, "std": p.std,
                       "n_finished": len(p.finished),
                       "runs": [{"seed": r.seed, "status": r.status, "final_eval_loss": r.final_eval_loss,
                                 "error": r.error, "out": str(r.out), "reused": r.reused, "wall_s": r.wall_s}
                                for r in p.runs]}
                      for p in a.points]
            arms[a.name] = {"points": points, "best": a.best, "best_loss": a.best_loss, "edge": a.edge}
        return _config.json_safe({"preset": self.preset, "target": self.target, "seeds": self.seeds, "metric": "eval",
                       "plans": self.plans, "arms": arms, "best": self.best, "command": self.command,
                       "wall_s": self.wall_s})


def lr_grid(
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
    pick the lowest final eval loss. Writes ``grid.json``, ``grid.md`` and ``lr_grid.png`` (figure 3).

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
        grid_arms = {arm: GridArm(arm, [GridPoint(lr, [r for r in infos if r.arm == arm and lr_of[r.out] == lr])
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
    res = GridResult(
        out=out, preset=preset, target=describe_target(target),
        command=command or python_call("lr_grid", "lr_grid", preset=preset, plans=list(plans), out=str(out),
                                        grid=list(grid) if grid else None, seeds=seeds, sets=sets or None),
        seeds=seeds, plans=dict(arms), arms=grid_arms,
    )
    res.wall_s = time.perf_counter() - t0
    path = out / "grid.json"
    files.write_json(path, res.to_dict())
    res.files = [path, *report.write_grid(res)]
    return res


def load_grid(path: str | Path) -> dict[str, float]:
    """The best η_base per arm from an ``lr-grid`` ``grid.json`` (arms where every grid value
    diverged are left out). ``compare(..., base_lrs=load_grid("runs/bench/grid.json"))``."""
    path = Path(path)
    if path.is_dir():
        path = path / "grid.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no grid result here; run `rlrs lr-grid --out DIR` first")
    try:
        data = json.loads(path.read_text())
        best = data["best"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a grid.json written by `rlrs lr-grid`") from None
    return {str(k): float(v) for k, v in best.items() if v is not None}

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
    add_grid_args(p, default_of(lr_grid, "extend"))
    p.add_argument("--points", type=int, default=default_of(lr_grid, "points"),
                   help=f"size of the default grid around each plan's η_base (default: {default_of(lr_grid, 'points')})")
    add_seeds_arg(p, default_of(lr_grid, "seeds"))
    p.set_defaults(func=cmd_lr_grid)


def cmd_lr_grid(args) -> int:
    target = prepare_args(args, "lr-grid")
    grid = parse_grid(args.grid) if args.grid is not None else None
    extra = [*extra_args(args), "--seeds", str(args.seeds), "--extend", str(args.extend)] + (
        ["--grid", args.grid] if args.grid else ["--points", str(args.points)])
    with executor_from_args(args, args.out / "slurm") as ex:
        res = lr_grid(target, args.plans_list, args.out, grid=grid, seeds=args.seeds, sets=args.sets,
                      workers=args.workers, command=command_line("lr-grid", args, extra), extend=args.extend,
                      points=args.points,
                      progress=sys.stderr.isatty(), executor=ex)
    print()
    for arm in (arm_name(p) for p in args.plans_list):
        if arm in res.best:
            note = f" (at the {res.edge[arm]} edge of the grid: the optimum may lie beyond it)" if res.edge[arm] else ""
            print(f"{arm}: best η_base {res.best[arm]:g}, final eval loss {res.arms[arm].best_loss:.4f}{note}")
        else:
            print(f"{arm}: no η_base of the grid finished without diverging; try lower values with --grid")
    print(f"report: {res.out / 'grid.md'}  grid: {res.out / 'grid.json'}")
    failed = any(r.status == "failed" for a in res.arms.values() for p in a.points for r in p.runs)
    return 1 if failed or len(res.best) < len(res.arms) else 0
