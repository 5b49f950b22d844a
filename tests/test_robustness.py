"""Runs that never lose or misreport results, and bad input that always gets a clear answer.

Kills at every phase of a run (simulated by the exact files each phase leaves behind), damage to
each file of a run directory, concurrent writers, ``nonfinite=skip`` runs that barely trained,
the scheduler's state, and a property-based fuzz of plans, run configs, ``--set`` values and
config files: every input either works or raises rlrs's own error naming the field.
"""

import collections
import errno
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlrs.cli import disk_error, main
from rlrs.config import ConfigError, load_file
from rlrs.files import atomic_write_text
from rlrs.engine import PresetRun, execute, read_result
from rlrs.optim import RelativeLR, param_groups
from rlrs.plan import Plan
from rlrs import presets
from rlrs.runlog import read_metrics
from rlrs.train import CheckpointError, RunConfig, Trainer, run_config

STEPS = 12  # checkpoints every 25%: steps 3, 6, 9, 12


def _cfg(tiny_sets, **extra):
    return run_config("tiny-moe", "paper-moe", sets={**tiny_sets, "train.steps": STEPS,
                                                     "train.checkpoint_interval": 0.25, **extra})


def _set_args(tiny_sets, **extra):
    args = ["--model", "tiny-moe", "--plan", "paper-moe", "--no-progress"]
    for k, v in {**tiny_sets, "train.steps": STEPS, "train.checkpoint_interval": 0.25, **extra}.items():
        args.append(f"--set={k}={json.dumps(v) if isinstance(v, str) else v}")
    return args


def _log(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir):
    """One uninterrupted run: what every interrupted one must end up equal to."""
    sets = {"data.corpus": str(corpus_dir / "docs"), "data.cache_dir": str(corpus_dir / "cache"),
            "data.val_fraction": 0.2, "train.threads": 1}
    out = tmp_path_factory.mktemp("reference") / "run"
    Trainer(_cfg(sets), out).run()
    return out


def _ckpts(out: Path) -> list[str]:
    return [p.name for p in sorted((out / "checkpoints").glob("step_*.pt"))]


# --- kills at every phase -------------------------------------------------------------------------


def _killed_before_config(cfg, out):
    out.mkdir(parents=True)
    (out / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))  # the lock was taken, then the kill


def _killed_before_first_checkpoint(cfg, out):
    Trainer(cfg, out)  # config.json, plan.toml, an empty log
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "step": 0, "eval_loss": 9.9}\n{"kind": "train", "step": 1, "loss": 9.8}\n{"kind": "tr')


def _killed_during_a_checkpoint_write(cfg, out):
    Trainer(cfg, out).run(stop_at=6)
    (out / "summary.json").unlink()
    ck = out / "checkpoints"
    (ck / ".step_0000009.pt.tmp").write_bytes(b"half a checkpoint")
    (ck / "step_0000009.pt.sha256").write_text("0" * 64 + "\n")  # its checksum was written, the rename never came
    with open(out / "metrics.jsonl", "a") as f:
        for s in (7, 8, 9):
            f.write(json.dumps({"kind": "train", "step": s, "loss": 1.0}) + "\n")


def _killed_after_the_last_checkpoint(cfg, out):
    Trainer(cfg, out).run()
    (out / "summary.json").unlink()


def _killed_between_checkpoints(cfg, out):
    Trainer(cfg, out).run(stop_at=7)  # checkpoints at 3, 6 and the stop at 7
    newest = out / "checkpoints" / "step_0000007.pt"
    newest.unlink()
    Path(str(newest) + ".sha256").unlink()
    (out / "summary.json").unlink()  # as if killed after logging step 7, before its checkpoint


PHASES = {
    "before-config": _killed_before_config,
    "before-first-checkpoint": _killed_before_first_checkpoint,
    "during-checkpoint-write": _killed_during_a_checkpoint_write,
    "after-last-checkpoint": _killed_after_the_last_checkpoint,
    "between-checkpoints": _killed_between_checkpoints,
}


@pytest.mark.parametrize("how", ["--resume", "rerun"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_kill_at_any_phase_then_resume_or_rerun_equals_an_uninterrupted_run(tmp_path, tiny_sets, reference, phase, how):
    cfg = _cfg(tiny_sets)
    out = tmp_path / "run"
    PHASES[phase](cfg, out)
    if how == "--resume":
        assert main(["train", "--resume", "--out", str(out), *_set_args(tiny_sets)]) == 0
    else:  # what compare, lr-grid and tune do: the engine runs it again
        assert execute(PresetRun(cfg), out).status == "finished"
    assert _log(out) == _log(reference)
    summary, ref = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary["status"] == "finished" and summary["final_eval_loss"] == ref["final_eval_loss"]
    assert summary["steps"] == STEPS and summary["skipped_steps"] == 0
    assert _ckpts(out) == _ckpts(reference)
    assert not list(out.rglob("*.tmp"))


def test_a_plain_train_on_a_checkpointed_run_says_to_resume(tmp_path, tiny_sets, capsys):
    _killed_between_checkpoints(_cfg(tiny_sets), tmp_path / "run")
    assert main(["train", "--out", str(tmp_path / "run"), *_set_args(tiny_sets)]) == 2
    assert "continue it with --resume" in capsys.readouterr().err


# --- damage to each file of a run directory -----------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bytes": _flip,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),
    "empty": lambda p: p.write_bytes(b""),
    "no checksum file": lambda p: Path(str(p) + ".sha256").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_named_and_skipped_for_the_older_one(tmp_path, tiny_sets, reference, capsys, damage):
    cfg = _cfg(tiny_sets)
    out = tmp_path / "run"
    Trainer(cfg, out).run(stop_at=7)  # checkpoints 6 and 7
    DAMAGE[damage](out / "checkpoints" / "step_0000007.pt")
    t = Trainer(cfg, out, resume=True)
    err = capsys.readouterr().err
    assert t.step == 6 and "step_0000007.pt" in err and "trying the next older checkpoint" in err
    assert (out / "checkpoints" / "step_0000007.pt.damaged").exists()  # kept for inspection, out of the way
    t.run()
    assert _log(out) == _log(reference)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, tiny_sets, capsys):
    cfg = _cfg(tiny_sets)
    Trainer(cfg, tmp_path / "run").run(stop_at=7)
    for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt"):
        _flip(p)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from .*fails its checksum"):
        Trainer(cfg, tmp_path / "run", resume=True)


def test_an_edited_config_is_refused_naming_the_keys_that_differ(tmp_path, tiny_sets, capsys):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sets), out).run(stop_at=6)
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"]["steps"] = 18
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    assert "train.steps (12 vs 18)" in capsys.readouterr().err
    assert _ckpts(out) == ["step_0000003.pt", "step_0000006.pt"]  # nothing trained on the wrong schedule


def test_a_damaged_log_line_is_reported_and_later_rows_are_kept(tmp_path, tiny_sets, reference, capsys):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_sets), out).run(stop_at=9)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:25]  # a damaged record in the middle, long before the checkpoint
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: damaged record"):
        read_metrics(out)  # never a silent loss
    t = Trainer(_cfg(tiny_sets), out, resume=True)
    assert "metrics.jsonl:4: damaged record" in capsys.readouterr().err
    t.run()
    ref = _log(reference)
    assert _log(out) == ref[:3] + ref[4:]  # only the damaged record is gone; every later row is there


def test_damaged_record_files_are_rebuilt_without_training_again(tmp_path, tiny_sets):
    cfg = _cfg(tiny_sets)
    out = tmp_path / "run"
    first = execute(PresetRun(cfg), out)
    (out / "result.json").write_text('{"status": "fini')  # the engine's record
    again = execute(PresetRun(cfg), out)
    assert again.status == "finished" and again.compute_steps == 0 and again.eval_loss == first.eval_loss
    assert read_result(out).status == "finished"
    summary = (out / "summary.json").read_text()
    (out / "summary.json").write_text(summary[:20])  # the trainer's record
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["final_eval_loss"] == json.loads(summary)["final_eval_loss"]


# --- concurrent writers ------------------------------------------------------------------------------


def _spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "rlrs", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_two_trains_on_one_directory_one_is_refused_and_nothing_is_mixed(tmp_path, tiny_sets, reference, resume):
    out = tmp_path / "run"
    if resume:
        Trainer(_cfg(tiny_sets), out).run(stop_at=3)
    args = ["train", "--out", str(out), *_set_args(tiny_sets)] + (["--resume"] if resume else [])
    procs = [_spawn(*args), _spawn(*args)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    # The second is refused while the first holds the run; if the first was already done when the
    # second looked, a plain start is refused and a resume finds the run finished.
    assert codes == [0, 2] or (resume and codes == [0, 0]), results
    for code, err in results:
        if code == 2:
            assert "is being written by process" in err or "already holds a run" in err, err
    assert _log(out) == _log(reference)  # every row once, from one run


# Holds a run directory's lock again and again until the stop file appears; says "holding" once
# it has held it (the test waits for that line, not for a guessed time).
HOLDER = """
import sys
from pathlib import Path
from rlrs.engine import run_lock
out, stop = Path(sys.argv[1]), Path(sys.argv[2])
said = False
while not stop.exists():
    with run_lock(out, wait=True):
        if not said:
            print("holding", flush=True)
            said = True
"""


def test_a_refusal_always_names_the_holder_even_the_moment_it_took_the_lock(tmp_path):
    # The flaky [False] case of the test above: the second train looked between the first one's
    # flock and its writing its pid, and was told "another process". Taking the lock and writing
    # the record are now one step (a hard link of the record file); thousands of tries against a
    # holder that takes and releases the lock without pause never see a lock without its holder.
    from rlrs.engine import RunLocked, run_lock

    out, stop = tmp_path / "run", tmp_path / "stop"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        refusals = []
        for _ in range(20_000):
            try:
                with run_lock(out, wait=False):
                    pass
            except RunLocked as err:
                refusals.append(str(err))
                if len(refusals) == 50:
                    break
    finally:
        stop.touch()
        holder.wait(timeout=120)
    assert holder.returncode == 0, holder.stderr.read()
    assert refusals, "the holder never held the lock when this process tried"
    assert all(f"is being written by process {holder.pid} on " in m for m in refusals), collections.Counter(refusals)
    assert sorted(p.name for p in out.iterdir()) == []  # released: no .lock, no record file left


def test_a_lock_left_by_a_killed_holder_is_taken_over_and_a_release_removes_it(tmp_path):
    from rlrs.engine import RunLocked, run_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))  # nobody holds its flock
    with run_lock(out, wait=False):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"is being written by process {os.getpid()} on "):
            with run_lock(out, wait=False):
                pass
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("links", [True, False])
def test_a_wait_for_a_live_holder_ends_at_its_timeout(tmp_path, monkeypatch, links):
    # Slurm's executor records a cancelled job's run under the lock: where the job's process
    # outlives its cancellation, waiting for it must end, not hang rlrs after a Ctrl-C.
    from rlrs.engine import RunLocked, run_lock

    if not links:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no")))
    out = tmp_path / "run"
    with run_lock(out, wait=False):  # held by this process: alive all along
        with pytest.raises(RunLocked, match=f"is still being written by process {os.getpid()} on "):
            with run_lock(out, wait=True, timeout_s=0.2):
                pass
    with run_lock(out, wait=True, timeout_s=0.2):  # released: taken at once
        pass


def test_a_lock_held_in_a_slurm_job_names_the_job_and_how_to_tell_it_has_ended(tmp_path, monkeypatch):
    # A rerun while jobs of an earlier rlrs still run (its terminal closed) finds their locks held on
    # other hosts: the refusal names the job to check or cancel, never "remove the lock" bare.
    from rlrs.engine import RunLocked, _unlock_advice, run_lock

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    out = tmp_path / "run"
    with run_lock(out, wait=False):
        monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
        monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
        with pytest.raises(RunLocked, match=r"process \d+ on \S+ \(Slurm job 812_3\)"):
            with run_lock(out, wait=False):
                pass
        holder = json.loads((out / ".lock").read_text())
    advice = _unlock_advice(holder, out / ".lock")
    assert "squeue -j 812_3" in advice and "scancel 812_3" in advice and "only once it has ended" in advice


def test_the_lock_works_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    from rlrs.engine import RunLocked, run_lock

    def no_links(src, dst, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "run"
    with run_lock(out, wait=False):
        with pytest.raises(RunLocked, match=f"is being written by process {os.getpid()} on "):
            with run_lock(out, wait=False):
                pass
    with run_lock(out, wait=False):  # released
        pass
    assert [p.name for p in out.iterdir()] == [".lock"]  # no record file left behind


@pytest.mark.slow
def test_two_compares_on_one_directory_train_each_run_once_and_agree(tmp_path, tiny_sets):
    args = ["compare", "--model", "tiny-dense", "--plans", "uniform-dense,paper-dense", "--seeds", "1",
            "--out", str(tmp_path / "c"), "--workers", "1",
            *[f"--set={k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in {**tiny_sets, "train.steps": 6}.items()]]
    procs = [_spawn(*args), _spawn(*args)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [c for c, _ in results] == [0, 0], results
    runs = sorted((tmp_path / "c" / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:  # the second process waited for each run and reused it: every row once
        keys = [(r["kind"], r["step"]) for r in read_metrics(run)]
        assert len(keys) == len(set(keys)), run
    data = json.loads((tmp_path / "c" / "results.json").read_text())
    assert all(r["status"] == "finished" for r in data["runs"])


# --- runs that barely trained ------------------------------------------------------------------------


POOL_SCRIPT = """
import sys
from rlrs.engine import CommandRun, Job, Pool, PresetRun
from rlrs.plan import Plan
from rlrs.train import run_config
if sys.argv[2] == "command":
    spec = CommandRun(sys.argv[3], Plan())
else:
    sets = {k: v for k, v in (a.split("=", 1) for a in sys.argv[3:])}
    spec = PresetRun(run_config("tiny-dense", sets={**sets, "train.steps": 100000, "data.val_fraction": 0.2}))
with Pool(1) as pool:
    pool.run([Job(spec, sys.argv[1])])
"""

# A user's training command that never ends; it writes its pid where the test can find it.
FOREVER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the worker")
@pytest.mark.parametrize("kind", ["preset", "command"])
def test_a_pool_worker_stops_when_its_parent_is_killed(tmp_path, tiny_sets, kind):
    # kill -9 of a compare/tune/lr-grid process must not leave its training runs going on unseen:
    # neither rlrs's own training nor the user's --command (its own process group).
    if kind == "command":
        pidfile = tmp_path / "user.pid"
        args = ["command", f"{sys.executable} -c {shlex.quote(FOREVER)} {pidfile}"]
        started = pidfile
    else:
        args = ["preset", *(f"{k}={v}" for k, v in tiny_sets.items() if k in ("data.corpus", "data.cache_dir"))]
        started = tmp_path / "run" / "metrics.jsonl"
    parent = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT, str(tmp_path / "run"), *args])
    watched: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (started.exists() and started.stat().st_size):
            time.sleep(0.2)
        watched = [c for c in _children(parent.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert watched, "the pool's worker never started the run"
        if kind == "command":
            watched.append(int(started.read_text()))
        parent.kill()
        parent.wait()
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(w) for w in watched):
            time.sleep(0.2)
        assert not any(_alive(w) for w in watched), "a run went on after the process that started it was killed"
    finally:
        parent.kill()
        for w in watched:
            if _alive(w):
                os.kill(w, 9)


def test_a_run_that_skipped_most_steps_is_unstable_not_finished(tmp_path, tiny_sets):
    cfg = _cfg(tiny_sets, **{"train.nonfinite": "skip"})
    t = Trainer(cfg, tmp_path / "run")

    def hook(module, args, out):
        if t.step >= 2:
            out.loss = out.loss * float("nan")
        return out

    t.model.register_forward_hook(hook)
    r = t.run()
    assert r.status == "unstable" and r.skipped_steps == STEPS - 2 and "were skipped" in r.error
    text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}: not JSON"))
    assert summary["status"] == "unstable" and summary["reason"] == r.error
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}: not JSON"))


def test_a_run_whose_final_loss_is_not_finite_exits_non_zero_and_is_recorded_as_unstable(tmp_path, tiny_sets, capsys,
                                                                                          monkeypatch):
    monkeypatch.setattr(Trainer, "evaluate", lambda self: float("nan"))  # the model's eval loss is NaN
    assert main(["train", "--out", str(tmp_path / "run"), *_set_args(tiny_sets, **{"train.steps": 4})]) == 3
    assert "unstable: its final eval loss is nan" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_eval_loss"] is None and summary["status"] == "unstable"
    cfg = _cfg(tiny_sets, **{"train.steps": 4})
    r = execute(PresetRun(cfg), tmp_path / "run2")
    assert r.status == "unstable" and "not a result" in r.error
    again = execute(PresetRun(cfg), tmp_path / "run2")  # as deterministic as a divergence: reused, not retrained
    assert again.reused and again.status == "unstable" and read_result(tmp_path / "run2").status == "unstable"


# --- the scheduler's state ---------------------------------------------------------------------------


def _sched(toy, plan, total=100):
    opt = torch.optim.AdamW(param_groups(toy, plan))
    return opt, RelativeLR(opt, plan, total)


def test_relative_lr_refuses_another_schedules_state_unless_told_to_adopt_it(toy):
    paper = presets.get("paper-moe")
    _, a = _sched(toy, paper)
    for _ in range(5):
        a.optimizer.step()
        a.step()
    _, b = _sched(toy, presets.get("uniform-moe"))
    with pytest.raises(ConfigError, match=r"another schedule \(plan\.embedding\.end, plan\.embedding\.start, .*pass adopt=True"):
        b.load_state_dict(a.state_dict())
    _, c = _sched(toy, paper, total=200)
    with pytest.raises(ConfigError, match=r"total_steps 100 \(saved\) vs 200 \(now\)"):
        c.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict(), adopt=True)
    assert c.total_steps == 100 and c.plan == paper and c.get_last_lr() == a.get_last_lr()


def test_relative_lr_rejects_foreign_states_and_groups_without_a_component(toy):
    opt, sched = _sched(toy, presets.get("paper-moe"))
    step_lr = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), 10)
    with pytest.raises(ConfigError, match="not a RelativeLR state"):
        sched.load_state_dict(step_lr.state_dict())
    opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})
    opt.step()
    with pytest.raises(ConfigError, match=r"param_groups\[\d+\] has no 'components' .*add_param_group"):
        sched.step()


def test_an_all_frozen_model_is_a_clear_error(toy):
    for p in toy.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        param_groups(toy, Plan())


# --- bad input gets a clear error --------------------------------------------------------------------


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD_INPUTS = [
    (lambda t: ["--plan", _write(t, "p.toml", b"base_lr = 3e-3 # \xff\xfe")], "not UTF-8"),
    (lambda t: ["--plan", _write(t, "p.toml", "base_lr = 1e400")], "finite number"),
    (lambda t: ["--config", _write(t, "c.json", "[" * 2000 + "]" * 2000)], "nested too deeply"),
    (lambda t: ["--config", _write(t, "c.json", '{"train": {"steps": 5, "steps": 6}}')], "'steps' appears twice"),
    (lambda t: ["--set", "train.seed=99999999999999999999"], "train.seed: 99999999999999999999 is too large"),
    (lambda t: ["--set", "train.seed=4294967296"], "train.seed: an integer in [0, 2**32)"),
    (lambda t: ["--set", "train.beta1=1"], "train.beta1: an Adam moment decay in [0, 1)"),
    (lambda t: ["--set", "train.eps=-1"], "train.eps: must be > 0"),
    (lambda t: ["--set", "train.eps=nan"], "train.eps: expected a finite number"),
    (lambda t: ["--set", "train.eps=inf"], "train.eps: expected a finite number"),
    (lambda t: ["--set", "train.device=gpu"], "train.device: 'gpu' is not a torch device"),
    (lambda t: ["--set", "model.d_model=99999999999999999999"], "model.d_model: 99999999999999999999 is too large"),
    (lambda t: ["--set", "model.d_model=65534"], "model.n_heads: d_model=65534 must split"),
    (lambda t: ["--set", "model.init_scale=1e20"], "model.init_scale: 1e+20 is far too large"),
    (lambda t: ["--set", "plan.base_lr=1e300", "--set", "plan.embedding.start=1e10"], "embedding.start: the learning rate base_lr × λ overflows"),
    (lambda t: ["--set", "plan.base_lr=1e-300", "--set", "plan.final_fraction=1e-20"], "underflows to 0"),
    (lambda t: ["--set", "plan.base_lr=1e-3\nplan.warmup=0.5"], "plan.base_lr: the value spans several lines"),
    (lambda t: ["--stop-at", "-1"], "--stop-at: a step >= 1"),
    (lambda t: ["--out", _write(t, "afile", "x")], "a file of that name exists"),
    (lambda t: ["--out", str(Path(_write(t, "afile2", "x")) / "sub")], "a part of the path is a file"),
]


@pytest.mark.parametrize("make, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_fast(tmp_path, tiny_sets, capsys, make, message):
    args = ["train", "--out", str(tmp_path / "out"), "--model", "tiny-moe", "--no-progress",
            *[f"--set={k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in tiny_sets.items()]]
    extra = make(tmp_path)
    if "--out" in extra:
        args = [args[0], *args[3:]]  # the test's own --out replaces the default
    t0 = time.perf_counter()
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("command", [
    ["train", "--model", "tiny-dense"],
    ["compare", "--model", "tiny-dense", "--seeds", "1"],
    ["lr-grid", "--model", "tiny-dense", "--grid", "1e-3"],
    ["ablate", "--model", "tiny-dense"],
    ["transfer", "--model", "tiny-dense", "--plan", "paper-dense"],
    ["width-transfer", "--model", "tiny-dense", "--widths", "32,64"],
    ["tune", "--model", "tiny-dense", "--budget", "2"],
    ["zoo", "--tasks", "tiny", "--strategies", "uniform"],
    ["demo", "--steps", "4"],
    ["coord-check", "--widths", "32,64"],
    ["plot-plan"],
], ids=lambda c: c[0])
@pytest.mark.parametrize("out,message", [
    ("/dev/null", "--out /dev/null: a file of that name exists, not a directory; give a directory"),
    ("/dev/null/runs", "--out /dev/null/runs: a part of the path is a file (/dev/null), not a directory"),
])
def test_an_unusable_out_is_refused_before_anything_trains(tiny_sets, capsys, command, out, message):
    t0 = time.perf_counter()
    assert main([*command, "--out", out, *[f"--set={k}={v}" for k, v in tiny_sets.items()
                                            if command[0] in ("train", "compare", "lr-grid")]]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Errno" not in captured.err, captured.err
    assert captured.out == ""  # not a run started: the check comes first
    assert time.perf_counter() - t0 < 10


def test_an_out_without_write_permission_is_refused_and_the_check_creates_nothing(tmp_path, monkeypatch):
    from rlrs.options import check_out

    new = tmp_path / "a" / "b"
    assert check_out(new) == new and not (tmp_path / "a").exists()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only disk or another user's directory
    with pytest.raises(ConfigError, match=f"--out {new}: cannot be created: no permission to write in {tmp_path}"):
        check_out(new)
    with pytest.raises(ConfigError, match=f"--out {tmp_path}: no permission to write in it"):
        check_out(tmp_path)


def test_list_flags_show_their_own_example(tmp_path, capsys):
    cases = [
        (["width-transfer", "--model", "tiny-dense", "--widths", "32,abc"], "write e.g. --widths 32,64,128,256"),
        (["width-transfer", "--model", "tiny-dense", "--widths", "32,-64"], "write e.g. --widths 32,64,128,256"),
        (["coord-check", "--widths", "32,64.5"], "e.g. --widths 32,64,128,256"),
        (["ablate", "--model", "tiny-dense", "--factors", "0.5,abc"], "write e.g. --factors 0.2,0.667,1.5,5"),
        (["ablate", "--model", "tiny-dense", "--factors", "0.5,-2"], "write e.g. --factors 0.2,0.667,1.5,5"),
        (["tune", "--model", "tiny-dense", "--budget", "2", "--prune-at", "half"], "write e.g. --prune-at 0.25,0.5,0.75"),
        (["lr-grid", "--model", "tiny-dense", "--grid", "1e-3,x"], "write e.g. --grid 1e-3,2e-3,5e-3"),
    ]
    for args, example in cases:
        assert main([*args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert example in err, err
        if args[0] != "lr-grid":
            assert "1e-3" not in err, err  # not an LR grid's example


@pytest.mark.parametrize("value,shown", [("float('inf')", "inf"), ("float('-inf')", "-inf"), ("float('nan')", "nan")])
def test_a_diverged_command_says_what_it_reported(tmp_path, value, shown):
    from rlrs.engine import CommandRun

    script = tmp_path / "train.py"
    script.write_text(f"import rlrs\nrlrs.report(0, 5.0)\nrlrs.report(4, {value})\n")
    r = execute(CommandRun(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", Plan()), tmp_path / "r")
    assert r.status == "diverged"
    assert f"reported a non-finite eval loss ({shown}) at step 4" in r.error, r.error


def test_disk_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    assert disk_error(full) == f"{tmp_path / 'x.json'}: No space left on device (the disk is full; free some space or choose another --out)"
    assert "read-only" in disk_error(OSError(errno.EROFS, "Read-only file system", "/r"))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "summary.json", "{}")
    assert list(tmp_path.iterdir()) == []  # no partial .tmp left behind


def test_a_component_list_given_as_one_string_is_refused(tmp_path):
    from rlrs.plots import plot_plan
    from rlrs.experiments.ablate import ablate

    with pytest.raises(ConfigError, match=r"give a list of component names, e.g. \['embedding'\]"):
        plot_plan(Plan(), 100, tmp_path / "x.png", components="embedding")
    with pytest.raises(ConfigError, match="not the string 'router'"):
        ablate("tiny-moe", "paper-moe", tmp_path / "a", components="router")


def test_short_runs_keep_one_warmup_step_and_inspect_lists_each_step_once():
    from rlrs.inspection import parse_steps

    plan = Plan(base_lr=1e-3, warmup=0.01)
    assert plan.lr("attention", 0, 40) == 0.0 and plan.lr("attention", 1, 40) == pytest.approx(1e-3)
    assert parse_steps("0,1%,50%,100%", 40) == [0, 20, 39]


def test_inspect_counts_the_parameters_training_builds(tiny_sets):
    from rlrs.inspection import load_model
    from rlrs.models import build_model, count_params

    trained = build_model(run_config("tiny-moe").model)
    counted = count_params(run_config("tiny-moe").model)["total"]
    shown = sum(p.numel() for p in load_model("tiny-moe").parameters())
    assert shown == counted == sum(p.numel() for p in trained.parameters())


# --- the fuzz: every input works or gets rlrs's own error ----------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = collections.Counter()
FUZZ_SETTINGS = settings(max_examples=250, deadline=2000, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _keys(obj, prefix=""):
    from rlrs.config import to_dict

    out = []
    for k, v in (obj if isinstance(obj, dict) else to_dict(obj)).items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


RUN_KEYS = [k for k in _keys(run_config("tiny-moe")) if k != "preset"]
NUMBERS = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, -1, 0.5, 1e-300, 1e300, 2**31, 2**63, 1e400]),
)
VALUES = st.one_of(
    NUMBERS.map(repr),
    st.sampled_from(["true", "false", '"cosine"', "skip", "cuda:0", "[1, 2]", "[", "{a=1}", "nan", "inf", "-inf",
                     '""', "a\nb", "1\nplan.warmup = 0", "1e400", "9" * 30]),
    st.text(max_size=12),
)


def _judge(fn) -> None:
    """Run ``fn``; count how it ended. Anything but success or rlrs's ConfigError fails the test."""
    FUZZ["inputs"] += 1
    try:
        fn()
    except ConfigError as err:
        assert str(err).strip(), "an error without a message"
        FUZZ["clear errors"] += 1
        return
    FUZZ["worked"] += 1


def _check_run_config(cfg: RunConfig) -> None:
    """What 'works' means for a run config: the model, its param groups, the optimizer and the
    schedule build, and every component's LR is a finite number at the start, middle and end."""
    from rlrs.models import build_model, count_params
    from rlrs.train import total_steps

    total = total_steps(cfg)
    for comp in ("embedding", "attention", "router"):
        for step in (0, total // 2, total - 1):
            assert math.isfinite(cfg.plan.lr(comp, step, total))
    if count_params(cfg.model)["total"] < 3_000_000:
        with torch.device("meta"):
            model = build_model(cfg.model)
        opt = torch.optim.AdamW(param_groups(model, cfg.plan), eps=cfg.train.eps, betas=(cfg.train.beta1, cfg.train.beta2))
        RelativeLR(opt, cfg.plan, total)


@FUZZ_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(RUN_KEYS + ["train.stpes", "plan.router", "model", "nokey"]), VALUES),
                min_size=1, max_size=3))
def test_fuzz_set_values(pairs):
    from rlrs.options import parse_sets

    def attempt():
        t0 = time.perf_counter()
        try:
            cfg = run_config("tiny-moe", sets=parse_sets([f"{k}={v}" for k, v in pairs]))
            _check_run_config(cfg)
        finally:
            assert time.perf_counter() - t0 < 2.0, "took too long"

    _judge(attempt)


PLAN_VALUES = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=8),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), NUMBERS, max_size=2))


@FUZZ_SETTINGS
@given(st.dictionaries(st.sampled_from(_keys(Plan()) + ["warmpu", "router", "experts"]), PLAN_VALUES, max_size=4),
       st.integers(min_value=-5, max_value=10**7))
def test_fuzz_plans(flat, total_steps):
    def attempt():
        tree: dict = {}
        for k, v in flat.items():
            node = tree
            *parents, last = k.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{k}: conflicts with a value given for {p}")  # the input itself is contradictory
            node[last] = v
        plan = Plan.from_dict(tree)
        opt = torch.optim.AdamW([{"params": [torch.zeros(2, 2, requires_grad=True)], "components": ("router",)}])
        sched = RelativeLR(opt, plan, total_steps)
        assert all(math.isfinite(lr) and lr >= 0 for lr in sched.get_last_lr())
        for step in (total_steps // 2, total_steps - 1):
            assert math.isfinite(plan.lr("router", step, total_steps))

    _judge(attempt)


@FUZZ_SETTINGS
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                 st.sampled_from([b"[" * 3000, b"a = " + b"[" * 3000, b'{"a": 1, "a": 2}', b"base_lr = 1e400",
                                  b"\xef\xbb\xbfbase_lr = 1", b"[router]\nstart = -1", b"null", b"[]"])),
       st.sampled_from([".toml", ".json"]))
def test_fuzz_plan_files(tmp_path_factory, content, suffix):
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(content)
    _judge(lambda: Plan.load(path))
    _judge(lambda: load_file(path))


def test_fuzz_counts_are_reported():
    """Runs after the fuzz tests (file order): prints what they tried; zero raw tracebacks, or
    they would have failed."""
    if not FUZZ:
        pytest.skip("the fuzz tests did not run in this session")
    line = (f"fuzz: {FUZZ['inputs']} inputs tried, {FUZZ['worked']} worked, {FUZZ['clear errors']} clear errors, "
            f"0 raw tracebacks")
    print("\n" + line)
    assert FUZZ["inputs"] == FUZZ["worked"] + FUZZ["clear errors"] and FUZZ["clear errors"] > 0 and FUZZ["worked"] > 0


# --- the smaller things: messages that name the key, reports that say what they mean ---------------


def test_data_errors_name_the_keys_to_set(tmp_path):
    from rlrs.data import DataError, val_batches
    from rlrs.data.corpora import _read_jsonl

    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"body": "some text"}\n')
    with pytest.raises(DataError, match=r"--set data.text_field=NAME"):
        _read_jsonl(jl, "text")
    with pytest.raises(DataError, match=r"train.seq_len.*data.val_fraction"):
        val_batches(torch.zeros(10, dtype=torch.int64).numpy(), n_batches=1, batch_size=1, seq_len=64)


def test_transfer_reports_tokens_it_knows_and_says_when_it_does_not():
    from rlrs.experiments.transfer import _fmt_tokens

    assert (_fmt_tokens(None), _fmt_tokens(0), _fmt_tokens(1_234_567), _fmt_tokens(2_500_000_000)) == (
        "not reported", "0", "1.23M", "2.50B")


@pytest.mark.parametrize("command", ["transfer", "ablate", "compare", "lr-grid", "tune", "train"])
def test_every_option_of_every_experiment_command_has_help(command):
    from rlrs.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "subcommand")
    missing = [a.option_strings[0] for a in sub.choices[command]._actions if a.option_strings and not a.help]
    assert not missing, f"rlrs {command}: no help for {missing}"


def test_settings_added_later_keep_old_run_directories_and_checkpoints(tiny_sets):
    # A run made before a setting existed must keep its directory and resume after an upgrade:
    # added settings at their default are not part of a run's identity.
    from rlrs.config import identity, replace
    from rlrs.engine import PresetRun, run_dir
    from rlrs.train import _same_config

    import dataclasses

    cfg = run_config("tiny-dense", sets=tiny_sets)
    ident = identity(cfg)
    added = {section: [f.name for f in dataclasses.fields(getattr(cfg, section)) if f.metadata.get("added")]
             for section in ("model", "plan")}
    # The plan's factors are written as flat keys; those that name a run only when set count as added.
    added["plan"] += [k for k in cfg.plan.to_dict() if k not in ident["plan"] and k not in added["plan"]]
    assert {"parametrization", "base_width"} <= set(added["model"])
    assert {"width_warmup", "width_warmup_m", "depth_decay", "warmup_from", "sgdr_first"} <= set(added["plan"])
    for section, keys in added.items():
        for key in keys:
            assert key not in ident[section]
    old = cfg.to_dict()  # as an older version wrote it: without the added keys
    for section, keys in added.items():
        for key in keys:
            old[section].pop(key)
    assert ident == old and _same_config(old, cfg)
    # A non-default value is part of the identity: another directory, another checkpoint.
    mup = replace(cfg, {"model.parametrization": "mup", "model.base_width": 32}, where="")
    assert identity(mup)["model"]["parametrization"] == "mup"
    assert run_dir("r", PresetRun(mup)) != run_dir("r", PresetRun(cfg)) and not _same_config(old, mup)
