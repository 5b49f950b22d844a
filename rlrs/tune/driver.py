"""The search driver: algorithm 2 over the study's trials, outputs (tuned.toml, search.json)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import config as _config
from .. import files
from ..config import ConfigError
from ..engine import RESUME_FIX, CommandRun
from ..search import Result, SearchResult, Step, canonical, local_search, point_key
from .objective import Objective, make_objective
from .spec import TuneSpec
from .study import StudyOptions, _redact, _Study, _trial_result, other_searches, storage_url

# --- the driver -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyName:
    """Where the search's trials live: the storage (its password redacted) and the study's name."""

    storage: str
    name: str


@dataclass(frozen=True)
class Budget:
    """The study's budgets: distinct points evaluated and training steps in all (``None``: no limit)."""

    evaluations: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class Compute:
    """What the search's trials cost: training steps (a command's restarts included), tokens
    (``None``: a command that reports none), the steps run again, and the counted trials by state
    plus ``abandoned``."""

    steps: int
    tokens: int | None = None
    rerun_steps: int = 0
    trials: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class SearchRecord:
    """What ``search.json`` holds: ``rlrs.config.to_dict`` of it, and :func:`load_search`
    (``rlrs.config.from_dict(SearchRecord, json.load(f))``) reads it back, files of earlier versions
    included. Losses are ``None`` where the point failed (strict JSON has no inf).

    Two parts stay plain JSON, for reasons of layout: ``spec`` is :meth:`TuneSpec.to_dict` (its
    ``base`` is a preset's run config or a command, two layouts under two keys;
    ``TuneSpec.from_dict(record.spec)`` reads it), and each of ``steps`` is
    :meth:`rlrs.search.Step.to_dict` with each candidate's ``compute_steps`` (its key ``pass`` is a
    Python keyword, so no dataclass field can hold it)."""

    study: StudyName
    spec: dict[str, Any]
    start: dict[str, float]
    start_loss: float | None
    best: dict[str, float]
    best_loss: float | None
    stopped: str  # "running" | "converged" | "budget"
    budget: Budget
    compute: Compute
    notes: tuple[str, ...] = ()  # what to fix
    steps: tuple[dict[str, Any], ...] = ()


def load_search(path: str | Path) -> SearchRecord:
    """The :class:`SearchRecord` in a ``rlrs tune`` ``search.json`` (or the directory holding it)."""
    def local_only(data: dict[str, Any]) -> dict[str, Any]:
        if "sampler" in data:
            raise ConfigError(f"the record of a sampler search (`rlrs tune --sampler {data['sampler']}`), whose "
                              "layout is its trials; load_search reads the local search's (the default --sampler local)")
        return data

    return _config.load_typed(SearchRecord, path, "search.json", "rlrs tune", "search", local_only)


def _loss(x: float | None) -> float:
    return math.inf if x is None else x


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found: ``record`` is what it wrote to ``search.json``; the rest is what
    only this process has (the search spec as an object, the trajectory with every point's result,
    how many points it used). The numbers are ``record``'s, read through the properties."""

    record: SearchRecord
    spec: TuneSpec
    out: Path
    evaluations: int  # distinct points the search used (cached ones included)
    search: SearchResult

    @property
    def best(self) -> dict[str, float]:
        return self.record.best

    @property
    def best_loss(self) -> float:
        """The best point's loss (inf: it failed)."""
        return _loss(self.record.best_loss)

    @property
    def start(self) -> dict[str, float]:
        return self.record.start

    @property
    def start_loss(self) -> float:
        return _loss(self.record.start_loss)

    @property
    def stopped(self) -> str:
        return self.record.stopped

    @property
    def compute_steps(self) -> int:
        """Every training step run, a command's restarts included."""
        return self.record.compute.steps

    @property
    def compute_tokens(self) -> int | None:
        return self.record.compute.tokens

    @property
    def rerun_steps(self) -> int:
        """Of compute_steps, steps run again (a command that restarted from step 0)."""
        return self.record.compute.rerun_steps

    @property
    def trials(self) -> dict[str, int]:
        """Counted trials by state, plus ``abandoned``."""
        return self.record.compute.trials

    @property
    def notes(self) -> tuple[str, ...]:
        return self.record.notes

    @property
    def plan(self):
        """The tuned plan (an :class:`rlrs.plan.Plan`): the start plan with the best point's ``plan.*`` keys."""
        return tuned_plan(self.spec, self.best)

    @property
    def plan_path(self) -> Path:
        return self.out / "tuned.toml"

    @property
    def config_path(self) -> Path | None:
        """``tuned_config.json``, where a searched non-plan setting moved from the start point (:func:`write_best`)."""
        return self.out / "tuned_config.json" if moved_settings(self.spec, self.best) else None

    @property
    def search_path(self) -> Path:
        return self.out / "search.json"


def tune(
    spec: TuneSpec,
    out: str | Path,
    budget: int | None,
    *,
    budget_steps: int | None = None,
    study: StudyOptions = StudyOptions(),
    workers: int = 1,
    objective: Objective | None = None,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or resume, or join) the search ``spec`` with trials in the study ``study`` names
    (default: ``OUT/study.db``).

    ``budget``: the most distinct points evaluated, across every process sharing the study; it is
    stored in the study (``None``: keep the study's, as a worker does). ``budget_steps``: the most
    training steps in all (``None``: no limit), stored with ``budget``; a point is started only if
    a whole run of it (every seed, to the end) still fits, so the limit holds with ``--prune`` and
    across workers (a pruned point's unspent steps free room for later ones). ``objective`` replaces the
    one ``spec`` names (tests inject synthetic ones); ``workers`` trains that many runs at once.
    """
    if budget is not None and budget < 1:
        raise ConfigError(f"budget: at least 1 evaluation, got {budget}")
    full = None if spec.base.total_steps is None else spec.base.total_steps * spec.seeds
    if budget_steps is not None and (full is None or budget_steps < full):
        raise ConfigError(f"budget_steps: {budget_steps} steps do not cover one point trained to the end ({full}); "
                          f"give at least --budget-steps {full}" if full is not None else
                          "budget_steps: a --command run needs --steps N to count its steps against --budget-steps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if study.storage is None:
        others = [n for n in other_searches(out, study.name) if n.startswith("rlrs-")]
        if others:
            raise ConfigError(f"{out}: holds another search ({', '.join(others)}); give each search its own --out "
                              "(their tuned.toml and search.json would overwrite each other)")
    trials = _Study(storage_url(out, study.storage), study.name, study.heartbeat_s, study.stale_s)
    try:
        _adopt(trials, spec, budget, log, budget_steps)
        obj = objective or make_objective(spec, out, workers)
        try:
            return _Tuner(spec, out, trials, obj, workers, study.poll_s, log).run()
        finally:
            if objective is None:
                obj.close()
    finally:
        trials.close()


def join(
    out: str | Path,
    *,
    study: StudyOptions = StudyOptions(),
    workers: int = 1,
    objective: Objective | None = None,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    cwd: str | Path = ".",
    trust_command: bool = False,
) -> TuneResult:
    """Work on the search already in the study (``rlrs tune --worker``): its settings and budget
    come from the study; runs and outputs go to ``out``.

    A study of a ``--command`` search holds the command its workers run, so whoever can write to
    the study could run commands on every worker: a worker runs it only if ``command`` (run in
    ``cwd``) is exactly the study's, or with ``trust_command`` (``--trust-study-command``)."""
    out = Path(out)
    url = storage_url(out, study.storage)
    if study.storage is None and not (out / "study.db").exists():
        raise ConfigError(f"--worker: {out / 'study.db'} does not exist; start the search without --worker, or give --storage")
    trials = _Study(url, study.name, study.heartbeat_s, study.stale_s, create=False)
    try:
        attrs = trials.attrs()
    finally:
        trials.close()
    if "spec" not in attrs:
        raise ConfigError(
            f"--worker: study {study.name!r} in {_redact(url)} holds no search yet; start it with "
            "`rlrs tune --model ... --budget N` (without --worker) first"
        )
    spec = TuneSpec.from_dict(attrs["spec"])
    _check_command(spec, command, cwd, trust_command, f"study {study.name!r} in {_redact(url)}", log)
    return tune(spec, out, None, study=dataclasses.replace(study, storage=url), workers=workers, objective=objective,
                log=log)


def _check_command(spec: TuneSpec, command: str | None, cwd: str | Path, trust: bool, where: str, log) -> None:
    """Refuse to run a study's command that this worker was not given, nor told to trust."""
    import shlex

    base = spec.base
    if not isinstance(base, CommandRun):
        if command is not None:
            raise ConfigError(f"--command: {where} tunes the model size {spec.name!r}, not a command; join it "
                              "without --command")
        return
    stored_cwd = str(Path(base.cwd).resolve())
    if command == base.command and str(Path(cwd).resolve()) == stored_cwd:
        return
    if trust and command is None:
        if log:
            log(f"--trust-study-command: this worker runs the study's command `{base.command}` in {stored_cwd}")
        return
    given = ("" if command is None else
             f"; this worker was given `{command}` in {Path(cwd).resolve()}")
    raise ConfigError(
        f"--worker: {where} runs this command on every worker that joins it:\n    {base.command}\n  in {stored_cwd}"
        f"{given}. Whoever can write to the study chooses that command: run it only if you trust them. "
        f"To run it, give the same command: --command {shlex.quote(base.command)} --cwd {shlex.quote(stored_cwd)}; "
        "or pass --trust-study-command (without --command)"
    )


def _adopt(study: _Study, spec: TuneSpec, budget: int | None, log, budget_steps: int | None = None) -> None:
    """Store the spec and budgets in a new study; check them against an existing one. A call
    with ``budget`` (not a worker) sets the step budget too (``None``: no limit)."""
    attrs = study.attrs()
    if "spec" not in attrs:
        study.set_attr("spec", json.loads(json.dumps(spec.to_dict())))
        attrs = study.attrs()  # two drivers starting at once: the last writer wins, the other stops here
    diff = spec.differences(attrs["spec"])
    if diff:
        raise ConfigError(
            f"study {study.name!r} in {_redact(study.url)} holds a search with other settings (differs in: "
            f"{', '.join(diff)}); rerun with the same arguments, join it with --worker, or use another "
            "--out, --storage or --study-name"
        )
    if budget is not None and attrs.get("budget") != budget:
        if "budget" in attrs and log:
            log(f"budget: {attrs['budget']} -> {budget}")
        study.set_attr("budget", budget)
    elif "budget" not in attrs:
        raise ConfigError("budget: the study has none yet; give --budget N")
    if budget is not None and attrs.get("budget_steps") != budget_steps:
        study.set_attr("budget_steps", budget_steps)


class _Tuner:
    def __init__(self, spec: TuneSpec, out: Path, study: _Study, objective, workers: int, poll_s: float, log):
        self.spec = spec
        self.out = out
        self.study = study
        self.objective = objective
        self.slots = max(1, math.ceil(workers / spec.seeds))  # points trained at once by this process
        self.poll_s = poll_s
        self.log = log or (lambda _msg: None)
        self.done: dict[str, Any] = {}  # key -> finished trial (counted)
        self.incumbent: str | None = None
        self.best_written: str | None = None
        self.steps: list[dict[str, Any]] = []
        self.start_point = {k: canonical(v) for k, v in spec.start()}
        self.start_loss = math.inf
        self.rng = random.Random(study.owner["id"])

    # the search's objective ------------------------------------------------------------------------
    def evaluate_many(self, points: list[dict[str, float]]) -> list[Result | None]:
        keys = [point_key(p) for p in points]
        by_key = dict(zip(keys, points))
        results: dict[str, Result | None] = {}
        while True:
            scan = self.study.scan()
            self.done.update(scan.done)
            for t in scan.invalid:  # a claim of ours that lost and was not taken back yet
                if t._trial_id in self.study.mine:
                    self.study.abandon(t, "lost its claim")
            for k in keys:
                if k in scan.done:
                    results[k] = _trial_result(scan.done[k])
            pending = [k for k in keys if k not in results]
            if not pending:
                break
            free = [k for k in pending if k not in scan.running]
            self.rng.shuffle(free)  # workers that start a step together then rarely claim the same point
            room = min(scan.budget - scan.count, self._step_room(scan))
            if free and room > 0:
                won = self.study.claim([(by_key[k], k) for k in free[: min(self.slots, room)]])
                if won:
                    self._evaluate(won)
                    continue
            elif not any(k in scan.running for k in pending):
                for k in pending:  # the global budget is spent and nobody is on these
                    results[k] = None
                break
            time.sleep(self.poll_s)
        return [results[k] for k in keys]

    def _step_room(self, scan) -> float:
        """How many more points a step budget lets start: every claim, running or new, is counted
        as a whole run of every seed; finished trials at what they cost."""
        if scan.budget_steps is None:
            return math.inf
        full = self.objective.total_steps * self.spec.seeds
        spent = sum(int(t.user_attrs.get("compute_steps", 0)) for t in scan.done.values())
        return (scan.budget_steps - spent - full * len(scan.running)) // full

    def _evaluate(self, claims: list[Any]) -> None:
        total = self.objective.total_steps
        ref = self._reference()
        stops = [*self._rungs(ref), total]
        alive = list(claims)
        for stop in stops:
            partials = self.objective.run([dict(t.user_attrs["point"]) for t in alive], stop)
            survivors = []
            for t, p in zip(alive, partials):
                attrs = {"compute_steps": p.steps, "tokens": p.tokens}
                if p.rerun_steps or p.restarted:
                    attrs.update(rerun_steps=p.rerun_steps, restarted=p.restarted)
                # The loss at the rung; at the end, the last one reported (a command's length may be unknown).
                at = p.curve.get(stop) if stop is not None else (p.curve[max(p.curve)] if p.curve else None)
                if p.status != "ok":
                    self._finish(t, "FAIL", None, {**attrs, "error": p.error or "failed"}, {})
                elif stop == total:
                    if at is None or not math.isfinite(at):
                        why = "no eval loss at the last step" if at is None else f"final eval loss is {at}"
                        self._finish(t, "FAIL", None, {**attrs, "error": why}, {})
                    else:
                        curve = [[s, v] for s, v in sorted(p.curve.items())]
                        self._finish(t, "COMPLETE", at, {**attrs, "curve": curve}, {})
                elif at is not None and ref is not None and stop in ref and at > ref[stop] + self._margin() * abs(ref[stop]):
                    note = (f"stopped at step {stop}/{total}: eval loss {at:.4f} > {ref[stop]:.4f} of the "
                            f"current best (+{self._margin():.0%})")
                    self._finish(t, "PRUNED", at, {**attrs, "note": note, "pruned_at": stop}, {stop: at})
                else:
                    survivors.append(t)
            alive = survivors
            if not alive:
                break

    def _finish(self, trial, state, value, attrs, curve) -> None:
        if self.study.finish(trial, state, value, attrs, curve):
            self.objective.discard([dict(trial.user_attrs["point"])])  # after the record, never before
        else:
            self.log(f"trial {trial.number} was taken over by another process meanwhile; its result is dropped")

    def _margin(self) -> float:
        return self.spec.prune.margin if self.spec.prune else 0.0

    def _reference(self) -> dict[int, float] | None:
        if self.spec.prune is None or self.incumbent is None or self.incumbent not in self.done:
            return None
        curve = self.done[self.incumbent].user_attrs.get("curve")
        return {int(s): float(v) for s, v in curve} if curve else None

    def _rungs(self, ref) -> list[int]:
        if ref is None:
            return []
        total = self.objective.total_steps
        rungs = set()
        # A command's eval points are its own: the incumbent's curve shows where it reports.
        points = self.objective.eval_at or sorted(ref)
        for frac in self.spec.prune.rungs:
            below = [s for s in points if 0 < s <= frac * total]
            if below and below[-1] < total:
                rungs.add(below[-1])
        return sorted(rungs)

    # progress and outputs --------------------------------------------------------------------------
    def on_start(self, point: dict[str, float], result: Result) -> None:
        self.incumbent = point_key(point)
        self.start_loss = result.loss
        self.log(f"start: loss {fmt_loss(result.loss)}" + (f" ({result.status}: {result.note})" if result.status != "ok" else ""))
        self._write_best(point, result.loss)
        self._write_search(point, result.loss, "running")

    def on_step(self, step: Step, current: dict[str, float], loss: float) -> None:
        self.incumbent = point_key(current)
        rec = step.to_dict()
        for c in rec["candidates"]:
            t = self.done.get(point_key({**current, step.param: c["value"]}))
            c["compute_steps"] = t.user_attrs.get("compute_steps", 0) if t is not None else 0
        self.steps.append(rec)
        cands = step.candidates[1:]
        counts = {s: sum(c.result.status == s for c in cands) for s in ("failed", "pruned")}
        extra = "".join(f", {n} {s}" for s, n in counts.items() if n)
        new = sum(not c.cached for c in cands)
        arrow = f"{step.before:.4g} -> {step.after:.4g}" if step.changed else f"{step.before:.4g} (kept)"
        self.log(f"pass {step.pass_index} step {step.index + 1}: {step.param} {arrow}  loss {fmt_loss(loss)}  "
                 f"[{new} new, {len(cands) - new} cached{extra}]")
        self._write_best(current, loss)
        self._write_search(current, loss, "running")

    def _write_best(self, point: dict[str, float], loss: float) -> None:
        key = point_key(point)
        if key == self.best_written:
            return
        write_best(self.spec, self.out, point)
        self.best_written = key

    def _compute(self) -> tuple[int, int | None, dict[str, int]]:
        steps = sum(int(t.user_attrs.get("compute_steps", 0)) for t in self.done.values())
        known = [t.user_attrs["tokens"] for t in self.done.values() if t.user_attrs.get("tokens") is not None]
        tokens = sum(int(x) for x in known) if known else None  # a command that reports no tokens: unknown, not 0
        states: dict[str, int] = {}
        for t in self.done.values():
            states[t.state.name] = states.get(t.state.name, 0) + 1
        return steps, tokens, states

    def _restarts(self) -> tuple[int, list[str]]:
        """Steps run again because the script started over from step 0 after a stop, and a note
        naming its runs and the fix (none when every run resumed)."""
        rerun = sum(int(t.user_attrs.get("rerun_steps", 0)) for t in self.done.values())
        runs = [r for t in self.done.values() for r in t.user_attrs.get("restarted") or []]
        if not runs:
            return rerun, []
        shown = "; ".join(runs[:4]) + (f"; and {len(runs) - 4} more" if len(runs) > 4 else "")
        steps, _, _ = self._compute()
        note = (f"the script restarted from step 0 when rlrs continued a run it had stopped (at a --prune rung, or "
                f"by an interrupted search; {len(runs)} run{'s' * (len(runs) > 1)}: {shown}): it does not resume, so "
                f"{rerun} of the {steps} training steps ran again (compute counts them); {RESUME_FIX}")
        return rerun, [note]

    def _write_search(self, point, loss, stopped: str, abandoned: int = 0) -> SearchRecord:
        steps, tokens, states = self._compute()
        rerun, notes = self._restarts()
        attrs = self.study.attrs()
        record = SearchRecord(
            study=StudyName(_redact(self.study.url), self.study.name),
            spec=self.spec.to_dict(),
            start=self.start_point,
            start_loss=_json(self.start_loss),
            best=point,
            best_loss=_json(loss),
            stopped=stopped,
            budget=Budget(attrs.get("budget"), attrs.get("budget_steps")),
            compute=Compute(steps, tokens, rerun, {**states, "abandoned": abandoned}),
            notes=tuple(notes),
            steps=tuple(self.steps),
        )
        files.write_json(self.out / "search.json", _config.to_dict(record), indent=2)
        return record

    def run(self) -> TuneResult:
        scan = self.study.scan()
        self.done.update(scan.done)
        cache = {k: _trial_result(t) for k, t in scan.done.items()}
        self.log(f"study {self.study.name!r} in {_redact(self.study.url)}: {len(cache)} finished trials, "
                 f"budget {scan.budget}")
        r = local_search(self.spec.start(), self.evaluate_many, scan.budget, self.spec.search_seed,
                         self.spec.factors, cache, on_step=self.on_step, on_start=self.on_start,
                         min_improvement=self.spec.min_improvement)
        final = self.study.scan()
        self.done.update(final.done)
        self._write_best(r.best, r.best_loss)
        record = self._write_search(r.best, r.best_loss, r.stopped, final.abandoned)
        return TuneResult(record, self.spec, self.out, r.evaluations, r)


def tuned_plan(spec: TuneSpec, point: Mapping[str, float]):
    """The start plan with ``point``'s ``plan.*`` keys (an :class:`rlrs.plan.Plan`)."""
    return _config.replace(spec.base.plan, {k[len("plan."):]: v for k, v in point.items() if k.startswith("plan.")})


def moved_settings(spec: TuneSpec, point: Mapping[str, float]) -> dict[str, float]:
    """The searched non-plan settings of ``point`` that differ from the start point."""
    start = {k: canonical(v) for k, v in spec.start()}
    return {k: v for k, v in point.items() if not k.startswith("plan.") and canonical(v) != start[k]}


def write_best(spec: TuneSpec, out: Path, point: dict[str, float]) -> None:
    """Write ``out/tuned.toml`` (the plan keys of ``point``) and ``out/tuned_config.json`` (the
    searched non-plan settings that moved from the start point; removed when none did)."""
    tuned_plan(spec, point).save(out / "tuned.toml")
    moved = moved_settings(spec, point)
    cfg_path = out / "tuned_config.json"
    if moved:
        nested: dict[str, Any] = {}
        for k, v in moved.items():
            node = nested
            *parents, leaf = k.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = v
        files.write_json(cfg_path, nested, indent=2)
    else:
        cfg_path.unlink(missing_ok=True)


def fmt_loss(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "inf (failed)"


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None
