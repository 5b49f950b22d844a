"""How much faster does a model train with relative schedules? The paper's answer (appendix A).

    >>> from rlrs.experiments.compare import compare
    >>> from rlrs.experiments.lr_grid import lr_grid
    >>> grid = lr_grid("micro-moe", ["uniform-moe", "paper-moe"], out="runs/bench")  # doctest: +SKIP
    >>> res = compare("micro-moe", ["uniform-moe", "paper-moe"], seeds=3, out="runs/bench",
    ...               base_lrs=grid.best)                                             # doctest: +SKIP
    >>> print(res.lines()[0])                                                          # doctest: +SKIP
    paper-moe: speed-up +22.8% ...

or ``rlrs lr-grid --model micro-moe --plans uniform-moe,paper-moe --out runs/bench`` then
``rlrs compare --model micro-moe --plans uniform-moe,paper-moe --seeds 3 --out runs/bench
--base-lrs-from runs/bench/grid.json`` (one ``--out`` for both lets compare reuse the grid's runs).
:func:`compare` is :func:`run` (train and measure: a :class:`CompareResult`), :func:`save`
(``results.json``) and :func:`render` (``report.md`` and the figures); :func:`load` reads a
``results.json`` back.

**The speed-up.** Every arm trains each seed ``i`` with ``train.seed = train.data_seed = i``, so
seed ``i`` of every arm starts from the same weights and sees the same batches (the paper's
"3 specified data seeds"). The loss is measured at every 1% of training. The first plan is the
baseline: it reaches its final loss ``L`` (mean over its seeds) at ``T_base``; ``T_relative`` is
the step at which the relative arm's mean loss first gets to ``L``, and::

    speed-up = (T_base / T_relative - 1) × 100%

Worked example, on clean (already monotone) curves: the baseline ends at L = 3.70 after T_base =
10,000 steps; the relative arm's mean loss is 3.72 at step 6,900 and 3.69 at step 7,000, so
T_relative = 7,000 and the speed-up is (10000 / 7000 - 1) × 100% = +42.9%. On noisy curves both
arms are read by one rule (:func:`rlrs.analysis.speedup`): each mean curve is replaced by its
monotone (non-increasing) fit, whose flat stretches pool noisy measurements into blocks; ``L`` is
the baseline fit's final level, and an arm arrives at the mean step of the first block at or
below it (not at the block's first step, which would favour the arm whose noisy tail is pooled).
So an arm that trains like the baseline measures 0%, also on a noisy or plateaued curve; the
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

Why one module of about 650 lines: most of it is the typed result, which mirrors ``results.json``
field by field, and :func:`summarize`, which fills it; they are read together (the report and
its figures are in :mod:`rlrs.experiments.report`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import config as _config
from .. import files
from . import lr_grid as _lr_grid
from . import report
from ..analysis import (Difference, Interval, RouterCurve, RouterHealth, RunLogs, Spike, SpeedUp, UpdateCurves,
                        bootstrap_speedup, detect_spikes, mean_curve, mean_router, mean_updates, paired_difference,
                        router_health, speedup)
from .arms import (ArmRun, RunInfo, arm_name, arm_run, arms_of, check_common, common_args, default_out,
                   describe_target, execute_runs, extra_args, prepare_args, python_call, target_of)
from ..config import ConfigError
from ..engine import reason_line
from ..options import add_seeds_arg, command_line, default_of, executor_from_args
from ..plan import Plan
from ..targets import CommandTarget, Target

METRICS = ("eval", "train")


# --- the result: results.json, typed ---------------------------------------------------------------
# Every number a result holds is finite or None: JSON has no NaN or inf (they were always written
# as null), and a result must read back equal to the one written.


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _floats(values) -> tuple[float | None, ...]:
    """A curve's values, NaN (a window of skipped steps, a diverged run's last loss) as None."""
    return tuple(_finite(v) for v in np.asarray(values, dtype=np.float64).tolist())


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(values).tolist())


@dataclass(frozen=True)
class Curve:
    """One run's loss at its measuring points (``None``: not finite there)."""

    steps: tuple[int, ...] = ()
    loss: tuple[float | None, ...] = ()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The curve as :mod:`rlrs.analysis` reads one: steps and losses, a missing loss as NaN."""
        return (np.asarray(self.steps, dtype=np.int64),
                np.asarray([math.nan if v is None else v for v in self.loss], dtype=np.float64))


@dataclass(frozen=True)
class MeanCurve:
    """An arm's loss at the measuring points: mean and std over its finished seeds."""

    steps: tuple[int, ...]
    mean: tuple[float | None, ...]
    std: tuple[float | None, ...]


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


@dataclass(frozen=True)
class RunSpike:
    """A loss spike of one run (:class:`rlrs.analysis.Spike`), with its rise as results.json has
    always held it."""

    start: int
    end: int
    peak_step: int
    peak_loss: float
    reference: float
    rise: float

    @classmethod
    def of(cls, s: Spike) -> RunSpike:
        return cls(int(s.start), int(s.end), int(s.peak_step), float(s.peak_loss), float(s.reference), float(s.rise))


@dataclass(frozen=True)
class Updates:
    """Per-component update sizes at the steps the trainer measured them
    (:class:`rlrs.analysis.UpdateCurves`; ``None`` where a run did not log them)."""

    steps: tuple[int, ...]
    update_ratio: dict[str, tuple[float | None, ...]]
    update_rms: dict[str, tuple[float | None, ...]]
    rep_change: dict[str, tuple[float | None, ...]] = field(default_factory=dict)
    align_ratio: dict[str, tuple[float | None, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, u: UpdateCurves) -> Updates:
        def table(curves):
            return {c: _floats(v) for c, v in curves.items()}

        return cls(_ints(u.steps), table(u.update_ratio), table(u.update_rms), table(u.rep_change),
                   table(u.align_ratio))


@dataclass(frozen=True)
class RouterStats:
    """MoE router statistics per 1% of training (:class:`rlrs.analysis.RouterCurve`)."""

    steps: tuple[int, ...]
    load_entropy: tuple[float | None, ...]
    max_load: tuple[float | None, ...]
    dropped_share: tuple[float | None, ...]

    @classmethod
    def of(cls, r: RouterCurve | None) -> RouterStats | None:
        if r is None:
            return None
        return cls(_ints(r.steps), _floats(r.load_entropy), _floats(r.max_load), _floats(r.dropped_share))


@dataclass(frozen=True)
class CompareRun:
    """One (arm, seed) run of a comparison: how it ended, its losses and diagnostics."""

    arm: str
    seed: int
    data_seed: int  # always the seed (seed i of every arm sees the same batches); results.json names it
    out: Path
    status: str  # finished | diverged | failed
    error: str | None
    reused: bool
    final_eval_loss: float | None
    final_train_loss: float | None
    steps: int
    total_steps: int
    skipped_steps: int
    wall_s: float
    final_loss: float | None  # on the comparison's metric; None unless finished
    final_train_1pct: float | None  # mean training loss over the last 1% of steps
    curve: Curve = Curve()
    spikes: tuple[RunSpike, ...] = ()
    router: RouterHealth | None = None
    updates: Updates | None = None
    router_curve: RouterStats | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def of(cls, r: RunInfo, lg: RunLogs, metric: str = "eval", n_experts: int = 0) -> CompareRun:
        """The run as the comparison reads it: how it ended (``r``) and what its logs say (``lg``),
        its curve on ``metric``."""
        steps, loss = lg.curve(metric)
        return cls(
            arm=r.arm, seed=r.seed, data_seed=r.seed, out=Path(r.out), status=r.status, error=r.error, reused=r.reused,
            final_eval_loss=_finite(r.final_eval_loss), final_train_loss=_finite(r.final_train_loss), steps=r.steps,
            total_steps=r.total_steps, skipped_steps=r.skipped_steps, wall_s=float(r.wall_s),
            final_loss=_finite(float(loss[-1])) if r.finished else None,
            final_train_1pct=_finite(float(lg.window_loss[-1])) if lg.window_loss.size else None,
            curve=Curve(_ints(steps), _floats(loss)),
            spikes=tuple(RunSpike.of(s) for s in detect_spikes(lg.train_steps, lg.train_loss)),
            router=router_health(lg, n_experts) if lg.router is not None else None,
            updates=None if lg.updates is None else Updates.of(lg.updates), router_curve=RouterStats.of(lg.router),
        )


@dataclass(frozen=True)
class NotFinished:
    seed: int
    status: str  # diverged | failed
    error: str | None


@dataclass(frozen=True)
class ArmResult:
    """One arm of a comparison: its seeds, plan, mean curve, final loss and diagnostics (its runs:
    :meth:`CompareResult.runs_of`; a relative arm's speed-up: ``CompareResult.speedups``)."""

    seeds: tuple[int, ...]
    seeds_finished: tuple[int, ...]
    not_finished: tuple[NotFinished, ...]
    diagnostics_seeds: tuple[int, ...]  # the finished seeds; the runs that died if none finished
    base_lr: float  # the plan's η_base, which readers of results.json take from here
    plan: Plan
    updates: Updates  # mean over the diagnostics seeds
    router: RouterStats | None
    curve: MeanCurve | None = None  # None: no seed finished
    final_loss: LossStat | None = None


@dataclass(frozen=True, kw_only=True)
class ArmSpeedUp:
    """A relative arm against the baseline: the paper's speed-up (the fields of
    :class:`rlrs.analysis.SpeedUp`, ``None`` where no finished run on one side measured it), per
    seed, its interval over seeds and its verdict (see :func:`verdict`)."""

    t_base: int | None
    t_relative: int | None
    target_loss: float | None
    percent: float | None
    low: float | None = None
    high: float | None = None  # None while low is a number: no upper bound (reached at the first measurement)
    seeds_baseline: int  # finished seeds of the baseline
    seeds_relative: int  # and of this arm
    seeds: int
    per_seed: tuple[SeedSpeedUp, ...]
    text: str  # the speed-up in one sentence, or why there is none
    interval: Interval | None  # 95% bootstrap interval over paired seeds (2 or more)
    verdict: str
    identical: bool  # every paired seed's curve equals the baseline's: the plans changed nothing
    unpaired_seeds: tuple[int, ...]  # seeds whose step-0 loss differs from the baseline's

    @property
    def speedup(self) -> SpeedUp | None:
        """The measured speed-up; ``None``: a side has no finished run."""
        if self.t_base is None or self.target_loss is None:
            return None
        high = math.inf if self.high is None and self.low is not None else self.high
        return SpeedUp(self.t_base, self.t_relative, self.target_loss, self.percent, self.low, high)


@dataclass(frozen=True)
class PairedDifference:
    """A relative arm's final loss minus the baseline's, paired by seed over ``seeds``."""

    mean: float
    std: float  # of the paired differences (0 with one seed)
    n: int
    seeds: tuple[int, ...]

    def describe(self) -> str:
        return Difference(self.mean, self.std, self.n).describe()


@dataclass(frozen=True)
class Summary:
    """What :func:`summarize` measures from the runs: the last four fields of a :class:`CompareResult`."""

    runs: tuple[CompareRun, ...]
    arms: dict[str, ArmResult]
    speedups: dict[str, ArmSpeedUp]
    differences: dict[str, PairedDifference | None]


@dataclass(frozen=True)
class CompareResult:
    """What :func:`run` found: ``results.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(CompareResult, json.load(f))`` (:func:`load`) reads it back.
    ``arms`` holds every arm, the baseline first; ``speedups`` and ``differences`` the relative arms."""

    command: str
    preset: str  # the target's name: a preset, or the command's
    target: dict[str, Any]  # what trained: {"preset", "config_file"} or {"command", "steps", "cwd"}
    baseline: str
    metric: str
    seeds: int
    plans: dict[str, str]  # arm -> the named plan or plan file it came from
    total_steps: int
    eval_interval: float | None  # None: a command's script chooses its eval points
    sets: dict[str, Any]
    components: tuple[str, ...]
    wall_s: float  # this command: training (new runs only) and analysis
    runs: tuple[CompareRun, ...]
    arms: dict[str, ArmResult]
    speedups: dict[str, ArmSpeedUp]
    differences: dict[str, PairedDifference | None]

    def runs_of(self, arm: str) -> tuple[CompareRun, ...]:
        """The runs of ``arm``, in seed order."""
        return tuple(r for r in self.runs if r.arm == arm)

    def lines(self) -> list[str]:
        """One sentence per relative arm: its speed-up (or why there is none)."""
        return [s.text for s in self.speedups.values()]


def run(
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
    over the first (the baseline). Trains into ``out/runs`` (default ``out``: :func:`default_out`,
    ``runs/compare-NAME``, as ``rlrs compare``) and writes nothing else; :func:`save` and
    :func:`render` write ``results.json``, ``report.md`` and the figures, :func:`compare` all three.

    ``target`` is a preset name, a :class:`~rlrs.targets.PresetTarget` or the user's own command
    (:class:`~rlrs.targets.CommandTarget`). ``base_lrs`` maps arm names to their η_base (e.g.
    :func:`~rlrs.experiments.lr_grid.load_grid`'s or ``lr_grid().best``); other arms keep their plan's. ``metric`` is
    ``"eval"`` (held-out loss) or ``"train"`` (preset runs only). ``command`` is recorded in
    ``results.json`` (the CLI passes its command line). ``executor`` (:mod:`rlrs.executors`, e.g. a
    Slurm cluster) runs the runs instead of a local pool of ``workers``.
    """
    t0 = time.perf_counter()
    target = target_of(target, config_file)
    preset = target.name
    if metric not in METRICS:
        raise ConfigError(f"metric: {metric!r} is unknown; {_config.closest(metric, METRICS)}")
    if metric == "train" and isinstance(target, CommandTarget):
        raise ConfigError("metric: 'train' needs rlrs's own training log; a --command reports eval losses only, use --metric eval")
    arms = arms_of(plans, need=2)
    sets = check_common(seeds, sets, workers)
    lrs = _check_base_lrs(base_lrs, [a for a, _ in arms])
    out = default_out("compare", target) if out is None else Path(out)
    specs = _compare_specs(target, arms, seeds, sets, lrs, out)
    length = specs[0].run.total_steps
    log(f"rlrs compare: {preset}, plans {', '.join(a for a, _ in arms)} (baseline {arms[0][0]}), "
        f"{seeds} seed{'s' * (seeds > 1)}, {length or 'its own number of'} steps per run -> {out}")
    infos, logs = execute_runs(specs, workers, metric, log, progress, executor)
    plan_of = {s.arm: s.run.plan for s in specs}
    cfg0 = specs[0].cfg
    summary = summarize(plan_of, infos, logs, metric=metric, n_experts=cfg0.model.n_experts if cfg0 else 0)
    return CompareResult(
        command=command or python_call("compare", "compare", preset=preset, plans=list(plans), seeds=seeds, out=str(out),
                                       sets=sets or None, base_lrs=dict(base_lrs or {}) or None, metric=metric),
        preset=preset, target=describe_target(target), baseline=arms[0][0], metric=metric, seeds=seeds,
        plans=dict(arms), total_steps=length or max((i.total_steps for i in infos), default=0),
        eval_interval=cfg0.train.eval_interval if cfg0 else None, sets=_config.json_safe(sets),
        components=tuple(next((lg.components for lg in logs.values() if lg.components), [])),
        wall_s=time.perf_counter() - t0,
        runs=summary.runs, arms=summary.arms, speedups=summary.speedups, differences=summary.differences,
    )


def save(result: CompareResult, out: str | Path) -> Path:
    """Write ``out/results.json``."""
    path = Path(out) / "results.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> CompareResult:
    """The :class:`CompareResult` in a ``compare`` ``results.json`` (or the directory holding it);
    files written by earlier versions load too."""
    return _config.load_typed(CompareResult, path, "results.json", "rlrs compare", "compare result")


def render(result: CompareResult, out: str | Path) -> list[Path]:
    """Write ``report.md`` and the figures into ``out``; returns their paths
    (:func:`rlrs.experiments.report.render`, which reads the training-loss curves of
    ``train_loss.png`` from the runs' own logs)."""
    return report.render(result, out)


def compare(target: str | Target, plans: Sequence[str], seeds: int = 3, out: str | Path | None = None,
            **options) -> CompareResult:
    """What ``rlrs compare`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out`` (default: :func:`default_out`)."""
    if out is None:
        out = default_out("compare", target_of(target, options.get("config_file")))
    result = run(target, plans, seeds, out, **options)
    # The numbers first: a figure that fails to draw must not cost the results.
    save(result, out)
    render(result, out)
    return result


def _compare_specs(target: Target, arms: Sequence[tuple[str, str]], seeds: int, sets, lrs: Mapping[str, float],
                   out: Path) -> list[ArmRun]:
    # Seed-major: an interrupted compare leaves complete pairs behind.
    return [arm_run(target, arm, plan, seed, sets, lrs.get(arm), out / "runs")
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
    target = target_of(target, None)
    lrs = _check_base_lrs(base_lrs, [a for a, _ in arms_of(plans, need=2)])
    specs = _compare_specs(target, arms_of(plans, need=2), seeds, check_common(seeds, sets, None), lrs, Path(out))
    return {(s.arm, s.seed): s.out for s in specs}


def _check_base_lrs(base_lrs: Mapping[str, float] | None, arms: Sequence[str]) -> dict[str, float]:
    lrs = dict(base_lrs or {})
    for arm, lr in lrs.items():
        if arm not in arms:
            raise ConfigError(f"base_lrs: {arm!r} is not an arm; {_config.closest(arm, arms)}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"base_lrs[{arm!r}]: η_base must be a finite number > 0, got {lr!r}")
    return {a: float(v) for a, v in lrs.items()}

def summarize(
    plans: Mapping[str, Plan],
    infos: Sequence[RunInfo],
    logs: Mapping[Path, RunLogs],
    metric: str = "eval",
    n_experts: int = 0,
) -> Summary:
    """Per-arm means over finished seeds, the speed-up and paired final-loss difference of every
    arm against the first (the baseline); each run's losses, spikes and router health. Every
    number is computed from the runs as ``results.json`` stores them (:class:`CompareRun`), so a
    result read back gives the same numbers."""
    runs = [CompareRun.of(r, logs[r.out], metric, n_experts) for r in infos]
    curves = {(r.arm, r.seed): r.curve.arrays() for r in runs}
    arms: dict[str, ArmResult] = {}
    means: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the finished seeds' mean curve, per arm
    for name, plan in plans.items():
        mine = [r for r in runs if r.arm == name]
        fin = [r for r in mine if r.finished]
        diag = fin or mine  # diagnostics of the finished seeds; if none finished, of the runs that died
        curve = final = None
        if fin:
            steps, mean, std = mean_curve([curves[r.arm, r.seed] for r in fin])
            means[name] = steps, mean
            curve = MeanCurve(_ints(steps), _floats(mean), _floats(std))
            finals = [r.final_loss for r in fin]
            final = LossStat(float(np.mean(finals)), float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                             len(finals))
        router = mean_router([logs[r.out] for r in diag])
        arms[name] = ArmResult(
            seeds=tuple(r.seed for r in mine), seeds_finished=tuple(r.seed for r in fin),
            not_finished=tuple(NotFinished(r.seed, r.status, r.error) for r in mine if not r.finished),
            diagnostics_seeds=tuple(r.seed for r in diag), base_lr=plan.base_lr, plan=plan,
            updates=Updates.of(mean_updates([logs[r.out] for r in diag])), router=RouterStats.of(router),
            curve=curve, final_loss=final)
    base, *relative = plans
    seeds = max((r.seed for r in runs), default=-1) + 1
    base_by_seed = {r.seed: r for r in runs if r.arm == base and r.finished}
    speedups: dict[str, ArmSpeedUp] = {}
    differences: dict[str, PairedDifference | None] = {}
    for name in relative:
        mine = {r.seed: r for r in runs if r.arm == name and r.finished}
        sp = speedup(*means[base], *means[name]) if base in means and name in means else None
        paired = sorted(base_by_seed.keys() & mine.keys())
        differences[name] = None
        if paired:
            d = paired_difference([base_by_seed[s].final_loss for s in paired], [mine[s].final_loss for s in paired])
            differences[name] = PairedDifference(d.mean, d.std, d.n, tuple(paired))
        per_seed = []
        for s in sorted({r.seed for r in runs if r.arm == name}):
            rb, ra = base_by_seed.get(s), mine.get(s)
            pct = speedup(*curves[base, s], *curves[name, s]).percent if rb and ra else None
            per_seed.append(SeedSpeedUp(s, pct, bool(rb and ra)))
        interval = None
        if sp is not None:
            interval = bootstrap_speedup([curves[base, s] for s in paired], [curves[name, s] for s in paired])
        identical = bool(paired) and all(base_by_seed[s].curve == mine[s].curve for s in paired)
        same_plan = plans[name] == plans[base]
        unpaired = [s for s in paired if not _same_start(curves[base, s], curves[name, s])]
        judged = _verdict(sp, interval, identical, same_plan)
        text = _speedup_text(name, base, sp, judged, identical, len(base_by_seed), len(mine), seeds, metric)
        if unpaired:
            text += (f". Not paired: seed {', '.join(map(str, unpaired))} of {name} starts from another "
                     f"loss at step 0 than the baseline's, so the arms did not start from the same weights; seed "
                     f"the model with rlrs.script.seed() (torch.manual_seed) so that seed i of every arm starts alike")
        measured = {} if sp is None else {
            "t_base": int(sp.t_base), "t_relative": None if sp.t_relative is None else int(sp.t_relative),
            "target_loss": float(sp.target_loss), "percent": _finite(sp.percent), "low": _finite(sp.low),
            "high": _finite(sp.high)}
        speedups[name] = ArmSpeedUp(
            **{"t_base": None, "t_relative": None, "target_loss": None, "percent": None, **measured},
            seeds_baseline=len(base_by_seed), seeds_relative=len(mine), seeds=seeds, per_seed=tuple(per_seed),
            text=text, interval=interval, verdict=judged, identical=identical, unpaired_seeds=tuple(unpaired))
    return Summary(tuple(runs), arms, speedups, differences)


def _same_start(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether two runs of one seed (their curves: steps, losses) measured the same loss at step 0
    (or either did not measure it): the same weights and the same held-out batches give the same
    number, whatever the plan."""
    la = a[1][a[0] == 0]
    lb = b[1][b[0] == 0]
    return not (la.size and lb.size) or bool(np.isclose(la[0], lb[0], rtol=1e-6, atol=0.0))


def _verdict(sp: SpeedUp | None, interval: Interval | None, identical: bool, same_plan: bool) -> str:
    """``same plan`` (as the baseline's: the same runs), ``identical`` (other plans, the same
    curves), ``no measurable difference``, ``faster``, ``slower``, ``no speed-up`` (never
    reaches the baseline's final loss) or ``not measured`` (a side has no finished run)."""
    if same_plan:
        return "same plan"
    if sp is None:
        return "not measured"
    if identical:
        return "identical"
    if sp.percent is None:
        return "no speed-up"
    covers_zero = interval is not None and (interval.low is None or interval.low <= 0) \
        and (interval.high is None or interval.high >= 0)
    if not sp.measurable or covers_zero:
        return "no measurable difference"
    return "faster" if sp.percent > 0 else "slower"


def _speedup_text(name: str, base: str, sp: SpeedUp | None, verdict: str, identical: bool, n_base: int, n_rel: int,
                  seeds: int, metric: str) -> str:
    loss = "eval loss" if metric == "eval" else "train loss"
    if verdict == "same plan":
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
    if identical:
        return (f"{name}: no difference: every seed trained exactly as the baseline's did (the same loss at every "
                f"measurement), so the plans changed nothing; if they differ, the plan did not reach the "
                f"optimizer (a script's own LR code or another scheduler overwrote it?) ({over})")
    if sp.percent is None:
        return f"{name}: no speed-up: never reaches the baseline's final {loss} {sp.target_loss:.4f} ({over})"
    where = (f"reaches the baseline's final {loss} {sp.target_loss:.4f} at step {sp.t_relative} instead of "
             f"{sp.t_base} ({sp.bounds_text()}; {over})")
    if verdict == "no measurable difference":
        why = "one measuring interval allows either sign" if not sp.measurable else "its interval over seeds covers 0"
        return f"{name}: no measurable difference ({why}): speed-up {sp.percent:+.1f}%, {where}"
    slower = " (slower than the baseline)" if sp.percent < 0 else ""
    return f"{name}: speed-up {sp.percent:+.1f}%{slower}: {where}"

# --- command line ---------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs compare``."""
    p = sub.add_parser(
        "compare", help="the paper's speed-up of relative plans over a baseline, over paired seeds",
        description="Train each plan with each seed (seed i of every arm uses data seed i), then measure "
                    "the paper's speed-up of every plan over the first: (T_base / T_relative - 1) x 100%. "
                    "Trains one of rlrs's model sizes, or your own script with --command. "
                    "Writes results.json, report.md and PNG plots into --out. Exit status 1 if a run crashed.")
    common_args(p, "compare")
    add_seeds_arg(p, default_of(run, "seeds"))
    p.add_argument("--metric", choices=METRICS, default=default_of(run, "metric"),
                   help=f"eval: held-out loss; train: training loss (model sizes only) (default: {default_of(run, 'metric')})")
    p.add_argument("--base-lrs-from", default=None, metavar="GRID_JSON",
                   help="take each arm's η_base from an `rlrs lr-grid` grid.json (or its directory)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    target = prepare_args(args, "compare")
    base_lrs = None
    extra = [*extra_args(args), "--seeds", str(args.seeds), "--metric", args.metric]
    if args.base_lrs_from:
        grid = _lr_grid.load(args.base_lrs_from)
        arms = [arm_name(p) for p in args.plans_list]
        missing = [a for a in arms if a not in grid.best]
        if missing:
            raise ConfigError(
                f"--base-lrs-from {args.base_lrs_from}: no η_base for {', '.join(missing)} (it has: "
                f"{', '.join(grid.best) or 'none'}); run `rlrs lr-grid` with these plans first"
            )
        base_lrs = {a: grid.best[a] for a in arms}
        extra += ["--base-lrs-from", args.base_lrs_from]
        if grid.preset != target.name:
            # Allowed (a deliberate transfer), but η_base rarely transfers across sizes (the paper retunes it).
            print(f"rlrs compare: note: {args.base_lrs_from} was tuned on {grid.preset}, not {target.name}", file=sys.stderr)
    with executor_from_args(args, args.out / "slurm") as ex:
        res = run(target, args.plans_list, args.seeds, args.out, sets=args.sets, base_lrs=base_lrs,
                  metric=args.metric, workers=args.workers, command=command_line("compare", args, extra),
                  progress=sys.stderr.isatty(), executor=ex)
    save(res, args.out)
    render(res, args.out)
    print()
    for line in res.lines():
        print(line)
    for arm, d in res.differences.items():
        if d is not None:
            print(f"{arm}: {d.describe()}")
    for r in res.runs:
        if r.status != "finished":
            print(f"{r.arm} seed {r.seed}: {r.status}: {reason_line(r.status, r.error)}")
    print(f"report: {args.out / 'report.md'}  results: {args.out / 'results.json'}")
    return 1 if any(r.status == "failed" for r in res.runs) else 0
