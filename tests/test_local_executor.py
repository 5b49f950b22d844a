"""How rlrs runs the user's commands on this machine: every process a run started ends with it,
Ctrl-C stops the running runs at once and records them so the same command continues, and a run's
stderr costs no memory however much it writes.

Waits are for events (a file appearing, a process ending); the seconds given are ceilings only.
"""

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from rlrs.engine import ABANDONED, INTERRUPTED, STOP_GRACE_S, TERMINATED, CommandRun, Job, Pool, execute, read_result
from rlrs import presets

ROOT = Path(__file__).resolve().parents[1]
CEILING_S = 120  # for a process to start (it imports torch on a busy machine): never waited out when all is well
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's")


def _report(step: int | str, loss: str = "1.0") -> str:
    """A shell line appending an eval report (what rlrs.report writes) to the run's log; ``step``
    may be a shell expression (``$s``), ``loss`` is JSON (``null``: a non-finite loss)."""
    return f'echo "{{\\"kind\\": \\"eval\\", \\"step\\": {step}, \\"eval_loss\\": {loss}}}" >> "$RLRS_RUN_DIR/metrics.jsonl"'


def _script(path: Path, body: str) -> str:
    path.write_text("set -e\n" + textwrap.dedent(body))
    return f"sh {shlex.quote(str(path))}"


def _wait_for(what, ceiling_s: float, message: str) -> None:
    deadline = time.monotonic() + ceiling_s
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(*files: Path) -> list[int]:
    return [int(f.read_text()) for f in files]


def _kill(pids) -> None:
    for pid in pids:  # a failing test must not leave sleeps behind
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# --- a run's whole process tree ends with it -------------------------------------------------------


LEAVE_CHILDREN = """
    cd "$RLRS_RUN_DIR"
    sleep 1000 &
    echo $! > group.pid
    setsid sh -c 'echo $$ > setsid.pid.tmp && mv setsid.pid.tmp setsid.pid && exec sleep 1000' &
    (sh -c 'echo $$ > orphan.pid.tmp && mv orphan.pid.tmp orphan.pid && exec sleep 1000' &)
    while [ ! -e setsid.pid ] || [ ! -e orphan.pid ]; do sleep 0.01; done
"""


def test_processes_a_command_leaves_behind_end_when_it_exits_0(tmp_path):
    # A `sleep &` in its process group, a setsid child and a double-forked one: all re-parented
    # away from the script, which exits 0 having reported its steps; none may outlive the run.
    out = tmp_path / "run"
    cmd = _script(tmp_path / "leave.sh", LEAVE_CHILDREN + _report(0) + "\n" + _report(10) + "\nexit 0\n")
    try:
        r = execute(CommandRun(cmd, presets.get("paper-dense"), steps=10), out)
        pids = _pids(out / "group.pid", out / "setsid.pid", out / "orphan.pid")
        assert r.status == "finished", r.error
        assert [p for p in pids if _alive(p)] == [], "processes the command left behind are still running"
        assert "the command ended leaving 3 processes running" in (out / "stderr.log").read_text()
    finally:
        _kill(_pids(*(out / n for n in ("group.pid", "setsid.pid", "orphan.pid") if (out / n).exists())))


def test_a_run_stopped_by_rlrs_ends_every_process_it_started(tmp_path):
    # A divergence stops the run while its script and its setsid child still run.
    out = tmp_path / "run"
    cmd = _script(tmp_path / "nan.sh", LEAVE_CHILDREN + "echo $$ > script.pid\n" + _report(0, "null") + "\nexec sleep 1000\n")
    try:
        r = execute(CommandRun(cmd, presets.get("paper-dense"), steps=10), out)
        assert r.status == "diverged", r.error
        pids = _pids(out / "script.pid", out / "group.pid", out / "setsid.pid", out / "orphan.pid")
        assert [p for p in pids if _alive(p)] == []
    finally:
        _kill(_pids(*(out / n for n in ("script.pid", "group.pid", "setsid.pid", "orphan.pid") if (out / n).exists())))


POOL_PARENT = """
import sys
from pathlib import Path
from rlrs.engine import CommandRun, Job, Pool
from rlrs.plan import Plan
with Pool(1) as pool:
    r, = pool.run([Job(CommandRun(sys.argv[2], Plan()), Path(sys.argv[1]))])
print("RESULT", r.status, r.error)
"""


def test_a_killed_worker_fails_its_run_and_its_commands_processes_end(tmp_path):
    out = tmp_path / "run"
    cmd = _script(tmp_path / "hold.sh", LEAVE_CHILDREN + "echo $$ > script.pid\n" + _report(0) +
                  "\ntouch started\nexec sleep 1000\n")
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT, str(out), cmd], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        _wait_for(lambda: (out / "started").exists() or parent.poll() is not None, CEILING_S, "the command never started")
        assert parent.poll() is None, parent.communicate()
        pids = _pids(out / "script.pid", out / "group.pid", out / "setsid.pid", out / "orphan.pid")
        worker, = [c for c in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        worker.kill()
        stdout, stderr = parent.communicate(timeout=30)  # a ceiling: the pool sees the dead worker at once
        assert parent.returncode == 0, stderr
        assert "RESULT failed worker process died" in stdout
        _wait_for(lambda: not any(_alive(p) for p in pids), 30, "the killed worker's command went on running")
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None
        _kill(pids)


# --- Ctrl-C ------------------------------------------------------------------------------------------------


def _ctrl_c_script(tmp_path: Path) -> str:
    # Each start is logged; while GO does not exist the run reports step 0, says it started
    # (its pid, then the marker) and trains "forever"; once GO exists it trains to the end.
    return _script(tmp_path / "train.sh", f"""
        echo "$RLRS_RUN_DIR" >> {shlex.quote(str(tmp_path / "starts"))}
        if [ -e {shlex.quote(str(tmp_path / "GO"))} ]; then
            for s in 0 5 10; do {_report("$s")}; done
            exit 0
        fi
        {_report(0)}
        echo $$ > "$RLRS_RUN_DIR/script.pid"
        touch {shlex.quote(str(tmp_path / "marker"))}
        exec sleep 1000
    """)


def _default_sigint() -> None:
    # A shell that starts tests in the background may ignore SIGINT; a terminal's rlrs does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _compare(cmd: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlrs", "compare", "--command", cmd, "--steps", "10", "--seeds", "1",
                             "--workers", "1", "--out", str(out)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


@pytest.mark.parametrize("to", ["group", "parent", "sigterm"])
def test_ctrl_c_stops_the_running_run_at_once_records_it_and_the_same_command_continues(tmp_path, to):
    # The terminal sends SIGINT to the whole foreground process group (rlrs and its workers);
    # `kill -INT` reaches rlrs alone. Either way: no waiting for the run, no next run started.
    # SIGTERM (`kill`, a scheduler ending rlrs) is handled the same way, and named as what stopped it.
    sig, code, error, said = ((signal.SIGTERM, 128 + signal.SIGTERM, TERMINATED, "interrupted by SIGTERM")
                              if to == "sigterm" else (signal.SIGINT, 130, INTERRUPTED, INTERRUPTED))
    cmd, out = _ctrl_c_script(tmp_path), tmp_path / "c"
    first = _compare(cmd, out)
    pid = None
    try:
        _wait_for(lambda: (tmp_path / "marker").exists() or first.poll() is not None, CEILING_S, "the run never started")
        assert first.poll() is None, first.communicate()[0]
        run, = [Path(p) for p in (tmp_path / "starts").read_text().split()]
        pid = int((run / "script.pid").read_text())
        (os.killpg if to == "group" else os.kill)(first.pid, sig)
        output, _ = first.communicate(timeout=STOP_GRACE_S + 20)  # a ceiling: the script ends at SIGTERM
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        _kill([pid] if pid else [])
    assert first.returncode == code, output
    assert not _alive(pid), "the interrupted run's script is still running"
    assert (tmp_path / "starts").read_text().split() == [str(run)], "a run was started after Ctrl-C"
    record = read_result(run)
    assert record.status == "failed" and record.error.startswith(error) and record.interrupted, record.error
    assert f"{said}; 1 running run stopped and recorded as interrupted" in output
    assert "to continue, run the same command again" in output and "rlrs compare --command" in output
    assert "--resume" not in output  # compare has no such flag
    (tmp_path / "GO").touch()
    second = _compare(cmd, out)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "2 runs: 0 reused, 2 to run" in output  # the interrupted run is run again, not reused
    assert read_result(run).status == "finished"
    assert (tmp_path / "starts").read_text().split().count(str(run)) == 2


def test_ctrl_c_where_execute_runs_in_this_process_records_the_run_then_raises(tmp_path):
    marker = tmp_path / "marker"
    cmd = _script(tmp_path / "hold.sh", f"echo $$ > \"$RLRS_RUN_DIR/script.pid\"\ntouch {marker}\nexec sleep 1000\n")
    out = tmp_path / "run"

    def ctrl_c():  # the ceiling only keeps a broken script from hanging the test
        deadline = time.monotonic() + CEILING_S
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            execute(CommandRun(cmd, presets.get("paper-dense")), out)
    finally:
        signal.signal(signal.SIGINT, before)
    pid = int((out / "script.pid").read_text())
    try:
        assert not _alive(pid)
        assert read_result(out).interrupted
    finally:
        _kill([pid])


STARTING_PARENT = """
import sys
from pathlib import Path
from rlrs.engine import CommandRun, Interrupted, Job, Pool
from rlrs.plan import Plan
try:
    with Pool(1) as pool:
        pool.run([Job(CommandRun(sys.argv[2], Plan()), Path(sys.argv[1]))])
except Interrupted as err:
    print("INTERRUPTED", len(err.runs))
    sys.exit(130)
"""


def _ignores_sigint(pid: int) -> bool:
    mask = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigIgn:"))
    return bool(int(mask.split()[1], 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_while_the_workers_still_start_starts_no_run_and_kills_none_with_a_traceback(tmp_path, to):
    # A worker still importing torch ignores Ctrl-C until its handler is in place; the pool's
    # shared flag tells it, once it can listen, to start nothing.
    started = tmp_path / "started"
    cmd = _script(tmp_path / "train.sh", f"touch {started}\nexec sleep 1000\n")
    parent = subprocess.Popen([sys.executable, "-c", STARTING_PARENT, str(tmp_path / "run"), cmd], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=_default_sigint)

    def worker_spawned():  # and the parent listens to Ctrl-C again (it ignores it while spawning)
        if parent.poll() is not None:
            return True
        kids = [c for c in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        return bool(kids) and not _ignores_sigint(parent.pid)

    try:
        _wait_for(worker_spawned, CEILING_S, "no worker was spawned")
        assert parent.poll() is None, parent.communicate()
        (os.killpg if to == "group" else os.kill)(parent.pid, signal.SIGINT)
        stdout, stderr = parent.communicate(timeout=STOP_GRACE_S + 40)  # a ceiling: torch's import included
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 130, stderr
    assert "INTERRUPTED 0" in stdout
    assert "Traceback" not in stderr and not started.exists()


PRESET_PARENT = """
import sys
from pathlib import Path
from rlrs.engine import Interrupted, Job, Pool, PresetRun
from rlrs.train import run_config
sets = dict(a.split("=", 1) for a in sys.argv[2:])
spec = PresetRun(run_config("tiny-dense", sets={**sets, "train.steps": 100000, "data.val_fraction": 0.2}))
try:
    with Pool(1) as pool:
        pool.run([Job(spec, Path(sys.argv[1]))])
except Interrupted as err:
    print("INTERRUPTED", [r.error for r in err.runs])
    sys.exit(130)
"""


def test_ctrl_c_stops_rlrs_own_training_in_a_worker_and_records_it(tmp_path, tiny_sets):
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in tiny_sets.items() if k in ("data.corpus", "data.cache_dir")]
    parent = subprocess.Popen([sys.executable, "-c", PRESET_PARENT, str(out), *sets], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        log = out / "metrics.jsonl"
        _wait_for(lambda: (log.exists() and '"train"' in log.read_text()) or parent.poll() is not None, CEILING_S,
                  "training never started")
        assert parent.poll() is None, parent.communicate()
        workers = [c for c in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        os.killpg(parent.pid, signal.SIGINT)
        stdout, stderr = parent.communicate(timeout=STOP_GRACE_S + 20)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 130, stderr
    assert f"INTERRUPTED ['{INTERRUPTED}']" in stdout
    assert "Traceback" not in stderr
    assert read_result(out).interrupted
    assert not any(_alive(w.pid) for w in workers)


def test_an_error_while_runs_are_in_flight_stops_them_and_never_hangs(tmp_path):
    # The caller's callback fails while another run trains: run() raises at once (it does not
    # wait for that run), which is stopped and recorded, its processes gone.
    plan = presets.get("paper-dense")
    quick = CommandRun(_script(tmp_path / "quick.sh", _report(0) + "\n"), plan)
    slow = CommandRun(_script(tmp_path / "slow.sh", "echo $$ > \"$RLRS_RUN_DIR/script.pid\"\n"
                              f"touch {shlex.quote(str(tmp_path / 'marker'))}\nexec sleep 1000\n"), plan)

    def on_done(job, r):
        _wait_for(lambda: (tmp_path / "marker").exists(), CEILING_S, "the second run never started")
        raise ValueError("the caller failed")

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="the caller failed"):
        with Pool(1) as pool:
            pool.run([Job(quick, tmp_path / "a"), Job(slow, tmp_path / "b")], on_done)
    pid = int((tmp_path / "b" / "script.pid").read_text())
    try:
        assert time.monotonic() - t0 < CEILING_S + STOP_GRACE_S
        assert not _alive(pid)
        stopped = read_result(tmp_path / "b")
        assert stopped.interrupted and stopped.error.startswith(ABANDONED), stopped.error  # not "by Ctrl-C"
        assert read_result(tmp_path / "a").status == "finished"
    finally:
        _kill([pid])


# --- stderr: a bounded tail, and one attempt's worth of logs ------------------------------------------------


MEMORY = """
import resource, shlex, sys
from rlrs.engine import CommandRun, execute
from rlrs.presets import get
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
def run(script, out):
    r = execute(CommandRun("sh " + shlex.quote(script), get("paper-dense")), out)
    return r, peak()
small, base = run(sys.argv[1], sys.argv[3])
big, after = run(sys.argv[2], sys.argv[4])
print(small.status, big.status, after - base, len(big.error or ""), big.headline(), sep="\\n")
"""


def test_a_command_writing_100_mb_to_stderr_costs_rlrs_no_memory(tmp_path):
    # Before, reading a failed run's stderr tail read all of it (~5x its size in memory). The
    # same script writing a little first: what rlrs itself needs for a run is the baseline.
    def script(name, mb):
        return tmp_path / name, (f"{_report(0)}\n"
                                 f"yes 'chatty training output on stderr, line after line' | head -c {mb * 10**6} >&2\n"
                                 "echo 'ValueError: the real cause' >&2\n"
                                 "yes '==== banner ====' | head -c 200000 >&2\n"  # beyond the 64 KiB tail
                                 "exit 1\n")
    for name, mb in (("small.sh", 1), ("big.sh", 100)):
        path, body = script(name, mb)
        path.write_text(body)
    r = subprocess.run([sys.executable, "-c", MEMORY, str(tmp_path / "small.sh"), str(tmp_path / "big.sh"),
                        str(tmp_path / "s"), str(tmp_path / "b")], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    small, big, grown, error_len, headline = r.stdout.split("\n")[:5]
    assert (small, big) == ("failed", "failed")
    assert int(grown) < 30 * 2**20, f"rlrs grew by {int(grown) / 2**20:.0f} MiB reading a 100 MB stderr"
    assert headline == "failed: ValueError: the real cause"  # found above the banner, past the tail
    assert int(error_len) < 80_000


def test_each_attempt_starts_its_logs_afresh_and_keeps_the_one_before(tmp_path):
    counter = tmp_path / "attempt"
    cmd = _script(tmp_path / "fail.sh", f"""
        n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}
        echo "out of attempt $n"; echo "err of attempt $n" >&2
        exit 1
    """)
    spec, out = CommandRun(cmd, presets.get("paper-dense")), tmp_path / "run"
    for _ in range(3):
        r = execute(spec, out)
    assert r.status == "failed" and "err of attempt 3" in r.error and "attempt 2" not in r.error
    for stream in ("stdout", "stderr"):
        word = "out" if stream == "stdout" else "err"
        assert (out / f"{stream}.log").read_text() == f"{word} of attempt 3\n"
        assert (out / f"{stream}.previous.log").read_text() == f"{word} of attempt 2\n"
    assert sorted(p.name for p in out.glob("*.log")) == ["stderr.log", "stderr.previous.log", "stdout.log",
                                                          "stdout.previous.log"]


POOL_OF_THREE = """
import sys
from pathlib import Path
from rlrs.engine import CommandRun, Job, Pool
from rlrs.plan import Plan
root = Path(sys.argv[1])
with Pool(2) as pool:
    results = pool.run([Job(CommandRun(cmd, Plan()), root / name) for name, cmd in zip("abc", sys.argv[2:])])
for name, r in zip("abc", results):
    print("RESULT", name, r.status, r.error)
"""


def test_a_dead_worker_fails_only_its_own_run_the_others_run_again_at_once(tmp_path):
    # Python's process pool fails every job it holds when one worker dies and ends the others:
    # only the run the dead worker trained may fail; the one stopped with the pool and the one
    # not started yet run on a fresh pool and finish.
    hold = _script(tmp_path / "a.sh", "echo $$ > \"$RLRS_RUN_DIR/script.pid\"\n" + _report(0) +
                   "\ntouch \"$RLRS_RUN_DIR/started\"\nexec sleep 1000\n")
    # b: its first attempt waits (until the pool is ended); its second finishes.
    once = _script(tmp_path / "b.sh", f"""
        {_report(0)}
        if [ ! -e "$RLRS_RUN_DIR/tried" ]; then touch "$RLRS_RUN_DIR/tried"; exec sleep 1000; fi
        {_report(10)}
    """)
    quick = _script(tmp_path / "c.sh", _report(0) + "\n" + _report(10) + "\n")
    parent = subprocess.Popen([sys.executable, "-c", POOL_OF_THREE, str(tmp_path), hold, once, quick], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        _wait_for(lambda: ((tmp_path / "a" / "started").exists() and (tmp_path / "b" / "tried").exists())
                  or parent.poll() is not None, CEILING_S, "the two runs never started")
        assert parent.poll() is None, parent.communicate()
        pids = _pids(tmp_path / "a" / "script.pid")
        worker = next(p for p in psutil.Process(pids[0]).parents() if "spawn_main" in " ".join(p.cmdline()))
        worker.kill()
        stdout, stderr = parent.communicate(timeout=CEILING_S)
        assert parent.returncode == 0, stderr
        lines = dict(ln.split(" ", 2)[1:] for ln in stdout.splitlines() if ln.startswith("RESULT"))
        assert lines["a"].startswith("failed worker process died (exit code -9)"), lines
        assert lines["b"].startswith("finished") and lines["c"].startswith("finished"), lines
        assert read_result(tmp_path / "a").status == "failed" and read_result(tmp_path / "b").status == "finished"
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None
        _kill(pids)

