"""Executors: the local pool and a real Slurm cluster (the slurm_cluster fixture; jobs are tiny).

The Slurm tests submit through submitit to the cluster scripts/services.sh starts, wait for job
states and files (never for a guessed number of seconds), and cancel what they submit."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlrs.cli import main
from rlrs.config import ConfigError
from rlrs.engine import read_result
from rlrs.executors import CANCEL_WAIT_S

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--executor", "slurm", "--slurm-poll-s", "0.5", "--slurm-mem-gb", "1"]  # two jobs fit the test node
# A script that reports a loss, then waits for the file argv[1] (or to be stopped) and ends.
SLEEPER = """
import os, pathlib, sys, time
import rlrs
rlrs.report(0, 2.0)
env = os.environ  # the Slurm job it runs in: an array task's id, or the job's
job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_JOB_ID" in env else env["SLURM_JOB_ID"]
tmp = pathlib.Path(env["RLRS_RUN_DIR"], "started.tmp")
tmp.write_text(job)
tmp.replace(tmp.with_name("started"))  # whole when it appears
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
rlrs.report(50, 1.5)
rlrs.report(100, 1.0)
"""


def _wait(what, cond, timeout=120.0, proc=None):
    """Poll ``cond`` until true (an event: a file, a job state); fail naming ``what`` after ``timeout``,
    or at once if the rlrs process ``proc`` (a Popen with its ``log`` path) ended first."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"rlrs ended (exit status {proc.returncode}) before {what}:\n{proc.log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _state(job):
    """The job's state as squeue shows it (ended jobs too, for a while: MinJobAge)."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i|%T"], capture_output=True, text=True)
    return dict(ln.split("|") for ln in out.stdout.split()).get(job)


def _cancel_submitted(log):
    """Cancel the jobs rlrs says (in ``log``) it submitted: only this test's, whatever their name."""
    ids = re.findall(r"cancel: scancel ([\d ]+)\)", log.read_text() if log.exists() else "")
    if ids:
        subprocess.run(["scancel", *" ".join(ids).split()], capture_output=True)


def _sets(tiny_sets, **extra):
    return [f"--set={k}={v}" for k, v in {**tiny_sets, "train.eval_batches": 1, **extra}.items()]


def _results(out):
    return {d.name: read_result(d) for d in sorted((out / "runs").iterdir()) if (d / "result.json").exists()}


def test_compare_on_slurm_gives_the_local_results_and_is_reused_locally(slurm_cluster, tmp_path, tiny_sets, capsys):
    common = ["compare", "--model", "tiny-dense", "--plans", "uniform-dense,paper-dense", "--seeds", "2",
              *_sets(tiny_sets, **{"train.steps": 6})]
    _same_on_slurm_as_locally(common, tmp_path, capsys)


def _same_on_slurm_as_locally(common, tmp_path, capsys):
    """``common`` (a compare of 4 runs) on Slurm and locally: the same results, and a local rerun
    of the Slurm directory reuses every run."""
    assert main([*common, "--out", str(tmp_path / "slurm"), *FAST]) == 0
    assert main([*common, "--out", str(tmp_path / "local"), "--workers", "1"]) == 0
    on_slurm, local = _results(tmp_path / "slurm"), _results(tmp_path / "local")
    assert len(on_slurm) == 4 and on_slurm.keys() == local.keys()
    for name in local:
        assert on_slurm[name].status == local[name].status == "finished"
        assert on_slurm[name].eval_loss == local[name].eval_loss
    assert list((tmp_path / "slurm" / "slurm").glob("*_log.out"))  # submitit's logs live in OUT/slurm
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "slurm"), "--workers", "1"]) == 0
    assert "4 runs: 4 reused, 0 to run" in capsys.readouterr().out


# A script whose losses depend on its plan and seed only: the same run reports the same numbers
# wherever it runs.
PLAIN = """
import math, rlrs
plan, seed = rlrs.script.plan("paper-dense"), rlrs.script.seed()
steps = rlrs.script.steps(4)
for step in range(0, steps + 1, 2):
    rlrs.report(step, 2.0 + plan.embedding.start / 100 + seed / 10 + math.exp(-step / steps))
"""


def test_compare_of_a_command_on_slurm_gives_the_local_results_and_is_reused_locally(slurm_cluster, tmp_path, capsys):
    (tmp_path / "plain.py").write_text(PLAIN)
    common = ["compare", "--command", f"{sys.executable} {tmp_path / 'plain.py'}", "--steps", "4", "--seeds", "2"]
    _same_on_slurm_as_locally(common, tmp_path, capsys)


def _default_sigint() -> None:
    # A shell that starts the tests in the background (CI, nohup ... &) ignores SIGINT, and a child
    # inherits that: rlrs then never sees the test's Ctrl-C. A terminal's rlrs has the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, tmp_path, name):
    """rlrs in its own process (so a signal reaches it alone), output to a file."""
    log = open(tmp_path / f"{name}.log", "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIGUSR1 writes every thread's stack into the log: what a test that gave up waiting shows (_dump).
    boot = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
            "from rlrs.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", boot, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path, preexec_fn=_default_sigint)
    proc.log = tmp_path / f"{name}.log"
    return proc, proc.log


def _exit_status(proc, timeout):
    """``proc``'s exit status; past ``timeout`` s, a failure showing its log and where each thread was."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        _wait("its stacks", lambda: "most recent call first" in proc.log.read_text(), timeout=10)
        squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"], capture_output=True, text=True)
        pytest.fail(f"rlrs did not exit within {timeout:.0f} s; its log and stacks:\n{proc.log.read_text()}\n"
                    f"squeue:\n{squeue.stdout}{squeue.stderr}")


def _command_args(tmp_path, out, seeds="1"):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return ["compare", "--command", f"{sys.executable} {script} {tmp_path / 'finish'}", "--plans",
            "uniform-dense,paper-dense", "--seeds", seeds, "--out", str(out), *FAST]


def _run_dirs(out):
    return sorted(d for d in (out / "runs").iterdir() if d.is_dir()) if (out / "runs").exists() else []


def _both_started(out, proc):
    """Wait until both runs' commands have started (each job wrote ``started``) and return their dirs."""
    _wait("both runs to start", lambda: len([d for d in _run_dirs(out) if (d / "started").exists()]) == 2, proc=proc)
    return _run_dirs(out)


def test_a_job_cancelled_with_scancel_is_a_failed_run_with_slurms_reason_and_runs_again(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    args = _command_args(tmp_path, out)
    proc, log = _start(args, tmp_path, "first")
    try:
        _both_started(out, proc)
        victim = _run_dirs(out)[0]
        job = (victim / "started").read_text()
        subprocess.run(["scancel", job], check=True)
        _wait(f"job {job} to end", lambda: _state(job) == "CANCELLED")
        (tmp_path / "finish").write_text("")  # the other run ends, and so does rlrs
        proc.wait(timeout=CANCEL_WAIT_S + 120)
    finally:
        proc.kill() if proc.poll() is None else None
        _cancel_submitted(log)
    assert proc.returncode == 1, log.read_text()
    r = read_result(victim)
    assert r.status == "failed" and "CANCELLED" in r.error and job in r.error, r.error
    other = read_result(_run_dirs(out)[1])
    assert other.status == "finished", other.error
    proc, log = _start(args, tmp_path, "second")
    try:
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        _cancel_submitted(log)
    assert "2 runs: 1 reused, 1 to run" in log.read_text()
    assert read_result(victim).status == "finished"


def test_a_requeued_job_runs_its_command_again_and_the_run_finishes(slurm_cluster, tmp_path):
    # Slurm requeues a job (preemption, a node's failure, scontrol requeue): the job starts again
    # and a command's run with it; rlrs waits through the requeue and records the second attempt.
    from rlrs.runlog import EvalRecord, read_log

    out = tmp_path / "out"
    proc, log = _start(_command_args(tmp_path, out), tmp_path, "run")
    try:
        _both_started(out, proc)
        victim = _run_dirs(out)[0]
        job = (victim / "started").read_text()
        (victim / "started").unlink()
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
        _wait("the job to be requeued", lambda: _state(job) == "PENDING", proc=proc)
        # Slurm holds a requeued job back a while (BeginTime); let it start again now.
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True, capture_output=True)
        _wait("the command to start again", lambda: (victim / "started").exists(), proc=proc)
        (tmp_path / "finish").write_text("")
        assert _exit_status(proc, 120) == 0, log.read_text()
    finally:
        proc.kill() if proc.poll() is None else None
        _cancel_submitted(log)
    r = read_result(victim)
    assert r.status == "finished" and r.eval_steps[-1] == 100, r.error
    assert [e.step for e in read_log(victim).records if isinstance(e, EvalRecord)] == [0, 0, 50, 100]  # two attempts
    assert read_result(_run_dirs(out)[1]).status == "finished"


@pytest.mark.parametrize("sig, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_cancels_the_submitted_jobs_and_records_them_interrupted(slurm_cluster, tmp_path, sig, by):
    # SIGTERM (kill) is handled as Ctrl-C is, and each is named as what stopped rlrs.
    out = tmp_path / "out"
    args = _command_args(tmp_path, out)
    proc, log = _start(args, tmp_path, "run")
    try:
        _both_started(out, proc)
        jobs = [(d / "started").read_text() for d in _run_dirs(out)]
        assert [_state(j) for j in jobs] == ["RUNNING", "RUNNING"]
        proc.send_signal(sig)
        want = 130 if sig == signal.SIGINT else 128 + sig  # a ceiling above rlrs's own wait:
        assert _exit_status(proc, CANCEL_WAIT_S + 120) == want, log.read_text()
        assert [_state(j) for j in jobs] == ["CANCELLED", "CANCELLED"]
    finally:
        proc.kill() if proc.poll() is None else None
        _cancel_submitted(log)
    text = log.read_text()
    assert "cancelling 2 Slurm jobs" in text and "run the same command again" in text
    for d in _run_dirs(out):
        r = read_result(d)
        assert r.status == "failed" and r.error.startswith("interrupted") and f"when rlrs stopped ({by})" in r.error, \
            r.error
    assert f"interrupted by {by}" in text


def test_a_job_past_its_time_limit_is_a_failed_run_named_timeout(slurm_cluster, tmp_path):
    out = tmp_path / "out"
    # Slurm's shortest limit is a minute: the job ends at its signal (15 s before) or at the limit.
    args = [*_command_args(tmp_path, out), "--slurm-time-min", "1", "--slurm-timeout-requeues", "0"]
    proc, log = _start(args, tmp_path, "run")
    try:
        assert proc.wait(timeout=300) == 1, log.read_text()
    finally:
        _cancel_submitted(log)
    for d in _run_dirs(out):
        r = read_result(d)
        assert r.status == "failed" and r.error.startswith("Slurm job") and "ended TIMEOUT: its time limit" in r.error, r.error
    (tmp_path / "finish").write_text("")
    proc, log = _start(args, tmp_path, "again")
    try:
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        _cancel_submitted(log)
    assert "2 runs: 0 reused, 2 to run" in log.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--executor", "slurm", "--slurm-gpus", "-1"], "--slurm-gpus: a whole number >= 0, got -1"),
    (["--executor", "slurm", "--slurm-option", "=x"], "--slurm-option: '=x' is not an sbatch option"),
    (["--executor", "slurm", "--slurm-poll-s", "0"], "--slurm-poll-s: seconds > 0, got 0"),
    (["--executor", "local", "--slurm-partition", "gpu"], "--slurm-partition: applies to Slurm jobs; add --executor slurm"),
])
def test_bad_slurm_flags_are_named(argv, message, tmp_path, capsys):
    code = main(["compare", "--model", "tiny-dense", "--out", str(tmp_path / "o"), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_a_cluster_config_with_a_misspelt_key_names_the_closest(tmp_path, capsys):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('executor = "slurm"\n[slurm]\npartiton = "gpu"\n')
    code = main(["compare", "--model", "tiny-dense", "--out", str(tmp_path / "o"), "--cluster-config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2 and "slurm.partiton: unknown key; did you mean 'partition'?" in err and str(cfg) in err


def test_a_cluster_config_file_sets_the_jobs_resources(tmp_path):
    from rlrs.executors import SlurmExecutor, load_cluster_config

    cfg = tmp_path / "cluster.toml"
    cfg.write_text('executor = "slurm"\n[slurm]\npartition = "gpu"\ngpus = 2\ntime_min = 30\n'
                   '[slurm.options]\nconstraint = "a100"\nexclusive = true\n')
    c = load_cluster_config(cfg)
    assert (c.executor, c.slurm.partition, c.slurm.gpus, c.slurm.time_min) == ("slurm", "gpu", 2, 30)
    assert c.slurm.sbatch_options() == {"constraint": "a100", "exclusive": True}
    pytest.importorskip("submitit")
    ex = SlurmExecutor(c.slurm, workers=3)._executor(tmp_path / "slurm")
    assert ex.parameters["partition"] == "gpu" and ex.parameters["gpus_per_node"] == 2
    assert ex.parameters["array_parallelism"] == 3


class _Recorder:
    """An executor that records what it is given and ends every run as failed (no training)."""

    workers = 3

    def __init__(self):
        self.batches, self.closed = [], False

    def run(self, jobs, on_done=None, progress=False):
        from rlrs.engine import RunResult

        self.batches.append(list(jobs))
        results = [RunResult(j.out, "failed", error="not run") for j in jobs]
        for j, r in zip(jobs, results):
            if on_done:
                on_done(j, r)
        return results

    def describe(self, n):
        return f"on the recorder, {n}"

    def close(self):
        self.closed = True


def test_run_all_hands_the_runs_to_the_executor_and_leaves_it_open(tmp_path):
    from rlrs.engine import CommandRun, Job, run_all
    from rlrs.plan import Plan

    jobs = [Job(CommandRun("true", Plan(), seed), tmp_path / f"r{seed}") for seed in range(2)]
    ex, lines = _Recorder(), []
    results = run_all(jobs + jobs[:1], log=lines.append, executor=ex)
    assert [len(b) for b in ex.batches] == [2] and not ex.closed
    assert [r.out for r in results] == [tmp_path / "r0", tmp_path / "r1", tmp_path / "r0"]
    assert lines[0] == "2 runs: 0 reused, 2 to run (on the recorder, 2)"


def test_tunes_training_objective_uses_the_commands_executor():
    from rlrs.executors import using
    from rlrs.tune.objective import TrainingObjective
    from rlrs.tune.spec import TuneSpec

    spec = TuneSpec.create("tiny-dense", steps=4, params=("plan.base_lr",))
    ex = _Recorder()
    with using(ex):
        obj = TrainingObjective(spec, "unused")
    assert obj.pool is ex
    obj = TrainingObjective(spec, "unused", workers=2)
    assert obj.pool.workers == 2  # outside: a local pool, as before
    obj.close()


def test_a_registered_executor_is_chosen_by_name(tmp_path):
    from rlrs.executors import ClusterConfig, _FACTORIES, make_executor, register

    register("recorder", lambda config, workers, log_dir: _Recorder())
    try:
        assert isinstance(make_executor(ClusterConfig("recorder")), _Recorder)
        with pytest.raises(ConfigError, match="'slurn' is not an executor; did you mean 'slurm'"):
            make_executor(ClusterConfig("slurn"))
    finally:
        del _FACTORIES["recorder"]


def test_a_slurm_run_checkpoints_as_itself_so_a_requeued_job_resumes_its_run(tmp_path):
    pytest.importorskip("submitit")
    from rlrs.engine import CommandRun, Job
    from rlrs.executors import SlurmRun
    from rlrs.plan import Plan

    job = Job(CommandRun("true", Plan()), tmp_path / "r", stop_at=5)
    again = SlurmRun(job, time_min=30).checkpoint()
    assert isinstance(again.function, SlurmRun) and again.function.job == job and again.args == ()


# --- recording what Slurm ended, without a cluster: the executor's own rules ----------------------


def _submitted(tmp_path, name="r", job_id="7_0"):
    """A job as SlurmExecutor holds it once submitted (its run in ``tmp_path/name``), and the executor."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    from rlrs.engine import CommandRun, Job
    from rlrs.executors import SlurmExecutor, _stamp, _Submitted
    from rlrs.plan import Plan

    out = tmp_path / name
    out.mkdir(exist_ok=True)
    lines = []
    ex = SlurmExecutor(log=lines.append)
    return ex, (lambda: _Submitted(0, Job(CommandRun("true", Plan()), out), SimpleNamespace(job_id=job_id),
                                   _stamp(out))), lines


def _finished(out):
    from rlrs.engine import _write_result
    from rlrs.outcome import RunResult

    _write_result(RunResult(out, "finished", steps=10, total_steps=10, eval_steps=[10], eval_loss=[1.0]))


def test_a_job_ended_before_it_ran_never_undoes_a_finished_run(tmp_path):
    # rlrs tune hands the executor runs as they are: one already finished, its job cancelled while
    # still pending (scancel, a Ctrl-C), must keep its record, not be recorded failed and retrained.
    ex, submit, _ = _submitted(tmp_path)
    _finished(tmp_path / "r")
    s = submit()
    r = ex._record(s, "Slurm job 7_0 ended CANCELLED: it was cancelled")
    assert r.status == "finished" and read_result(tmp_path / "r").status == "finished"
    r = ex._record(s, "interrupted: Slurm job 7_0 was cancelled", cancelled_at=s.before)
    assert read_result(tmp_path / "r").status == "finished"


def test_a_cancel_keeps_the_failure_a_job_recorded_before_it_not_the_one_it_caused(tmp_path):
    from rlrs.engine import _write_result
    from rlrs.executors import _stamp
    from rlrs.outcome import RunResult

    ex, submit, _ = _submitted(tmp_path)
    s = submit()  # submitted with no record; then the run fails by itself (a CUDA OOM, say)
    _write_result(RunResult(tmp_path / "r", "failed", error="RuntimeError: CUDA out of memory"))
    at_cancel = _stamp(tmp_path / "r")
    ex._record(s, "interrupted: Slurm job 7_0 was cancelled when rlrs stopped (Ctrl-C)", cancelled_at=at_cancel)
    assert read_result(tmp_path / "r").error == "RuntimeError: CUDA out of memory"
    # A failure the job records after the cancel (its command killed by it) is the cancel's doing.
    t = submit()
    at_cancel = _stamp(tmp_path / "r")
    _write_result(RunResult(tmp_path / "r", "failed", error="exit status -15 (killed by signal 15)"))
    ex._record(t, "interrupted: Slurm job 7_0 was cancelled when rlrs stopped (Ctrl-C)", cancelled_at=at_cancel)
    assert read_result(tmp_path / "r").error.startswith("interrupted: Slurm job 7_0 was cancelled")


def test_a_second_ctrl_c_stops_the_wait_for_cancelled_jobs_but_not_their_record(tmp_path, monkeypatch):
    import rlrs.executors as executors

    ex, submit, lines = _submitted(tmp_path)
    s = submit()
    monkeypatch.setattr(executors, "_slurm", lambda argv, timeout_s: subprocess.CompletedProcess(argv, 0, "", ""))
    looks = []

    def still_running(ids, timeout_s=60.0):  # a job that does not end: only a second Ctrl-C ends the wait
        looks.append(ids)
        os.kill(os.getpid(), signal.SIGINT)
        return {i: ("RUNNING", "None") for i in ids}

    monkeypatch.setattr(executors, "_job_states", still_running)
    before = signal.getsignal(signal.SIGINT)
    ex._cancel([s], "Ctrl-C")
    assert signal.getsignal(signal.SIGINT) is before
    assert len(looks) <= 2  # not CANCEL_WAIT_S of looking
    assert read_result(tmp_path / "r").error.startswith("interrupted: Slurm job 7_0 was cancelled when rlrs stopped")
    assert any("run the same command again" in ln for ln in lines)


def test_a_ctrl_c_during_submission_reaches_rlrs_not_the_sbatch_it_started():
    from rlrs.executors import _sigint_deferred

    show = "import signal; print(int(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"
    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            child = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True)
            os.kill(os.getpid(), signal.SIGINT)  # held until the block ends
            held = True
    assert held and child.stdout.strip() == "1"  # the child (sbatch) had Ctrl-C blocked
    after = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True)
    assert after.stdout.strip() == "0"


def test_jobs_waiting_in_the_queue_say_why_once_with_the_fix_where_it_cannot_clear(tmp_path):
    ex, _, lines = _submitted(tmp_path)
    told = set()
    ex._tell_pending({"7_0": ("PENDING", "Resources"), "7_1": ("PENDING", "Resources"), "7_2": ("RUNNING", "None")}, told)
    ex._tell_pending({"7_0": ("PENDING", "Resources"), "7_1": ("PENDING", "PartitionTimeLimit")}, told)
    assert lines == ["  Slurm: 2 jobs pending (Resources); still waiting",
                     "  Slurm: 1 job pending (PartitionTimeLimit): its time limit is above the partition's: lower "
                     "--slurm-time-min (Ctrl-C, then run again)"]
