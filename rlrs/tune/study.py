"""The shared state of a search in an Optuna study: trials, claims, heartbeats (see :mod:`rlrs.tune`, Workers)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .. import config as _config
from ..config import ConfigError
from ..engine import pid_alive
from ..search import Result

STUDY_NAME = "rlrs-tune"


@dataclass(frozen=True)
class StudyOptions:
    """Where a search's trials live and how the processes sharing them coordinate.

    >>> StudyOptions(storage="journal:///tmp/tune.log", poll_s=0.5).name
    'rlrs-tune'
    """

    storage: str | None = None  # an Optuna storage URL; None: sqlite:///OUT/study.db
    name: str = STUDY_NAME
    poll_s: float = 2.0  # seconds between looks at other workers' claims
    heartbeat_s: float = 30.0  # how often a claim says its owner is alive
    stale_s: float = 300.0  # a claim without a heartbeat for this long is taken over

    def __post_init__(self) -> None:
        for key in ("poll_s", "heartbeat_s", "stale_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{key}: a number of seconds > 0, got {v!r}")
        if self.heartbeat_s >= self.stale_s:
            raise ConfigError(f"stale_s: must exceed heartbeat_s ({self.heartbeat_s} s), got {self.stale_s} s; "
                              "a live worker would be taken over")


_LIVE_OWNERS: set[str] = set()  # claim owners alive in this process (a stale one here is a crashed tune())


def storage_url(out: str | Path, storage: str | None) -> str:
    """``storage``, or the default SQLite file ``OUT/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def other_searches(out: Path, name: str) -> list[str]:
    """Studies other than ``name`` in ``out/study.db``: searches whose outputs (tuned.toml,
    search.json) would collide with this one's in the same folder."""
    db = Path(out) / "study.db"
    if not _has_schema(str(db)):  # no file, or one whose schema another process is creating now
        return []
    import optuna

    # Through open_storage: processes started together on one new file must not race on it.
    return [n for n in optuna.get_all_study_names(open_storage(f"sqlite:///{db}")) if n != name]


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _driver_url(url: str) -> str:
    """The SQLAlchemy URL of a storage URL: a plain ``postgresql://`` (or ``postgres://``) URL uses
    psycopg 3 (``postgresql+psycopg://``, the ``cluster`` extra); any other URL is kept as given."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        url = f"postgresql+psycopg://{rest}"
    if url.startswith("postgresql+psycopg:"):
        _config.require("psycopg", "cluster")
    return url


def open_storage(url: str):
    """An Optuna storage for ``url``: an RDB URL, or ``journal:///path/file.log`` (journal file)."""
    optuna = _config.require("optuna", "tune")
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ConfigError("storage: journal:///path/to/file.log names the journal file; the path is missing")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalStorage

        return JournalStorage(_journal_backend(path))
    if "://" not in url:
        raise ConfigError(
            f"storage: {url!r} is not a storage URL; use sqlite:///file.db, postgresql://user@host/db, "
            "mysql+pymysql://user@host/db or journal:///path/file.log"
        )
    if not url.startswith("sqlite"):
        # A database server: a pooled connection the server dropped (a restart, an idle timeout, a
        # terminated backend) is replaced when it is next checked out instead of failing a call.
        rdb_url = _driver_url(url)
        return _cached(optuna, _retry_init(lambda: optuna.storages.RDBStorage(
            rdb_url, engine_kwargs={"pool_pre_ping": True})))
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


def _journal_backend(path: str):
    """Optuna's journal file, except that an append that fails (a full disk) is undone: Optuna
    leaves the part it wrote, and the next record, glued to it, makes the whole journal unreadable."""
    from optuna.storages.journal import JournalFileBackend

    try:
        from optuna.storages.journal._file import get_lock_file
    except ImportError:  # another layout: Optuna's own appends
        return JournalFileBackend(path)

    class Backend(JournalFileBackend):
        def append_logs(self, logs):
            lock, file = getattr(self, "_lock", None), getattr(self, "_file_path", None)
            if lock is None or file is None:
                return super().append_logs(logs)
            with get_lock_file(lock):
                size = os.path.getsize(file) if os.path.exists(file) else 0
                try:
                    with open(file, "ab") as f:
                        f.write(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode())
                        f.flush()
                        os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        os.truncate(file, size)  # shrinking needs no space
                    raise

    return Backend(path)


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


from ..files import FileLock as _file_lock  # noqa: E402 - the one lock (waits; none without fcntl)


def _sqlite_wal(conn, _record) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


# --- storage failures: a lost connection, a full disk --------------------------------------------

# Seconds before each retry of a storage call that lost its database connection (with jitter): about
# a minute in all, so a server restart or a failover is waited out; then the search stops clearly.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

_KEPT = "finished trials are kept in the study, finished runs under --out"


class StorageError(ConfigError):
    """The study's storage failed: its connection is lost for good or its disk is full. The
    message names the storage (password hidden) and what to do; nothing finished is lost."""


def _failure(err: BaseException, url: str) -> tuple[str, str] | None:
    """``(kind, reason)`` of a storage failure found in ``err``'s chain: kind ``"full"`` (a full
    disk), ``"lost"`` (a database server's connection) or ``"db"`` (any other database error);
    ``None`` for errors that are not the storage's (Optuna's own, a bug)."""
    import errno

    server = not url.startswith(("sqlite", "journal"))
    seen: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full", os.strerror(e.errno)
    kinds = {type(x).__module__.split(".")[0] for x in seen}
    if not kinds & {"sqlalchemy", "sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb"}:
        return None
    names = {c.__name__ for x in seen for c in type(x).__mro__}
    if "IntegrityError" in names:
        return None  # a race Optuna resolves itself (a study or attribute written twice)
    reason = _reason(seen)
    if "database or disk is full" in reason or any(getattr(x, "sqlstate", None) == "53100" for x in seen):
        return "full", reason  # SQLite's SQLITE_FULL; PostgreSQL's disk_full
    if server and names & {"OperationalError", "InterfaceError"} or any(
            getattr(x, "connection_invalidated", False) for x in seen):
        return "lost", reason
    return "db", reason


def _reason(chain: list[BaseException]) -> str:
    # The driver's own message (the deepest error), on one line, without SQLAlchemy's SQL and links.
    for e in reversed(chain):
        text = " ".join(str(e).split())
        if text:
            return text.split(" [SQL:")[0].split(" (Background on this error")[0][:300]
    return type(chain[-1]).__name__


def _storage_path(url: str) -> str | None:
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        path = path[2:] if path.startswith("//") else path
        return "/" + path.lstrip("/") if path.startswith("/") else path
    if url.startswith("sqlite"):
        return url.split(":///", 1)[-1]
    return None


def _storage_error(url: str, kind: str, reason: str, tries: int = 1) -> StorageError:
    where = _redact(url)
    path = _storage_path(url)
    if kind == "full":
        disk = f"the disk holding {path} is full" if path else "the database server's disk is full"
        fix = ("free some space there (or copy the file to a disk with room and give --storage its new URL)"
               if path else "ask its administrator to free some space")
        return StorageError(f"study storage {where}: {disk} ({reason}); {fix}, then rerun the same command to "
                            f"continue: {_KEPT}")
    if kind == "lost":
        tried = f" after {tries} tries" if tries > 1 else ""
        return StorageError(f"study storage {where}: the database does not answer{tried} ({reason}); check that "
                            f"the server runs and that --storage names it, then rerun the same command to "
                            f"continue: {_KEPT}")
    return StorageError(f"study storage {where}: {reason}; once the storage works again, rerun the same command "
                        f"to continue: {_KEPT}")


def _call(url: str, fn, state: dict | None = None):
    """``fn()``, a storage operation: a lost connection to a database server is retried (after
    :data:`RETRY_DELAYS`); then, as for a full disk or another database error, a
    :class:`StorageError` says what happened and how to continue. Retrying is safe for every call
    a search makes: reads and attribute writes repeat, a finish that was in fact written is
    recognised (:meth:`_Study.finish`), and a claim written twice is abandoned as an orphan
    (:meth:`_Study.scan`). ``state["down"]``: the storage was given up on; later calls try once."""
    state = {} if state is None else state
    delays = () if state.get("down") else RETRY_DELAYS
    for attempt in range(len(delays) + 1):
        try:
            result = fn()
            state.pop("down", None)  # it answers again: a later loss is retried again
            return result
        except Exception as err:  # noqa: BLE001 - classified; not the storage's: re-raised as it is
            failure = _failure(err, url)
            if failure is None:
                raise
            kind, reason = failure
            if kind != "lost" or attempt == len(delays):
                state["down"] = True
                raise _storage_error(url, kind, reason, attempt + 1) from err
            _pause(delays[attempt] * (0.5 + random.random()))


@contextlib.contextmanager
def storage_failures(url: str) -> Iterator[None]:
    """Where Optuna drives the study itself (``tune --sampler``): a storage failure (a full disk, a
    lost server) inside becomes the same :class:`StorageError` as :func:`_call` gives, not a raw
    SQLAlchemy error; what the study committed before stays."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - classified; not the storage's: re-raised as it is
        failure = _failure(err, url)
        if failure is None:
            raise
        raise _storage_error(url, *failure) from err


def _pause(seconds: float) -> None:
    """The wait before a retry (a function of its own: tests see when a search is waiting)."""
    time.sleep(seconds)


class _Guarded:
    """A storage whose every call goes through :func:`_call`."""

    def __init__(self, url: str, storage):
        self._url = url
        self._storage = storage
        self._state: dict[str, bool] = {}

    def __getattr__(self, name: str):
        attr = getattr(self._storage, name)
        if not callable(attr):
            return attr

        def guarded(*args, **kwargs):
            return _call(self._url, lambda: attr(*args, **kwargs), self._state)

        return guarded


@dataclass
class _Scan:
    done: dict[str, Any]  # key -> its finished trial (counted)
    running: dict[str, Any]  # key -> its valid claim
    invalid: list[Any]  # RUNNING claims that lost: a duplicate or beyond the budget
    count: int  # distinct points done or validly claimed
    budget: int
    abandoned: int
    budget_steps: int | None = None  # the most training steps in all (None: no limit)


class _Study:
    """The shared state of a search in an Optuna study (see the module docstring, Workers)."""

    def __init__(self, url: str, name: str, heartbeat_s: float, stale_s: float, create: bool = True):
        optuna = _config.require("optuna", "tune")
        self.optuna = optuna
        self.url = url
        self.name = name
        # Every storage call survives a lost connection, or stops with a StorageError (see _call).
        self.storage = _Guarded(url, _call(url, lambda: open_storage(url), {"down": True}))
        if create:
            _call(url, lambda: optuna.create_study(storage=self.storage._storage, study_name=name,
                                                   direction="minimize", load_if_exists=True), self.storage._state)
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
                if why is None and (ua.get("owner") or {}).get("id") == self.owner["id"] and t._trial_id not in self.mine:
                    why = "orphan: this process wrote the claim twice (a write retried after a lost connection)"
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
        steps = self.attrs().get("budget_steps")
        return _Scan(done, running, invalid, len(done) + len(running), budget, abandoned,
                     None if steps is None else int(steps))

    def _stale(self, ua: Mapping[str, Any], now: float) -> str | None:
        owner = ua.get("owner") or {}
        if owner.get("id") == self.owner["id"]:
            return None
        if owner.get("host") == self.owner["host"]:
            pid = owner.get("pid")
            if pid == self.owner["pid"]:
                if owner.get("id") not in _LIVE_OWNERS:
                    return f"stale: its tune() in this process (pid {pid}) has ended"
            elif isinstance(pid, int) and pid > 0 and not pid_alive(pid):  # unknown pids: the heartbeat decides
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
            # A state write retried after a lost connection finds its first try recorded: that is ours.
            t = self.storage.get_trial(tid)
            return t.state == getattr(TrialState, state) and "abandoned" not in t.user_attrs
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
        try:
            if left:
                for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
                    if t._trial_id in left and not t.state.is_finished():
                        self.abandon(t, "interrupted: its process stopped before finishing it")
        except StorageError:
            pass  # the storage is gone: a rerun takes these claims over (their process has ended)
        finally:
            _LIVE_OWNERS.discard(self.owner["id"])


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
