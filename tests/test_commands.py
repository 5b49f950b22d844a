"""The experiment commands on the user's own script (``--command``): the engine's command runs,
failures, pruning, workers, and the three examples in ``examples/`` at tiny sizes."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlrs.cli import main
from rlrs.experiments.compare import compare
from rlrs.engine import CommandRun, _EvalWatch, eval_curve, execute, run_dir
from rlrs.targets import CommandTarget
from rlrs import presets

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).parent / "scripts" / "fake_train.py"
PY = shlex.quote(sys.executable)


def fake(mode: str, steps: int = 20) -> str:
    return f"{PY} {shlex.quote(str(FAKE))} {mode} {steps}"


def _quiet(_msg: str) -> None:
    pass


# --- the engine on commands ---------------------------------------------------------------------------


def test_the_watch_on_a_running_command_reads_only_whole_new_lines(tmp_path):
    watch = _EvalWatch(tmp_path)
    assert watch.look() == ([], [])  # no log yet
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "eval", "step": 0, "eval_loss": 5.0}\n{"kind": "eval", "step": 10, "eval_')
    assert watch.look() == ([0], [5.0])  # the half-written line waits for its newline
    with log.open("a") as f:
        f.write('loss": 4.0}\n{"kind": "train", "step": 11}\n')
    assert watch.look() == ([0, 10], [5.0, 4.0])
    with log.open("a") as f:  # the script restarted from its step-0 checkpoint: later reports are replaced
        f.write('{"kind": "eval", "step": 0, "eval_loss": 5.5}\n{"kind": "eval", "step": 10, "eval_loss": null}\n')
    xs, ys = watch.look()
    assert xs == [0, 10] and ys[0] == 5.5 and ys[1] != ys[1]  # null: NaN, a divergence
    assert (xs, ys[:1]) == (eval_curve(tmp_path)[0], eval_curve(tmp_path)[1][:1])  # the same rule as the final read
    log.write_text('{"kind": "eval", "step": 0, "eval_loss": 6.0}\n')  # replaced by a shorter file
    assert watch.look() == ([0], [6.0])


def test_a_command_run_gets_its_plan_seed_and_directory(tmp_path):
    plan = presets.get("paper-dense")
    cmd = f"{fake('ok')} && echo {{plan}} {{run_dir}} {{seed}} > where.txt"
    spec = CommandRun(cmd, plan, seed=3, cwd=str(tmp_path))
    out = run_dir(tmp_path / "runs", spec)
    r = execute(spec, out)
    assert r.status == "finished" and r.exit_code == 0 and r.steps == 20
    assert r.eval_steps == list(range(0, 21, 2)) and r.final_eval_loss == pytest.approx(r.eval_loss[-1])
    assert (out / "plan.toml").exists() and str(out) in (out / "stdout.log").read_text()
    assert (tmp_path / "where.txt").read_text().split() == [str(out / "plan.toml"), str(out), "3"]
    assert "seed 3" in (out / "stdout.log").read_text()
    again = execute(spec, out)
    assert again.reused and again.eval_loss == r.eval_loss


def test_a_launchers_failure_is_headed_by_the_ranks_own_error_not_its_banner(tmp_path):
    # torchrun prints a failing rank's exception, then its own traceback (ending in an empty
    # ChildFailedError) and a banner of ==== and key : value lines: more than the tail keeps.
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        "import sys\n"
        "sys.stderr.write('[rank1]: Traceback (most recent call last):\\n[rank1]: ValueError: batch 7 is empty\\n')\n"
        "for i in range(40):\n"
        "    sys.stderr.write('  File \"run.py\", line %d, in main\\n' % i)\n"
        "sys.stderr.write('torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \\n')\n"
        "sys.stderr.write('=' * 50 + '\\n  exitcode  : 1 (pid: 12)\\n' + '=' * 50 + '\\n')\n"
        "sys.exit(int(sys.argv[1]))\n")
    r = execute(CommandRun(f"{PY} {shlex.quote(str(launcher))} 1", presets.get("paper-dense")), tmp_path / "r")
    assert r.status == "failed"
    assert r.headline() == "failed: [rank1]: ValueError: batch 7 is empty"
    assert "[rank1]: ValueError: batch 7 is empty\n...\n" in r.error  # kept above the last lines
    assert r.error.rstrip().endswith("=" * 50)
    # Without an exception line, the reason leads: the exit status, not the banner's last line.
    banner = tmp_path / "banner.py"
    banner.write_text("import sys\nsys.stderr.write('=' * 50 + '\\n')\nsys.exit(2)\n")
    plain = execute(CommandRun(f"{PY} {shlex.quote(str(banner))}", presets.get("paper-dense")), tmp_path / "plain")
    assert plain.headline() == "failed: exit status 2"


def test_end_distributed_flushes_and_leaves_with_its_code_without_pythons_shutdown(tmp_path):
    # Python's shutdown is where gloo's threads abort a torchrun process: end_distributed skips it
    # (atexit handlers do not run) and loses nothing the script printed or closed.
    code = ("import atexit, sys, rlrs\n"
            "atexit.register(lambda: print('shutdown ran'))\n"
            "print('reported', end='')\n"
            "sys.stderr.write('warned')\n"
            "rlrs.script.end_distributed(5)\n"
            "print('after')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (5, "reported", "warned")


@pytest.mark.parametrize("mode,status,words", [
    ("crash", "failed", ["exit status 3", "something broke in the data loader"]),
    ("kill", "failed", ["killed by signal 9"]),
    ("nan", "diverged", ["non-finite eval loss"]),
    ("silent", "failed", ["never called rlrs.report"]),
])
def test_a_failing_command_is_a_recorded_failure(tmp_path, mode, status, words):
    spec = CommandRun(fake(mode), presets.get("paper-dense"))
    r = execute(spec, tmp_path / "r")
    assert r.status == status, r.error
    for w in words:
        assert w in r.error
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert record["status"] == status and record["error"] == r.error


def test_a_failed_command_runs_again_and_a_diverged_one_is_reused(tmp_path):
    crash = execute(CommandRun(fake("crash"), presets.get("paper-dense")), tmp_path / "c")
    assert not execute(CommandRun(fake("crash"), presets.get("paper-dense")), tmp_path / "c").reused
    assert crash.status == "failed"
    execute(CommandRun(fake("nan"), presets.get("paper-dense")), tmp_path / "n")
    assert execute(CommandRun(fake("nan"), presets.get("paper-dense")), tmp_path / "n").reused


def test_stop_at_a_rung_stops_the_command_and_a_later_call_continues(tmp_path):
    spec = CommandRun(fake("slow", 20), presets.get("paper-dense"), steps=20)
    half = execute(spec, tmp_path / "r", stop_at=10)
    assert half.status == "stopped" and 10 <= half.steps < 20
    assert execute(spec, tmp_path / "r", stop_at=10).reused  # far enough already
    full = execute(spec, tmp_path / "r")
    assert full.status == "finished" and full.steps == 20
    # The restarted script reported from step 0 again: one consistent curve, no duplicates.
    assert full.eval_steps == list(range(0, 21, 2))


def test_bad_commands_get_clear_errors(tmp_path, capsys):
    assert main(["compare", "--command", "python x.py {model}", "--out", str(tmp_path)]) == 2
    assert "--command: {model} is not a placeholder" in capsys.readouterr().err
    assert main(["compare", "--command", fake("ok"), "--set", "model.d_model=8", "--out", str(tmp_path / "o")]) == 2
    assert "with --command only plan.* settings apply" in capsys.readouterr().err
    assert main(["compare", "--command", fake("ok"), "--model", "tiny-moe", "--out", str(tmp_path / "o")]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main(["tune", "--command", fake("ok"), "--budget", "2", "--prune", "--out", str(tmp_path / "t")]) == 2
    assert "--prune with --command needs --steps" in capsys.readouterr().err
    assert main(["tune", "--command", fake("ok"), "--budget", "2", "--params", "model.init_scale",
                 "--out", str(tmp_path / "t")]) == 2
    assert "not a plan key" in capsys.readouterr().err


# --- the tools on commands ---------------------------------------------------------------------------------


def test_compare_on_a_command_with_a_crashing_arm_goes_on_and_reports_it(tmp_path):
    target = CommandTarget(fake("ok"))
    res = compare(target, ["uniform-dense", "paper-dense"], seeds=2, out=tmp_path, log=_quiet)
    assert all(r.status == "finished" for r in res.runs)
    # paper-dense starts the embedding at 5 (nearer the fake optimum of 10): it gets there sooner.
    assert res.speedups["paper-dense"].percent > 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "loss.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["target"]["command"] == fake("ok")
    bad = tmp_path / "bad.toml"
    presets.get("paper-dense").save(bad)
    crash = CommandTarget(f"{PY} -c \"import rlrs, sys; p = rlrs.script.plan(); "
                          f"sys.exit(4) if p.embedding.start == 5.0 else [rlrs.report(s, 3 - s / 10) for s in range(11)]\"")
    res = compare(crash, ["uniform-dense", str(bad)], seeds=1, out=tmp_path / "c2", log=_quiet)
    assert [r.status for r in res.runs] == ["finished", "failed"]
    assert "exit status 4" in res.runs[1].error
    md = (tmp_path / "c2" / "report.md").read_text()
    assert "failed" in md and "not measured: every run of bad diverged or failed" in md


def test_tune_on_a_command_with_pruning_and_two_workers(tmp_path):
    out = tmp_path / "t"
    code = main(["tune", "--command", fake("ok", 20), "--steps", "20", "--budget", "6", "--prune",
                 "--params", "plan.base_lr,plan.embedding.start", "--workers", "2", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "search.json").read_text())
    assert doc["best_loss"] < doc["start_loss"]
    assert doc["compute"]["trials"].get("COMPLETE", 0) + doc["compute"]["trials"].get("PRUNED", 0) == 6
    assert (out / "tuned.toml").exists()
    assert doc["spec"]["command"]["steps"] == 20


@pytest.mark.slow
def test_two_tune_processes_share_one_study_on_a_command(tmp_path):
    out = tmp_path / "t"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lead = subprocess.Popen([sys.executable, "-m", "rlrs", "tune", "--command", fake("slow", 20), "--steps", "20",
                             "--budget", "8", "--params", "plan.base_lr,plan.embedding.start", "--workers", "1",
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time

    deadline = time.monotonic() + 60
    while not (out / "study.db").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)
    # A worker runs the study's command only when given it too (see test_tune.py for the refusal).
    worker = subprocess.run([sys.executable, "-m", "rlrs", "tune", "--worker", "--command", fake("slow", 20),
                             "--workers", "1", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    lead_out = lead.communicate(timeout=600)[0]
    assert lead.returncode == 0, lead_out
    assert worker.returncode == 0, worker.stdout + worker.stderr
    import optuna

    trials = optuna.load_study(study_name="rlrs-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    counted = [t for t in trials if "abandoned" not in t.user_attrs]
    assert len(counted) == 8 and len({t.user_attrs["key"] for t in counted}) == 8
    owners = {t.user_attrs["owner"]["pid"] for t in counted}
    assert len(owners) == 2  # both processes evaluated points


# --- the examples ---------------------------------------------------------------------------------------------


def _example(name: str, corpus_dir, extra: str = "") -> str:
    return (f"{PY} {shlex.quote(str(ROOT / 'examples' / name))} --corpus {shlex.quote(str(corpus_dir / 'docs'))} "
            f"--cache-dir {shlex.quote(str(corpus_dir / 'cache'))} {extra}")


@pytest.mark.slow
def test_nanogpt_example_under_compare_and_tune(tmp_path, corpus_dir):
    cmd = _example("nanogpt.py", corpus_dir, "--d-model 32 --layers 1 --batch-size 4 --seq-len 32 --eval-every 4 "
                                             "--checkpoint-every 4")
    assert main(["compare", "--command", cmd, "--steps", "12", "--seeds", "2", "--workers", "2",
                 "--out", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["finished"] * 4
    assert all(r["curve"]["steps"] == [0, 4, 8, 12] for r in res["runs"])
    # seed i of both arms starts from the same weights: the same loss before any step
    by = {(r["arm"], r["seed"]): r["curve"]["loss"][0] for r in res["runs"]}
    assert by[("uniform-dense", 0)] == by[("paper-dense", 0)] != by[("uniform-dense", 1)]
    assert main(["tune", "--command", cmd, "--steps", "12", "--budget", "3", "--prune",
                 "--params", "plan.base_lr", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "search.json").read_text())["compute"]["trials"]


@pytest.mark.slow
def test_nanogpt_example_resumes_from_its_own_checkpoint(tmp_path, corpus_dir):
    cmd = _example("nanogpt.py", corpus_dir, "--d-model 32 --layers 1 --batch-size 4 --seq-len 32 --eval-every 2 "
                                             "--checkpoint-every 2")
    spec = CommandRun(cmd, presets.get("paper-dense"), steps=8)
    stopped = execute(spec, tmp_path / "r", stop_at=4)
    assert stopped.status == "stopped"
    full = execute(spec, tmp_path / "r")
    assert full.status == "finished" and full.eval_steps == [0, 2, 4, 6, 8]
    assert full.compute_steps < 8  # it continued from its checkpoint instead of starting over
    clean = execute(spec, tmp_path / "clean")
    assert clean.eval_loss == pytest.approx(full.eval_loss, rel=1e-5)


@pytest.mark.slow
def test_nanogpt_example_killed_between_its_save_and_its_report_reports_that_step_on_resuming(tmp_path, corpus_dir):
    cmd = _example("nanogpt.py", corpus_dir, "--d-model 32 --layers 1 --batch-size 4 --seq-len 32 --eval-every 2 "
                                             "--checkpoint-every 2")
    spec = CommandRun(cmd, presets.get("paper-dense"), steps=8)
    out = tmp_path / "r"
    full = execute(spec, out)
    assert full.status == "finished" and full.eval_steps == [0, 2, 4, 6, 8]
    # The state a kill leaves right after step 6's checkpoint was saved and before step 6 was reported.
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6
    log = out / "metrics.jsonl"
    log.write_text("".join(ln + "\n" for ln in log.read_text().splitlines() if json.loads(ln)["step"] <= 4))
    (out / "result.json").unlink()
    resumed = execute(spec, out)
    assert resumed.status == "finished" and resumed.eval_steps == [0, 2, 4, 6, 8]
    assert resumed.ran_steps == 8 and resumed.restarted_at == []  # it resumed, never started over
    assert resumed.eval_loss == pytest.approx(full.eval_loss, rel=1e-5)


@pytest.mark.slow
def test_hf_trainer_example_under_compare_and_tune(tmp_path, corpus_dir):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cmd = _example("hf_trainer.py", corpus_dir, "--batch-size 4 --seq-len 32 --eval-every 3")
    assert main(["compare", "--command", cmd, "--steps", "6", "--seeds", "1", "--workers", "2",
                 "--out", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["finished", "finished"]
    assert res["runs"][0]["curve"]["steps"] == [3, 6]
    assert main(["tune", "--command", cmd, "--steps", "6", "--budget", "2", "--params", "plan.base_lr",
                 "--out", str(tmp_path / "t")]) == 0


@pytest.mark.slow
def test_torchrun_example_under_compare_and_tune(tmp_path, corpus_dir):
    script = _example("torchrun_ddp.py", corpus_dir, "--batch-size 4 --seq-len 32 --eval-every 3")
    cmd = f"{PY} -m torch.distributed.run --standalone --nproc_per_node 2 {script.split(' ', 1)[1]}"
    assert main(["compare", "--command", cmd, "--steps", "6", "--seeds", "1", "--workers", "1",
                 "--out", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [r["status"] for r in res["runs"]] == ["finished", "finished"]
    assert res["runs"][0]["curve"]["steps"] == [0, 3, 6]  # rank 0 alone wrote: no duplicate reports
    lines = (Path(res["runs"][0]["out"]) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert main(["tune", "--command", cmd, "--steps", "6", "--budget", "2", "--params", "plan.base_lr",
                 "--workers", "1", "--out", str(tmp_path / "t")]) == 0


OWN_LR_LOOP = '''
import torch, rlrs
plan = rlrs.script.plan("paper-dense")
torch.manual_seed(rlrs.script.seed())
class LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.lm_head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)
    def forward(self, x):
        return self.lm_head(self.wte(x))
model = LM()
opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
sched = rlrs.RelativeLR(opt, plan, 20)
for step in range(20):
    for g in opt.param_groups:  # nanoGPT's get_lr loop, left in: one LR for every group
        g["lr"] = 6e-4
    x = torch.randint(0, 16, (4, 5))
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    rlrs.report(step + 1, loss.item())
'''


def test_a_script_that_keeps_its_own_lr_loop_fails_loudly_under_compare(tmp_path):
    # Both arms would train bit-identically (the loop overwrites the plan) and compare would have
    # measured the loop, not the plans: RelativeLR notices its LRs did not reach the optimizer.
    script = tmp_path / "train.py"
    script.write_text(OWN_LR_LOOP)
    res = compare(CommandTarget(f"{PY} {shlex.quote(str(script))}"), ["uniform-dense", "paper-dense"], seeds=1,
                  out=tmp_path / "c", log=_quiet)
    assert [r.status for r in res.runs] == ["failed", "failed"]
    assert all("its lr is 0.0006, but RelativeLR set" in r.error for r in res.runs), res.runs[0].error
    assert "script's own LR code" in (tmp_path / "c" / "report.md").read_text()


# --- honest compute and reports for scripts ---------------------------------------------------------------


def _trained(out: Path) -> dict[int, list[int]]:
    """What a restart/resume fake really ran: its reached steps, per start."""
    per: dict[int, list[int]] = {}
    for line in (out / "trained").read_text().splitlines():
        start, step = map(int, line.split())
        per.setdefault(start, []).append(step)
    return per


def test_a_script_that_does_not_resume_has_every_step_it_ran_counted_and_is_named(tmp_path):
    from rlrs.engine import RESUME_FIX, read_result

    # uniform-dense, not paper-dense: the fake waits at 4 (first start) and 10 (second) to be stopped there.
    spec = CommandRun(f"{fake('restart', 20)} 4,10", presets.get("uniform-dense"), steps=20)
    out = tmp_path / "r"
    first = execute(spec, out, stop_at=4)
    assert first.status == "stopped" and first.steps == 4 and first.compute_steps == 4
    assert first.ran_steps == 4 and first.restarted_at == [] and first.restart_note() is None
    second = execute(spec, out, stop_at=10)
    assert second.status == "stopped" and second.compute_steps == 10  # from step 0 again, not 4 -> 10
    full = execute(spec, out)
    assert full.status == "finished" and full.eval_steps == list(range(0, 21, 2))  # one consistent curve
    ran = _trained(out)
    assert sorted(ran) == [1, 2, 3] and [max(s) for s in ran.values()] == [4, 10, 20]
    assert full.ran_steps == 4 + 10 + 20 and full.rerun_steps == 4 + 10 and full.restarted_at == [4, 10]
    note = full.restart_note()
    assert "restarted from step 0 after it was stopped at steps 4, 10" in note and "14 steps ran again" in note
    assert note.endswith(RESUME_FIX)
    again = read_result(out)  # kept in result.json: a reused run still tells
    assert (again.ran_steps, again.rerun_steps, again.restarted_at) == (34, 14, [4, 10])


def test_a_script_that_resumes_is_counted_once(tmp_path):
    spec = CommandRun(f"{fake('resume', 20)} 4,10", presets.get("uniform-dense"), steps=20)
    out = tmp_path / "r"
    calls = [execute(spec, out, stop_at=4), execute(spec, out, stop_at=10), execute(spec, out)]
    assert [r.status for r in calls] == ["stopped", "stopped", "finished"]
    assert [min(s) for s in _trained(out).values()] == [0, 6, 12]  # it went on from its checkpoints
    assert [r.compute_steps for r in calls] == [4, 6, 10]
    full = calls[-1]
    assert full.ran_steps == 20 and full.rerun_steps == 0 and full.restarted_at == [] and full.restart_note() is None
    assert full.eval_steps == list(range(0, 21, 2))


def test_a_command_whose_reports_stop_short_of_its_length_failed(tmp_path):
    r = execute(CommandRun(fake("early"), presets.get("paper-dense"), steps=10), tmp_path / "r")
    assert r.status == "failed" and r.exit_code == 0
    assert r.headline().startswith("failed: reported up to step 0 of 10: the script ended early")
    assert "rlrs.report(10, eval_loss)" in r.error
    assert not execute(CommandRun(fake("early"), presets.get("paper-dense"), steps=10), tmp_path / "r").reused
    # Without a known length the last report is the length: nothing to hold it against.
    assert execute(CommandRun(fake("early"), presets.get("paper-dense")), tmp_path / "u").status == "finished"


@pytest.mark.parametrize("mode", ["restart", "resume"])
def test_tune_prune_counts_every_step_a_script_ran_and_names_one_that_does_not_resume(tmp_path, capsys, mode):
    from rlrs.engine import RESUME_FIX

    out = tmp_path / "t"
    # The candidates (base_lr moved) wait at the rungs, steps 4 and 10 of 20, to be stopped there.
    code = main(["tune", "--command", f"{fake(mode, 20)} 4,10", "--steps", "20", "--budget", "5", "--prune",
                 "--params", "plan.base_lr", "--workers", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    doc = json.loads((out / "search.json").read_text())
    assert doc["compute"]["trials"] == {"COMPLETE": 3, "PRUNED": 2, "abandoned": 0}, text
    real = rerun = 0
    for run in (out / "runs").iterdir():
        reached = 0
        for start, steps in _trained(run).items():
            began = 0 if mode == "restart" or start == 1 else min(steps) - 2  # resumed at its checkpoint
            real += max(steps) - began
            rerun += max(0, min(reached, max(steps)) - began)  # steps it had run before
            reached = max(reached, max(steps))
    assert (doc["compute"]["steps"], doc["compute"]["rerun_steps"]) == (real, rerun), text
    assert doc["compute"]["tokens"] is None and "tokens" not in text  # the fake reports none: unknown, not 0
    if mode == "restart":
        assert real == 20 + 2 * 4 + 2 * (4 + 10 + 20) and rerun == 2 * (4 + 10)  # two survivors ran three times
        assert len(doc["notes"]) == 1 and "restarted from step 0" in doc["notes"][0] and RESUME_FIX in doc["notes"][0]
        assert f"{rerun} of them run again" in text and f"note: {doc['notes'][0]}" in text
    else:
        assert real == 20 + 2 * 4 + 2 * 20 and doc["notes"] == [] and "note:" not in text


def test_tune_shows_tokens_when_the_script_reports_them(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--command", fake("tokens", 20), "--steps", "20", "--budget", "2",
                 "--params", "plan.base_lr", "--workers", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "search.json").read_text())
    assert (doc["compute"]["steps"], doc["compute"]["tokens"]) == (40, 40 * 1000)
    assert "compute: 40 training steps (40000 tokens)" in capsys.readouterr().out


def test_compare_on_a_command_reports_only_what_the_script_logged(tmp_path):
    from rlrs.experiments.report import REST_LABEL, lr_components

    res = compare(CommandTarget(fake("ok")), ["uniform-dense", "paper-dense"], seeds=1, out=tmp_path, log=_quiet)
    assert all(r.status == "finished" for r in res.runs)
    # No training loss and no update sizes: no figures of them, and no claim about spikes.
    assert not (tmp_path / "train_loss.png").exists() and not (tmp_path / "updates.png").exists()
    assert all((tmp_path / name).exists() for name in ("loss.png", "lr_uniform-dense.png", "lr_paper-dense.png", "report.md"))
    md = (tmp_path / "report.md").read_text()
    assert "no loss spikes" not in md.lower() and "train_loss.png" not in md and "updates.png" not in md
    assert "The script reports eval losses only" in md and "Not measured" in md
    # The LR figures: the components the plans set (paper-dense's four), the rest as one λ = 1 line.
    assert lr_components(res) == (["embedding", "unembedding", "attention", "feedforward"], REST_LABEL)
    assert "router" not in md.split("### LR schedules")[1] and "every other component (λ = 1)" in md


def test_a_run_of_an_edited_script_is_trained_again_not_reused(tmp_path):
    # The command is the same, the code is not: reusing the old run would report the old code's
    # results as the new one's (and mix both versions across seeds).
    script = tmp_path / "train.py"
    script.write_text("import rlrs\n[rlrs.report(s, 3.0 - s / 10) for s in range(11)]\n")
    spec = CommandRun(f"{PY} train.py", presets.get("paper-dense"), cwd=str(tmp_path))
    out = run_dir(tmp_path / "runs", spec)
    first = execute(spec, out)
    assert first.status == "finished" and not first.reused
    assert execute(spec, out).reused  # unchanged: reused
    script.write_text("import rlrs\n[rlrs.report(s, 4.0 - s / 10) for s in range(11)]\n")
    again = execute(spec, out)
    assert again.status == "finished" and not again.reused and again.eval_loss[0] == 4.0
    assert again.eval_steps == list(range(11))  # the old version's reports are gone, not mixed in
    assert "train.py changed since this run started" in (out / "stderr.log").read_text()
    assert execute(spec, out).reused


def test_lr_grid_says_runs_failed_not_diverged_when_the_command_crashes(tmp_path, capsys):
    # A command that cannot start (here: a module it lacks) fails at every η_base: another η_base
    # cannot help, so lr-grid must not advise lower values as it does for divergence.
    from rlrs import cli

    broken = f"{PY} -c 'import no_such_module_for_rlrs'"
    code = cli.main(["lr-grid", "--command", broken, "--steps", "5", "--plans", "uniform-dense", "--grid", "1e-3,2e-3",
                     "--extend", "0", "--workers", "1", "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 of 2 runs failed" in out and "No module named 'no_such_module_for_rlrs'" in out
    assert "without diverging" not in out
