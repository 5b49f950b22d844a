"""Starts the shell command of one rlrs run and ends, with it, every process it started.

:mod:`rlrs.engine` runs this file as a script (``python -P _launcher.py GRACE_S PARENT_PID COMMAND``) and
never imports it: it imports nothing of rlrs (nor torch), so it starts in milliseconds. The command
runs through ``/bin/sh -c`` with this process's working directory, environment, stdout and stderr
(the run's logs). This process exits as the command did: its exit status, or the signal that
killed it (so the engine reads ``-N`` for a command killed by signal N, as before it was started
through here).

Why a process of its own: a script that exits 0 may leave children running (a ``sleep &`` in its
process group, a ``setsid`` child, a double-forked daemon), re-parented to pid 1 and still writing
into a finished run. On Linux this process is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``):
every process the command orphans is re-parented here instead, so all of them stay its
descendants. When the command ends, when SIGTERM, SIGINT or SIGHUP comes (the engine stopping the
run), or when the process that started this one dies (a killed rlrs worker), every descendant gets
SIGTERM, then SIGKILL after GRACE_S if it is still there, and all are reaped. The subreaper is kept
out of the rlrs process itself: there it would adopt the orphans of everything else that process
runs.

Elsewhere (macOS has no subreaper) the same ending reaches the descendants still linked to this
process and every process in its process group; a process that left both (``setsid`` plus a double
fork) is not found.
"""

import ctypes
import os
import resource
import signal
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
POLL_S = 0.05  # how often the command and the process that started this one are looked at
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_stop_signal: list[int] = []


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux 3.4+); ``False`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _on_stop(signum, frame) -> None:
    _stop_signal.append(signum)


class Command:
    def __init__(self, command: str):
        sh = "/bin/sh"
        # As subprocess does for its children: the signals Python ignores for itself (SIGPIPE,
        # SIGXFSZ) and the ones this process handles are the defaults again in the command.
        default = {signal.SIGPIPE, signal.SIGXFSZ, *STOPS}
        self.pid = os.posix_spawn(sh, [sh, "-c", command], os.environ, setsigdef=default)
        self.status: int | None = None

    def reap(self) -> None:
        """Collect every child that ended: the command (its status) and orphans re-parented here."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = status


def _remaining(subreaper: bool) -> list[psutil.Process]:
    me = psutil.Process()
    try:
        procs = {p.pid: p for p in me.children(recursive=True)}
    except psutil.Error:
        procs = {}
    if not subreaper:  # orphans are not ours: reach those left in our process group at least
        group = os.getpgid(0)
        for p in psutil.process_iter():
            try:
                if p.pid != me.pid and os.getpgid(p.pid) == group:
                    procs.setdefault(p.pid, p)
            except (OSError, psutil.Error):
                continue
    return [p for p in procs.values() if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_all(cmd: Command, grace_s: float, subreaper: bool) -> tuple[list[int], bool]:
    """SIGTERM every descendant (each once, also those that appear meanwhile), SIGKILL those left
    after ``grace_s``, until none is left; reap them all. The pids signalled, and whether SIGKILL
    was needed."""
    signalled: list[int] = []
    deadline = time.monotonic() + grace_s
    killed = False
    while True:
        cmd.reap()
        procs = _remaining(subreaper)
        if not procs:
            cmd.reap()
            return signalled, killed
        late = time.monotonic() >= deadline
        for p in procs:
            if late or p.pid not in signalled:
                try:
                    p.send_signal(signal.SIGKILL if late else signal.SIGTERM)  # psutil checks the pid is not reused
                except psutil.Error:
                    continue
                killed = killed or late
                if p.pid not in signalled:
                    signalled.append(p.pid)
        time.sleep(POLL_S)


def _exit_as(status: int | None, stop: int | None) -> None:
    if status is None:  # stopped before the command could be collected (it cannot happen; be safe)
        os._exit(128 + (stop or signal.SIGTERM))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command's crash was its core dump, not ours
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    # The pid of the process that started this one is given, not read here: one that died while
    # this one started is caught too.
    grace_s, parent, command = float(argv[0]), int(argv[1]), argv[2]
    subreaper = become_subreaper()
    for sig in STOPS:
        signal.signal(sig, _on_stop)
    cmd = Command(command)
    while cmd.status is None and not _stop_signal and os.getppid() == parent:
        time.sleep(POLL_S)
        cmd.reap()
    stopped = cmd.status is None  # by a signal, or the process that started this one died
    pids, killed = end_all(cmd, grace_s, subreaper)
    if pids and not stopped:
        how = f"SIGTERM, then SIGKILL after {grace_s:g} s" if killed else "SIGTERM"
        sys.stderr.write(f"rlrs: the command ended leaving {len(pids)} process{'es' * (len(pids) > 1)} running "
                         f"(pid {', '.join(map(str, pids))}); ended with {how}\n")
        sys.stderr.flush()
    _exit_as(cmd.status, _stop_signal[0] if _stop_signal else None)


if __name__ == "__main__":
    main(sys.argv[1:])
