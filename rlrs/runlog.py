"""A run's log, ``metrics.jsonl``: its typed records, its one writer and its one reader.

    >>> from rlrs.runlog import EvalRecord, RunLog, read_log
    >>> with RunLog("runs/a/metrics.jsonl") as log:                      # doctest: +SKIP
    ...     log.append(EvalRecord(step=0, eval_loss=5.1, tokens=0))
    >>> got = read_log("runs/a")                                          # doctest: +SKIP
    >>> got.eval_curve(), got.problems                                    # doctest: +SKIP
    (([0], [5.1]), [])

The log is the contract between whatever trains (rlrs's trainer, a user's script through
:func:`rlrs.report`, the zoo's loop) and whatever reads (the engine, analysis, compare, the tuner).
One JSON object a line, each with a ``kind``:

- ``train`` (:class:`TrainRecord`): ``step`` (completed steps), ``loss`` (absent or null on a skipped
  step), ``tokens``, ``lr/<component>`` and any other number the trainer measured (``grad_norm``,
  ``tokens_per_s``, ``moe/*``, ``update_ratio/<component>`` ...);
- ``eval`` (:class:`EvalRecord`): ``step``, ``eval_loss`` (null when it was not finite, with
  ``nonfinite`` naming the value), ``tokens``, ``time`` and other numbers (``accuracy``, ``lr/*``);
- any other kind (:class:`EventRecord`), e.g. ``{"kind": "event", "event": "diverged"}``: kept
  with its payload.

The reader never raises on the log's content: a line that is not a valid record (not JSON, not an
object, a step that is not a whole number >= 0, a loss that is not a number, bytes that are not
UTF-8) is skipped and named in :attr:`LogRead.problems` with its line number; the records around it
stay. A last line without its newline is one being written (or cut short by a kill): it is read
if whole, else left out silently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from .config import json_safe

LOG = "metrics.jsonl"
Metric = Union[float, tuple[float, ...]]  # a measured number, or one per expert (``moe/expert_load``)


class Diverged(RuntimeError):
    """Training produced a non-finite loss (or gradient): the run ends ``diverged``. The one
    divergence exception of rlrs: the trainer and the zoo's loop raise it."""


# --- records -----------------------------------------------------------------------------------------


def _measured(lr: Mapping[str, float], metrics: Mapping[str, Metric], key: str) -> float:
    """``lr/<component>`` or a scalar metric of a record; NaN where it has none."""
    v = lr.get(key[3:], math.nan) if key.startswith("lr/") else metrics.get(key, math.nan)
    return v if isinstance(v, float) else math.nan


@dataclass(frozen=True)
class TrainRecord:
    """One training step: ``loss`` is ``None`` on a step skipped for a non-finite loss
    (``skipped``, with ``reason``); ``lr`` maps a component to its rate (``lr/<component>``);
    ``metrics`` holds every other number logged (NaN where the log has null)."""

    step: int
    loss: float | None = None
    tokens: int | None = None
    lr: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    skipped: bool = False
    reason: str | None = None

    kind = "train"

    def value(self, key: str) -> float:
        """``loss``, ``lr/<component>`` or a metric's value; NaN where this step has none."""
        if key == "loss":
            return math.nan if self.loss is None else self.loss
        return _measured(self.lr, self.metrics, key)

    def to_json(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": "train", "step": self.step}
        if self.tokens is not None:
            rec["tokens"] = self.tokens
        rec.update({f"lr/{c}": v for c, v in self.lr.items()})
        if self.skipped:
            rec.update({"skipped": True, "reason": self.reason})
        elif self.loss is not None:
            rec["loss"] = self.loss
        rec.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.metrics.items()})
        return rec


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation after ``step`` steps: ``eval_loss`` is ``None`` when it was not finite
    (``nonfinite`` says what it was: ``"nan"``, ``"inf"``, ``"-inf"``, when known)."""

    step: int
    eval_loss: float | None = None
    nonfinite: str | None = None
    tokens: int | None = None
    time: float | None = None
    lr: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, Metric] = field(default_factory=dict)

    kind = "eval"

    def value(self, key: str = "eval_loss") -> float:
        """``eval_loss`` (NaN where it was not finite) or another metric (``accuracy``)."""
        if key == "eval_loss":
            return math.nan if self.eval_loss is None else self.eval_loss
        return _measured(self.lr, self.metrics, key)

    @property
    def finite(self) -> bool:
        return self.eval_loss is not None and math.isfinite(self.eval_loss)

    def to_json(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": "eval", "step": self.step}
        if self.tokens is not None:
            rec["tokens"] = self.tokens
        rec["eval_loss"] = self.eval_loss if self.eval_loss is None or math.isfinite(self.eval_loss) else None
        if self.nonfinite is not None:
            rec["nonfinite"] = self.nonfinite
        if self.time is not None:
            rec["time"] = self.time
        rec.update({f"lr/{c}": v for c, v in self.lr.items()})
        rec.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.metrics.items()})
        return rec


@dataclass(frozen=True)
class EventRecord:
    """Any other kind of record (``event``: the trainer's ``diverged``), with what it holds."""

    kind: str
    step: int | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **({} if self.step is None else {"step": self.step}), **self.payload}


Record = Union[TrainRecord, EvalRecord, EventRecord]


@dataclass(frozen=True)
class Problem:
    """A line of the log that is not a record: its number (from 1) and why."""

    line: int
    why: str


class BadRecord(ValueError):
    """A JSON value that is not a valid record (the message says which field and why)."""


def _step(v: Any, required: bool = True) -> int | None:
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRecord(f"step {v!r} is not a whole number >= 0" if v is not None else "no step")
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise BadRecord(f"step {v!r} is not a whole number >= 0")
    if v < 0:
        raise BadRecord(f"step {v!r} is not a whole number >= 0")
    return int(v)


def _number(name: str, v: Any, nullable: bool = True) -> float | None:
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRecord(f"{name} {v!r} is not a number")
    return float(v)


def _count(name: str, v: Any) -> int | None:
    if v is None:
        return None
    try:
        return _step(v)
    except BadRecord:
        raise BadRecord(f"{name} {v!r} is not a whole number >= 0") from None


def _text(name: str, v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise BadRecord(f"{name} {v!r} is not text")
    return v


def _nan(name: str, v: Any) -> float:
    x = _number(name, v)
    return math.nan if x is None else x


def _numbers(rec: Mapping[str, Any], skip: Sequence[str]) -> tuple[dict[str, float], dict[str, Metric]]:
    """(``lr/*`` by component, every other field as a number or a list of numbers; null is NaN)."""
    lr, metrics = {}, {}
    for k, v in rec.items():
        if k in skip:
            continue
        if k.startswith("lr/"):
            lr[k[3:]] = _nan(k, v)
        elif isinstance(v, list):  # per-expert loads
            metrics[k] = tuple(_nan(k, x) for x in v)
        else:
            metrics[k] = _nan(k, v)
    return lr, metrics


def parse_record(obj: Any) -> Record:
    """The typed record of one decoded JSON line; :class:`BadRecord` says what is wrong."""
    if not isinstance(obj, dict):
        raise BadRecord(f"not a JSON object but {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise BadRecord("no \"kind\"" if kind is None else f"kind {kind!r} is not text")
    if kind == "train":
        lr, metrics = _numbers(obj, ("kind", "step", "loss", "tokens", "skipped", "reason"))
        skipped = obj.get("skipped", False)
        if not isinstance(skipped, bool):
            raise BadRecord(f"skipped {skipped!r} is not true or false")
        return TrainRecord(_step(obj.get("step")), _number("loss", obj.get("loss")), _count("tokens", obj.get("tokens")),
                           lr, metrics, skipped, _text("reason", obj.get("reason")))
    if kind == "eval":
        lr, metrics = _numbers(obj, ("kind", "step", "eval_loss", "nonfinite", "tokens", "time"))
        return EvalRecord(_step(obj.get("step")), _number("eval_loss", obj.get("eval_loss")),
                          _text("nonfinite", obj.get("nonfinite")), _count("tokens", obj.get("tokens")),
                          _number("time", obj.get("time")), lr, metrics)
    return EventRecord(kind, _step(obj.get("step"), required=False),
                       {k: v for k, v in obj.items() if k not in ("kind", "step")})


def _parse_line(raw: bytes) -> Record:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord(f"not UTF-8 text (byte {err.start})") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise BadRecord(f"damaged record {text[:60]!r}") from None
    return parse_record(obj)


# --- the writer ----------------------------------------------------------------------------------------


class RunLog:
    """The one writer of a run's log: each :meth:`append` is one line, flushed (a crash loses at
    most the line being written). ``path`` is the log file or its run directory.

        >>> with RunLog(out) as log:                                          # doctest: +SKIP
        ...     log.append(TrainRecord(step=1, loss=4.2, tokens=512))
    """

    def __init__(self, path: str | Path, mode: str = "a"):
        self.path = log_path(path)
        self.f = open(self.path, mode)

    def append(self, record: Record) -> None:
        self.f.write(json.dumps(json_safe(record.to_json()), allow_nan=False) + "\n")
        self.f.flush()

    def sync(self) -> None:
        """Flush to the disk (``fsync``): the log survives a power cut from here on."""
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rewrite(path: str | Path, records: Iterable[Record]) -> None:
    """Replace the log by ``records``, atomically (a resumed run cuts what follows its checkpoint)."""
    from .files import atomic_write_text

    atomic_write_text(log_path(path), "".join(json.dumps(json_safe(r.to_json()), allow_nan=False) + "\n"
                                              for r in records))


def log_path(path: str | Path) -> Path:
    """The log file of a run directory (a path to the file itself is taken as it is)."""
    path = Path(path)
    return path if path.name.endswith(".jsonl") else path / LOG


# --- the reader ----------------------------------------------------------------------------------------


@dataclass
class LogRead:
    """What a run's log holds: its records in the order written, and the lines that are not records."""

    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def train(self) -> list[TrainRecord]:
        return [r for r in self.records if isinstance(r, TrainRecord)]

    @property
    def evals(self) -> list[EvalRecord]:
        return [r for r in self.records if isinstance(r, EvalRecord)]

    def eval_curve(self, key: str = "eval_loss") -> tuple[list[int], list[float]]:
        """The eval curve (see :class:`EvalCurve`) of ``eval_loss`` or another eval metric."""
        return EvalCurve(key).extend(self.records).points()

    def trained_steps(self) -> int:
        """The last training step logged (0 before any)."""
        return max((r.step for r in self.train), default=0)

    def last_step(self) -> int:
        """The furthest step any record names (progress, for train and eval records alike)."""
        return max((r.step for r in self.records if r.step is not None), default=0)

    def warnings(self) -> list[str]:
        """One line per problem: ``path:line: why``."""
        return [f"{self.path}:{p.line}: {p.why}" for p in self.problems]


def read_log(path: str | Path) -> LogRead:
    """Read a run's log (``path``: the run directory or the file). A missing log is an empty one;
    a log that cannot be read at all (no permission) is one problem at line 0."""
    path = log_path(path)
    got = LogRead(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return got
    except OSError as err:
        got.problems.append(Problem(0, f"cannot be read: {err.strerror or err}"))
        return got
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            got.records.append(_parse_line(raw))
        except BadRecord as err:
            if i == len(lines) - 1:  # no newline yet: the line being written when it was read (or killed)
                break
            got.problems.append(Problem(i + 1, str(err)))
    return got


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's log as the JSON object it is on disk, for tests and tools that
    compare logs. Unlike :func:`read_log` it is strict: a damaged line raises, naming the file,
    the line and why (never a silent loss)."""
    got = read_log(out)
    if got.problems:
        raise ValueError(got.warnings()[0])
    return [r.to_json() for r in got.records]


class LogFollower:
    """Reads a growing log (a running command's): each :meth:`poll` returns only the records
    appended since the last one, and only whole lines (a line waits for its newline). A log that
    was replaced by a shorter one is read again from its start (``restarted`` is then true)."""

    def __init__(self, path: str | Path):
        self.path = log_path(path)
        self.offset = 0
        self.lines = 0
        self.restarted = False
        self.problems: list[Problem] = []

    def poll(self) -> list[Record]:
        self.restarted = False
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:  # replaced or truncated: start over
                    self.offset, self.lines, self.problems, self.restarted = 0, 0, [], True
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        new = []
        for raw in chunk[:end].split(b"\n")[:-1]:
            self.lines += 1
            if not raw.strip():
                continue
            try:
                new.append(_parse_line(raw))
            except BadRecord as err:
                self.problems.append(Problem(self.lines, str(err)))
        self.offset += end
        return new


class EvalCurve:
    """An eval curve built record by record. A report at step ``s`` after later ones means the
    run started again (or resumed from a checkpoint at ``s``): what it had reported from ``s`` on
    is replaced. ``key``: ``eval_loss`` (NaN where not finite) or another eval metric.

        >>> c = EvalCurve().extend([EvalRecord(0, 5.0), EvalRecord(10, 4.0), EvalRecord(0, 5.5)])
        >>> c.points()
        ([0], [5.5])
    """

    def __init__(self, key: str = "eval_loss"):
        self.key = key
        self.curve: dict[int, float] = {}

    def add(self, r: Record) -> None:
        if not isinstance(r, EvalRecord):
            return
        for later in [k for k in self.curve if k >= r.step]:
            del self.curve[later]
        self.curve[r.step] = r.value(self.key)

    def extend(self, records: Iterable[Record]) -> "EvalCurve":
        for r in records:
            self.add(r)
        return self

    def points(self) -> tuple[list[int], list[float]]:
        xs = sorted(self.curve)
        return xs, [self.curve[s] for s in xs]
