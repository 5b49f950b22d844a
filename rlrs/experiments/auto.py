"""``rlrs auto``: each component's λ_start and λ_end from a short probe of the user's own target.

The paper (Ludziejewski et al., arXiv 2507.03526) finds its per-component λ with a local search of
about 300 runs on a 34M model; for a new architecture that is out of reach. ``auto`` starts from
the uniform plan (or ``plan``) at its η_base, probes the target for a small fraction of that cost
and derives a factor ``f_c`` per component; the derived plan scales the component's whole schedule
by it (λ_start and λ_end ``× f_c``, ``f_c`` within [1/16, 16], or within the probed [1/4, 4] for
``sensitivity``). Two methods of different kinds:

- ``update-size`` (one run): equalise the relative update size ‖ΔW‖/‖W‖ of every component to
  that of the hidden layers, measured over the first ``probe`` fraction of the uniform run;
- ``sensitivity`` (``1 + 2·C`` short runs): the loss of the whole schedule compressed into
  ``probe_steps``, with each component's schedule scaled by 1/4 and by 4; a parabola in log λ
  through the three losses gives the factor.

    >>> from rlrs.experiments.auto import auto, load
    >>> res = auto("micro-moe", method="update-size", out="runs/auto")   # doctest: +SKIP
    >>> res.plan_file                                                     # doctest: +SKIP
    'runs/auto/auto-update-size.toml'
    >>> load("runs/auto/auto-update-size.json") == res                   # doctest: +SKIP
    True

or ``rlrs auto --model micro-moe --method update-size``. ``auto`` is :func:`run` (the probes: it
writes only runs, under ``OUT/runs``), :func:`save` (``auto-METHOD.json``, the :class:`AutoResult`,
and ``auto-METHOD.toml``, the derived plan it holds) and :func:`render` (``auto-METHOD.md``, the
table the command prints) in one call. The derived plan keeps the start plan's
η_base: tune it next (``rlrs lr-grid --plans FILE``). Both rules are pure functions of the
measurements (:func:`update_size_factors`, :func:`sensitivity_factors`, then :func:`scaled_plan`),
tested on synthetic measurements; docs/auto.md says what each assumes and when it fails.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config as _config
from .. import files, presets
from ..components import COMPONENTS
from .arms import default_out
from ..config import ConfigError
from ..engine import CommandRun, Job, RunResult, reason_line, run_all, run_dir
from ..models import get_size
from ..optim import MEASURE_ENV
from ..options import (add_executor_args, add_out_arg, add_plan_arg, add_target_args, add_workers_arg,
                      check_workers, command_line, default_of, executor_from_args, sets_from_args,
                      target_from_args)
from ..plan import ComponentPlan, Plan
from ..runlog import read_log
from ..targets import CommandTarget, PresetTarget, Target

METHODS = ("update-size", "sensitivity")
LOW, HIGH = 1.0 / 16.0, 16.0  # the range of an update-size factor f_c
PROBE_FACTORS = (0.25, 4.0)  # sensitivity: each component's schedule × 1/4 and × 4
HIDDEN = ("attention", "feedforward", "experts")  # the update-size reference: the hidden layers
KEPT = ("router", "other")  # update-size keeps their schedules (no principled rule; see docs/auto.md)
PROBE_EVAL_INTERVAL = 0.25  # sensitivity on a model size: evaluate at 0, 25%, ..., 100% of each short run
MEASUREMENTS_PER_PROBE = 20  # a command's probe measures its update sizes about this often


# --- the rules: pure functions of the measurements --------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One component's derived factor and what it came from. ``ratio``: its median ‖ΔW‖/‖W‖
    (update-size); ``loss_low``/``loss_high``: the probe's eval loss with its schedule × 1/4 and
    × 4 (sensitivity; ``None`` where that run diverged); ``note`` says where a rule did not apply
    as such (kept, clipped, not convex)."""

    component: str
    factor: float
    start: float = 1.0  # λ_start of the derived plan
    end: float = 1.0  # λ_end of the derived plan
    ratio: float | None = None
    loss_low: float | None = None
    loss_high: float | None = None
    note: str = ""


def _round(f: float) -> float:
    # Three significant digits: no probe measures a factor more finely, and equal measurements
    # then give exactly 1 (exp(log r) is not always r in floating point).
    return float(f"{f:.3g}")


def _clip(f: float) -> tuple[float, str]:
    if f < LOW:
        return LOW, f"clipped from {f:.3g} to 1/16"
    if f > HIGH:
        return HIGH, f"clipped from {f:.3g} to 16"
    return f, ""


def update_size_factors(ratios: Mapping[str, float], expected: Sequence[str] = ()) -> list[Choice]:
    """Each component's factor from its median relative update size ``r_c`` = ‖ΔW‖/‖W‖ under
    the start plan: ``f_c = clip(r_ref / r_c, 1/16, 16)``, ``r_ref`` the geometric mean over the
    hidden layers (attention, feedforward, experts). The router and ``other`` (norms) keep
    ``f = 1``. Equal ratios give ``f = 1`` everywhere: the start plan back, exactly.

    >>> [(c.component, c.factor) for c in update_size_factors({"embedding": 1e-4, "attention": 2e-3,
    ...                                                          "feedforward": 2e-3, "router": 1e-2})]
    [('embedding', 16.0), ('attention', 1.0), ('feedforward', 1.0), ('router', 1.0)]

    ``expected``: the components the model must have; one missing, or a ratio that is not a
    finite number > 0, raises naming it.
    """
    missing = [c for c in expected if c not in ratios and c not in KEPT]
    if missing:
        raise ConfigError(f"update sizes: the probe measured none for {', '.join(missing)} (it has: "
                          f"{', '.join(ratios) or 'none'}); every component the model has must be measured")
    for c, r in ratios.items():
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise ConfigError(f"update sizes: {c}'s ‖ΔW‖/‖W‖ is {r!r}, not a number > 0: the probe's "
                              "weights or updates were not finite (lower η_base) or the component did not train")
    hidden = [c for c in HIDDEN if c in ratios]
    if not hidden:
        raise ConfigError(f"update sizes: no hidden-layer component (attention, feedforward, experts) was measured "
                          f"(only {', '.join(ratios) or 'none'}); the reference size is theirs")
    ref = math.exp(sum(math.log(ratios[c]) for c in hidden) / len(hidden))
    out = []
    for c, r in sorted(ratios.items(), key=lambda kv: _order(kv[0])):
        if c in KEPT:
            out.append(Choice(c, 1.0, ratio=r, note="kept (no rule for it)"))
            continue
        f, note = _clip(_round(ref / r))
        out.append(Choice(c, f, ratio=r, note=note))
    return out


def fit_log_parabola(low: float | None, mid: float, high: float | None,
                     factors: tuple[float, float] = PROBE_FACTORS) -> tuple[float, str]:
    """The factor at the minimum of the parabola in ``log f`` through the losses at ``f = low,
    1, high`` (``factors``), kept within the probed factors: a vertex beyond them is where a
    nearly straight line through three noisy points happens to bend (seen on a MoE model: × 1360
    and × 1/200000), so it gives the probed end it lies beyond. Where the three are not convex (or
    a side diverged, ``None``), the best of them (ties: 1). Returns the factor and a note.

    >>> fit_log_parabola(2.0 + math.log(4) ** 2, 2.0, 2.0 + math.log(4) ** 2)
    (1.0, '')
    >>> fit_log_parabola(2.0, 2.5, 3.5)  # falling towards × 1/4 and beyond
    (0.25, 'minimum beyond × 1/4 (at × 0.125): took × 1/4, the end of what was probed')
    """
    xs = [math.log(factors[0]), 0.0, math.log(factors[1])]
    ys = [low, mid, high]
    if low is None or high is None:
        finite = [(y, abs(x), x) for x, y in zip(xs, ys) if y is not None]
        y, _, x = min(finite)
        side = "× 1/4" if low is None else "× 4"
        return _round(math.exp(x)), f"{side} diverged: best of the others"
    # Lagrange form: exact for any three distinct points.
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    if not a > 0:
        y, _, x = min((y, abs(x), x) for x, y in zip(xs, ys))
        return _round(math.exp(x)), "not convex: best of the three"
    b = d01 - a * (x0 + x1)
    f = _round(math.exp(-b / (2 * a)))
    for end in factors:
        text = f"× 1/{1 / end:g}" if end < 1 else f"× {end:g}"
        if (f < end) if end < 1 else (f > end):
            return end, f"minimum beyond {text} (at × {f:.3g}): took {text}, the end of what was probed"
    return f, ""


def sensitivity_factors(base_loss: float, losses: Mapping[str, tuple[float | None, float | None]]) -> list[Choice]:
    """Each component's factor from the probe's eval losses: ``base_loss`` of the start plan and,
    per component, ``(loss with its schedule × 1/4, loss × 4)`` (``None``: that run diverged).
    See :func:`fit_log_parabola`. Equal losses (a flat loss) give ``f = 1``.

    >>> q = lambda f, best: (math.log(f) - math.log(best)) ** 2   # a loss with its minimum at `best`
    >>> [c.factor for c in sensitivity_factors(q(1, 2), {"embedding": (q(0.25, 2), q(4, 2))})]
    [2.0]
    """
    if not (isinstance(base_loss, (int, float)) and math.isfinite(base_loss)):
        raise ConfigError(f"sensitivity: the start plan's probe loss is {base_loss!r}; the probe diverged at the "
                          "start plan itself: lower η_base (rlrs lr-grid) before deriving λ")
    out = []
    for c, (low, high) in sorted(losses.items(), key=lambda kv: _order(kv[0])):
        for y in (low, high):
            if y is not None and not (isinstance(y, (int, float)) and math.isfinite(y)):
                raise ConfigError(f"sensitivity: {c}'s probe loss is {y!r}; give None for a run that diverged")
        f, note = fit_log_parabola(low, base_loss, high)
        out.append(Choice(c, f, loss_low=low, loss_high=high, note=note))
    return out


def scaled_plan(start: Plan, choices: Sequence[Choice]) -> tuple[Plan, list[Choice]]:
    """``start`` with each chosen component's whole schedule scaled by its factor (λ_start and
    λ_end × f; a ``constant`` shape holds λ_start and keeps λ_end = 1), η_base and the rest
    unchanged; and the choices with the plan's λ filled in. All factors 1: ``start`` itself."""
    replaced: dict[str, ComponentPlan] = {}
    filled = []
    for ch in choices:
        cp = start.component(ch.component)
        if ch.factor != 1.0:
            end = cp.end if cp.shape == "constant" else cp.end * ch.factor
            cp = dataclasses.replace(cp, start=cp.start * ch.factor, end=end)
            replaced[ch.component] = cp
        filled.append(dataclasses.replace(ch, start=cp.start, end=cp.end))
    return (dataclasses.replace(start, **replaced) if replaced else start), filled


def _order(c: str) -> int:
    return COMPONENTS.index(c) if c in COMPONENTS else len(COMPONENTS)


# --- the probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredCommandRun(CommandRun):
    """A :class:`~rlrs.engine.CommandRun` whose script's :class:`rlrs.RelativeLR` measures each
    component's update size every ``measure_every`` steps (``$RLRS_MEASURE_UPDATES``): the
    update-size probe of a ``--command``. Its own run directory (the measurement is in its identity)."""

    measure_every: int = 1

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "measure_every": self.measure_every}

    def run(self, out: Path, stop_at: int | None, progress: bool) -> RunResult:
        # The engine starts the command with a copy of this process's environment.
        before = os.environ.get(MEASURE_ENV)
        os.environ[MEASURE_ENV] = str(self.measure_every)
        try:
            return super().run(out, stop_at, progress)
        finally:
            if before is None:
                os.environ.pop(MEASURE_ENV, None)
            else:
                os.environ[MEASURE_ENV] = before


@dataclass(frozen=True)
class AutoResult:
    """What :func:`run` measured and derived: ``auto-METHOD.json`` is ``rlrs.config.to_dict`` of it,
    and ``rlrs.config.from_dict(AutoResult, json.load(f))`` (:func:`load`) reads it back. ``plan``
    is the derived plan itself; :func:`save` writes it to ``plan_file`` (``OUT/auto-METHOD.toml``),
    the file ``--plan`` and ``--plans`` take."""

    method: str
    target: str
    start_plan: str
    plan: Plan  # the derived plan (save writes it to plan_file)
    plan_file: str  # OUT/auto-METHOD.toml
    horizon: int  # the target's training length in steps
    probe_steps: int  # steps of each probe run (update-size: the steps its measurements are read from)
    runs: int  # probe runs
    cost_steps: int  # training steps the probe runs take in all
    trained_steps: int  # of them trained by this call (the rest reused from earlier calls)
    choices: tuple[Choice, ...]
    base_loss: float | None = None  # sensitivity: the start plan's probe loss
    wall_s: float = 0.0
    command: str = ""

    def lines(self) -> list[str]:
        """The printed table: per component the measurement, the factor, λ_start and λ_end."""
        what = "median ‖ΔW‖/‖W‖" if self.method == "update-size" else "eval loss ×1/4 | ×1 | ×4"
        rows = [f"{'component':<12} {what:>28} {'factor':>7} {'λ_start':>8} {'λ_end':>8}  note"]
        for c in self.choices:
            if self.method == "update-size":
                m = f"{c.ratio:.3g}"
            else:
                m = " | ".join("diverged" if v is None else f"{v:.4f}" for v in (c.loss_low, self.base_loss, c.loss_high))
            rows.append(f"{c.component:<12} {m:>28} {c.factor:>7.3g} {c.start:>8.4g} {c.end:>8.4g}  {c.note}")
        rows.append(f"probe cost: {self.cost_steps} training steps ({self.runs} run{'s' * (self.runs != 1)} of "
                    f"{self.probe_steps} steps; {self.trained_steps} of them trained by this call), "
                    f"{self.cost_steps / self.horizon:.2f}x one run of {self.horizon} steps")
        return rows


def _check_run(r: RunResult, what: str) -> None:
    if r.status not in ("finished", "stopped"):
        fix = " (lower η_base or the start plan's λ; rlrs lr-grid finds a stable η_base)" if r.status == "diverged" else ""
        raise ConfigError(f"{what}: the probe run {r.status}: {reason_line(r.status, r.error)}{fix}; its run "
                          f"directory: {r.out}")


def measured_ratios(out: Path, after: int, upto: int | None = None) -> dict[str, float]:
    """The median ‖ΔW‖/‖W‖ per component over a run's measurements after step ``after`` (the
    warmup) up to step ``upto``: the trainer's ``update_ratio/*`` metrics, or a script's through
    :class:`rlrs.RelativeLR`. ``{}`` where the run measured none; NaN where a component's are all NaN."""
    values: dict[str, list[float]] = {}
    seen_any = False
    for rec in read_log(out).train:
        for key, v in rec.metrics.items():
            if not key.startswith("update_ratio/"):
                continue
            seen_any = True
            if after < rec.step <= (upto if upto is not None else rec.step):
                values.setdefault(key.split("/", 1)[1], []).append(float(v))
    if not seen_any:
        return {}
    if not values:
        raise ConfigError(f"update sizes: {out}: no measurement after the warmup (step {after}) and up to the probe's "
                          f"end (step {upto}); lengthen the probe (--probe), or for a model size measure more often "
                          "(--set train.eval_interval=0.005)")
    # A NaN (weights of norm 0, a non-finite update) makes the component's ratio NaN: refused, not skipped.
    return {c: statistics.median(vs) if all(math.isfinite(v) for v in vs) else math.nan for c, vs in values.items()}


def _start_plan_name(target: Target, plan: str | None) -> str:
    if plan is not None:
        return plan
    if isinstance(target, PresetTarget):
        return presets.default_plans(get_size(target.preset).is_moe)[0]
    return presets.default_plans(moe=False)[0]


def run(
    target: str | Target,
    method: str = "update-size",
    out: str | Path | None = None,
    *,
    plan: str | None = None,
    probe: float = 0.05,
    probe_steps: int | None = None,
    sets: Mapping[str, Any] | None = None,
    workers: int | None = None,
    seed: int = 0,
    command: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    executor=None,
) -> AutoResult:
    """Derive each component's λ_start and λ_end for ``target`` (a model size or a
    :class:`~rlrs.targets.Target`) with ``method`` (``update-size`` or ``sensitivity``) from the
    start ``plan`` (default: the uniform plan for the model type). ``probe``: the fraction of the
    horizon the update-size probe trains; ``probe_steps``: the compressed horizon of each
    sensitivity run (default: 10% of the horizon). Runs go under ``OUT/runs`` (reused, resumed)
    and nothing else is written: :func:`save` writes ``OUT/auto-METHOD.toml`` (the plan) and
    ``OUT/auto-METHOD.json`` (:class:`AutoResult`), :func:`auto` all of it."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ConfigError(f"method: {method!r} is unknown; {_config.closest(method, METHODS)}")
    if isinstance(probe, bool) or not isinstance(probe, (int, float)) or not 0 < probe < 1:
        raise ConfigError(f"probe: the fraction of the horizon the probe trains, between 0 and 1 (e.g. --probe 0.05), "
                          f"got {probe!r}")
    if probe_steps is not None and (isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or probe_steps < 2):
        raise ConfigError(f"probe_steps: each sensitivity run's length in steps, at least 2, got {probe_steps!r}")
    if probe_steps is not None and method != "sensitivity":
        raise ConfigError("probe_steps: applies to --method sensitivity; update-size trains --probe of the horizon")
    check_workers(workers)
    target = PresetTarget(target) if isinstance(target, str) else target
    sets = dict(sets or {})
    clash = [k for k in ("train.seed", "train.data_seed") if k in sets]
    if clash:
        raise ConfigError(f"{clash[0]}: rlrs auto sets it from its seed (train.seed = train.data_seed = seed); "
                          "drop the --set")
    start_name = _start_plan_name(target, plan)
    out = Path(out) if out is not None else default_out("auto", target)
    root = out / "runs"
    base = target.spec(start_name, seed, sets)
    horizon = base.total_steps
    if horizon is None:
        raise ConfigError("--steps: rlrs auto sizes its probe from the training length; give your script's length, "
                          "e.g. --steps 2000 (the script reads it with rlrs.script.steps)")
    start = base.plan
    log(f"rlrs auto: {target.name}, method {method}, start plan {start_name} (η_base {start.base_lr:g}), "
        f"horizon {horizon} steps -> {out}")
    probe_of = _probe_update_size if method == "update-size" else _probe_sensitivity
    probe_result = probe_of(target, base, start_name, sets, root, seed, probe=probe, probe_steps=probe_steps,
                            workers=workers, log=log, progress=progress, executor=executor)
    choices, steps, base_loss = probe_result.choices, probe_result.steps, probe_result.base_loss
    runs, cost, trained = probe_result.runs, probe_result.cost, probe_result.trained
    derived, choices = scaled_plan(start, choices)
    return AutoResult(method=method, target=target.name, start_plan=start_name, plan=derived,
                      plan_file=str(out / f"auto-{method}.toml"), horizon=horizon, probe_steps=steps, runs=runs,
                      cost_steps=cost, trained_steps=trained, choices=tuple(choices), base_loss=base_loss,
                      wall_s=time.perf_counter() - t0, command=command or "")


@dataclass(frozen=True)
class _Probe:
    """What one method's probe measured: the factors, and what the probe cost."""

    choices: list[Choice]
    steps: int  # each probe run's steps
    runs: int
    cost: int  # training steps of all probe runs
    trained: int  # of them trained by this call
    base_loss: float | None = None  # sensitivity: the start plan's probe loss


def _probe_update_size(target: Target, base, start_name: str, sets: Mapping[str, Any], root: Path, seed: int, *,
                       probe: float, probe_steps: int | None, workers, log, progress, executor) -> _Probe:
    """One run of the start plan to ``probe`` of the horizon; factors from its update sizes."""
    horizon, start = base.total_steps, base.plan
    steps = max(1, round(probe * horizon))
    warmup = start.warmup_steps(horizon)
    if isinstance(target, CommandTarget):
        spec = MeasuredCommandRun(base.command, base.plan, base.seed, base.steps, base.cwd,
                                  measure_every=max(1, steps // MEASUREMENTS_PER_PROBE))
    else:
        spec = base
    job = Job(spec, run_dir(root, spec), stop_at=steps if steps < horizon else None,
              label=f"{start_name} probe to step {steps}")
    (r,) = run_all([job], workers, log, progress=progress, executor=executor)
    _check_run(r, "update-size")
    # Read up to the probe's end only, also where the run went further (a command stops at
    # its first report at or past it, as soon as rlrs sees it; a run reused from a longer
    # call): the plan must not depend on timing. The cost is what it trained.
    ratios = measured_ratios(job.out, warmup, steps)
    trained_to = max(steps, r.steps) if r.status == "stopped" else steps
    if not ratios:
        if isinstance(target, CommandTarget):
            raise ConfigError(
                f"update sizes: the script never reported update sizes ({job.out}): it must build its scheduler "
                "with rlrs.RelativeLR(optimizer, plan, steps) over groups from rlrs.param_groups(model, plan) "
                f"(rlrs asks it through ${MEASURE_ENV}), and run past step {warmup + 1}")
        raise ConfigError(f"update sizes: the probe logged none ({job.out}); the trainer measures them at its eval "
                          "points: lengthen the probe (--probe) or evaluate more often (--set train.eval_interval=0.005)")
    expected = target.components() if isinstance(target, PresetTarget) else ()
    return _Probe(update_size_factors(ratios, expected), steps, 1, trained_to, min(r.compute_steps, trained_to))


def _probe_sensitivity(target: Target, base, start_name: str, sets: Mapping[str, Any], root: Path, seed: int, *,
                       probe: float, probe_steps: int | None, workers, log, progress, executor) -> _Probe:
    """``1 + 2·C`` short runs (the whole schedule compressed into ``probe_steps``): the start plan
    and each component's schedule × 1/4 and × 4; factors from the parabolas through their losses."""
    horizon, start = base.total_steps, base.plan
    steps = probe_steps if probe_steps is not None else max(2, round(0.1 * horizon))
    short = (CommandTarget(target.command, steps, target.cwd) if isinstance(target, CommandTarget) else target)
    # The start plan already holds the --set plan.* values; set again on each probe, they would
    # undo its factor (a probe of embedding × 4 under --set plan.embedding.start=5 trains 5).
    probe_sets = {k: v for k, v in sets.items() if not k.startswith("plan.")}
    # Only the final eval loss counts: evaluating every 1% of a short run would cost more than its training.
    short_sets = probe_sets if isinstance(target, CommandTarget) else {
        "train.eval_interval": PROBE_EVAL_INTERVAL, **probe_sets, "train.steps": steps}
    components = target.components()
    arms: list[tuple[str, float | None, Plan]] = [("start", None, start)]
    for c in components:
        for f in PROBE_FACTORS:
            arms.append((c, f, scaled_plan(start, [Choice(c, f)])[0]))
    jobs = []
    for c, f, p in arms:
        spec = short.spec(p, seed, short_sets)
        label = f"{start_name}" if f is None else f"{c} × {f:g}"
        jobs.append(Job(spec, run_dir(root, spec), label=f"{label} ({steps} steps)"))
    results = run_all(jobs, workers, log, progress=progress, executor=executor)
    _check_run(results[0], "sensitivity (the start plan)")
    losses: dict[str, list[float | None]] = {c: [None, None] for c in components}
    for (c, f, _), r in zip(arms[1:], results[1:]):
        if r.status in ("diverged", "unstable"):
            continue  # that side of the parabola is missing; fit_log_parabola says so in its note
        _check_run(r, f"sensitivity ({c} × {f:g})")
        if r.final_eval_loss is None:
            raise ConfigError(f"sensitivity ({c} × {f:g}): the probe reported no eval loss ({r.out}); the script must "
                              "report its last step with rlrs.report(step, loss)")
        losses[c][PROBE_FACTORS.index(f)] = r.final_eval_loss
    base_loss = results[0].final_eval_loss
    if base_loss is None:
        raise ConfigError(f"sensitivity: the start plan's probe reported no eval loss ({results[0].out})")
    choices = sensitivity_factors(base_loss, {c: (lo, hi) for c, (lo, hi) in losses.items()})
    return _Probe(choices, steps, len(results), sum(r.steps for r in results), sum(r.compute_steps for r in results),
                  base_loss)


# --- the files --------------------------------------------------------------------------------------


def save(result: AutoResult, out: str | Path) -> Path:
    """Write ``out/auto-METHOD.toml`` (the derived plan) and ``out/auto-METHOD.json`` (the result);
    returns the JSON's path. The JSON's ``plan_file`` names the TOML written beside it (what
    :func:`run` put there when ``out`` is the ``out`` it ran with)."""
    out = files.make_dir(out)
    name = f"auto-{result.method}"
    plan_file = result.plan.save(out / f"{name}.toml")
    if Path(result.plan_file) != plan_file:
        result = dataclasses.replace(result, plan_file=str(plan_file))
    path = out / f"{name}.json"
    files.write_json(path, _config.to_dict(result), indent=2)
    return path


def load(path: str | Path) -> AutoResult:
    """The :class:`AutoResult` in an ``auto-METHOD.json`` (or the directory holding one), files of
    earlier versions included. A directory with both methods' files needs the file named."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in (path / f"auto-{m}.json" for m in METHODS) if p.exists())
        if len(found) > 1:
            raise ConfigError(f"{path}: holds {' and '.join(p.name for p in found)}; name the file to load")
        path = found[0] if found else path / f"auto-{METHODS[0]}.json"
    return _config.load_typed(AutoResult, path, path.name, "rlrs auto", "auto result")


def load_result(path: str | Path) -> AutoResult:
    """The earlier name of :func:`load`."""
    return load(path)


def render(result: AutoResult, out: str | Path) -> list[Path]:
    """Write ``out/auto-METHOD.md``: the command, the table ``rlrs auto`` prints (per component the
    measurement, the factor, λ_start and λ_end), the plan file and the next step; from the result alone."""
    md = files.make_dir(out) / f"auto-{result.method}.md"
    files.atomic_write_text(md, markdown(result))
    return [md]


def markdown(result: AutoResult) -> str:
    """``auto-METHOD.md``: see :func:`render`."""
    how = ("the median relative update size ‖ΔW‖/‖W‖ of each component over the probe, equalised to the hidden "
           "layers'" if result.method == "update-size" else
           "the eval loss of the whole schedule compressed into the probe, with each component's schedule × 1/4, "
           "× 1 and × 4; a parabola in log λ through the three")
    L = [f"# rlrs auto: {result.target}, {result.method}\n"]
    if result.command:
        L.append(f"`{result.command}`\n")
    L.append(f"Start plan {result.start_plan} (η_base {result.plan.base_lr:g}); each component's factor from {how}. "
             f"Wall time {result.wall_s:.0f} s.\n")
    L += ["```", *result.lines(), "```\n"]
    L.append(f"Plan: `{result.plan_file}`. η_base stays the start plan's ({result.plan.base_lr:g}); tune it next: "
             f"`rlrs lr-grid --plans {result.plan_file}` (with the same `--model` or `--command`).\n")
    return "\n".join(L) + "\n"


def auto(target: str | Target, method: str = "update-size", out: str | Path | None = None, **options) -> AutoResult:
    """What ``rlrs auto`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out`` (default: ``runs/auto-NAME``, NAME the model size or ``command``)."""
    target = PresetTarget(target) if isinstance(target, str) else target
    if out is None:
        out = default_out("auto", target)
    result = run(target, method, out, **options)
    save(result, out)
    render(result, out)
    return result


# --- command line -----------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs auto``."""
    p = sub.add_parser(
        "auto", help="each component's λ_start and λ_end from a short probe of your model",
        description="Derive a relative plan for your target from a short probe, starting from the uniform plan "
                    "(or --plan) at its η_base. update-size: one run of --probe of the horizon, equalising each "
                    "component's relative update size ‖ΔW‖/‖W‖ to the hidden layers'. sensitivity: 1 + 2 per "
                    "component short runs (--probe-steps, the whole schedule compressed), a parabola in log λ "
                    "through the losses at × 1/4, × 1, × 4. Writes OUT/auto-METHOD.toml (the plan, for --plan) and "
                    "OUT/auto-METHOD.json, and the table in OUT/auto-METHOD.md. The plan keeps the start η_base: "
                    "tune it next with rlrs lr-grid --plans FILE. "
                    "See docs/auto.md.")
    add_target_args(p)
    p.add_argument("--method", choices=METHODS, default=default_of(run, "method"),
                   help=f"how to derive the λ (default: {default_of(run, 'method')})")
    add_plan_arg(p, shown="uniform-moe for a MoE model, else uniform-dense")
    p.add_argument("--probe", type=float, default=default_of(run, "probe"), metavar="FRACTION",
                   help=f"update-size: the fraction of the horizon the probe run trains (default: {default_of(run, 'probe'):g})")
    p.add_argument("--probe-steps", type=int, default=None, metavar="N",
                   help="sensitivity: each probe run's length, the whole schedule compressed into it (default: 10%% "
                        "of the horizon)")
    add_out_arg(p, shown="runs/auto-MODEL, MODEL the model size or `command`; runs go under OUT/runs and are reused")
    add_workers_arg(p)
    add_executor_args(p)
    p.set_defaults(func=cmd_auto)


def cmd_auto(args) -> int:
    target = target_from_args(args)
    out = Path(args.out) if args.out is not None else default_out("auto", target)
    extra = ["--method", args.method, "--out", str(out)]
    extra += ["--plan", args.plan] if args.plan else []
    extra += ["--probe", f"{args.probe:g}"] if args.method == "update-size" else []
    extra += ["--probe-steps", str(args.probe_steps)] if args.probe_steps is not None else []
    with executor_from_args(args, out / "slurm") as ex:
        res = run(target, args.method, out, plan=args.plan, probe=args.probe, probe_steps=args.probe_steps,
                  sets=sets_from_args(args), workers=args.workers, command=command_line("auto", args, extra),
                  progress=sys.stderr.isatty(), executor=ex)
    record = save(res, out)
    render(res, out)
    print()
    for line in res.lines():
        print(line)
    print(f"plan: {res.plan_file}  record: {record}")
    print(f"η_base stays the start plan's ({res.plan.base_lr:g}); tune it next: rlrs lr-grid --plans {res.plan_file} "
          "(with the same --model or --command)")
    return 0
