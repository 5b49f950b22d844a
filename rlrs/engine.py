"""The run engine: the one owner of run directories, and the one job pool.

Every experiment command (compare, lr-grid, tune, transfer, ablate, demo) describes each training
run as a spec and hands it here:

    >>> from rlrs.engine import CommandRun, PresetRun, execute, run_dir
    >>> spec = PresetRun(run_config("tiny-moe", "paper-moe", sets={"train.steps": 40}))  # doctest: +SKIP
    >>> spec = CommandRun("python train.py", plan=rlrs.presets.get("paper-dense"), seed=0)  # doctest: +SKIP
    >>> result = execute(spec, run_dir("runs", spec))                                     # doctest: +SKIP
    >>> result.status, result.final_eval_loss                                             # doctest: +SKIP

A spec is a run of rlrs's own trainer (:class:`PresetRun`: a resolved run config), a run of the
user's own command (:class:`CommandRun`: a shell command, the plan it trains with, a seed), or a
strategy-zoo run (:class:`rlrs.zoo.tasks.TaskRun`: a task, a strategy, a seed); any kind of run that
follows the run protocol (:class:`RunKind`) is owned the same way.
:func:`run_dir` content-addresses it: the same spec is always the same directory. :func:`execute`
gives a typed :class:`RunResult` and never raises for a run that fails. Its rules, written once:

- **Lock.** One ``flock`` per run directory (``.lock``, holding the owner's pid). The engine waits
  while the holder is alive (then reuses what it trained); ``rlrs train`` refuses at once, naming
  the holder.
- **Reuse.** ``result.json`` is the engine's record of a run. A finished run is reused; so is a
  diverged one (the same spec diverges again). A run stopped at ``stop_at`` is reused by any call
  that needs no more steps. A failed run (a crash, a kill, a non-zero exit) is run again.
- **Resume.** A preset run continues from its newest checkpoint. A command is started again: it
  resumes only if it checkpoints into ``$RLRS_RUN_DIR`` itself (see :mod:`rlrs.script`); one that
  starts over from step 0 has its re-run steps counted as compute (:func:`attempts`) and named
  (:meth:`RunResult.restart_note`). A zoo task run (seconds to minutes) starts again from the
  beginning.
- **Finished.** A command that exits 0 has finished only if it reported its last step, where its
  length is known (``steps``); one whose reports stop short ended early and is failed.
- **Failure record.** Every attempt ends in ``result.json``: the status, the error, and for a
  command its exit status and the tail of its stderr (the whole of this attempt's is in
  ``stderr.log``, the attempt before's in ``stderr.previous.log``; the same for stdout).
- **Process tree.** A command runs under a small launcher (``rlrs/_launcher.py``, a subreaper on
  Linux): when the command ends or is stopped, every process it started ends with it, also those
  it left in the background, ``setsid``-ed or double-forked.
- **Ctrl-C.** In :class:`Pool` (every experiment command), Ctrl-C stops the running runs at once
  (SIGTERM to each run's processes, SIGKILL after ``STOP_GRACE_S``), starts no other run, records
  each stopped run as failed with the error ``interrupted by Ctrl-C`` (so it runs again, or resumes
  from its checkpoints, when the same command runs again) and raises :class:`Interrupted`.

:class:`Pool` runs many specs at once in spawned worker processes, each with its share of the
cores this process may use (its CPU affinity) and, on a machine with several GPUs, its own GPU.

One module (about 1,400 lines, in sections: specs, results, the lock, executing one run, the job
pool) on purpose. How a run stops is one piece of state shared by the pool and the execution of a
run: a pool worker's Ctrl-C and the pool's stop flag (``_IN_WORKER``, ``_CTRL_C``, ``_POOL_STOP``)
are set by the pool and read by :func:`execute`, by the loop that watches a command and by
:func:`_training`; split into modules, every reader would go through another module's mutable
globals, and the order of the rules (lock, identity, reuse, run, record) would no longer read top
to bottom. The executors (:mod:`rlrs.executors`) and the run kinds of other packages (the zoo's
``TaskRun``) already live outside it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import hashlib
import json
import math
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from . import config as _config
from . import files
from .components import DEFAULT_TIED
from .config import ConfigError
# RunResult, STATUSES, reason_line and RESUME_FIX are known as the engine's too (rlrs.engine.RunResult).
from .outcome import (ABANDONED, INTERRUPTED, RESUME_FIX, TERMINATED, STATUSES, RunResult, _exception_line,  # noqa: F401
                      reason_line, status_of)
from .plan import Plan
from .runlog import Diverged, EvalCurve, EvalRecord, LogFollower, LogRead, Record, read_log
from .train import RunConfig, Trainer, total_steps

RESULT = "result.json"
STDERR_TAIL_LINES = 30
# A failed command's error shows its stderr's last lines from at most this many last bytes, and
# its exception line from at most STDERR_SCAN_BYTES: a run that writes gigabytes costs no memory.
STDERR_TAIL_BYTES = 64 * 1024
STDERR_SCAN_BYTES = 1024 * 1024
POLL_S = 0.2
STOP_GRACE_S = 10.0
"""How long a stopped run's processes have between SIGTERM and SIGKILL (Ctrl-C, a prune at a rung,
a divergence, a command's leftover processes)."""
_STOP_MARGIN_S = 5.0  # what the launcher, then a worker, may take on top of the grace to end its part
# How long a lock whose holder cannot be seen (another host, or a pid that is gone while the
# kernel still tears the process down) is waited for before the run is recorded as failed.
LOCK_WAIT_S = 10.0



# --- specs -----------------------------------------------------------------------------------------


class RunKind:
    """What the engine needs of a kind of run (the run protocol); a spec is a frozen dataclass
    that subclasses it, defined at the top level of its module (specs travel pickled to the pool's
    workers). The engine owns the rest: the directory, the lock, reuse, the failure record.

        >>> @dataclass(frozen=True)                                            # doctest: +SKIP
        ... class MyRun(RunKind):
        ...     seed: int = 0
        ...     prefix: ClassVar[str] = "mine"
        ...     def identity(self): return {"seed": self.seed}
        ...     def run(self, out, stop_at, progress): ...  # train into out -> RunResult

    A spec provides ``identity()`` (what makes two runs the same: hashed into its directory),
    ``prefix``, ``plan``, ``seed``, ``total_steps`` (``None`` where unknown before it runs) and
    ``run(out, stop_at, progress)``: train in this process into ``out`` (locked) and say how it
    ended. ``run`` may raise: :class:`rlrs.runlog.Diverged` makes the run ``diverged``, any other
    exception ``failed`` (with its traceback). It says what it supports: ``stops`` (it honours
    ``stop_at``) and ``resumes`` (a later attempt continues where this one stopped, so its compute is
    the steps beyond the log's last one); ``prepare(out)`` runs before the reuse check and
    ``changed(out)`` says whether ``out`` holds a run of another version of its code.
    """

    stops: ClassVar[bool] = True
    resumes: ClassVar[bool] = False
    prefix: str
    plan: Plan
    seed: int
    total_steps: int | None

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, out: Path, stop_at: int | None, progress: bool) -> "RunResult":
        raise NotImplementedError

    trains_here: bool = True
    """Whether ``run`` trains in this process (rlrs's own Python loop, which Ctrl-C interrupts)
    rather than watching another process that it stops itself (a command)."""

    def prepare(self, out: Path) -> None:
        """Called under the run's lock before a prior result is reused (nothing by default)."""

    def changed(self, out: Path) -> bool:
        """Whether ``out`` holds a run of another version of this spec's code (never, by default)."""
        return False

    def lost(self, out: Path, error: str) -> "RunResult":
        """The failed result of a run in ``out`` whose process was lost before it recorded one
        (:func:`lost_run`): its eval curve and the steps its log shows trained."""
        xs, ys = eval_curve(out)
        return RunResult(out, "failed", steps=_trained_steps(out), eval_steps=xs, eval_loss=ys, error=error)


RunSpec = RunKind


@dataclass(frozen=True)
class PresetRun(RunKind):
    """A run of rlrs's own trainer: everything is in the resolved run config. It continues from
    its newest checkpoint."""

    cfg: RunConfig
    resumes: ClassVar[bool] = True

    @property
    def plan(self) -> Plan:
        return self.cfg.plan

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    @property
    def total_steps(self) -> int:
        return total_steps(self.cfg)

    @property
    def prefix(self) -> str:
        return self.cfg.preset

    def identity(self) -> dict[str, Any]:
        ident = _config.identity(self.cfg)
        if self.cfg.model.tie_embeddings and _tie_matters(self.cfg.plan):
            ident["tied_default"] = DEFAULT_TIED
        return ident

    def run(self, out: Path, stop_at: int | None, progress: bool) -> "RunResult":
        done_before = _trained_steps(out)
        resume = Trainer.can_resume(out)
        if not resume:  # a start that died before its first checkpoint: start again cleanly
            Trainer.clear_partial(out)
        r = Trainer(self.cfg, out, resume=resume, progress=progress).run(stop_at=stop_at)  # with its eval curve
        r.tokens = r.steps * self.cfg.train.batch_size * (self.cfg.train.seq_len or self.cfg.model.seq_len)
        r.compute_steps = max(0, r.steps - done_before)
        return r


def _tie_matters(plan: Plan) -> bool:
    """Whether a tied model trains with the default tie (``DEFAULT_TIED``), and that choice changes
    what trains. A run that does names the default in its identity: runs named before the default
    became the embedding (they trained the unembedding) keep their names and are not reused as
    runs of the new default. Where both schedules are one (a uniform plan) nothing changes."""
    return plan.tied is None and DEFAULT_TIED != "unembedding" and plan.embedding != plan.unembedding


@dataclass(frozen=True)
class CommandRun(RunKind):
    """A run of the user's own command.

    The engine writes ``plan`` to ``RUN_DIR/plan.toml`` and starts ``command`` through the shell
    in ``cwd`` with ``RLRS_PLAN``, ``RLRS_RUN_DIR``, ``RLRS_SEED`` (and ``RLRS_STEPS`` when
    ``steps`` is given) in its environment; ``{plan}``, ``{run_dir}``, ``{seed}`` and ``{steps}``
    in the command are replaced by the same values. The script reports its eval losses with
    :func:`rlrs.report`; ``steps`` is its length in steps (needed for pruning at fractions of
    training; otherwise the last reported step is taken as the length).
    """

    command: str
    plan: Plan
    seed: int = 0
    steps: int | None = None
    cwd: str = "."

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise ConfigError("--command: empty; give the shell command that trains, e.g. --command 'python train.py'")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps: at least 1, got {self.steps}")
        try:
            self.command.format(plan="", run_dir="", seed="", steps="")
        except (KeyError, IndexError, ValueError) as err:
            what = f"{{{err.args[0]}}}" if isinstance(err, KeyError) else f"{err}"
            raise ConfigError(
                f"--command: {what} is not a placeholder; the command may use {{plan}}, {{run_dir}}, "
                "{seed} and {steps} (write {{ and }} for literal braces)"
            ) from None

    @property
    def total_steps(self) -> int | None:
        return self.steps

    @property
    def prefix(self) -> str:
        return "cmd"

    def identity(self) -> dict[str, Any]:
        ident = {"command": self.command, "plan": _config.identity(self.plan), "seed": self.seed, "steps": self.steps,
                 "cwd": str(Path(self.cwd).resolve())}
        if _tie_matters(self.plan):  # the engine cannot see the script's model: it may be tied
            ident["tied_default"] = DEFAULT_TIED
        return ident

    trains_here = False

    def run(self, out: Path, stop_at: int | None, progress: bool) -> "RunResult":
        return _execute_command(self, out, stop_at)

    def prepare(self, out: Path) -> None:
        _forget_other_code(self, out)

    def changed(self, out: Path) -> bool:
        then = _recorded_code(out)
        return then is not None and then != script_files(self)

    def lost(self, out: Path, error: str) -> "RunResult":
        # What its script ran still counts: the steps it reported, over every attempt.
        r = super().lost(out, error)
        ran = attempts(read_log(out).records)
        r.steps = max(r.eval_steps, default=0)
        r.ran_steps, r.ran_tokens, r.rerun_steps, r.restarted_at = (ran.ran_steps, ran.ran_tokens, ran.rerun_steps,
                                                                    ran.restarted_at)
        return r

    def shell_command(self, out: Path) -> str:
        q = shlex.quote
        return self.command.format(plan=q(str(out / "plan.toml")), run_dir=q(str(out)), seed=self.seed,
                                   steps="" if self.steps is None else self.steps)




def run_dir(root: str | Path, spec: RunSpec) -> Path:
    """The content-addressed directory of ``spec`` under ``root``: the same spec always maps to
    the same place, so a repeated or interrupted command finds (and reuses or resumes) its runs."""
    digest = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{spec.prefix}-{digest}"


# --- results ---------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``by``) stopped :meth:`Pool.run`. ``runs``: the runs it stopped, each
    recorded as interrupted in its ``result.json``; running the same command again runs them again
    (or resumes them) and reuses the runs that finished. A ``KeyboardInterrupt``: handlers of
    Ctrl-C catch it as before."""

    def __init__(self, runs: Sequence[RunResult] = (), by: str = "Ctrl-C"):
        super().__init__()
        self.runs = list(runs)
        self.by = by


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``) reached rlrs, which stops as at a Ctrl-C: its running runs stopped and
    recorded, its Slurm jobs cancelled (``rlrs.cli`` raises it from its SIGTERM handler)."""

    by = "SIGTERM"


def stopped_by(err: BaseException) -> str:
    """What stopped rlrs, in words: ``Ctrl-C`` or ``SIGTERM``."""
    return getattr(err, "by", "Ctrl-C")


def stopped_status(err: BaseException) -> int:
    """rlrs's exit status when ``err`` stopped it: 128 + the signal (130 at Ctrl-C, 143 at SIGTERM)."""
    return 128 + (signal.SIGTERM if stopped_by(err) == "SIGTERM" else signal.SIGINT)


def read_result(out: str | Path) -> RunResult | None:
    """The engine's record of the run in ``out``, or ``None`` if it has none (or it is damaged)."""
    path = Path(out) / RESULT
    try:
        return RunResult.from_dict(Path(out), json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_result(r: RunResult) -> RunResult:
    r.notes = read_log(r.out).warnings()  # damaged lines were skipped: say where, once, in the record
    files.write_json(r.out / RESULT, r.to_dict())
    return r


# --- the lock ----------------------------------------------------------------------------------------


class RunLocked(RuntimeError):
    """Another process is writing this run directory."""


class run_lock:
    """Exclusive ownership of a run directory (``with run_lock(out): ...``).

    ``wait=False`` refuses at once with :class:`RunLocked` naming the holder (``rlrs train``).
    ``wait=True`` waits while the holder (a pid on this host) is alive, and up to ``LOCK_WAIT_S``
    where it cannot tell, then raises the same error; ``timeout_s`` caps the whole wait (also for
    a live holder).

    Taking the lock and recording its holder are one step: the holder's record (pid, host) is
    written into a file of its own, which it ``flock``-s and then hard-links to ``.lock``; the link
    succeeds only where no ``.lock`` exists. So a ``.lock`` always holds its holder's complete
    record, and a refusal always names the holder. A ``.lock`` whose ``flock`` is free was left by
    a killed holder: the first process to ``flock`` it removes it (only a process holding a
    ``.lock``'s ``flock`` ever removes it), and the holder removes its own on release.
    """

    def __init__(self, out: str | Path, wait: bool = True, timeout_s: float | None = None):
        self.out = Path(out)
        self.wait = wait
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.f = None
        self.linked = True  # False on a file system without hard links (see _enter_without_links)

    def __enter__(self) -> "run_lock":
        import tempfile

        files.make_dir(self.out)
        path = self.out / ".lock"
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".lock.", suffix=".tmp")
        f = os.fdopen(fd, "r+")
        try:
            f.write(json.dumps(_holder_record()))
            f.flush()
            files.flock(f, wait=False)  # a file of our own: nobody else has it
            blind_since = None
            while True:
                try:
                    os.link(tmp, path)  # the lock is ours, with our record in it
                    break
                except FileExistsError:
                    pass
                except OSError as err:
                    if err.errno in _NO_HARD_LINKS:
                        f.close()
                        return self._enter_without_links(path)
                    raise
                state, holder = _look_at_lock(path)
                if state != "held":
                    continue  # released, or left by a killed holder (now removed): try again at once
                if not self.wait:
                    raise RunLocked(f"{self.out} is being written by {_describe(holder)}; wait for it to end or stop it")
                alive = holder is not None and holder.get("host") == socket.gethostname() and pid_alive(holder.get("pid"))
                if alive:
                    blind_since = None
                else:
                    blind_since = blind_since or time.monotonic()
                    if time.monotonic() - blind_since > LOCK_WAIT_S:
                        raise RunLocked(f"{self.out} is locked by {_describe(holder)}, which could not be seen "
                                        f"for {LOCK_WAIT_S:.0f} s; {_unlock_advice(holder, path)}")
                self._check_deadline(holder)
                time.sleep(0.1)
        except BaseException:
            if not f.closed:
                f.close()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # .lock keeps the file (a second name of it) while we hold it
        self.f = f
        return self

    def _enter_without_links(self, path: Path) -> "run_lock":
        """On a file system without hard links: ``flock`` ``.lock`` itself, then write the record
        (a refusal in between names "another process")."""
        self.linked = False
        self.f = open(path, "a+")
        blind_since = None
        while True:
            if files.flock(self.f, wait=False):
                break
            else:
                holder = self._holder()
                alive = holder is not None and holder.get("host") == socket.gethostname() and pid_alive(holder.get("pid"))
                if not self.wait:
                    self.f.close()
                    raise RunLocked(f"{self.out} is being written by {_describe(holder)}; wait for it to end or stop it")
                if alive:
                    blind_since = None
                else:
                    blind_since = blind_since or time.monotonic()
                    if time.monotonic() - blind_since > LOCK_WAIT_S:
                        self.f.close()
                        raise RunLocked(f"{self.out} is locked by {_describe(holder)}, which could not be seen "
                                        f"for {LOCK_WAIT_S:.0f} s; {_unlock_advice(holder, path)}")
                try:
                    self._check_deadline(holder)
                except RunLocked:
                    self.f.close()
                    raise
                time.sleep(0.1)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(json.dumps(_holder_record()))
        self.f.flush()
        return self

    def _check_deadline(self, holder: dict[str, Any] | None) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunLocked(f"{self.out} is still being written by {_describe(holder)}")

    def _holder(self) -> dict[str, Any] | None:
        return lock_holder(self.out)

    def __exit__(self, *exc) -> None:
        if self.f is None:
            return
        if self.linked:
            path = self.out / ".lock"
            with contextlib.suppress(OSError):  # remove our .lock, and only ours, while we still hold it
                if os.path.samestat(os.fstat(self.f.fileno()), os.stat(path)):
                    os.unlink(path)
        self.f.close()  # closing releases the lock
        self.f = None


# errno values of a file system that has no hard links (os.link fails): the lock falls back to
# flock on .lock alone.
_NO_HARD_LINKS = {getattr(errno, name) for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS")
                  if hasattr(errno, name)}


def _parse_holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text or "null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _look_at_lock(path: Path) -> tuple[str, dict[str, Any] | None]:
    """``("held", its record)`` if a live process holds ``path``; ``("free", None)`` if ``path``
    is gone, or was left unlocked by a killed holder (then it is removed)."""
    try:
        g = open(path, "r+")  # writable: on NFS flock is a POSIX lock, which an exclusive lock needs
    except FileNotFoundError:
        return "free", None
    with g:
        if not files.flock(g, wait=False):
            return "held", _parse_holder(g.read())  # written before the holder linked it: complete
        try:  # we hold a .lock nobody held; if it is still the one at the path, it is stale
            stale = os.path.samestat(os.fstat(g.fileno()), os.stat(path))
        except FileNotFoundError:
            stale = False
        if stale:
            os.unlink(path)
        return "free", None


def lock_holder(out: Path) -> dict[str, Any] | None:
    """The record (pid, host, Slurm job) of whoever holds, or last held, run ``out``'s lock."""
    try:
        return _parse_holder((out / ".lock").read_text())
    except (OSError, ValueError):  # gone, or not text
        return None


def _holder_record() -> dict[str, Any]:
    """Who holds a run's lock: this process, its host and, in a Slurm job, the job (array task)."""
    env = os.environ
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in env
           else env.get("SLURM_JOB_ID"))
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), **({"slurm_job": job} if job else {})}


def _describe(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "another process"
    job = f" (Slurm job {holder['slurm_job']})" if holder.get("slurm_job") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{job}"


def _unlock_advice(holder: Mapping[str, Any] | None, path: Path) -> str:
    # A holder on another host may be alive: its lock must not be removed while it writes.
    if holder and holder.get("slurm_job"):
        job = holder["slurm_job"]
        return (f"if `squeue -j {job}` still shows it, wait for it to end or `scancel {job}`; remove {path} only "
                "once it has ended")
    return f"stop it, or remove {path} once it has ended"


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host (``False`` for a pid that is not a number > 0)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- executing one run ---------------------------------------------------------------------------------


def execute(spec: RunSpec, out: str | Path, stop_at: int | None = None, progress: bool = False) -> RunResult:
    """Run ``spec`` in ``out`` up to ``stop_at`` steps (default: to the end), reusing or resuming
    what ``out`` holds. Never raises for a run that fails: the :class:`RunResult` says why."""
    out = Path(out)
    t0 = time.perf_counter()
    try:
        with run_lock(out, wait=True):
            r = _execute_locked(spec, out, stop_at, progress)
    except (RunLocked, OSError, ConfigError) as err:
        return RunResult(out, "failed", error=f"{type(err).__name__}: {err}", wall_s=time.perf_counter() - t0)
    except RunEnded:
        raise
    except Exception:  # noqa: BLE001 - a bug of rlrs or of a run kind: a failed run, never a crashed pool
        r = RunResult(out, "failed", error=traceback.format_exc(limit=8), wall_s=time.perf_counter() - t0)
        with contextlib.suppress(OSError):
            _write_result(r)
        return r
    if r.interrupted and not _IN_WORKER:  # recorded; now Ctrl-C goes on to stop the caller
        raise KeyboardInterrupt
    return r


def _execute_locked(spec: RunSpec, out: Path, stop_at: int | None, progress: bool) -> RunResult:
    identity = out / "spec.json"
    mine = json.loads(json.dumps(spec.identity(), sort_keys=True))
    if identity.exists():
        try:
            theirs = json.loads(identity.read_text())
        except ValueError:
            theirs = None
        if theirs != mine:
            return _write_result(RunResult(out, "failed", error=f"ConfigError: {out} holds a run of another spec; "
                                                                  "remove it or choose another --out"))
    else:
        files.atomic_write_text(identity, json.dumps(mine, indent=1, sort_keys=True) + "\n")
    spec.prepare(out)
    prior = read_result(out)
    if prior is not None and _reusable(prior, stop_at):
        return prior
    if stop_at is not None and not spec.stops:
        return _write_result(RunResult(out, "failed", error=f"ConfigError: stop_at: a {type(spec).__name__} trains to "
                                                              "its end (it restarts instead of resuming); drop stop_at"))
    return _write_result(_run(spec, out, stop_at, progress))


class RunEnded(Exception):
    """Raised inside a run that what runs it is ending (a scheduler's time limit): not a failure of
    the run's own code, so :func:`execute` lets it through to the executor, which records the run
    in its own words (``Slurm job 12_0 ended TIMEOUT``)."""


def _run(spec: RunSpec, out: Path, stop_at: int | None, progress: bool) -> RunResult:
    """``spec.run`` in this process: a divergence or any exception becomes its result (what the
    log holds: the steps trained, the eval curve), never a crash of the caller."""
    t0 = time.perf_counter()
    before = _trained_steps(out) if spec.resumes else 0
    try:
        # Ctrl-C raises KeyboardInterrupt only where rlrs trains in this process; a command's
        # watch loop stops its run itself (see _training).
        with _training() if spec.trains_here else contextlib.nullcontext():
            return spec.run(out, stop_at, progress)
    except RunEnded:
        raise
    except KeyboardInterrupt as err:  # its checkpoints stay: the next call resumes from the newest
        status, error = status_of(error=True), TERMINATED if isinstance(err, Terminated) else _interruption()
    except Diverged as err:
        status, error = status_of(nonfinite=True), str(err)
    except Exception:  # noqa: BLE001 - recorded in result.json and shown in reports, never dropped
        status, error = status_of(error=True), traceback.format_exc(limit=8)
    log = read_log(out)
    steps = log.trained_steps()
    xs, ys = log.eval_curve()
    tokens = max((r.tokens for r in log.train if r.tokens is not None), default=None)
    return RunResult(out, status, steps, spec.total_steps, xs, ys, None, tokens, time.perf_counter() - t0, error,
                     compute_steps=max(0, steps - before))


NOTE_FILE = "next-attempt.note"  # what the next attempt's stderr.log begins with (its script changed)
CODE_FILE = "code.json"  # the sha256 of each file a command names, as it was when the run started
# What counts as the script: code and configuration, not logs or data (hashed under the run's lock).
SCRIPT_SUFFIXES = (".py", ".sh", ".toml", ".json", ".yaml", ".yml", ".cfg", ".ini")


def script_files(spec: CommandRun) -> dict[str, str]:
    """The sha256 of every file the command names (``python train.py --x`` → ``train.py``),
    relative to its ``cwd``: a run of an edited script is not the same run, though its command is."""
    try:
        words = shlex.split(spec.command.format(plan="", run_dir="", seed="", steps=""))
    except ValueError:
        words = spec.command.split()
    hashes = {}
    for before, word in zip([""] + words, words):
        if before.endswith((">", ">>", "|")) or before == "tee" or ">" in word or word.startswith("-"):
            continue  # what the command writes (a redirection's or tee's target) is output, not code
        path = Path(spec.cwd) / word
        if word.endswith(SCRIPT_SUFFIXES) and path.is_file():
            hashes[word] = files.sha256_file(path)
    return hashes


def _forget_other_code(spec: CommandRun, out: Path) -> None:
    # A run made by another version of the script (the command's files changed since it started)
    # must not be reused, nor resumed from its checkpoints: clear it, so it trains again from the
    # start. Runs recorded before code.json existed are trusted as they are. The note saying so
    # (NOTE_FILE) heads the next attempt's stderr.log, also where rlrs stops before that attempt.
    now = script_files(spec)
    then = _recorded_code(out)
    if then is not None and then != now:
        changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        for child in out.iterdir():
            if child.name != "spec.json" and not child.name.startswith(".lock"):  # the lock and its records stay
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        files.atomic_write_text(out / NOTE_FILE, f"rlrs: {', '.join(changed)} changed since this run started: it "
                                                 "trains again from the start\n")
    if then != now:
        files.write_json(out / CODE_FILE, now, sort_keys=True)


def _recorded_code(out: Path) -> dict[str, str] | None:
    """The script files' hashes a run recorded when it started (``None``: recorded before code.json
    existed, or never started)."""
    try:
        return json.loads((out / CODE_FILE).read_text())
    except (OSError, ValueError):
        return None


def reusable(out: str | Path, stop_at: int | None = None, spec: RunSpec | None = None) -> bool:
    """Whether the run in ``out`` would be reused as it is (no training) by :func:`execute`
    (``spec``: a command run is not reused when its script changed since)."""
    prior = read_result(out)
    return prior is not None and _reusable(prior, stop_at) and not (spec is not None and _other_code(spec, Path(out)))


def _other_code(spec: RunSpec, out: Path) -> bool:
    """Whether ``out`` holds a run of another version of the spec's code (a command's script files)."""
    return spec.changed(out)


def _reusable(prior: RunResult, stop_at: int | None) -> bool:
    if prior.status in ("finished", "diverged", "unstable"):  # another attempt would end the same way
        return True
    return prior.status == "stopped" and stop_at is not None and prior.steps >= stop_at


def _trained_steps(out: Path) -> int:
    return read_log(out).trained_steps()


def eval_curve(out: Path, key: str = "eval_loss") -> tuple[list[int], list[float]]:
    """The eval-loss curve (or another eval metric, ``key``) in ``metrics.jsonl``
    (:class:`rlrs.runlog.EvalCurve`: a report at step ``s`` after later ones replaces them)."""
    return read_log(out).eval_curve(key)


def _nonfinite_report(log: LogRead, step: int) -> str:
    """Why a run diverged, in the words of what it reported at ``step``: ``rlrs.report`` logs a
    non-finite loss as null with the value in ``nonfinite`` (``inf``, ``-inf`` or ``nan``)."""
    what = "null"
    for r in log.evals:
        if r.step == step:  # the last report at that step counts
            what = str(r.nonfinite or "null") if r.eval_loss is None else repr(r.eval_loss)
    return f"reported a non-finite eval loss ({what}) at step {step}"


class _EvalWatch:
    """Follows a running command's eval curve: each look reads only what was appended since the
    last one (a long run's log is not parsed again five times a second)."""

    def __init__(self, out: Path):
        self.follow = LogFollower(out)
        self.curve = EvalCurve()

    def look(self) -> tuple[list[int], list[float]]:
        new = self.follow.poll()
        if self.follow.restarted:
            self.curve = EvalCurve()
        return self.curve.extend(new).points()


_COMMANDS: set[subprocess.Popen] = set()
"""The user's commands this process is running: a terminated pool worker stops them first."""

_LAUNCHER = Path(__file__).with_name("_launcher.py")


def _new_attempt_log(path: Path) -> None:
    """Start this attempt's log afresh and keep only the previous attempt's, as
    ``NAME.previous.log``: a run retried again and again does not pile up every attempt's output."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size:
            os.replace(path, path.with_name(f"{path.stem}.previous{path.suffix}"))


def _execute_command(spec: CommandRun, out: Path, stop_at: int | None) -> RunResult:
    t0 = time.perf_counter()
    _config.require("psutil", "commands")  # the launcher needs it to end the command's processes
    spec.plan.save(out / "plan.toml")
    records_before = len(read_log(out).records)
    env = dict(os.environ)
    env.update({"RLRS_PLAN": str(out / "plan.toml"), "RLRS_RUN_DIR": str(out), "RLRS_SEED": str(spec.seed)})
    if spec.steps is not None:
        env["RLRS_STEPS"] = str(spec.steps)
    threads = env.get("RLRS_THREADS")
    if threads:  # the pool's share of the cores, unless the user chose
        env.setdefault("OMP_NUM_THREADS", threads)
    for name in ("stdout.log", "stderr.log"):
        _new_attempt_log(out / name)
    with open(out / "stdout.log", "ab") as so, open(out / "stderr.log", "ab") as se:
        with contextlib.suppress(FileNotFoundError):
            se.write((out / NOTE_FILE).read_bytes())
            se.flush()
            (out / NOTE_FILE).unlink()
        se_start = se.tell()
        # The launcher runs the command through the shell and ends every process it started when
        # it ends (see rlrs/_launcher.py); -P: rlrs/ is not put on its sys.path. Its own session
        # and process group: Ctrl-C at the terminal reaches rlrs, which stops the run itself.
        proc = subprocess.Popen([sys.executable, "-P", str(_LAUNCHER), str(STOP_GRACE_S), str(os.getpid()),
                                 spec.shell_command(out)], cwd=spec.cwd, env=env, stdout=so, stderr=se,
                                start_new_session=True)
        _COMMANDS.add(proc)
        # How it ended (the status is status_of's): why it failed or diverged, whether rlrs stopped it at stop_at.
        why, nonfinite, stopped = None, False, False
        watch = _EvalWatch(out)
        try:
            while proc.poll() is None:
                if _stop_requested():  # Ctrl-C, in a pool worker
                    why = _interruption()
                    _stop(proc)
                    break
                time.sleep(POLL_S)
                xs, ys = watch.look()
                bad = [(s, v) for s, v in zip(xs, ys) if not math.isfinite(v)]
                if bad:
                    nonfinite, why = True, _nonfinite_report(read_log(out), bad[0][0])
                    _stop(proc)
                elif stop_at is not None and xs and xs[-1] >= stop_at and (spec.steps is None or stop_at < spec.steps):
                    stopped = True
                    _stop(proc)
        except KeyboardInterrupt as err:  # Ctrl-C where execute runs in this process: recorded, then raised again
            _stop(proc)
            why = TERMINATED if isinstance(err, Terminated) else INTERRUPTED
        except BaseException:
            _stop(proc)  # never leave the user's training running when rlrs stops
            raise
        finally:
            _COMMANDS.discard(proc)
    code = proc.returncode
    log = read_log(out)
    xs, ys = log.eval_curve()
    bad = [(s, v) for s, v in zip(xs, ys) if not math.isfinite(v)]
    settled = why is not None or stopped  # rlrs stopped it: how it then exited is not how it ended
    if bad and not settled:
        nonfinite, why = True, _nonfinite_report(log, bad[0][0])
    tail = _tail(out / "stderr.log", se_start)
    reached_end = False
    if not settled and not nonfinite:
        if code != 0:
            # A shell reports a child killed by signal N as 128 + N.
            sig = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
            why = f"exit status {code}" + (f" (killed by signal {sig})" if sig else "")
        elif not xs:
            why = ("exit status 0 but it never called rlrs.report(step, loss): no eval loss to compare; call it "
                   "at the script's eval points")
        elif spec.steps is not None and xs[-1] < spec.steps:
            why = (
                f"reported up to step {xs[-1]} of {spec.steps}: the script ended early (exit status 0); train "
                f"for rlrs.script.steps(default) steps (it reads $RLRS_STEPS) and report the last one too: "
                f"rlrs.report({spec.steps}, eval_loss)")
        else:
            reached_end = True
    status = status_of(reached_end=reached_end, reached_stop=stopped, nonfinite=nonfinite, error=why is not None)
    error = None
    if why is not None:
        if why in (INTERRUPTED, ABANDONED, TERMINATED):  # stopped by rlrs, not failing: what it printed is not the reason
            tail = ""
        error = f"{why}; command: {spec.shell_command(out)}" + (f"\n--- stderr (last lines) ---\n{tail}" if tail else "")
    steps = xs[-1] if xs else 0
    total = spec.steps if spec.steps is not None else (steps if status == "finished" else None)
    done, before = attempts(log.records), attempts(log.records[:records_before])
    return RunResult(out, status, steps, total, xs, ys, None, _reported_tokens(log), time.perf_counter() - t0,
                     error, code, compute_steps=done.ran_steps - before.ran_steps, ran_steps=done.ran_steps,
                     ran_tokens=done.ran_tokens, rerun_steps=done.rerun_steps, restarted_at=done.restarted_at)


@dataclass(frozen=True)
class Attempts:
    """What a command's eval reports say about the attempts that wrote them (:func:`attempts`)."""

    ran_steps: int  # steps its script ran over all attempts, restarts included
    ran_tokens: int | None  # the same in tokens, where the script reports them
    rerun_steps: int  # of ran_steps, steps run again after going back (a restart, an older checkpoint)
    restarted_at: list[int]  # the step of each attempt that a restart from the beginning followed


def attempts(recs: Sequence[Record]) -> Attempts:
    """Read a command's attempts from its ``metrics.jsonl`` records, in the order written.

    An attempt's reports rise; a report at a step no later than the one before it is a new attempt.
    One that reports the run's first step again (step 0, or the step of its very first report)
    started over from the beginning: it ran from step 0. One that reports a later step again went
    back to a checkpoint there (or re-evaluated where it resumed): it ran from that step. A script
    that resumes and reports only new steps continues its attempt. So ``ran_steps`` counts every
    step a script reported having run, each restart's again (steps between an attempt's last report
    and its stop, and before a resumed attempt's first report, are not visible and not counted).

        >>> a = attempts([EvalRecord(s) for s in (0, 2, 4, 0, 2, 4, 6, 8, 10)])
        >>> a.ran_steps, a.rerun_steps, a.restarted_at
        (14, 4, [4])
        >>> attempts([EvalRecord(s) for s in (0, 2, 4, 6, 8, 10)]).ran_steps  # resumed at 4
        10
    """
    evals = [(r.step, r.tokens) for r in recs if isinstance(r, EvalRecord)]
    if not evals:
        return Attempts(0, None, 0, [])
    origin = evals[0][0]
    spans: list[list[Any]] = []  # per attempt: [began, tokens then, last step, tokens then, furthest step before it]
    reached = 0
    restarted: list[int] = []
    for step, tok in evals:
        if spans and step > spans[-1][2]:  # the same attempt goes on
            spans[-1][2] = step
            spans[-1][3] = tok if tok is not None else spans[-1][3]
            continue
        if spans:
            reached = max(reached, spans[-1][2])
            if step <= origin and reached > origin:
                restarted.append(spans[-1][2])
        scratch = not spans or step <= origin
        spans.append([0, 0, step, tok, reached] if scratch else [step, tok, step, tok, reached])
    ran = sum(last - began for began, _, last, _, _ in spans)
    rerun = sum(max(0, min(before, last) - began) for began, _, last, _, before in spans)
    known = [(int(t1) - int(t0 or 0)) for _, t0, _, t1, _ in spans if t1 is not None]
    return Attempts(ran, sum(known) if known else None, rerun, restarted)


def _reported_tokens(log: LogRead) -> int | None:
    tokens = [r.tokens for r in log.evals if r.tokens is not None]
    return tokens[-1] if tokens else None


def _stop(proc: subprocess.Popen) -> None:
    """End a command's run: SIGTERM to its launcher, which passes it on to every process of the run
    and SIGKILLs those still there after ``STOP_GRACE_S``. Should the launcher itself not end (or be
    gone), SIGKILL whatever of the run is left: its descendants and its process group."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_GRACE_S + _STOP_MARGIN_S)
        return
    except subprocess.TimeoutExpired:
        pass
    import psutil

    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, start: int) -> str:
    """The last STDERR_TAIL_LINES lines a command wrote to stderr since ``start``, led by its root
    cause when that came earlier (a rank's exception above torchrun's own traceback and banner).
    Reads at most the last STDERR_TAIL_BYTES, and STDERR_SCAN_BYTES in all looking for the cause."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            begin = max(start, end - STDERR_TAIL_BYTES)
            f.seek(begin)
            block = f.read(end - begin)
            if begin > start:  # the first line began before the block: not whole
                block = block[block.find(b"\n") + 1:] if b"\n" in block else b""
            text = block.decode("utf-8", "replace")
            lines = text.strip().splitlines()
            cause = _exception_line(text)
            if cause is None and begin > start:
                cause = _exception_line_before(f, start, begin)
    except OSError:
        return ""
    tail = lines[-STDERR_TAIL_LINES:]
    if cause is not None and cause not in (ln.strip() for ln in tail):
        tail = [cause, "..."] + tail
    return "\n".join(tail)


def _exception_line_before(f, start: int, end: int) -> str | None:
    """The last exception line (:func:`_exception_line`) of ``f`` between ``start`` and ``end``,
    scanned backwards a block at a time over at most STDERR_SCAN_BYTES."""
    stop = max(start, end - STDERR_SCAN_BYTES)
    pos, rest = end, b""  # rest: the start of the line that ended the block read before
    while pos > stop:
        n = min(STDERR_TAIL_BYTES, pos - stop)
        pos -= n
        f.seek(pos)
        block = f.read(n) + rest
        rest = b""
        if pos > start:  # its first line may begin in the block before: it is read with that one
            cut = block.find(b"\n") + 1
            # Of a line longer than a block only its first STDERR_TAIL_BYTES are kept: its start is
            # what an exception line is known by, and memory stays bounded.
            rest, block = block[:cut or len(block)][:STDERR_TAIL_BYTES], block[cut:] if cut else b""
        line = _exception_line(block.decode("utf-8", "replace"))
        if line is not None:
            return line
    return None


# --- the job pool ------------------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``taskset``, a batch scheduler's cpuset)
    where the OS reports one, else every core. Threads beyond it only fight over the same cores."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Runs at once by default: one per usable core, at most 4."""
    return max(1, min(usable_cores(), 4))


@dataclass(frozen=True)
class Job:
    """One run for the pool: ``spec`` in ``out``, up to ``stop_at`` steps (``None``: the end)."""

    spec: RunSpec
    out: Path
    stop_at: int | None = None
    label: str = ""


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# Ctrl-C in a pool worker. The worker's own Ctrl-C (the terminal sends SIGINT to the whole
# foreground process group) sets _CTRL_C; the pool's flag (_POOL_STOP) is set by the parent,
# which also sends SIGINT, when it got Ctrl-C alone or a worker was still starting. Either way no
# run starts any more and a running command is stopped by the loop that watches it. Python code
# (rlrs's own training) watches nothing: there SIGINT raises KeyboardInterrupt, only inside
# _training() and only once, so it never lands in the worker's loop nor in the recording of a run.
_IN_WORKER = False
_CTRL_C = threading.Event()
_POOL_STOP = None  # the pool's shared flag, in a worker (a RawValue: no semaphore to leak at a kill -9)
_TRAINING = False


def _stop_requested() -> bool:
    return _CTRL_C.is_set() or (_POOL_STOP is not None and bool(_POOL_STOP.value))


_STOP_AT_CTRL_C, _STOP_ON_ERROR, _STOP_AT_SIGTERM = 1, 2, 3  # the pool's flag: why it stops its runs


def _interruption() -> str:
    """Why this run is being stopped, as its error: Ctrl-C, or an error of rlrs in the parent."""
    flag = _POOL_STOP.value if _POOL_STOP is not None else 0
    return {_STOP_ON_ERROR: ABANDONED, _STOP_AT_SIGTERM: TERMINATED}.get(flag, INTERRUPTED)


def _on_sigint(signum: int, frame=None) -> None:
    first = not _CTRL_C.is_set()
    _CTRL_C.set()
    if first and _TRAINING:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _training() -> Iterator[None]:
    """Where Ctrl-C in a pool worker raises KeyboardInterrupt: rlrs's own training of a run."""
    global _TRAINING
    _TRAINING = True
    try:
        if _IN_WORKER and _stop_requested():  # it came just before
            raise KeyboardInterrupt
        yield
    finally:
        _TRAINING = False


def _init_worker(slots, threads: int, parent: int, stop=None) -> None:
    global _IN_WORKER, _POOL_STOP
    _IN_WORKER, _POOL_STOP = True, stop
    signal.signal(signal.SIGINT, _on_sigint)  # it started with Ctrl-C ignored (Pool.run), until now
    # A terminated worker stops the user's commands it started (their own process groups) first.
    signal.signal(signal.SIGTERM, _terminated)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="rlrs-parent-watch").start()
    import torch

    torch.set_num_threads(threads)
    os.environ["RLRS_THREADS"] = str(threads)
    gpu = slots.get() if slots is not None else None
    if gpu is not None:  # one run per device: this worker sees only its own GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def _terminated(signum: int, frame=None) -> None:
    # Not SystemExit: the pool's worker loop catches BaseException from a job and would live on.
    for proc in list(_COMMANDS):
        _stop(proc)
    os._exit(128 + signum)


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    # A worker whose parent was killed (kill, OOM) would otherwise train on unseen, holding its
    # run's lock and a core. It stops as a killed run does (a --command's processes with it);
    # rerunning the command resumes the run from its last checkpoint. ``parent`` is the pid the
    # pool recorded, not getppid() here: a parent that died during start-up is caught too.
    while os.getppid() == parent:
        time.sleep(poll_s)
    _terminated(signal.SIGTERM)


def _work(job: Job) -> RunResult | None:
    """Run ``job`` in a pool worker; ``None``: not started, or stopped unrecorded, after Ctrl-C."""
    if _stop_requested():  # Ctrl-C came: start nothing more
        return None
    try:
        return execute(job.spec, job.out, job.stop_at)
    except KeyboardInterrupt:  # raised outside a run's own handling (a narrow window): nothing to add
        return None


class Pool:
    """Runs jobs in ``workers`` spawned processes (nothing leaks between runs), each with
    ``usable_cores() // workers`` threads and, with several GPUs, one GPU of its own.

        >>> with Pool(2) as pool:                                   # doctest: +SKIP
        ...     results = pool.run([Job(spec_a, out_a), Job(spec_b, out_b)])

    ``run`` returns results in job order; a worker process that dies (killed, out of memory) is a
    failed result and the pool is rebuilt for the next call. ``progress=True`` shows a bar over
    all the jobs' training steps with an ETA.

    Ctrl-C while ``run`` waits (from the terminal, which signals every worker too, or to this
    process alone) stops the running runs at once, starts no other, records each stopped run as
    interrupted and raises :class:`Interrupted`; so does any other exception there, which is then
    raised again. Neither that nor :meth:`close` waits more than a bounded time for a worker.
    """

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers: at least 1, got {workers!r}")
        self.workers = workers or default_workers()
        self._pool: cf.ProcessPoolExecutor | None = None
        self._stop_flag = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Shut the workers down. They are idle (``run`` stops its runs before it returns or
        raises) and exit within seconds (an interpreter with torch takes a few to end); one that has
        not after ``STOP_GRACE_S`` and the margins (stuck in its start-up) is killed, not waited for."""
        pool, self._pool = self._pool, None
        if pool is not None:
            procs = _workers(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            _end_workers(procs, STOP_GRACE_S + 2 * _STOP_MARGIN_S)

    def _executor(self, n: int) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context("spawn")
            gpus = _gpu_count()
            slots = None
            if gpus > 1:
                slots = ctx.Manager().Queue()
                for i in range(self.workers):
                    slots.put(i % gpus)
            threads = max(1, usable_cores() // self.workers)
            self._stop_flag = ctx.RawValue("b", 0)
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(slots, threads, os.getpid(), self._stop_flag))
        return self._pool

    def run(self, jobs: Sequence[Job], on_done: Callable[[Job, RunResult], None] | None = None,
            progress: bool = False, _retry: bool = True) -> list[RunResult]:
        jobs = list(jobs)
        if not jobs:
            return []
        bar = _StepBar(jobs) if progress else None
        results: dict[int, RunResult] = {}

        def done(i: int, r: RunResult) -> None:
            results[i] = r
            if bar is not None:
                bar.finish(i)
            if on_done:
                on_done(jobs[i], r)

        futures: dict[cf.Future, int] = {}
        try:
            pool = self._executor(len(jobs))
            with _workers_ignore_ctrl_c():
                for i, job in enumerate(jobs):
                    futures[pool.submit(_work, job)] = i
            procs = _workers(pool)
            pending = set(futures)
            lost: list[int] = []  # jobs whose worker process died, or that the dying pool dropped
            while pending:
                finished, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    i = futures[fut]
                    try:
                        r = fut.result()
                    except Exception:  # noqa: BLE001 - a worker process died: the pool fails every job it holds
                        lost.append(i)
                        continue
                    if r is None or r.interrupted:  # a worker got Ctrl-C (sent to it alone): stop them all
                        raise KeyboardInterrupt
                    done(i, r)
                if bar is not None:
                    bar.poll()
            if lost:
                self._after_a_death(jobs, lost, procs, done, _retry)
        except BaseException as err:
            why = (_STOP_AT_SIGTERM if stopped_by(err) == "SIGTERM" else _STOP_AT_CTRL_C) \
                if isinstance(err, KeyboardInterrupt) else _STOP_ON_ERROR
            stopped = self._stop_runs(futures, why)
            if isinstance(err, KeyboardInterrupt):  # (from a rerun after a worker's death: its stopped runs too)
                raise Interrupted(stopped + getattr(err, "runs", []), by=stopped_by(err)) from None
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[i] for i in range(len(jobs))]

    def _after_a_death(self, jobs: Sequence[Job], lost: Sequence[int], procs: Sequence, done: Callable[[int, RunResult], None],
                       retry: bool) -> None:
        """A worker process died (killed, out of memory, a crash): Python's pool then fails every
        job it holds and ends the other workers. Only the runs that the dead worker was training
        (their lock names its pid) fail, recorded as such; the others, stopped by the pool's end or
        never started, run again at once on a fresh pool (once: a second death fails them all)."""
        # The pool's manager thread ends and joins its workers; until it has, reading an exit code
        # here races its join (waitpid in two threads: one of them sees no code).
        manager = getattr(self._pool, "_executor_manager_thread", None)
        self.close()  # a pool that lost a process refuses new work; this also waits for its workers to end
        if manager is not None:
            manager.join(STOP_GRACE_S + 2 * _STOP_MARGIN_S)
        died = {p.pid: p.exitcode for p in procs if p.exitcode not in (None, 128 + signal.SIGTERM, -signal.SIGTERM, 0)}
        again = []
        for i in lost:
            holder = lock_holder(jobs[i].out)
            pid = holder.get("pid") if holder and holder.get("host") == socket.gethostname() else None
            if pid in died or not retry:
                code = died.get(pid)
                why = f"worker process died (exit code {code})" if code is not None else "worker process died"
                done(i, record_lost(jobs[i], why + "; it runs again next time"))
            else:
                again.append(i)
        if again:
            redo = self.run([jobs[i] for i in again], lambda job, r: None, progress=False, _retry=False)
            for i, r in zip(again, redo):
                done(i, r)

    def _stop_runs(self, futures: Mapping[cf.Future, int], why: int = _STOP_AT_CTRL_C) -> list[RunResult]:
        """Stop every run in flight, as Ctrl-C does, and close the pool: the runs stopped and
        recorded as interrupted (``why``: at a Ctrl-C, or on an error of rlrs). Bounded: a worker that has not recorded its run after
        ``STOP_GRACE_S`` and the margins (or at a second Ctrl-C) is killed; its command's launcher
        then ends the command's processes, and the run, unrecorded, runs again next time."""
        pool, self._pool = self._pool, None
        if pool is None:
            return []
        again = threading.Event()
        with _on_ctrl_c(again):  # another Ctrl-C: wait no longer (never a KeyboardInterrupt half-way through)
            if self._stop_flag is not None:
                self._stop_flag.value = why  # no worker starts a run any more, also one still starting up
            procs = _workers(pool)
            for fut in futures:
                fut.cancel()  # not handed to a worker yet: never starts
            for p in procs:  # Ctrl-C to this process alone reaches the workers too (a second one is ignored)
                with contextlib.suppress(OSError, ValueError):
                    os.kill(p.pid, signal.SIGINT)
            busy = [f for f in futures if not f.done()]
            deadline = time.monotonic() + STOP_GRACE_S + 2 * _STOP_MARGIN_S
            while busy and not again.is_set() and time.monotonic() < deadline:
                busy = list(cf.wait(busy, timeout=0.1).not_done)
            pool.shutdown(wait=False, cancel_futures=True)
            _end_workers(procs, 0.0 if again.is_set() else 1.0)  # idle ones exit at the shutdown at once
        stopped = []
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                r = fut.result()
                if r is not None and r.interrupted:
                    stopped.append(r)
        return stopped


def _workers(pool: cf.ProcessPoolExecutor) -> list:
    # The executor keeps its worker processes (pid -> Process) in _processes, its only record of them.
    return list((getattr(pool, "_processes", None) or {}).values())


def _end_workers(procs: Sequence, wait_s: float) -> None:
    """Wait up to ``wait_s`` for worker processes to exit, SIGKILL those that have not (a killed
    worker's launchers end its commands' processes), and wait for those to go."""
    from multiprocessing.connection import wait as ready

    def wait(left: set, timeout: float) -> set:  # those still running after ``timeout``
        deadline = time.monotonic() + timeout
        with contextlib.suppress(KeyboardInterrupt):
            while left and time.monotonic() < deadline:  # ready() returns once any one is ready
                left = left - set(ready(list(left), timeout=max(0.0, deadline - time.monotonic())))
        return left

    sentinels = {}
    for p in procs:
        with contextlib.suppress(ValueError):  # a closed Process
            sentinels[p.sentinel] = p
    left = wait(set(sentinels), wait_s)
    for s in left:
        with contextlib.suppress(OSError, ValueError):
            sentinels[s].kill()
    wait(left, _STOP_MARGIN_S)


@contextlib.contextmanager
def _on_ctrl_c(event: threading.Event) -> Iterator[None]:
    """Ctrl-C inside sets ``event`` instead of raising KeyboardInterrupt (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes spawned inside ignore Ctrl-C until their own handler is installed
    (``_init_worker``): a Ctrl-C while one still imports torch would kill it with a traceback and
    break the pool. An ignored signal stays ignored across exec; a blocked one does not reach
    multiprocessing's spawned children. A Ctrl-C to this process in these milliseconds is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def record_lost(job: Job, error: str, wait_s: float = LOCK_WAIT_S,
                keep: Callable[[RunResult], bool] | None = None) -> RunResult:
    """:func:`lost_run`, written under the run's lock unless the run holds a record that serves the
    job (it finished before: a lost process never undoes a finished run) or one ``keep`` (called
    under the lock) says stands; that record is then returned. Not written where the run's lock
    stays held for ``wait_s`` (its process outlives what ended it): it runs again all the same.
    Every executor records its lost runs through it."""
    r = lost_run(job, error)
    try:
        with run_lock(job.out, wait=True, timeout_s=wait_s):
            prior = read_result(job.out)
            if prior is not None and (_reusable(prior, job.stop_at) or (keep is not None and keep(prior))):
                return prior
            _write_result(r)
    except (RunLocked, OSError):
        pass  # not recorded: the run has no result, or a failed one, so it runs again all the same
    return r


def lost_run(job: Job, error: str) -> RunResult:
    """The failed result of a run whose process was lost before it could record one (a worker
    killed, a Slurm job its scheduler ended): its eval curve and, for a command, the steps its
    script ran (they count as compute) as far as its log shows them (:meth:`RunKind.lost`). Every
    executor uses it."""
    return job.spec.lost(job.out, error)


class _StepBar:
    """A progress bar over the training steps of many runs, read from their logs (so it works
    for runs in other processes and for commands alike)."""

    def __init__(self, jobs: Sequence[Job]):
        tqdm = _config.require("tqdm", "progress").tqdm
        self.jobs = jobs
        self.target = [j.stop_at or j.spec.total_steps or 0 for j in jobs]
        self.seen = [0] * len(jobs)
        self.bar = tqdm(total=sum(self.target) or None, unit="step", dynamic_ncols=True,
                        desc=f"{len(jobs)} run{'s' * (len(jobs) > 1)}")
        self.poll()

    def _steps(self, i: int) -> int:
        return read_log(self.jobs[i].out).last_step()

    def poll(self) -> None:
        for i in range(len(self.jobs)):
            self._advance(i, min(self._steps(i), self.target[i] or self._steps(i)))

    def finish(self, i: int) -> None:
        self._advance(i, self.target[i] or self._steps(i))

    def _advance(self, i: int, steps: int) -> None:
        if steps > self.seen[i]:
            self.bar.update(steps - self.seen[i])
            self.seen[i] = steps

    def close(self) -> None:
        self.bar.close()


def run_all(jobs: Sequence[Job], workers: int | None = None, log: Callable[[str], None] | None = print,
            progress: bool = False, executor=None) -> list[RunResult]:
    """Run ``jobs`` (duplicates of one directory run once), logging one line per run. ``executor``
    (an :class:`rlrs.executors.Executor`, e.g. a Slurm cluster; the caller closes it) runs them;
    default: a local :class:`Pool` of ``workers``."""
    unique: dict[Path, Job] = {}
    for j in jobs:
        unique.setdefault(j.out, j)
    prior = {out: read_result(out) for out in unique}
    reused = {out for out, j in unique.items()
              if prior[out] is not None and _reusable(prior[out], j.stop_at) and not _other_code(j.spec, out)}
    todo = [j for out, j in unique.items() if out not in reused]
    with contextlib.nullcontext(executor) if executor is not None else Pool(workers) as pool:
        if log:
            how = (pool.describe(len(todo)) if hasattr(pool, "describe")
                   else f"{min(pool.workers, len(todo))} at a time")
            log(f"{len(unique)} runs: {len(reused)} reused, {len(todo)} to run" + (f" ({how})" if todo else ""))
        count = [len(reused)]

        def on_done(job: Job, r: RunResult) -> None:
            count[0] += 1
            if log:
                log(f"  [{count[0]}/{len(unique)}] {job.label or job.out.name}: {r.headline()}")

        try:
            ran = pool.run(todo, on_done, progress=progress and bool(todo))
        except Interrupted as err:
            if log:
                for r in err.runs:
                    log(f"  {next((j.label for j in todo if j.out == r.out and j.label), r.out.name)}: "
                        f"{(r.error or INTERRUPTED).split(';')[0]} (recorded; it runs again next time)")
            raise
        new = dict(zip((j.out for j in todo), ran))
    by_out = {out: prior[out] for out in reused} | new
    return [by_out[j.out] for j in jobs]


def iter_results(root: str | Path) -> Iterator[RunResult]:
    """Every run under ``root`` that has a record (for tools that look back over a directory)."""
    for d in sorted(Path(root).glob("*/")):
        r = read_result(d)
        if r is not None:
            yield r
