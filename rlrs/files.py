"""Files: the one atomic write, the one file lock, a file's hash and an output directory made
with an error that says what to do.

    >>> from rlrs.files import atomic_write_text, write_json, FileLock
    >>> write_json("runs/a/result.json", {"loss": float("nan")})     # doctest: +SKIP
    >>> with FileLock("study.db.lock"):                                # doctest: +SKIP
    ...     ...  # one process of this machine at a time

An atomic write goes to a temp file of its own beside the target, is flushed and ``fsync``-ed, then
renamed over the target: a crash or a full disk leaves the old file or the new one, never half of
one. Every result, summary, checkpoint and plot of rlrs is written through :func:`atomic_file`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .config import ConfigError, json_safe

try:
    import fcntl
except ImportError:  # Windows: no flock; locks are then advisory no-ops
    fcntl = None


def temp_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """A new, empty temp file of its own in ``path``'s directory (created if missing), readable as
    the umask allows: the first half of an atomic write (write it, then ``os.replace``). Its own
    name, so two processes writing the same ``path`` never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    return Path(tmp)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w",
                before_replace: Callable[[Path], None] | None = None) -> Iterator[IO[Any]]:
    """Write ``path`` atomically through the file this yields (``mode`` ``"w"`` or ``"wb"``).

        >>> with atomic_file("ckpt.pt", "wb") as f:                     # doctest: +SKIP
        ...     torch.save(state, f)

    ``before_replace(tmp)`` runs on the complete temp file just before it takes the name (a
    checkpoint's checksum is written then, so the file is never visible without it). An exception
    anywhere leaves ``path`` as it was and removes the temp file.
    """
    tmp = temp_beside(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that a crash leaves either the old file or the new one, never half of one."""
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (a rendered PNG, a downloaded file)."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def publish_dir(tmp: Path, final: Path, complete: Callable[[Path], bool]) -> None:
    """Give the finished directory ``tmp`` the name ``final`` atomically: readers see the whole
    directory or none (the token cache, the zoo's encoder files). Where ``final`` already holds a
    directory that ``complete(final)`` accepts (a concurrent writer published the same thing), it
    stays and ``tmp`` is removed; any other ``final`` (a stale or partial one) is moved aside and
    removed. Readers that still map the old directory's files keep them until they close them."""
    try:
        os.rename(tmp, final)  # atomic when final is absent (or an empty directory)
        return
    except OSError:
        pass
    if complete(final):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # A directory cannot be renamed over a non-empty one: move the stale one aside first.
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(final, trash)
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not complete(final):
            raise
    shutil.rmtree(trash, ignore_errors=True)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> None:
    """Write ``obj`` as strict JSON (NaN and inf as null: :func:`rlrs.config.json_safe`), atomically.

        >>> write_json("runs/compare/results.json", rlrs.config.to_dict(res))  # doctest: +SKIP
    """
    atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


# --- the lock ------------------------------------------------------------------------------------------


def flock(f: IO[Any], wait: bool = True) -> bool:
    """Take the exclusive ``flock`` of the open file ``f``: the one lock primitive of rlrs.

    ``wait=False`` returns ``False`` at once where another open file description holds it. Closing
    ``f`` releases it (so a killed holder never keeps it). Without ``fcntl`` (Windows) it is a no-op
    that always succeeds.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


class FileLock:
    """An exclusive lock on ``path`` between processes of one machine, held inside ``with``.

        >>> with FileLock(Path(db + ".lock")):                            # doctest: +SKIP
        ...     create_schema()

    It waits for the holder (``wait=False``: raises :class:`BlockingIOError` at once instead). The
    file stays after release: removing it would let two processes lock two different files.
    """

    def __init__(self, path: str | Path, wait: bool = True):
        self.path = Path(path)
        self.wait = wait
        self.f: IO[Any] | None = None

    def __enter__(self) -> "FileLock":
        f = open(self.path, "a")
        if not flock(f, self.wait):
            f.close()
            raise BlockingIOError(f"{self.path} is locked by another process")
        self.f = f
        return self

    def __exit__(self, *exc) -> None:
        if self.f is not None:
            self.f.close()  # closing releases the lock
            self.f = None


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, downloaded wheels)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_dir(path: str | Path, what: str = "--out") -> Path:
    """Create a directory (and its parents), with an error that names ``what`` and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path}: a file of that name exists; choose a directory path") from None
    except NotADirectoryError:
        raise ConfigError(f"{what} {path}: a part of the path is a file, not a directory; choose another path") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: no permission to create it (read-only?); choose another path") from None
    return path
