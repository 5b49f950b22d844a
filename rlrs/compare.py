"""How much faster does a model train with relative schedules? The paper's answer (appendix A).

    >>> from rlrs.compare import compare, lr_grid, load_grid
    >>> grid = lr_grid("micro-moe", ["uniform-moe", "paper-moe"], out="runs/bench")  # doctest: +SKIP
    >>> res = compare("micro-moe", ["uniform-moe", "paper-moe"], seeds=3, out="runs/bench",
    ...               base_lrs=grid.best)                                             # doctest: +SKIP
    >>> print(res.lines()[0])                                                          # doctest: +SKIP
    paper-moe: speed-up +22.8% ...

or ``rlrs lr-grid --model micro-moe --plans uniform-moe,paper-moe --out runs/bench`` then
``rlrs compare --model micro-moe --plans uniform-moe,paper-moe --seeds 3 --out runs/bench
--base-lrs-from runs/bench/grid.json`` (one ``--out`` for both lets compare reuse the grid's runs).

**The speed-up.** Every arm trains each seed ``i`` with ``train.seed = train.data_seed = i``, so
seed ``i`` of every arm starts from the same weights and sees the same batches (the paper's
"3 specified data seeds"). The loss is measured at every 1% of training. The first plan is the
baseline: it reaches its final loss ``L`` (mean over its seeds) at ``T_base``; ``T_relative`` is
the first measuring step at which the relative arm's mean loss is ``<= L``, and::

    speed-up = (T_base / T_relative - 1) × 100%

Worked example: the baseline ends at L = 3.70 after T_base = 10,000 steps; the relative arm's
mean loss is 3.72 at step 6,900 and 3.69 at step 7,000, so T_relative = 7,000 and the speed-up is
(10000 / 7000 - 1) × 100% = +42.9%. Both arms are read by one rule
(:func:`rlrs.analysis.speedup`: a monotone fit of each curve, then the first arrival at ``L``),
so an arm that trains like the baseline measures 0%, also on a noisy or plateaued curve; the
report gives the bounds one measuring interval allows and says "no measurable difference" when
they do not share a sign or the interval over seeds covers 0, and flags arms whose runs are
identical to the baseline's. A relative arm that never gets to ``L`` has *no speed-up* (reported
in those words, never as 0%). The relative schedule has not finished decaying at T_relative, so
the number underestimates the gain (the paper says so too).

The loss is the held-out eval loss by default; ``metric="train"`` uses the training loss, averaged
over each 1% of steps (a single batch's loss is too noisy to compare). Runs live in
content-addressed directories under ``<out>/runs/``: the same command reuses finished runs and
resumes interrupted ones. A run that diverges or crashes is recorded with its error and shown in
the report; the means then cover the finished seeds only, and the report says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import config as _config
from . import files
from . import reporting
from .analysis import (Difference, Interval, RouterCurve, RouterHealth, RunLogs, Spike, SpeedUp, UpdateCurves,
                       bootstrap_speedup, detect_spikes,
                       mean_curve, mean_router, mean_updates, paired_difference, read_run, router_health, speedup)
from .config import ConfigError
from .engine import (Job, PresetRun, RunResult, RunSpec, reason_line, run_all,
                     run_dir)
from .options import (add_executor_args, add_grid_args, add_out_arg, add_plans_arg, add_seeds_arg, add_target_args,
                      add_workers_arg, check_workers, command_line, default_of, executor_from_args, parse_grid,
                      parse_plans, sets_from_args, target_from_args)
from .plan import Plan
from .targets import CommandTarget, PresetTarget, Target
from .train import RunConfig

METRICS = ("eval", "train")
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


# --- one run: how it ended and what its logs say ---------------------------------------------------


@dataclass
class RunInfo:
    """One (arm, seed) run: where it lives, how it ended, its losses and diagnostics."""

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
    # From the run's logs (summarize):
    final_loss: float | None = None  # on the comparison's metric; None unless finished
    final_train_1pct: float | None = None  # mean training loss over the last 1% of steps
    curve_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    curve_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spikes: list[Spike] = field(default_factory=list)
    router: RouterHealth | None = None
    updates: UpdateCurves | None = None
    router_curve: RouterCurve | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_dict(self) -> dict[str, Any]:
        """The run's entry in ``results.json``."""
        return {
            "arm": self.arm, "seed": self.seed, "data_seed": self.seed, "out": str(self.out), "status": self.status,
            "error": self.error, "reused": self.reused, "final_eval_loss": self.final_eval_loss,
            "final_train_loss": self.final_train_loss, "steps": self.steps, "total_steps": self.total_steps,
            "skipped_steps": self.skipped_steps, "wall_s": self.wall_s, "final_loss": self.final_loss,
            "final_train_1pct": self.final_train_1pct,
            "curve": {"steps": self.curve_steps, "loss": self.curve_loss},
            "spikes": [{**dataclasses.asdict(s), "rise": s.rise} for s in self.spikes],
            "router": None if self.router is None else dataclasses.asdict(self.router),
            "updates": None if self.updates is None else dataclasses.asdict(self.updates),
            "router_curve": None if self.router_curve is None else dataclasses.asdict(self.router_curve),
        }


# --- running many runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    arm: str
    seed: int
    run: RunSpec
    out: Path
    label: str  # for progress lines: "paper-moe seed 1", "paper-moe η_base 2e-3 seed 0"

    @property
    def cfg(self) -> RunConfig | None:
        """The run config of a preset run; ``None`` for a command (the script owns its config)."""
        return self.run.cfg if isinstance(self.run, PresetRun) else None


def _info(spec: _Spec, r: RunResult) -> RunInfo:
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


def _execute(specs: Sequence[_Spec], workers: int | None, metric: str = "eval", log: Callable[[str], None] = print,
             progress: bool = False, executor=None) -> tuple[list[RunInfo], dict[Path, RunLogs]]:
    """Run every spec on the engine (reusing finished and diverged runs, resuming interrupted
    ones), then read each run's logs. A run that finished but blew up counts as diverged."""
    results = run_all([Job(s.run, s.out, label=s.label) for s in specs], workers, log, progress=progress,
                      executor=executor)
    infos = [_info(s, r) for s, r in zip(specs, results)]
    logs = {s.out: read_run(s.out, s.cfg) for s in specs}
    for info in infos:
        why = logs[info.out].blowup(metric) if info.finished else None
        if why is not None:
            info.status, info.error = "diverged", why
    return infos, logs


# --- compare ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCurve:
    """An arm's loss at the measuring points: mean and std over its finished seeds."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class LossStat:
    mean: float
    std: float  # over seeds (0 with one seed)
    n: int


@dataclass(frozen=True)
class SeedSpeedUp:
    seed: int
    percent: float | None  # None: measured, but never reaches the baseline's final loss
    measured: bool  # False: this seed of the baseline or of the arm did not finish


@dataclass
class ArmResult:
    """One arm of a comparison: its runs, mean curve, final loss and, for a relative arm, its
    speed-up and paired difference against the baseline."""

    name: str
    plan: Plan
    runs: list[RunInfo]
    diagnostics_seeds: list[int]  # the finished seeds; the runs that died if none finished
    updates: UpdateCurves
    router: RouterCurve | None
    curve: MeanCurve | None = None  # None: no seed finished
    final_loss: LossStat | None = None
    # Relative arms only (the baseline keeps the defaults):
    speedup: SpeedUp | None = None
    difference: Difference | None = None
    paired_seeds: list[int] = field(default_factory=list)
    per_seed: list[SeedSpeedUp] = field(default_factory=list)
    text: str = ""  # the speed-up in one sentence, or why there is none
    interval: Interval | None = None  # 95% bootstrap interval over paired seeds (2 or more)
    identical: bool = False  # every paired seed's curve equals the baseline's: the plans changed nothing
    same_plan: bool = False  # the baseline's plan under another name: its runs are the baseline's
    unpaired: list[int] = field(default_factory=list)  # seeds whose step-0 loss differs from the baseline's

    @property
    def verdict(self) -> str:
        """``same plan`` (as the baseline's: the same runs), ``identical`` (other plans, the same
        curves), ``no measurable difference``, ``faster``, ``slower``, ``no speed-up`` (never
        reaches the baseline's final loss) or ``not measured`` (a side has no finished run)."""
        sp = self.speedup
        if self.same_plan:
            return "same plan"
        if sp is None:
            return "not measured"
        if self.identical:
            return "identical"
        if sp.percent is None:
            return "no speed-up"
        covers_zero = self.interval is not None and (self.interval.low is None or self.interval.low <= 0) \
            and (self.interval.high is None or self.interval.high >= 0)
        if not sp.measurable or covers_zero:
            return "no measurable difference"
        return "faster" if sp.percent > 0 else "slower"

    @property
    def base_lr(self) -> float:
        return self.plan.base_lr

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    @property
    def not_finished(self) -> list[RunInfo]:
        return [r for r in self.runs if not r.finished]


@dataclass
class CompareResult:
    """What :func:`compare` found. ``to_dict()`` is what ``results.json`` holds."""

    out: Path
    preset: str  # the target's name: a preset, or the command's
    target: dict[str, Any]
    command: str
    metric: str
    seeds: int
    total_steps: int
    eval_interval: float | None  # None: a command's script chooses its eval points
    sets: dict[str, Any]
    components: list[str]
    plans: dict[str, str]  # arm -> the named plan or plan file it came from
    arms: dict[str, ArmResult]  # the baseline first
    runs: list[RunInfo]
    wall_s: float = 0.0  # this command: training (new runs only) and analysis
    files: list[Path] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return next(iter(self.arms))

    @property
    def relative(self) -> list[ArmResult]:
        return list(self.arms.values())[1:]

    @property
    def speedups(self) -> dict[str, SpeedUp | None]:
        """Each relative arm's speed-up (``None``: no finished run on one side to measure it)."""
        return {a.name: a.speedup for a in self.relative}

    @property
    def differences(self) -> dict[str, Difference | None]:
        return {a.name: a.difference for a in self.relative}

    def lines(self) -> list[str]:
        """One sentence per relative arm: its speed-up (or why there is none)."""
        return [a.text for a in self.relative]

    def to_dict(self) -> dict[str, Any]:
        arms = {}
        for a in self.arms.values():
            arms[a.name] = {
                "seeds": a.seeds, "seeds_finished": [r.seed for r in a.finished],
                "not_finished": [{"seed": r.seed, "status": r.status, "error": r.error} for r in a.not_finished],
                "diagnostics_seeds": a.diagnostics_seeds, "base_lr": a.base_lr, "plan": a.plan.to_dict(),
                "updates": dataclasses.asdict(a.updates),
                "router": None if a.router is None else dataclasses.asdict(a.router),
            }
            if a.curve is not None:
                arms[a.name]["curve"] = dataclasses.asdict(a.curve)
            if a.final_loss is not None:
                arms[a.name]["final_loss"] = dataclasses.asdict(a.final_loss)
        speedups, diffs = {}, {}
        n_base = len(self.arms[self.baseline].finished)
        for a in self.relative:
            sp = a.speedup
            speedups[a.name] = {
                **(dataclasses.asdict(sp) if sp else {"t_base": None, "t_relative": None, "target_loss": None, "percent": None}),
                "seeds_baseline": n_base, "seeds_relative": len(a.finished), "seeds": self.seeds,
                "per_seed": [dataclasses.asdict(p) for p in a.per_seed], "text": a.text,
                "interval": None if a.interval is None else dataclasses.asdict(a.interval),
                "verdict": a.verdict, "identical": a.identical, "unpaired_seeds": a.unpaired,
            }
            diffs[a.name] = None if a.difference is None else {**dataclasses.asdict(a.difference), "seeds": a.paired_seeds}
        return _config.json_safe({
            "command": self.command, "preset": self.preset, "target": self.target, "baseline": self.baseline,
            "metric": self.metric, "seeds": self.seeds, "plans": self.plans,
            "total_steps": self.total_steps, "eval_interval": self.eval_interval, "sets": self.sets,
            "components": self.components, "wall_s": self.wall_s, "runs": [r.to_dict() for r in self.runs],
            "arms": arms, "speedups": speedups, "differences": diffs,
        })


def _arms(plans: Sequence[str], need: int) -> list[tuple[str, str]]:
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


def _check_common(seeds: int, sets: Mapping[str, Any] | None, workers: int | None) -> dict[str, Any]:
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


def _spec(target: Target, arm: str, plan: str, seed: int, sets, base_lr: float | None, root: Path,
          label_lr: bool = False) -> _Spec:
    extra: dict[str, Any] = {} if base_lr is None else {"plan.base_lr": base_lr}
    run = target.spec(plan, seed, {**sets, **extra})
    label = f"{arm} η_base {run.plan.base_lr:g} seed {seed}" if label_lr else f"{arm} seed {seed}"
    return _Spec(arm, seed, run, run_dir(root, run), label)


def _target(target: str | Target, config_file: str | Path | None) -> Target:
    if isinstance(target, str):
        return PresetTarget(target, None if config_file is None else str(config_file))
    if config_file is not None:
        raise ConfigError("config_file: give it inside the PresetTarget (a command's script owns its config)")
    return target


def compare(
    target: str | Target,
    plans: Sequence[str],
    seeds: int = 3,
    out: str | Path | None = None,
    *,
    sets: Mapping[str, Any] | None = None,
    base_lrs: Mapping[str, float] | None = None,
    metric: str = "eval",
    workers: int | None = None,
    config_file: str | Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    executor=None,
) -> CompareResult:
    """Train every plan with ``seeds`` paired seeds and measure the paper's speed-up of each plan
    over the first (the baseline). Writes ``results.json``, ``report.md`` and PNGs into ``out``
    (default: :func:`default_out`, ``runs/compare-NAME``, as ``rlrs compare``).

    ``target`` is a preset name, a :class:`~rlrs.targets.PresetTarget` or the user's own command
    (:class:`~rlrs.targets.CommandTarget`). ``base_lrs`` maps arm names to their η_base (e.g.
    :func:`load_grid`'s or ``lr_grid().best``); other arms keep their plan's. ``metric`` is
    ``"eval"`` (held-out loss) or ``"train"`` (preset runs only). ``command`` is recorded in
    ``results.json`` (the CLI passes its command line). ``executor`` (:mod:`rlrs.executors`, e.g. a
    Slurm cluster) runs the runs instead of a local pool of ``workers``.
    """
    t0 = time.perf_counter()
    target = _target(target, config_file)
    preset = target.name
    if metric not in METRICS:
        raise ConfigError(f"metric: {metric!r} is unknown; {_config.closest(metric, METRICS)}")
    if metric == "train" and isinstance(target, CommandTarget):
        raise ConfigError("metric: 'train' needs rlrs's own training log; a --command reports eval losses only, use --metric eval")
    arms = _arms(plans, need=2)
    sets = _check_common(seeds, sets, workers)
    lrs = _check_base_lrs(base_lrs, [a for a, _ in arms])
    out = default_out("compare", target) if out is None else Path(out)
    specs = _compare_specs(target, arms, seeds, sets, lrs, out)
    length = specs[0].run.total_steps
    log(f"rlrs compare: {preset}, plans {', '.join(a for a, _ in arms)} (baseline {arms[0][0]}), "
        f"{seeds} seed{'s' * (seeds > 1)}, {length or 'its own number of'} steps per run -> {out}")
    infos, logs = _execute(specs, workers, metric, log, progress, executor)
    plan_of = {s.arm: s.run.plan for s in specs}
    cfg0 = specs[0].cfg
    res = CompareResult(
        out=out, preset=preset, target=_describe_target(target),
        command=command or _python_call("compare", preset=preset, plans=list(plans), seeds=seeds, out=str(out),
                                        sets=sets or None, base_lrs=dict(base_lrs or {}) or None, metric=metric),
        metric=metric, seeds=seeds, total_steps=length or max((i.total_steps for i in infos), default=0),
        eval_interval=cfg0.train.eval_interval if cfg0 else None, sets=sets,
        components=next((lg.components for lg in logs.values() if lg.components), []), plans=dict(arms),
        arms=summarize(plan_of, infos, logs, metric=metric, n_experts=cfg0.model.n_experts if cfg0 else 0),
        runs=infos,
    )
    res.wall_s = time.perf_counter() - t0
    # The numbers first: a figure that fails to draw must not cost the results.
    results_path = out / "results.json"
    files.write_json(results_path, res.to_dict())
    series = {(i.arm, i.seed): (logs[i.out].train_steps, logs[i.out].train_loss) for i in infos}
    res.files = [results_path, *reporting.write_compare(res, series)]
    return res


def _compare_specs(target: Target, arms: Sequence[tuple[str, str]], seeds: int, sets, lrs: Mapping[str, float],
                   out: Path) -> list[_Spec]:
    # Seed-major: an interrupted compare leaves complete pairs behind.
    return [_spec(target, arm, plan, seed, sets, lrs.get(arm), out / "runs")
            for seed in range(seeds) for arm, plan in arms]


def run_dirs(
    target: str | Target,
    plans: Sequence[str],
    seeds: int,
    out: str | Path,
    *,
    sets: Mapping[str, Any] | None = None,
    base_lrs: Mapping[str, float] | None = None,
) -> dict[tuple[str, int], Path]:
    """Where :func:`compare` called with the same arguments keeps each ``(arm, seed)``'s run, to
    watch the runs' logs while they train (``rlrs demo`` prints their eval losses).

    >>> run_dirs("micro-moe", ["uniform-moe", "paper-moe"], 1, "runs/demo")[("paper-moe", 0)]  # doctest: +SKIP
    PosixPath('runs/demo/runs/paper-moe-...')
    """
    target = _target(target, None)
    lrs = _check_base_lrs(base_lrs, [a for a, _ in _arms(plans, need=2)])
    specs = _compare_specs(target, _arms(plans, need=2), seeds, _check_common(seeds, sets, None), lrs, Path(out))
    return {(s.arm, s.seed): s.out for s in specs}


def _describe_target(target: Target) -> dict[str, Any]:
    if isinstance(target, CommandTarget):
        return {"command": target.command, "steps": target.steps, "cwd": str(Path(target.cwd).resolve())}
    return {"preset": target.preset, "config_file": target.config_file}


def _check_base_lrs(base_lrs: Mapping[str, float] | None, arms: Sequence[str]) -> dict[str, float]:
    lrs = dict(base_lrs or {})
    for arm, lr in lrs.items():
        if arm not in arms:
            raise ConfigError(f"base_lrs: {arm!r} is not an arm; {_config.closest(arm, arms)}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"base_lrs[{arm!r}]: η_base must be a finite number > 0, got {lr!r}")
    return {a: float(v) for a, v in lrs.items()}


def _python_call(fn: str, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
    return f"rlrs.compare.{fn}({args})"


def summarize(
    plans: Mapping[str, Plan],
    runs: Sequence[RunInfo],
    logs: Mapping[Path, RunLogs],
    metric: str = "eval",
    n_experts: int = 0,
) -> dict[str, ArmResult]:
    """Per-arm means over finished seeds, the speed-up and paired final-loss difference of every
    arm against the first (the baseline); fills each run's losses, spikes and router health."""
    for r in runs:
        lg = logs[r.out]
        r.curve_steps, r.curve_loss = lg.curve(metric)
        r.final_loss = float(r.curve_loss[-1]) if r.finished else None
        r.final_train_1pct = float(lg.window_loss[-1]) if lg.window_loss.size else None
        r.spikes = detect_spikes(lg.train_steps, lg.train_loss)
        r.router = router_health(lg, n_experts) if lg.router is not None else None
        r.updates, r.router_curve = lg.updates, lg.router
    arms: dict[str, ArmResult] = {}
    for name, plan in plans.items():
        mine = [r for r in runs if r.arm == name]
        fin = [r for r in mine if r.finished]
        diag = fin or mine  # diagnostics of the finished seeds; if none finished, of the runs that died
        arm = ArmResult(name, plan, mine, [r.seed for r in diag], mean_updates([logs[r.out] for r in diag]),
                        mean_router([logs[r.out] for r in diag]))
        if fin:
            arm.curve = MeanCurve(*mean_curve([(r.curve_steps, r.curve_loss) for r in fin]))
            finals = [r.final_loss for r in fin]
            arm.final_loss = LossStat(float(np.mean(finals)), float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                                      len(finals))
        arms[name] = arm
    base, *relative = arms.values()
    seeds = max((r.seed for r in runs), default=-1) + 1
    base_by_seed = {r.seed: r for r in base.finished}
    for arm in relative:
        if base.curve is not None and arm.curve is not None:
            arm.speedup = speedup(base.curve.steps, base.curve.mean, arm.curve.steps, arm.curve.mean)
        mine = {r.seed: r for r in arm.finished}
        arm.paired_seeds = sorted(base_by_seed.keys() & mine.keys())
        if arm.paired_seeds:
            arm.difference = paired_difference([base_by_seed[s].final_loss for s in arm.paired_seeds],
                                               [mine[s].final_loss for s in arm.paired_seeds])
        for s in sorted({r.seed for r in arm.runs}):
            rb, ra = base_by_seed.get(s), mine.get(s)
            pct = speedup(rb.curve_steps, rb.curve_loss, ra.curve_steps, ra.curve_loss).percent if rb and ra else None
            arm.per_seed.append(SeedSpeedUp(s, pct, bool(rb and ra)))
        if arm.speedup is not None:
            arm.interval = bootstrap_speedup([(base_by_seed[s].curve_steps, base_by_seed[s].curve_loss) for s in arm.paired_seeds],
                                             [(mine[s].curve_steps, mine[s].curve_loss) for s in arm.paired_seeds])
        arm.identical = bool(arm.paired_seeds) and all(
            np.array_equal(base_by_seed[s].curve_steps, mine[s].curve_steps)
            and np.array_equal(base_by_seed[s].curve_loss, mine[s].curve_loss) for s in arm.paired_seeds)
        arm.same_plan = arm.plan == base.plan
        arm.unpaired = [s for s in arm.paired_seeds if not _same_start(base_by_seed[s], mine[s])]
        arm.text = _speedup_text(arm, base.name, len(base.finished), seeds, metric)
        if arm.unpaired:
            arm.text += (f". Not paired: seed {', '.join(map(str, arm.unpaired))} of {arm.name} starts from another "
                         f"loss at step 0 than the baseline's, so the arms did not start from the same weights; seed "
                         f"the model with rlrs.script.seed() (torch.manual_seed) so that seed i of every arm starts alike")
    return arms


def _same_start(a: RunInfo, b: RunInfo) -> bool:
    """Whether two runs of one seed measured the same loss at step 0 (or either did not measure it):
    the same weights and the same held-out batches give the same number, whatever the plan."""
    la = a.curve_loss[a.curve_steps == 0]
    lb = b.curve_loss[b.curve_steps == 0]
    return not (la.size and lb.size) or bool(np.isclose(la[0], lb[0], rtol=1e-6, atol=0.0))


def _speedup_text(arm: ArmResult, base: str, n_base: int, seeds: int, metric: str) -> str:
    loss = "eval loss" if metric == "eval" else "train loss"
    name, sp, n_rel = arm.name, arm.speedup, len(arm.finished)
    if arm.same_plan:
        return (f"{name}: the same plan as the baseline {base}, so its runs are the baseline's runs (not trained "
                f"again): nothing to measure; for an A/A check of seed noise, compare the seeds instead")
    if n_base == 0:
        return f"{name}: not measured: every run of the baseline {base} diverged or failed"
    if n_rel == 0:
        return f"{name}: not measured: every run of {name} diverged or failed"
    if n_base == n_rel == seeds:
        over = f"means over {seeds} seed{'s' * (seeds > 1)}"
    else:
        over = f"means over fewer seeds: {n_base} of {seeds} baseline, {n_rel} of {seeds} {name}"
    if arm.identical:
        return (f"{name}: no difference: every seed trained exactly as the baseline's did (the same loss at every "
                f"measurement), so the plans changed nothing; if they differ, the plan did not reach the "
                f"optimizer (a script's own LR code or another scheduler overwrote it?) ({over})")
    if sp.percent is None:
        return f"{name}: no speed-up: never reaches the baseline's final {loss} {sp.target_loss:.4f} ({over})"
    where = (f"reaches the baseline's final {loss} {sp.target_loss:.4f} at step {sp.t_relative} instead of "
             f"{sp.t_base} ({sp.bounds_text()}; {over})")
    if arm.verdict == "no measurable difference":
        why = "one measuring interval allows either sign" if not sp.measurable else "its interval over seeds covers 0"
        return f"{name}: no measurable difference ({why}): speed-up {sp.percent:+.1f}%, {where}"
    slower = " (slower than the baseline)" if sp.percent < 0 else ""
    return f"{name}: speed-up {sp.percent:+.1f}%{slower}: {where}"


# --- lr-grid ----------------------------------------------------------------------------------------


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
    target = _target(target, config_file)
    preset = target.name
    arms = _arms(plans, need=1)
    sets = _check_common(seeds, sets, workers)
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
        specs = [_spec(target, arm, plan, seed, sets, lr, out / "runs", label_lr=True)
                 for seed in range(seeds) for arm, plan in arms for lr in values[arm]]
        infos, _ = _execute(specs, workers, "eval", log, progress, executor)
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
        out=out, preset=preset, target=_describe_target(target),
        command=command or _python_call("lr_grid", preset=preset, plans=list(plans), out=str(out),
                                        grid=list(grid) if grid else None, seeds=seeds, sets=sets or None),
        seeds=seeds, plans=dict(arms), arms=grid_arms,
    )
    res.wall_s = time.perf_counter() - t0
    path = out / "grid.json"
    files.write_json(path, res.to_dict())
    res.files = [path, *reporting.write_grid(res)]
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


# --- command line -----------------------------------------------------------------------------------


def default_out(command: str, target: Target) -> Path:
    """Where ``command`` (``compare``, ``lr-grid``) writes when no ``out`` is given:
    ``runs/COMMAND-NAME``, NAME the model size (or ``command`` for a ``--command``)."""
    return Path(f"runs/{command}-{target.name}")


def _common_args(p, command: str) -> None:
    add_target_args(p)
    add_plans_arg(p)
    add_out_arg(p, shown=f"runs/{command}-MODEL, MODEL the model size or `command`; runs go under OUT/runs and "
                         "are reused")
    add_workers_arg(p)
    add_executor_args(p)


def add_commands(sub) -> None:
    """Register ``rlrs compare`` and ``rlrs lr-grid``."""
    p = sub.add_parser(
        "compare", help="the paper's speed-up of relative plans over a baseline, over paired seeds",
        description="Train each plan with each seed (seed i of every arm uses data seed i), then measure "
                    "the paper's speed-up of every plan over the first: (T_base / T_relative - 1) x 100%. "
                    "Trains one of rlrs's model sizes, or your own script with --command. "
                    "Writes results.json, report.md and PNG plots into --out. Exit status 1 if a run crashed.")
    _common_args(p, "compare")
    add_seeds_arg(p, default_of(compare, "seeds"))
    p.add_argument("--metric", choices=METRICS, default=default_of(compare, "metric"),
                   help=f"eval: held-out loss; train: training loss (model sizes only) (default: {default_of(compare, 'metric')})")
    p.add_argument("--base-lrs-from", default=None, metavar="GRID_JSON",
                   help="take each arm's η_base from an `rlrs lr-grid` grid.json (or its directory)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "lr-grid", help="per-plan η_base search over the paper's {1,2,5}x10^-n grid",
        description="Train each plan at each η_base of the grid and report the best per plan (the paper tunes "
                    "η_base separately for the baseline and the relative plan). Trains one of rlrs's model sizes, "
                    "or your own script with --command. Writes grid.json, grid.md and lr_grid.png into --out "
                    "(give compare's --out to share runs with it); "
                    "`rlrs compare --base-lrs-from OUT/grid.json` uses the result.")
    _common_args(p, "lr-grid")
    add_grid_args(p, default_of(lr_grid, "extend"))
    p.add_argument("--points", type=int, default=default_of(lr_grid, "points"),
                   help=f"size of the default grid around each plan's η_base (default: {default_of(lr_grid, 'points')})")
    add_seeds_arg(p, default_of(lr_grid, "seeds"))
    p.set_defaults(func=cmd_lr_grid)


def _prepare(args, name: str) -> Target:
    target = target_from_args(args)
    args.plans_list = parse_plans(args.plans) if args.plans is not None else target.default_plans()
    args.out = default_out(name, target) if args.out is None else Path(args.out)
    args.sets = sets_from_args(args)
    check_workers(args.workers)
    if args.seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {args.seeds}; e.g. --seeds 3 (the paper's count)")
    return target


def _extra_plans(args) -> list[str]:
    return ["--plans", ",".join(args.plans_list), "--out", str(args.out)]


def cmd_compare(args) -> int:
    target = _prepare(args, "compare")
    base_lrs = None
    extra = [*_extra_plans(args), "--seeds", str(args.seeds), "--metric", args.metric]
    if args.base_lrs_from:
        base_lrs = load_grid(args.base_lrs_from)
        arms = [arm_name(p) for p in args.plans_list]
        missing = [a for a in arms if a not in base_lrs]
        if missing:
            raise ConfigError(
                f"--base-lrs-from {args.base_lrs_from}: no η_base for {', '.join(missing)} (it has: "
                f"{', '.join(base_lrs) or 'none'}); run `rlrs lr-grid` with these plans first"
            )
        base_lrs = {a: base_lrs[a] for a in arms}
        extra += ["--base-lrs-from", args.base_lrs_from]
        grid_path = Path(args.base_lrs_from)
        tuned_on = json.loads((grid_path / "grid.json" if grid_path.is_dir() else grid_path).read_text()).get("preset")
        if tuned_on and tuned_on != target.name:
            # Allowed (a deliberate transfer), but η_base rarely transfers across sizes (the paper retunes it).
            print(f"rlrs compare: note: {args.base_lrs_from} was tuned on {tuned_on}, not {target.name}", file=sys.stderr)
    with executor_from_args(args, args.out / "slurm") as ex:
        res = compare(target, args.plans_list, args.seeds, args.out, sets=args.sets, base_lrs=base_lrs,
                      metric=args.metric, workers=args.workers, command=command_line("compare", args, extra),
                      progress=sys.stderr.isatty(), executor=ex)
    print()
    for line in res.lines():
        print(line)
    for arm, d in res.differences.items():
        if d is not None:
            print(f"{arm}: {d.describe()}")
    bad = [r for r in res.runs if r.status != "finished"]
    for r in bad:
        print(f"{r.arm} seed {r.seed}: {r.status}: {reason_line(r.status, r.error)}")
    print(f"report: {res.out / 'report.md'}  results: {res.out / 'results.json'}")
    return 1 if any(r.status == "failed" for r in res.runs) else 0


def cmd_lr_grid(args) -> int:
    target = _prepare(args, "lr-grid")
    grid = parse_grid(args.grid) if args.grid is not None else None
    extra = [*_extra_plans(args), "--seeds", str(args.seeds), "--extend", str(args.extend)] + (
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
