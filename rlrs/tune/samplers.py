"""Optuna's samplers and Hyperband over the same space as the local search: cheaper searches.

    $ rlrs tune --model ladder-xs-moe --budget 30 --sampler tpe --out runs/tune-tpe
    $ rlrs tune --model ladder-xs-moe --budget 30 --sampler gp --out runs/tune-gp
    $ rlrs tune --model ladder-xs-moe --budget-steps 6000 --sampler hyperband --out runs/tune-hb

or from Python::

    >>> from rlrs.tune import TuneSpec
    >>> from rlrs.tune.samplers import hyperband_rungs, search_space
    >>> spec = TuneSpec.create("tiny-moe", steps=40, params=["plan.base_lr", "plan.router.start"])
    >>> {k: (round(lo, 6), round(hi, 6)) for k, (lo, hi) in search_space(spec).items()}
    {'plan.base_lr': (0.00012, 0.075), 'plan.router.start': (0.024, 15.0)}
    >>> hyperband_rungs(270, list(range(0, 271, 10)))    # the steps where a bracket's points are compared
    [30, 90, 270]

**Space**: every searched parameter of the :class:`~rlrs.tune.TuneSpec` (the same ``--params``
as the local search) on a log scale from its start value / :data:`SPREAD` to start × ``SPREAD``:
two of algorithm 2's largest steps (×5) either way. The start point (``--plan``: any plan file,
such as a ``tuned.toml`` or a plan ``rlrs auto`` wrote, and ``--set``) is the first trial, as it is
the local search's first evaluation, so every search begins from the same loss.

**Samplers**: ``tpe`` and ``cmaes`` (Optuna's TPE and CMA-ES), ``gp`` (Optuna's Gaussian-process
sampler: a model of the loss over log-λ with a noise term, for small budgets; it needs scipy), each
training every point to the end; ``hyperband`` (Li et al., 2018, arXiv 1603.06560) trains many
points briefly and continues only the best: see :func:`hyperband_rungs`.

**Hyperband**: a bracket asks ``n`` points (from TPE, which learns from the stopped ones too) and
trains them to its first rung; the best 1/:data:`ETA` (at least one) continue to the next rung, and
so on to the full run. The rungs are steps of the same full-horizon run (its cosine schedule is the
full run's): a promoted point *resumes* its runs from their checkpoints, so its early steps are
never trained again. Brackets cycle from the most aggressive (``n`` = 9 from 1/9 of the run) to
plain full runs (``n`` = 3), as in the paper. This is a small explicit successive-halving loop, not
Optuna's ``SuccessiveHalvingPruner``/``HyperbandPruner``: those decide for each trial alone as it
reports, against whichever trials reached the rung before it, so the first trials at a rung are
never stopped and the choice depends on the order the engine's parallel workers finish in; a
bracket here trains a rung's points together on the pool and promotes exactly its best 1/ETA.
Trials of a bracket are told when the bracket ends (stopped points as PRUNED, with their loss at
the rung as an intermediate value, so TPE learns from them); a killed search reruns its last
bracket on the same points, whose runs resume from their checkpoints. A ``--command`` script
reports where it chooses, so rlrs cannot know its eval steps before it runs: Hyperband first
trains the start point to the end (a trial like any other) and sets the rungs at the steps it
reported. A script that reports nowhere before a third of its run leaves no early rung: the search
says so and trains every point to the end (TPE with full runs); report every few percent of the
run (``rlrs.report``) to give Hyperband its rungs. A script that cannot resume starts a promoted
run over from step 0: those steps are counted (``rerun_steps``).

**Budget**: ``budget`` evaluations (trials: points asked, a Hyperband point stopped early included)
and/or ``budget_steps`` training steps (every step of every run, re-evaluations included): the
search stops before work that would exceed either. A Hyperband bracket is shrunk to the points
whose whole bracket fits what is left.

**Choice** (``confirm``, default :data:`CONFIRM`): a single evaluation's loss carries seed noise,
so the point with the lowest is often the luckiest, not the best. At the end the ``confirm`` best
points trained to the end are trained again on ``--seeds`` new seeds (seed indices ``seeds`` to
``2·seeds - 1``; their steps are counted and, with ``budget_steps``, set aside from the start), and
the point with the lowest mean over all its seeds is chosen. ``confirm=0`` chooses the lowest
single evaluation. ``search.json`` states the rule (``choice``) and every re-evaluation.

**Objective**: the same as the local search's (the final eval loss of a run, averaged over
``--seeds``), trained on the run engine (``OUT/runs``), ``workers`` points at a time (asked
together, told as they finish). A point that fails or diverges is told the loss of a model that
predicts every token uniformly (ln of the vocabulary): no better than not training, which is what
a diverged run is; the samplers need a number to steer away from that region.

**Persistence**: trials live in an Optuna study (``OUT/study.db``, study ``rlrs-<sampler>``). A
rerun of the same command resumes: finished trials are kept, a trial left running by a killed
process is marked failed and its point asked again (its runs resume from their checkpoints), and
the search goes on to its budget. Unlike the local search's replay, the suggestions after a resume may differ from
an uninterrupted run's (the sampler's random state is not stored).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from .. import config as _config
from .. import files
from ..config import ConfigError, MissingExtra
from .driver import fmt_loss, write_best
from .study import storage_failures
from .objective import Objective, Partial, make_objective
from .spec import TuneSpec
from .study import other_searches

SAMPLERS = ("tpe", "cmaes", "gp", "hyperband")
"""What ``rlrs tune --sampler`` offers besides ``local`` (algorithm 2)."""

SPREAD = 25.0
"""Each parameter ranges over [start / SPREAD, start × SPREAD] on a log scale."""

ETA = 3
"""Hyperband keeps the best 1/ETA of a rung's points for the next rung."""

RUNGS = 3
"""Hyperband's fidelities: 1/ETA², 1/ETA and all of the run (snapped down to eval steps)."""

CONFIRM = 3
"""How many of the best points are trained again on new seeds before one is chosen."""

STARTUP = 10
"""Optuna's own number of random points before TPE or the GP proposes (see :func:`startup_trials`)."""


@dataclass
class Trial:
    """One evaluation: its point, its loss (``None``: failed), and the training steps it cost.
    ``stopped_at``: the step Hyperband stopped it at (its loss is the eval loss there), or where it
    failed before its last rung; ``None``: trained to the end."""

    number: int
    point: dict[str, float]
    loss: float | None
    steps: int
    error: str | None = None
    stopped_at: int | None = None
    rerun_steps: int = 0


@dataclass
class Confirmation:
    """A point trained again on new seeds: its search loss, the new seeds' mean loss (``None``:
    one failed), the mean over all its seeds (what the choice compares) and the steps spent."""

    number: int
    point: dict[str, float]
    search_loss: float
    confirm_loss: float | None
    loss: float
    seeds: int
    steps: int
    candidate: bool = True  # False: re-evaluated by an earlier, smaller search; no longer among the best


@dataclass
class SamplerResult:
    sampler: str
    best: dict[str, float]
    best_loss: float  # the chosen point's loss: its mean over all its seeds when confirmed
    start_loss: float | None  # None: the start point failed or Hyperband stopped it early
    trials: list[Trial]
    plan_path: Path
    search_path: Path
    confirmations: list[Confirmation]
    rule: str

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    @property
    def compute_steps(self) -> int:
        """Every training step of the search, re-evaluations included."""
        return sum(t.steps for t in self.trials) + sum(c.steps for c in self.confirmations)

    @property
    def rerun_steps(self) -> int:
        return sum(t.rerun_steps for t in self.trials)


def search_space(spec: TuneSpec) -> dict[str, tuple[float, float]]:
    """``{param: (low, high)}``: start / SPREAD to start × SPREAD for every searched parameter."""
    space = {}
    for key, value in spec.start():
        if not value > 0:
            raise ConfigError(f"params: {key} starts at {value!r}; a log-scale sampler needs a value > 0 "
                              "(search it with the local search, or leave it out of --params)")
        space[key] = (value / SPREAD, value * SPREAD)
    return space


def hyperband_rungs(total: int, eval_at: list[int]) -> list[int]:
    """The steps at which Hyperband compares a bracket's points: ``total / ETA**i`` for ``i`` from
    ``RUNGS - 1`` down to 0, each snapped down to a step with an eval loss (``eval_at``)."""
    rungs: list[int] = []
    for i in range(RUNGS - 1, 0, -1):
        below = [s for s in eval_at if 0 < s <= total / ETA**i]
        if below and below[-1] < total and below[-1] not in rungs:
            rungs.append(below[-1])
    return [*rungs, total]


def startup_trials(evaluations: float) -> int:
    """Random points (the start point included) before TPE or the GP proposes: Optuna's 10, but at
    most a third of the evaluations the budget allows, at least 2. With Optuna's 10, a budget of
    10 evaluations or fewer never left the random start-up: the "GP search" was a random search.

        >>> startup_trials(100), startup_trials(13), startup_trials(4)
        (10, 4, 2)
    """
    return int(max(2, min(STARTUP, evaluations // 3)))


def _sampler(optuna, name: str, seed: int, startup: int = STARTUP):
    if name in ("tpe", "hyperband"):
        # constant_liar spreads the points asked together (--workers, a bracket) apart; Optuna >= 5
        # defaults to it, older versions do not. TPE also learns from the points Hyperband stopped.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if name == "cmaes":
        _config.require("cmaes", "tune")  # Optuna's CmaEsSampler imports it lazily
        # Its initial mean is the centre of the box, which on a log scale is the start point.
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        if not hasattr(optuna.samplers, "GPSampler"):
            raise MissingExtra(f"--sampler gp: Optuna {optuna.__version__} has no GPSampler (it came in 3.6); "
                               "pip install -U optuna")
        try:
            import scipy  # noqa: F401 - GPSampler fits its model with scipy (and torch, which rlrs has)
        except ImportError as err:
            raise MissingExtra("--sampler gp: Optuna's GPSampler needs scipy: pip install scipy") from err
        # Not deterministic_objective: seed noise is part of the loss, and the GP models it.
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    raise ConfigError(f"sampler: {name!r} is unknown; {_config.closest(name, ('local', *SAMPLERS))}")


def failure_loss(spec: TuneSpec) -> float | None:
    """What a failed point is told: the loss of predicting every token uniformly, ln(vocabulary).
    ``None`` for a ``--command`` run, whose chance level rlrs cannot know: a failed point is then
    told the highest loss a point has finished with (:func:`_told_failure`)."""
    cfg = spec.config
    return None if cfg is None else math.log(cfg.model.vocab_size)


def _told_failure(worst: float | None, study, finished: Sequence[float], error: str) -> float:
    """The loss told for a failed point: ``worst``, or with none the highest final loss seen so far
    (in the study and in ``finished``, the batch being told); none seen: the search cannot go on."""
    if worst is not None:
        return worst
    import optuna

    seen = [float(t.value) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "error" not in t.user_attrs and t.value is not None and math.isfinite(t.value)]
    seen += [x for x in finished if math.isfinite(x)]
    if not seen:
        raise ConfigError(f"sampler: the first points failed before any finished (first error: "
                          f"{error.splitlines()[0] if error else 'no eval loss'}); check the command with "
                          "`rlrs compare --command ... --seeds 1` before searching")
    return max(seen)


def _check_count(value, name: str, flag: str, least: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{name}: an integer >= {least}, got {value!r}; e.g. {flag}")


def sampler_search(
    spec: TuneSpec,
    out: str | Path,
    budget: int | None = None,
    sampler: str = "tpe",
    *,
    budget_steps: int | None = None,
    confirm: int = CONFIRM,
    workers: int = 1,
    objective: Objective | None = None,
    fail_loss: float | None = None,
    log: Callable[[str], None] = print,
) -> SamplerResult:
    """Search ``spec``'s space with ``sampler`` (see the module docstring) within ``budget``
    evaluations and/or ``budget_steps`` training steps; re-evaluate the ``confirm`` best points on
    new seeds and choose by the mean; write ``tuned.toml`` (and ``tuned_config.json``) for the
    chosen point and ``search.json`` with every trial. ``fail_loss`` is told for failed points
    (default: :func:`failure_loss`)."""
    optuna = _config.require("optuna", "tune")
    _check_count(budget, "budget", "--budget 30", 1)
    _check_count(budget_steps, "budget_steps", "--budget-steps 20000", 1)
    _check_count(confirm, "confirm", "--confirm 3 (0: choose the lowest single evaluation)", 0)
    if budget is None and budget_steps is None:
        raise ConfigError("budget: give --budget N (evaluations), --budget-steps N (training steps), or both")
    if spec.prune is not None:
        raise ConfigError("--prune: the pruning rungs belong to the local search; drop --prune with --sampler "
                          "(--sampler hyperband stops points early itself)")
    if spec.min_improvement:
        raise ConfigError("--min-improvement: a move rule of the local search; drop it with --sampler")
    out = Path(out)
    files.make_dir(out, "--out")
    space = search_space(spec)
    start = {k: v for k, v in spec.start()}
    dists = {k: optuna.distributions.FloatDistribution(lo, hi, log=True) for k, (lo, hi) in space.items()}
    worst = failure_loss(spec) if fail_loss is None else fail_loss
    total = spec.base.total_steps
    if total is None and (sampler == "hyperband" or budget_steps is not None):
        raise ConfigError("--steps: a --command run of unknown length; give --steps N (the length the script "
                          "trains, $RLRS_STEPS), which " + ("Hyperband's rungs are fractions of" if sampler == "hyperband"
                                                            else "--budget-steps counts steps with"))
    full = None if total is None else total * spec.seeds  # the steps of one point trained to the end
    reserve = 0 if full is None else confirm * full  # the final re-evaluation's, set aside
    if budget_steps is not None and full is not None and budget_steps < full + reserve:
        raise ConfigError(f"budget_steps: {budget_steps} steps do not cover one point trained to the end ({full}) "
                          f"and the re-evaluation of --confirm {confirm} points ({reserve}); give at least "
                          f"--budget-steps {full + reserve}, or a lower --confirm")
    # Full evaluations the budget allows (Hyperband's early-stopped points cost less: it asks more).
    evals = min(budget if budget is not None else math.inf,
                math.inf if budget_steps is None or full is None else (budget_steps - reserve) // full)
    startup = startup_trials(evals if sampler != "hyperband" else 3 * evals)
    if sampler in ("tpe", "gp", "hyperband"):
        log(f"{sampler}: the first {startup} points (the start point among them) are random, then the model "
            "proposes")
    name = f"rlrs-{sampler}"
    others = other_searches(out, name)
    if others:
        raise ConfigError(f"{out}: holds another search ({', '.join(others)}); give each search its own --out "
                          "(their tuned.toml and search.json would overwrite each other)")
    url = f"sqlite:///{out / 'study.db'}"
    with storage_failures(url):  # a full disk under the study: a clear message, finished trials kept
        study = optuna.create_study(storage=url, study_name=name, load_if_exists=True,
                                    sampler=_sampler(optuna, sampler, spec.search_seed, startup),
                                    direction="minimize")
        if "spec" in study.user_attrs:
            diff = spec.differences(study.user_attrs["spec"])
            if diff:
                raise ConfigError(f"{out}: its study holds another search (differs in {', '.join(diff[:4])}); "
                                  "use another --out")
        else:
            study.enqueue_trial(start, skip_if_exists=True)  # first: a kill right after still starts there
            study.set_user_attr("spec", json.loads(json.dumps(spec.to_dict())))
        # Re-evaluations an earlier run of this search made count too (a rerun with a larger budget).
        spent = sum(int(v["steps"]) for v in study.user_attrs.get("confirmed", {}).values())
        limits = _Limits(budget, None if budget_steps is None else budget_steps - reserve - spent)
        obj = objective or make_objective(spec, out, workers)
        rungs = None
        try:
            if sampler == "hyperband":
                hyperband = _Hyperband(study, obj, dists, worst, log, spec.seeds)
                hyperband.run(limits)
                rungs = hyperband.rungs
            else:
                _full_runs(study, obj, dists, worst, log, workers, limits, full)
            trials = _trials(study, optuna)
            confirmations = _confirm(study, obj, trials, confirm, spec.seeds, log)
        finally:
            if objective is None:
                obj.close()
    ok = [t for t in trials if t.loss is not None and t.stopped_at is None]
    if not ok:
        first = next((t.error for t in trials if t.error), "no point was trained to the end")
        raise ConfigError(f"sampler {sampler}: none of {len(trials)} trials was trained to the end without failing "
                          f"(first error: {first}); check the start point with `rlrs train`, or give a larger budget")
    if confirmations:
        rule = (f"the lowest mean eval loss over {2 * spec.seeds} seeds among the "
                f"{sum(c.candidate for c in confirmations)} points with "
                f"the lowest loss on the search's {spec.seeds} seed(s), each trained again on {spec.seeds} new seed(s)")
        chosen = min((c for c in confirmations if c.candidate), key=lambda c: (c.loss, c.number))
        best_point, best_loss = chosen.point, chosen.loss
    else:
        rule = "the lowest single evaluation (confirm = 0: no re-evaluation)"
        best = min(ok, key=lambda t: (t.loss, t.number))
        best_point, best_loss = best.point, best.loss
    write_best(spec, out, best_point)
    first = trials[0] if trials else None
    start_loss = first.loss if first is not None and first.stopped_at is None else None
    res = SamplerResult(sampler, best_point, best_loss, start_loss, trials, out / "tuned.toml", out / "search.json",
                        confirmations, rule)
    doc = {"sampler": sampler, "space": space, "spec": spec.to_dict(), "start": start, "start_loss": res.start_loss,
           "best": best_point, "best_loss": best_loss, "fail_loss": worst,
           "choice": {"rule": rule, "confirmed": [asdict(c) for c in confirmations]},
           "budget": {"evaluations": budget, "steps": budget_steps},
           "compute": {"steps": res.compute_steps, "rerun_steps": res.rerun_steps,
                       "confirm_steps": sum(c.steps for c in confirmations)},
           "trials": [asdict(t) for t in trials]}
    if sampler == "hyperband":
        doc["hyperband"] = {"eta": ETA, "rungs": rungs}
    files.write_json(res.search_path, doc, indent=2)
    return res


@dataclass
class _Limits:
    """What the search proper may spend: evaluations, and steps (the re-evaluation's set aside)."""

    evaluations: int | None
    steps: int | None

    def left(self, trials: list[Trial]) -> tuple[float, float]:
        evals = math.inf if self.evaluations is None else self.evaluations - len(trials)
        steps = math.inf if self.steps is None else self.steps - sum(t.steps for t in trials)
        return evals, steps


def _final(part: Partial) -> float | None:
    final = part.curve[max(part.curve)] if part.status == "ok" and part.curve else None
    return final if final is not None and math.isfinite(final) else None


def _record(trial, part: Partial) -> None:
    trial.set_user_attr("compute_steps", part.steps)
    if part.rerun_steps:
        trial.set_user_attr("rerun_steps", part.rerun_steps)


def _full_runs(study, obj: Objective, dists, worst: float | None, log, workers: int, limits: _Limits,
               full: int | None) -> None:
    """TPE, CMA-ES, GP: ``workers`` points at a time, each trained to the end (``full`` steps each;
    ``None``: a command of unknown length, searched on an evaluation budget only)."""
    import optuna

    TrialState = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Left by a killed process: ask its point again (its runs resume from their checkpoints).
        study.enqueue_trial(dict(t.params))
        study.tell(t.number, state=TrialState.FAIL)
        log(f"trial {t.number} was left running by an earlier process: evaluating its point again")
    while True:
        evals, steps = limits.left(_trials(study, optuna))
        n = min(workers, evals, steps if math.isinf(steps) else steps // full)
        if n < 1:
            break
        asked = [study.ask(dists) for _ in range(int(n))]
        points = [dict(t.params) for t in asked]
        parts = obj.run(points, None)
        finished = [f for f in map(_final, parts) if f is not None]
        for trial, part in zip(asked, parts):
            _tell_full_run(study, trial, part, worst, finished, log)
        obj.discard(points)


def _tell_full_run(study, trial, part: Partial, worst: float | None, finished: Sequence[float], log,
                   what: str = "") -> None:
    """Record a point trained to the end and tell the study its final loss, or, where it failed,
    the loss told for a failure (:func:`_told_failure`; ``finished``: the batch's final losses)."""
    _record(trial, part)
    final = _final(part)
    if final is None:
        err = part.error or "no eval loss"
        trial.set_user_attr("error", err)
        told = _told_failure(worst, study, finished, err)
        study.tell(trial, told)
        log(f"trial {trial.number}: failed ({err.splitlines()[0]}); told {told:.4f}")
    else:
        study.tell(trial, final)
        log(f"trial {trial.number}: loss {fmt_loss(final)}{what}")


class _Hyperband:
    """Brackets of successive halving whose promoted points resume their runs (module docstring)."""

    def __init__(self, study, obj: Objective, dists, worst: float | None, log, seeds: int):
        self.study, self.obj, self.dists, self.worst, self.log, self.seeds = study, obj, dists, worst, log, seeds
        # None: a command's, whose eval steps its first run to the end shows (see _learn_rungs)
        self.rungs: list[int] | None = hyperband_rungs(obj.total_steps, obj.eval_at) if obj.eval_at else None

    def bracket_rungs(self, index: int) -> tuple[int, list[int]]:
        """Bracket ``index``'s nominal number of points and its rungs (brackets cycle, most aggressive first)."""
        top = len(self.rungs) - 1
        s = top - index % (top + 1)
        return math.ceil((top + 1) / (s + 1) * ETA**s), self.rungs[top - s:]

    def cost(self, n: int, rungs: list[int]) -> int:
        """Training steps of a bracket of ``n`` points (every rung's survivors continued)."""
        steps, done = 0, 0
        for stop in rungs:
            steps += n * (stop - done) * self.seeds
            done, n = stop, max(1, n // ETA)
        return steps

    def run(self, limits: _Limits) -> None:
        import optuna

        study = self.study
        TrialState = optuna.trial.TrialState
        left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in left:  # a killed search: its points are asked again (their runs resume)
            study.enqueue_trial(dict(t.params))
            optuna.trial.Trial(study, t._trial_id).set_user_attr("abandoned", "interrupted: its bracket runs again")
            study.tell(t.number, state=TrialState.FAIL)
        if self.rungs is None and not self._learn_rungs(limits):
            return
        if len(self.rungs) == 1:
            self.log(f"hyperband: no eval loss before step {self.obj.total_steps} is early enough for a rung (at "
                     f"most 1/{ETA} of the run), so every point is trained to the end: this is TPE with full runs, "
                     "not Hyperband; report the eval loss every few percent of the run")
        brackets = {int(t.user_attrs["bracket"]) for t in left if "bracket" in t.user_attrs}
        if brackets:  # its last bracket again, on the same points
            index = max(brackets)
            self.log(f"bracket {index} was left unfinished by an earlier process: running it again on its "
                     f"{len(left)} points (their runs resume from their checkpoints)")
            self.bracket(index, len(left), self.bracket_rungs(index)[1])
        while True:
            trials = _trials(study, optuna)
            index = len({t.bracket for t in _bracket_of(study, optuna)})
            n, rungs = self.bracket_rungs(index)
            evals, steps = limits.left(trials)
            n = int(min(n, evals))
            while n >= 1 and self.cost(n, rungs) > steps:
                n -= 1
            if n < 1:
                break
            self.bracket(index, n, rungs)

    def _learn_rungs(self, limits: _Limits) -> bool:
        """A command's rungs, at the steps its script reports: read from the trial that showed them,
        or, the first time, from the start point (the study's first point) trained to the end as a
        trial of its own. ``False``: the budget does not cover that run."""
        import optuna

        TrialState = optuna.trial.TrialState
        total = self.obj.total_steps
        shown = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if "reports" in t.user_attrs and "abandoned" not in t.user_attrs]
        if shown:
            reports = [int(x) for x in shown[0].user_attrs["reports"]]
        else:
            evals, steps = limits.left(_trials(self.study, optuna))
            if evals < 1 or steps < self.cost(1, [total]):
                return False
            self.log("hyperband: a --command script reports its eval loss where it chooses; training the start "
                     "point to the end first, to set the rungs at its reports")
            trial = self.study.ask(self.dists)
            part = self.obj.run([dict(trial.params)], None)[0]
            reports = sorted(part.curve)
            trial.set_user_attr("reports", reports)
            _tell_full_run(self.study, trial, part, self.worst, [], self.log, " (the start point, to the end)")
            self.obj.discard([dict(trial.params)])
        self.rungs = hyperband_rungs(total, reports)
        if len(self.rungs) > 1:
            self.log(f"hyperband: rungs at steps {', '.join(map(str, self.rungs))} (where the script reports)")
        return True

    def bracket(self, index: int, n: int, rungs: list[int]) -> None:
        import optuna

        asked = [self.study.ask(self.dists) for _ in range(n)]
        for t in asked:
            t.set_user_attr("bracket", index)
        alive, verdict = asked, {}
        for stop in rungs:
            points = [dict(t.params) for t in alive]
            ranked = []
            for t, part in zip(alive, self.obj.run(points, stop)):
                _record(t, part)
                at = part.curve.get(stop) if part.status == "ok" else None
                if at is None or not math.isfinite(at):
                    err = part.error or f"no finite eval loss at step {stop}"
                    t.set_user_attr("error", err)
                    if stop != rungs[-1]:
                        t.set_user_attr("stopped_at", stop)
                    verdict[t.number] = (t, "failed", stop)
                    continue
                t.report(at, stop)
                ranked.append((at, t.number, t))
            ranked.sort(key=lambda x: x[:2])
            keep = len(ranked) if stop == rungs[-1] else max(1, len(alive) // ETA)
            for at, _, t in ranked[keep:]:
                t.set_user_attr("stopped_at", stop)
                verdict[t.number] = (t, "pruned", stop)
            for at, _, t in ranked[:keep]:
                verdict[t.number] = (t, at, stop) if stop == rungs[-1] else verdict.get(t.number)
            alive = [t for _, _, t in ranked[:keep]]
            if stop != rungs[-1]:
                self.log(f"bracket {index}: {len(ranked)} of {len(points)} points at step {stop}; "
                         f"{len(alive)} continue")
            if not alive:
                break
        # Told at the end of the bracket: a killed search reruns the whole bracket (see run).
        TrialState = optuna.trial.TrialState
        told = [v for v in verdict.values() if v is not None]
        finals = [what for _, what, _ in told if isinstance(what, float)]
        for t, what, stop in told:
            if what == "failed":
                told = _told_failure(self.worst, self.study, finals, t.user_attrs.get("error", ""))
                self.study.tell(t, told)
                self.log(f"trial {t.number}: failed at step {stop}; told {told:.4f}")
            elif what == "pruned":
                self.study.tell(t, state=TrialState.PRUNED)
            else:
                self.study.tell(t, what)
                self.log(f"trial {t.number}: loss {fmt_loss(what)} (bracket {index})")
        self.obj.discard([dict(t.params) for t in asked])


@dataclass
class _BracketTrial:
    number: int
    bracket: int


def _bracket_of(study, optuna) -> list[_BracketTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [_BracketTrial(t.number, int(t.user_attrs["bracket"])) for t in study.get_trials(deepcopy=False, states=states)
            if "bracket" in t.user_attrs and "abandoned" not in t.user_attrs]


def _confirm(study, obj: Objective, trials: list[Trial], top: int, seeds: int, log) -> list[Confirmation]:
    """Train the ``top`` best points trained to the end again on ``seeds`` new seeds (kept in the
    study's ``confirmed`` attribute, so a rerun does not train them again)."""
    done = {int(k): v for k, v in study.user_attrs.get("confirmed", {}).items()}
    ok = sorted((t for t in trials if t.loss is not None and t.stopped_at is None), key=lambda t: (t.loss, t.number))
    chosen = ok[:top]
    todo = [t for t in chosen if t.number not in done]
    if todo:
        new = range(seeds, 2 * seeds)
        log(f"re-evaluating the {len(todo)} best point(s) on {seeds} new seed(s)")
        for t, part in zip(todo, obj.run([t.point for t in todo], None, new)):
            done[t.number] = {"loss": _final(part), "steps": part.steps}
        obj.discard([t.point for t in todo], new)
        study.set_user_attr("confirmed", {str(k): v for k, v in done.items()})

    def confirmation(t: Trial, candidate: bool) -> Confirmation:
        again = done[t.number]["loss"]
        mean = math.inf if again is None else (t.loss + again) / 2  # equal seed counts: the mean of both means
        return Confirmation(t.number, t.point, t.loss, again, mean, 2 * seeds, int(done[t.number]["steps"]), candidate)

    out = []
    for t in chosen:
        c = confirmation(t, True)
        log(f"trial {t.number}: loss {fmt_loss(t.loss)} on the search's seeds, {fmt_loss(c.confirm_loss or math.inf)} "
            f"on new ones; mean {fmt_loss(c.loss)}")
        out.append(c)
    # Re-evaluations of points no longer among the best (a rerun with a larger budget) still cost steps.
    chosen_numbers = {t.number for t in chosen}
    by_number = {t.number: t for t in trials}
    out += [confirmation(by_number[k], False) for k in done if k not in chosen_numbers and k in by_number]
    return out


def _trials(study, optuna) -> list[Trial]:
    """The counted trials (told ones, not abandoned), in order."""
    TrialState = optuna.trial.TrialState
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        ua = t.user_attrs
        if "abandoned" in ua:
            continue
        err = ua.get("error")
        stopped = ua.get("stopped_at")
        if t.state == TrialState.PRUNED:
            loss = t.intermediate_values.get(stopped) if stopped is not None else None
        else:
            loss = None if err else float(t.value)
        out.append(Trial(t.number, dict(t.params), loss, int(ua.get("compute_steps", 0)), err,
                         None if stopped is None else int(stopped), int(ua.get("rerun_steps", 0))))
    return sorted(out, key=lambda t: t.number)
