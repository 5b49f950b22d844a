"""``rlrs tune``: the paper's local search (appendix A.1) over a plan, trials kept in an Optuna study.

    $ rlrs tune --preset micro-moe --budget 60 --out runs/tune             # trials in runs/tune/study.db
    $ rlrs tune --worker --out runs/tune                                   # a second process joins it
    $ rlrs tune --preset micro-moe --budget 60 --out runs/tune --prune     # stop hopeless trials early
    $ rlrs train --preset micro-moe --plan runs/tune/tuned.toml --out runs/best

or from Python::

    >>> from rlrs.tune import TuneSpec, tune
    >>> spec = TuneSpec.create("tiny-moe", steps=40)
    >>> spec.params[:3]
    ('plan.base_lr', 'plan.embedding.start', 'plan.embedding.end')
    >>> result = tune(spec, "runs/tune", budget=20)     # doctest: +SKIP
    >>> result.best_loss, result.plan_path              # doctest: +SKIP

**What is searched** (:func:`default_params`): η_base, λ_start and λ_end of every component the
model has (not ``other``), weight decay and ``model.init_scale``, each multiplied by the factors
{1/5, 2/3, 1, 3/2, 5} (:mod:`rlrs.search`). The objective is the final eval loss of a short run
(``--steps``, default 300), averaged over ``--seeds`` runs (seed ``i`` sets ``train.seed`` and
``train.data_seed`` to their configured value + ``i``). A run that diverges or crashes is the worst
result: its trial is recorded as FAIL with the error and the search goes on.

**Outputs** in ``--out``: ``tuned.toml`` (the best plan so far, rewritten atomically after every
improvement: a plan file every ``--plan`` takes), ``tuned_config.json`` (only when a searched model
or train setting such as ``model.init_scale`` moved: it is not part of a plan; reuse it with
``--config tuned_config.json`` or ``--set model.init_scale=...``), ``search.json`` (every step's
candidates, losses, choice and compute), ``runs/`` (one content-addressed run directory per
training run; its checkpoints are deleted once its trial is recorded) and, by default,
``study.db``.

**Persistence.** Every evaluated point is one trial of an Optuna study (``--storage``, default
``sqlite:///OUT/study.db``; any Optuna RDB URL such as ``postgresql://user@host/db`` or
``mysql+pymysql://...``, or ``journal:///path/to/file.log`` for Optuna's journal file storage). A
trial holds the point (``params`` and the user attr ``key``), its loss (value), the mean eval curve,
and the compute it used; FAIL trials hold ``error``, PRUNED trials ``note``. Rerunning the same
command replays the deterministic search: finished trials are read back, not rerun, so a killed
search resumes exactly where it stopped, and training runs cut short resume from their checkpoint.
A larger ``--budget`` on a rerun extends a finished search.

**Workers.** ``rlrs tune --worker --out DIR [--storage URL]`` joins the search in that study: it
reads the settings from the study, so every process runs the same deterministic search and they
agree on every step. For each step a process *claims* candidates nobody has: it creates a RUNNING
trial carrying the point. Trial numbers give all claims one order, so the first claim of a point
wins; a later one, or one beyond the global budget (distinct points whose trial is not abandoned),
is abandoned (state FAIL, user attr ``abandoned``) without being evaluated. Every Optuna storage
numbers trials in one order (RDB storages lock the study row to create a trial; a journal is one
log), so all processes agree which claims hold: the budget is exact and no point is evaluated
twice, across processes and machines. A process then trains its
claims, reports them, and waits for the claims of others to finish before the search moves on.
A claim whose process died (same host: its pid is gone; any host: no heartbeat for
``--stale-after`` seconds) is abandoned, so its point is claimed again. Use SQLite or a journal file
for processes on one machine, a database server for many machines.

**Early stopping** (``--prune``): the candidates of a step are trained to 25% and 50% of their
steps first (``--prune-at``); one whose mean eval loss there is worse than the current best point's
at the same step by more than ``--prune-margin`` (relative, default 2%) is stopped and recorded as
PRUNED with the compute it used; the others resume from their checkpoints. ``search.json`` reports
the total compute (training steps and tokens over all trials) to compare with and without it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from . import config as _config
from .config import ConfigError
from .search import FACTORS, Result, SearchResult, Step, canonical, local_search, point_key

STUDY_NAME = "rlrs-tune"
DEFAULT_STEPS = 300
_MOE_COMPONENTS = ("embedding", "unembedding", "attention", "router", "experts")
_DENSE_COMPONENTS = ("embedding", "unembedding", "attention", "feedforward")


# --- what is searched -----------------------------------------------------------------------------


def default_params(cfg) -> list[str]:
    """The dotted keys algorithm 2 tunes for ``cfg``'s model: η_base, λ_start and λ_end of each
    component present, weight decay and init scale. ``end`` is left out for a ``constant``-shaped
    component (it must stay 1); with tied embeddings only the component the tensor follows is kept."""
    comps = list(_MOE_COMPONENTS if cfg.model.is_moe else _DENSE_COMPONENTS)
    if cfg.model.tie_embeddings and cfg.plan.tied:
        comps.remove("unembedding" if cfg.plan.tied == "embedding" else "embedding")
    keys = ["plan.base_lr"]
    for c in comps:
        keys.append(f"plan.{c}.start")
        if cfg.plan.component(c).shape != "constant":
            keys.append(f"plan.{c}.end")
    return keys + ["plan.weight_decay", "model.init_scale"]


def _get(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


@dataclass(frozen=True)
class Pruning:
    """Early stopping: at each fraction of training in ``rungs`` a candidate whose mean eval loss
    exceeds the current best point's at the same step by more than ``margin`` (relative) stops."""

    rungs: tuple[float, ...] = (0.25, 0.5)
    margin: float = 0.02

    def __post_init__(self) -> None:
        if not self.rungs or any(not (0 < r < 1) for r in self.rungs):
            raise ConfigError(f"prune_at: fractions of training in (0, 1), got {list(self.rungs)}; e.g. 0.25,0.5")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"prune_margin: a relative margin >= 0, got {self.margin}; e.g. 0.02")


@dataclass(frozen=True)
class TuneSpec:
    """Everything that defines a search. It is stored in the study: workers read it from there, and
    a rerun with other settings is refused instead of mixing two searches in one study."""

    config: Any  # the resolved RunConfig of the start point
    params: tuple[str, ...]
    seeds: int = 1
    search_seed: int = 0
    factors: tuple[float, ...] = FACTORS
    prune: Pruning | None = None
    objective: str | None = None  # "module:function": a synthetic loss instead of training
    min_improvement: float = 0.0  # relative gain a move needs (0: any, as algorithm 2)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_improvement) and 0 <= self.min_improvement < 1):
            raise ConfigError(f"min_improvement: a relative margin in [0, 1), got {self.min_improvement}; e.g. 0.002")
        if self.seeds < 1:
            raise ConfigError(f"seeds: at least 1, got {self.seeds}")
        if not self.params:
            raise ConfigError("params: nothing to search; name at least one dotted key, e.g. plan.base_lr")
        tree = self.config.to_dict()
        for key in self.params:
            try:
                value = _get(tree, key)
            except (KeyError, TypeError):
                try:
                    _config.replace(self.config, {key: 0})
                except ConfigError as err:  # names the closest valid key
                    raise ConfigError(f"params: {err}") from None
                raise ConfigError(f"params: {key!r} is not a setting") from None
            if isinstance(value, bool) or not isinstance(value, float):
                raise ConfigError(
                    f"params: {key} is {value!r}, not a float setting; the search multiplies values, "
                    "so search only float settings (see `rlrs tune --help` for the default list)"
                )
        if self.objective is not None:
            _load_function(self.objective)

    @classmethod
    def create(
        cls,
        preset: str = "micro-moe",
        plan: str | Any | None = None,
        sets: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        steps: int | None = DEFAULT_STEPS,
        params: Sequence[str] | None = None,
        seeds: int = 1,
        search_seed: int = 0,
        prune: Pruning | None = None,
        objective: str | None = None,
        min_improvement: float = 0.0,
    ) -> "TuneSpec":
        """Resolve the start config like ``rlrs train`` (``steps`` first, ``sets`` win over it)."""
        from .train import run_config

        sets = {**({"train.steps": steps} if steps is not None else {}), **(sets or {})}
        cfg = run_config(preset, plan, config_file, sets)
        return cls(cfg, tuple(params or default_params(cfg)), seeds, search_seed, tuple(FACTORS), prune, objective,
                   min_improvement)

    def start(self) -> list[tuple[str, float]]:
        tree = self.config.to_dict()
        return [(k, _get(tree, k)) for k in self.params]

    def run_config(self, point: Mapping[str, float], seed_index: int = 0):
        """The run config of seed ``seed_index`` of ``point`` (strictly validated)."""
        t = self.config.train
        return _config.replace(
            self.config, {**point, "train.seed": t.seed + seed_index, "train.data_seed": t.data_seed + seed_index}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "params": list(self.params),
            "seeds": self.seeds,
            "search_seed": self.search_seed,
            "factors": list(self.factors),
            "prune": None if self.prune is None else {"rungs": list(self.prune.rungs), "margin": self.prune.margin},
            "objective": self.objective,
            "min_improvement": self.min_improvement,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TuneSpec":
        from .train import RunConfig

        p = d.get("prune")
        return cls(
            RunConfig.from_dict(d["config"]),
            tuple(d["params"]),
            int(d["seeds"]),
            int(d["search_seed"]),
            tuple(float(f) for f in d["factors"]),
            None if p is None else Pruning(tuple(p["rungs"]), float(p["margin"])),
            d.get("objective"),
            float(d.get("min_improvement", 0.0)),  # absent in studies made before it existed
        )


# --- objectives: what a point costs and returns -----------------------------------------------------


@dataclass
class Partial:
    """A point trained up to some step: its mean eval curve so far (``{step: loss}``), the
    training steps and tokens spent on it (summed over seeds) and, if it failed, why."""

    status: str  # "ok" | "failed"
    curve: dict[int, float] = field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    error: str | None = None


class Objective(Protocol):
    """Trains points: ``run(points, stop_at)`` continues each point to ``stop_at`` steps (a later
    call with a larger ``stop_at`` resumes it). ``total_steps`` is the full length and
    ``eval_at`` the steps with an eval loss. ``discard(points)`` is called once their trials are
    recorded: nothing will resume them."""

    total_steps: int
    eval_at: list[int]

    def run(self, points: list[dict[str, float]], stop_at: int) -> list[Partial]: ...

    def discard(self, points: list[dict[str, float]]) -> None: ...


class SyntheticObjective:
    """A loss function instead of training, for tests and for trying the search machinery:
    ``fn(point, progress)`` is the eval loss after ``progress`` (0 to 1) of training; raising or
    returning NaN fails the point. Compute is counted in steps as if it trained."""

    def __init__(self, fn: Callable[[dict[str, float], float], float], total_steps: int, eval_interval: float = 0.01):
        from .train import eval_steps

        self.fn = fn
        self.total_steps = total_steps
        self.eval_at = eval_steps(total_steps, eval_interval)

    def run(self, points: list[dict[str, float]], stop_at: int) -> list[Partial]:
        out = []
        for p in points:
            try:
                curve = {s: float(self.fn(dict(p), s / self.total_steps)) for s in self.eval_at if s <= stop_at}
            except Exception as err:  # noqa: BLE001 - a failed point is a result
                out.append(Partial("failed", steps=stop_at, error=f"{type(err).__name__}: {err}"))
                continue
            bad = [s for s, v in curve.items() if not math.isfinite(v)]
            if bad:
                out.append(Partial("failed", steps=stop_at, error=f"eval loss is {curve[bad[0]]} at step {bad[0]}"))
            else:
                out.append(Partial("ok", curve, steps=stop_at))
        return out

    def discard(self, points: list[dict[str, float]]) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingObjective:
    """Trains every seed of every point with :class:`rlrs.train.Trainer` in ``workers`` processes.

    Run directories are content-addressed under ``runs_dir`` (:func:`rlrs.runner.run_dir`), so a
    finished run is reused and an interrupted one resumes from its newest checkpoint. Once a
    point's trial is recorded its checkpoints are deleted (a 300-trial search would otherwise keep
    hundreds of optimizer states); ``config.json``, ``metrics.jsonl`` and ``summary.json`` stay.
    """

    def __init__(self, spec: TuneSpec, runs_dir: str | Path, workers: int = 1):
        from .train import eval_steps, total_steps

        self.spec = spec
        self.runs_dir = Path(runs_dir)
        self.workers = max(1, workers)
        self.total_steps = total_steps(spec.config)
        self.eval_at = eval_steps(self.total_steps, spec.config.train.eval_interval)
        self._pool = None

    def run(self, points: list[dict[str, float]], stop_at: int) -> list[Partial]:
        from .runner import run_dir

        jobs: list[tuple[int, Any, Path]] = []
        errors: dict[int, str] = {}
        for i, p in enumerate(points):
            try:
                cfgs = [self.spec.run_config(p, s) for s in range(self.spec.seeds)]
            except ConfigError as err:
                errors[i] = f"config: {err}"
                continue
            jobs.extend((i, cfg, run_dir(self.runs_dir, cfg)) for cfg in cfgs)
        outcomes = self._run_jobs([(cfg, out, stop_at) for _, cfg, out in jobs])
        by_point: dict[int, list] = {}
        for (i, cfg, out), o in zip(jobs, outcomes):
            by_point.setdefault(i, []).append((cfg, o))
        return [self._partial(by_point.get(i, []), errors.get(i), stop_at) for i in range(len(points))]

    def discard(self, points: list[dict[str, float]]) -> None:
        import shutil

        from .runner import run_dir

        for p in points:
            for s in range(self.spec.seeds):
                try:
                    cfg = self.spec.run_config(p, s)
                except ConfigError:
                    continue  # it never trained
                shutil.rmtree(run_dir(self.runs_dir, cfg) / "checkpoints", ignore_errors=True)

    def _partial(self, runs, error: str | None, stop_at: int) -> Partial:
        from .train import read_metrics

        if error is not None:
            return Partial("failed", error=error)
        steps = sum(o.steps for _, o in runs)
        cfg = runs[0][0]
        tokens = steps * cfg.train.batch_size * (cfg.train.seq_len or cfg.model.seq_len)
        bad = [o for _, o in runs if o.status not in ("finished", "stopped")]
        if bad:
            return Partial("failed", steps=steps, tokens=tokens, error=f"{bad[0].status}: {bad[0].error}")
        curves = []
        for _, o in runs:
            evals = {r["step"]: r["eval_loss"] for r in read_metrics(o.out) if r["kind"] == "eval" and r["step"] <= stop_at}
            curves.append(evals)
        common = sorted(set.intersection(*(set(c) for c in curves)))
        curve = {s: sum(c[s] for c in curves) / len(curves) for s in common}
        return Partial("ok", curve, steps, tokens)

    def _run_jobs(self, jobs: list[tuple[Any, Path, int]]) -> list[Any]:
        import concurrent.futures as cf
        import multiprocessing as mp

        from .runner import Outcome

        threads = max(1, (os.cpu_count() or 1) // min(self.workers, max(1, len(jobs))))
        if self.workers == 1 or len(jobs) <= 1:
            return [_segment(cfg, out, stop, threads) for cfg, out, stop in jobs]
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        futures = [self._pool.submit(_segment, cfg, out, stop, threads) for cfg, out, stop in jobs]
        outcomes = []
        broken = False
        for (cfg, out, stop), fut in zip(jobs, futures):
            try:
                outcomes.append(fut.result())
            except Exception as err:  # noqa: BLE001 - a worker process died (killed, out of memory)
                broken = True
                outcomes.append(Outcome(out, "failed", None, _steps_done(out), 0.0, f"worker died: {err!r}"))
        if broken:  # a pool that lost a process refuses new work: start a fresh one next time
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        return outcomes

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _steps_done(out: Path) -> int:
    try:
        return int(json.loads((Path(out) / "summary.json").read_text())["steps"])
    except (OSError, ValueError, KeyError):
        return 0


def _segment(cfg, out: Path, stop_at: int, threads: int):
    """Train one run to ``stop_at`` steps (reusing or resuming what ``out`` holds); an error is
    an :class:`rlrs.runner.Outcome`, never an exception."""
    import torch

    from .runner import Outcome
    from .train import NonFiniteLoss

    torch.set_num_threads(threads)
    try:
        status, steps, final, wall = _train_to(cfg, Path(out), stop_at)
        return Outcome(Path(out), status, final, steps, wall)
    except NonFiniteLoss as err:
        return Outcome(Path(out), "diverged", None, _steps_done(out), 0.0, str(err))
    except Exception:  # noqa: BLE001 - recorded with the trial, never dropped
        return Outcome(Path(out), "failed", None, _steps_done(out), 0.0, traceback.format_exc(limit=8))


def _train_to(cfg, out: Path, stop_at: int) -> tuple[str, int, float | None, float]:
    # rlrs.train.run_or_reuse with a stop step: a run that already got this far is not touched.
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        # The run-directory lock of rlrs.train.run_or_reuse. Another process on this run (the
        # owner of a claim taken over as stale) is waited for, then what it trained is reused.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _train_to_locked(cfg, out, stop_at)


def _train_to_locked(cfg, out: Path, stop_at: int) -> tuple[str, int, float | None, float]:
    from .train import RunConfig, Trainer

    if (out / "config.json").exists():
        if RunConfig.from_dict(_config.load_file(out / "config.json")) != cfg:
            raise ConfigError(f"{out} holds a run with another config; remove it or choose another --out")
        summary = out / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            if s["status"] == "finished" or (s["status"] == "stopped" and s["steps"] >= stop_at):
                return s["status"], s["steps"], s["final_eval_loss"], s["wall_s"]
        if list((out / "checkpoints").glob("step_*.pt")):
            r = Trainer(cfg, out, resume=True).run(stop_at=stop_at)
            return r.status, r.steps, r.final_eval_loss, r.wall_s
        (out / "metrics.jsonl").unlink(missing_ok=True)  # started, never checkpointed: start over
    r = Trainer(cfg, out).run(stop_at=stop_at)
    return r.status, r.steps, r.final_eval_loss, r.wall_s


def _load_function(spec: str) -> Callable:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"objective: {spec!r} is not MODULE:FUNCTION, e.g. mypkg.losses:quadratic")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"objective: cannot load {spec!r} ({err}); put its module on PYTHONPATH") from None
    if not callable(fn):
        raise ConfigError(f"objective: {spec!r} is not callable")
    return fn


def make_objective(spec: TuneSpec, out: str | Path, workers: int = 1):
    """The objective ``spec`` names: training (default) or its synthetic ``objective`` function."""
    from .train import total_steps

    if spec.objective is not None:
        return SyntheticObjective(_load_function(spec.objective), total_steps(spec.config), spec.config.train.eval_interval)
    return TrainingObjective(spec, Path(out) / "runs", workers)


# --- the study: trials, claims, heartbeats ---------------------------------------------------------

_LIVE_OWNERS: set[str] = set()  # claim owners alive in this process (a stale one here is a crashed tune())


def storage_url(out: str | Path, storage: str | None) -> str:
    """``storage``, or the default SQLite file ``OUT/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_storage(url: str):
    """An Optuna storage for ``url``: an RDB URL, or ``journal:///path/file.log`` (journal file)."""
    optuna = _config.require("optuna", "tune")
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ConfigError("storage: journal:///path/to/file.log names the journal file; the path is missing")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError(
            f"storage: {url!r} is not a storage URL; use sqlite:///file.db, postgresql://user@host/db, "
            "mysql+pymysql://user@host/db or journal:///path/file.log"
        )
    if not url.startswith("sqlite"):
        return _cached(optuna, _retry_init(lambda: optuna.storages.RDBStorage(url)))
    db = url.split(":///", 1)[-1]
    if not db or db == ":memory:":
        return _cached(optuna, optuna.storages.RDBStorage(url))
    import sqlalchemy

    Path(db).parent.mkdir(parents=True, exist_ok=True)
    # Several processes write one file: wait for its lock instead of failing after 5 s.
    engine_kwargs = {"connect_args": {"timeout": 120}}
    if not _has_schema(db):
        # Optuna creates the schema of a new file without a lock: processes started together race
        # on it. One creates it; the others wait here, then open it as it is.
        with _file_lock(Path(db + ".lock")):
            if not _has_schema(db):
                first = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
                with first.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                first.engine.dispose()
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    # Write-ahead logging: readers never block the writer and a commit costs one fsync; it stays
    # durable (synchronous=FULL) but needs a local disk, as SQLite across machines does anyway.
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_wal)
    storage.engine.dispose()  # reconnect the pooled connections with the pragma
    return _cached(optuna, storage)


def _cached(optuna, rdb):
    # What optuna.create_study(storage=URL) itself uses: finished trials are read and decoded once
    # per process, unfinished and new ones on every read. Plain RDB where a version lacks it.
    cached = getattr(optuna.storages, "_CachedStorage", None)
    return cached(rdb) if cached is not None else rdb


def _has_schema(db: str) -> bool:
    """Whether the SQLite file ``db`` already holds Optuna's tables (stamped with a version)."""
    import sqlite3

    if not Path(db).exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=120)
        try:
            return bool(conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _retry_init(make, tries: int = 5):
    # Optuna creates the schema of a new database without a lock: workers started together race on
    # it, and all but one fail once the others have created it. Retrying then finds it made.
    for attempt in range(tries):
        try:
            return make()
        except Exception:  # noqa: BLE001 - the last attempt re-raises
            if attempt == tries - 1:
                raise
            time.sleep(0.2 + random.random())


class _file_lock:
    """An exclusive lock on ``path`` between processes of one machine (fcntl; none elsewhere)."""

    def __init__(self, path: Path):
        self.path = path
        self.f = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.f is not None:
            self.f.close()  # closing releases the lock


def _sqlite_wal(conn, _record) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


@dataclass
class _Scan:
    done: dict[str, Any]  # key -> its finished trial (counted)
    running: dict[str, Any]  # key -> its valid claim
    invalid: list[Any]  # RUNNING claims that lost: a duplicate or beyond the budget
    count: int  # distinct points done or validly claimed
    budget: int
    abandoned: int


class _Study:
    """The shared state of a search in an Optuna study (see the module docstring, Workers)."""

    def __init__(self, url: str, name: str, heartbeat_s: float, stale_s: float, create: bool = True):
        optuna = _config.require("optuna", "tune")
        self.optuna = optuna
        self.url = url
        self.name = name
        self.storage = open_storage(url)
        if create:
            optuna.create_study(storage=self.storage, study_name=name, direction="minimize", load_if_exists=True)
        try:
            self.study_id = self.storage.get_study_id_from_name(name)
        except KeyError:
            raise ConfigError(
                f"--worker: {_redact(url)} holds no study {name!r}; start the search without --worker "
                "first, or check --storage and --study-name"
            ) from None
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        self.stale_s = stale_s
        self.mine: set[int] = set()  # trial ids of this process's live claims
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        _LIVE_OWNERS.add(self.owner["id"])
        self._beat.start()

    # study attributes
    def attrs(self) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(self.study_id)

    def set_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(self.study_id, key, value)

    # claims
    def scan(self) -> _Scan:
        """Read every trial, abandon stale claims, and work out which claims hold."""
        budget = int(self.attrs()["budget"])
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        RUNNING = self.optuna.trial.TrialState.RUNNING
        now = time.time()
        done: dict[str, Any] = {}
        running: dict[str, Any] = {}
        invalid: list[Any] = []
        abandoned = 0
        for t in sorted(trials, key=lambda t: t.number):
            ua = t.user_attrs
            key = ua.get("key")
            if key is None:
                continue  # not ours (someone used the study for something else)
            if "abandoned" in ua:
                abandoned += 1
                continue
            if t.state == RUNNING:
                why = self._stale(ua, now)
                if why:
                    self.abandon(t, why)
                    abandoned += 1
                    continue
            elif not t.state.is_finished():
                continue
            if key in done or key in running:
                if t.state == RUNNING:
                    invalid.append(t)
                continue
            if t.state == RUNNING:
                if len(done) + len(running) >= budget:
                    invalid.append(t)
                else:
                    running[key] = t
            else:
                done[key] = t
        return _Scan(done, running, invalid, len(done) + len(running), budget, abandoned)

    def _stale(self, ua: Mapping[str, Any], now: float) -> str | None:
        owner = ua.get("owner") or {}
        if owner.get("id") == self.owner["id"]:
            return None
        if owner.get("host") == self.owner["host"]:
            pid = owner.get("pid")
            if pid == self.owner["pid"]:
                if owner.get("id") not in _LIVE_OWNERS:
                    return f"stale: its tune() in this process (pid {pid}) has ended"
            elif not _pid_alive(pid):
                return f"stale: its process (pid {pid} on {owner.get('host')}) is gone"
        beat = ua.get("heartbeat")
        if isinstance(beat, (int, float)) and now - beat > self.stale_s:
            return f"stale: no heartbeat for {now - beat:.0f} s (owner {owner.get('host')}:{owner.get('pid')})"
        return None

    def claim(self, items: Sequence[tuple[dict[str, float], str]]) -> list[Any]:
        """Create one RUNNING trial per ``(point, key)``; return the trials that won their claim."""
        FrozenTrial = self.optuna.trial.FrozenTrial
        Float = self.optuna.distributions.FloatDistribution
        RUNNING = self.optuna.trial.TrialState.RUNNING
        ids = []
        for point, key in items:
            template = FrozenTrial(
                number=-1, state=RUNNING, value=None, datetime_start=_now(), datetime_complete=None,
                params={k: float(v) for k, v in point.items()},
                distributions={k: Float(float(v), float(v)) for k, v in point.items()},
                user_attrs={"key": key, "point": dict(point), "owner": self.owner, "heartbeat": time.time()},
                system_attrs={}, intermediate_values={}, trial_id=-1,
            )
            tid = self.storage.create_new_trial(self.study_id, template)
            with self._lock:
                self.mine.add(tid)
            ids.append(tid)
        scan = self.scan()
        won = {t._trial_id: t for t in scan.running.values()}
        for t in scan.invalid:
            if t._trial_id in self.mine:
                first = scan.running.get(t.user_attrs["key"]) or scan.done.get(t.user_attrs["key"])
                why = f"duplicate of trial {first.number}" if first is not None else f"beyond the budget of {scan.budget}"
                self.abandon(t, why)
        return [won[tid] for tid in ids if tid in won]

    def abandon(self, trial: Any, reason: str) -> None:
        """Take a claim back: it no longer counts and its point is free again."""
        FAIL = self.optuna.trial.TrialState.FAIL
        try:
            self.storage.set_trial_user_attr(trial._trial_id, "abandoned", reason)
            self.storage.set_trial_state_values(trial._trial_id, FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile by its owner: the attr alone decides
            pass
        with self._lock:
            self.mine.discard(trial._trial_id)

    def finish(self, trial: Any, state: str, value: float | None, attrs: Mapping[str, Any],
               intermediate: Mapping[int, float]) -> bool:
        """Record a claim's result; ``False`` if someone abandoned it meanwhile (then it is dropped)."""
        TrialState = self.optuna.trial.TrialState
        tid = trial._trial_id
        try:
            for step, v in intermediate.items():
                if math.isfinite(v):
                    self.storage.set_trial_intermediate_value(tid, step, v)
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(tid, k, v)
            # The state is written last: until then the trial is unfinished and gets rerun.
            self.storage.set_trial_state_values(tid, getattr(TrialState, state), None if value is None else [value])
            return True
        except self.optuna.exceptions.UpdateFinishedTrialError:
            return False
        finally:
            with self._lock:
                self.mine.discard(tid)

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                ids = list(self.mine)
            for tid in ids:
                try:
                    self.storage.set_trial_user_attr(tid, "heartbeat", time.time())
                except Exception:  # noqa: BLE001 - finished or abandoned meanwhile; the next beat retries others
                    pass

    def close(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        with self._lock:
            left = list(self.mine)
        if left:
            for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
                if t._trial_id in left and not t.state.is_finished():
                    self.abandon(t, "interrupted: its process stopped before finishing it")
        _LIVE_OWNERS.discard(self.owner["id"])


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now():
    import datetime

    return datetime.datetime.now()


def _trial_result(t: Any) -> Result:
    state = t.state.name
    if state == "COMPLETE":
        return Result(float(t.value))
    if state == "PRUNED":
        return Result(math.inf, "pruned", t.user_attrs.get("note"))
    return Result(math.inf, "failed", t.user_attrs.get("error", "failed"))


# --- the driver -------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    best: dict[str, float]
    best_loss: float
    start: dict[str, float]
    start_loss: float
    stopped: str  # "converged" | "budget"
    evaluations: int
    plan: Any  # rlrs.plan.Plan
    plan_path: Path
    config_path: Path | None  # tuned_config.json, when a non-plan setting moved
    search_path: Path
    compute_steps: int
    compute_tokens: int
    trials: dict[str, int]  # counted trials by state, plus "abandoned"
    search: SearchResult
    spec: TuneSpec


def tune(
    spec: TuneSpec,
    out: str | Path,
    budget: int | None,
    *,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    workers: int = 1,
    objective: Objective | None = None,
    poll_s: float = 2.0,
    heartbeat_s: float = 30.0,
    stale_s: float = 300.0,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or resume, or join) the search ``spec`` with trials in the study at ``storage``.

    ``budget``: the most distinct points evaluated, across every process sharing the study; it is
    stored in the study (``None``: keep the study's, as a worker does). ``objective`` replaces the
    one ``spec`` names (tests inject synthetic ones); ``workers`` trains that many runs at once.
    """
    if budget is not None and budget < 1:
        raise ConfigError(f"budget: at least 1 evaluation, got {budget}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    study = _Study(url, study_name, heartbeat_s, stale_s)
    try:
        _adopt(study, spec, budget, log)
        obj = objective or make_objective(spec, out, workers)
        try:
            return _Tuner(spec, out, study, obj, workers, poll_s, log).run()
        finally:
            if objective is None:
                obj.close()
    finally:
        study.close()


def join(
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    workers: int = 1,
    objective: Objective | None = None,
    poll_s: float = 2.0,
    heartbeat_s: float = 30.0,
    stale_s: float = 300.0,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Work on the search already in the study (``rlrs tune --worker``): its settings and budget
    come from the study; runs and outputs go to ``out``."""
    out = Path(out)
    url = storage_url(out, storage)
    if storage is None and not (out / "study.db").exists():
        raise ConfigError(f"--worker: {out / 'study.db'} does not exist; start the search without --worker, or give --storage")
    study = _Study(url, study_name, heartbeat_s, stale_s, create=False)
    try:
        attrs = study.attrs()
    finally:
        study.close()
    if "spec" not in attrs:
        raise ConfigError(
            f"--worker: study {study_name!r} in {_redact(url)} holds no search yet; start it with "
            "`rlrs tune --preset ... --budget N` (without --worker) first"
        )
    spec = TuneSpec.from_dict(attrs["spec"])
    return tune(spec, out, None, storage=url, study_name=study_name, workers=workers, objective=objective,
                poll_s=poll_s, heartbeat_s=heartbeat_s, stale_s=stale_s, log=log)


def _adopt(study: _Study, spec: TuneSpec, budget: int | None, log) -> None:
    """Store the spec and budget in a new study; check them against an existing one."""
    mine = _normal(spec.to_dict())
    attrs = study.attrs()
    if "spec" not in attrs:
        study.set_attr("spec", mine)
        attrs = study.attrs()  # two drivers starting at once: the last writer wins, the other stops here
    theirs = _normal(TuneSpec.from_dict(attrs["spec"]).to_dict())  # fills settings added since
    if theirs != mine:
        diff = _differences(mine, theirs)
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


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ (``config.train.steps``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _normal(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True))


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
            room = scan.budget - scan.count
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
                at = p.curve.get(stop)
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
        for frac in self.spec.prune.rungs:
            below = [s for s in self.objective.eval_at if 0 < s <= frac * total]
            if below and below[-1] < total:
                rungs.add(below[-1])
        return sorted(rungs)

    # progress and outputs --------------------------------------------------------------------------
    def on_start(self, point: dict[str, float], result: Result) -> None:
        self.incumbent = point_key(point)
        self.start_loss = result.loss
        self.log(f"start: loss {_fmt(result.loss)}" + (f" ({result.status}: {result.note})" if result.status != "ok" else ""))
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
        self.log(f"pass {step.pass_index} step {step.index + 1}: {step.param} {arrow}  loss {_fmt(loss)}  "
                 f"[{new} new, {len(cands) - new} cached{extra}]")
        self._write_best(current, loss)
        self._write_search(current, loss, "running")

    def _write_best(self, point: dict[str, float], loss: float) -> None:
        key = point_key(point)
        if key == self.best_written:
            return
        plan_keys = {k[len("plan."):]: v for k, v in point.items() if k.startswith("plan.")}
        plan = _config.replace(self.spec.config.plan, plan_keys)
        plan.save(self.out / "tuned.toml")
        moved = {k: v for k, v in point.items() if not k.startswith("plan.") and v != self.start_point[k]}
        cfg_path = self.out / "tuned_config.json"
        if moved:
            nested: dict[str, Any] = {}
            for k, v in moved.items():
                node = nested
                *parents, leaf = k.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = v
            _config.atomic_write_text(cfg_path, json.dumps(nested, indent=2) + "\n")
        else:
            cfg_path.unlink(missing_ok=True)
        self.best_written = key

    def _compute(self) -> tuple[int, int, dict[str, int]]:
        steps = sum(int(t.user_attrs.get("compute_steps", 0)) for t in self.done.values())
        tokens = sum(int(t.user_attrs.get("tokens", 0)) for t in self.done.values())
        states: dict[str, int] = {}
        for t in self.done.values():
            states[t.state.name] = states.get(t.state.name, 0) + 1
        return steps, tokens, states

    def _write_search(self, point, loss, stopped: str, abandoned: int = 0) -> None:
        steps, tokens, states = self._compute()
        doc = {
            "study": {"storage": _redact(self.study.url), "name": self.study.name},
            "spec": self.spec.to_dict(),
            "start": self.start_point,
            "start_loss": _json(self.start_loss),
            "best": point,
            "best_loss": _json(loss),
            "stopped": stopped,
            "compute": {"steps": steps, "tokens": tokens, "trials": {**states, "abandoned": abandoned}},
            "steps": self.steps,
        }
        _config.atomic_write_text(self.out / "search.json", json.dumps(doc, indent=2) + "\n")

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
        self._write_search(r.best, r.best_loss, r.stopped, final.abandoned)
        steps, tokens, states = self._compute()
        cfg_path = self.out / "tuned_config.json"
        plan = _config.replace(self.spec.config.plan, {k[5:]: v for k, v in r.best.items() if k.startswith("plan.")})
        return TuneResult(
            best=r.best, best_loss=r.best_loss, start=self.start_point, start_loss=r.start_loss,
            stopped=r.stopped, evaluations=r.evaluations, plan=plan, plan_path=self.out / "tuned.toml",
            config_path=cfg_path if cfg_path.exists() else None, search_path=self.out / "search.json",
            compute_steps=steps, compute_tokens=tokens, trials={**states, "abandoned": final.abandoned}, search=r,
            spec=self.spec,
        )


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "inf (failed)"


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- command line -----------------------------------------------------------------------------------

_SPEC_ARGS = ("preset", "plan", "config", "budget", "steps", "seeds", "search_seed", "params", "objective",
              "min_improvement")


def cmd_tune(args) -> int:
    try:
        return _cmd_tune(args)
    except KeyboardInterrupt:
        print("rlrs tune: interrupted; finished trials are in the study and runs resume from their "
              "checkpoints: rerun the same command to continue", file=sys.stderr)
        return 130


def _cmd_tune(args) -> int:
    from .cli import parse_sets

    optuna = _config.require("optuna", "tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from .runner import default_workers

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: at least 1, got {args.workers}")
    workers = args.workers or default_workers()
    common = dict(storage=args.storage, study_name=args.study_name, workers=workers, poll_s=args.poll,
                  stale_s=args.stale_after, log=print)
    if args.worker:
        given = [f"--{a.replace('_', '-')}" for a in _SPEC_ARGS if getattr(args, a) is not None]
        given += ["--set"] * bool(args.set) + ["--prune"] * bool(args.prune)
        if given:
            raise ConfigError(
                f"--worker: {', '.join(given)} cannot be given: a worker takes the search settings "
                "from the study; give only --out, --storage, --study-name, --workers"
            )
        result = join(args.out, **common)
    else:
        if args.budget is None:
            raise ConfigError("--budget: how many points to evaluate at most, e.g. --budget 60")
        prune = None
        if args.prune or args.prune_at or args.prune_margin is not None:
            try:
                rungs = tuple(float(x) for x in (args.prune_at or "0.25,0.5").split(",") if x.strip())
            except ValueError:
                raise ConfigError(f"--prune-at: {args.prune_at!r} is not comma-separated fractions, e.g. 0.25,0.5") from None
            prune = Pruning(rungs, 0.02 if args.prune_margin is None else args.prune_margin)
        spec = TuneSpec.create(
            args.preset or "micro-moe", args.plan, parse_sets(args.set), args.config,
            DEFAULT_STEPS if args.steps is None else args.steps,
            [p.strip() for p in args.params.split(",") if p.strip()] if args.params else None,
            1 if args.seeds is None else args.seeds, args.search_seed or 0, prune, args.objective,
            args.min_improvement or 0.0,
        )
        result = tune(spec, args.out, args.budget, **common)
    _report(result)
    return 0 if math.isfinite(result.best_loss) else 1


def _report(r: TuneResult) -> None:
    print(f"best eval loss {_fmt(r.best_loss)} (start {_fmt(r.start_loss)}) after {r.evaluations} "
          f"evaluations; stopped: {r.stopped}")
    changed = {k: (r.start[k], v) for k, v in r.best.items() if v != r.start[k]}
    for k, (a, b) in changed.items():
        print(f"  {k}: {a:.4g} -> {b:.4g}")
    sets = " ".join(f"--set {k}={v!r}" for k, v in r.best.items() if not k.startswith("plan.") and k in changed)
    print(f"plan: {r.plan_path}   use: rlrs train --preset {r.spec.config.preset} --plan {r.plan_path}"
          + (f" {sets}" if sets else ""))
    if r.config_path:
        print(f"non-plan settings: {r.config_path} (or the --set flags above)")
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(r.trials.items()) if n)
    print(f"compute: {r.compute_steps} training steps ({r.compute_tokens} tokens); trials: {states}")
    print(f"trajectory: {r.search_path}")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="local search (paper appendix A.1) over η_base, every λ, weight decay and init scale",
        description=(
            "Tune a plan with the paper's local search; trials persist in an Optuna study, so a rerun "
            "resumes and --worker processes share one search. Writes OUT/tuned.toml (a plan for --plan), "
            "OUT/tuned_config.json (model settings such as init_scale, when they moved) and OUT/search.json."
        ),
    )
    p.add_argument("--preset", default=None, help="model size preset (default: micro-moe)")
    p.add_argument("--plan", default=None, help="start plan: a preset (paper-moe, paper-dense, uniform, ...) or a plan file (default: paper-moe/paper-dense)")
    p.add_argument("--config", default=None, help="a .toml/.json run config (sections model, data, train, plan)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting of every run, e.g. train.batch_size=8 (repeatable)")
    p.add_argument("--budget", type=int, default=None, help="most points evaluated, over all workers (a rerun with a larger one extends the search)")
    p.add_argument("--out", required=True, help="output directory (tuned.toml, search.json, runs/, study.db)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default: {DEFAULT_STEPS}; --set train.steps wins)")
    p.add_argument("--seeds", type=int, default=None, help="runs per point; the objective is their mean final eval loss (default: 1)")
    p.add_argument("--workers", type=int, default=None, help="training runs at once in this process (default: one per core, at most 4)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/study.db; also postgresql://..., mysql+pymysql://..., journal:///path/file.log)")
    p.add_argument("--study-name", default=STUDY_NAME, help=f"study name in the storage (default: {STUDY_NAME})")
    p.add_argument("--worker", action="store_true", help="join the search already in the study (settings come from it)")
    p.add_argument("--prune", action="store_true", help="stop candidates early whose eval loss trails the current best")
    p.add_argument("--prune-at", default=None, metavar="FRACTIONS", help="checkpoints for --prune as fractions of training (default: 0.25,0.5)")
    p.add_argument("--prune-margin", type=float, default=None, help="relative margin for --prune (default: 0.02)")
    p.add_argument("--min-improvement", type=float, default=None, metavar="FRACTION",
                   help="relative gain a move needs to be taken, e.g. 0.002 to ignore seed noise (default: 0, any gain)")
    p.add_argument("--search-seed", type=int, default=None, help="seed of the order parameters are visited in (default: 0)")
    p.add_argument("--params", default=None, help="comma-separated dotted keys to search (default: plan.base_lr, each component's start and end, plan.weight_decay, model.init_scale)")
    p.add_argument("--objective", default=None, metavar="MODULE:FUNCTION", help="a synthetic loss fn(point, progress) instead of training (to try the search)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between looks at other workers' claims (default: 2)")
    p.add_argument("--stale-after", type=float, default=300.0, help="a claim without heartbeat for this long is taken over (default: 300)")
    p.set_defaults(func=cmd_tune)
