"""The files module: the one atomic write (text, bytes, JSON, PNG) and the one file lock."""

import errno
import json
import math
import os
from pathlib import Path

import pytest

from rlrs import files


def _no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_json_is_strict_json_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    files.write_json(path, {"loss": math.nan, "steps": (1, 2), "out": tmp_path})
    assert json.loads(path.read_text()) == {"loss": None, "steps": [1, 2], "out": str(tmp_path)}
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError):
        files.write_json(path, {"loss": 1.0})
    assert json.loads(path.read_text())["loss"] is None  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_a_plot_on_a_full_disk_leaves_the_old_png_whole_and_no_temp_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from rlrs.plots import plot_plan
    from rlrs.presets import get

    png = plot_plan(get("paper-dense"), 100, tmp_path / "lr.png")
    before = png.read_bytes()
    assert before.startswith(b"\x89PNG")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError):
        plot_plan(get("uniform-dense"), 100, png)
    assert png.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lr.png"]


def test_a_checkpoint_is_visible_only_with_its_checksum(tmp_path):
    seen = []
    with files.atomic_file(tmp_path / "c.pt", "wb", before_replace=lambda tmp: seen.append(
            (tmp.read_bytes(), (tmp_path / "c.pt").exists()))) as f:
        f.write(b"state")
    assert seen == [(b"state", False)] and (tmp_path / "c.pt").read_bytes() == b"state"


def test_the_file_lock_excludes_a_second_holder_and_is_free_again_after_release(tmp_path):
    path = tmp_path / "db.lock"
    with files.FileLock(path):
        with pytest.raises(BlockingIOError, match="db.lock is locked"):
            with files.FileLock(path, wait=False):
                pass
        with open(path) as other:
            assert not files.flock(other, wait=False)
    with files.FileLock(path, wait=False):  # released on exit
        pass
    assert path.exists()  # the file stays: removing it would let two processes lock two files


def test_publish_dir_replaces_a_partial_directory_and_keeps_a_complete_one(tmp_path):
    def made(name: str, text: str, complete: bool) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "data").write_text(text)
        if complete:
            (d / "manifest").write_text("ok")
        return d

    def complete(d: Path) -> bool:
        return (d / "manifest").is_file()

    final = made("final", "stale", complete=False)  # a killed writer's partial directory
    files.publish_dir(made("tmp1", "new", complete=True), final, complete)
    assert (final / "data").read_text() == "new" and not (tmp_path / "tmp1").exists()
    files.publish_dir(made("tmp2", "other", complete=True), final, complete)  # a concurrent writer's: kept
    assert (final / "data").read_text() == "new" and not (tmp_path / "tmp2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # nothing moved aside is left behind
