"""Optuna's own samplers over the same space as the local search: is algorithm 2 the right search?

    $ rlrs tune --model ladder-xs-moe --budget 30 --sampler tpe --out runs/tune-tpe
    $ rlrs tune --model ladder-xs-moe --budget 30 --sampler cmaes --out runs/tune-cmaes

or from Python::

    >>> from rlrs.tune import TuneSpec
    >>> from rlrs.tune.samplers import search_space
    >>> spec = TuneSpec.create("tiny-moe", steps=40, params=["plan.base_lr", "plan.router.start"])
    >>> {k: (round(lo, 6), round(hi, 6)) for k, (lo, hi) in search_space(spec).items()}
    {'plan.base_lr': (0.00012, 0.075), 'plan.router.start': (0.024, 15.0)}

**Space**: every searched parameter of the :class:`~rlrs.tune.TuneSpec` (the same ``--params``
as the local search) on a log scale from its start value / :data:`SPREAD` to start × ``SPREAD``:
two of algorithm 2's largest steps (×5) either way. The start point is the first trial, as it
is the local search's first evaluation, so every search begins from the same loss.

**Objective**: the same as the local search's (the final eval loss of a run, averaged over
``--seeds``), trained on the run engine (``OUT/runs``), ``workers`` points at a time (asked
together, told as they finish). A point that fails or diverges is told the loss of a model that
predicts every token uniformly (ln of the vocabulary): no better than not training, which is what
a diverged run is; TPE and CMA-ES need a number to steer away from that region.

**Persistence**: trials live in an Optuna study (``OUT/study.db``, study ``rlrs-<sampler>``). A
rerun of the same command resumes: finished trials are kept, a trial left running by a killed
process is marked failed and its point asked again (its runs resume from their checkpoints), and
the search goes on to ``budget`` complete trials. Unlike the local search's replay, the suggestions after a resume may differ from
an uninterrupted run's (the sampler's random state is not stored).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import config as _config
from .. import files
from ..config import ConfigError
from .driver import fmt_loss, write_best
from .study import storage_failures
from .objective import Objective, make_objective
from .spec import TuneSpec
from .study import other_searches

SAMPLERS = ("tpe", "cmaes")
"""Optuna samplers ``rlrs tune --sampler`` offers besides ``local`` (algorithm 2)."""

SPREAD = 25.0
"""Each parameter ranges over [start / SPREAD, start × SPREAD] on a log scale."""


@dataclass
class Trial:
    """One evaluation: its point, its loss (``None``: failed), and the training steps it cost."""

    number: int
    point: dict[str, float]
    loss: float | None
    steps: int
    error: str | None = None


@dataclass
class SamplerResult:
    sampler: str
    best: dict[str, float]
    best_loss: float
    start_loss: float | None
    trials: list[Trial]
    plan_path: Path
    search_path: Path

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    @property
    def compute_steps(self) -> int:
        return sum(t.steps for t in self.trials)


def search_space(spec: TuneSpec) -> dict[str, tuple[float, float]]:
    """``{param: (low, high)}``: start / SPREAD to start × SPREAD for every searched parameter."""
    space = {}
    for key, value in spec.start():
        if not value > 0:
            raise ConfigError(f"params: {key} starts at {value!r}; a log-scale sampler needs a value > 0 "
                              "(search it with the local search, or leave it out of --params)")
        space[key] = (value / SPREAD, value * SPREAD)
    return space


def _sampler(optuna, name: str, seed: int):
    if name == "tpe":
        # constant_liar spreads the points asked together (--workers) apart; Optuna >= 5 defaults
        # to it, older versions do not.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "cmaes":
        _config.require("cmaes", "tune")  # Optuna's CmaEsSampler imports it lazily
        # Its initial mean is the centre of the box, which on a log scale is the start point.
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"sampler: {name!r} is unknown; {_config.closest(name, ('local', *SAMPLERS))}")


def failure_loss(spec: TuneSpec) -> float:
    """What a failed point is told: the loss of predicting every token uniformly, ln(vocabulary)."""
    cfg = spec.config
    if cfg is None:
        raise ConfigError("sampler: --command runs have no known vocabulary; use the local search (--sampler local)")
    return math.log(cfg.model.vocab_size)


def sampler_search(
    spec: TuneSpec,
    out: str | Path,
    budget: int,
    sampler: str = "tpe",
    *,
    workers: int = 1,
    objective: Objective | None = None,
    fail_loss: float | None = None,
    log: Callable[[str], None] = print,
) -> SamplerResult:
    """Spend ``budget`` evaluations of ``spec``'s objective on Optuna's ``sampler`` (``"tpe"`` or
    ``"cmaes"``); write ``tuned.toml`` (and ``tuned_config.json``) for the best point and
    ``search.json`` with every trial. ``fail_loss`` is told for failed points (default:
    :func:`failure_loss`)."""
    optuna = _config.require("optuna", "tune")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget: at least 1 evaluation, got {budget!r}")
    if spec.prune is not None:
        raise ConfigError("--prune: the pruning rungs belong to the local search; drop --prune with --sampler")
    if spec.min_improvement:
        raise ConfigError("--min-improvement: a move rule of the local search; drop it with --sampler")
    out = Path(out)
    files.make_dir(out, "--out")
    space = search_space(spec)
    start = {k: v for k, v in spec.start()}
    dists = {k: optuna.distributions.FloatDistribution(lo, hi, log=True) for k, (lo, hi) in space.items()}
    worst = failure_loss(spec) if fail_loss is None else fail_loss
    name = f"rlrs-{sampler}"
    others = other_searches(out, name)
    if others:
        raise ConfigError(f"{out}: holds another search ({', '.join(others)}); give each search its own --out "
                          "(their tuned.toml and search.json would overwrite each other)")
    url = f"sqlite:///{out / 'study.db'}"
    with storage_failures(url):  # a full disk under the study: a clear message, finished trials kept
        study = optuna.create_study(storage=url, study_name=name, load_if_exists=True,
                                    sampler=_sampler(optuna, sampler, spec.search_seed), direction="minimize")
        if "spec" in study.user_attrs:
            diff = spec.differences(study.user_attrs["spec"])
            if diff:
                raise ConfigError(f"{out}: its study holds another search (differs in {', '.join(diff[:4])}); "
                                  "use another --out")
        else:
            study.enqueue_trial(start, skip_if_exists=True)  # first: a kill right after still starts there
            study.set_user_attr("spec", json.loads(json.dumps(spec.to_dict())))
        obj = objective or make_objective(spec, out, workers)
        try:
            TrialState = optuna.trial.TrialState
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # Left by a killed process: ask its point again (its runs resume from their checkpoints).
                study.enqueue_trial(dict(t.params))
                study.tell(t.number, state=TrialState.FAIL)
                log(f"trial {t.number} was left running by an earlier process: evaluating its point again")
            while True:
                left = budget - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if left <= 0:
                    break
                _evaluate(study, obj, [study.ask(dists) for _ in range(min(workers, left))], worst, log)
        finally:
            if objective is None:
                obj.close()
        trials = _trials(study, optuna)[:budget]
    ok = [t for t in trials if t.loss is not None]
    if not ok:
        raise ConfigError(f"sampler {sampler}: every one of {len(trials)} trials failed (first: {trials[0].error}); "
                          "check the start point with `rlrs train`")
    best = min(ok, key=lambda t: (t.loss, t.number))
    write_best(spec, out, best.point)
    res = SamplerResult(sampler, best.point, best.loss, trials[0].loss, trials, out / "tuned.toml", out / "search.json")
    doc = {"sampler": sampler, "space": space, "spec": spec.to_dict(), "start": start, "start_loss": res.start_loss,
           "best": best.point, "best_loss": best.loss, "fail_loss": worst,
           "compute": {"steps": res.compute_steps}, "trials": [t.__dict__ for t in trials]}
    files.write_json(res.search_path, doc, indent=2)
    return res


def _evaluate(study, obj: Objective, asked: list, worst: float, log) -> None:
    points = [dict(t.params) for t in asked]
    for trial, part in zip(asked, obj.run(points, None)):
        final = part.curve[max(part.curve)] if part.status == "ok" and part.curve else None
        trial.set_user_attr("compute_steps", part.steps)
        if final is None or not math.isfinite(final):
            err = part.error or "no eval loss"
            trial.set_user_attr("error", err)
            study.tell(trial, worst)
            log(f"trial {trial.number}: failed ({err.splitlines()[0]}); told {worst:.4f}")
        else:
            study.tell(trial, final)
            log(f"trial {trial.number}: loss {fmt_loss(final)}")
    obj.discard(points)


def _trials(study, optuna) -> list[Trial]:
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        err = t.user_attrs.get("error")
        out.append(Trial(t.number, dict(t.params), None if err else float(t.value), int(t.user_attrs.get("compute_steps", 0)), err))
    return sorted(out, key=lambda t: t.number)
