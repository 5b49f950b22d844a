"""How a run ended: the one outcome type (:class:`RunResult`) and the one rule that names its
status (:func:`status_of`), shared by the trainer, the zoo's task runs, the user's commands and the
engine that runs them all (re-exported as ``rlrs.engine.RunResult``).

    >>> status_of(reached_end=True)
    'finished'
    >>> status_of(reached_stop=True)
    'stopped'
    >>> status_of(reached_end=True, nonfinite=True)
    'diverged'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import config as _config

STATUSES = ("finished", "stopped", "diverged", "unstable", "failed")
INTERRUPTED = "interrupted by Ctrl-C"
"""The error of a run that Ctrl-C stopped (status ``failed``: the next call runs it again)."""
ABANDONED = "interrupted: rlrs stopped on an error of its own before this run ended"
TERMINATED = "interrupted: rlrs was stopped by SIGTERM (kill)"
"""The error of a run stopped because rlrs got SIGTERM, which it handles as Ctrl-C."""
"""The error of a run that rlrs stopped because rlrs itself failed (the error it then printed),
not the run: like an interrupted run, it runs again next time."""
RESUME_FIX = ("save checkpoints into $RLRS_RUN_DIR and load the newest at start-up; see examples/nanogpt.py "
              "--checkpoint-every")
"""What a script that starts over from step 0 when rlrs restarts it should do instead."""


def status_of(*, reached_end: bool = False, reached_stop: bool = False, nonfinite: bool = False,
              unstable: bool = False, error: bool = False) -> str:
    """The status of a run from how it ended: the one rule, for every kind of run. The first row
    that holds names it:

    ======================================================================  ==========
    how the run ended                                                       status
    ======================================================================  ==========
    a non-finite loss (``nonfinite``)                                       diverged
    an error: an exception, a failing exit status, Ctrl-C (``error``)       failed
    reached its last step, but too many steps were skipped or its final
    eval loss is not finite (``reached_end`` and ``unstable``)              unstable
    reached its last step (``reached_end``)                                 finished
    reached ``stop_at`` before its last step (``reached_stop``)             stopped
    anything else (it ended early, without an error)                        failed
    ======================================================================  ==========

        >>> status_of(reached_end=True, unstable=True), status_of(error=True, reached_stop=True)
        ('unstable', 'failed')
        >>> status_of()
        'failed'
    """
    if nonfinite:
        return "diverged"
    if error:
        return "failed"
    if reached_end:
        return "unstable" if unstable else "finished"
    return "stopped" if reached_stop else "failed"


@dataclass
class RunResult:
    """How a run ended. ``eval_steps``/``eval_loss`` is its eval-loss curve so far."""

    out: Path
    status: str  # finished | stopped | diverged | unstable | failed (STATUSES)
    steps: int = 0
    total_steps: int | None = None
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    final_train_loss: float | None = None
    tokens: int | None = None
    wall_s: float = 0.0
    error: str | None = None
    exit_code: int | None = None
    reused: bool = False
    compute_steps: int = 0  # steps trained by this call (0 when reused)
    # A command's compute over every attempt on this directory, from its reports (:func:`attempts`):
    # the steps its script ran (restarts included), of those the steps run again, and the step of
    # each attempt that was followed by a restart from the beginning (it does not resume).
    ran_steps: int | None = None
    ran_tokens: int | None = None
    rerun_steps: int = 0
    restarted_at: list[int] = field(default_factory=list)
    # Lines of its metrics.jsonl that are not records (``path:line: why``): skipped, never fatal.
    notes: list[str] = field(default_factory=list)
    # What the trainer alone knows (not in result.json: summary.json holds the count of skipped steps).
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (train.nonfinite = skip)
    already_done: bool = False  # resumed where it had already stopped: nothing was trained

    @property
    def final_eval_loss(self) -> float | None:
        v = self.eval_loss[-1] if self.eval_loss else None
        return v if v is not None and math.isfinite(v) else None

    def headline(self) -> str:
        """One line: the status and the final loss, or why it did not finish (:func:`reason_line`)."""
        note = f" ({len(self.notes)} damaged log line{'s' * (len(self.notes) > 1)} skipped: {self.notes[0]})" \
            if self.notes else ""
        if self.status == "finished" and self.final_eval_loss is not None:
            return f"finished in {self.wall_s:.1f}s, eval loss {self.final_eval_loss:.4f}{note}"
        if self.status == "stopped" and not self.error:  # stopped where the caller asked (stop_at)
            last = f", eval loss {self.final_eval_loss:.4f}" if self.final_eval_loss is not None else ""
            return f"stopped at step {self.steps} as asked, in {self.wall_s:.1f}s{last}{note}"
        return f"{self.status}: {reason_line(self.status, self.error)}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "steps": self.steps, "total_steps": self.total_steps,
            "eval_steps": self.eval_steps, "eval_loss": _config.json_safe(self.eval_loss),
            "final_eval_loss": self.final_eval_loss, "final_train_loss": _config.json_safe(self.final_train_loss),
            "tokens": self.tokens, "wall_s": self.wall_s, "error": self.error, "exit_code": self.exit_code,
            **({} if self.ran_steps is None else {
                "ran_steps": self.ran_steps, "ran_tokens": self.ran_tokens, "rerun_steps": self.rerun_steps,
                "restarted_at": self.restarted_at}),
            **({"notes": self.notes} if self.notes else {}),
        }

    @classmethod
    def from_dict(cls, out: Path, d: Mapping[str, Any]) -> "RunResult":
        return cls(
            out=out, status=d["status"], steps=int(d["steps"]), total_steps=d.get("total_steps"),
            eval_steps=[int(s) for s in d.get("eval_steps", [])],
            eval_loss=[math.nan if v is None else float(v) for v in d.get("eval_loss", [])],
            final_train_loss=d.get("final_train_loss"), tokens=d.get("tokens"), wall_s=float(d.get("wall_s", 0.0)),
            error=d.get("error"), exit_code=d.get("exit_code"), reused=True,
            ran_steps=d.get("ran_steps"), ran_tokens=d.get("ran_tokens"), rerun_steps=int(d.get("rerun_steps") or 0),
            restarted_at=[int(s) for s in d.get("restarted_at") or []], notes=list(d.get("notes") or []),
        )

    @property
    def interrupted(self) -> bool:
        """Whether rlrs stopped this run before it ended, at a Ctrl-C or on an error of its own
        (recorded as failed: it runs again, or resumes)."""
        return self.status == "failed" and (self.error or "").startswith("interrupted")

    def restart_note(self) -> str | None:
        """Why this command's compute exceeds its length, when its script started over from step 0
        after being stopped (``None`` when it never did): the fix is to resume."""
        if not self.restarted_at:
            return None
        at = f"step{'s' * (len(self.restarted_at) > 1)} " + ", ".join(str(s) for s in self.restarted_at)
        return (f"restarted from step 0 after it was stopped at {at}: the script does not resume, so "
                f"{self.rerun_steps} steps ran again; {RESUME_FIX}")


# A Python exception line, also as torchrun prefixes a rank's output ("[rank1]: ValueError: ...").
_EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]:\s*)?[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
# Launchers' wrappers around the real error: they name no cause of their own.
_WRAPPER_LINE = re.compile(r"ChildFailedError|CalledProcessError")


def _exception_line(text: str) -> str | None:
    """The last Python exception line of ``text`` that is not a launcher's wrapper: what went wrong,
    where torchrun ends its stderr with its own traceback and a banner of ``====`` and key : value lines."""
    for ln in reversed(text.strip().splitlines()):
        ln = ln.strip()
        if _EXCEPTION_LINE.match(ln) and not _WRAPPER_LINE.search(ln):
            return ln
    return None


def reason_line(status: str, error: str | None) -> str:
    """Why a run did not finish, in one line: a failure's exception line where its error has one (a
    rank's own error, not a launcher's banner), else the error's first line without the command.

        >>> reason_line("failed", "exit status 1; command: torchrun t.py\\n[rank1]: ValueError: bad\\n=====")
        '[rank1]: ValueError: bad'
        >>> reason_line("failed", "exit status 1; command: torchrun t.py\\n=====")
        'exit status 1'
    """
    text = (error or "").strip()
    # A diverged or stopped command was stopped by rlrs: what it then printed is not the reason.
    line = (status == "failed" and _exception_line(text)) or (text.splitlines() or [""])[0]
    return line.split("; command: ")[0]
