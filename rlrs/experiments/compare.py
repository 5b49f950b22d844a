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

from .. import config as _config
from .. import files
from . import report
from ..analysis import (Difference, Interval, RouterCurve, RunLogs, SpeedUp, UpdateCurves, bootstrap_speedup,
                        detect_spikes, mean_curve, mean_router, mean_updates, paired_difference, router_health, speedup)
from .arms import (ArmRun, RunInfo, arm_name, arm_run, arms_of, check_common, common_args, default_out,
                   describe_target, execute_runs, extra_args, prepare_args, python_call, target_of)
from ..config import ConfigError
from ..engine import reason_line
from .lr_grid import load_grid
from ..options import add_seeds_arg, command_line, default_of, executor_from_args
from ..plan import Plan
from ..targets import CommandTarget, Target

METRICS = ("eval", "train")


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
    res = CompareResult(
        out=out, preset=preset, target=describe_target(target),
        command=command or python_call("compare", "compare", preset=preset, plans=list(plans), seeds=seeds, out=str(out),
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
    res.files = [results_path, *report.write_compare(res, series)]
    return res


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
    add_seeds_arg(p, default_of(compare, "seeds"))
    p.add_argument("--metric", choices=METRICS, default=default_of(compare, "metric"),
                   help=f"eval: held-out loss; train: training loss (model sizes only) (default: {default_of(compare, 'metric')})")
    p.add_argument("--base-lrs-from", default=None, metavar="GRID_JSON",
                   help="take each arm's η_base from an `rlrs lr-grid` grid.json (or its directory)")
    p.set_defaults(func=cmd_compare)

def cmd_compare(args) -> int:
    target = prepare_args(args, "compare")
    base_lrs = None
    extra = [*extra_args(args), "--seeds", str(args.seeds), "--metric", args.metric]
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
