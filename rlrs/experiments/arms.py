"""What compare and lr-grid share: arms (a plan each), seeds, the η_base ladder, running the arms'
runs on the engine and reading each run back (:class:`RunInfo`), and their common CLI arguments.

    >>> from rlrs.experiments.arms import arm_name, grid_around
    >>> arm_name("plans/mine.toml"), grid_around(3e-3, 3)
    ('mine', [0.001, 0.002, 0.005])

Seed ``i`` of every arm trains with ``train.seed = train.data_seed = i`` (:func:`arm_run`), so
the arms of one seed start from the same weights and see the same batches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..analysis import RunLogs, read_run
from ..config import ConfigError
from ..engine import Job, PresetRun, RunResult, RunSpec, run_all, run_dir
from ..options import (add_executor_args, add_out_arg, add_plans_arg, add_target_args, add_workers_arg, check_workers,
                       parse_plans, sets_from_args, target_from_args)
from ..targets import CommandTarget, PresetTarget, Target
from ..train import RunConfig

RESERVED_SETS = ("train.seed", "train.data_seed")
MAX_POINTS = 15  # a default η_base grid spans at most five decades of the {1, 2, 5} ladder

# --- small parsers (CLI and API share them) -------------------------------------------------------


def arm_name(spec: str) -> str:
    """An arm's name: the named plan's name, or a plan file's stem (``plans/mine.toml`` → ``mine``)."""
    return Path(spec).stem if spec.endswith((".toml", ".json")) else spec


def ladder_next(value: float, direction: int) -> float:
    """The next value of the paper's {1, 2, 5}×10⁻ⁿ ladder above (``direction=1``) or below
    (``-1``) ``value``.

    >>> ladder_next(2e-3, 1), ladder_next(1e-3, -1), ladder_next(3e-3, 1)
    (0.005, 0.0005, 0.005)
    """
    exp = math.floor(math.log10(value))
    ladder = [float(f"{m}e{e}") for e in range(exp - 1, exp + 2) for m in (1, 2, 5)]
    if direction > 0:
        return min(v for v in ladder if v > value * (1 + 1e-9))
    return max(v for v in ladder if v < value * (1 - 1e-9))


def grid_around(base_lr: float, n: int = 5) -> list[float]:
    """``n`` values of the paper's {1, 2, 5}×10⁻ⁿ ladder centred on the one nearest ``base_lr``.

    >>> grid_around(3e-3)
    [0.0005, 0.001, 0.002, 0.005, 0.01]
    """
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ConfigError(f"base_lr: must be a finite number > 0, got {base_lr!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_POINTS:
        raise ConfigError(f"points: how many ladder values the default grid has, 1 to {MAX_POINTS} "
                          f"({MAX_POINTS // 3} decades), got {n!r}")
    exp = math.floor(math.log10(base_lr))
    span = n // 3 + 2  # decades either side: enough for n values centred on any of them
    ladder = [(m, e) for e in range(exp - span, exp + span + 1) for m in (1, 2, 5)]
    centre = min(range(len(ladder)), key=lambda i: abs(math.log(ladder[i][0] * 10.0**ladder[i][1] / base_lr)))
    lo = centre - (n - 1) // 2
    return [float(f"{m}e{e}") for m, e in ladder[lo: lo + n]]


# --- one run: how it ended ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """How one (arm, seed) run ended on the engine: where it lives, its status and final losses.
    What its logs say (curves, spikes, router, update sizes) is compare's ``CompareRun``, built
    from this and the logs once; lr-grid needs only this."""

    arm: str
    seed: int
    out: Path
    status: str  # finished | diverged | failed
    error: str | None = None
    reused: bool = False
    final_eval_loss: float | None = None
    final_train_loss: float | None = None
    steps: int = 0
    total_steps: int = 0
    skipped_steps: int = 0
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status == "finished"


# --- running many runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmRun:
    arm: str
    seed: int
    run: RunSpec
    out: Path
    label: str  # for progress lines: "paper-moe seed 1", "paper-moe η_base 2e-3 seed 0"

    @property
    def cfg(self) -> RunConfig | None:
        """The run config of a preset run; ``None`` for a command (the script owns its config)."""
        return self.run.cfg if isinstance(self.run, PresetRun) else None


def run_info(spec: ArmRun, r: RunResult) -> RunInfo:
    return RunInfo(
        arm=spec.arm, seed=spec.seed, out=spec.out, status=r.status, error=r.error, reused=r.reused,
        final_eval_loss=r.final_eval_loss, final_train_loss=r.final_train_loss, steps=r.steps,
        total_steps=r.total_steps or r.steps, skipped_steps=_skipped(spec.out), wall_s=r.wall_s,
    )


def _skipped(out: Path) -> int:
    try:
        return int(json.loads((out / "summary.json").read_text()).get("skipped_steps", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def execute_runs(specs: Sequence[ArmRun], workers: int | None, metric: str = "eval", log: Callable[[str], None] = print,
             progress: bool = False, executor=None) -> tuple[list[RunInfo], dict[Path, RunLogs]]:
    """Run every spec on the engine (reusing finished and diverged runs, resuming interrupted
    ones), then read each run's logs. A run that finished but blew up counts as diverged."""
    results = run_all([Job(s.run, s.out, label=s.label) for s in specs], workers, log, progress=progress,
                      executor=executor)
    logs = {s.out: read_run(s.out, s.cfg) for s in specs}
    infos = []
    for s, r in zip(specs, results):
        info = run_info(s, r)
        why = logs[info.out].blowup(metric) if info.finished else None
        infos.append(info if why is None else replace(info, status="diverged", error=why))
    return infos, logs

def arms_of(plans: Sequence[str], need: int) -> list[tuple[str, str]]:
    arms = [(arm_name(p), p) for p in plans]
    names = [a for a, _ in arms]
    if len(arms) < need:
        raise ConfigError(
            f"plans: {need} needed (the first is the baseline), got {len(arms)}; e.g. --plans uniform-moe,paper-moe"
            if need > 1 else "plans: give at least one plan"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"plans: {', '.join(dup)} appears twice; each arm needs its own name (plan file stem)")
    return arms


def check_common(seeds: int, sets: Mapping[str, Any] | None, workers: int | None) -> dict[str, Any]:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds: at least 1, got {seeds!r}; e.g. --seeds 3 (the paper's count)")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers: at least 1, got {workers!r}")
    sets = dict(sets or {})
    clash = [k for k in RESERVED_SETS if k in sets]
    if clash:
        raise ConfigError(
            f"{clash[0]}: compare and lr-grid set it themselves (seed i uses train.seed = train.data_seed = i); "
            "choose the number of seeds with --seeds"
        )
    return sets


def arm_run(target: Target, arm: str, plan: str, seed: int, sets, base_lr: float | None, root: Path,
          label_lr: bool = False) -> ArmRun:
    extra: dict[str, Any] = {} if base_lr is None else {"plan.base_lr": base_lr}
    run = target.spec(plan, seed, {**sets, **extra})
    label = f"{arm} η_base {run.plan.base_lr:g} seed {seed}" if label_lr else f"{arm} seed {seed}"
    return ArmRun(arm, seed, run, run_dir(root, run), label)


def target_of(target: str | Target, config_file: str | Path | None) -> Target:
    if isinstance(target, str):
        return PresetTarget(target, None if config_file is None else str(config_file))
    if config_file is not None:
        raise ConfigError("config_file: give it inside the PresetTarget (a command's script owns its config)")
    return target

def describe_target(target: Target) -> dict[str, Any]:
    if isinstance(target, CommandTarget):
        return {"command": target.command, "steps": target.steps, "cwd": str(Path(target.cwd).resolve())}
    return {"preset": target.preset, "config_file": target.config_file}


def python_call(module: str, fn: str, **kwargs) -> str:
    """The Python call that repeats a command, for its results: ``rlrs.experiments.compare.compare(...)``."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
    return f"rlrs.experiments.{module}.{fn}({args})"


# --- command line: what compare and lr-grid share ---------------------------------------------------


def default_out(command: str, target: Target) -> Path:
    """Where ``command`` (``compare``, ``lr-grid``) writes when no ``out`` is given:
    ``runs/COMMAND-NAME``, NAME the model size (or ``command`` for a ``--command``)."""
    return Path(f"runs/{command}-{target.name}")

def common_args(p, command: str) -> None:
    add_target_args(p)
    add_plans_arg(p)
    add_out_arg(p, shown=f"runs/{command}-MODEL, MODEL the model size or `command`; runs go under OUT/runs and "
                         "are reused")
    add_workers_arg(p)
    add_executor_args(p)

def prepare_args(args, name: str) -> Target:
    target = target_from_args(args)
    args.plans_list = parse_plans(args.plans) if args.plans is not None else target.default_plans()
    args.out = default_out(name, target) if args.out is None else Path(args.out)
    args.sets = sets_from_args(args)
    check_workers(args.workers)
    if args.seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {args.seeds}; e.g. --seeds 3 (the paper's count)")
    return target


def extra_args(args) -> list[str]:
    return ["--plans", ",".join(args.plans_list), "--out", str(args.out)]
