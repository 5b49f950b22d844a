"""Where runs execute: this machine's job pool (``local``, :class:`rlrs.engine.Pool`) or a Slurm
cluster (``slurm``, :class:`SlurmExecutor`, through submitit).

An executor takes the engine's :class:`~rlrs.engine.Job` list and gives one
:class:`~rlrs.engine.RunResult` per job, in job order. Wherever a job runs, it runs
:func:`rlrs.engine.execute` on its run directory, so the lock, reuse, resume and ``result.json``
are the engine's: a run finished on the cluster is reused by a local invocation and the other way
round. Every experiment command takes ``--executor`` (:func:`rlrs.options.add_executor_args`)::

    >>> from rlrs.executors import ClusterConfig, SlurmConfig, make_executor
    >>> with make_executor(ClusterConfig("slurm", SlurmConfig(partition="gpu", gpus=1)), workers=8) as ex:  # doctest: +SKIP
    ...     results = run_all(jobs, executor=ex)

Another backend (Ray, Kubernetes) is a class with the :class:`Executor` methods and a factory
given to :func:`register`; the run kinds need no change.

On Slurm, one run is one job; the runs of one call are one job array. A job that Slurm ends (its
time limit, out of memory, preemption, ``scancel``, a node failure) is a failed run whose error
names Slurm's state and reason; it is written to the run's ``result.json`` when the job could not
write its own, so the next invocation runs it again (a preset resumes from its checkpoints). A job
whose time limit is near (Slurm's ``USR2``, ``signal_delay_s`` before it) is requeued to resume,
up to ``timeout_requeues`` times (submitit's checkpointing; a preempted job is requeued always).
Ctrl-C cancels the jobs it submitted.

One module (about 600 lines): the registry and the local pool's adapter are short; the rest is
Slurm's executor and the state machine that reads Slurm's job states, which change together.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from . import config as _config
from . import files
from .config import ConfigError
from .engine import (LOCK_WAIT_S, Job, Pool, RunEnded, RunResult, _on_ctrl_c, _StepBar, execute, reason_line,
                     record_lost, stopped_by)


class Executor(Protocol):
    """Runs jobs somewhere. ``workers``: runs at once (``None``: as many as the backend gives).
    Optionally ``describe(n)``: how ``n`` runs will run, for the engine's log (``"as Slurm jobs"``).
    Commands use an executor as a context manager (``with executor_from_args(...) as ex``), so a
    new one also gives ``__enter__`` (returning itself) and ``__exit__`` (calling ``close``)."""

    workers: int | None

    def run(self, jobs: Sequence[Job], on_done: Callable[[Job, RunResult], None] | None = None,
            progress: bool = False) -> list[RunResult]:
        """Run ``jobs``; one result per job, in job order; ``on_done`` as each ends."""
        ...

    def close(self) -> None: ...


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmConfig:
    """The resources of each run's Slurm job, and how rlrs follows the jobs (``[slurm]`` of
    ``--cluster-config``; each field has a ``--slurm-*`` flag)."""

    partition: str | None = None  # None: the cluster's default partition
    gpus: int = 0  # GPUs per run (--gpus-per-node)
    cpus: int = 1  # CPU cores per run (--cpus-per-task); the run's threads
    mem_gb: float | None = None  # memory per run in GB; None: the cluster's default
    time_min: int = 60  # each job's time limit, in minutes
    account: str | None = None
    options: tuple[str, ...] = ()  # further sbatch options, KEY=VALUE (or KEY for a flag), e.g. constraint=a100
    timeout_requeues: int = 3  # times a job whose time limit runs out is requeued to resume
    poll_s: float = 10.0  # seconds between looks at the queue (squeue) for jobs Slurm ended

    def __post_init__(self) -> None:
        for name, low in (("gpus", 0), ("cpus", 1), ("time_min", 1), ("timeout_requeues", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name}: a whole number >= {low}, got {v!r}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"mem_gb: memory per run in GB, > 0, got {self.mem_gb!r}")
        if not self.poll_s > 0:
            raise ConfigError(f"poll_s: seconds > 0, got {self.poll_s!r}")
        for name in ("partition", "account"):
            if getattr(self, name) == "":
                raise ConfigError(f"{name}: empty; leave it out for the cluster's default")
        self.sbatch_options()  # each option well-formed

    def sbatch_options(self) -> dict[str, Any]:
        """``options`` as submitit's ``additional_parameters`` (``{"constraint": "a100"}``)."""
        out: dict[str, Any] = {}
        for item in self.options:
            key, sep, value = str(item).partition("=")
            key = key.strip().lstrip("-")
            if not key or (sep and not value.strip()) or any(c.isspace() for c in key):
                raise ConfigError(f"options: {item!r} is not an sbatch option; write KEY=VALUE (or KEY for a flag), "
                                  "e.g. constraint=a100 or exclusive")
            out[key] = value.strip() if sep else True
        return out


@dataclass(frozen=True)
class ClusterConfig:
    """Which executor runs the runs, and each executor's settings (a ``--cluster-config`` file:
    ``executor = "slurm"`` and a ``[slurm]`` table of :class:`SlurmConfig` fields)."""

    executor: str = "local"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read a ``--cluster-config`` file (TOML or JSON) strictly: an unknown key is refused naming the
    closest valid one. ``[slurm.options]`` may be a table (``constraint = "a100"``)."""
    data = _config.load_file(path)
    slurm = data.get("slurm")
    if isinstance(slurm, Mapping) and isinstance(slurm.get("options"), Mapping):
        opts = slurm["options"]
        data = {**data, "slurm": {**slurm, "options": [k if v is True else f"{k}={v}" for k, v in opts.items()]}}
    try:
        cfg = _config.from_dict(ClusterConfig, data, where="")
    except ConfigError as err:
        raise ConfigError(f"--cluster-config {path}: {err}") from None
    check_executor_name(cfg.executor, f"--cluster-config {path}: executor")
    return cfg


# --- the registry --------------------------------------------------------------------------------------

Factory = Callable[[ClusterConfig, "int | None", "Path | None"], Executor]
_FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make ``--executor NAME`` build its executor with ``factory(config, workers, log_dir)``."""
    _FACTORIES[name] = factory


def executor_names() -> list[str]:
    return list(_FACTORIES)


def check_executor_name(name: str, where: str = "--executor") -> None:
    if name not in _FACTORIES:
        raise ConfigError(f"{where}: {name!r} is not an executor; {_config.closest(name, _FACTORIES)}")


def make_executor(config: ClusterConfig = ClusterConfig(), workers: int | None = None,
                  log_dir: str | Path | None = None) -> Executor:
    """The executor ``config.executor`` names; ``workers``: runs at once; ``log_dir``: where a
    cluster executor keeps its job logs (the experiment's ``--out``/slurm)."""
    check_executor_name(config.executor)
    return _FACTORIES[config.executor](config, workers, None if log_dir is None else Path(log_dir))


register("local", lambda config, workers, log_dir: Pool(workers))
register("slurm", lambda config, workers, log_dir: SlurmExecutor(config.slurm, workers, log_dir))


# --- the current executor (rlrs tune's objective) --------------------------------------------------------

_current: list[Executor] = []


@contextlib.contextmanager
def using(executor: Executor | None) -> Iterator[None]:
    """Within the block, :func:`current` is ``executor``: for code that builds its own runs deep
    inside a command (``rlrs tune``'s objective) rather than taking an executor argument."""
    _current.append(executor)
    try:
        yield
    finally:
        _current.pop()


def current() -> Executor | None:
    return _current[-1] if _current else None


# --- Slurm ------------------------------------------------------------------------------------------------

# Job states (squeue %T, sacct State) of a job that has ended; every other state may still run.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "REVOKED"}
# Ended by Slurm rather than by the run itself.
ENDED_BY_SLURM = ENDED - {"COMPLETED", "FAILED"}
# Why a job may wait in the queue for ever, and what to do (squeue's %r; a prefix matches).
PENDING_FIXES = {
    "PartitionTimeLimit": "its time limit is above the partition's: lower --slurm-time-min (Ctrl-C, then run again)",
    "PartitionNodeLimit": "it asks for more than the partition's nodes allow: check --slurm-* and --slurm-option",
    "ReqNodeNotAvail": "a node it needs is down or reserved: check sinfo, or Ctrl-C and change --slurm-partition",
    "InvalidAccount": "the account is not valid here: check --slurm-account",
    "InvalidQOS": "the QOS is not valid for the account: check --slurm-option qos=...",
    "JobHeld": "it is held: scontrol release JOBID (or Ctrl-C)",
    "launch failed requeued held": "its launch failed and Slurm held it: see its log in OUT/slurm, then scontrol "
                                   "release JOBID (or Ctrl-C)",
}
LOG_TAIL_LINES = 15
RESULT_GRACE_S = 15.0
SIGNAL_DELAY_S = 90  # submitit's default: time to requeue before the time limit
CANCEL_WAIT_S = 120.0  # how long a Ctrl-C waits for the cancelled jobs to end (Slurm's KillWait, a node's cleanup)  # a job that ended COMPLETED/FAILED: how long its result file may lag on a shared disk
REASONS = {
    "TIMEOUT": "its time limit ran out, and it may not be requeued again (raise --slurm-time-min or "
               "--slurm-timeout-requeues)",
    "OUT_OF_MEMORY": "it ran out of memory (raise --slurm-mem-gb)",
    "CANCELLED": "it was cancelled (scancel, or an administrator)",
    "PREEMPTED": "it was preempted by a job of higher priority",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "it reached its deadline",
}


class SlurmTimeLimitError(RunEnded):
    """Raised in a run whose Slurm time limit is about to run out, when it may not be requeued again:
    the job fails with it, and the executor records the run failed in Slurm's words (``ended TIMEOUT``)."""


class SlurmRun:
    """What one Slurm job runs: :func:`rlrs.engine.execute` of its job on the node. submitit pickles
    it; ``checkpoint`` (called on the time-limit or preemption signal) resubmits it unchanged, since
    ``execute`` resumes a run from its run directory."""

    def __init__(self, job: Job, time_min: int | None = None):
        self.job = job
        self.time_min = time_min

    def __call__(self) -> RunResult:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:  # the job's cores, as the local pool gives each worker its share
            import torch

            torch.set_num_threads(int(cpus))
            os.environ["RLRS_THREADS"] = cpus
        with self._time_limit_named():
            return execute(self.job.spec, self.job.out, self.job.stop_at)

    def checkpoint(self, *args: Any, **kwargs: Any):
        submitit = _config.require("submitit", "cluster")
        return submitit.helpers.DelayedSubmission(SlurmRun(self.job, self.time_min))

    @contextlib.contextmanager
    def _time_limit_named(self) -> Iterator[None]:
        # submitit's signal handler requeues the job, or (requeued too often) raises its
        # UncompletedJobError inside the run: that becomes a failure named as Slurm names it.
        sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        handler = signal.getsignal(sig) if sig is not None and threading.current_thread() is threading.main_thread() else None
        if not callable(handler):
            yield
            return

        def named(signum, frame):
            try:
                handler(signum, frame)
            except Exception as err:  # noqa: BLE001 - submitit's "not requeued" error
                limit = f" of {self.time_min} min" if self.time_min else ""
                raise SlurmTimeLimitError(f"TIMEOUT: the Slurm time limit{limit} ran out and the job may not be requeued "
                                          f"again ({err})") from None

        signal.signal(sig, named)
        try:
            yield
        finally:
            signal.signal(sig, handler)


@dataclass
class _Submitted:
    index: int  # in the jobs given to run
    job: Job
    handle: Any  # submitit's Job
    before: tuple | None  # the run's result.json (inode, mtime, size) at submission
    ended_since: float | None = None


class SlurmExecutor:
    """Runs each job as a Slurm job through submitit; the jobs of one :meth:`run` form one job
    array, at most ``workers`` running at once (``None``: as many as Slurm schedules). submitit's
    files (the jobs' stdout/stderr) go to ``log_dir`` (default: ``slurm`` beside the run
    directories' folder), which, like the run directories, must be on a file system the nodes share.
    """

    name = "slurm"

    def __init__(self, config: SlurmConfig = SlurmConfig(), workers: int | None = None,
                 log_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers: at least 1, got {workers!r}")
        self.config = config
        self.workers = workers
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.log = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        self._submitit = _config.require("submitit", "cluster")

    def __enter__(self) -> "SlurmExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass  # jobs are cancelled by run() when it is interrupted; nothing else is held

    def describe(self, n: int) -> str:
        """How ``n`` runs will run, for the engine's first log line."""
        at = f", {min(self.workers, n)} at a time" if self.workers else ""
        return f"as Slurm jobs{at}"

    # -- submitting

    def _folder(self, jobs: Sequence[Job]) -> Path:
        if self.log_dir is not None:
            return self.log_dir
        return Path(os.path.commonpath([str(j.out.parent.absolute()) for j in jobs])) / "slurm"

    def _executor(self, folder: Path):
        c = self.config
        ex = self._submitit.SlurmExecutor(folder=folder, max_num_timeout=c.timeout_requeues)
        # The time-limit signal comes SIGNAL_DELAY_S before the limit, a quarter of a short limit before it: a
        # signal due at once could arrive before submitit's handler is in place, killing the job unnamed.
        params: dict[str, Any] = {"time": c.time_min, "cpus_per_task": c.cpus, "job_name": f"rlrs-{folder.parent.name}",
                                  "signal_delay_s": min(SIGNAL_DELAY_S, c.time_min * 15)}
        if c.partition:
            params["partition"] = c.partition
        if c.gpus:
            params["gpus_per_node"] = c.gpus
        if c.account:
            params["account"] = c.account
        if self.workers:
            params["array_parallelism"] = self.workers
        # --mem in MB: submitit's own conversion writes "1GB", which sbatch refuses.
        extra = {**({} if c.mem_gb is None else {"mem": f"{math.ceil(c.mem_gb * 1024)}M"}), **c.sbatch_options()}
        if extra:
            params["additional_parameters"] = extra
        ex.update_parameters(**params)
        return ex

    def _submit(self, jobs: Sequence[Job]) -> list[_Submitted]:
        folder = self._folder(jobs)
        files.make_dir(folder)
        ex = self._executor(folder)
        before = [_stamp(j.out) for j in jobs]
        try:
            with ex.batch():
                handles = [ex.submit(SlurmRun(j, self.config.time_min)) for j in jobs]
        except subprocess.CalledProcessError as err:
            raise ConfigError(f"--executor slurm: sbatch refused the jobs: {_text(err.output).strip() or err}; check "
                              "--slurm-partition, --slurm-account and --slurm-option (or [slurm] of --cluster-config)")\
                from None
        except Exception as err:
            if type(err).__name__ == "FailedJobError" or isinstance(err, OSError):
                raise ConfigError(f"--executor slurm: sbatch failed: {str(err).strip()}; check the --slurm-* options (or "
                                  "[slurm] of --cluster-config), and that sbatch works here (a login node of the "
                                  "cluster, SLURM_CONF)") from None
            raise
        ids = sorted({h.job_id.split("_")[0] for h in handles})
        self.log(f"  submitted {len(jobs)} run{'s' * (len(jobs) > 1)} as Slurm job{'s' * (len(ids) > 1)} "
                 f"{', '.join(ids)} (logs: {folder}; cancel: scancel {' '.join(ids)})")
        return [_Submitted(i, j, h, b) for i, (j, h, b) in enumerate(zip(jobs, handles, before))]

    # -- following

    def run(self, jobs: Sequence[Job], on_done: Callable[[Job, RunResult], None] | None = None,
            progress: bool = False) -> list[RunResult]:
        jobs = list(jobs)
        if not jobs:
            return []
        bar = _StepBar(jobs) if progress else None
        results: dict[int, RunResult] = {}
        pending: list[_Submitted] = []
        try:
            with _sigint_deferred():  # a Ctrl-C during sbatch: the jobs get their ids first, then are cancelled
                pending = self._submit(jobs)
            states: dict[str, tuple[str, str]] = {}
            last_look = -float("inf")
            told: set[str] = set()  # the reasons for pending jobs said so far
            while pending:
                # The queue every poll_s; sooner (once a second) where a job has a result to judge.
                since = time.monotonic() - last_look
                if since >= self.config.poll_s or (since >= 1.0 and any(
                        s.ended_since is not None or _has_result(s) for s in pending)):
                    states = _job_states([s.handle.job_id for s in pending])
                    last_look = time.monotonic()
                    self._tell_pending(states, told)
                still = []
                for s in pending:
                    r = self._finish(s, states.get(s.handle.job_id))
                    if r is None:
                        still.append(s)
                        continue
                    results[s.index] = r
                    if bar is not None:
                        bar.finish(s.index)
                    if on_done:
                        on_done(s.job, r)
                pending = still
                if bar is not None:
                    bar.poll()
                if pending:
                    time.sleep(min(1.0, self.config.poll_s))
        except BaseException as err:
            if pending:
                self._cancel(pending, stopped_by(err) if isinstance(err, KeyboardInterrupt) else
                             f"on an error of its own: {type(err).__name__}: {err}")
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[i] for i in range(len(jobs))]

    def _tell_pending(self, states: Mapping[str, tuple[str, str]], told: set[str]) -> None:
        """Say why jobs wait in the queue, once per reason (a reason that cannot clear by itself,
        such as a time limit above the partition's, with what to do: rlrs would wait for ever)."""
        waiting: dict[str, list[str]] = {}
        for jid, (state, reason) in states.items():
            if state == "PENDING" and reason not in ("", "None", "(null)") and reason not in told:
                waiting.setdefault(reason, []).append(jid)
        for reason, ids in sorted(waiting.items()):
            told.add(reason)
            fix = next((f for key, f in PENDING_FIXES.items() if reason.startswith(key)), None)
            self.log(f"  Slurm: {len(ids)} job{'s' * (len(ids) > 1)} pending ({reason})"
                     + (f": {fix}" if fix else "; still waiting"))

    def _finish(self, s: _Submitted, state: tuple[str, str] | None) -> RunResult | None:
        """The job's result once it has ended, else ``None``."""
        name, reason = state or ("", "")
        outcome = _outcome(s.handle) if _has_result(s) else None
        if outcome is not None and outcome[0] == "success" and outcome[1].status != "failed":
            return outcome[1]  # finished, stopped or diverged: the run's own record
        if name not in ENDED and name != "UNKNOWN_TO_SLURM":
            s.ended_since = None
            return None  # still queued or running (or writing its result), or requeued
        if s.ended_since is None:
            s.ended_since = time.monotonic()
        if ((outcome is None and name in ("COMPLETED", "FAILED")) or name in ("PREEMPTED", "UNKNOWN_TO_SLURM")) and \
                time.monotonic() - s.ended_since < RESULT_GRACE_S:
            # Its result file may be on its way over a shared disk; a preempted job may be requeued; a job
            # missing from one answer of the queue may be in the next.
            return None
        if outcome is not None and outcome[0] == "success" and name not in ENDED_BY_SLURM:
            return outcome[1]  # the run failed by itself and recorded why
        jid = s.handle.job_id
        said = None if outcome is None else outcome[1].error if outcome[0] == "success" else outcome[1]
        line = _last_exception_line(said or "")
        if line and "SlurmTimeLimitError" in line:
            name, reason, line = "TIMEOUT", "", None  # ended by itself at Slurm's time-limit signal
        if name == "UNKNOWN_TO_SLURM":
            why = f"Slurm job {jid} ended without a result and Slurm no longer knows it (squeue, sacct)"
        else:
            why = f"Slurm job {jid} ended {name}" + (f": {REASONS[name]}" if name in REASONS else "")
            if reason and reason not in ("None", "(null)"):
                why += f" (reason: {reason})"
        if line:  # what the run itself said
            why += f"; the run: {line}"
        tail = _log_tail(s.handle)
        return self._record(s, why + (f"\n--- Slurm job log (last lines) ---\n{tail}" if tail else ""))

    def _record(self, s: _Submitted, error: str, wait_s: float = LOCK_WAIT_S, cancelled_at: tuple | None = None
                ) -> RunResult:
        """A failed result for a job that Slurm ended, written to ``result.json`` unless the run holds
        a record that serves the job as it is (finished: a job cancelled before it started must not
        undo a run that had ended before), or a newer record of its own that is not a failure (it
        ended well before Slurm stopped it), or, for a job rlrs cancelled, the failure it recorded
        before the cancel (``cancelled_at``: ``result.json``'s stamp then): its own error, not the
        cancel, is why it failed; a failure recorded after the cancel is the cancel's doing. Not
        written where the job's process still holds the run after ``wait_s``: it then ends with a
        result of its own, or none, and either way the run is not taken for finished."""
        def keep(mine: RunResult) -> bool:  # (under the run's lock)
            now = _stamp(s.job.out)
            return now != s.before and (mine.status != "failed" or (cancelled_at is not None and now == cancelled_at))

        return record_lost(s.job, error, wait_s, keep)

    def _cancel(self, pending: Sequence[_Submitted], why: str) -> None:
        """Cancel the jobs of ``pending`` and record their runs interrupted (``why``: how rlrs stopped)."""
        ids = sorted({s.handle.job_id for s in pending})
        self.log(f"rlrs: cancelling {len(ids)} Slurm job{'s' * (len(ids) > 1)} ({' '.join(ids)}) ...")
        again = threading.Event()
        with _on_ctrl_c(again):  # another Ctrl-C stops the waiting below, never the recording
            stamps = [_stamp(s.job.out) for s in pending]  # what each run had recorded itself before the cancel
            done = _slurm(["scancel", *ids], 60)
            if done.returncode != 0:
                self.log(f"rlrs: scancel failed ({done.stderr.strip()}): cancel them yourself: scancel {' '.join(ids)}")
                return
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline and not again.is_set():  # until their processes are gone
                states = _job_states(ids, timeout_s=max(1.0, deadline - time.monotonic()))
                if states and all(states.get(i, ("",))[0] in ENDED | {"UNKNOWN_TO_SLURM"} for i in ids):
                    break
                time.sleep(0.2)
            for s, stamp in zip(pending, stamps):  # within the same wait: processes that outlive it are not waited for
                left = 0.0 if again.is_set() else max(0.0, deadline - time.monotonic())
                self._record(s, f"interrupted: Slurm job {s.handle.job_id} was cancelled when rlrs stopped ({why}); "
                                "run the same command again to continue (finished runs are reused)",
                             wait_s=left, cancelled_at=stamp)
        self.log("rlrs: run the same command again to continue: finished runs are reused, the others run again "
                 "(presets resume from their checkpoints)")


def _stamp(out: Path) -> tuple | None:
    try:
        st = os.stat(out / "result.json")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _has_result(s: _Submitted) -> bool:
    return s.handle.paths.result_pickle.exists()


def _outcome(handle) -> tuple[str, Any] | None:
    """``("success", RunResult)`` or ``("error", traceback text)`` from submitit's result file."""
    try:
        return "success", handle.result()
    except Exception as err:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError: the job's traceback
        return "error", str(err)


def _last_exception_line(text: str) -> str | None:
    return reason_line("failed", text) or None


def _log_tail(handle) -> str:
    lines: list[str] = []
    for path in (handle.paths.stderr, handle.paths.stdout):
        try:
            lines += Path(path).read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            pass
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _slurm(argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run a Slurm command (scancel, squeue, sacct) in a session of its own, so that a Ctrl-C at the
    terminal, meant for rlrs, does not kill it half-way; a failure to run it is a non-zero exit."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as err:
        return subprocess.CompletedProcess(list(argv), 1, "", str(err))


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b or "")


def _job_states(ids: Sequence[str], timeout_s: float = 60.0) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` from squeue (a job stays there a while after it ends:
    MinJobAge), then sacct for the rest; a job neither knows is ``UNKNOWN_TO_SLURM``. Each of
    them is given ``timeout_s`` to answer (a busy controller): no answer is an empty dict."""
    if not ids:
        return {}
    arrays = sorted({i.split("_")[0] for i in ids})
    found: dict[str, tuple[str, str]] = {}
    run = _slurm(["squeue", "-h", "-r", "-t", "all", "--jobs", ",".join(arrays), "-o", "%i|%T|%r"], timeout_s)
    for line in run.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = (parts[1].split()[0].rstrip("+") if parts[1] else "", parts[2])
    if run.returncode != 0 and "invalid job id" not in run.stderr.lower():
        return found  # the controller did not answer (not: it does not know these jobs)
    missing = [i for i in ids if i not in found]
    if missing:
        found.update(_sacct_states(missing, timeout_s))
        for i in missing:
            found.setdefault(i, ("UNKNOWN_TO_SLURM", ""))
    return found


def _sacct_states(ids: Sequence[str], timeout_s: float = 60.0) -> dict[str, tuple[str, str]]:
    run = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State"], timeout_s)
    out = {}
    for line in run.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 2 and parts[0] in ids and parts[1]:
            out[parts[0]] = (parts[1].split()[0].rstrip("+"), "")
    return out


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends (it then raises KeyboardInterrupt as usual)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    # Blocked, not only handled: the processes started inside (submitit's sbatch) inherit the block,
    # so a Ctrl-C at the terminal, which signals them too, cannot kill sbatch half-way through.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if blocked is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C that came meanwhile reaches the handler
        signal.signal(signal.SIGINT, previous)  # (which runs the pending handler first)
    if got:
        raise KeyboardInterrupt


__all__ = ["ClusterConfig", "Executor", "SlurmConfig", "SlurmExecutor", "SlurmRun", "SlurmTimeLimitError", "current",
           "executor_names", "load_cluster_config", "make_executor", "register", "using"]

