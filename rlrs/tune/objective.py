"""What a point costs and returns: training runs on the engine, or a synthetic loss for tests."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..config import ConfigError
from ..engine import Job, Pool, PresetRun, run_dir
from ..executors import current
from ..train import eval_steps
from .spec import TuneSpec, load_function


@dataclass
class Partial:
    """A point trained up to some step: its mean eval curve so far (``{step: loss}``), the
    training steps and tokens spent on it (summed over seeds; a command's steps count every step
    its script ran, restarts included, and its tokens are ``None`` unless it reports them) and, if
    it failed, why. ``rerun_steps`` of the steps ran again; ``restarted`` names each run whose
    script started over from step 0 when it was continued (``"run-dir at 4, 10"``)."""

    status: str  # "ok" | "failed"
    curve: dict[int, float] = field(default_factory=dict)
    steps: int = 0
    tokens: int | None = None  # None: not known (a command that reports none; nothing ran)
    error: str | None = None
    rerun_steps: int = 0
    restarted: list[str] = field(default_factory=list)


class Objective(Protocol):
    """Trains points: ``run(points, stop_at)`` continues each point to ``stop_at`` steps (a later
    call with a larger ``stop_at`` resumes it; ``None``: to the end). ``total_steps`` is the full
    length (``None`` for a command of unknown length) and ``eval_at`` the steps with an eval loss.
    ``seeds`` (seed indices; default ``range(spec.seeds)``) trains other seeds of the same points: a
    sampler's final re-evaluation. ``discard(points, seeds)`` is called once their trials are
    recorded: nothing will resume them."""

    total_steps: int | None
    eval_at: list[int]

    def run(self, points: list[dict[str, float]], stop_at: int | None,
            seeds: range | None = None) -> list[Partial]: ...

    def discard(self, points: list[dict[str, float]], seeds: range | None = None) -> None: ...

    def close(self) -> None: ...


class SyntheticObjective:
    """A loss function instead of training, for tests and for trying the search machinery:
    ``fn(point, progress)`` is the eval loss after ``progress`` (0 to 1) of training; raising or
    returning NaN fails the point. Compute is counted in steps as if it trained (no tokens): one
    run per point, or one per seed where ``seeds`` are named (the loss is the same for every seed:
    a function has no seed noise)."""

    def __init__(self, fn: Callable[[dict[str, float], float], float], total_steps: int, eval_interval: float = 0.01):
        self.fn = fn
        self.total_steps = total_steps
        self.eval_at = eval_steps(total_steps, eval_interval)

    def run(self, points: list[dict[str, float]], stop_at: int | None,
            seeds: range | None = None) -> list[Partial]:
        stop_at = self.total_steps if stop_at is None else stop_at
        runs = 1 if seeds is None else len(seeds)
        out = []
        for p in points:
            try:
                curve = {s: float(self.fn(dict(p), s / self.total_steps)) for s in self.eval_at if s <= stop_at}
            except Exception as err:  # noqa: BLE001 - a failed point is a result
                out.append(Partial("failed", steps=stop_at * runs, error=f"{type(err).__name__}: {err}"))
                continue
            bad = [s for s, v in curve.items() if not math.isfinite(v)]
            if bad:
                out.append(Partial("failed", steps=stop_at * runs,
                                   error=f"eval loss is {curve[bad[0]]} at step {bad[0]}"))
            else:
                out.append(Partial("ok", curve, steps=stop_at * runs))
        return out

    def discard(self, points: list[dict[str, float]], seeds: range | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingObjective:
    """Trains every seed of every point on the run engine (:mod:`rlrs.engine`), ``workers`` at once.

    Run directories are content-addressed under ``runs_dir``, so a finished run is reused and an
    interrupted one resumes. Once a point's trial is recorded the checkpoints of its preset runs
    are deleted (a 300-trial search would otherwise keep hundreds of optimizer states);
    ``result.json``, ``metrics.jsonl`` and ``summary.json`` stay.
    """

    def __init__(self, spec: TuneSpec, runs_dir: str | Path, workers: int = 1):
        self.spec = spec
        self.runs_dir = Path(runs_dir)
        self.pool = current() or Pool(max(1, workers))  # the command's executor (rlrs.executors.using), if any
        self.total_steps = spec.base.total_steps
        cfg = spec.config
        self.eval_at = eval_steps(self.total_steps, cfg.train.eval_interval) if cfg is not None else []

    def run(self, points: list[dict[str, float]], stop_at: int | None,
            seeds: range | None = None) -> list[Partial]:
        seeds = range(self.spec.seeds) if seeds is None else seeds
        jobs: list[tuple[int, Job]] = []
        errors: dict[int, str] = {}
        stop = None if stop_at is None or stop_at == self.total_steps else stop_at
        for i, p in enumerate(points):
            try:
                specs = [self.spec.run_spec(p, s) for s in seeds]
            except ConfigError as err:
                errors[i] = f"config: {err}"
                continue
            jobs.extend((i, Job(s, run_dir(self.runs_dir, s), stop)) for s in specs)
        results = self.pool.run([j for _, j in jobs])
        by_point: dict[int, list] = {}
        for (i, job), r in zip(jobs, results):
            by_point.setdefault(i, []).append((job.spec, r))
        return [self._partial(by_point.get(i, []), errors.get(i), stop_at) for i in range(len(points))]

    def discard(self, points: list[dict[str, float]], seeds: range | None = None) -> None:
        for p in points:
            for s in range(self.spec.seeds) if seeds is None else seeds:
                try:
                    spec = self.spec.run_spec(p, s)
                except ConfigError:
                    continue  # it never trained
                if isinstance(spec, PresetRun):
                    shutil.rmtree(run_dir(self.runs_dir, spec) / "checkpoints", ignore_errors=True)

    def _partial(self, runs, error: str | None, stop_at: int | None) -> Partial:
        if error is not None:
            return Partial("failed", error=error)
        # A command's runs count what their script ran over every attempt (a script that does not
        # resume starts over when a rung's stop is continued); a preset run resumes its checkpoint.
        steps = sum(r.steps if r.ran_steps is None else r.ran_steps for _, r in runs)
        known = [r.tokens if r.ran_steps is None else r.ran_tokens for _, r in runs]
        tokens = sum(t for t in known if t is not None) if any(t is not None for t in known) else None
        extra = {"rerun_steps": sum(r.rerun_steps for _, r in runs),
                 "restarted": [f"{r.out.name} at {', '.join(map(str, r.restarted_at))}" for _, r in runs
                               if r.restarted_at]}
        bad = [r for _, r in runs if r.status not in ("finished", "stopped")]
        if bad:
            return Partial("failed", steps=steps, tokens=tokens, error=f"{bad[0].status}: {bad[0].error}", **extra)
        curves = [{s: v for s, v in zip(r.eval_steps, r.eval_loss) if stop_at is None or s <= stop_at} for _, r in runs]
        common = sorted(set.intersection(*(set(c) for c in curves)))
        curve = {s: sum(c[s] for c in curves) / len(curves) for s in common}
        return Partial("ok", curve, steps, tokens, **extra)

    def close(self) -> None:
        self.pool.close()


def make_objective(spec: TuneSpec, out: str | Path, workers: int = 1):
    """The objective ``spec`` names: training (default) or its synthetic ``objective`` function."""
    if spec.objective is not None:
        cfg = spec.config
        return SyntheticObjective(load_function(spec.objective), spec.base.total_steps,
                                  cfg.train.eval_interval if cfg is not None else 0.01)
    return TrainingObjective(spec, Path(out) / "runs", workers)
