"""How much faster does a model train with relative schedules? The paper's answer (appendix A).

    >>> from rlrs.compare import compare, lr_grid, load_grid
    >>> grid = lr_grid("micro-moe", ["uniform-moe", "paper-moe"], out="runs/bench")  # doctest: +SKIP
    >>> res = compare("micro-moe", ["uniform-moe", "paper-moe"], seeds=3, out="runs/bench",
    ...               base_lrs=grid.best)                                             # doctest: +SKIP
    >>> print(res.lines()[0])                                                          # doctest: +SKIP
    paper-moe: speed-up +22.8% ...

or ``rlrs lr-grid --preset micro-moe --plans uniform-moe,paper-moe --out runs/bench`` then
``rlrs compare --preset micro-moe --plans uniform-moe,paper-moe --seeds 3 --out runs/bench
--base-lrs-from runs/bench/grid.json`` (one ``--out`` for both lets compare reuse the grid's runs).

**The speed-up.** Every arm trains each seed ``i`` with ``train.seed = train.data_seed = i``, so
seed ``i`` of every arm starts from the same weights and sees the same batches (the paper's
"3 specified data seeds"). The loss is measured at every 1% of training. The first plan is the
baseline: it trains ``T_base`` steps and ends at loss ``L`` (mean over its seeds). ``T_relative``
is the first measuring step at which the relative arm's mean loss is ``<= L``, and::

    speed-up = (T_base / T_relative - 1) × 100%

Worked example: the baseline ends at L = 3.70 after T_base = 10,000 steps; the relative arm's
mean loss is 3.72 at step 6,900 and 3.69 at step 7,000, so T_relative = 7,000 and the speed-up is
(10000 / 7000 - 1) × 100% = +42.9%. A relative arm that never gets to 3.70 has *no speed-up*
(reported in those words, never as 0%). The relative schedule has not finished decaying at
T_relative, so the number underestimates the gain (the paper says so too).

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
from .config import ConfigError
from .metrics import Difference, SpeedUp, mean_curve, paired_difference, speedup
from .options import (add_target_args, add_workers_arg, check_workers, command_line, parse_grid,
                      parse_plans, parse_sets, target_from_args)
from .engine import (CommandTarget, eval_curve, Job, PresetRun, PresetTarget, RunResult, RunSpec, Target, default_workers,
                     run_all, run_dir)
from .train import RunConfig, eval_steps, read_metrics, total_steps

METRICS = ("eval", "train")
RESERVED_SETS = ("train.seed", "train.data_seed")

# Loss-spike detection (see detect_spikes): a jump of SPIKE_Z times the step-to-step noise *and*
# of SPIKE_RISE over the recent level. Both: the z-score alone fires on a very quiet stretch, the
# ratio alone on a noisy one.
SPIKE_WINDOW = 25
SPIKE_Z = 6.0
SPIKE_RISE = 0.05

# Router collapse: over the last 10% of training the expert load's normalised entropy is below
# COLLAPSE_ENTROPY, or one expert takes more than max(COLLAPSE_SHARE, 2 / n_experts) of the tokens.
COLLAPSE_ENTROPY = 0.5
COLLAPSE_SHARE = 0.5


# --- small parsers (CLI and API share them) -------------------------------------------------------


def arm_name(spec: str) -> str:
    """An arm's name: the plan preset's name, or a plan file's stem (``plans/mine.toml`` → ``mine``)."""
    return Path(spec).stem if spec.endswith((".toml", ".json")) else spec


def grid_around(base_lr: float, n: int = 5) -> list[float]:
    """``n`` values of the paper's {1, 2, 5}×10⁻ⁿ ladder centred on the one nearest ``base_lr``.

    >>> grid_around(3e-3)
    [0.0005, 0.001, 0.002, 0.005, 0.01]
    """
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ConfigError(f"base_lr: must be a finite number > 0, got {base_lr!r}")
    exp = math.floor(math.log10(base_lr))
    ladder = [(m, e) for e in range(exp - 2, exp + 3) for m in (1, 2, 5)]
    centre = min(range(len(ladder)), key=lambda i: abs(math.log(ladder[i][0] * 10.0**ladder[i][1] / base_lr)))
    lo = centre - (n - 1) // 2
    return [float(f"{m}e{e}") for m, e in ladder[lo: lo + n]]


# --- one run: status and what its logs say ---------------------------------------------------------


@dataclass
class RunInfo:
    """One (arm, seed) run: where it lives, how it ended, and its final losses."""

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


@dataclass
class Spike:
    """A loss spike: consecutive steps whose training loss jumped above the recent median."""

    start: int
    end: int
    peak_step: int
    peak_loss: float
    reference: float  # the recent level (median of the last 5 normal steps) before the spike

    @property
    def rise(self) -> float:
        return self.peak_loss / self.reference - 1.0


def detect_spikes(
    steps: Sequence[int],
    losses: Sequence[float],
    window: int = SPIKE_WINDOW,
    z: float = SPIKE_Z,
    min_rise: float = SPIKE_RISE,
) -> list[Spike]:
    """Loss spikes in a per-step training-loss series (figure 2 of the paper).

    >>> loss = [3.0 + 0.01 * (i % 3) for i in range(60)]
    >>> loss[40] = 4.0
    >>> [(s.peak_step, s.peak_loss) for s in detect_spikes(range(60), loss)]
    [(40, 4.0)]

    A point is a spike when it exceeds the recent level (median of the last 5 non-spike points)
    by ``z`` times the step-to-step noise (robust, from the previous ``window`` points, at least
    ``window // 2`` of them) *and* by ``min_rise`` of the level. Spike points stay out of the
    reference so a long spike cannot become its own baseline; spikes no more than 2 steps apart
    merge into one event.
    """
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    ref: list[float] = []
    flagged: list[tuple[int, float, float]] = []
    for s, v in zip(steps, losses):
        if not math.isfinite(v):
            continue
        recent = np.asarray(ref[-window:])
        if recent.size >= max(3, window // 2):
            # Level: the median of the last 5 points (little lag on a falling curve). Noise: the
            # MAD of first differences, which a slow trend hardly inflates (a plain MAD would).
            level = float(np.median(recent[-5:]))
            d = np.diff(recent)
            noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
            if v > level + z * noise and v > level * (1.0 + min_rise):
                flagged.append((int(s), float(v), level))
                continue
        ref.append(float(v))
    spikes: list[Spike] = []
    for s, v, med in flagged:
        last = spikes[-1] if spikes else None
        if last is not None and s - last.end <= 2:
            last.end = s
            if v > last.peak_loss:
                last.peak_step, last.peak_loss = s, v
        else:
            spikes.append(Spike(s, s, s, v, med))
    return spikes


@dataclass
class RunLogs:
    """What a run's ``metrics.jsonl`` holds, on the 1% measuring points where that applies."""

    eval_steps: np.ndarray
    eval_loss: np.ndarray
    train_steps: np.ndarray  # every step that updated (skipped steps have no loss)
    train_loss: np.ndarray
    window_steps: np.ndarray  # the 1% points; train loss and router stats averaged over each 1%
    window_loss: np.ndarray
    components: list[str]
    update_steps: np.ndarray
    update_ratio: dict[str, np.ndarray]
    update_rms: dict[str, np.ndarray]
    router: dict[str, np.ndarray] | None  # load_entropy, max_load, dropped_share on window_steps

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.eval_steps, self.eval_loss) if metric == "eval" else (self.window_steps, self.window_loss)


def read_run(out: str | Path, cfg: RunConfig | None = None) -> RunLogs:
    """Parse a run's logs (complete or cut short by a divergence). ``cfg`` is the run config of
    a preset run; a command's run (``None``) has only the eval losses its script reported."""
    path = Path(out)
    recs = read_metrics(path) if (path / "metrics.jsonl").exists() else []
    eval_x, eval_y = eval_curve(path)
    train = [r for r in recs if r.get("kind") == "train"]
    losses = [r for r in train if "loss" in r]
    if cfg is not None:
        points = [p for p in eval_steps(total_steps(cfg), cfg.train.eval_interval) if p > 0]
    else:
        points = [p for p in eval_x if p > 0]
    step_of = np.asarray([r["step"] for r in train], dtype=np.int64)
    # Window j covers the steps after point j-1 up to point j.
    win = np.searchsorted(np.asarray(points), step_of, side="left")

    last = int(step_of.max()) if step_of.size else 0

    def window_mean(key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        # Every point the run got to, NaN where a window holds only skipped steps: the seeds of an
        # arm must share their measuring points to be averaged.
        vals = np.asarray([r.get(key, math.nan) for r in train], dtype=np.float64) * scale
        xs = [p for p in points if p <= last]
        ys = []
        for j in range(len(xs)):
            v = vals[(win == j) & np.isfinite(vals)]
            ys.append(v.mean() if v.size else math.nan)
        return np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.float64)

    window_steps, window_loss = window_mean("loss")
    components = sorted({k.split("/", 1)[1] for r in recs[:3] for k in r if k.startswith("lr/")},
                        key=_component_order)
    diag = [r for r in train if any(k.startswith("update_ratio/") for k in r)]
    update_ratio = {c: np.asarray([r.get(f"update_ratio/{c}", math.nan) for r in diag], dtype=np.float64) for c in components}
    update_rms = {c: np.asarray([r.get(f"update_rms/{c}", math.nan) for r in diag], dtype=np.float64) for c in components}
    router = None
    if cfg is not None and cfg.model.is_moe:
        seq = cfg.train.seq_len or cfg.model.seq_len
        slots = cfg.train.batch_size * seq * cfg.model.top_k * cfg.model.n_layers
        router = {}
        for key, name, scale in (("moe/load_entropy", "load_entropy", 1.0), ("moe/max_load", "max_load", 1.0),
                                 ("moe/dropped_tokens", "dropped_share", 1.0 / slots)):
            xs, ys = window_mean(key, scale)
            router[name] = ys
            router["steps"] = xs
    return RunLogs(
        eval_steps=np.asarray(eval_x, dtype=np.int64),
        eval_loss=np.asarray(eval_y, dtype=np.float64),
        train_steps=np.asarray([r["step"] for r in losses], dtype=np.int64),
        train_loss=np.asarray([r["loss"] for r in losses], dtype=np.float64),
        window_steps=window_steps,
        window_loss=window_loss,
        components=components,
        update_steps=np.asarray([r["step"] for r in diag], dtype=np.int64),
        update_ratio=update_ratio,
        update_rms=update_rms,
        router=router,
    )


def _component_order(c: str) -> int:
    from .components import COMPONENTS

    return COMPONENTS.index(c) if c in COMPONENTS else len(COMPONENTS)


def router_health(logs: RunLogs, n_experts: int) -> dict[str, Any] | None:
    """Expert load over the last 10% of training (and its worst point) and a collapse verdict."""
    r = logs.router
    if r is None or not len(r["steps"]):
        return None
    tail = r["steps"] >= 0.9 * r["steps"][-1]
    if not np.isfinite(r["load_entropy"][tail]).any():
        return None  # only skipped steps at the end: nothing to judge
    ent, share, drop = (float(np.nanmean(r[k][tail])) for k in ("load_entropy", "max_load", "dropped_share"))
    share_limit = max(COLLAPSE_SHARE, 2.0 / n_experts)
    problems = []
    if ent < COLLAPSE_ENTROPY:
        problems.append(f"load entropy {ent:.2f} < {COLLAPSE_ENTROPY}")
    if share > share_limit:
        problems.append(f"one expert takes {share:.0%} of the tokens")
    return {
        "load_entropy_final": ent,
        "load_entropy_min": float(np.nanmin(r["load_entropy"])),
        "max_load_final": share,
        "max_load_peak": float(np.nanmax(r["max_load"])),
        "dropped_share_final": drop,
        "dropped_share_peak": float(np.nanmax(r["dropped_share"])),
        "n_experts": n_experts,
        "collapsed": bool(problems),
        "verdict": "collapse: " + "; ".join(problems) if problems else "healthy",
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


def _execute(specs: Sequence[_Spec], workers: int | None, log: Callable[[str], None] = print,
             progress: bool = False) -> list[RunInfo]:
    """Run every spec on the engine (reusing finished and diverged runs, resuming interrupted ones)."""
    results = run_all([Job(s.run, s.out, label=s.label) for s in specs], workers, log, progress=progress)
    return [_info(s, r) for s, r in zip(specs, results)]


def _flag_blowups(infos: Sequence[RunInfo], logs: Mapping[Path, RunLogs], metric: str = "eval") -> None:
    # A run that "finishes" above its loss before training learned nothing: it diverged without
    # ever producing a NaN (too high an LR often does that), so it must not enter the means.
    for info in infos:
        lg = logs.get(info.out)
        if info.status != "finished" or lg is None or not lg.eval_loss.size:
            continue
        final, first = lg.eval_loss[-1], lg.eval_loss[0]
        measured = lg.curve(metric)[1]
        if not math.isfinite(final) or final > first:
            info.status = "diverged"
            info.error = f"finished, but its final eval loss {final:.4f} is above its initial {first:.4f}"
        elif not measured.size or not math.isfinite(measured[-1]):
            info.status = "diverged"
            info.error = f"finished, but its final {metric} loss is not finite (every last step skipped?)"


# --- compare ----------------------------------------------------------------------------------------


@dataclass
class CompareResult:
    """What :func:`compare` found; ``results`` is what ``results.json`` holds."""

    out: Path
    baseline: str
    arms: list[str]
    runs: list[RunInfo]
    speedups: dict[str, SpeedUp | None]  # None: no finished run to measure it on
    differences: dict[str, Difference | None]
    results: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One sentence per relative arm: its speed-up (or why there is none)."""
        return [self.results["speedups"][a]["text"] for a in self.arms[1:]]


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
    out: str | Path = "runs/compare",
    *,
    sets: Mapping[str, Any] | None = None,
    base_lrs: Mapping[str, float] | None = None,
    metric: str = "eval",
    workers: int | None = None,
    config_file: str | Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> CompareResult:
    """Train every plan with ``seeds`` paired seeds and measure the paper's speed-up of each plan
    over the first (the baseline). Writes ``results.json``, ``report.md`` and PNGs into ``out``.

    ``target`` is a preset name, a :class:`~rlrs.engine.PresetTarget` or the user's own command
    (:class:`~rlrs.engine.CommandTarget`). ``base_lrs`` maps arm names to their η_base (e.g.
    :func:`load_grid`'s or ``lr_grid().best``); other arms keep their plan's. ``metric`` is
    ``"eval"`` (held-out loss) or ``"train"`` (preset runs only). ``command`` is recorded in
    ``results.json`` (the CLI passes its command line).
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
    out = Path(out)
    # Seed-major: an interrupted compare leaves complete pairs behind.
    specs = [_spec(target, arm, plan, seed, sets, lrs.get(arm), out / "runs")
             for seed in range(seeds) for arm, plan in arms]
    length = specs[0].run.total_steps
    log(f"rlrs compare: {preset}, plans {', '.join(a for a, _ in arms)} (baseline {arms[0][0]}), "
        f"{seeds} seed{'s' * (seeds > 1)}, {length or 'its own number of'} steps per run -> {out}")
    infos = _execute(specs, workers, log, progress)
    logs = {s.out: read_run(s.out, s.cfg) for s in specs}
    _flag_blowups(infos, logs, metric)
    plan_of = {s.arm: s.run.plan for s in specs}
    cfg0 = specs[0].cfg
    results, speedups, diffs = summarize(
        [a for a, _ in arms], infos, logs, metric=metric, n_experts=cfg0.model.n_experts if cfg0 else 0
    )
    results.update({
        "command": command or _python_call("compare", preset=preset, plans=list(plans), seeds=seeds, out=str(out),
                                           sets=sets or None, base_lrs=dict(base_lrs or {}) or None, metric=metric),
        "preset": preset,
        "target": _describe_target(target),
        "plans": dict(arms),
        "total_steps": length or max((i.total_steps for i in infos), default=0),
        "eval_interval": cfg0.train.eval_interval if cfg0 else None,
        "sets": _clean(sets),
        "wall_s": time.perf_counter() - t0,  # this command: training (new runs only) and analysis
    })
    for arm, _ in arms:
        results["arms"][arm]["base_lr"] = plan_of[arm].base_lr
        results["arms"][arm]["plan"] = plan_of[arm].to_dict()
    results["components"] = next((lg.components for lg in logs.values() if lg.components), [])
    # The numbers first: a figure that fails to draw must not cost the results.
    results_path = out / "results.json"
    _config.atomic_write_text(results_path, json.dumps(_clean(results), indent=1) + "\n")
    from . import reporting as report

    series = {(i.arm, i.seed): (logs[i.out].train_steps, logs[i.out].train_loss) for i in infos}
    files = report.write_compare(out, results, plan_of, series)
    return CompareResult(out, arms[0][0], [a for a, _ in arms], infos, speedups, diffs, results, [results_path, *files])


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
    arms: Sequence[str],
    runs: Sequence[RunInfo],
    logs: Mapping[Path, RunLogs],
    metric: str = "eval",
    n_experts: int = 0,
) -> tuple[dict[str, Any], dict[str, SpeedUp | None], dict[str, Difference | None]]:
    """Per-arm means over finished seeds, the speed-up and paired final-loss difference of every
    arm against ``arms[0]``, spikes and router health per run: the body of ``results.json``."""
    by_arm = {a: [r for r in runs if r.arm == a] for a in arms}
    ok = {a: [r for r in rs if r.status == "finished"] for a, rs in by_arm.items()}
    final = {(r.arm, r.seed): float(logs[r.out].curve(metric)[1][-1]) for r in runs if r.status == "finished"}
    results: dict[str, Any] = {"baseline": arms[0], "metric": metric, "seeds": max((r.seed for r in runs), default=-1) + 1,
                               "runs": [], "arms": {}, "speedups": {}, "differences": {}}
    for r in runs:
        lg = logs[r.out]
        spikes = detect_spikes(lg.train_steps, lg.train_loss)
        steps, loss = lg.curve(metric)
        results["runs"].append({
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(r).items()},
            "data_seed": r.seed,
            "final_loss": final.get((r.arm, r.seed)),
            "final_train_1pct": float(lg.window_loss[-1]) if lg.window_loss.size else None,
            "curve": {"steps": steps, "loss": loss},
            "spikes": [{**dataclasses.asdict(s), "rise": s.rise} for s in spikes],
            "router": router_health(lg, n_experts) if lg.router is not None else None,
            "updates": {"steps": lg.update_steps, "update_ratio": lg.update_ratio, "update_rms": lg.update_rms},
            "router_curve": lg.router,
        })
    curves = {}
    for a in arms:
        fin = ok[a]
        entry: dict[str, Any] = {
            "seeds": [r.seed for r in by_arm[a]],
            "seeds_finished": [r.seed for r in fin],
            "not_finished": [{"seed": r.seed, "status": r.status, "error": r.error} for r in by_arm[a] if r.status != "finished"],
        }
        if fin:
            steps, mean, std = mean_curve([logs[r.out].curve(metric) for r in fin])
            curves[a] = (steps, mean)
            finals = [final[(a, r.seed)] for r in fin]
            entry["curve"] = {"steps": steps, "mean": mean, "std": std}
            entry["final_loss"] = {"mean": float(np.mean(finals)), "std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
                                   "n": len(finals)}
        # Diagnostics describe the finished seeds; if none finished, the runs that died (up to the end).
        diag_runs = fin or by_arm[a]
        entry["diagnostics_seeds"] = [r.seed for r in diag_runs]
        entry["updates"] = _mean_updates([logs[r.out] for r in diag_runs])
        entry["router"] = _mean_router([logs[r.out] for r in diag_runs])
        results["arms"][a] = entry
    speedups: dict[str, SpeedUp | None] = {}
    diffs: dict[str, Difference | None] = {}
    base = arms[0]
    for a in arms[1:]:
        sp = None
        if base in curves and a in curves:
            sp = speedup(*curves[base], *curves[a])
        speedups[a] = sp
        paired = sorted({r.seed for r in ok[base]} & {r.seed for r in ok[a]})
        diffs[a] = paired_difference([final[(base, s)] for s in paired], [final[(a, s)] for s in paired]) if paired else None
        per_seed = []
        for s in sorted({r.seed for r in by_arm[a]}):
            rb = next((r for r in ok[base] if r.seed == s), None)
            ra = next((r for r in ok[a] if r.seed == s), None)
            per_seed.append({"seed": s, "percent": speedup(*logs[rb.out].curve(metric), *logs[ra.out].curve(metric)).percent
                             if rb and ra else None, "measured": bool(rb and ra)})
        results["speedups"][a] = {
            **(dataclasses.asdict(sp) if sp else {"t_base": None, "t_relative": None, "target_loss": None, "percent": None}),
            "seeds_baseline": len(ok[base]), "seeds_relative": len(ok[a]), "seeds": results["seeds"],
            "per_seed": per_seed,
            "text": _speedup_text(a, sp, len(ok[base]), len(ok[a]), results["seeds"], metric),
        }
        results["differences"][a] = {**dataclasses.asdict(diffs[a]), "seeds": paired} if diffs[a] else None
    return results, speedups, diffs


def _speedup_text(arm: str, sp: SpeedUp | None, n_base: int, n_rel: int, seeds: int, metric: str) -> str:
    loss = "eval loss" if metric == "eval" else "train loss"
    if n_base == 0:
        return f"{arm}: no speed-up measurable (every baseline run diverged/failed)"
    if n_rel == 0:
        return f"{arm}: no speed-up (all runs diverged/failed)"
    if n_base == n_rel == seeds:
        over = f"means over {seeds} seed{'s' * (seeds > 1)}"
    else:
        over = f"means over fewer seeds: {n_base} of {seeds} baseline, {n_rel} of {seeds} {arm}"
    if sp.percent is None:
        return f"{arm}: no speed-up: never reaches the baseline's final {loss} {sp.target_loss:.4f} ({over})"
    slower = " (slower than the baseline)" if sp.percent < 0 else ""
    return (f"{arm}: speed-up {sp.percent:+.1f}%{slower}: reaches the baseline's final {loss} "
            f"{sp.target_loss:.4f} at step {sp.t_relative} instead of {sp.t_base} ({over})")


def _mean_updates(logs: Sequence[RunLogs]) -> dict[str, Any]:
    if not logs:
        return {"steps": [], "update_ratio": {}, "update_rms": {}}
    steps = max((lg.update_steps for lg in logs), key=len)
    out: dict[str, Any] = {"steps": steps}
    for key in ("update_ratio", "update_rms"):
        comps = logs[0].components
        out[key] = {c: _nanmean_aligned(steps, [(lg.update_steps, getattr(lg, key).get(c)) for lg in logs]) for c in comps}
    return out


def _mean_router(logs: Sequence[RunLogs]) -> dict[str, Any] | None:
    logs = [lg for lg in logs if lg.router is not None]
    if not logs:
        return None
    steps = max((lg.router["steps"] for lg in logs), key=len)
    return {"steps": steps, **{k: _nanmean_aligned(steps, [(lg.router["steps"], lg.router[k]) for lg in logs])
                               for k in ("load_entropy", "max_load", "dropped_share")}}


def _nanmean_aligned(steps: np.ndarray, series: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    # Runs cut short by a divergence have fewer points: average what each step has.
    grid = np.full((len(series), len(steps)), np.nan)
    index = {int(s): j for j, s in enumerate(steps)}
    for i, (xs, ys) in enumerate(series):
        if ys is None:
            continue
        for x, y in zip(xs, ys):
            if int(x) in index:
                grid[i, index[int(x)]] = y
    with np.errstate(all="ignore"):
        counts = np.isfinite(grid).sum(axis=0)
        return np.where(counts > 0, np.nansum(grid, axis=0) / np.maximum(counts, 1), np.nan)


def _clean(obj: Any) -> Any:
    """JSON-safe: arrays to lists, NaN and inf to null (strict JSON has neither), paths to text."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --- lr-grid ----------------------------------------------------------------------------------------


@dataclass
class GridResult:
    """What :func:`lr_grid` found. ``best[arm]`` is the η_base with the lowest mean final eval
    loss among those where every seed finished; ``edge[arm]`` says whether it lies at the grid's
    low or high end (then the optimum may lie beyond: extend the grid)."""

    out: Path
    best: dict[str, float]
    edge: dict[str, str | None]
    grid: dict[str, Any]  # what grid.json holds
    files: list[Path] = field(default_factory=list)


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
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> GridResult:
    """The η_base search of appendix A, separately for each plan: train each plan at each grid
    value (default: 5 values of the {1, 2, 5}×10⁻ⁿ ladder around the plan's η_base) and pick the
    lowest final eval loss. Writes ``grid.json``, ``grid.md`` and ``lr_grid.png`` (figure 3)."""
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
    out = Path(out)
    values = {arm: list(grid) if grid else grid_around(target.spec(plan, 0, sets).plan.base_lr)
              for arm, plan in arms}
    specs = [_spec(target, arm, plan, seed, sets, lr, out / "runs", label_lr=True)
             for seed in range(seeds) for arm, plan in arms for lr in values[arm]]
    log(f"rlrs lr-grid: {preset}, plans {', '.join(a for a, _ in arms)}, η_base grid "
        + "; ".join(f"{a}: {', '.join(f'{v:g}' for v in values[a])}" for a, _ in arms)
        + f", {seeds} seed{'s' * (seeds > 1)} -> {out}")
    infos = _execute(specs, workers, log, progress)
    logs = {s.out: read_run(s.out, s.cfg) for s in specs}
    _flag_blowups(infos, logs)
    lr_of = {s.out: s.run.plan.base_lr for s in specs}
    data: dict[str, Any] = {"preset": preset, "target": _describe_target(target), "seeds": seeds, "metric": "eval", "plans": dict(arms), "arms": {}, "best": {},
                            "command": command or _python_call("lr_grid", preset=preset, plans=list(plans), out=str(out),
                                                               grid=list(grid) if grid else None, seeds=seeds, sets=sets or None)}
    best, edge = {}, {}
    for arm, _ in arms:
        points = []
        for lr in values[arm]:
            rs = [r for r in infos if r.arm == arm and lr_of[r.out] == lr]
            fin = [r.final_eval_loss for r in rs if r.status == "finished"]
            bad = [r for r in rs if r.status != "finished"]
            points.append({
                "base_lr": lr,
                "status": "finished" if not bad else bad[0].status,
                "mean": float(np.mean(fin)) if fin else None,
                "std": float(np.std(fin, ddof=1)) if len(fin) > 1 else 0.0 if fin else None,
                "n_finished": len(fin),
                "runs": [{"seed": r.seed, "status": r.status, "final_eval_loss": r.final_eval_loss, "error": r.error,
                          "out": str(r.out), "reused": r.reused, "wall_s": r.wall_s} for r in rs],
            })
        ok = [p for p in points if p["status"] == "finished"]
        entry: dict[str, Any] = {"points": points, "best": None, "best_loss": None, "edge": None}
        if ok:
            b = min(ok, key=lambda p: p["mean"])
            best[arm] = b["base_lr"]
            entry.update(best=b["base_lr"], best_loss=b["mean"])
            if len(values[arm]) > 1 and b["base_lr"] in (values[arm][0], values[arm][-1]):
                entry["edge"] = "low" if b["base_lr"] == values[arm][0] else "high"
        edge[arm] = entry["edge"]
        data["arms"][arm] = entry
    data["best"] = best
    data["wall_s"] = time.perf_counter() - t0
    path = out / "grid.json"
    _config.atomic_write_text(path, json.dumps(_clean(data), indent=1) + "\n")
    from . import reporting as report

    files = report.write_grid(out, data)
    return GridResult(out, best, edge, data, [path, *files])


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


def _common_args(p, out_help: str) -> None:
    add_target_args(p)
    p.add_argument("--plans", default=None,
                   help="comma-separated plans (presets or plan files), baseline first (default: uniform-moe,paper-moe "
                        "for MoE presets, uniform-dense,paper-dense for dense presets and for --command)")
    p.add_argument("--out", default=None, help=out_help)
    add_workers_arg(p)


def add_commands(sub) -> None:
    """Register ``rlrs compare`` and ``rlrs lr-grid``."""
    p = sub.add_parser(
        "compare", help="the paper's speed-up of relative plans over a baseline, over paired seeds",
        description="Train each plan with each seed (seed i of every arm uses data seed i), then measure "
                    "the paper's speed-up of every plan over the first: (T_base / T_relative - 1) x 100%. "
                    "Trains a preset, or your own script with --command. "
                    "Writes results.json, report.md and PNG plots into --out. Exit status 1 if a run crashed.")
    _common_args(p, "output directory (default: runs/compare-PRESET); runs go under OUT/runs and are reused")
    p.add_argument("--seeds", type=int, default=3, help="seeds per plan (default: 3, as the paper)")
    p.add_argument("--metric", choices=METRICS, default="eval", help="eval: held-out loss (default); train: training loss (presets only)")
    p.add_argument("--base-lrs-from", default=None, metavar="GRID_JSON",
                   help="take each arm's η_base from an `rlrs lr-grid` grid.json (or its directory)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "lr-grid", help="per-plan η_base search over the paper's {1,2,5}x10^-n grid",
        description="Train each plan at each η_base of the grid and report the best per plan (the paper tunes "
                    "η_base separately for the baseline and the relative plan). Trains a preset, or your own "
                    "script with --command. Writes grid.json, grid.md and lr_grid.png into --out; "
                    "`rlrs compare --base-lrs-from OUT/grid.json` uses the result.")
    _common_args(p, "output directory (default: runs/lr-grid-PRESET); use compare's --out to share runs")
    p.add_argument("--grid", default=None, metavar="LR,LR,...",
                   help="η_base values, e.g. 1e-3,2e-3,5e-3 (default: 5 values around each plan's η_base)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per grid point (default: 1)")
    p.set_defaults(func=cmd_lr_grid)


def _prepare(args, name: str) -> Target:
    target = target_from_args(args)
    args.plans_list = parse_plans(args.plans) if args.plans is not None else target.default_plans()
    args.out = Path(args.out or f"runs/{name}-{target.name}")
    args.sets = parse_sets(args.set)
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
    res = compare(target, args.plans_list, args.seeds, args.out, sets=args.sets, base_lrs=base_lrs,
                  metric=args.metric, workers=args.workers, command=command_line("compare", args, extra),
                  progress=sys.stderr.isatty())
    print()
    for line in res.lines():
        print(line)
    for arm, d in res.differences.items():
        if d is not None:
            print(f"{arm}: {d.describe()}")
    bad = [r for r in res.runs if r.status != "finished"]
    for r in bad:
        print(f"{r.arm} seed {r.seed}: {r.status}: {(r.error or '').strip().splitlines()[0] if r.error else ''}")
    print(f"report: {res.out / 'report.md'}  results: {res.out / 'results.json'}")
    return 1 if any(r.status == "failed" for r in res.runs) else 0


def cmd_lr_grid(args) -> int:
    target = _prepare(args, "lr-grid")
    grid = parse_grid(args.grid) if args.grid is not None else None
    extra = [*_extra_plans(args), "--seeds", str(args.seeds)] + (["--grid", args.grid] if args.grid else [])
    res = lr_grid(target, args.plans_list, args.out, grid=grid, seeds=args.seeds, sets=args.sets,
                  workers=args.workers, command=command_line("lr-grid", args, extra), progress=sys.stderr.isatty())
    print()
    for arm in (arm_name(p) for p in args.plans_list):
        if arm in res.best:
            note = f" (at the {res.edge[arm]} edge of the grid: the optimum may lie beyond it)" if res.edge[arm] else ""
            print(f"{arm}: best η_base {res.best[arm]:g}, final eval loss {res.grid['arms'][arm]['best_loss']:.4f}{note}")
        else:
            print(f"{arm}: no η_base of the grid finished without diverging; try lower values with --grid")
    print(f"report: {res.out / 'grid.md'}  grid: {res.out / 'grid.json'}")
    failed = any(r["status"] == "failed" for a in res.grid["arms"].values() for p in a["points"] for r in p["runs"])
    return 1 if failed or len(res.best) < len(res.grid["arms"]) else 0
