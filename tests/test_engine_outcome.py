"""One outcome type and one status rule (rlrs.outcome) for every kind of run: the trainer's, a
zoo task's and a user's command end with the status status_of gives for the same ending."""

import sys
from pathlib import Path

import pytest

import rlrs.engine
from rlrs import outcome
from rlrs.engine import CommandRun, PresetRun, execute
from rlrs.outcome import RunResult, status_of
from rlrs.plan import Plan
from rlrs.train import Trainer, run_config


@pytest.mark.parametrize("ending, status", [
    ({"reached_end": True}, "finished"),
    ({"reached_end": True, "unstable": True}, "unstable"),
    ({"reached_stop": True}, "stopped"),
    ({"nonfinite": True}, "diverged"),
    ({"nonfinite": True, "error": True, "reached_end": True}, "diverged"),
    ({"error": True}, "failed"),
    ({"error": True, "reached_end": True}, "failed"),
    ({"error": True, "reached_stop": True}, "failed"),
    ({"reached_end": True, "reached_stop": True}, "finished"),
    ({}, "failed"),  # ended early, without an error
])
def test_the_status_rule(ending, status):
    assert status_of(**ending) == status and status in outcome.STATUSES


def test_the_engine_knows_the_one_outcome_type():
    assert rlrs.engine.RunResult is RunResult and rlrs.engine.status_of is status_of
    assert not hasattr(rlrs.train, "RunResult") or rlrs.train.RunResult is RunResult


def test_a_preset_run_ends_by_the_rule(tmp_path, tiny_sets):
    cfg = run_config("tiny-moe", "paper-moe", sets={**tiny_sets, "train.steps": 6})
    stopped = Trainer(cfg, tmp_path / "t").run(stop_at=3)
    assert isinstance(stopped, RunResult) and stopped.status == status_of(reached_stop=True)
    done = Trainer(cfg, tmp_path / "t", resume=True).run()
    assert done.status == status_of(reached_end=True) and done.steps == 6 and done.eval_steps[-1] == 6
    r = execute(PresetRun(cfg), tmp_path / "e")
    assert r.status == status_of(reached_end=True) and r.tokens and r.compute_steps == 6


def _command(tmp_path: Path, body: str, steps: int = 4) -> CommandRun:
    script = tmp_path / "train.py"
    script.write_text("import sys\nimport rlrs\n" + body)
    return CommandRun(f"{sys.executable} train.py", Plan(), steps=steps, cwd=str(tmp_path))


def test_a_command_ends_by_the_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(rlrs.engine.__file__).parents[1]))
    done = _command(tmp_path, "for s in range(1, 5):\n    rlrs.report(s, 1.0 / s)\n")
    assert execute(done, tmp_path / "a").status == status_of(reached_end=True)
    nan = _command(tmp_path, "rlrs.report(1, float('nan'))\nsys.exit(1)\n")
    assert execute(nan, tmp_path / "b").status == status_of(nonfinite=True, error=True)
    crash = _command(tmp_path, "rlrs.report(1, 1.0)\nsys.exit(2)\n")
    assert execute(crash, tmp_path / "c").status == status_of(error=True)
    early = _command(tmp_path, "rlrs.report(1, 1.0)\n")
    r = execute(early, tmp_path / "d")
    assert r.status == status_of() and "ended early" in r.error


def test_a_lost_command_counts_what_its_script_ran(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(rlrs.engine.__file__).parents[1]))
    spec = _command(tmp_path, "for s in range(1, 5):\n    rlrs.report(s, 1.0 / s)\n")
    execute(spec, tmp_path / "a")
    lost = rlrs.engine.lost_run(rlrs.engine.Job(spec, tmp_path / "a"), "worker killed")
    assert lost.status == "failed" and lost.steps == 4 and lost.ran_steps == 4


def test_a_task_run_ends_by_the_rule(tmp_path):
    from rlrs.zoo import strategies, tasks

    r = tasks.train_task(tasks.TASKS["gauss"], strategies.get("adamw"), 0, tmp_path / "t", epochs=1)
    assert isinstance(r, RunResult) and r.status == status_of(reached_end=True) and r.steps == r.total_steps
    assert r.eval_steps and r.final_eval_loss is not None
    e = execute(tasks.TaskRun("gauss", strategies.get("adamw"), epochs=1), tmp_path / "e")
    assert e.status == status_of(reached_end=True) and e.compute_steps == e.steps


def test_a_run_stopped_where_asked_says_so_in_its_headline(tmp_path):
    # A run stopped at stop_at (a probe, a pruning rung) has no error: its line says where it stopped.
    r = RunResult(tmp_path, "stopped", steps=16, total_steps=327, eval_steps=[0, 16], eval_loss=[6.9, 5.1], wall_s=3.0)
    assert r.headline() == "stopped at step 16 as asked, in 3.0s, eval loss 5.1000"
    interrupted = RunResult(tmp_path, "stopped", steps=5, error="interrupted by Ctrl-C")
    assert interrupted.headline() == "stopped: interrupted by Ctrl-C"
