"""Run many training jobs in parallel worker processes, recording failures instead of dropping them.

    >>> from rlrs.runner import Job, run_jobs
    >>> results = run_jobs([Job(cfg_a, "runs/a"), Job(cfg_b, "runs/b")], workers=2)  # doctest: +SKIP

Each job runs :func:`rlrs.train.run_or_reuse` in its own process (spawned, so nothing leaks between
runs), so a finished run is reused and an interrupted one resumes. A job that raises (a diverged
run, a crash) comes back as an :class:`Outcome` with ``status`` ``"diverged"`` or ``"failed"`` and
the error text.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .train import NonFiniteLoss, RunConfig, run_or_reuse


def run_dir(root: str | Path, cfg: RunConfig) -> Path:
    """A content-addressed run directory: the same config always maps to the same place, so a
    repeated or interrupted command finds (and reuses or resumes) its runs."""
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{cfg.preset}-{digest}"


@dataclass(frozen=True)
class Job:
    cfg: RunConfig
    out: Path


@dataclass
class Outcome:
    out: Path
    status: str  # finished | diverged | failed
    final_eval_loss: float | None
    steps: int
    wall_s: float
    error: str | None = None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``taskset``, a batch scheduler's cpuset)
    where the OS reports one, else every core. Threads beyond it only fight over the same cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run(job: Job, threads: int) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    try:
        r = run_or_reuse(job.cfg, job.out)
        return Outcome(job.out, r.status, r.final_eval_loss, r.steps, r.wall_s)
    except NonFiniteLoss as err:
        return Outcome(job.out, "diverged", None, 0, 0.0, str(err))
    except Exception:  # noqa: BLE001 - recorded and shown in the report, never dropped
        return Outcome(job.out, "failed", None, 0, 0.0, traceback.format_exc(limit=8))


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def run_jobs(
    jobs: Sequence[Job],
    workers: int | None = None,
    on_done: Callable[[Job, Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``jobs`` with ``workers`` processes (threads split evenly); results in job order."""
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))
    threads = max(1, usable_cores() // workers)
    if workers == 1:
        outcomes = []
        for job in jobs:
            outcomes.append(_run(job, threads))
            if on_done:
                on_done(job, outcomes[-1])
        return outcomes
    results: dict[int, Outcome] = {}
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run, job, threads): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as err:  # noqa: BLE001 - a worker process died (killed, OOM)
                results[i] = Outcome(jobs[i].out, "failed", None, 0, 0.0, f"worker died: {err!r}")
            if on_done:
                on_done(jobs[i], results[i])
    return [results[i] for i in range(len(jobs))]
